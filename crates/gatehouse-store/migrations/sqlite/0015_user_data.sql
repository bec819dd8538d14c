-- A masked original remembers the key of the request that first stored it, so a user's export
-- holds the originals of their requests and their erasure removes them.
ALTER TABLE masked_content ADD COLUMN key_id TEXT;
CREATE INDEX masked_by_key ON masked_content (key_id) WHERE key_id IS NOT NULL;
-- The same for stored Responses API responses: a user's are found in a shared session too.
ALTER TABLE responses ADD COLUMN key_id TEXT;
CREATE INDEX responses_by_key ON responses (key_id) WHERE key_id IS NOT NULL;
