-- The twin of migrations/sqlite/0009_devices.sql: devices and their delivery cursors. Device ids
-- are 1-64 printable ASCII characters, compared byte for byte as in SQLite.
CREATE TABLE devices (
    user_id    BIGINT      NOT NULL,
    device_id  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    first_seen BIGINT      NOT NULL,
    last_seen  BIGINT      NOT NULL,
    PRIMARY KEY (user_id, device_id),
    KEY devices_by_last_seen (last_seen),
    CONSTRAINT devices_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE device_cursors (
    user_id       BIGINT      NOT NULL,
    device_id     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    room_id       BIGINT      NOT NULL,
    delivered_seq BIGINT      NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id),
    CONSTRAINT device_cursors_device FOREIGN KEY (user_id, device_id)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
