-- Meerkat SQLite schema, version 7: the message archive as a log plus two
-- indexes that are written in sorted batches.
--
-- Before, every archived row went into three B-trees at once: the table, its
-- (owner, id) key and the (owner, with_jid, id) index. Rows of a batch belong to
-- many owners, so each row dirtied a page of each index of its own, and each
-- dirty page cost a 4 KiB WAL frame: about two pages per row.
--
-- Now a row is appended to mam_messages under an increasing `seq` (the table's
-- rowid: appends fill the last page), and its entries in mam_by_owner and
-- mam_by_with are written later, in a batch sorted by owner, so that one page
-- takes all of an owner's new entries at once. The server keeps the rows not yet
-- indexed in memory and indexes an owner's rows before any read of its archive;
-- mam_index_state.indexed_seq says up to which seq every row is indexed, so the
-- rows left unindexed by a crash are indexed when the database is next opened.

-- Owner keys are never reused: index entries written late must not land on a
-- key that a removed archive gave up.
CREATE TABLE mam_owners_v7 (
    owner    INTEGER PRIMARY KEY AUTOINCREMENT,
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    UNIQUE (domain, username)
);
INSERT INTO mam_owners_v7 (owner, domain, username) SELECT owner, domain, username FROM mam_owners;
DROP TABLE mam_owners;
ALTER TABLE mam_owners_v7 RENAME TO mam_owners;

CREATE TABLE mam_messages_v7 (
    seq           INTEGER PRIMARY KEY,
    owner         INTEGER NOT NULL,
    id            INTEGER NOT NULL,
    with_jid      TEXT    NOT NULL,
    with_resource TEXT    NOT NULL,
    direction     TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    sender        TEXT    NOT NULL,
    -- The message's id attribute (XEP-0424 retractions refer to it).
    origin_id     TEXT,
    stanza        TEXT    NOT NULL
);
-- In the old table's own order (the order rows were written in), which needs no sort.
INSERT INTO mam_messages_v7 (owner, id, with_jid, with_resource, direction, sender, origin_id, stanza)
    SELECT owner, id, with_jid, with_resource, direction, sender, origin_id, stanza FROM mam_messages ORDER BY rowid;
DROP TABLE mam_messages;
ALTER TABLE mam_messages_v7 RENAME TO mam_messages;

CREATE TABLE mam_by_owner (
    owner INTEGER NOT NULL,
    id    INTEGER NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (owner, id)
) WITHOUT ROWID;
CREATE TABLE mam_by_with (
    owner    INTEGER NOT NULL,
    with_jid TEXT    NOT NULL,
    id       INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (owner, with_jid, id)
) WITHOUT ROWID;
INSERT INTO mam_by_owner (owner, id, seq) SELECT owner, id, seq FROM mam_messages ORDER BY owner, id;
INSERT INTO mam_by_with (owner, with_jid, id, seq)
    SELECT owner, with_jid, id, seq FROM mam_messages ORDER BY owner, with_jid, id;

CREATE TABLE mam_index_state (
    one         INTEGER PRIMARY KEY CHECK (one = 1),
    indexed_seq INTEGER NOT NULL
);
INSERT INTO mam_index_state (one, indexed_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM mam_messages;
