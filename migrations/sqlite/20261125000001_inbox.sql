-- The inbox (SQLite): every event ever accepted, exactly once (ARCHITECTURE.md invariant 2).
-- Same versions as migrations/postgres/; text compares in byte order (BINARY), as "C" does.
create table inbox (
    event_id    text primary key,
    event_type  text not null,
    -- 'webhook' or 'long_connection': the first path that delivered the event.
    source      text not null check (source in ('webhook', 'long_connection')),
    -- Feishu's header.create_time (ms); 0 when the event carried none.
    create_time integer not null,
    tenant_key  text,
    app_id      text,
    -- The plaintext event JSON, exactly as received (tokens redacted).
    payload     text not null,
    received_at text not null default (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

create index inbox_received_at on inbox (received_at);
