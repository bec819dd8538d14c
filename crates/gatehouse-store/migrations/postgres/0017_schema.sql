-- The whole schema as of SQLite migration 17, in PostgreSQL's types: every integer the code
-- binds is an i64 (BIGINT), every float an f64 (DOUBLE PRECISION), every flag a bool.
-- Later migrations are numbered on from 18 in both directories.
-- Text sorts bytewise (COLLATE "C"), as SQLite's BINARY does, whatever the database's
-- collation: UUID v7 ids are compared and paged by their text, and orders must not differ
-- between the engines.

CREATE TABLE sessions (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    model_key   TEXT COLLATE "C",
    provider    TEXT COLLATE "C",
    created_at  BIGINT NOT NULL
);

CREATE TABLE requests (
    id                 TEXT COLLATE "C" PRIMARY KEY,
    request_id         TEXT COLLATE "C" NOT NULL,
    session_id         TEXT COLLATE "C" NOT NULL,
    created_at         BIGINT NOT NULL,
    provider           TEXT COLLATE "C" NOT NULL,
    model_key          TEXT COLLATE "C" NOT NULL,
    upstream_model     TEXT COLLATE "C" NOT NULL,
    stream             BOOLEAN NOT NULL,
    status             BIGINT NOT NULL,
    prompt_tokens_est  BIGINT NOT NULL,
    prompt_tokens      BIGINT,
    completion_tokens  BIGINT,
    cached_tokens      BIGINT,
    reasoning_tokens   BIGINT,
    usage_source       TEXT COLLATE "C" NOT NULL,
    max_context        BIGINT NOT NULL,
    context_pct        DOUBLE PRECISION NOT NULL,
    preview            TEXT COLLATE "C" NOT NULL,
    latency_ms         BIGINT NOT NULL,
    ttfb_ms            BIGINT,
    overhead_us        BIGINT NOT NULL,
    attempts           BIGINT NOT NULL,
    finish_reason      TEXT COLLATE "C",
    error_type         TEXT COLLATE "C",
    error_message      TEXT COLLATE "C",
    cost_usd           DOUBLE PRECISION,
    memory_tokens      BIGINT NOT NULL DEFAULT 0,
    chat_tokens        BIGINT NOT NULL DEFAULT 0,
    memory_ratio       DOUBLE PRECISION NOT NULL DEFAULT 0,
    routing            TEXT COLLATE "C",
    requested_model    TEXT COLLATE "C",
    purpose            TEXT COLLATE "C",
    key_id             TEXT COLLATE "C",
    team_id            TEXT COLLATE "C"
);
CREATE INDEX requests_by_session ON requests (session_id, created_at);
CREATE INDEX requests_by_key ON requests (key_id, created_at) WHERE key_id IS NOT NULL;
CREATE INDEX requests_by_team ON requests (team_id, created_at) WHERE team_id IS NOT NULL;

CREATE TABLE settings (
    key    TEXT COLLATE "C" PRIMARY KEY,
    value  TEXT COLLATE "C" NOT NULL
);

CREATE TABLE masked_content (
    hash          TEXT COLLATE "C" PRIMARY KEY,
    role          TEXT COLLATE "C" NOT NULL,
    tags          TEXT COLLATE "C" NOT NULL,   -- comma-separated: tool,file,codebase,console,json
    tokens        BIGINT NOT NULL,
    tokens_saved  BIGINT NOT NULL,
    content       TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT NOT NULL,
    key_id        TEXT COLLATE "C"
);
CREATE INDEX masked_content_by_time ON masked_content (created_at);
CREATE INDEX masked_by_key ON masked_content (key_id) WHERE key_id IS NOT NULL;

CREATE TABLE memory_entries (
    id              TEXT COLLATE "C" PRIMARY KEY,
    kind            TEXT COLLATE "C" NOT NULL,
    content         TEXT COLLATE "C" NOT NULL,
    tokens          BIGINT NOT NULL,
    session_id      TEXT COLLATE "C",
    access_count    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_access_at  BIGINT NOT NULL
);

CREATE TABLE compactions (
    id               TEXT COLLATE "C" PRIMARY KEY,
    session_id       TEXT COLLATE "C" NOT NULL,
    request_id       TEXT COLLATE "C",
    created_at       BIGINT NOT NULL,
    trigger          TEXT COLLATE "C" NOT NULL,
    strategy         TEXT COLLATE "C" NOT NULL,
    summary_model    TEXT COLLATE "C",
    fallback_reason  TEXT COLLATE "C",
    model_key        TEXT COLLATE "C" NOT NULL,
    max_context      BIGINT NOT NULL,
    tokens_before    BIGINT NOT NULL,
    tokens_after     BIGINT NOT NULL,
    tokens_saved     BIGINT NOT NULL,
    messages_before  BIGINT NOT NULL,
    messages_after   BIGINT NOT NULL,
    summarized       BIGINT NOT NULL,
    cut              BIGINT NOT NULL,
    prefix_hash      TEXT COLLATE "C" NOT NULL,
    summary          TEXT COLLATE "C" NOT NULL,
    summary_tokens   BIGINT NOT NULL
);
CREATE INDEX compactions_by_session ON compactions (session_id, created_at);

