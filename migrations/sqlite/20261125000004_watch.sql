-- What watch filters need from a change, and the change log's retention horizon (SQLite).
alter table changes add column process_status integer;
alter table changes add column previous_process_status integer;
alter table changes add column process_biz_type text;
alter table changes add column process_flow_definition_id text;

create table change_log_horizon (
    singleton      integer primary key default 1 check (singleton = 1),
    pruned_through integer not null
);

insert into change_log_horizon (singleton, pruned_through) values (1, 0);

create index changes_change_time on changes (change_time);
