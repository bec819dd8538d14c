-- Provider keys set through the API, sealed (AES-256-GCM, `v1:{master_key_id}:…`); the
-- plaintext never reaches this file. `last4` lets a person tell keys apart.
CREATE TABLE provider_keys (
    provider    TEXT PRIMARY KEY,
    sealed      TEXT NOT NULL,
    last4       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
