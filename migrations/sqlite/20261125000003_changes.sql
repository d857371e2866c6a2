-- The revision counter and the change log (SQLite). `state` is the row as JSON text, in the
-- same format as Postgres's jsonb column.
create table revision_counter (
    singleton integer primary key default 1 check (singleton = 1),
    revision  integer not null
);

insert into revision_counter (singleton, revision) values (1, 0);

create table changes (
    revision    integer not null,
    entity      text not null check (entity in ('process', 'node', 'task', 'cc_task')),
    entity_id   text not null,
    process_id  text not null,
    event_id    text not null,
    state       text not null,
    change_time text not null,
    primary key (revision, entity, entity_id)
);

create index changes_process on changes (process_id, revision);
