-- AWS pollers (issue 9): our own `aws_poll_failing` alert kind, and the CloudWatch metrics we
-- poll with their samples.

-- `aws_poll_failing`: polling AWS keeps failing (expired credentials, access denied, endpoint
-- down). Subject 'aws'; it concerns us, never a device. Silences may name it like any kind.
alter table alerts drop constraint alerts_kind_check;
alter table alerts add constraint alerts_kind_check check (kind in (
    'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled', 'auth_failure',
    'address_drift', 'group_outage', 'fleet_outage', 'ingest_down', 'metric_threshold',
    'aws_poll_failing'));
alter table silences drop constraint silences_kind_check;
alter table silences add constraint silences_kind_check check (kind in (
    'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled', 'auth_failure',
    'address_drift', 'group_outage', 'fleet_outage', 'ingest_down', 'metric_threshold',
    'aws_poll_failing'));

-- One row per CloudWatch metric we poll: a name in a namespace with one exact dimension set (a
-- GetMetricData query matches only an exact set, so `Connect.AuthError` with `Protocol=MQTT`
-- and the same metric with no dimensions are two rows). Rows are never deleted while samples
-- refer to them; a metric that ListMetrics stops returning keeps its history.
create table cloudwatch_metrics (
    id             bigint generated always as identity primary key,
    namespace      text not null,
    metric_name    text not null,
    -- the dimension set as one JSON object {"Name": "Value", …}; jsonb equality ignores key
    -- order, so the same set always finds the same row
    dimensions     jsonb not null default '{}',
    -- 'discovered' (ListMetrics) or 'config' (an explicit entry in `cloudwatch.metrics`)
    source         text not null check (source in ('discovered', 'config')),
    first_seen_at  timestamptz not null,
    -- the last discovery (or start, for configured ones) that still named it
    last_listed_at timestamptz not null,
    -- samples are complete up to here (the end of the last window read with every query
    -- `Complete`); after a restart polling resumes from here (at most `cloudwatch.backfill`
    -- back), re-reading `cloudwatch.window` before it because CloudWatch data lands late
    polled_through timestamptz,
    unique (namespace, metric_name, dimensions)
);

-- One value per metric and period. Upserted by (metric, period start): re-reading a window
-- replaces what was read before with CloudWatch's latest figure, so late data corrects a
-- sample and a replayed poll changes nothing. A period CloudWatch has no datapoint for has no
-- row (never a stored zero: absent and zero are told apart by whoever reads).
create table cloudwatch_samples (
    metric_id      bigint not null references cloudwatch_metrics (id) on delete cascade,
    period_start   timestamptz not null,
    period_seconds integer not null check (period_seconds > 0),
    -- the `Sum` statistic over the period
    value          double precision not null,
    -- when we last read it (our clock)
    fetched_at     timestamptz not null,
    primary key (metric_id, period_start)
);
-- retention deletes by age across every metric
create index cloudwatch_samples_period_idx on cloudwatch_samples (period_start);
