-- Invariant 3, per field: every field of a state row takes its value from the newest event
-- (by create_time, event_id) that carries that field, so the final state is a function of the
-- set of events, whatever order they arrived in (every field is optional on the wire).
-- `versions` maps a field's name to [create_time, event_id] of the event that set it. A field
-- of a row written before it counts as set by the row's own (event_time, event_id).
alter table processes add column versions jsonb not null default '{}';
alter table nodes add column versions jsonb not null default '{}';
alter table tasks add column versions jsonb not null default '{}';
alter table cc_tasks add column versions jsonb not null default '{}';
