-- Times are INTEGER microseconds since the Unix epoch (UTC); NULL means unset.
-- +goose Up
CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE operators (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    operator   TEXT NOT NULL,
    role       TEXT NOT NULL,
    name       TEXT NOT NULL,
    hash       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_tenant_created ON tokens (tenant, created_at);

CREATE TABLE audit (
    tenant    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    time      INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    details   BLOB,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    PRIMARY KEY (tenant, seq)
);

CREATE TABLE settings (
    tenant TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  BLOB NOT NULL,
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
    tags_json   TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    state       TEXT NOT NULL,
    firmware    TEXT NOT NULL,
    first_seen  INTEGER,
    last_seen   INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
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
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
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
    undo       BLOB,
    attempts   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX actions_tenant_created ON actions (tenant, created_at);

CREATE TABLE cas (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    role       TEXT NOT NULL,
    cert_der   BLOB,
    key_enc    BLOB,
    active     INTEGER NOT NULL,
    trusted    INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE certificates (
    tenant            TEXT NOT NULL,
    serial            TEXT NOT NULL,
    device            TEXT NOT NULL,
    issuer            TEXT NOT NULL,
    der               BLOB,
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason INTEGER NOT NULL,
    PRIMARY KEY (tenant, serial)
);
CREATE INDEX certificates_tenant_device ON certificates (tenant, device, not_before);
CREATE INDEX certificates_tenant_issuer_revoked ON certificates (tenant, issuer, revoked_at);

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
