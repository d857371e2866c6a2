-- Observations of Feishu's REST API (backfill, reconciliation, enrichment) go through the same
-- ingest as events and are kept in the inbox like them, under the source 'rest'. SQLite cannot
-- alter a check constraint: the table is rebuilt as it was, with the wider check.
create table inbox_next (
    event_id    text primary key,
    event_type  text not null,
    -- 'webhook', 'long_connection' or 'rest': the first path that delivered the event.
    source      text not null check (source in ('webhook', 'long_connection', 'rest')),
    create_time integer not null,
    tenant_key  text,
    app_id      text,
    payload     text not null,
    received_at text not null default (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

insert into inbox_next (event_id, event_type, source, create_time, tenant_key, app_id, payload, received_at)
select event_id, event_type, source, create_time, tenant_key, app_id, payload, received_at from inbox;

drop table inbox;
alter table inbox_next rename to inbox;
create index inbox_received_at on inbox (received_at);
