-- Meerkat PostgreSQL schema, version 2: the message archive (XEP-0313) and its
-- preferences (XEP-0441).
-- Ids are server-assigned, unique per owner and increasing with time; every query
-- is a range scan over (owner, id) or (owner, with_jid, id). The owner may later be
-- a room (sender then holds the occupant).

CREATE TABLE mam_messages (
    domain        TEXT COLLATE "C" NOT NULL,
    username      TEXT COLLATE "C" NOT NULL,
    id            BIGINT  NOT NULL,
    with_jid      TEXT COLLATE "C" NOT NULL,
    with_resource TEXT COLLATE "C" NOT NULL,
    direction     TEXT    NOT NULL CHECK (direction IN ('in', 'out')),
    sender        TEXT    NOT NULL,
    -- The message's id attribute (XEP-0424 retractions refer to it).
    origin_id     TEXT,
    stanza        TEXT    NOT NULL,
    PRIMARY KEY (domain, username, id)
);
CREATE INDEX mam_messages_with ON mam_messages (domain, username, with_jid, id);
CREATE INDEX mam_messages_origin ON mam_messages (domain, username, with_jid, origin_id)
    WHERE origin_id IS NOT NULL;

CREATE TABLE mam_prefs (
    domain       TEXT NOT NULL,
    username     TEXT NOT NULL,
    default_mode TEXT NOT NULL CHECK (default_mode IN ('always', 'roster', 'never')),
    PRIMARY KEY (domain, username)
);

CREATE TABLE mam_prefs_jids (
    domain   TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    jid      TEXT COLLATE "C" NOT NULL,
    -- 1: always archived, 0: never archived.
    always   BOOLEAN NOT NULL,
    PRIMARY KEY (domain, username, always, jid)
);
