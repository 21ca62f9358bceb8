-- The cell table (OpenCellID layout), platform-wide reference data.
-- +goose Up
CREATE TABLE cells (
    mcc        INTEGER NOT NULL,
    mnc        INTEGER NOT NULL,
    area       BIGINT NOT NULL,
    cell       BIGINT NOT NULL,
    radio      TEXT NOT NULL,
    lat        DOUBLE PRECISION NOT NULL,
    lon        DOUBLE PRECISION NOT NULL,
    range_m    DOUBLE PRECISION NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (mcc, mnc, area, cell)
);
CREATE INDEX cells_eci ON cells (mcc, mnc, cell, updated_at);

-- +goose Down
DROP TABLE cells;
