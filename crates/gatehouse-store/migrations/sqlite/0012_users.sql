-- Admin users and their logins. Passwords are Argon2id PHC strings; tokens are never stored,
-- only the ids (`jti`) of refresh tokens (to use each once) and of revoked access tokens.
CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL,          -- admin | viewer | member
    blocked        INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    deleted_at     INTEGER
);

-- Every login attempt, failures included.
CREATE TABLE login_history (
    id          TEXT PRIMARY KEY,           -- UUID v7
    at          INTEGER NOT NULL,
    username    TEXT NOT NULL,
    user_id     TEXT,                       -- NULL when no such user
    ip          TEXT,
    user_agent  TEXT,
    outcome     TEXT NOT NULL,              -- ok | failed | locked | limited
    reason      TEXT
);
CREATE INDEX login_history_by_time ON login_history (at);
CREATE INDEX login_history_by_user ON login_history (username, at);

-- A refresh token works once: `used_at` is set when it is exchanged; replaying it revokes
-- its whole family (every token descended from the same login).
CREATE TABLE refresh_tokens (
    jti         TEXT PRIMARY KEY,
    family      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

-- Access tokens logged out before their expiry; one row each, with its own expiry.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
