-- The dashboard's alert page (issue 10 item 3) lists the alerts an alert inhibits
-- (`alerts.inhibited_by = $1`); without an index that is a scan of every alert on each view.
-- Partial: only the few linked alerts are indexed. (`covered_by` has `alerts_covered_idx`.)
create index alerts_inhibited_idx on alerts (inhibited_by) where inhibited_by is not null;
