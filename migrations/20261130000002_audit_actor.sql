-- Who really acted. Until now the acknowledgement's and the ticket's actor came from the request
-- body, and a silence's `created_by` could be overridden by it: any write token could act as
-- "alice (CEO)" and nothing recorded the token. From here on every actor column and every
-- alert_events.actor holds the authenticated principal, in one format: `token:<id>:<name>`
-- (`token:0:bootstrap` for the bootstrap token; `user:<name>` once staff log in). The name a
-- request gives is kept beside it, as who the principal acted on behalf of: worth showing (a
-- ticketing script acts for a person), never trusted.
--
-- Rows written before this migration keep what they had: their actor is whatever the body said.

-- The name the acknowledging request gave (`by`), if any; acknowledged_by is the principal.
alter table alerts add column ack_on_behalf_of text;

-- The name the creating request gave (`created_by`), if any; created_by is the principal.
alter table silences add column on_behalf_of text;
