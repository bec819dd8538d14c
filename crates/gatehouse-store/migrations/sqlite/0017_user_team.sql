-- A user may belong to a team: the keys a member makes join it, so a member cannot step
-- outside the team's limits and budget by making a new key.
ALTER TABLE users ADD COLUMN team_id TEXT;
