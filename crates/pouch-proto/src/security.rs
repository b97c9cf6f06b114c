//! The security vocabulary: what an access event says was done ([`Action`]),
//! how it ended ([`Outcome`]) and why it failed ([`Reason`]), what a device
//! reports ([`ReportKind`]), and which detection rule raised an alert with
//! what urgency ([`Rule`], [`Severity`]).
//!
//! Why enums rather than strings: a detection rule that matched the wording
//! of an error message broke silently when the message was reworded, and a
//! typo in an action name was an event no rule ever saw. Here every name is
//! written once, the compiler checks every match, and the serialised form is
//! the same snake_case text events and alerts have always carried (so the
//! hash chain of stored events, the OCSF export and the CLI's `--json` stay as
//! they were).
//!
//! Names a newer version writes and this one does not know are kept as
//! `Unknown(text)` and written back unchanged, so an older client can still
//! list a newer server's events.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Defines a vocabulary enum: its variants with their fixed text, an
/// `Unknown` for text from newer versions, and serde as that text.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A name this version does not know (written by a newer one), kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// Every name this version knows.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The serialised name.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Unknown(text) => text,
                }
            }

            /// Reads a name; one this version does not know becomes `Unknown`.
            pub fn parse(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Unknown(other.to_string()),
                }
            }

            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Unknown(_))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok($name::parse(&text))
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

vocabulary! {
    /// What an access event records.
    Action {
        ServerStart = "server_start",
        AdminInvite = "admin_invite",
        AdminReset = "admin_reset",
        AdminRevoke = "admin_revoke",
        /// An administrator signed in with their key.
        AdminSignIn = "admin_sign_in",
        /// The first administrator was made with the setup secret (or an
        /// attempt with a wrong or used one).
        AdminBootstrap = "admin_bootstrap",
        /// An operator added an administrator (security or auditor).
        AdminAdded = "admin_added",
        /// An operator added an operator (who can approve resets).
        OperatorAdded = "admin_operator_added",
        AdminRemoved = "admin_removed",
        /// A reset or revocation now waits for a second administrator.
        AdminApprovalRequested = "admin_approval_requested",
        /// An attempt to approve a request (a failure: by its own requester).
        AdminApproved = "admin_approved",
        /// An administrator took a full copy of the server's database.
        AdminBackup = "admin_backup",
        /// The operator changed the server's TLS trust anchor (the old one
        /// cross-signed the new): every device moves to the new one.
        TlsAnchorChanged = "tls_anchor_changed",
        Enroll = "enroll",
        SignIn = "sign_in",
        LinkRequest = "link_request",
        LinkApproved = "link_approved",
        LinkDenied = "link_denied",
        LinkExpired = "link_expired",
        DeviceRevoked = "device_revoked",
        /// The response policy revoked a device (e.g. a cloned one).
        PolicyRevoke = "policy_revoke",
        KeyPackageClaim = "key_package_claim",
        /// A claim took a device's last-resort package: its pool is dry.
        KeyPackageExhausted = "key_package_exhausted",
        /// A commit that added devices went out with its Welcome.
        Welcome = "welcome",
        Commit = "commit",
        QueueFetch = "queue_fetch",
        /// A device read its queue from before what it had acknowledged.
        QueueReplay = "queue_replay",
        ReportQueueGap = "client_report_queue_gap",
        ReportUnlistedDevice = "client_report_unlisted_device",
        ReportMailWithheld = "client_report_mail_withheld",
        ReportForgedSender = "client_report_forged_sender",
        ReportSenderFork = "client_report_sender_fork",
        ReportRejectedItem = "client_report_rejected_item",
        ReportMembershipMismatch = "client_report_membership_mismatch",
        /// A receiving device found the label inside a message different
        /// from the outer copy the server delivered (a tampered client or server).
        ReportLabelMismatch = "client_report_label_mismatch",
        /// A security administrator registered the security officer's key.
        SecurityOfficerRegistered = "security_officer_registered",
        /// The security officer published a statement (policy, clearance, revocation).
        SecurityStatement = "security_statement",
        /// A delivery the server refused: a recipient not cleared for its label.
        LabelRefused = "label_refused",
        /// A device sent a reply or forward with a lower label than what it
        /// answers (the sender's reason in the detail).
        ReportLabelDowngrade = "client_report_label_downgrade",
        /// A server that is not a configured peer tried the federation
        /// listener (refused in the TLS handshake).
        PeerRefused = "federation_peer_refused",
        /// A peer asked this server's witness to cosign its log's checkpoint.
        PeerCheckpoint = "federation_peer_checkpoint",
        /// A peer asked for this server's accounts' device lists.
        PeerLookup = "federation_peer_lookup",
        /// This server asked a peer for its accounts' device lists (a
        /// failure: the peer's answer was not what its log proves).
        PeerAnswer = "federation_peer_answer",
        /// A device of this server looked up accounts of other domains.
        RemoteLookup = "federation_remote_lookup",
        /// A peer went over its request budget and was answered 429 (one
        /// event a minute per peer).
        PeerThrottled = "federation_peer_throttled",
        /// A peer claimed key packages of this server's accounts' devices
        /// (one of its devices writes to them).
        PeerClaim = "federation_peer_claim",
        /// A peer passed on its device's message or commit for a
        /// conversation hosted here.
        PeerSubmit = "federation_peer_submit",
        /// A peer (a conversation's hub) forwarded queue items for this
        /// server's devices.
        PeerDelivery = "federation_peer_delivery",
    }
}

