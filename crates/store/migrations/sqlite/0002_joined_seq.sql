-- joined_seq: the room's seq when the member joined (0 for members since the room was created).
-- A member's delivery starts after it, also when they were removed and added back while online.
ALTER TABLE room_members ADD COLUMN joined_seq INTEGER NOT NULL DEFAULT 0;
