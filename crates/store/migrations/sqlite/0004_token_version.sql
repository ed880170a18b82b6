-- token_version: bumped when the password changes; tokens carry the version they were issued
-- under, and one issued under an older version is refused.
ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
