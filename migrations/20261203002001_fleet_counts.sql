-- Fleet counts that do not grow with the fleet: devices per (group, state) and firing alerts per
-- (kind, severity, acknowledged, covered), kept by triggers in the writing transaction, so the
-- summary and the dashboard's overview read a few hundred rows instead of counting 100,000.
--
-- Why deltas and not one row per key: the triggers only ever INSERT (+1 for the new key, -1
-- for the old). An upsert of one row per key makes every writer that moves a device lock the
-- same few hot rows until it commits: ingest's device creations all queue on
-- (null group, never_seen), and two transactions moving devices in opposite directions
-- (healthy -> late and late -> healthy) lock the two rows in opposite orders and deadlock.
-- Appended deltas take no row lock anyone else wants. A reader sums per key (a few hundred
-- folded rows plus the deltas since the last fold); `db::fleet_counts::fold` collapses the
-- deltas into one row per key in a single statement, and the self-check (leader only)
-- recounts, compares and appends a correcting delta for any drift.

create table device_state_counts (
    id       bigint generated always as identity primary key,
    -- the device's group; null for devices without one. No foreign key: a deleted group's
    -- devices move to null through the devices trigger (on delete set null), leaving this key
    -- summing to zero, which the next fold removes
    group_id text,
    -- the effective state: 'retired' when retired_at is set, whatever `state` says, exactly
    -- as the API and `db::devices::count_by_state` count it
    state    text not null,
    -- a change in the number of devices with this key (+1 / -1 from the trigger, any amount
    -- from a fold, the seed or a correction); the count of a key is the sum
    n        bigint not null
);
-- readers group by the key; the fold rewrites the whole table, so no other index is needed
create index device_state_counts_key_idx on device_state_counts (group_id, state);

create table firing_alert_counts (
    id           bigint generated always as identity primary key,
    kind         text not null,
    severity     text not null,
    -- acknowledged_by is not null
    acknowledged boolean not null,
    -- covered_by is not null (notified as part of a group or fleet outage)
    covered      boolean not null,
    -- change in the number of firing alerts with this key; the count is the sum
    n            bigint not null
);
create index firing_alert_counts_key_idx on firing_alert_counts (kind, severity);

-- The key a device counts under.
create function device_count_state(state text, retired_at timestamptz) returns text
language sql immutable parallel safe
as $$ select case when retired_at is not null then 'retired' else state end $$;

create function devices_count_delta() returns trigger
language plpgsql
as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        insert into device_state_counts (group_id, state, n)
        values (old.group_id, device_count_state(old.state, old.retired_at), -1);
    end if;
    if tg_op in ('UPDATE', 'INSERT') then
        insert into device_state_counts (group_id, state, n)
        values (new.group_id, device_count_state(new.state, new.retired_at), 1);
    end if;
    return null;
end
$$;

create trigger devices_count_insert after insert on devices
    for each row execute function devices_count_delta();
create trigger devices_count_delete after delete on devices
    for each row execute function devices_count_delta();
-- Only when the key changes: the telemetry flusher and presence ingest update other columns
-- of devices many times a second, and those updates must cost nothing here.
create trigger devices_count_update after update of state, group_id, retired_at on devices
    for each row
    when (old.group_id is distinct from new.group_id
          or device_count_state(old.state, old.retired_at)
             is distinct from device_count_state(new.state, new.retired_at))
    execute function devices_count_delta();

create function devices_count_truncate() returns trigger
language plpgsql
as $$
begin
    delete from device_state_counts;
    return null;
end
$$;
create trigger devices_count_truncate after truncate on devices
    for each statement execute function devices_count_truncate();

create function alerts_count_delta() returns trigger
language plpgsql
as $$
begin
    if tg_op in ('UPDATE', 'DELETE') and old.status = 'firing' then
        insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
        values (old.kind, old.severity, old.acknowledged_by is not null,
                old.covered_by is not null, -1);
    end if;
    if tg_op in ('UPDATE', 'INSERT') and new.status = 'firing' then
        insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
        values (new.kind, new.severity, new.acknowledged_by is not null,
                new.covered_by is not null, 1);
    end if;
    return null;
end
$$;

create trigger alerts_count_insert after insert on alerts
    for each row when (new.status = 'firing') execute function alerts_count_delta();
create trigger alerts_count_delete after delete on alerts
    for each row when (old.status = 'firing') execute function alerts_count_delta();
-- Summaries, details and trail-related updates of a firing alert change no key.
create trigger alerts_count_update
    after update of status, kind, severity, acknowledged_by, covered_by on alerts
    for each row
    when ((old.status = 'firing') is distinct from (new.status = 'firing')
          or (new.status = 'firing'
              and (old.kind is distinct from new.kind
                   or old.severity is distinct from new.severity
                   or (old.acknowledged_by is null) <> (new.acknowledged_by is null)
                   or (old.covered_by is null) <> (new.covered_by is null))))
    execute function alerts_count_delta();

create function alerts_count_truncate() returns trigger
language plpgsql
as $$
begin
    delete from firing_alert_counts;
    return null;
end
$$;
create trigger alerts_count_truncate after truncate on alerts
    for each statement execute function alerts_count_truncate();

-- Seed from the rows that exist. Creating the triggers above locked both tables against writes
-- until this migration commits, so no change can slip between the seed and the triggers.
insert into device_state_counts (group_id, state, n)
select group_id, device_count_state(state, retired_at), count(*)
from devices group by 1, 2;

insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
select kind, severity, acknowledged_by is not null, covered_by is not null, count(*)
from alerts where status = 'firing' group by 1, 2, 3, 4;
