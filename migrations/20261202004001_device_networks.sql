-- Address drift (issue 9 item 8): which networks each device has connected from, and when.
-- A *network* is a carrier's egress as `domain::network` names it: a configured
-- `[networks.<name>]`, else the /16 of an IPv4 or the /32 of an IPv6 address. The detector's
-- connection pass (`detect::drift`) fills this from `connected` presence events past its cursor
-- and judges each connection against it (`domain::drift::judge`).
--
-- Writes are commutative: first_seen takes the least, last_seen and drift_at the greatest, so
-- replaying or reordering events leaves the same rows whatever the order. Rows whose last_seen
-- is older than `address_drift.history` are deleted by that pass (they can no longer make a
-- network "seen"), which bounds the table by devices × networks used within the history.
create table device_networks (
    -- the device (devices.id); no foreign key so that the history survives device rows being
    -- rewritten and so a retired device keeps its history like its other data
    device_id     text not null,
    -- the network name: a configured one (`carrier-a`) or a default (`203.0/16`,
    -- `2001:db8::/32`). Renaming a network in the configuration starts a new history for it.
    network       text not null,
    -- the earliest connect from this network we know (event time, bounded by arrival plus the
    -- allowed clock skew: a stamp from the future cannot make a network look recent)
    first_seen    timestamptz not null,
    -- the latest such connect (same clock)
    last_seen     timestamptz not null,
    -- the address of the connect at last_seen (for the alert's details and the API)
    last_address  text not null,
    -- its session identifier (disconnects carry no address: join on it)
    last_session  text,
    -- when (our arrival clock, the pass's `now`) a connect from this network was last judged
    -- drift; an `address_drift` alert resolves `address_drift.resolve_after` after the latest
    -- drift_at of its device. Null: never judged drift.
    drift_at      timestamptz,
    primary key (device_id, network)
);

-- retention deletes by age
create index device_networks_last_seen_idx on device_networks (last_seen);
