-- Detection: expectations, per-device deadlines, alerts with an append-only trail, and the
-- detector's own state. The detector (one leader) is the only writer of health states and
-- alerts; ingest only moves deadlines earlier so that the detector looks again.

-- Group overrides of the fleet's expectations, and quiet hours read in the group's time zone
-- (e.g. '00:30-05:30'; '' means none).
alter table groups
    add column expected_interval_ms bigint check (expected_interval_ms > 0),
    add column grace_ms bigint check (grace_ms >= 0),
    add column quiet_hours text not null default '';

alter table devices
    -- device overrides of the group's or fleet's expectations
    add column expected_interval_ms bigint check (expected_interval_ms > 0),
    add column grace_ms bigint check (grace_ms >= 0),
    -- when the detector must look at this device next; null: nothing can change until data or
    -- a presence event arrives (ingest then sets it to the arrival time)
    add column deadline_at timestamptz,
    -- arrival time (our clock) of the presence event that decides connectivity: how old a
    -- disconnect is, for disconnect_grace, is measured on our clock like every deadline
    add column conn_received_at timestamptz,
    -- the earliest device timestamp among data that arrived while the device was in a gap:
    -- decides whether the buffered backlog covered the gap when the alert resolves
    add column gap_min_device_ts timestamptz;

-- A tick selects only what is due: this index makes that cheap whatever the fleet size.
create index devices_deadline_idx on devices (deadline_at)
    where deadline_at is not null and retired_at is null;

-- The first reconnect after the last data is a restart point of the heartbeat clock.
create index presence_events_connects_idx on presence_events (device_id, received_at)
    where event_type = 'connected';

-- Alerts. One firing alert per (kind, subject); a re-fire within the reopen window reopens the
-- same id. Ids are never reused.
create table alerts (
    id              bigint generated always as identity primary key,
    kind            text not null check (kind in (
                        'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled',
                        'auth_failure', 'address_drift', 'group_outage', 'fleet_outage',
                        'ingest_down', 'metric_threshold')),
    -- what the alert is about: a device id, a client id, a group id, 'fleet', 'ingest'
    subject         text not null,
    device_id       text,
    group_id        text,
    severity        text not null check (severity in ('critical', 'error', 'warning', 'info')),
    status          text not null check (status in ('firing', 'resolved')),
    opened_at       timestamptz not null,
    resolved_at     timestamptz,
    summary         text not null,
    details         jsonb not null default '{}',
    -- the group or fleet outage whose notification speaks for this alert
    covered_by      bigint references alerts (id),
    acknowledged_by text,
    acknowledged_at timestamptz,
    ack_note        text,
    ticket_ref      text,
    ticket_url      text,
    updated_at      timestamptz not null
);

create unique index alerts_one_firing_idx on alerts (kind, subject) where status = 'firing';
-- lists page newest first over (opened_at, id)
create index alerts_opened_idx on alerts (opened_at desc, id desc);
-- reopening looks up the latest resolved alert of a (kind, subject)
create index alerts_subject_idx on alerts (kind, subject, resolved_at desc);
create index alerts_device_idx on alerts (device_id, opened_at desc) where device_id is not null;
create index alerts_covered_idx on alerts (covered_by) where covered_by is not null;

-- The audit trail of every alert, append-only.
create table alert_events (
    id       bigint generated always as identity primary key,
    alert_id bigint not null references alerts (id),
    at       timestamptz not null,
    type     text not null check (type in (
                 'opened', 'reclassified', 'covered', 'uncovered', 'updated', 'acknowledged',
                 'ticket_linked', 'resolved', 'reopened')),
    actor    text not null default 'fleetwatch',
    details  jsonb not null default '{}'
);
create index alert_events_alert_idx on alert_events (alert_id, id);
create index alert_events_at_idx on alert_events (at);

-- One row of detector state, shared by whichever replica leads.
create table detector_state (
    id              boolean primary key default true check (id),
    -- the last service start or ingest recovery: a restart point for every device
    restart_at      timestamptz,
    -- presence_events.id up to which connection patterns have been examined
    presence_cursor bigint not null default 0
);
insert into detector_state default values;
