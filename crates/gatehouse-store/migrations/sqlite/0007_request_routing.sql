-- What routing did for a request beyond one plain attempt (retries, fallbacks, a model change).
ALTER TABLE requests ADD COLUMN routing TEXT;
