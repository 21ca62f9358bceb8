-- The cell table (OpenCellID layout), platform-wide reference data.
-- +goose Up
CREATE TABLE cells (
    mcc        INTEGER NOT NULL,
    mnc        INTEGER NOT NULL,
    area       INTEGER NOT NULL,
    cell       INTEGER NOT NULL,
    radio      TEXT NOT NULL,
    lat        REAL NOT NULL,
    lon        REAL NOT NULL,
    range_m    REAL NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (mcc, mnc, area, cell)
);
CREATE INDEX cells_eci ON cells (mcc, mnc, cell, updated_at);

-- +goose Down
DROP TABLE cells;
