-- The memory store: entries of kind frequent, episodic or semantic, identified by the hash of
-- their content (16 hex of SHA-256), so duplicates merge.
CREATE TABLE memory_entries (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    content         TEXT NOT NULL,
    tokens          INTEGER NOT NULL,
    session_id      TEXT,
    access_count    INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    last_access_at  INTEGER NOT NULL
);
