-- Security: API keys, join tokens, issued certificates, the audit log.

ALTER TABLE nodes ADD COLUMN revoked_at INTEGER;
ALTER TABLE jobs ADD COLUMN submitted_by TEXT;   -- actor that submitted it

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('read', 'submit', 'admin')),
    secret_mac BLOB NOT NULL,              -- HMAC-SHA256(hmac.key, secret)
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER
) STRICT;

CREATE TABLE join_tokens (
    id         TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    secret_mac BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;

CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,             -- hex
    node_id    TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    issued_by  TEXT NOT NULL,                -- join, renew, provision, local
    revoked_at INTEGER
) STRICT;

CREATE INDEX certificates_node ON certificates (node_id);

-- Append-only; each row's hash covers the previous row's hash, so editing or
-- deleting a row breaks the chain (`kobo-coord audit verify`).
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    outcome    TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
    source     TEXT,
    request_id TEXT,
    detail     TEXT,
    hash       TEXT NOT NULL
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

CREATE VIEW v_audit AS
SELECT id,
       strftime('%Y-%m-%d %H:%M:%f', at / 1000.0, 'unixepoch') AS at,
       actor, action, target, outcome, source, request_id, detail
FROM audit_log;

-- Confidential results are sealed: the readable view must not try to read them.
DROP VIEW v_jobs;
CREATE VIEW v_jobs AS
SELECT
    id,
    state,
    kind,
    model,
    priority,
    attempts || '/' || max_attempts                              AS attempts,
    node_id,
    submitted_by,
    strftime('%Y-%m-%d %H:%M:%f', created_at / 1000.0, 'unixepoch') AS created,
    strftime('%Y-%m-%d %H:%M:%f', finished_at / 1000.0, 'unixepoch') AS finished,
    CASE WHEN finished_at IS NOT NULL THEN finished_at - created_at END AS total_ms,
    CASE WHEN confidential = 0 THEN json_extract(result, '$.usage.duration_ms') END AS llm_ms,
    CASE WHEN confidential = 0 THEN json_extract(result, '$.usage.completion_tokens') END AS completion_tokens,
    last_error,
    queue_reason,
    CASE WHEN confidential = 1 THEN '(confidential)'
         ELSE substr(json_extract(result, '$.text'), 1, 80) END  AS result_head
FROM jobs;
