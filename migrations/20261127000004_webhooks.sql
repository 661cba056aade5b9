-- Webhooks: a transactional outbox of notifications and the log of every delivery attempt.
-- Notification rows are written in the same transaction as the alert change that causes them
-- (alerts::lifecycle), so a committed alert change can never miss its notification and a
-- rolled-back one never sends one. The worker (alerts::webhook) claims due rows with
-- `for update skip locked`, so any number of replicas may run it.

-- A mirror of the configured endpoints' routing rules, rewritten at start-up from the config.
-- Why in Postgres: the lifecycle runs inside the detector's transaction with nothing but a
-- connection, and must decide there which endpoints an alert change is for. Secrets and URLs
-- are not stored: the worker takes those from its own configuration.
create table webhook_endpoints (
    name                 text primary key,
    -- empty: every kind / every group
    kinds                text[] not null default '{}',
    groups               text[] not null default '{}',
    -- 0 critical, 1 error, 2 warning, 3 info: an alert is sent when its rank <= this
    max_severity_rank    int not null default 3,
    send_resolved        boolean not null default true,
    send_reminders       boolean not null default true,
    -- device alerts' firing waits this long (an outage may form and speak for them)
    group_wait_ms        bigint not null default 30000 check (group_wait_ms >= 0),
    -- a resolution waits this long (if the alert reopens meanwhile, neither is sent)
    resolve_wait_ms      bigint not null default 30000 check (resolve_wait_ms >= 0),
    repeat_interval_ms   bigint not null default 14400000 check (repeat_interval_ms > 0),
    updated_at           timestamptz not null default now()
);

-- The outbox. One row per (alert change, endpoint). `body` is the alert as the API shows it,
-- snapshotted when the change happened; the envelope (format, sent_at, signature) is built at
-- each attempt. Rows are never deleted by the worker: delivered/dead/superseded rows are the
-- delivery history the API lists (the retention job may prune old finished rows).
create table notifications (
    id               bigint generated always as identity primary key,
    alert_id         bigint not null references alerts (id),
    -- the endpoint's configured name (no foreign key: an endpoint removed from the config
    -- keeps its history; its pending rows are dead-lettered when the configuration is loaded)
    endpoint         text not null,
    event            text not null check (event in (
                         'alert.firing', 'alert.resolved', 'alert.reminder', 'alert.acknowledged')),
    -- the idempotency key receivers see in `Fleetwatch-Delivery`; the same on every attempt
    delivery_id      text not null unique default gen_random_uuid()::text,
    body             jsonb not null,
    -- pending: waiting for its next attempt; delivered: a 2xx came back; dead: gave up (a 4xx,
    -- or older than the endpoint's max_attempt_age); superseded: not needed any more (covered
    -- by an outage, resolved within group_wait, reopened within resolve_wait, ...)
    status           text not null default 'pending'
        check (status in ('pending', 'delivered', 'dead', 'superseded')),
    attempts         int not null default 0,
    -- when the row is next due; while an attempt is in flight, the end of its lease
    next_attempt_at  timestamptz not null,
    created_at       timestamptz not null,
    -- the retry schedule's age counts from here: created_at, or when it was re-driven
    retry_since      timestamptz not null,
    delivered_at     timestamptz,
    -- when the row reached delivered/dead/superseded
    finished_at      timestamptz,
    last_error       text
);

-- Claiming: the due pending rows, oldest first. Partial, so it stays small however long the
-- history grows.
create index notifications_due_idx on notifications (next_attempt_at, id)
    where status = 'pending';
-- Head-of-line per (alert, endpoint), and the "what did this endpoint last hear about this
-- alert" questions the worker asks before sending.
create index notifications_alert_idx on notifications (alert_id, endpoint, id);
-- The deliveries list pages newest first and filters by status.
create index notifications_status_idx on notifications (status, id desc);

-- Every attempt, append-only. A retention job should delete rows older than the longest
-- max_attempt_age plus the history ops want (e.g. 30 days), by `at`.
create table delivery_attempts (
    id              bigint generated always as identity primary key,
    notification_id bigint not null references notifications (id) on delete cascade,
    at              timestamptz not null,
    -- null when no HTTP response came back (timeout, connection refused, garbage)
    status_code     int,
    latency_ms      bigint not null,
    error           text
);
create index delivery_attempts_notification_idx on delivery_attempts (notification_id, id);
create index delivery_attempts_at_idx on delivery_attempts (at);
