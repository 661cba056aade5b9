-- Detection beyond silence (issue 13): two new alert kinds, allowed in alerts and silences.
--
-- `network_outage`: a share of the devices whose last connection came from one carrier network
-- (a named prefix list, or by default the /16 of IPv4 and the /32 of IPv6 addresses) went
-- silent together across several buildings. Subject: the network's name. It covers the
-- devices' gap alerts and the group outages it explains, like the other outage kinds.
--
-- `impressions_anomaly`: a device keeps reporting but its impressions per bucket stay far below
-- its own baseline while its group is normal (a covered camera, a crashed counting process).
-- Subject: the device id.
alter table alerts drop constraint alerts_kind_check;
alter table alerts add constraint alerts_kind_check check (kind in (
    'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled', 'auth_failure',
    'address_drift', 'group_outage', 'fleet_outage', 'ingest_down', 'metric_threshold',
    'aws_poll_failing', 'network_outage', 'impressions_anomaly'));
alter table silences drop constraint silences_kind_check;
alter table silences add constraint silences_kind_check check (kind in (
    'heartbeat_gap', 'flapping', 'client_id_conflict', 'throttled', 'auth_failure',
    'address_drift', 'group_outage', 'fleet_outage', 'ingest_down', 'metric_threshold',
    'aws_poll_failing', 'network_outage', 'impressions_anomaly'));
