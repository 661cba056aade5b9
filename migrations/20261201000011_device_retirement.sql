-- Retirement (issue 8 part 11): `POST /api/v1/devices/{id}/retire` and `/unretire`.
--
-- `devices.retired_at` and the `retired` state exist since the first migration; what was
-- missing is who retired a device and when, across retire/unretire cycles. Alert trails cannot
-- hold that (a device may have no alert at all), so each device gets its own append-only event
-- history. Only changes are recorded: retiring a retired device writes nothing.
create table device_events (
    id        bigint generated always as identity primary key,
    device_id text not null references devices (id),
    at        timestamptz not null,
    type      text not null check (type in ('retired', 'unretired')),
    -- the authenticated principal, `token:<id>:<name>` (domain::actor)
    actor     text not null,
    details   jsonb not null default '{}'
);
create index device_events_device_idx on device_events (device_id, id);

-- Unretiring is a restart point of the device's heartbeat clock (DESIGN §2a): the time it was
-- away must not count as a gap.
alter table devices add column unretired_at timestamptz;
