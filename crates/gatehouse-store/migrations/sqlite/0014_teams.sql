-- Teams: limits and a budget shared by several keys; a request must fit its key's and its
-- team's. As for keys, edits write the limit columns, the gateway writes the spend ones, and a
-- deleted team keeps its row.
CREATE TABLE teams (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    models                 TEXT NOT NULL,   -- JSON array of globs
    rpm                    INTEGER,
    tpm                    INTEGER,
    max_parallel_requests  INTEGER,
    max_budget_usd         REAL,
    budget_period_secs     INTEGER,
    soft_budget_usd        REAL,
    blocked                INTEGER NOT NULL DEFAULT 0,
    metadata               TEXT NOT NULL,   -- JSON object
    created_at             INTEGER NOT NULL,
    updated_at             INTEGER NOT NULL,
    deleted_at             INTEGER,
    spend_usd              REAL NOT NULL DEFAULT 0,
    budget_reset_at        INTEGER
);
CREATE INDEX teams_by_update ON teams (updated_at);

ALTER TABLE keys ADD COLUMN team_id TEXT;
ALTER TABLE requests ADD COLUMN team_id TEXT;
CREATE INDEX requests_by_team ON requests (team_id, created_at) WHERE team_id IS NOT NULL;
