-- The dashboard's live updates (issue 10, item 6): whichever replica a browser's event stream
-- is held by must hear of a change whichever replica (or CLI) made it, so every write that
-- changes what a page shows says so on the Postgres channel `fleetwatch_live`, with the
-- page topic as payload: `alerts`, `devices`, `silences`, `webhooks`. Each replica LISTENs
-- once (`http::web::live`) and fans the topics out to its browsers' streams, at most one
-- event per stream per second.
--
-- Row-level triggers: Postgres folds identical notifications of one transaction into one, so
-- an acknowledgement of 500 alerts still sends one `alerts`; and a row trigger can say *which*
-- changes matter (`when`), where a statement trigger would fire for an update of no rows
-- (the detector's per-tick bookkeeping updates alerts' gap memory every tick). What is
-- deliberately *not* here: presence events and telemetry (`presence_events`,
-- `impressions_hourly`, the `devices` columns ingest writes many times a second). A
-- transaction that notifies takes a global lock at commit, which would serialise ingest; a
-- device's *state* changing is heard through `device_state_counts`, which its trigger writes
-- exactly when a device changes state, group or retirement (migration 20261203002001).

create function live_notify() returns trigger
language plpgsql
as $$
begin
    -- tg_argv[0]: the topic
    perform pg_notify('fleetwatch_live', tg_argv[0]);
    return null;
end
$$;

create trigger alerts_live_insert after insert or delete on alerts
    for each row execute function live_notify('alerts');
-- what a page shows of an alert; not `updated_at` or the gap memory (`gap_*`)
create trigger alerts_live_update after update on alerts
    for each row
    when ((old.status, old.severity, old.summary, old.acknowledged_by, old.ticket_ref,
           old.ticket_url, old.covered_by, old.inhibited_by)
          is distinct from
          (new.status, new.severity, new.summary, new.acknowledged_by, new.ticket_ref,
           new.ticket_url, new.covered_by, new.inhibited_by))
    execute function live_notify('alerts');
-- the fold (`db::fleet_counts::fold`) rewrites these rows without changing any count; it sets
-- `fleetwatch.live_quiet` for its transaction so that browsers are not woken for nothing
create trigger device_state_counts_live after insert on device_state_counts
    for each row
    when (new.n <> 0 and current_setting('fleetwatch.live_quiet', true) is distinct from 'on')
    execute function live_notify('devices');
create trigger device_events_live after insert on device_events
    for each row execute function live_notify('devices');
create trigger silences_live after insert or update or delete on silences
    for each row execute function live_notify('silences');
create trigger notifications_live_insert after insert on notifications
    for each row execute function live_notify('webhooks');
create trigger notifications_live_update after update on notifications
    for each row
    when ((old.status, old.attempts) is distinct from (new.status, new.attempts))
    execute function live_notify('webhooks');
