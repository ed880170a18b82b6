-- member_count: how many rows room_members holds for the room, kept by the transactions that add
-- and remove them, so that reading a room or a user's rooms does not count a group's members
-- (a group of 100,000 made every connect of its members count 100,000 rows).
ALTER TABLE rooms ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET member_count = (SELECT COUNT(*) FROM room_members m WHERE m.room_id = rooms.id);
