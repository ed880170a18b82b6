-- The twin of migrations/sqlite/0006_username_key.sql: the oldest account of each set of names
-- that differ only in case gets the key, the others keep NULL (reported when the store opens).
-- MySQL may not read the table an UPDATE writes except through a derived table, which it
-- materializes first. LOWER() of the utf8mb4_bin column lowers its ASCII letters.
ALTER TABLE users
    ADD COLUMN username_key VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;
UPDATE users u
    JOIN (SELECT MIN(id) AS first_id FROM users GROUP BY LOWER(username)) f ON f.first_id = u.id
    SET u.username_key = LOWER(u.username);
CREATE UNIQUE INDEX users_by_username_key ON users (username_key);
