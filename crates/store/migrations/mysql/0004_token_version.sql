-- The twin of migrations/sqlite/0004_token_version.sql.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;
