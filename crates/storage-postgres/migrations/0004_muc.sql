-- Group chat rooms (XEP-0045 persistent rooms, MUC Light rooms): the
-- configuration as the module serialises it, and one row per affiliation, so a
-- user's rooms are found by index. A room's history is in mam_messages with
-- (domain, username) = (service, room).
CREATE TABLE muc_rooms (
    service TEXT NOT NULL,
    room    TEXT NOT NULL,
    config  TEXT NOT NULL,
    PRIMARY KEY (service, room)
);

CREATE TABLE muc_affiliations (
    service     TEXT NOT NULL,
    room        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (service, room, jid)
);
CREATE INDEX muc_affiliations_jid ON muc_affiliations (service, jid);
