-- Each record of the dashboard's state carries the version it was written at: a write older
-- than the stored one is dropped (two nodes that both save a record: the newer state wins).
ALTER TABLE dashboard_state ADD COLUMN version bigint NOT NULL DEFAULT 0;
