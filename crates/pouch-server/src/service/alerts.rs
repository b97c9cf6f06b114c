//! Raising an alert: stored for the security team, handed to the outputs
//! (syslog, webhook, OCSF file), and answered by the response policy.
//!
//! The rules (`detect`) decide *that* something is an alert; this is what
//! happens next, so it sits in the service layer beside the operations a
//! response uses (an automatic revocation is `admin::revoke_by_policy`, with
//! its own audit events). Nothing here calls the rules: events reach them
//! through the recorder's observer, which `lib.rs` wires up.

use crate::AppState;
use pouch_proto::api::Alert;
use pouch_proto::security::Rule;
use std::sync::Arc;

/// Stores an alert, hands it to the outputs, and applies the response policy.
/// An alert that cannot be stored still leaves through the outputs.
///
/// A response runs on a task of its own: it records events, and the rules
/// (which called this) must not wait for the recorder they feed.
pub async fn raise(s: &Arc<AppState>, mut a: Alert) {
    tracing::warn!(rule = %a.rule, severity = %a.severity, account = %crate::shown(&a.account), summary = %a.summary, "ALERT");
    s.metrics.count_alert(&a.severity.to_string());
    let automatic_revoke = a.rule == Rule::ClonedDevice && s.policy.response.revoke_cloned_devices;
    if automatic_revoke {
        a.summary
            .push_str("; the device was revoked automatically (policy)");
    }
    match s.store.add_alert(&a).await {
        Ok(id) => a.id = id,
        Err(e) => tracing::error!(error = %e, "cannot store an alert"),
    }
    s.sinks.send(&a);
    if automatic_revoke && let (Some(account), Some(device)) = (a.account, a.device) {
        let s = s.clone();
        tokio::spawn(async move {
            if let Err(e) =
                super::admin::revoke_by_policy(&s, &account, &device, a.rule.as_str()).await
            {
                tracing::error!(error = %e.message, "automatic revocation failed");
            }
        });
    }
}
