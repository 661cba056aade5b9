-- Impressions anomaly (issue 13 part 2): a device that keeps reporting but stopped counting.
--
-- Ingest keeps, beside the hourly message counts, the sum of the impressions values per device
-- and anomaly bucket (`anomaly.bucket`, default 1 h; epoch-aligned, by *arrival* time so that a
-- bucket is complete one flush after it ends and can be judged once). The detector judges each
-- closed bucket once against the device's own baseline (`domain::anomaly`) and remembers how
-- far it got and each device's run of low buckets here, not in memory, so a new leader neither
-- skips nor repeats a bucket.

create table impression_buckets (
    -- the device; its buckets go with it
    device_id    text not null references devices (id) on delete cascade,
    -- start of the bucket: arrival time floored to `anomaly.bucket` since the Unix epoch
    bucket_start timestamptz not null,
    -- messages that arrived in the bucket (a bucket with fewer than `anomaly.min_messages` is
    -- not judged: a silent device is the heartbeat's business)
    messages     bigint not null check (messages >= 0),
    -- sum of their impressions values (a message without a usable value counts 1)
    impressions  bigint not null check (impressions >= 0),
    primary key (device_id, bucket_start)
);
-- the detector reads one bucket of every device at a time; retention deletes by age
create index impression_buckets_start_idx on impression_buckets (bucket_start);

-- One row: how far the impressions-anomaly pass has judged.
create table anomaly_state (
    id             boolean primary key default true check (id),
    -- start of the newest bucket judged; null before the first judgement (the pass then starts
    -- at the newest closed bucket rather than judging history)
    judged_through timestamptz,
    -- the bucket length (ms) `judged_through` was judged with: a changed `anomaly.bucket`
    -- starts afresh instead of misreading the cursor
    bucket_ms      bigint
);
insert into anomaly_state default values;

-- Per device, its current run of consecutive judged low buckets (a device with no run has no
-- row). Buckets that are not judged (quiet hours, too few messages, no baseline, the group
-- itself low) neither extend nor break a run.
create table anomaly_streaks (
    -- the device
    device_id   text primary key references devices (id) on delete cascade,
    -- how many judged buckets in a row were under `anomaly.below_fraction` of the baseline
    low_buckets integer not null check (low_buckets > 0),
    -- start of the newest of them
    last_low    timestamptz not null
);
