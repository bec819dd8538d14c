-- Originals of the messages the sanitizer masked, by reference (16 hex of their SHA-256).
CREATE TABLE masked_content (
    hash          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    tags          TEXT NOT NULL,   -- comma-separated: tool,file,codebase,console,json
    tokens        INTEGER NOT NULL,
    tokens_saved  INTEGER NOT NULL,
    content       TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
