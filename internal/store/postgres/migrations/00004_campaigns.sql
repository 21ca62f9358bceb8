-- Firmware campaigns (package ota) and their per-device targets.
-- +goose Up
CREATE TABLE campaigns (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    release_sha256 TEXT NOT NULL,
    spec       BYTEA NOT NULL,
    state      TEXT NOT NULL,
    wave       INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    wave_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX campaigns_state ON campaigns (state);

CREATE TABLE campaign_targets (
    tenant     TEXT NOT NULL,
    campaign   TEXT NOT NULL,
    device     TEXT NOT NULL,
    wave       INTEGER NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    version    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, campaign, device)
);

-- +goose Down
DROP TABLE campaign_targets;
DROP TABLE campaigns;
