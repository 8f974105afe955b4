-- XEP-0045 §7.10: the nickname a user reserved by registering with a room
-- (empty: none). A reserved nickname is the user's alone in that room.
ALTER TABLE muc_affiliations ADD COLUMN nick TEXT NOT NULL DEFAULT '';
