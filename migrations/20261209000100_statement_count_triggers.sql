-- The fleet counts (migration 20261203002001) and the alerts' live notification (migration
-- 20261204001000) kept per statement instead of per row (issue 12, the detector at a million
-- devices).
--
-- Why: a mass gap moves 10,000 devices to `silent` and opens 10,000 alerts in a handful of
-- set-based statements, and the row-level triggers then ran, for each row, a PL/pgSQL call, two
-- delta inserts and as many live notifications: about half of the statement's time
-- (benches/detector.rs; 10,000 devices changing state: 940 ms with the row trigger, 390 ms with
-- this one, on the 2-core development machine).
--
-- What stays the same: the counts are the same sums. A statement-level trigger sees the rows
-- the statement changed as two transition tables (before and after) and appends, per key, the
-- rows entering it minus the rows leaving it, in one insert (keys whose sum is 0 are left out:
-- a telemetry flush that changes no device's state appends nothing). Still append-only: no
-- writer takes a row lock another wants (see the first migration for why). The live
-- notification is still one per transaction (Postgres folds identical ones) and still only when
-- something a page shows changed.
--
-- Cost for statements that change no key: Postgres keeps their rows in a tuplestore for the
-- trigger (transition tables cannot be combined with `update of <columns>`, so every update of
-- `devices` now has them, ingest's flush and presence writes included); measured within noise
-- beside the updates themselves, which are not HOT anyway (`deadline_at` is indexed).
--
-- One trigger per event: Postgres allows transition tables only on single-event triggers.

drop trigger devices_count_insert on devices;
drop trigger devices_count_delete on devices;
drop trigger devices_count_update on devices;
drop function devices_count_delta();

-- The devices' count deltas of one statement: +count per key of the rows after it, -count per
-- key of the rows before it (the transition tables `new_rows` / `old_rows`, whichever the event
-- has), netted per key.
create function devices_count_rows() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' then
        insert into device_state_counts (group_id, state, n)
        select group_id, device_count_state(state, retired_at), count(*)
        from new_rows group by 1, 2;
    elsif tg_op = 'DELETE' then
        insert into device_state_counts (group_id, state, n)
        select group_id, device_count_state(state, retired_at), -count(*)
        from old_rows group by 1, 2;
    else
        insert into device_state_counts (group_id, state, n)
        select group_id, state, sum(n) from (
            select group_id, device_count_state(state, retired_at) as state, -1 as n
            from old_rows
            union all
            select group_id, device_count_state(state, retired_at), 1 from new_rows
        ) d
        group by 1, 2
        having sum(n) <> 0;
    end if;
    return null;
end
$$;

create trigger devices_count_insert after insert on devices
    referencing new table as new_rows
    for each statement execute function devices_count_rows();
create trigger devices_count_delete after delete on devices
    referencing old table as old_rows
    for each statement execute function devices_count_rows();
create trigger devices_count_update after update on devices
    referencing old table as old_rows new table as new_rows
    for each statement execute function devices_count_rows();

drop trigger alerts_count_insert on alerts;
drop trigger alerts_count_delete on alerts;
drop trigger alerts_count_update on alerts;
drop function alerts_count_delta();
drop trigger alerts_live_insert on alerts;
drop trigger alerts_live_update on alerts;

-- The firing alerts' count deltas of one statement, netted per key exactly as the devices'
-- above (only firing rows count), and the `alerts` live notification when a page would show
-- a difference: any row inserted or deleted, or an update of what a page shows of an alert
-- (not `updated_at` or the gap memory `gap_*`, which the detector rewrites every tick).
create function alerts_count_rows() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' then
        insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
        select kind, severity, acknowledged_by is not null, covered_by is not null, count(*)
        from new_rows where status = 'firing' group by 1, 2, 3, 4;
        if exists (select from new_rows) then
            perform pg_notify('fleetwatch_live', 'alerts');
        end if;
    elsif tg_op = 'DELETE' then
        insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
        select kind, severity, acknowledged_by is not null, covered_by is not null, -count(*)
        from old_rows where status = 'firing' group by 1, 2, 3, 4;
        if exists (select from old_rows) then
            perform pg_notify('fleetwatch_live', 'alerts');
        end if;
    else
        insert into firing_alert_counts (kind, severity, acknowledged, covered, n)
        select kind, severity, acknowledged, covered, sum(n) from (
            select kind, severity, acknowledged_by is not null as acknowledged,
                   covered_by is not null as covered, -1 as n
            from old_rows where status = 'firing'
            union all
            select kind, severity, acknowledged_by is not null, covered_by is not null, 1
            from new_rows where status = 'firing'
        ) d
        group by 1, 2, 3, 4
        having sum(n) <> 0;
        if exists (
            select from old_rows o join new_rows n on n.id = o.id
            where (o.status, o.severity, o.summary, o.acknowledged_by, o.ticket_ref,
                   o.ticket_url, o.covered_by, o.inhibited_by)
                  is distinct from
                  (n.status, n.severity, n.summary, n.acknowledged_by, n.ticket_ref,
                   n.ticket_url, n.covered_by, n.inhibited_by)
        ) then
            perform pg_notify('fleetwatch_live', 'alerts');
        end if;
    end if;
    return null;
end
$$;

create trigger alerts_count_insert after insert on alerts
    referencing new table as new_rows
    for each statement execute function alerts_count_rows();
create trigger alerts_count_delete after delete on alerts
    referencing old table as old_rows
    for each statement execute function alerts_count_rows();
create trigger alerts_count_update after update on alerts
    referencing old table as old_rows new table as new_rows
    for each statement execute function alerts_count_rows();
