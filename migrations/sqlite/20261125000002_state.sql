-- Current state (SQLite): one row per process, node instance, approval task and cc task; the
-- same columns as on Postgres. Times are RFC 3339 text in UTC with six fractional digits, so
-- they compare as they sort.
create table processes (
    process_id         text primary key,
    status             integer,
    biz_type           text,
    flow_definition_id text,
    properties         integer,
    tenant_key         text,
    app_id             text,
    event_time         integer,
    event_id           text,
    change_time        text not null,
    revision           integer not null,
    check ((event_time is null) = (event_id is null))
);

create index processes_status on processes (status, process_id);
create index processes_biz_type on processes (biz_type, process_id);
create index processes_flow_definition on processes (flow_definition_id, process_id);
create index processes_change_time on processes (change_time);

create table nodes (
    process_node_id    text primary key,
    process_id         text not null,
    node_definition_id text,
    flow_definition_id text,
    node_type          integer,
    node_status        integer,
    biz_type           text,
    tenant_key         text,
    app_id             text,
    event_time         integer not null,
    event_id           text not null,
    change_time        text not null,
    revision           integer not null
);

create index nodes_process on nodes (process_id, process_node_id);

create table tasks (
    approver_id        text primary key,
    process_id         text not null,
    task_type          integer,
    status             integer,
    biz_type           text,
    flow_definition_id text,
    node_definition_id text,
    process_node_id    text,
    tenant_key         text,
    app_id             text,
    event_time         integer not null,
    event_id           text not null,
    change_time        text not null,
    revision           integer not null
);

create index tasks_process on tasks (process_id, approver_id);
create index tasks_status on tasks (status, approver_id);
create index tasks_type on tasks (task_type, approver_id);
create index tasks_biz_type on tasks (biz_type, approver_id);
create index tasks_flow_definition on tasks (flow_definition_id, approver_id);
create index tasks_node_definition on tasks (node_definition_id, approver_id);
create index tasks_change_time on tasks (change_time);

create table cc_tasks (
    approver_id text primary key,
    process_id  text not null,
    status      integer,
    biz_type    text,
    tenant_key  text,
    app_id      text,
    event_time  integer not null,
    event_id    text not null,
    change_time text not null,
    revision    integer not null
);

create index cc_tasks_process on cc_tasks (process_id, approver_id);
