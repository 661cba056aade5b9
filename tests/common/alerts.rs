//! Alert specifications for tests that fire alerts through the real lifecycle
//! (`alerts::lifecycle::fire`): a device's alert and a group's, with the kind's default
//! severity and a summary naming the subject.

use fleetwatch::alerts::lifecycle::AlertSpec;
use fleetwatch::domain::alert::Kind;
use serde_json::json;

pub fn device_alert(kind: Kind, device: &str, group: Option<&str>) -> AlertSpec {
    AlertSpec {
        kind,
        subject: device.to_string(),
        device_id: Some(device.to_string()),
        group_id: group.map(str::to_string),
        severity: kind.default_severity(),
        summary: format!("{device}: {kind}"),
        details: json!({"device": device}),
    }
}

pub fn group_alert(kind: Kind, group: &str) -> AlertSpec {
    AlertSpec {
        kind,
        subject: group.to_string(),
        device_id: None,
        group_id: Some(group.to_string()),
        severity: kind.default_severity(),
        summary: format!("{group}: {kind}"),
        details: json!({"group": group}),
    }
}
