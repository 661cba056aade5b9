-- Carrier outages (issue 13): the network each device's last connection came from, so that the
-- grouping pass can count a network's reporting devices without reading every address.
--
-- Written by the address-drift pass (`detect::drift`, in the detector's connection pass) from
-- the settled `connected` events it classifies (`domain::network`: a named prefix list, else
-- the /16 of IPv4 or the /32 of IPv6 addresses), conditionally on event time, so a late old
-- event never moves a device back to a network it has left.

-- the network name (as in `device_networks.network`) of the newest connect we know; null
-- until one with a usable address is seen
alter table devices add column network text;
-- that connect's time (the same clock as `device_networks.last_seen`: event time bounded by
-- arrival plus the allowed skew)
alter table devices add column network_at timestamptz;

-- the grouping pass counts the reporting devices of a few networks at a time
create index devices_network_idx on devices (network) where network is not null;
