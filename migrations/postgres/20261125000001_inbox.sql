-- The inbox: every accepted Feishu event, raw, exactly once.
--
-- event_id is the dedupe key (header.event_id for v2, uuid for v1). Feishu delivers at least
-- once, through the webhook and the long connection, to any replica; INSERT ... ON CONFLICT
-- (event_id) DO NOTHING inside the ingest transaction is what makes a redelivery a no-op.
-- Unknown event types are kept here too, so nothing Feishu was told we accepted is lost.
create table inbox (
    event_id    text collate "C" primary key,
    event_type  text not null,
    -- 'webhook' or 'long_connection': the first path that delivered the event.
    source      text not null check (source in ('webhook', 'long_connection')),
    -- Feishu's header.create_time (ms); 0 when the event carried none.
    create_time bigint not null,
    tenant_key  text,
    app_id      text,
    -- The plaintext event JSON (decrypted for encrypted webhooks).
    payload     jsonb not null,
    received_at timestamptz not null default now()
);

create index inbox_received_at on inbox (received_at);
