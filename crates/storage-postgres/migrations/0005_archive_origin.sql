-- Meerkat PostgreSQL schema, version 5: the archive drops its origin-id index.
-- A retraction (XEP-0424) finds the message it names among the conversation's
-- last 1,000 rows through (domain, username, with_jid, id), as on SQLite, so
-- archiving a row costs one index insert fewer.
DROP INDEX IF EXISTS mam_messages_origin;
