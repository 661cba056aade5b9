-- Indexes the dashboard's reads need at 100,000 devices and 10,000 alerts (benches/pages.rs,
-- BENCHMARKS.md).
--
-- Text in a device id (`/devices?q=…`, `GET /api/v1/devices?q=…`: `id ilike '%…%'`): without
-- an index every search reads the whole devices table (≈ 50 ms at 100,000). A trigram index
-- answers a substring in a few rows. pg_trgm is a contrib extension Debian's and the managed
-- Postgres offerings ship, and a trusted one (PostgreSQL ≥ 13): the database owner may create it.
create extension if not exists pg_trgm;
create index devices_id_trgm_idx on devices using gin (id gin_trgm_ops);

-- Alerts of a group (`/alerts?group=…`, the API's `group` filter, the silences page's
-- "matches nothing" check for a group silence): newest first within the group. Partial:
-- device alerts without a group are not indexed here.
create index alerts_group_idx on alerts (group_id, opened_at desc, id desc)
    where group_id is not null;
