-- Campaign revisions: every update of a campaign record increments rev and
-- is a compare-and-set on it, so that operator actions taken through any
-- node and the one running campaign engine never overwrite each other's
-- change unseen.
-- +goose Up
ALTER TABLE campaigns ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE campaigns DROP COLUMN rev;
