-- Responses API responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
CREATE TABLE responses (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    input       TEXT NOT NULL,   -- JSON array of input items, history included
    response    TEXT NOT NULL    -- the Response object
);
CREATE INDEX responses_by_time ON responses (created_at);
CREATE INDEX responses_by_session ON responses (session_id);
