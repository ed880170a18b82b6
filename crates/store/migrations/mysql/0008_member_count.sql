-- The twin of migrations/sqlite/0008_member_count.sql.
ALTER TABLE rooms ADD COLUMN member_count BIGINT NOT NULL DEFAULT 0;
UPDATE rooms r
    SET r.member_count = (SELECT COUNT(*) FROM room_members m WHERE m.room_id = r.id);
