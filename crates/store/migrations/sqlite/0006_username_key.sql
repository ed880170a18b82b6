-- username_key: the username as accounts compare (Unicode NFKC, then lowercase; usernames are
-- ASCII, where that is lower()), unique, so `Alice` and `alice` cannot both be registered and a
-- login by either spelling finds the one account. The application writes it for new users.
--
-- Databases from before may already hold names that differ only in case. This migration does not
-- fail on them: the oldest account of each such set gets the key (any spelling logs into it), the
-- others keep a NULL key (NULLs never collide) and stay reachable by their exact name. Opening the
-- store logs every account left without a key (`username_collisions`).
ALTER TABLE users ADD COLUMN username_key TEXT NULL;
UPDATE users SET username_key = lower(username)
    WHERE NOT EXISTS (
        SELECT 1 FROM users o WHERE lower(o.username) = lower(users.username) AND o.id < users.id
    );
CREATE UNIQUE INDEX users_by_username_key ON users (username_key);
