-- From here on (version 2) a row chains a salted digest of its personal part (actor, address,
-- user agent, target, before, after, outcome) instead of the part itself, so erasing a user can
-- blank those fields and drop the salt while the chain still verifies, and a guessed name
-- cannot be tested against the digest left behind. Rows written before (version 1) chain their
-- content whole and cannot be erased.
ALTER TABLE audit_log ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN salt TEXT;
ALTER TABLE audit_log ADD COLUMN personal_hash TEXT;
ALTER TABLE audit_log ADD COLUMN erased_at INTEGER;
CREATE INDEX audit_by_actor ON audit_log (actor);
CREATE INDEX audit_by_target ON audit_log (target);
