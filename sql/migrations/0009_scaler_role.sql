-- The `scaler` role: an API key an autoscaler (KEDA, kobo-coord autoscale)
-- reads `GET /v1/scaling` and `GET /metrics` with, and nothing else.
-- SQLite cannot change a CHECK in place: api_keys is rebuilt (same columns,
-- same order) and v_usage, which reads it, made again.

DROP VIEW v_usage;

CREATE TABLE api_keys_new (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('scaler', 'read', 'submit', 'admin')),
    secret_mac     BLOB NOT NULL,              -- HMAC-SHA256(hmac.key, secret)
    created_at     INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    revoked_at     INTEGER,
    weight         INTEGER NOT NULL DEFAULT 1 CHECK (weight > 0),
    class          TEXT CHECK (class IN ('interactive', 'batch')),
    rpm            INTEGER CHECK (rpm > 0),
    tpm            INTEGER CHECK (tpm > 0),
    max_concurrent INTEGER CHECK (max_concurrent > 0),
    budget_tokens  INTEGER CHECK (budget_tokens > 0),
    budget_period  TEXT CHECK (budget_period IN ('day', 'month'))
) STRICT;

INSERT INTO api_keys_new
SELECT id, name, role, secret_mac, created_at, created_by, revoked_at,
       weight, class, rpm, tpm, max_concurrent, budget_tokens, budget_period
FROM api_keys;

DROP TABLE api_keys;
ALTER TABLE api_keys_new RENAME TO api_keys;

CREATE VIEW v_usage AS
SELECT strftime('%Y-%m-%d %H:00', u.hour / 1000.0, 'unixepoch') AS hour,
       u.key,
       k.name AS key_name,
       NULLIF(u.model, '') AS model,
       NULLIF(u.node_id, '') AS node,
       u.requests,
       u.prompt_tokens,
       u.completion_tokens,
       u.prompt_tokens + u.completion_tokens AS total_tokens,
       u.llm_ms
FROM usage u
LEFT JOIN api_keys k ON u.key = 'apikey:' || k.id;
