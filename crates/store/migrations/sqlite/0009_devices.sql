-- Devices: the named clients of a user (the `device_id` of `/api/ws`), each with a delivery
-- cursor of its own per room. Connections without a `device_id` are the user's default device,
-- whose cursor stays room_members.delivered_seq. A device's cursor in a room with no row here is
-- the membership's joined_seq; its first connect writes a row per room at the room's last_seq.
-- Deleting a device (removed by its user, or unused for meta.device_ttl_days) deletes its cursors.
-- No foreign key to rooms: inserting a cursor would then lock the room row that every append
-- locks; a cursor of a room the user left or that was dissolved is never read (resync covers the
-- joined rooms, from no earlier than joined_seq).
CREATE TABLE devices (
    user_id    INTEGER NOT NULL REFERENCES users (id),
    device_id  TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX devices_by_last_seen ON devices (last_seen);

CREATE TABLE device_cursors (
    user_id       INTEGER NOT NULL,
    device_id     TEXT    NOT NULL,
    room_id       INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
