-- Foundation schema: groups, devices, client-ID mappings, presence events, hourly impressions.
-- Every timestamp is timestamptz (UTC on the wire). Ingest writes to these tables are
-- commutative (greatest wins, counters add, events unique on their natural key) so that any
-- number of ingest replicas may write at once and replays change nothing.

-- A group is a building or site. It carries the time zone that quiet hours are read in.
create table groups (
    id          text primary key,
    name        text not null,
    time_zone   text not null default 'UTC',
    -- 'config' for groups from the configuration file, 'topic' for groups named by a topic level
    source      text not null default 'config',
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- One row per device: identity, connectivity (decided by the newest presence event, §2a),
-- telemetry summary and health state. Devices are created on first sight (presence or
-- telemetry), never by connect_failed, and are retired rather than deleted so history stays.
create table devices (
    id                     text primary key,
    group_id               text references groups (id) on delete set null,
    created_at             timestamptz not null default now(),
    retired_at             timestamptz,

    -- the event that currently decides connectivity; compared by presence_is_newer()
    connected              boolean,
    conn_event_ts          timestamptz,
    conn_version           bigint,
    conn_session           text,

    -- greatest-wins summaries of the presence history
    last_connected_at      timestamptz,
    last_disconnected_at   timestamptz,
    last_disconnect_reason text,
    last_ip                text,
    last_principal         text,

    -- telemetry: arrival time of the newest impression (our clock) and the newest device time
    last_impression_at     timestamptz,
    last_device_ts         timestamptz,

    -- health, owned by the detector
    state                  text not null default 'never_seen'
        check (state in ('never_seen', 'healthy', 'late', 'silent', 'offline', 'quiet', 'retired')),
    state_since            timestamptz not null default now()
);

-- The device list filters by group and by state and pages by id.
create index devices_group_idx on devices (group_id, id);
create index devices_state_idx on devices (state, id);

-- Client ID -> device id for bridges whose MQTT client ID is not the device id
-- (configuration now, inventory later). Mirrors what the service uses, for the API and ops.
create table client_ids (
    client_id  text primary key,
    device_id  text not null,
    source     text not null default 'config',
    updated_at timestamptz not null default now()
);

-- Every lifecycle event once. Append-only; a retention job deletes old rows by received_at.
-- Natural key: (client ID, session, event type, version). AWS redelivers (QoS 1) and bridges
-- replay; `on conflict do nothing` makes that harmless. session_key is sessionIdentifier, or
-- "ts:<epoch ms>" when AWS omits it (connect_failed), so distinct failures stay distinct.
create table presence_events (
    id                          bigint generated always as identity primary key,
    client_id                   text not null,
    -- null for clients that are not (yet) devices, e.g. connect_failed from a scanner
    device_id                   text,
    event_type                  text not null
        check (event_type in ('connected', 'disconnected', 'connect_failed')),
    session_key                 text not null,
    -- -1 when AWS omits it (connect_failed only)
    version_number              bigint not null,
    event_ts                    timestamptz not null,
    received_at                 timestamptz not null default now(),
    session_identifier          text,
    thing_name                  text,
    principal_identifier        text,
    ip_address                  text,
    client_initiated_disconnect boolean,
    disconnect_reason           text,
    connect_failure_reason      text,
    unique (client_id, session_key, event_type, version_number)
);

-- A device's timeline, newest first, paged by (event_ts, id).
create index presence_events_device_idx on presence_events (device_id, event_ts desc, id desc)
    where device_id is not null;
-- Disconnect events carry no address: join on the session to find where it came from.
create index presence_events_session_idx on presence_events (session_identifier)
    where session_identifier is not null;
-- The retention job deletes by arrival time.
create index presence_events_received_idx on presence_events (received_at);

-- Impression counts per device and hour, bucketed by device time (arrival time when absent).
-- Approximate under QoS 1 redelivery: a redelivered message counts twice.
create table impressions_hourly (
    device_id text not null references devices (id) on delete cascade,
    hour      timestamptz not null,
    count     bigint not null check (count >= 0),
    primary key (device_id, hour)
);

-- The presence ordering rule of DESIGN.md §2a, in one place, used by the conditional upsert so
-- that concurrent writers converge. Mirrors domain::presence::Ordering::is_newer:
-- more than 30 minutes apart -> later timestamp; else higher version; at equal versions a
-- disconnect beats a connect; complete ties -> later timestamp, then larger session.
create function presence_is_newer(
    n_ts timestamptz, n_version bigint, n_connected boolean, n_session text,
    c_ts timestamptz, c_version bigint, c_connected boolean, c_session text
) returns boolean
language sql immutable parallel safe
as $$
    select case
        when c_ts is null then true
        when abs(extract(epoch from (n_ts - c_ts))) > 1800 then n_ts > c_ts
        when n_version <> c_version then n_version > c_version
        when n_connected <> c_connected then not n_connected
        when n_ts <> c_ts then n_ts > c_ts
        -- byte order, like Rust's: the database's default collation must not decide
        else n_session collate "C" > c_session collate "C"
    end
$$;
