-- Silences (maintenance windows): while one is active, the alerts it matches are recorded and
-- visible as usual, but no endpoint is notified about them. When it ends (its `ends_at` passes
-- or it is deleted), the webhook worker brings each endpoint up to date once (alerts::silences).

create table silences (
    id          bigint generated always as identity primary key,
    -- The matcher: every field that is set must equal the alert's; at least one is set, so a
    -- silence can never mute the whole fleet by accident.
    device_id   text,
    group_id    text,
    kind        text check (kind in (
                    'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled',
                    'auth_failure', 'address_drift', 'group_outage', 'fleet_outage',
                    'ingest_down', 'metric_threshold')),
    starts_at   timestamptz not null,
    ends_at     timestamptz not null,
    created_by  text not null,
    comment     text not null,
    created_at  timestamptz not null,
    -- DELETE ends a silence early but keeps it: who muted what, when and why stays answerable.
    -- A silence is active when deleted_at is null and starts_at <= now < ends_at.
    deleted_at  timestamptz,
    deleted_by  text,
    constraint silences_matcher check (
        device_id is not null or group_id is not null or kind is not null),
    constraint silences_window check (ends_at > starts_at)
);

-- "Which silences are active at t" (every notification asks): the undeleted ones not yet over;
-- few at any time, however long the history grows.
create index silences_active_idx on silences (ends_at, starts_at) where deleted_at is null;

-- A notification that was not sent because a silence was active is kept, `superseded`, naming
-- the silence: the deliveries list shows why an endpoint heard nothing, and the worker's
-- "silence ended" pass looks only at (alert, endpoint) pairs that carry such a row, so an
-- endpoint added to the configuration later is never sent old alerts.
alter table notifications add column silenced_by bigint references silences (id);
-- The "silence ended" pass finds the rows a silence held back by silence.
create index notifications_silenced_idx on notifications (silenced_by)
    where silenced_by is not null;
