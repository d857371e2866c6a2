-- On Postgres this version redacted tokens stored before redaction existed and kept payloads
-- as exact text. SQLite stores begin with both, so there is nothing to change; the version is
-- kept so both backends count their migrations alike.
select 1;
