-- Sessions: one conversation each. Times are epoch milliseconds, ids UUID v7 text.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    model_key   TEXT,
    provider    TEXT,
    created_at  INTEGER NOT NULL
);

-- One row per proxied request (the seed's `metrics`). No foreign key: a row whose session was
-- deleted while it waited in the queue must not fail the batch it is written in.
CREATE TABLE requests (
    id                 TEXT PRIMARY KEY,
    request_id         TEXT NOT NULL,
    session_id         TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    provider           TEXT NOT NULL,
    model_key          TEXT NOT NULL,
    upstream_model     TEXT NOT NULL,
    stream             INTEGER NOT NULL,
    status             INTEGER NOT NULL,
    prompt_tokens_est  INTEGER NOT NULL,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    cached_tokens      INTEGER,
    reasoning_tokens   INTEGER,
    usage_source       TEXT NOT NULL,
    max_context        INTEGER NOT NULL,
    context_pct        REAL NOT NULL,
    preview            TEXT NOT NULL,
    latency_ms         INTEGER NOT NULL,
    ttfb_ms            INTEGER,
    overhead_us        INTEGER NOT NULL,
    attempts           INTEGER NOT NULL,
    finish_reason      TEXT,
    error_type         TEXT,
    error_message      TEXT
);
CREATE INDEX requests_by_session ON requests (session_id, created_at);

-- Small durable settings, such as the active session.
CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
