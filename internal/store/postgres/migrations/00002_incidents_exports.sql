-- Incidents with their timelines, webhook endpoints and the durable outbox
-- of webhook deliveries. Times are BIGINT microseconds since the Unix
-- epoch (UTC); NULL means unset.
-- +goose Up
CREATE TABLE incidents (
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    title         TEXT NOT NULL,
    state         TEXT NOT NULL,
    severity      INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    device        TEXT NOT NULL,
    opened_by     TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    detected_at   BIGINT NOT NULL,
    opened_at     BIGINT NOT NULL,
    contained_at  BIGINT,
    eradicated_at BIGINT,
    recovered_at  BIGINT,
    closed_at     BIGINT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX incidents_tenant_opened ON incidents (tenant, opened_at);

CREATE TABLE incident_entries (
    tenant   TEXT NOT NULL,
    incident TEXT NOT NULL,
    id       TEXT NOT NULL,
    time     BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    text     TEXT NOT NULL,
    data     BYTEA,
    PRIMARY KEY (tenant, incident, id)
);
CREATE INDEX incident_entries_tenant_id ON incident_entries (tenant, id);

CREATE TABLE webhooks (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    secret      BYTEA NOT NULL,
    events_json TEXT NOT NULL,
    channel     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);

CREATE TABLE deliveries (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    webhook    TEXT NOT NULL,
    type       TEXT NOT NULL,
    body       BYTEA NOT NULL,
    state      TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    next_at    BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX deliveries_state_next ON deliveries (state, next_at);
CREATE INDEX deliveries_tenant_created ON deliveries (tenant, created_at);

-- +goose Down
DROP TABLE deliveries;
DROP TABLE webhooks;
DROP TABLE incident_entries;
DROP TABLE incidents;
