-- The MySQL/MariaDB twin of migrations/sqlite/0001_init.sql: same tables, columns and constraints.
-- Times are Unix milliseconds. Ids of users and rooms are auto-increment (below 2^53); message ids
-- are 53-bit Snowflakes minted by Send.
--
-- Portable to MariaDB 10.5+ and MySQL 8. Usernames and client_msg_ids compare byte for byte
-- (utf8mb4_bin) as they do in SQLite; both are validated to printable ASCII without spaces, so
-- the PAD SPACE rule of utf8mb4_bin never applies. VARCHAR lengths are characters and leave room
-- above the validation limits (username 32, nickname 50, room name 64, client_msg_id 64); message
-- content is MEDIUMTEXT because its byte limit is configurable.
CREATE TABLE users (
    id            BIGINT        NOT NULL AUTO_INCREMENT,
    username      VARCHAR(64)   CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    password_hash VARCHAR(255)  NOT NULL,
    nickname      VARCHAR(200)  NOT NULL,
    avatar        VARCHAR(1024) NOT NULL DEFAULT '',
    created_at    BIGINT        NOT NULL,
    updated_at    BIGINT        NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY users_by_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE rooms (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    name       VARCHAR(200) NOT NULL,
    is_group   BOOLEAN      NOT NULL,
    creator_id BIGINT       NOT NULL,
    owner_id   BIGINT       NOT NULL,
    last_seq   BIGINT       NOT NULL DEFAULT 0,
    created_at BIGINT       NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT rooms_creator FOREIGN KEY (creator_id) REFERENCES users (id),
    CONSTRAINT rooms_owner FOREIGN KEY (owner_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- delivered_seq: the member's delivery cursor (everything up to it reached one of their
-- connections, or was acknowledged); read_seq: what they have read.
CREATE TABLE room_members (
    room_id        BIGINT       NOT NULL,
    user_id        BIGINT       NOT NULL,
    role           VARCHAR(16)  NOT NULL,
    group_nickname VARCHAR(200) NULL,
    joined_at      BIGINT       NOT NULL,
    delivered_seq  BIGINT       NOT NULL DEFAULT 0,
    read_seq       BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id),
    KEY room_members_by_user (user_id),
    CONSTRAINT room_members_room FOREIGN KEY (room_id) REFERENCES rooms (id),
    CONSTRAINT room_members_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE join_requests (
    id         BIGINT        NOT NULL AUTO_INCREMENT,
    room_id    BIGINT        NOT NULL,
    user_id    BIGINT        NOT NULL,
    message    VARCHAR(1024) NOT NULL DEFAULT '',
    created_at BIGINT        NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY join_requests_by_room_user (room_id, user_id),
    KEY join_requests_by_user (user_id),
    CONSTRAINT join_requests_room FOREIGN KEY (room_id) REFERENCES rooms (id),
    CONSTRAINT join_requests_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- NULL client_msg_ids never collide in a UNIQUE key, as with SQLite's partial index.
CREATE TABLE messages (
    id            BIGINT      NOT NULL,
    room_id       BIGINT      NOT NULL,
    seq           BIGINT      NOT NULL,
    sender_id     BIGINT      NOT NULL,
    msg_type      VARCHAR(16) NOT NULL,
    content       MEDIUMTEXT  NOT NULL,
    client_msg_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    created_at    BIGINT      NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY messages_by_room_seq (room_id, seq),
    UNIQUE KEY messages_by_client_id (sender_id, client_msg_id),
    CONSTRAINT messages_room FOREIGN KEY (room_id) REFERENCES rooms (id),
    CONSTRAINT messages_sender FOREIGN KEY (sender_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
