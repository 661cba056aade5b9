-- Inhibition (issue 8 part 12): while a more specific alert fires for the same device (a
-- client-ID conflict, throttling, refused credentials, a heartbeat gap), the less specific
-- `flapping` alert it causes is still recorded, but linked to the alert that speaks for it
-- and not notified. Like `covered_by` for outages, the webhook worker supersedes the first
-- notification of an inhibited alert instead of sending it; an alert already paged is never
-- taken back. The link lasts for the inhibited alert's firing life and is cleared when a
-- resolved alert reopens, so that it is judged afresh.
-- `on delete set null`: retention deletes resolved alerts long after their targets may have
-- gone on firing; the target then merely forgets the link.
alter table alerts add column inhibited_by bigint references alerts (id) on delete set null;

-- The trail records the link (`inhibited`, with the source alert's id in `details.by`).
alter table alert_events drop constraint alert_events_type_check;
alter table alert_events add constraint alert_events_type_check check (type in (
    'opened', 'reclassified', 'covered', 'uncovered', 'updated', 'acknowledged',
    'ticket_linked', 'resolved', 'reopened', 'inhibited'));
