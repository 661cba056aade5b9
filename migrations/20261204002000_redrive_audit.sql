-- Who sent a dead notification again, and when (issue 10: every action lands in the audit
-- trail under its actor). A redrive is an operator's decision that a receiver is fixed; the
-- deliveries list and the API show the last one. Null: never redriven.
alter table notifications
    -- the principal, as the alert trail names it: `token:<id>:<name>` or `user:<name>`
    add column redriven_by text,
    add column redriven_at timestamptz;
