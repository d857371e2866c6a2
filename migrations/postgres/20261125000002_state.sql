-- Current state: one row per process, node instance, approval task and cc task.
--
-- Events for one entity arrive out of order, so every row keeps the (event_time, event_id)
-- of the event it reflects and an event is applied only if its pair is greater
-- (ARCHITECTURE.md invariant 3). A process first seen through a child event has a row with
-- event_time/event_id NULL: no process event has been applied yet, its status is unknown.
-- Key columns use the "C" collation: byte order, which keyset pagination relies on.
create table processes (
    process_id         text collate "C" primary key,
    status             integer,
    biz_type           text,
    flow_definition_id text,
    properties         integer,
    tenant_key         text,
    app_id             text,
    event_time         bigint,
    event_id           text collate "C",
    change_time        timestamptz not null,
    revision           bigint not null,
    check ((event_time is null) = (event_id is null))
);

create index processes_status on processes (status, process_id);
create index processes_biz_type on processes (biz_type, process_id);
create index processes_flow_definition on processes (flow_definition_id, process_id);
create index processes_change_time on processes (change_time);

create table nodes (
    process_node_id    text collate "C" primary key,
    process_id         text collate "C" not null,
    node_definition_id text,
    flow_definition_id text,
    node_type          integer,
    node_status        integer,
    biz_type           text,
    tenant_key         text,
    app_id             text,
    event_time         bigint not null,
    event_id           text collate "C" not null,
    change_time        timestamptz not null,
    revision           bigint not null
);

create index nodes_process on nodes (process_id, process_node_id);

-- Approval tasks (approver events); approver_id is Feishu's task id.
create table tasks (
    approver_id        text collate "C" primary key,
    process_id         text collate "C" not null,
    task_type          integer,
    status             integer,
    biz_type           text,
    flow_definition_id text,
    node_definition_id text,
    process_node_id    text,
    tenant_key         text,
    app_id             text,
    event_time         bigint not null,
    event_id           text collate "C" not null,
    change_time        timestamptz not null,
    revision           bigint not null
);

create index tasks_process on tasks (process_id, approver_id);
create index tasks_status on tasks (status, approver_id);
create index tasks_type on tasks (task_type, approver_id);
create index tasks_biz_type on tasks (biz_type, approver_id);
create index tasks_flow_definition on tasks (flow_definition_id, approver_id);
create index tasks_node_definition on tasks (node_definition_id, approver_id);
create index tasks_change_time on tasks (change_time);

-- Carbon-copy tasks (cc events); approver_id is Feishu's cc task id.
create table cc_tasks (
    approver_id text collate "C" primary key,
    process_id  text collate "C" not null,
    status      integer,
    biz_type    text,
    tenant_key  text,
    app_id      text,
    event_time  bigint not null,
    event_id    text collate "C" not null,
    change_time timestamptz not null,
    revision    bigint not null
);

create index cc_tasks_process on cc_tasks (process_id, approver_id);
