-- dissolved_at: when the owner dissolved the group (NULL: it is live). A dissolved room keeps its
-- row, so its id is never handed out again and its messages keep their room; its memberships
-- (with the delivery cursors) and join requests are deleted when it is dissolved, and every read
-- of rooms leaves it out.
ALTER TABLE rooms ADD COLUMN dissolved_at INTEGER NULL;
