//! Webhook bodies and signatures, as pure functions of the notification: the native format
//! (DESIGN.md §4), PagerDuty Events API v2 and Slack-compatible `{"text": …}`, plus the
//! `Fleetwatch-Signature` header. The alert part is the snapshot taken when the alert changed;
//! the envelope (`delivery_id`, `sent_at`) and the signature are made at each attempt.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::config::{Secret, WebhookFormat};

/// PagerDuty refuses summaries longer than this.
pub const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// Slack messages list at most this many devices; the rest is a count.
pub const SLACK_MAX_DEVICES: usize = 10;

/// What one attempt sends, before the envelope.
#[derive(Debug, Clone, Copy)]
pub struct Notification<'a> {
    /// `alert.firing`, `alert.resolved`, `alert.reminder` or `alert.acknowledged`.
    pub event: &'a str,
    /// The alert snapshot (the API's alert fields).
    pub alert: &'a Value,
    pub delivery_id: &'a str,
    pub sent_at: DateTime<Utc>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The request body for `format`.
pub fn render(format: WebhookFormat, n: &Notification<'_>, routing_key: Option<&str>) -> Vec<u8> {
    let v = match format {
        WebhookFormat::Native => native(n),
        WebhookFormat::Pagerduty => pagerduty(n, routing_key.unwrap_or_default()),
        WebhookFormat::Slack => slack(n),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// DESIGN.md §4: `{"event", "alert", "delivery_id", "sent_at"}`.
pub fn native(n: &Notification<'_>) -> Value {
    json!({
        "event": n.event,
        "alert": n.alert,
        "delivery_id": n.delivery_id,
        "sent_at": rfc3339(n.sent_at),
    })
}

fn str_field<'a>(alert: &'a Value, key: &str) -> Option<&'a str> {
    alert.get(key).and_then(Value::as_str)
}

fn alert_id(alert: &Value) -> i64 {
    alert.get("id").and_then(Value::as_i64).unwrap_or_default()
}

/// Cut `s` to at most `max` characters, ending with `…` when cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// PagerDuty Events API v2. Firing and reminders trigger (PagerDuty deduplicates on
/// `dedup_key`, so a reminder only refreshes the incident's details); acknowledged and
/// resolved map to `acknowledge` and `resolve`.
pub fn pagerduty(n: &Notification<'_>, routing_key: &str) -> Value {
    let a = n.alert;
    let action = match n.event {
        "alert.resolved" => "resolve",
        "alert.acknowledged" => "acknowledge",
        _ => "trigger",
    };
    let mut v = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": format!("fleetwatch-alert-{}", alert_id(a)),
        "client": "fleetwatch",
    });
    if action == "trigger" {
        let summary = str_field(a, "summary").unwrap_or("fleetwatch alert");
        let source = str_field(a, "device_id")
            .or_else(|| str_field(a, "group"))
            .or_else(|| str_field(a, "subject"))
            .unwrap_or("fleetwatch");
        let severity = str_field(a, "severity")
            .filter(|s| matches!(*s, "critical" | "error" | "warning" | "info"))
            .unwrap_or("error");
        let mut payload = json!({
            "summary": truncate_chars(summary, PAGERDUTY_SUMMARY_MAX),
            "source": source,
            "severity": severity,
            "timestamp": str_field(a, "opened_at").map_or_else(|| rfc3339(n.sent_at), String::from),
            "component": str_field(a, "kind").unwrap_or("alert"),
            "class": str_field(a, "kind").unwrap_or("alert"),
            "custom_details": a,
        });
        if let Some(g) = str_field(a, "group") {
            payload["group"] = json!(g);
        }
        v["payload"] = payload;
    }
    v
}

/// Escape text for Slack's mrkdwn so that device-supplied text cannot mention a channel
/// (`<!channel>`), a user or form a link: Slack's own rule, `&`, `<` and `>` only.
pub fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The devices an outage lists (`details.devices`), with how many are not listed
/// (`details.truncated`), if any.
fn devices(alert: &Value) -> Option<(Vec<&str>, usize)> {
    let details = alert.get("details")?.as_object()?;
    let list: Vec<&str> = details
        .get("devices")?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let hidden = details
        .get("truncated")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    Some((list, hidden))
}

/// Slack-compatible `{"text": …}`. Everything taken from the alert is escaped.
pub fn slack(n: &Notification<'_>) -> Value {
    let a = n.alert;
    let e = |k: &str| slack_escape(str_field(a, k).unwrap_or(""));
    let head = match n.event {
        "alert.firing" => ":red_circle: *FIRING*",
        "alert.resolved" => ":large_green_circle: *RESOLVED*",
        "alert.reminder" => ":bell: *STILL FIRING*",
        "alert.acknowledged" => ":ballot_box_with_check: *ACKNOWLEDGED*",
        _ => "*ALERT*",
    };
    let mut text = format!(
        "{head} [{}] {} #{}: {}",
        e("severity"),
        e("kind"),
        alert_id(a),
        e("summary")
    );
    let mut facts = Vec::new();
    if let Some(d) = str_field(a, "device_id") {
        facts.push(format!("device `{}`", slack_escape(d)));
    }
    if let Some(g) = str_field(a, "group") {
        facts.push(format!("group `{}`", slack_escape(g)));
    }
    if let Some(t) = str_field(a, "opened_at") {
        facts.push(format!("since {}", slack_escape(t)));
    }
    if n.event == "alert.acknowledged" {
        if let Some(by) = str_field(a, "acknowledged_by") {
            facts.push(format!("by {}", slack_escape(by)));
        }
    }
    if let Some(t) = str_field(a, "ticket_ref") {
        facts.push(format!("ticket {}", slack_escape(t)));
    }
    if !facts.is_empty() {
        text.push('\n');
        text.push_str(&facts.join(" · "));
    }
    if let Some((list, hidden)) = devices(a) {
        if !list.is_empty() {
            let shown: Vec<String> = list
                .iter()
                .take(SLACK_MAX_DEVICES)
                .map(|d| slack_escape(d))
                .collect();
            let more = list.len().saturating_sub(SLACK_MAX_DEVICES) + hidden;
            text.push_str(&format!(
                "\nDevices ({}): {}",
                list.len() + hidden,
                shown.join(", ")
            ));
            if more > 0 {
                text.push_str(&format!(" … and {more} more"));
            }
        }
    }
    let mut m = Map::new();
    m.insert("text".into(), Value::String(text));
    Value::Object(m)
}

