-- Virtual keys (`[auth] mode = "keys"`). The key itself is never stored: `digest` is its
-- SHA-256. Edits (CLI, API) write the limit columns; only the gateway writes `spend_usd` and
-- `budget_reset_at`. A deleted key keeps its row (`deleted_at`) so spend totals stay true and a
-- running gateway sees the deletion.
CREATE TABLE keys (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    digest                 TEXT NOT NULL UNIQUE,
    prefix                 TEXT NOT NULL,
    last4                  TEXT NOT NULL,
    owner                  TEXT,
    models                 TEXT NOT NULL,   -- JSON array of globs
    rpm                    INTEGER,
    tpm                    INTEGER,
    max_parallel_requests  INTEGER,
    max_budget_usd         REAL,
    budget_period_secs     INTEGER,
    soft_budget_usd        REAL,
    expires_at             INTEGER,
    blocked                INTEGER NOT NULL DEFAULT 0,
    metadata               TEXT NOT NULL,   -- JSON object
    previous_digest        TEXT,
    previous_expires_at    INTEGER,
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    deleted_at             INTEGER,
    spend_usd              REAL NOT NULL DEFAULT 0,
    budget_reset_at        INTEGER
);
CREATE INDEX keys_by_update ON keys (updated_at);
CREATE INDEX keys_by_previous ON keys (previous_digest) WHERE previous_digest IS NOT NULL;

ALTER TABLE requests ADD COLUMN key_id TEXT;
-- Only rows with a key pay for this index.
CREATE INDEX requests_by_key ON requests (key_id, created_at) WHERE key_id IS NOT NULL;
