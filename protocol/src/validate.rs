//! Checks of client and agent input beyond what its types say. Each failure
//! names the field at fault.

use crate::{
    CompleteBatchRequest, CompleteRequest, HeartbeatRequest, LeaseRequest, MAX_REPORTS, Outcome,
    RegisterRequest, SubmitJob,
};

/// Longest prompt, system text or message content accepted (bytes).
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Most chat messages in one job.
pub const MAX_MESSAGES: usize = 1000;
/// Most jobs in one batch submit.
pub const MAX_BATCH: usize = 1000;
/// Longest result text an agent may report (bytes).
pub const MAX_RESULT_BYTES: usize = 8 << 20;
/// Longest name (kind, capability, node id, model, region, key).
pub const MAX_NAME: usize = 200;
/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest per-attempt timeout a job may ask for: one day.
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Most jobs one lease request may ask for.
pub const MAX_LEASE_BATCH: u32 = 1000;
/// Most leases one heartbeat may carry.
pub const MAX_HELD: usize = 10_000;

/// A field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn fail(field: impl Into<String>, message: impl Into<String>) -> Result<(), FieldError> {
    let field = field.into();
    let message = message.into();
    Err(FieldError {
        message: format!("{field}: {message}"),
        field,
    })
}

/// A name such as a kind, capability, node id or region: non-empty, short,
/// printable, no whitespace.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return fail(field, "must not be empty");
    }
    if value.len() > MAX_NAME {
        return fail(field, format!("longer than {MAX_NAME} bytes"));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return fail(field, format!("contains the character {c:?}"));
    }
    Ok(())
}

fn text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() > MAX_TEXT_BYTES {
        return fail(field, format!("longer than {MAX_TEXT_BYTES} bytes"));
    }
    if value.contains('\0') {
        return fail(field, "contains a NUL character");
    }
    Ok(())
}

pub fn submit(job: &SubmitJob, prefix: &str) -> Result<(), FieldError> {
    let f = |name: &str| format!("{prefix}{name}");
    name(&f("kind"), &job.kind)?;
    if let Some(model) = &job.model {
        name(&f("model"), model)?;
    }
    match (&job.prompt, &job.messages) {
        (None, None) => return fail(f("prompt"), "a job needs a prompt or messages"),
        (Some(_), Some(_)) => {
            return fail(f("messages"), "give either prompt or messages, not both");
        }
        (Some(prompt), None) => {
            if prompt.trim().is_empty() {
                return fail(f("prompt"), "must not be empty");
            }
            text(&f("prompt"), prompt)?;
        }
        (None, Some(messages)) => {
            if messages.is_empty() {
                return fail(f("messages"), "must not be empty");
            }
            if messages.len() > MAX_MESSAGES {
                return fail(f("messages"), format!("more than {MAX_MESSAGES} messages"));
            }
            let total: usize = messages.iter().map(|m| m.content.len()).sum();
            if total > MAX_TEXT_BYTES {
                return fail(
                    f("messages"),
                    format!("longer than {MAX_TEXT_BYTES} bytes in all"),
                );
            }
            for (idx, message) in messages.iter().enumerate() {
                text(&f(&format!("messages[{idx}].content")), &message.content)?;
            }
        }
    }
    if let Some(system) = &job.system {
        text(&f("system"), system)?;
    }
    if let Some(options) = &job.options {
        if let Some(t) = options.temperature
            && !(0.0..=5.0).contains(&t)
        {
            return fail(f("options.temperature"), "must be between 0 and 5");
        }
        if let Some(p) = options.top_p
            && !(0.0..=1.0).contains(&p)
        {
            return fail(f("options.top_p"), "must be between 0 and 1");
        }
        if options.max_tokens == Some(0) {
            return fail(f("options.max_tokens"), "must be at least 1");
        }
        if options.stop.len() > 16 {
            return fail(f("options.stop"), "at most 16 stop sequences");
        }
    }
    if let Some(format) = &job.format
        && !(format.is_object() || format.as_str() == Some("json"))
    {
        return fail(f("format"), "must be \"json\" or a JSON schema object");
    }
    for (idx, cap) in job.requirements.capabilities.iter().enumerate() {
        name(&f(&format!("requirements.capabilities[{idx}]")), cap)?;
    }
    if let Some(area) = &job.requirements.data_location {
        name(&f("requirements.data_location"), area)?;
    }
    if let Some(region) = &job.preferences.region {
        name(&f("preferences.region"), region)?;
    }
    if let Some(node) = &job.preferences.node {
        name(&f("preferences.node"), node)?;
    }
    if !PRIORITY.contains(&job.priority) {
        return fail(f("priority"), "must be between -1000 and 1000");
    }
    if let Some(n) = job.max_attempts
        && !(1..=MAX_ATTEMPTS).contains(&n)
    {
        return fail(
            f("max_attempts"),
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        );
    }
    if let Some(t) = job.timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&t)
    {
        return fail(
            f("timeout_ms"),
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        );
    }
    if let Some(at) = job.run_at
        && at < 0
    {
        return fail(f("run_at"), "must be a Unix time in milliseconds");
    }
    if let Some(key) = &job.idempotency_key {
        name(&f("idempotency_key"), key)?;
    }
    if let Some(id) = &job.session {
        session(&f("session"), id)?;
    }
    Ok(())
}