/// `Fleetwatch-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`: one HMAC-SHA256 of `"<t>.<body>"` per
/// secret (several while a secret is being rotated). None without secrets.
pub fn signature(secrets: &[Secret], t: i64, body: &[u8]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let mut header = format!("t={t}");
    for s in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(s.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&hex::encode(mac.finalize().into_bytes()));
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn alert() -> Value {
        json!({
            "id": 42, "kind": "heartbeat_gap", "subject": "screen-1", "device_id": "screen-1",
            "group": "tokyo-hq", "severity": "error", "status": "firing",
            "opened_at": "2026-11-27T10:00:00Z", "resolved_at": null,
            "summary": "screen-1 silent for 12m", "details": {"state": "silent"},
            "covered_by": null, "acknowledged_by": null, "ticket_ref": null
        })
    }

    fn n<'a>(event: &'a str, alert: &'a Value) -> Notification<'a> {
        Notification {
            event,
            alert,
            delivery_id: "d-1",
            sent_at: Utc.with_ymd_and_hms(2026, 11, 27, 10, 1, 0).unwrap(),
        }
    }

    #[test]
    fn native_is_the_design_envelope() {
        let a = alert();
        let v = native(&n("alert.firing", &a));
        assert_eq!(v["event"], "alert.firing");
        assert_eq!(v["alert"], a);
        assert_eq!(v["delivery_id"], "d-1");
        assert_eq!(v["sent_at"], "2026-11-27T10:01:00.000Z");
        let body = render(WebhookFormat::Native, &n("alert.firing", &a), None);
        let back: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn pagerduty_actions_and_fields() {
        let mut a = alert();
        a["summary"] = json!("x".repeat(3000));
        let v = pagerduty(&n("alert.firing", &a), "rk");
        assert_eq!(v["routing_key"], "rk");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "fleetwatch-alert-42");
        let summary = v["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), 1024);
        assert!(summary.ends_with('…'));
        assert_eq!(v["payload"]["source"], "screen-1");
        assert_eq!(v["payload"]["severity"], "error");
        assert_eq!(v["payload"]["timestamp"], "2026-11-27T10:00:00Z");
        assert_eq!(v["payload"]["custom_details"]["id"], 42);
        assert_eq!(
            pagerduty(&n("alert.resolved", &a), "rk")["event_action"],
            "resolve"
        );
        assert_eq!(
            pagerduty(&n("alert.acknowledged", &a), "rk")["event_action"],
            "acknowledge"
        );
        assert_eq!(
            pagerduty(&n("alert.reminder", &a), "rk")["event_action"],
            "trigger"
        );
        assert!(pagerduty(&n("alert.resolved", &a), "rk")
            .get("payload")
            .is_none());
    }

    #[test]
    fn pagerduty_source_falls_back_to_group_then_subject() {
        let a = json!({"id": 1, "kind": "ingest_down", "subject": "ingest",
                       "severity": "critical", "summary": "down", "details": {}});
        assert_eq!(
            pagerduty(&n("alert.firing", &a), "k")["payload"]["source"],
            "ingest"
        );
    }

    #[test]
    fn slack_escapes_device_text() {
        let mut a = alert();
        a["device_id"] = json!("<!channel>");
        a["summary"] = json!("<!channel> & <@U123> silent");
        let text = slack(&n("alert.firing", &a))["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains("&lt;!channel&gt; &amp; &lt;@U123&gt;"),
            "{text}"
        );
        assert!(text.contains("FIRING"), "{text}");
    }

    #[test]
    fn slack_truncates_long_device_lists() {
        let mut a = alert();
        let devices: Vec<String> = (0..25).map(|i| format!("scr-{i:02}")).collect();
        a["details"] = json!({"devices": devices, "truncated": 75, "count": 100});
        let text = slack(&n("alert.resolved", &a))["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text.contains("Devices (100): scr-00,"), "{text}");
        assert!(text.contains("scr-09"), "{text}");
        assert!(!text.contains("scr-10"), "{text}");
        assert!(text.contains("… and 90 more"), "{text}");
        assert!(text.contains("RESOLVED"), "{text}");
    }

    #[test]
    fn signature_matches_a_known_vector_and_rotates() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"k",b"1700000000.{}",hashlib.sha256).hexdigest())'
        let h = signature(&[Secret::new("k")], 1_700_000_000, b"{}").unwrap();
        assert_eq!(
            h,
            "t=1700000000,v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
        let two = signature(&[Secret::new("k"), Secret::new("old")], 5, b"x").unwrap();
        assert_eq!(two.matches(",v1=").count(), 2);
        assert!(two.starts_with("t=5,v1="));
        assert!(signature(&[], 5, b"x").is_none());
    }
}
