-- Retention of the hourly impression counts (`retention.impressions_hourly`): the job deletes
-- rows older than the cutoff in batches, `where hour < $1 limit …`, and without an index on
-- `hour` each batch would read the whole table (a row per reporting device and hour: 24 million
-- a day at a million devices).
--
-- BRIN, not btree: rows arrive in hour order (the flush upserts the current hour), so a block
-- range's hours are narrow and a few kilobytes of summaries find the old ones; a btree would
-- add ≈ 20 bytes and an index insert to every row of the hottest table ingest writes. The
-- upsert only changes `count`, so it stays a HOT update with this index.
create index impressions_hourly_hour_idx on impressions_hourly using brin (hour);
