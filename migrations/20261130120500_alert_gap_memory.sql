-- The heartbeat detector's memory of an open gap, in columns of its own: how the gap is
-- classified, and the baseline it is measured from (the arrival time of the last data and the
-- newest device timestamp when the alert opened). The detector used to read these back from
-- `details`, the JSON the API shows, so renaming an API field would have changed detection
-- (a missing baseline even read as "data returned" and resolved the alert). `details` stays
-- what the API shows; only the detector reads these. Null for every other kind.
alter table alerts
    add column gap_class text check (gap_class in ('silent', 'offline')),
    add column gap_last_data_at timestamptz,
    add column gap_last_device_ts timestamptz;

-- Backfill from what the detector read until now, with its defaults (an unknown
-- classification counted as silent).
update alerts set
    gap_class = case when details->>'classification' = 'offline' then 'offline' else 'silent' end,
    gap_last_data_at = (details->>'last_impression_at')::timestamptz,
    gap_last_device_ts = (details->>'last_device_ts')::timestamptz
where kind = 'heartbeat_gap';