/// The priorities a job may have.
pub const PRIORITY: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Longest session id (OpenAI's `user`, `x-session-id`, a job's `session`).
pub const MAX_SESSION: usize = 256;

/// A session id: any text clients use to name a conversation or a user
/// (an e-mail address, a UUID, …), non-empty, at most [`MAX_SESSION`]
/// bytes, without control characters.
pub fn session(field: &str, id: &str) -> Result<(), FieldError> {
    if id.trim().is_empty() {
        return fail(field, "must not be empty");
    }
    if id.len() > MAX_SESSION {
        return fail(field, format!("at most {MAX_SESSION} bytes"));
    }
    if id.chars().any(char::is_control) {
        return fail(field, "must not hold control characters");
    }
    Ok(())
}

pub fn batch(jobs: &[SubmitJob]) -> Result<(), FieldError> {
    if jobs.is_empty() {
        return fail("jobs", "must not be empty");
    }
    if jobs.len() > MAX_BATCH {
        return fail("jobs", format!("more than {MAX_BATCH} jobs"));
    }
    for (idx, job) in jobs.iter().enumerate() {
        submit(job, &format!("jobs[{idx}]."))?;
    }
    Ok(())
}

pub fn register(req: &RegisterRequest) -> Result<(), FieldError> {
    name("node_id", &req.node_id)?;
    name("instance_id", &req.instance_id)?;
    name("region", &req.region)?;
    name("backend", &req.backend)?;
    if req.capabilities.is_empty() {
        return fail("capabilities", "a node needs at least one capability");
    }
    for (idx, cap) in req.capabilities.iter().enumerate() {
        name(&format!("capabilities[{idx}]"), cap)?;
    }
    for (idx, model) in req.models.iter().enumerate() {
        name(&format!("models[{idx}]"), model)?;
    }
    if !(1..=4096).contains(&req.max_workers) {
        return fail("max_workers", "must be between 1 and 4096");
    }
    Ok(())
}

pub fn lease(req: &LeaseRequest) -> Result<(), FieldError> {
    name("node_id", &req.node_id)?;
    name("instance_id", &req.instance_id)?;
    if !(1..=MAX_LEASE_BATCH).contains(&req.max_jobs) {
        return fail(
            "max_jobs",
            format!("must be between 1 and {MAX_LEASE_BATCH}"),
        );
    }
    Ok(())
}

pub fn heartbeat(req: &HeartbeatRequest) -> Result<(), FieldError> {
    name("node_id", &req.node_id)?;
    name("instance_id", &req.instance_id)?;
    if req.running.len() > MAX_HELD {
        return fail("running", format!("more than {MAX_HELD} leases"));
    }
    Ok(())
}

/// Largest certificate signing request accepted (bytes).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A PEM certificate signing request: present, bounded, PEM-shaped.
pub fn csr(field: &str, pem: &str) -> Result<(), FieldError> {
    if pem.len() > MAX_CSR_BYTES {
        return fail(field, format!("longer than {MAX_CSR_BYTES} bytes"));
    }
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return fail(field, "must be a PEM certificate signing request");
    }
    Ok(())
}

/// Longest DNS label, and so the longest enrolled node name.
pub const MAX_DNS_LABEL: usize = 63;

