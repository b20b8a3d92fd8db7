-- Enrollment keys (reusable, bound to a node-name prefix) and retirement of
-- nodes lost for long.

CREATE TABLE enroll_keys (
    id              TEXT PRIMARY KEY,
    prefix          TEXT NOT NULL,
    secret_mac      BLOB NOT NULL,           -- HMAC-SHA256(hmac.key, secret)
    created_at      INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    expires_at      INTEGER,                 -- none: until revoked
    max_enrollments INTEGER CHECK (max_enrollments > 0),
    enrollments     INTEGER NOT NULL DEFAULT 0,
    revoked_at      INTEGER,
    CHECK (max_enrollments IS NULL OR enrollments <= max_enrollments)
) STRICT;

-- A retired node is gone from the fleet (lost for longer than
-- --retire-lost-after, its certificates revoked); its row stays so jobs'
-- node ids still resolve in reports.
ALTER TABLE nodes ADD COLUMN retired_at INTEGER;
