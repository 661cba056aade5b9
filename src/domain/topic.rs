//! MQTT topic-filter matching, including the `$share/<group>/` prefix of shared subscriptions.

/// The filter without a `$share/<group>/` prefix.
pub fn strip_share(filter: &str) -> &str {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((_, f)) = rest.split_once('/') {
            return f;
        }
    }
    filter
}

/// Whether `topic` matches `filter` (`+` one level, `#` the rest). As MQTT requires, a filter
/// starting with a wildcard does not match a topic starting with `$`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let filter = strip_share(filter);
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The 0-based level `n` of a topic.
pub fn level(topic: &str, n: usize) -> Option<&str> {
    topic.split('/').nth(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("dt/+/impressions", "dt/s1/impressions"));
        assert!(!matches("dt/+/impressions", "dt/s1/x/impressions"));
        assert!(!matches("dt/+/impressions", "dt/s1"));
        assert!(matches("dt/#", "dt/a/b/c"));
        assert!(matches("dt/#", "dt"));
        assert!(matches("$share/g/dt/+/impressions", "dt/s1/impressions"));
        assert!(matches(
            "$aws/events/presence/connected/+",
            "$aws/events/presence/connected/c1"
        ));
        assert!(!matches("#", "$aws/events/presence/connected/c1"));
        assert!(!matches("+/x", "$SYS/x"));
    }

    #[test]
    fn levels() {
        assert_eq!(level("dt/s1/impressions", 1), Some("s1"));
        assert_eq!(level("dt/s1/impressions", 3), None);
    }
}
