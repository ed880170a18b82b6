-- direct_key: "<lower user id>:<higher user id>" for a one-to-one room, NULL for a group. Unique,
-- so two users share at most one direct room even when both open it at the same moment.
ALTER TABLE rooms ADD COLUMN direct_key TEXT NULL;
CREATE UNIQUE INDEX rooms_by_direct_key ON rooms (direct_key);

-- is_open: anyone may join the group without asking (otherwise they send a join request that
-- the owner or an admin approves).
ALTER TABLE rooms ADD COLUMN is_open INTEGER NOT NULL DEFAULT 0;

-- search_name: the name with ASCII letters lowered, what group search matches against (ASCII
-- letters in any case, every other character exactly, the same in SQLite and MySQL). SQLite's
-- lower() only lowers ASCII.
ALTER TABLE rooms ADD COLUMN search_name TEXT NOT NULL DEFAULT '';
UPDATE rooms SET search_name = lower(name);
