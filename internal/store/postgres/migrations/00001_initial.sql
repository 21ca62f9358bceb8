-- Times are BIGINT microseconds since the Unix epoch (UTC); NULL means unset.
-- +goose Up
CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE operators (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    operator   TEXT NOT NULL,
    role       TEXT NOT NULL,
    name       TEXT NOT NULL,
    hash       BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_tenant_created ON tokens (tenant, created_at);

CREATE TABLE audit (
    tenant    TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    time      BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   BYTEA,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL,
    PRIMARY KEY (tenant, seq)
);

CREATE TABLE settings (
    tenant TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  BYTEA NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE devices (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    model       TEXT NOT NULL,
    serial      TEXT NOT NULL,
    imei        TEXT NOT NULL,
    iccid       TEXT NOT NULL,
    imsi        TEXT NOT NULL,
    msisdn      TEXT NOT NULL,
    tags_json   JSONB NOT NULL,
    groups_json JSONB NOT NULL,
    state       TEXT NOT NULL,
    firmware    TEXT NOT NULL,
    first_seen  BIGINT,
    last_seen   BIGINT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX devices_tenant_imsi ON devices (tenant, imsi) WHERE imsi <> '';
CREATE UNIQUE INDEX devices_tenant_iccid ON devices (tenant, iccid) WHERE iccid <> '';

CREATE TABLE alerts (
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    device        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    severity      INTEGER NOT NULL,
    detector      TEXT NOT NULL,
    first_seen    BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    count         INTEGER NOT NULL,
    state         TEXT NOT NULL,
    evidence_json TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX alerts_tenant_device_kind ON alerts (tenant, device, kind, last_seen);
CREATE INDEX alerts_tenant_first_seen ON alerts (tenant, first_seen);

CREATE TABLE actions (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    device     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    alert_id   TEXT NOT NULL,
    playbook   TEXT NOT NULL,
    actor      TEXT NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    undo       BYTEA,
    attempts   INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX actions_tenant_created ON actions (tenant, created_at);

CREATE TABLE cas (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    role       TEXT NOT NULL,
    cert_der   BYTEA,
    key_enc    BYTEA,
    active     BOOLEAN NOT NULL,
    trusted    BOOLEAN NOT NULL,
    not_after  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE certificates (
    tenant            TEXT NOT NULL,
    serial            TEXT NOT NULL,
    device            TEXT NOT NULL,
    issuer            TEXT NOT NULL,
    der               BYTEA,
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason INTEGER NOT NULL,
    PRIMARY KEY (tenant, serial)
);
CREATE INDEX certificates_tenant_device ON certificates (tenant, device, not_before);
CREATE INDEX certificates_tenant_issuer_revoked ON certificates (tenant, issuer, revoked_at);
CREATE INDEX devices_tags ON devices USING GIN (tags_json);
CREATE INDEX devices_groups ON devices USING GIN (groups_json);

-- +goose Down
DROP TABLE certificates;
DROP TABLE cas;
DROP TABLE actions;
DROP TABLE alerts;
DROP TABLE devices;
DROP TABLE settings;
DROP TABLE audit;
DROP TABLE tokens;
DROP TABLE operators;
DROP TABLE tenants;
