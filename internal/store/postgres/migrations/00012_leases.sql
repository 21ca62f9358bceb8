-- Leases: the one node of a deployment that runs a singleton (the OTA
-- campaign engine, the mass-action runner) holds its lease until expires
-- and renews it; another node takes it over once it has expired.
-- +goose Up
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires     BIGINT NOT NULL
);

-- +goose Down
DROP TABLE leases;
