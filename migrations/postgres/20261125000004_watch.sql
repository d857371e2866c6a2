-- What watchers need from the change log without reading the state tables.
--
-- Every change row also records the process's status, business type and definition after
-- the change, and, for changes of the process row itself, its status before; a
-- WatchProcesses filter on status can then deliver the change that moves a process out of
-- the filter too. Rows written before this migration keep NULLs (treated as unknown).
alter table changes
    add column process_status          integer,
    add column previous_process_status integer,
    add column process_biz_type        text,
    add column process_flow_definition_id text;

-- Retention: changes at or below `pruned_through` have been deleted. A watch may resume from
-- any revision >= pruned_through; an older one is told so, never silently skipped. The
-- pruner deletes changes and advances this row in one transaction.
create table change_log_horizon (
    singleton      boolean primary key default true check (singleton),
    pruned_through bigint not null
);

insert into change_log_horizon (singleton, pruned_through) values (true, 0);

create index changes_change_time on changes (change_time);
