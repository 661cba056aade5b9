//! A webhook notification's delivery status and event (DESIGN.md §2 "Webhooks", §4 webhook).

text_enum! {
    /// Where a notification row is in the outbox.
    pub enum NotificationStatus {
        /// Waiting for (another) attempt.
        Pending = "pending",
        Delivered = "delivered",
        /// Out of retries (or its endpoint is gone); can be re-driven.
        Dead = "dead",
        /// Never to be sent: a silence held it, or a newer row of the same alert says it all.
        Superseded = "superseded",
    }
}

text_enum! {
    /// A notification's event, as receivers see it.
    pub enum Event {
        Firing = "alert.firing",
        Resolved = "alert.resolved",
        Reminder = "alert.reminder",
        Acknowledged = "alert.acknowledged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_unchanged() {
        assert_eq!(
            serde_json::to_value(Event::Reminder).unwrap(),
            "alert.reminder"
        );
        assert_eq!("alert.firing".parse::<Event>().unwrap(), Event::Firing);
        assert!("firing".parse::<Event>().is_err());
        assert_eq!(
            NotificationStatus::NAMES,
            ["pending", "delivered", "dead", "superseded"]
        );
    }
}
