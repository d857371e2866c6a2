-- Observations of Feishu's REST API (backfill, reconciliation, enrichment) go through the same
-- ingest as events and are kept in the inbox like them, under the source 'rest'.
alter table inbox drop constraint inbox_source_check;
alter table inbox add constraint inbox_source_check
    check (source in ('webhook', 'long_connection', 'rest'));
