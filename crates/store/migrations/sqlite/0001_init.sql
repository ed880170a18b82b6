-- Times are Unix milliseconds. Ids of users and rooms are auto-increment (below 2^53); message ids
-- are 53-bit Snowflakes minted by Send.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    nickname      TEXT    NOT NULL,
    avatar        TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    is_group   INTEGER NOT NULL,
    creator_id INTEGER NOT NULL REFERENCES users (id),
    owner_id   INTEGER NOT NULL REFERENCES users (id),
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);

-- delivered_seq: the member's delivery cursor (everything up to it reached one of their
-- connections, or was acknowledged); read_seq: what they have read.
CREATE TABLE room_members (
    room_id        INTEGER NOT NULL REFERENCES rooms (id),
    user_id        INTEGER NOT NULL REFERENCES users (id),
    role           TEXT    NOT NULL,
    group_nickname TEXT,
    joined_at      INTEGER NOT NULL,
    delivered_seq  INTEGER NOT NULL DEFAULT 0,
    read_seq       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id);

CREATE TABLE join_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id    INTEGER NOT NULL REFERENCES rooms (id),
    user_id    INTEGER NOT NULL REFERENCES users (id),
    message    TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    UNIQUE (room_id, user_id)
);

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    room_id       INTEGER NOT NULL REFERENCES rooms (id),
    seq           INTEGER NOT NULL,
    sender_id     INTEGER NOT NULL REFERENCES users (id),
    msg_type      TEXT    NOT NULL,
    content       TEXT    NOT NULL,
    client_msg_id TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (room_id, seq)
);
CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
