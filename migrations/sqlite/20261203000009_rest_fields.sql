-- What only Feishu's REST API tells (issue 15): names (JSON text {"zh_cn","en_us"}), people
-- (user ids of user_id_type), Feishu's create/complete times (Unix ms), links and abstracts
-- (JSON text). Null until an observation brings them.
alter table processes add column process_name text;
alter table processes add column flow_definition_name text;
alter table processes add column initiator_id text;
alter table processes add column initiator_name text;
alter table processes add column process_create_time integer;
alter table processes add column process_complete_time integer;
alter table processes add column links text;
alter table processes add column abstracts text;
alter table processes add column user_id_type text;

alter table tasks add column operator_id text;
alter table tasks add column operator_name text;
alter table tasks add column node_name text;
alter table tasks add column links text;
alter table tasks add column task_create_time integer;
alter table tasks add column task_complete_time integer;
alter table tasks add column approval_opinion text;
alter table tasks add column user_id_type text;

alter table cc_tasks add column operator_id text;
alter table cc_tasks add column operator_name text;
alter table cc_tasks add column node_name text;
alter table cc_tasks add column cc_create_time integer;
alter table cc_tasks add column user_id_type text;

-- "Pending approvals of one person" and "processes one person started", paged by id.
create index tasks_operator on tasks (operator_id, approver_id);
create index processes_initiator on processes (initiator_id, process_id);
