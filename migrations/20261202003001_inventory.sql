-- IoT registry inventory and connectivity reconciliation (issue 9 items 6 and 7).

-- Groups named by the registry (a thing group, or the configured thing attribute) are
-- 'inventory'. The column had no check; its values so far are 'config' and 'topic'.
alter table groups add constraint groups_source_check
    check (source in ('config', 'topic', 'inventory'));

-- Client-ID mappings from a thing attribute (`inventory.client_id_attribute`) are 'inventory';
-- configured ones stay 'config' and win over the registry's for the same client ID.
alter table client_ids add constraint client_ids_source_check
    check (source in ('config', 'inventory'));

-- Every device the registry has listed, and whether it is still listed. The sync retires only
-- devices in this table (a device that only ever reported over MQTT is never retired by it),
-- and only once a complete listing no longer names them.
create table inventory_things (
    -- the device the thing is (device id = thing name)
    device_id       text primary key references devices (id),
    -- when a listing first named it (our clock)
    first_listed_at timestamptz not null,
    -- when a complete listing first no longer named it; null while it is listed. A thing
    -- re-created under the same name clears it.
    gone_at         timestamptz
);

-- Device history gains the connectivity correction from the fleet index: stored connectivity
-- older than the index's `connectivity.timestamp` was set to what the index says. Not a
-- presence event: it is not in presence_events and takes no part in the §2a ordering beyond
-- being "connectivity as of the index's timestamp" (see presence_is_newer below).
alter table device_events drop constraint device_events_type_check;
alter table device_events add constraint device_events_type_check
    check (type in ('retired', 'unretired', 'connectivity_corrected'));

-- A correction is stored with conn_version null (presence events always carry a version), and
-- then only the timestamp decides: any presence event whose ordering timestamp is later than
-- the index's replaces it, an older one (however its version compares) does not undo it.
-- Every other comparison is unchanged (a row written by a presence event has a version).
create or replace function presence_is_newer(
    n_ts timestamptz, n_version bigint, n_connected boolean, n_session text,
    c_ts timestamptz, c_version bigint, c_connected boolean, c_session text
) returns boolean
language sql immutable parallel safe
as $$
    select case
        when c_ts is null then true
        when c_version is null then n_ts > c_ts
        when abs(extract(epoch from (n_ts - c_ts))) > 1800 then n_ts > c_ts
        when n_version <> c_version then n_version > c_version
        when n_connected <> c_connected then not n_connected
        when n_ts <> c_ts then n_ts > c_ts
        -- byte order, like Rust's: the database's default collation must not decide
        else n_session collate "C" > c_session collate "C"
    end
$$;
