-- Invariant 8: a stored observation never holds a secret. Payloads stored before this
-- migration kept the Verification Token (`header.token` of v2 events, `token` of v1); replace
-- it with the marker the service now writes in its place.
update inbox
   set payload = jsonb_set(payload, '{header,token}', '"[redacted]"')
 where payload #> '{header,token}' is not null;
update inbox
   set payload = jsonb_set(payload, '{token}', '"[redacted]"')
 where payload ? 'token';

-- Invariant 13: any authentic observation can be stored, whatever its strings hold. jsonb
-- refuses the escape \u0000, so an event carrying it was answered 503 on every delivery until
-- Feishu gave up. `json` keeps the exact text (and skips jsonb's parse on insert); the state
-- tables get U+FFFD in its place.
alter table inbox alter column payload type json using payload::json;
