//! Access events as OCSF (Open Cybersecurity Schema Framework 1.1) records,
//! for a security team's SIEM: sign-ins as Authentication (3002), account and
//! device changes as Account Change (3001), everything else as API Activity
//! (6003). Field names and ids follow the OCSF schema; no mail content exists
//! in events to map.

use crate::api::{Event, EventBody};
use serde_json::{Value, json};

fn class_of(action: &str) -> (u32, u32, u32, &'static str) {
    // (category_uid, class_uid, activity_id, class_name)
    match action {
        "sign_in" => (3, 3002, 1, "Authentication"),
        "enroll" | "link_request" | "link_approved" | "link_denied" | "link_expired"
        | "device_revoked" | "admin_invite" | "admin_reset" | "admin_revoke" => {
            (3, 3001, account_activity(action), "Account Change")
        }
        _ => (6, 6003, 99, "API Activity"),
    }
}

fn account_activity(action: &str) -> u32 {
    match action {
        "enroll" | "admin_invite" => 1,        // Create
        "link_approved" | "link_request" => 3, // Enable / request
        "device_revoked" | "admin_revoke" | "link_denied" | "link_expired" | "admin_reset" => 4, // Disable
        _ => 99,
    }
}

/// One event as an OCSF record.
pub fn record(event: &Event) -> Value {
    let body: EventBody = event.parsed().unwrap_or(EventBody {
        at: 0,
        account: None,
        device: None,
        source: None,
        action: "unknown".into(),
        outcome: "failure".into(),
        count: 0,
        bytes: 0,
        detail: "unparseable event".into(),
    });
    let (category_uid, class_uid, activity_id, class_name) = class_of(&body.action);
    let success = body.outcome == "success";
    let severity_id = if success { 1 } else { 3 }; // Informational / Medium
    json!({
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
        "actor": { "user": { "name": body.account.as_ref().map(|a| a.to_string()), "type_id": 1 } },
        "user": { "name": body.account.as_ref().map(|a| a.to_string()), "uid": body.account.as_ref().map(|a| a.to_string()) },
        "device": { "uid": body.device.as_ref().map(|d| d.0.clone()), "type_id": 0 },
        "src_endpoint": { "ip": body.source },
        "unmapped": { "action": body.action, "count": body.count, "bytes": body.bytes, "detail": body.detail, "chain_hash": event.hash },
    })
}
