-- Documents' version history: whole copies of a document with when, who changed it since the
-- version before, and why (auto, named, before_restore, restore).
CREATE TABLE IF NOT EXISTS doc_versions (
    doc text NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    at_ms bigint NOT NULL,
    authors text[] NOT NULL,
    label text,
    reason text NOT NULL,
    content bytea NOT NULL,
    PRIMARY KEY (doc, id)
);
