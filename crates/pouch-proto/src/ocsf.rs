//! Access events and alerts as OCSF (Open Cybersecurity Schema Framework 1.1)
//! records, for a security team's SIEM: sign-ins as Authentication (3002),
//! account and device changes as Account Change (3001), everything else as
//! API Activity (6003), alerts as Detection Finding (2004). Field names, ids
//! and types follow the OCSF schema (the tests round-trip every record
//! through the schema's generated types); attributes without a value are
//! left out rather than sent as null. No mail content exists in events to map.

use crate::api::{Alert, Event, EventBody};
use crate::security::{Action, Outcome, Severity};
use serde_json::{Value, json};

fn class_of(action: &Action) -> (u32, u32, u32, &'static str) {
    use Action::*;
    // (category_uid, class_uid, activity_id, class_name)
    let account_change = |activity| (3, 3001, activity, "Account Change");
    match action {
        SignIn | AdminSignIn => (3, 3002, 1, "Authentication"),
        Enroll | AdminInvite | AdminAdded | OperatorAdded | AdminBootstrap => {
            account_change(1) // Create
        }
        LinkApproved | LinkRequest => account_change(3), // Enable / request
        DeviceRevoked | AdminRevoke | LinkDenied | LinkExpired | AdminReset | AdminRemoved => {
            account_change(4) // Disable
        }
        _ => (6, 6003, 99, "API Activity"),
    }
}

/// One event as an OCSF record.
pub fn record(event: &Event) -> Value {
    let body: EventBody = event.parsed().unwrap_or(EventBody {
        outcome: Outcome::Failure,
        detail: "unparseable event".into(),
        ..EventBody::new(Action::Unknown("unknown".into()), 0)
    });
    let (category_uid, class_uid, activity_id, class_name) = class_of(&body.action);
    let success = body.outcome == Outcome::Success;
    let severity_id = if success { 1 } else { 3 }; // Informational / Medium
    let user = json!({
        "name": body.account.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into()),
        "uid": body.account.as_ref().map(|a| a.to_string()),
        "type_id": if body.account.is_some() { 1 } else { 0 },
    });
    without_nulls(json!({
        "category_uid": category_uid,
        "class_uid": class_uid,
        "class_name": class_name,
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "time": body.at * 1000,
        "severity_id": severity_id,
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "message": format!("{} {}", body.action, body.outcome),
        "metadata": {
            "version": "1.1.0",
            "uid": event.seq.to_string(),
            "product": { "name": "Pouch", "vendor_name": "Pouch", "version": env!("CARGO_PKG_VERSION") },
            "log_name": "pouch-access-events",
        },
        // An administrator's act has the person as its actor (OCSF user type 2: Admin).
        "actor": { "user": match &body.admin {
            Some(name) => json!({ "name": name, "uid": format!("admin:{name}"), "type_id": 2 }),
            None => user.clone(),
        } },
        // API Activity has no `user` attribute: its actor carries the account.
        "user": (class_uid != 6003).then_some(user),
        "api": { "operation": body.action.clone() },
        "device": body.device.as_ref().map(|d| json!({ "uid": d.0.clone(), "type_id": 0 })),
        "src_endpoint": { "ip": body.source },
        "unmapped": {
            "action": body.action, "count": body.count, "bytes": body.bytes, "detail": body.detail,
            "reason": body.reason, "targets": (!body.targets.is_empty()).then_some(&body.targets),
            "devices": (!body.devices.is_empty()).then_some(&body.devices), "by": body.by,
            "admin": body.admin,
            "chain_hash": event.hash,
        },
    }))
}

/// OCSF severity_id for a Pouch severity.
pub fn severity_id(severity: Severity) -> u32 {
    match severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

/// One alert as an OCSF Detection Finding (2004), activity Create.
pub fn finding(alert: &Alert, origin: &str) -> Value {
    let account = alert.account.as_ref().map(|a| a.to_string());
    let user = account
        .as_ref()
        .map(|a| json!({ "name": a, "uid": a, "type_id": 1 }));
    let severity = alert.severity;
    without_nulls(json!({
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "time": alert.at * 1000,
        "severity_id": severity_id(severity),
        "severity": capitalised(severity.as_str()),
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "message": alert.summary,
        "metadata": {
            "version": "1.1.0",
            "uid": format!("{origin}/alert/{}", alert.id),
            "product": { "name": "Pouch", "vendor_name": "Pouch", "version": env!("CARGO_PKG_VERSION") },
            "log_name": "pouch-alerts",
        },
        "finding_info": {
            "uid": format!("{origin}/alert/{}", alert.id),
            "title": alert.rule.title(),
            "desc": alert.summary,
            "analytic": { "name": alert.rule, "uid": alert.rule, "type_id": 1 },
            "related_events": alert.event_seq.map(|s| vec![json!({ "uid": s.to_string() })]),
        },
        "actor": user.as_ref().map(|u| json!({ "user": u })),
        "device": alert.device.as_ref().map(|d| json!({ "uid": d.0, "type_id": 0, "owner": user })),
        "unmapped": { "rule": alert.rule, "severity": alert.severity, "event_seq": alert.event_seq },
    }))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// OCSF leaves an attribute out when it has no value; null would be a type error.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}
