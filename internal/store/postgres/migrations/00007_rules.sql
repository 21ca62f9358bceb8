-- Operator detection rules (CEL), per tenant, versioned by compare-and-set.
-- +goose Up
CREATE TABLE rules (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    expr        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    events_json TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    version     INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- +goose Down
DROP TABLE rules;