vocabulary! {
    /// What a device reports that only it can see (`POST /v1/reports`).
    ReportKind {
        QueueGap = "queue_gap",
        UnlistedDevice = "unlisted_device",
        MailWithheld = "mail_withheld",
        ForgedSender = "forged_sender",
        SenderFork = "sender_fork",
        RejectedItem = "rejected_item",
        MembershipMismatch = "membership_mismatch",
        LabelMismatch = "label_mismatch",
        LabelDowngrade = "label_downgrade",
    }
}

impl ReportKind {
    /// The event a report is recorded as; `None` for a kind this server does not know.
    pub fn action(&self) -> Option<Action> {
        Some(match self {
            ReportKind::QueueGap => Action::ReportQueueGap,
            ReportKind::UnlistedDevice => Action::ReportUnlistedDevice,
            ReportKind::MailWithheld => Action::ReportMailWithheld,
            ReportKind::ForgedSender => Action::ReportForgedSender,
            ReportKind::SenderFork => Action::ReportSenderFork,
            ReportKind::RejectedItem => Action::ReportRejectedItem,
            ReportKind::MembershipMismatch => Action::ReportMembershipMismatch,
            ReportKind::LabelMismatch => Action::ReportLabelMismatch,
            ReportKind::LabelDowngrade => Action::ReportLabelDowngrade,
            ReportKind::Unknown(_) => return None,
        })
    }
}

vocabulary! {
    /// Why an attempt failed, as the rules read it (the event's `detail` is
    /// for people and may be reworded freely).
    Reason {
        InviteUnknown = "invite_unknown",
        InviteUsed = "invite_used",
        InviteExpired = "invite_expired",
        /// An invite for an account that already has devices.
        AccountHasDevices = "account_has_devices",
        ChallengeUnknown = "challenge_unknown",
        DeviceUnknown = "device_unknown",
        DeviceInactive = "device_inactive",
        BadSignature = "bad_signature",
        TooManyPending = "too_many_pending",
        NoApprover = "no_approver",
        CommitRejected = "commit_rejected",
        ReplayedPosition = "replayed_position",
        /// The one-time administrator setup secret was wrong or used.
        SetupSecretInvalid = "setup_secret_invalid",
        AdminUnknown = "admin_unknown",
        /// An administrator tried to approve their own request.
        SameAdministrator = "same_administrator",
        /// An administrator tried to approve what their role may not.
        WrongRole = "wrong_role",
        /// The server could not complete it (storage).
        ServerFailure = "server_failure",
        /// A server that is not a configured federation peer.
        NotAPeer = "not_a_peer",
        /// A peer's log showed this server's witness a split view, a
        /// rollback or a fork.
        PeerLogMisbehaved = "peer_log_misbehaved",
        /// A peer asked for what its role does not allow.
        PeerRequestRefused = "peer_request_refused",
        /// A peer served a device list whose newest version its own log
        /// does not prove.
        PeerListUnlogged = "peer_list_unlogged",
        /// A peer went over its request budget.
        PeerRateLimited = "peer_rate_limited",
        /// A peer forwarded items for a conversation it does not host, or
        /// for a device that is not this server's.
        PeerForeignWrite = "peer_foreign_write",
    }
}

