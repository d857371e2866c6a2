-- The change log and its revision counter.
--
-- Every applied event gets the next revision: a one-row counter updated inside the ingest
-- transaction, so revisions are strictly increasing in COMMIT order with no gaps (a bigserial
-- is not: a reader could see 102 before 101 commits and skip 101 forever). The ingest
-- transaction locks this row first, which also serializes writers across replicas and so
-- rules out lock-order deadlocks between them.
create table revision_counter (
    singleton boolean primary key default true check (singleton),
    revision  bigint not null
);

insert into revision_counter (singleton, revision) values (true, 0);

-- One row per entity an applied event changed. An event that creates a process row as a side
-- effect (a task of a process not seen before) writes two rows under one revision.
-- `state` is the entity's new row as JSON, so a watcher can apply a change without reading
-- the state tables again.
create table changes (
    revision    bigint not null,
    entity      text not null check (entity in ('process', 'node', 'task', 'cc_task')),
    entity_id   text collate "C" not null,
    process_id  text collate "C" not null,
    event_id    text collate "C" not null,
    state       jsonb not null,
    change_time timestamptz not null,
    primary key (revision, entity, entity_id)
);

create index changes_process on changes (process_id, revision);
