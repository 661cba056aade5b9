-- The webhook worker hears of new work at once (issue 12, item 5): every row that becomes
-- pending in the outbox says so on the Postgres channel `fleetwatch_outbox`, and each
-- replica's worker (`alerts::webhook::run`) LISTENs and claims at once instead of at its next
-- poll. Rows due later (`group_wait`, retries) are found by the worker itself, which sleeps
-- until the earliest due one. The payload is empty: Postgres folds identical notifications of
-- one transaction into one, so a detector pass that writes 500 rows wakes each worker once.
-- The poll stays as the fallback (a lost LISTEN connection, a replica that just started).
--
-- The outbox is written a few times a minute, not per message: the global lock a notifying
-- transaction takes at commit costs ingest nothing (see migration 20261204001000).

create function outbox_notify() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('fleetwatch_outbox', '');
    return null;
end
$$;

-- a new row (a firing, a resolution, a reminder) …
create trigger notifications_outbox_insert after insert on notifications
    for each row when (new.status = 'pending')
    execute function outbox_notify();
-- … or one sent again (a redrive: dead → pending, due now)
create trigger notifications_outbox_redrive after update of status on notifications
    for each row when (new.status = 'pending' and old.status <> 'pending')
    execute function outbox_notify();
