-- Sessions: one row per login (a family of refresh tokens), revoked by logout, by a password
-- change (every session of the user), or when one of its spent refresh tokens is presented again.
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Refresh tokens are stored only as the hex SHA-256 of the random token (256 bits of entropy:
-- a plain hash is enough, a stolen table gives no usable token). A token is spent by one refresh;
-- spent tokens are kept until they expire so that presenting one again is recognised as reuse.
CREATE TABLE refresh_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions (id),
    expires_at INTEGER NOT NULL,
    spent_at   INTEGER NULL
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
