-- Device groups per tenant: static (members listed in devices.groups_json)
-- or dynamic (a selector, evaluated when a device filter names the group).
-- +goose Up
CREATE TABLE device_groups (
    tenant        TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    selector_json TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- +goose Down
DROP TABLE device_groups;
