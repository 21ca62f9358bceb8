-- Per-device broker passwords for the legacy password listener: only the
-- argon2id hash (PHC string) is stored, never the password.
-- +goose Up
CREATE TABLE device_passwords (
    tenant     TEXT NOT NULL,
    device     TEXT NOT NULL,
    hash       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, device)
);

-- +goose Down
DROP TABLE device_passwords;
