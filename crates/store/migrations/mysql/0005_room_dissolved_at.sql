-- The twin of migrations/sqlite/0005_room_dissolved_at.sql.
ALTER TABLE rooms ADD COLUMN dissolved_at BIGINT NULL;
