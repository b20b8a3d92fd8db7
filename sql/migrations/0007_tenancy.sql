-- Tenancy: each API key's weight, priority class and limits; each job's
-- class and session; usage per key, model, node and hour.

ALTER TABLE api_keys ADD COLUMN weight INTEGER NOT NULL DEFAULT 1 CHECK (weight > 0);
ALTER TABLE api_keys ADD COLUMN class TEXT CHECK (class IN ('interactive', 'batch'));
ALTER TABLE api_keys ADD COLUMN rpm INTEGER CHECK (rpm > 0);
ALTER TABLE api_keys ADD COLUMN tpm INTEGER CHECK (tpm > 0);
ALTER TABLE api_keys ADD COLUMN max_concurrent INTEGER CHECK (max_concurrent > 0);
ALTER TABLE api_keys ADD COLUMN budget_tokens INTEGER CHECK (budget_tokens > 0);
ALTER TABLE api_keys ADD COLUMN budget_period TEXT CHECK (budget_period IN ('day', 'month'));

-- 1 interactive, 0 batch: every interactive job a node may run is leased
-- before any batch job.
ALTER TABLE jobs ADD COLUMN class INTEGER NOT NULL DEFAULT 0 CHECK (class IN (0, 1));
ALTER TABLE jobs ADD COLUMN session TEXT;

-- Every job has a submitter (the loose index scan below skips NULLs);
-- jobs from before submitters were recorded count as the local operator.
UPDATE jobs SET submitted_by = 'local' WHERE submitted_by IS NULL;

-- Fair share walks, per kind and class, the distinct submitters (a loose
-- index scan: one seek per key) and then one key's jobs in order, so a
-- lease costs O(keys × log n) whatever the queue depth.
DROP INDEX jobs_queued;
CREATE INDEX jobs_queued ON jobs (kind, class DESC, submitted_by, priority DESC, ready_at, id) WHERE state = 'queued';
-- A key's next queued jobs over all kinds (offered to parked agents when
-- a slot under its concurrency limit comes free).
CREATE INDEX jobs_queued_by ON jobs (submitted_by, class DESC, priority DESC, ready_at, id) WHERE state = 'queued';
-- A key's running jobs (its concurrency limit).
CREATE INDEX jobs_leased_by ON jobs (submitted_by) WHERE state = 'leased';
-- The node that served a session last.
CREATE INDEX jobs_session ON jobs (session, finished_at) WHERE session IS NOT NULL AND state = 'succeeded';

-- Usage, added to in the transaction that accepts each successful attempt:
-- exactly what the LLM servers reported, token for token. `model` and
-- `node_id` are '' when unknown (a primary key cannot hold NULL usefully).
CREATE TABLE usage (
    hour              INTEGER NOT NULL,   -- start of the hour, Unix ms
    key               TEXT NOT NULL,      -- jobs.submitted_by
    model             TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    llm_ms            INTEGER NOT NULL,
    PRIMARY KEY (hour, key, model, node_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX usage_key ON usage (key, hour);

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