CREATE TABLE compaction_settings (
    session_id       TEXT COLLATE "C" PRIMARY KEY,
    auto_enabled     BOOLEAN,
    threshold_pct    DOUBLE PRECISION,
    reserved_tokens  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE responses (
    id          TEXT COLLATE "C" PRIMARY KEY,
    session_id  TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    input       TEXT COLLATE "C" NOT NULL,   -- JSON array of input items, history included
    response    TEXT COLLATE "C" NOT NULL,   -- the Response object
    key_id      TEXT COLLATE "C"
);
CREATE INDEX responses_by_time ON responses (created_at);
CREATE INDEX responses_by_session ON responses (session_id);
CREATE INDEX responses_by_key ON responses (key_id) WHERE key_id IS NOT NULL;

CREATE TABLE keys (
    id                     TEXT COLLATE "C" PRIMARY KEY,
    name                   TEXT COLLATE "C" NOT NULL,
    digest                 TEXT COLLATE "C" NOT NULL UNIQUE,
    prefix                 TEXT COLLATE "C" NOT NULL,
    last4                  TEXT COLLATE "C" NOT NULL,
    owner                  TEXT COLLATE "C",
    models                 TEXT COLLATE "C" NOT NULL,   -- JSON array of globs
    rpm                    BIGINT,
    tpm                    BIGINT,
    max_parallel_requests  BIGINT,
    max_budget_usd         DOUBLE PRECISION,
    budget_period_secs     BIGINT,
    soft_budget_usd        DOUBLE PRECISION,
    expires_at             BIGINT,
    blocked                BOOLEAN NOT NULL DEFAULT FALSE,
    metadata               TEXT COLLATE "C" NOT NULL,   -- JSON object
    previous_digest        TEXT COLLATE "C",
    previous_expires_at    BIGINT,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    deleted_at             BIGINT,
    spend_usd              DOUBLE PRECISION NOT NULL DEFAULT 0,
    budget_reset_at        BIGINT,
    team_id                TEXT COLLATE "C"
);
CREATE INDEX keys_by_update ON keys (updated_at);
CREATE INDEX keys_by_previous ON keys (previous_digest) WHERE previous_digest IS NOT NULL;

CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    id             TEXT COLLATE "C" NOT NULL UNIQUE,   -- UUID v7: a batch written twice stores it once
    at             BIGINT NOT NULL,
    actor          TEXT COLLATE "C" NOT NULL,
    ip             TEXT COLLATE "C",
    user_agent     TEXT COLLATE "C",
    action         TEXT COLLATE "C" NOT NULL,
    target         TEXT COLLATE "C",
    before         TEXT COLLATE "C",                   -- JSON, secrets left out
    after          TEXT COLLATE "C",
    outcome        TEXT COLLATE "C" NOT NULL,
    prev_hash      TEXT COLLATE "C" NOT NULL,
    hash           TEXT COLLATE "C" NOT NULL,
    version        BIGINT NOT NULL DEFAULT 1,
    salt           TEXT COLLATE "C",
    personal_hash  TEXT COLLATE "C",
    erased_at      BIGINT
);
CREATE INDEX audit_by_time ON audit_log (at);
CREATE INDEX audit_by_actor ON audit_log (actor);
CREATE INDEX audit_by_target ON audit_log (target);

CREATE TABLE users (
    id             TEXT COLLATE "C" PRIMARY KEY,
    username       TEXT COLLATE "C" NOT NULL UNIQUE,
    password_hash  TEXT COLLATE "C" NOT NULL,
    role           TEXT COLLATE "C" NOT NULL,          -- admin | viewer | member
    blocked        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    deleted_at     BIGINT,
    team_id        TEXT COLLATE "C"
);

CREATE TABLE login_history (
    id          TEXT COLLATE "C" PRIMARY KEY,   -- UUID v7
    at          BIGINT NOT NULL,
    username    TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C",                       -- NULL when no such user
    ip          TEXT COLLATE "C",
    user_agent  TEXT COLLATE "C",
    outcome     TEXT COLLATE "C" NOT NULL,              -- ok | failed | locked | limited
    reason      TEXT COLLATE "C"
);
CREATE INDEX login_history_by_time ON login_history (at);
CREATE INDEX login_history_by_user ON login_history (username, at);

CREATE TABLE refresh_tokens (
    jti         TEXT COLLATE "C" PRIMARY KEY,
    family      TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C" NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

CREATE TABLE revoked_tokens (
    jti         TEXT COLLATE "C" PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE provider_keys (
    provider    TEXT COLLATE "C" PRIMARY KEY,
    sealed      TEXT COLLATE "C" NOT NULL,
    last4       TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE teams (
    id                     TEXT COLLATE "C" PRIMARY KEY,
    name                   TEXT COLLATE "C" NOT NULL,
    models                 TEXT COLLATE "C" NOT NULL,   -- JSON array of globs
    rpm                    BIGINT,
    tpm                    BIGINT,
    max_parallel_requests  BIGINT,
    max_budget_usd         DOUBLE PRECISION,
    budget_period_secs     BIGINT,
    soft_budget_usd        DOUBLE PRECISION,
    blocked                BOOLEAN NOT NULL DEFAULT FALSE,
    metadata               TEXT COLLATE "C" NOT NULL,   -- JSON object
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL,
    deleted_at             BIGINT,
    spend_usd              DOUBLE PRECISION NOT NULL DEFAULT 0,
    budget_reset_at        BIGINT
);
CREATE INDEX teams_by_update ON teams (updated_at);
