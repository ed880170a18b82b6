-- The twin of migrations/sqlite/0002_joined_seq.sql: the room's seq when the member joined.
ALTER TABLE room_members ADD COLUMN joined_seq BIGINT NOT NULL DEFAULT 0;
