-- Commands sent to devices through the broker and their outcomes.
-- +goose Up
CREATE TABLE commands (
    tenant       TEXT NOT NULL,
    id           TEXT NOT NULL,
    device       TEXT NOT NULL,
    name         TEXT NOT NULL,
    args         BLOB NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT NOT NULL,
    error        TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires      INTEGER NOT NULL,
    completed_at INTEGER,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX commands_device ON commands (tenant, device, created_at);

-- +goose Down
DROP TABLE commands;
