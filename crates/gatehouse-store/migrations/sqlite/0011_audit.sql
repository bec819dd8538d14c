-- The audit trail: one row per state change, hash-chained so an edit shows
-- (hash = sha256(prev_hash || canonical row)). Nothing updates or deletes these rows.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,   -- UUID v7: a batch written twice stores it once
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    ip          TEXT,
    user_agent  TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    before      TEXT,                   -- JSON, secrets left out
    after       TEXT,
    outcome     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit_log (at);
