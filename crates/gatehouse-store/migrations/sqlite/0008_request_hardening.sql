-- The model the client asked for, when another answered (a fallback, heavy-duty, `auto/…`).
ALTER TABLE requests ADD COLUMN requested_model TEXT;
-- NULL for a client's request; what the gateway called a model for otherwise
-- (`compaction_summary`), so spend totals include the gateway's own calls.
ALTER TABLE requests ADD COLUMN purpose TEXT;
-- Retention prunes masked originals by age. Requests need no index for it: their ids are
-- UUID v7, which sort by time, so the primary key already orders them (and every insert pays
-- for one index fewer).
CREATE INDEX masked_content_by_time ON masked_content (created_at);
