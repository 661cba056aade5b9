//! Why an input from outside was skipped. Each reason is a label on the
//! `fleetwatch_ingest_dropped_total` counter, so that ops can see bad input instead of guessing.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Payload larger than `mqtt.max_payload_bytes`.
    Oversized,
    /// Payload is not UTF-8.
    NotUtf8,
    /// Payload is not JSON, or not a JSON object.
    MalformedJson,
    /// A required field is missing or has the wrong type.
    MissingField,
    /// The device id is empty, too long or holds control characters.
    BadDeviceId,
    /// The topic matched no subscription, or lacks the configured device-id level.
    TopicMismatch,
    /// A presence event whose timestamp is unusable (before 2020 or more than a day ahead).
    BadTimestamp,
    /// A presence event of a type we do not know.
    UnknownEventType,
    /// An event about one of our own MQTT clients: we are not a device.
    OwnClient,
    /// A new device beyond `devices.max_devices`.
    DeviceCap,
    /// A `connect_failed` of a client that is not a device, beyond
    /// `presence.unknown_failed_clients` new clients per window.
    UnknownClientCap,
    /// The database refused or failed the write; the message is not acknowledged.
    StoreFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::Oversized,
        DropReason::NotUtf8,
        DropReason::MalformedJson,
        DropReason::MissingField,
        DropReason::BadDeviceId,
        DropReason::TopicMismatch,
        DropReason::BadTimestamp,
        DropReason::UnknownEventType,
        DropReason::OwnClient,
        DropReason::DeviceCap,
        DropReason::UnknownClientCap,
        DropReason::StoreFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::NotUtf8 => "not_utf8",
            DropReason::MalformedJson => "malformed_json",
            DropReason::MissingField => "missing_field",
            DropReason::BadDeviceId => "bad_device_id",
            DropReason::TopicMismatch => "topic_mismatch",
            DropReason::BadTimestamp => "bad_timestamp",
            DropReason::UnknownEventType => "unknown_event_type",
            DropReason::OwnClient => "own_client",
            DropReason::DeviceCap => "device_cap",
            DropReason::UnknownClientCap => "unknown_client_cap",
            DropReason::StoreFailed => "store_failed",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
