//! The admin commands: `apikey`, `token`, `audit`.

use super::*;
use kobo_protocol::{Budget, BudgetPeriod, KeyPolicy, KeyPolicyUpdate, PriorityClass};

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// scaler, read, submit or admin (cumulative: scaler reads only /v1/scaling and /metrics).
        #[arg(long, value_parser = parse_role)]
        role: AccessRole,
        /// A name saying who or what uses the key, e.g. dashboard.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a key's weight, class, limits or budget; effective on its
    /// next request. Flags not given keep their value.
    Update {
        #[command(flatten)]
        client: ClientArgs,
        /// The key's id (the part after `kobo_`, as `apikey list` shows it).
        id: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Remove a limit: class, rpm, tpm, max_concurrent or budget
        /// (repeatable).
        #[arg(long, value_name = "LIMIT")]
        clear: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key by id; effective on its next request.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The key's id (the part after `kobo_`, as `apikey list` shows it).
        id: String,
    },
}

/// A key's share and limits, as `apikey create` and `apikey update` take them.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Its share of contended slots relative to other keys (1 to 10000;
    /// default 1): a key of weight 3 gets three slots for each one of a key
    /// of weight 1 while both have jobs waiting.
    #[arg(long)]
    weight: Option<u32>,
    /// Priority class of its jobs: interactive (leased before any batch job)
    /// or batch. Default: interactive for OpenAI/Ollama requests, batch for
    /// kobo jobs.
    #[arg(long, value_parser = parse_class)]
    class: Option<PriorityClass>,
    /// Requests per minute (sliding window); over it, 429 with Retry-After.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens (prompt plus completion) per minute; over it, 429 with
    /// Retry-After.
    #[arg(long)]
    tpm: Option<u64>,
    /// Jobs running at once; more wait in the queue (none is refused).
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Token budget per UTC day or month, e.g. 100000/day or 5000000/month;
    /// once spent, new requests get 429 until the period ends.
    #[arg(long, value_parser = parse_budget)]
    budget: Option<Budget>,
}

impl PolicyArgs {
    fn update(&self, clear: Vec<String>) -> KeyPolicyUpdate {
        KeyPolicyUpdate {
            weight: self.weight,
            class: self.class,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            budget: self.budget,
            clear,
        }
    }
}

fn parse_class(s: &str) -> Result<PriorityClass, String> {
    PriorityClass::parse(s).ok_or_else(|| format!("unknown class {s:?}; interactive or batch"))
}

fn parse_budget(s: &str) -> Result<Budget, String> {
    let (tokens, period) = s
        .split_once('/')
        .ok_or_else(|| format!("budget {s:?}: expected TOKENS/day or TOKENS/month"))?;
    let tokens: u64 = tokens
        .trim()
        .parse()
        .map_err(|_| format!("budget {s:?}: {tokens:?} is not a whole number of tokens"))?;
    let period = BudgetPeriod::parse(period.trim())
        .ok_or_else(|| format!("budget {s:?}: the period is day or month, not {period:?}"))?;
    Ok(Budget { tokens, period })
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token bound to one node name.
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The node name the token enrolls.
        #[arg(long)]
        node: String,
        /// How long the token lives, e.g. 15m, 2h.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only entries newer than this: a duration ago (`1h`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Most entries to print, newest last.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// `verify`: check the hash chain instead of printing.
    pub verify: Option<String>,
}

fn parse_role(s: &str) -> Result<AccessRole, String> {
    AccessRole::parse(s)
        .ok_or_else(|| format!("unknown role {s:?}; one of scaler, read, submit, admin"))
}

pub async fn apikey(command: ApikeyCommand) -> anyhow::Result<()> {
    match command {
        ApikeyCommand::Create {
            client,
            role,
            name,
            policy,
        } => {
            let policy = policy
                .update(Vec::new())
                .apply(&KeyPolicy::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let created = client.client()?.apikey_create(&name, role, policy).await?;
            if client.json {
                return print_json(&created);
            }
            println!("{}", created.key);
            eprintln!(
                "API key {} ({}, role {}): the secret above is shown only once",
                created.id, created.name, created.role
            );
            Ok(())
        }
        ApikeyCommand::List { client } => {
            let keys = client.client()?.apikey_list().await?;
            if client.json {
                return print_json(&keys);
            }
            let mut t = table(&["id", "name", "role", "policy", "created", "by", "revoked"]);
            for k in &keys {
                t.add_row(vec![
                    k.id.clone(),
                    k.name.clone(),
                    k.role.to_string(),
                    k.policy.summary(),
                    format_time(Some(k.created_at)),
                    k.created_by.clone(),
                    format_time(k.revoked_at),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        ApikeyCommand::Update {
            client,
            id,
            policy,
            clear,
        } => {
            let view = client
                .client()?
                .apikey_update(&id, &policy.update(clear))
                .await?;
            if client.json {
                return print_json(&view);
            }
            println!(
                "API key {} ({}): {}",
                view.id,
                view.name,
                view.policy.summary()
            );
            Ok(())
        }
        ApikeyCommand::Revoke { client, id } => {
            client.client()?.apikey_revoke(&id).await?;
            if client.json {
                return print_json(&serde_json::json!({ "revoked": id }));
            }
            println!("API key {id} revoked");
            Ok(())
        }
    }
}

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { client, node, ttl } = command;
    let created = client.client()?.token_create(&node, ttl).await?;
    if client.json {
        return print_json(&created);
    }
    println!("{}", created.token);
    eprintln!(
        "single-use join token for node {node}, valid until {} UTC:\n  kobo-agent join <coordinator url> --token <token> --node-id {node} ...",
        format_time(Some(created.expires_at))
    );
    Ok(())
}

/// `1h` (that long ago) or an RFC 3339 time, as Unix milliseconds.
pub(super) fn parse_since(text: &str) -> anyhow::Result<UnixMillis> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(text) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(text).with_context(|| {
            format!("--since {text:?}: neither a duration (1h) nor an RFC 3339 time")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    match args.verify.as_deref() {
        Some("verify") => {
            let report = client.audit_verify().await?;
            if args.client.json {
                print_json(&report)?;
            } else if report.ok {
                println!(
                    "audit log intact: {} rows, hash chain verified",
                    report.rows
                );
            }
            if !report.ok {
                bail!(
                    "audit log tampered: row {} does not match its hash chain ({} rows checked)",
                    report.first_bad_id.unwrap_or_default(),
                    report.rows
                );
            }
            return Ok(());
        }
        Some(other) => bail!("unknown audit subcommand {other:?}; did you mean `audit verify`?"),
        None => {}
    }
    let query = AuditQuery {
        since: args.since.as_deref().map(parse_since).transpose()?,
        limit: Some(args.limit),
    };
    let list = client.audit(&query).await?;
    if args.client.json {
        return print_json(&list);
    }
    let mut t = table(&[
        "id", "at", "actor", "action", "target", "outcome", "source", "detail",
    ]);
    for e in &list.entries {
        t.add_row(vec![
            e.id.to_string(),
            format_time(Some(e.at)),
            e.actor.clone(),
            e.action.clone(),
            e.target.clone().unwrap_or_default(),
            e.outcome.clone(),
            e.source.clone().unwrap_or_default(),
            e.detail.as_deref().map(|d| head(d, 60)).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}
