-- Meerkat SQLite schema, version 5: a cheaper message archive to write.
-- Each archive owner (a user, or a room: (service, room)) gets a small integer
-- key, so the archive's two B-trees are keyed by (owner, id) and (owner,
-- with_jid, id) instead of repeating the domain and user name in every entry;
-- and the retraction lookup (XEP-0424) scans the conversation's most recent
-- rows through (owner, with_jid, id) instead of keeping an index of its own.
-- Writing a row then dirties two B-tree pages instead of four (the rowid table,
-- the primary key index, and the two indexes of version 2). Ids are unchanged.

CREATE TABLE mam_owners (
    owner    INTEGER PRIMARY KEY,
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    UNIQUE (domain, username)
);
INSERT INTO mam_owners (domain, username)
    SELECT DISTINCT domain, username FROM mam_messages ORDER BY domain, username;

CREATE TABLE mam_messages_v5 (
    owner         INTEGER NOT NULL,
    id            INTEGER NOT NULL,
    with_jid      TEXT    NOT NULL,
    with_resource TEXT    NOT NULL,
    direction     TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    sender        TEXT    NOT NULL,
    -- The message's id attribute (XEP-0424 retractions refer to it).
    origin_id     TEXT,
    stanza        TEXT    NOT NULL,
    PRIMARY KEY (owner, id)
);
INSERT INTO mam_messages_v5 (owner, id, with_jid, with_resource, direction, sender, origin_id, stanza)
    SELECT o.owner, m.id, m.with_jid, m.with_resource, m.direction, m.sender, m.origin_id, m.stanza
    FROM mam_messages m JOIN mam_owners o ON o.domain = m.domain AND o.username = m.username;
DROP TABLE mam_messages;
ALTER TABLE mam_messages_v5 RENAME TO mam_messages;
CREATE INDEX mam_messages_with ON mam_messages (owner, with_jid, id);
