-- Scrub webhook URLs out of delivery errors already stored.
--
-- Until now a failed delivery kept reqwest's message, which quotes the whole URL ("error
-- sending request for url (https://hooks.example.com/services/T…/B…/X…?key=…)"), and receivers'
-- error pages often echo it too. For Slack-style endpoints the path is the credential, for
-- others a `?key=` query; `notifications.last_error` is served to read-only tokens by
-- `GET /api/v1/webhooks/deliveries`, and `delivery_attempts.error` holds the same text. The
-- worker now names the endpoint instead (alerts::redact); this replaces every URL-like
-- substring already stored with a placeholder.
--
-- The pattern is alerts::redact::URL_PATTERN in Postgres' syntax: a scheme, `://` (or `:\/\/`
-- as JSON escapes it), then everything up to whitespace, a quote or an angle bracket (greedy:
-- cutting a URL short would leave its secret tail behind). The URLs themselves are not in the
-- database, so a path echoed without its scheme ("Cannot POST /services/…") cannot be
-- recognised here; rows older than `retention.deliveries` (30 days) are deleted anyway.
--
-- `where … ~ …` first, so that only the rows that change are rewritten.
update notifications
   set last_error = regexp_replace(last_error,
           '[A-Za-z][A-Za-z0-9+.-]*:(//|\\/\\/)[^[:space:]"''<>]*', '<url redacted>', 'g')
 where last_error ~ '[A-Za-z][A-Za-z0-9+.-]*:(//|\\/\\/)';

update delivery_attempts
   set error = regexp_replace(error,
           '[A-Za-z][A-Za-z0-9+.-]*:(//|\\/\\/)[^[:space:]"''<>]*', '<url redacted>', 'g')
 where error ~ '[A-Za-z][A-Za-z0-9+.-]*:(//|\\/\\/)';
