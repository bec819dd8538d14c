-- Compactions: one row each; the newest of a session is its compaction point, reloaded at start.
-- No foreign key, as for requests: rows queued while their session is deleted must not fail.
CREATE TABLE compactions (
    id               TEXT PRIMARY KEY,
    session_id       TEXT NOT NULL,
    request_id       TEXT,
    created_at       INTEGER NOT NULL,
    trigger          TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    summary_model    TEXT,
    fallback_reason  TEXT,
    model_key        TEXT NOT NULL,
    max_context      INTEGER NOT NULL,
    tokens_before    INTEGER NOT NULL,
    tokens_after     INTEGER NOT NULL,
    tokens_saved     INTEGER NOT NULL,
    messages_before  INTEGER NOT NULL,
    messages_after   INTEGER NOT NULL,
    summarized       INTEGER NOT NULL,
    cut              INTEGER NOT NULL,
    prefix_hash      TEXT NOT NULL,
    summary          TEXT NOT NULL,
    summary_tokens   INTEGER NOT NULL
);
CREATE INDEX compactions_by_session ON compactions (session_id, created_at);

-- Per-session compaction settings; NULL means "as configured".
CREATE TABLE compaction_settings (
    session_id       TEXT PRIMARY KEY,
    auto_enabled     INTEGER,
    threshold_pct    REAL,
    reserved_tokens  INTEGER NOT NULL DEFAULT 0
);