/// A DNS label (RFC 1123), as a Kubernetes pod name is: lowercase letters,
/// digits and `-`, starting and ending with a letter or digit, at most 63
/// bytes. `partial` allows a leading or trailing `-` (a prefix or suffix).
pub fn dns_label(field: &str, value: &str, partial: bool) -> Result<(), FieldError> {
    if value.is_empty() {
        return fail(field, "must not be empty");
    }
    if value.len() > MAX_DNS_LABEL {
        return fail(
            field,
            format!("longer than {MAX_DNS_LABEL} bytes (a DNS label)"),
        );
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(
            field,
            format!("contains {c:?}: only lowercase letters, digits and '-' (a DNS label)"),
        );
    }
    if !partial && (value.starts_with('-') || value.ends_with('-')) {
        return fail(
            field,
            "must start and end with a letter or digit (a DNS label)",
        );
    }
    Ok(())
}

pub fn complete(req: &CompleteRequest) -> Result<(), FieldError> {
    name("node_id", &req.node_id)?;
    outcome(&req.outcome, "")
}

/// A batch of reports: the node, 1 to [`MAX_REPORTS`] reports, each job at
/// most once; a fault names the report (`reports[3].outcome.error`).
pub fn complete_batch(req: &CompleteBatchRequest) -> Result<(), FieldError> {
    name("node_id", &req.node_id)?;
    if req.reports.is_empty() {
        return fail("reports", "must not be empty");
    }
    if req.reports.len() > MAX_REPORTS {
        return fail("reports", format!("more than {MAX_REPORTS} reports"));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.reports.len());
    for (idx, report) in req.reports.iter().enumerate() {
        if !seen.insert(report.job_id) {
            return fail(
                format!("reports[{idx}].job_id"),
                format!("job {} is reported twice", report.job_id),
            );
        }
        outcome(&report.outcome, &format!("reports[{idx}]."))?;
    }
    Ok(())
}

fn outcome(outcome: &Outcome, prefix: &str) -> Result<(), FieldError> {
    match outcome {
        Outcome::Succeeded { output } => {
            if output.text.len() > MAX_RESULT_BYTES {
                return fail(
                    format!("{prefix}outcome.output.text"),
                    format!("longer than {MAX_RESULT_BYTES} bytes"),
                );
            }
        }
        Outcome::Failed { error, .. } => {
            if error.len() > MAX_TEXT_BYTES {
                return fail(
                    format!("{prefix}outcome.error"),
                    format!("longer than {MAX_TEXT_BYTES} bytes"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_what_a_pod_name_can_be() {
        for good in ["web-5d8f-abcde", "a", "k8s-gpu-0"] {
            assert_eq!(dns_label("name_suffix", good, false), Ok(()), "{good}");
        }
        assert_eq!(dns_label("prefix", "k8s-", true), Ok(()));
        let long = "a".repeat(64);
        for bad in ["", "Web", "a_b", "a.b", "-a", "a-", long.as_str()] {
            let err = dns_label("name_suffix", bad, false).expect_err(bad);
            assert_eq!(err.field, "name_suffix");
            assert!(err.message.starts_with("name_suffix: "), "{}", err.message);
        }
    }

    fn job() -> SubmitJob {
        SubmitJob {
            kind: "general_query".into(),
            prompt: Some("hello".into()),
            ..SubmitJob::default()
        }
    }

    #[test]
    fn a_plain_job_passes() {
        assert_eq!(submit(&job(), ""), Ok(()));
    }

    #[test]
    fn failures_name_the_field() {
        let mut j = job();
        j.kind = String::new();
        assert_eq!(submit(&j, "").unwrap_err().field, "kind");
        let mut j = job();
        j.prompt = None;
        assert_eq!(submit(&j, "").unwrap_err().field, "prompt");
        let mut j = job();
        j.max_attempts = Some(0);
        assert_eq!(submit(&j, "").unwrap_err().field, "max_attempts");
        let mut j = job();
        j.options = Some(crate::GenerationOptions {
            temperature: Some(9.0),
            ..Default::default()
        });
        assert_eq!(submit(&j, "").unwrap_err().field, "options.temperature");
        let mut j = job();
        j.prompt = Some("a\0b".into());
        assert_eq!(submit(&j, "").unwrap_err().field, "prompt");
        let mut bad = job();
        bad.kind = "has space".into();
        assert_eq!(batch(&[job(), bad]).unwrap_err().field, "jobs[1].kind");
        for session in ["", "a\nb", &"x".repeat(MAX_SESSION + 1)] {
            let mut j = job();
            j.session = Some(session.to_string());
            assert_eq!(submit(&j, "").unwrap_err().field, "session", "{session:?}");
        }
        let mut j = job();
        j.session = Some("alice@example.com conv 7".into());
        assert!(submit(&j, "").is_ok(), "any printable text names a session");
    }
}
