-- Where a long job (the REST backfill) stands, so a restart continues it: one row per job,
-- the job's own JSON.
create table cursors (
    name  text primary key,
    value text not null
);
