-- The model the client asked for, when another answered (a fallback, heavy-duty, `auto/…`).
ALTER TABLE requests ADD COLUMN requested_model TEXT;
-- NULL for a client's request; what the gateway called a model for otherwise
-- (`compaction_summary`), so spend totals include the gateway's own calls.
ALTER TABLE requests ADD COLUMN purpose TEXT;
-- Retention prunes by age, oldest first.
CREATE INDEX requests_by_time ON requests (created_at);
CREATE INDEX masked_content_by_time ON masked_content (created_at);
