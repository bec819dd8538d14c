-- Memory/MCP content in the prompt (the seed's memory metrics): its tokens, the rest, the ratio.
ALTER TABLE requests ADD COLUMN memory_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN chat_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN memory_ratio REAL NOT NULL DEFAULT 0;