vocabulary! {
    /// The detection rule that raised an alert (numbered as in the README's table).
    Rule {
        NewDevice = "new_device",
        LinkRefused = "link_refused",
        ClonedDevice = "cloned_device",
        QueueGap = "queue_gap",
        BulkFetch = "bulk_fetch",
        DormantDevice = "dormant_device",
        NewNetwork = "new_network",
        KeyPackageDrain = "key_package_drain",
        InviteBruteForce = "invite_brute_force",
        InviteReuse = "invite_reuse",
        AdminAction = "admin_action",
        AuditChainBroken = "audit_chain_broken",
        EventLoggingInterrupted = "event_logging_interrupted",
        StaleDevice = "stale_device",
        ForgedSender = "forged_sender",
        MailWithheld = "mail_withheld",
        SenderFork = "sender_fork",
        MembershipMismatch = "membership_mismatch",
        RejectedItem = "rejected_item",
        RogueDevice = "rogue_device",
        /// A message's inner and outer classification labels differ.
        LabelMismatch = "label_mismatch",
        /// Repeated attempts by one account to send to someone not cleared.
        LabelRefused = "label_refused",
        /// The security officer's key or statements changed, or a label was lowered.
        LabelChange = "label_change",
        /// A server that is not a configured peer tried to federate.
        UnknownPeer = "unknown_peer",
        /// A peer's transparency log is not one consistent history (split
        /// view, rollback, fork), as this server's witness saw it.
        PeerLogSplit = "peer_log_split",
        /// A peer asked for what its role does not allow.
        PeerOutOfRole = "peer_out_of_role",
        /// A peer served one of its accounts' device lists without the
        /// proof that its log records it (a device slipped into an account).
        PeerUnloggedList = "peer_unlogged_list",
        /// A device looked up more accounts of other domains within the
        /// window than anyone writes to (a partner's staff list scanned).
        RemoteLookups = "remote_lookups",
        /// A federation peer asked about more of this server's accounts
        /// within the window than its users write to.
        PeerVolume = "peer_volume",
        /// A peer wrote into a conversation it does not host (or for a
        /// device that is not this server's).
        PeerForeignWrite = "peer_foreign_write",
    }
}

impl Rule {
    /// The rule's name for people: "cloned device".
    pub fn title(&self) -> String {
        self.as_str().replace('_', " ")
    }
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Who must act on an alert: `Low` is a notice for the security team's
/// timeline, `Medium` and above are alerts, `Critical` means an attack or a
/// broken guarantee. Ordered by urgency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Medium and above: someone should look, not just file it.
    pub fn is_alert(self) -> bool {
        self >= Severity::Medium
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for Severity {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_reads_back_as_itself() {
        for a in Action::KNOWN {
            assert_eq!(&Action::parse(a.as_str()), a);
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(&serde_json::from_str::<Action>(&json).unwrap(), a);
        }
        for r in Rule::KNOWN {
            assert_eq!(&Rule::parse(r.as_str()), r);
        }
        for r in Reason::KNOWN {
            assert_eq!(&Reason::parse(r.as_str()), r);
        }
        for k in ReportKind::KNOWN {
            assert_eq!(&ReportKind::parse(k.as_str()), k);
            let action = k.action().expect("every known report has an action");
            assert_eq!(action.as_str(), format!("client_report_{k}"));
        }
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for a in Action::KNOWN {
            assert!(seen.insert(a.as_str()), "{a} twice");
        }
        let mut seen = std::collections::HashSet::new();
        for r in Rule::KNOWN {
            assert!(seen.insert(r.as_str()), "{r} twice");
        }
    }

    #[test]
    fn a_name_from_a_newer_version_is_kept_verbatim() {
        let a: Action = serde_json::from_str("\"quantum_teleport\"").unwrap();
        assert_eq!(a, Action::Unknown("quantum_teleport".into()));
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"quantum_teleport\"");
        assert!(!a.is_known());
        assert_eq!(ReportKind::parse("nonsense").action(), None);
    }

    #[test]
    fn severities_are_ordered_by_urgency() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::Medium.is_alert() && !Severity::Low.is_alert());
        assert_eq!(serde_json::to_string(&Severity::High).unwrap(), "\"high\"");
        assert!(serde_json::from_str::<Severity>("\"urgent\"").is_err());
    }
}
