-- Per field, the (create_time, event_id) of the event that set it (the per-field merge), as
-- JSON text (SQLite).
alter table processes add column versions text not null default '{}';
alter table nodes add column versions text not null default '{}';
alter table tasks add column versions text not null default '{}';
alter table cc_tasks add column versions text not null default '{}';
