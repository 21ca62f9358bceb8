-- Response: versioned per-tenant playbooks and resumable mass-action jobs.
-- +goose Up
CREATE TABLE playbook_versions (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    yaml       TEXT NOT NULL,
    actor      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE playbook_heads (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    enabled    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE mass_jobs (
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    selector   TEXT NOT NULL,
    rate       INTEGER NOT NULL,
    state      TEXT NOT NULL,
    total      INTEGER NOT NULL,
    cursor     TEXT NOT NULL,
    processed  INTEGER NOT NULL,
    changed    INTEGER NOT NULL,
    unchanged  INTEGER NOT NULL,
    refused    INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    error      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX mass_jobs_tenant_created ON mass_jobs (tenant, created_at);
CREATE INDEX alerts_tenant_kind_device ON alerts (tenant, kind, device);

-- +goose Down
DROP INDEX alerts_tenant_kind_device;
DROP TABLE mass_jobs;
DROP TABLE playbook_heads;
DROP TABLE playbook_versions;
