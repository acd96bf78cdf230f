-- Tandem's schema, version 1: documents, the dashboard's event log and its per-user records.
-- Text keys use the "C" collation, so they sort by bytes as the sled backend's keys do.

-- Each document's log: one row per update, in commit order by id. (origin, seq) names the
-- node boot that appended it and its position in that boot's appends: the idempotency key of
-- a retried group commit.
CREATE TABLE doc_updates (
    id     bigserial PRIMARY KEY,
    doc    text COLLATE "C" NOT NULL,
    origin bigint NOT NULL,
    seq    bigint NOT NULL,
    body   bytea NOT NULL,
    UNIQUE (origin, seq)
);
CREATE INDEX doc_updates_by_doc ON doc_updates (doc, id);

-- Each document's snapshot. A compaction locks this row (created with a NULL body on first
-- use), so at most one node compacts a document at a time.
CREATE TABLE doc_snapshots (
    doc        text COLLATE "C" PRIMARY KEY,
    body       bytea,
    upto       bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Per workspace: the last event id handed out, and the highest one retention removed.
CREATE TABLE event_counters (
    workspace text COLLATE "C" PRIMARY KEY,
    last_id   bigint NOT NULL,
    floor     bigint NOT NULL DEFAULT 0
);

CREATE TABLE events (
    workspace text COLLATE "C" NOT NULL,
    id        bigint NOT NULL,
    at_ms     bigint NOT NULL,
    body      bytea NOT NULL,
    origin    bigint NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (workspace, id),
    UNIQUE (origin, seq)
);

-- Small records by scope and key: chat badges, preferences, last seen, users.
CREATE TABLE dashboard_state (
    scope text COLLATE "C" NOT NULL,
    key   text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (scope, key)
);
