-- The twin of migrations/sqlite/0003_rooms_direct_and_open.sql (NULLs never collide in a UNIQUE
-- key). search_name is compared with a binary collation; existing names are lowered for ASCII
-- letters only (LOWER() would lower every letter).
ALTER TABLE rooms
    ADD COLUMN direct_key VARCHAR(64) NULL,
    ADD COLUMN is_open BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN search_name VARCHAR(200) NOT NULL DEFAULT '',
    ADD UNIQUE KEY rooms_by_direct_key (direct_key);
UPDATE rooms SET search_name = REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(name COLLATE utf8mb4_bin, 'A', 'a') COLLATE utf8mb4_bin, 'B', 'b') COLLATE utf8mb4_bin, 'C', 'c') COLLATE utf8mb4_bin, 'D', 'd') COLLATE utf8mb4_bin, 'E', 'e') COLLATE utf8mb4_bin, 'F', 'f') COLLATE utf8mb4_bin, 'G', 'g') COLLATE utf8mb4_bin, 'H', 'h') COLLATE utf8mb4_bin, 'I', 'i') COLLATE utf8mb4_bin, 'J', 'j') COLLATE utf8mb4_bin, 'K', 'k') COLLATE utf8mb4_bin, 'L', 'l') COLLATE utf8mb4_bin, 'M', 'm') COLLATE utf8mb4_bin, 'N', 'n') COLLATE utf8mb4_bin, 'O', 'o') COLLATE utf8mb4_bin, 'P', 'p') COLLATE utf8mb4_bin, 'Q', 'q') COLLATE utf8mb4_bin, 'R', 'r') COLLATE utf8mb4_bin, 'S', 's') COLLATE utf8mb4_bin, 'T', 't') COLLATE utf8mb4_bin, 'U', 'u') COLLATE utf8mb4_bin, 'V', 'v') COLLATE utf8mb4_bin, 'W', 'w') COLLATE utf8mb4_bin, 'X', 'x') COLLATE utf8mb4_bin, 'Y', 'y') COLLATE utf8mb4_bin, 'Z', 'z');
