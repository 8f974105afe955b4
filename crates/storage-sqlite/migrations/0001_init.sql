-- Meerkat SQLite schema, version 1.
-- Applied inside a transaction by meerkat-storage-sqlite; never edit an applied
-- migration, add a new numbered file instead.
-- Strings are compared with SQLite's default BINARY collation (byte-exact), which
-- is the sort order the storage traits promise.

CREATE TABLE users (
    domain      TEXT    NOT NULL,
    username    TEXT    NOT NULL,
    -- StoredCredentials::to_storage_string (SCRAM keys only, never a password).
    credentials TEXT    NOT NULL,
    -- Seconds since the Unix epoch.
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (domain, username)
) WITHOUT ROWID;

CREATE TABLE roster_items (
    domain            TEXT    NOT NULL,
    username          TEXT    NOT NULL,
    jid               TEXT    NOT NULL,
    name              TEXT,
    subscription      TEXT    NOT NULL CHECK (subscription IN ('none', 'to', 'from', 'both')),
    ask_out           INTEGER NOT NULL CHECK (ask_out IN (0, 1)),
    pending_in        INTEGER NOT NULL CHECK (pending_in IN (0, 1)),
    pending_in_stanza TEXT,
    approved          INTEGER NOT NULL CHECK (approved IN (0, 1)),
    visible           INTEGER NOT NULL CHECK (visible IN (0, 1)),
    -- The groups in the user's order, as a JSON array of strings.
    groups_json       TEXT    NOT NULL DEFAULT '[]',
    PRIMARY KEY (domain, username, jid)
) WITHOUT ROWID;

CREATE TABLE roster_versions (
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (domain, username)
) WITHOUT ROWID;

CREATE TABLE offline_messages (
    -- AUTOINCREMENT: ids are never reused, so they keep increasing per account
    -- even after the newest message was removed.
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    stanza       TEXT    NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

CREATE TABLE xml_blobs (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    xml      TEXT NOT NULL,
    PRIMARY KEY (domain, username, kind, key)
) WITHOUT ROWID;

CREATE TABLE blocklist (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    jid      TEXT NOT NULL,
    PRIMARY KEY (domain, username, jid)
) WITHOUT ROWID;

CREATE TABLE last_activity (
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    at_secs  INTEGER NOT NULL,
    status   TEXT    NOT NULL,
    PRIMARY KEY (domain, username)
) WITHOUT ROWID;
