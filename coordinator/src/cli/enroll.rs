//! `kobo-coord enroll-key create|list|revoke`: reusable enrollment keys.

use super::*;

#[derive(Debug, Subcommand)]
pub enum EnrollKeyCommand {
    /// Create a key; its secret is printed once. Agents enroll with it as
    /// <prefix><suffix> (`KOBO_ENROLL_KEY`, `KOBO_NODE_NAME_SUFFIX`).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Every node enrolled with the key is named with this prefix, e.g.
        /// k8s-gpu- (lowercase letters, digits, '-').
        #[arg(long)]
        prefix: String,
        /// How long the key lives, e.g. 30d (default: until revoked).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Most nodes the key may enroll (default: no limit).
        #[arg(long)]
        max: Option<u32>,
    },
    /// List keys (never their secrets) with how many nodes each enrolled.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a key by id: it enrolls no one from now on.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The key's id, as `enroll-key list` shows it.
        id: String,
    },
}

pub async fn enroll_key(command: EnrollKeyCommand) -> anyhow::Result<()> {
    match command {
        EnrollKeyCommand::Create {
            client,
            prefix,
            expires,
            max,
        } => {
            let created = client
                .client()?
                .enroll_key_create(&prefix, expires, max)
                .await?;
            if client.json {
                return print_json(&created);
            }
            println!("{}", created.key);
            let view = &created.view;
            eprintln!(
                "enrollment key {} for nodes named {}…, {}, {}: the secret above is shown only once",
                view.id,
                view.prefix,
                view.expires_at.map_or("no expiry".into(), |at| format!(
                    "valid until {} UTC",
                    format_time(Some(at))
                )),
                view.max_enrollments
                    .map_or("no limit".into(), |n| format!("at most {n} nodes")),
            );
            Ok(())
        }
        EnrollKeyCommand::List { client } => {
            let keys = client.client()?.enroll_key_list().await?;
            if client.json {
                return print_json(&keys);
            }
            let mut t = table(&[
                "id", "prefix", "enrolled", "max", "expires", "created", "by", "revoked",
            ]);
            for k in &keys {
                t.add_row(vec![
                    k.id.clone(),
                    k.prefix.clone(),
                    k.enrollments.to_string(),
                    k.max_enrollments.map_or("-".into(), |n| n.to_string()),
                    format_time(k.expires_at),
                    format_time(Some(k.created_at)),
                    k.created_by.clone(),
                    format_time(k.revoked_at),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        EnrollKeyCommand::Revoke { client, id } => {
            client.client()?.enroll_key_revoke(&id).await?;
            if client.json {
                return print_json(&serde_json::json!({ "revoked": id }));
            }
            println!("enrollment key {id} revoked");
            Ok(())
        }
    }
}
