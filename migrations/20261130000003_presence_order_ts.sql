-- Presence from the future cannot pin connectivity (DESIGN.md §2a, amended).
--
-- An event's timestamp now counts for ordering as at most its arrival time plus a small skew
-- (`presence.max_clock_skew`, default 5 minutes). AWS stamps lifecycle events itself, so one
-- far ahead of our clock is forged or broken; under the "more than 30 minutes apart: later
-- timestamp wins" rule, a disconnect dated 23 hours ahead used to beat every genuine event
-- for 23 hours. Mirrors domain::presence::order_timestamp; a test holds the two together.
-- Strict: a missing timestamp (a connect's last_disconnected_at) stays missing.
create function presence_order_ts(
    ts timestamptz, received_at timestamptz, max_skew interval
) returns timestamptz
language sql immutable strict parallel safe
as $$
    select least(ts, received_at + max_skew)
$$;

-- devices.conn_event_ts, last_connected_at and last_disconnected_at hold ordering timestamps
-- from now on (presence_events.event_ts keeps what AWS sent). Rows that a future-dated event
-- already pinned are brought back with the default skew: the deciding event's timestamp is
-- bounded by its arrival; the summaries are recomputed from the stored events.
update devices
set conn_event_ts = presence_order_ts(conn_event_ts, conn_received_at, interval '5 minutes')
where conn_event_ts > conn_received_at + interval '5 minutes';

update devices d
set last_connected_at = (
        select max(presence_order_ts(e.event_ts, e.received_at, interval '5 minutes'))
        from presence_events e
        where e.device_id = d.id and e.event_type = 'connected')
where d.last_connected_at > now() + interval '5 minutes';

update devices d
set last_disconnected_at = (
        select max(presence_order_ts(e.event_ts, e.received_at, interval '5 minutes'))
        from presence_events e
        where e.device_id = d.id and e.event_type = 'disconnected')
where d.last_disconnected_at > now() + interval '5 minutes';
