-- Meerkat PostgreSQL schema, version 1.
-- Applied inside a transaction (under an advisory lock) by meerkat-storage-postgres;
-- never edit an applied migration, add a new numbered file instead.
-- Identifier columns use the "C" collation: comparisons are byte-exact and ORDER BY
-- gives the byte order the storage traits promise, whatever the database locale.

CREATE TABLE users (
    domain      TEXT COLLATE "C" NOT NULL,
    username    TEXT COLLATE "C" NOT NULL,
    -- StoredCredentials::to_storage_string (SCRAM keys only, never a password).
    credentials TEXT             NOT NULL,
    created_at  TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, username)
);

CREATE TABLE roster_items (
    domain            TEXT COLLATE "C" NOT NULL,
    username          TEXT COLLATE "C" NOT NULL,
    jid               TEXT COLLATE "C" NOT NULL,
    name              TEXT,
    subscription      TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask_out           BOOLEAN NOT NULL,
    pending_in        BOOLEAN NOT NULL,
    pending_in_stanza TEXT,
    approved          BOOLEAN NOT NULL,
    visible           BOOLEAN NOT NULL,
    -- The groups in the user's order.
    group_names       TEXT[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (domain, username, jid)
);

CREATE TABLE roster_versions (
    domain   TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE offline_messages (
    id           BIGSERIAL PRIMARY KEY,
    domain       TEXT COLLATE "C" NOT NULL,
    username     TEXT COLLATE "C" NOT NULL,
    stored_at_ms BIGINT NOT NULL,
    stanza       TEXT   NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

CREATE TABLE xml_blobs (
    domain   TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    kind     TEXT COLLATE "C" NOT NULL,
    key      TEXT COLLATE "C" NOT NULL,
    xml      TEXT NOT NULL,
    PRIMARY KEY (domain, username, kind, key)
);

CREATE TABLE blocklist (
    domain   TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    jid      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (domain, username, jid)
);

CREATE TABLE last_activity (
    domain   TEXT COLLATE "C" NOT NULL,
    username TEXT COLLATE "C" NOT NULL,
    at_secs  BIGINT NOT NULL,
    status   TEXT   NOT NULL,
    PRIMARY KEY (domain, username)
);
