//! One storage story, written once against [`Store`] and run on every backend
//! (see `pouch-store-sql/tests/story.rs`). A backend that passes it keeps the
//! promises the server relies on: single-use invites, single-use key
//! packages with a last-resort fallback, one commit per epoch, gap-free
//! per-device queues, and blobs readable only once finished.
//!
//! The story is told area by area, as the [`Store`] is split: each area is
//! its own function, which a backend's tests can run alone on an empty store.
//! [`run`] tells them all in turn on one store, so every area makes its own
//! accounts and devices under its own addresses and ids.

use crate::*;
use pouch_proto::api::QueueKind;

fn addr(s: &str) -> Address {
    Address::parse(s).expect("test address")
}

/// A log record whose leaf is `leaf` and whose full entry is `leaf` + "-full".
fn record(leaf: &str) -> LogRecord {
    LogRecord {
        leaf: leaf.as_bytes().to_vec(),
        entry: format!("{leaf}-full").into_bytes(),
    }
}

fn new_device(id: &str, address: &Address, kps: usize) -> NewDevice {
    NewDevice {
        device_id: DeviceId(id.to_string()),
        address: address.clone(),
        name: format!("{id}-laptop"),
        signature_key: id.as_bytes().repeat(2),
        key_packages: (0..kps)
            .map(|i| format!("{id}-kp-{i}").into_bytes())
            .collect(),
        last_resort: format!("{id}-last-resort").into_bytes(),
        device_list: Some((
            StoredList {
                version: 1,
                body: format!("{id}-list-1").into_bytes(),
                signature: b"sig".to_vec(),
            },
            record(&format!("{id}-log-entry-1")),
        )),
    }
}

/// A user with one device enrolled by invite (`new_device`: one key package
/// and a first device list, so one log entry): where the areas that need
/// accounts start, without leaning on the directory area's.
async fn enrolled(store: &dyn Store, now: UnixTime, address: &Address, device: &str) -> DeviceId {
    store.create_user(address, None, now).await.unwrap();
    let invite = format!("{device}-invite");
    store
        .create_invite(address, invite.as_bytes(), now + 60)
        .await
        .unwrap();
    store
        .enroll(invite.as_bytes(), new_device(device, address, 1), now)
        .await
        .unwrap()
        .device_id
}

/// Runs the whole story against an empty store, area by area (as the
/// [`Store`] is split). Panics on the first broken promise.
pub async fn run(store: &dyn Store) {
    let now = 1_700_000_000;
    settings(store).await;
    audit(store, now).await;
    detection_counts(store, now).await;
    directory(store, now).await;
    mail(store, now).await;
    submissions(store, now).await;
    log(store, now).await;
    officer_statements(store).await;
    admins(store, now).await;
    federation(store, now).await;
}

/// [`FederationStore`]: other domains' devices as a hub knows them (never
/// clashing with this server's own), a hub's conversation including them,
/// and a follower taking forwarded items once each, only for its own
/// devices and only from the conversation's hub.
pub async fn federation(store: &dyn Store, now: UnixTime) {
    let alice = enrolled(store, now, &addr("fed-alice@mfa-a.example"), "fed-a1").await;
    let bob = RemoteDevice {
        device_id: DeviceId("fed-b1".into()),
        address: addr("fed-bob@mfa-b.example"),
        signature_key: b"fed-b1-key".to_vec(),
    };
    store
        .register_remote_devices("mfa-b.example", std::slice::from_ref(&bob), now)
        .await
        .unwrap();
    // Again, the same: nothing changes. Otherwise (another key, another
    // domain, one of this server's own ids or keys): refused, nothing kept.
    store
        .register_remote_devices("mfa-b.example", std::slice::from_ref(&bob), now)
        .await
        .unwrap();
    let other_key = RemoteDevice {
        signature_key: b"another-key".to_vec(),
        ..bob.clone()
    };
    let local_id = RemoteDevice {
        device_id: alice.clone(),
        address: addr("fed-mallory@mfa-b.example"),
        signature_key: b"mallory-key".to_vec(),
    };
    let local_key = RemoteDevice {
        device_id: DeviceId("fed-m2".into()),
        address: addr("fed-mallory@mfa-b.example"),
        signature_key: b"fed-a1".repeat(2),
    };
    for wrong in [other_key, local_id, local_key] {
        assert!(matches!(
            store
                .register_remote_devices("mfa-b.example", &[wrong], now)
                .await,
            Err(StoreError::Conflict)
        ));
    }
    assert!(matches!(
        store
            .register_remote_devices("hq-c.example", std::slice::from_ref(&bob), now)
            .await,
        Err(StoreError::Conflict)
    ));
    let known = store.device(&bob.device_id).await.unwrap().unwrap();
    assert_eq!(known.home_domain.as_deref(), Some("mfa-b.example"));
    assert!(known.is_active() && !known.is_local());
    assert!(store.device(&alice).await.unwrap().unwrap().is_local());
    assert!(
        !store
            .list_users()
            .await
            .unwrap()
            .iter()
            .any(|u| u.address == bob.address),
        "another domain's account is not one of this server's users"
    );

    // A conversation hosted here with Bob's device: its queue is what waits
    // for his domain, until acknowledged.
    let g = GroupId("fe".repeat(16));
    store
        .submit_commit(CommitSubmission {
            group_id: g.clone(),
            sender: alice.clone(),
            base_epoch: 0,
            commit: None,
            welcome: Some(b"welcome".to_vec()),
            added: vec![bob.device_id.clone()],
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now,
            hub_nonce: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.remote_queues("mfa-b.example").await.unwrap(),
        vec![(bob.device_id.clone(), 0)]
    );
    assert_eq!(
        store.remote_backlog("mfa-b.example").await.unwrap(),
        (1, Some(now))
    );
    let waiting = store
        .fetch_queue(&bob.device_id, 0, 10, u64::MAX)
        .await
        .unwrap();
    store
        .ack_queue(&bob.device_id, waiting[0].seq)
        .await
        .unwrap();
    assert!(
        store
            .remote_queues("mfa-b.example")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.remote_backlog("mfa-b.example").await.unwrap(),
        (0, None)
    );

    // A follower: items from hubs for its own devices.
    let item = |kind, group: &GroupId, seq| Forwarded {
        device: alice.clone(),
        seq,
        hub_nonce: (kind == QueueKind::Welcome).then(|| b"sixteen-bytes-c!".to_vec()),
        item: pouch_proto::api::QueueItem {
            seq,
            kind,
            group_id: group.clone(),
            sender_device: DeviceId("fed-c1".into()),
            epoch: 1,
            payload: format!("item-{seq}").into_bytes(),
            received_at: 0,
            label: None,
            blob: None,
        },
    };
    let hosted_at_c = GroupId::from_bytes(&pouch_proto::hub_group_id(
        "hq-c.example",
        b"sixteen-bytes-c!",
    ));
    let queued = || async {
        store
            .fetch_queue(&alice, 0, 100, u64::MAX)
            .await
            .unwrap()
            .len()
    };
    let before = queued().await;
    // Only a Welcome starts following a conversation, and only from the
    // peer whose domain and nonce make its id: that peer is its hub.
    let not_bs = store
        .receive_forwarded(
            "mfa-b.example",
            &[item(QueueKind::Welcome, &hosted_at_c, 1)],
            u64::MAX,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        not_bs,
        vec![ForwardedOutcome::NotItsConversation { hub: None }]
    );
    assert_eq!(store.group_hub(&hosted_at_c).await.unwrap(), None);
    let first = store
        .receive_forwarded(
            "hq-c.example",
            &[
                item(QueueKind::Application, &hosted_at_c, 1),
                item(QueueKind::Welcome, &hosted_at_c, 2),
                item(QueueKind::Application, &hosted_at_c, 3),
            ],
            u64::MAX,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![
            ForwardedOutcome::NotItsConversation { hub: None },
            ForwardedOutcome::Queued,
            ForwardedOutcome::Queued
        ]
    );
    assert_eq!(
        store.group_hub(&hosted_at_c).await.unwrap().as_deref(),
        Some("hq-c.example")
    );
    assert_eq!(queued().await, before + 2);
    // Forwarded again (an answer lost): dropped; the next one taken.
    let again = store
        .receive_forwarded(
            "hq-c.example",
            &[
                item(QueueKind::Application, &hosted_at_c, 3),
                item(QueueKind::Application, &hosted_at_c, 4),
            ],
            u64::MAX,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![ForwardedOutcome::Duplicate, ForwardedOutcome::Queued]
    );
    // Another peer writing into it, or into the conversation hosted here,
    // or for a device that is not this server's: refused.
    let mut not_ours = item(QueueKind::Welcome, &GroupId("d0".repeat(16)), 1);
    not_ours.device = bob.device_id.clone();
    let refused = store
        .receive_forwarded(
            "mfa-b.example",
            &[
                item(QueueKind::Application, &hosted_at_c, 2),
                item(QueueKind::Welcome, &g, 3),
                not_ours,
            ],
            u64::MAX,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        refused,
        vec![
            ForwardedOutcome::NotItsConversation {
                hub: Some("hq-c.example".into())
            },
            ForwardedOutcome::NotItsConversation { hub: None },
            ForwardedOutcome::NotOurDevice,
        ]
    );
    assert_eq!(queued().await, before + 3);
    // A missing blob holds back that device's later items (they wait at
    // the hub), and so does a full queue — for every kind — without
    // counting what it held back: once there is room, the item is taken.
    let mut with_blob = item(QueueKind::Application, &hosted_at_c, 5);
    with_blob.item.blob = Some("ab".repeat(16));
    let held = store
        .receive_forwarded(
            "hq-c.example",
            &[with_blob, item(QueueKind::Application, &hosted_at_c, 6)],
            u64::MAX,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        held,
        vec![ForwardedOutcome::MissingBlob, ForwardedOutcome::QueueFull]
    );
    let queued_bytes: u64 = store
        .fetch_queue(&alice, 0, 100, u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|i| i.payload.len() as u64)
        .sum();
    let commit = item(QueueKind::Commit, &hosted_at_c, 5);
    let room = queued_bytes + commit.item.payload.len() as u64;
    for _ in 0..3 {
        assert_eq!(
            store
                .receive_forwarded("hq-c.example", std::slice::from_ref(&commit), room - 1, now)
                .await
                .unwrap(),
            vec![ForwardedOutcome::QueueFull]
        );
    }
    assert_eq!(
        store
            .receive_forwarded("hq-c.example", std::slice::from_ref(&commit), room, now)
            .await
            .unwrap(),
        vec![ForwardedOutcome::Queued]
    );
    assert_eq!(queued().await, before + 4);
    // A conversation followed from elsewhere keeps its id here.
    assert!(matches!(
        store
            .submit_commit(CommitSubmission {
                group_id: hosted_at_c.clone(),
                sender: alice.clone(),
                base_epoch: 0,
                commit: None,
                welcome: None,
                added: vec![],
                removed: vec![],
                public_state: None,
                max_queued_bytes: u64::MAX,
                now,
                hub_nonce: None,
            })
            .await,
        Err(GroupError::Store(StoreError::Conflict))
    ));
    // The stand-in that owns a peer's pushed blobs: one, never active.
    let stand_in = store
        .ensure_peer_stand_in("hq-c.example", now)
        .await
        .unwrap();
    assert_eq!(
        store
            .ensure_peer_stand_in("hq-c.example", now)
            .await
            .unwrap(),
        stand_in
    );
    assert!(!store.device(&stand_in).await.unwrap().unwrap().is_active());
    store
        .create_blob(&"ab".repeat(16), &stand_in, now)
        .await
        .unwrap();
    assert_eq!(
        store.blob_state(&"ab".repeat(16)).await.unwrap(),
        Some(BlobState {
            owner: stand_in,
            finished: None
        })
    );
}

/// [`crate::LogStore::append_officer_statement`]: a security officer's
/// statements are log entries filed by subject, each version once and in
/// order; a version taken or skipped appends nothing.
pub async fn officer_statements(store: &dyn Store) {
    let subject = "conformance-policy";
    let start = store.log_size().await.unwrap();
    assert!(store.officer_statements(subject).await.unwrap().is_empty());
    let first = store
        .append_officer_statement(subject, 1, &record("officer-v1"))
        .await
        .unwrap();
    assert_eq!(first, start);
    for (version, why) in [(1, "a version taken twice"), (3, "a version skipped")] {
        assert!(
            matches!(
                store
                    .append_officer_statement(subject, version, &record("officer-bad"))
                    .await,
                Err(StoreError::Conflict)
            ),
            "{why}"
        );
    }
    assert_eq!(
        store.log_size().await.unwrap(),
        start + 1,
        "a refused statement left an entry"
    );
    store
        .append_officer_statement(subject, 2, &record("officer-v2"))
        .await
        .unwrap();
    let found = store.officer_statements(subject).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|e| (e.index, e.leaf.clone()))
            .collect::<Vec<_>>(),
        vec![
            (start, b"officer-v1".to_vec()),
            (start + 1, b"officer-v2".to_vec())
        ]
    );
    assert_eq!(found[1].entry.as_deref(), Some(&b"officer-v2-full"[..]));
    assert!(
        store
            .officer_statements("another")
            .await
            .unwrap()
            .is_empty(),
        "statements are filed by subject"
    );
    // An account whose address looks like a subject sees none of them.
    let lookalike = addr("conformance-policy@officer.example");
    assert!(store.log_entries_of(&lookalike).await.unwrap().is_empty());
}

/// [`crate::MailStore::submit_message_once`]: a message sent again under
/// the same submission id (its answer lost) is queued once, whatever the
/// group's epoch is by then; a refused one may come again; ids are
/// forgotten when asked.
pub async fn submissions(store: &dyn Store, now: UnixTime) {
    let a = enrolled(store, now, &addr("once-alice@mfa.example"), "once-a1").await;
    let b = enrolled(store, now, &addr("once-bob@mfa.example"), "once-b1").await;
    let g = GroupId("5e".repeat(16));
    store
        .submit_commit(CommitSubmission {
            group_id: g.clone(),
            sender: a.clone(),
            base_epoch: 0,
            commit: None,
            welcome: Some(b"welcome".to_vec()),
            added: vec![b.clone()],
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now,
            hub_nonce: None,
        })
        .await
        .unwrap();
    let msg = |epoch, payload: &'static [u8], max| Message {
        group_id: &g,
        sender: &a,
        epoch,
        payload,
        blob: None,
        max_queued_bytes: max,
        label: None,
        now,
    };
    let queued = || async { store.fetch_queue(&b, 0, 100, u64::MAX).await.unwrap().len() };
    let before = queued().await;
    // Refused (a full queue): nothing kept, the id not used up.
    assert!(matches!(
        store.submit_message_once(&msg(1, b"first", 1), "s-1").await,
        Err(GroupError::Rejected(GroupRejection::QueueFull { .. }))
    ));
    assert_eq!(
        store
            .submit_message_once(&msg(1, b"first", u64::MAX), "s-1")
            .await
            .unwrap(),
        Some(vec![b.clone()])
    );
    assert_eq!(queued().await, before + 1);
    // Again, even at an epoch that is stale now: answered, not queued.
    assert_eq!(
        store
            .submit_message_once(&msg(7, b"again", u64::MAX), "s-1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(queued().await, before + 1, "queued once");
    // Ids are the sender's own: another id goes; another sender's same id too.
    assert!(
        store
            .submit_message_once(&msg(1, b"second", u64::MAX), "s-2")
            .await
            .unwrap()
            .is_some()
    );
    let from_b = Message {
        sender: &b,
        ..msg(1, b"from bob", u64::MAX)
    };
    assert!(
        store
            .submit_message_once(&from_b, "s-1")
            .await
            .unwrap()
            .is_some()
    );
    // A member alone in a conversation leaves no ids behind (nothing to
    // repeat to anyone, and no table to grow).
    let alone = GroupId("a1".repeat(16));
    store
        .submit_commit(CommitSubmission {
            group_id: alone.clone(),
            sender: a.clone(),
            base_epoch: 0,
            commit: None,
            welcome: None,
            added: vec![],
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now,
            hub_nonce: None,
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let solo = Message {
            group_id: &alone,
            ..msg(1, b"note to self", u64::MAX)
        };
        assert_eq!(
            store.submit_message_once(&solo, "s-solo").await.unwrap(),
            Some(vec![])
        );
    }
    assert_eq!(store.forget_submissions(now).await.unwrap(), 0);
    assert_eq!(store.forget_submissions(now + 1).await.unwrap(), 3);
    assert!(
        store
            .submit_message_once(&msg(1, b"much later", u64::MAX), "s-1")
            .await
            .unwrap()
            .is_some(),
        "forgotten ids are new again"
    );
}

/// [`crate::AdminStore`]: a one-time bootstrap, names never reused, tokens
/// that die with their administrator, approvals that happen once.
pub async fn admins(store: &dyn Store, now: UnixTime) {
    use pouch_proto::api::{AdminRole, ApprovalAction};
    let person = |name: &str, role: AdminRole, by: Option<&str>| AdminRecord {
        name: name.into(),
        role,
        public_key: name.as_bytes().repeat(2),
        added_by: by.map(str::to_string),
        added_at: now,
    };
    let ana = person("ana", AdminRole::Operator, None);
    // The setup secret's hash must still be there, and used only once.
    assert!(
        !store
            .bootstrap_admin(&ana, "admin_setup", "h")
            .await
            .unwrap()
    );
    store.init_setting("admin_setup", "h").await.unwrap();
    assert!(
        !store
            .bootstrap_admin(&ana, "admin_setup", "wrong")
            .await
            .unwrap()
    );
    assert!(
        store
            .bootstrap_admin(&ana, "admin_setup", "h")
            .await
            .unwrap()
    );
    assert_eq!(store.get_setting("admin_setup").await.unwrap(), None);
    // A second secret does not make a second first administrator.
    store.init_setting("admin_setup", "h2").await.unwrap();
    let eve = person("eve", AdminRole::Operator, None);
    assert!(
        !store
            .bootstrap_admin(&eve, "admin_setup", "h2")
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_setting("admin_setup").await.unwrap().as_deref(),
        Some("h2")
    );
    assert_eq!(store.admin("eve").await.unwrap(), None);

    let sam = person("sam", AdminRole::Security, Some("ana"));
    store.add_admin(&sam).await.unwrap();
    assert!(matches!(
        store
            .add_admin(&person("sam", AdminRole::Operator, Some("ana")))
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.admin("sam").await.unwrap(), Some(sam.clone()));
    let names: Vec<String> = store
        .list_admins()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["ana", "sam"]);

    // Sign-in: a challenge is taken once and only before it expires.
    store
        .put_admin_challenge(b"c1", "sam", now + 60)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_admin_challenge(b"c1", now)
            .await
            .unwrap()
            .as_deref(),
        Some("sam")
    );
    assert_eq!(store.take_admin_challenge(b"c1", now).await.unwrap(), None);
    store
        .put_admin_challenge(b"c2", "sam", now + 60)
        .await
        .unwrap();
    assert_eq!(
        store.take_admin_challenge(b"c2", now + 61).await.unwrap(),
        None
    );
    store
        .put_admin_token(b"t-sam", "sam", now + 3600)
        .await
        .unwrap();
    assert_eq!(
        store.admin_of_token(b"t-sam", now).await.unwrap(),
        Some(sam.clone())
    );
    assert_eq!(
        store.admin_of_token(b"t-sam", now + 3600).await.unwrap(),
        None
    );
    assert_eq!(store.admin_of_token(b"t-other", now).await.unwrap(), None);
    // Removed: their tokens stop, their name stays taken.
    assert!(store.remove_admin("sam", now).await.unwrap());
    assert!(!store.remove_admin("sam", now).await.unwrap());
    assert_eq!(store.admin_of_token(b"t-sam", now).await.unwrap(), None);
    assert_eq!(store.admin("sam").await.unwrap(), None);
    assert!(matches!(
        store.add_admin(&sam).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        store.admin_name_taken("sam").await.unwrap(),
        "removed, still taken"
    );
    assert!(!store.admin_name_taken("nobody").await.unwrap());

    // Approvals: pending until one approval or their expiry.
    let approval = |id: &str, expires_at| Approval {
        id: id.into(),
        action: ApprovalAction::Revoke,
        address: Some(addr("bob@embassy.example")),
        device: Some(DeviceId("bob-phone".into())),
        admin_name: None,
        admin_key: None,
        requested_by: "ana".into(),
        requested_at: now,
        expires_at,
        approved_by: None,
        approved_at: None,
    };
    store
        .create_approval(&approval("A1", now + 100))
        .await
        .unwrap();
    store
        .create_approval(&approval("A2", now + 10))
        .await
        .unwrap();
    assert!(matches!(
        store.create_approval(&approval("A1", now + 100)).await,
        Err(StoreError::Conflict)
    ));
    let pending = |at| async move {
        store
            .pending_approvals(at)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(pending(now).await, ["A1", "A2"]);
    assert_eq!(pending(now + 10).await, ["A1"]);
    assert!(
        !store.approve("A2", "zoe", now + 10).await.unwrap(),
        "expired"
    );
    assert!(store.approve("A1", "zoe", now + 5).await.unwrap());
    assert!(
        !store.approve("A1", "yan", now + 6).await.unwrap(),
        "approved once"
    );
    let done = store.approval("A1").await.unwrap().unwrap();
    assert_eq!(done.approved_by.as_deref(), Some("zoe"));
    assert_eq!(done.approved_at, Some(now + 5));
    assert_eq!(done.device, Some(DeviceId("bob-phone".into())));
    assert_eq!(done.address, Some(addr("bob@embassy.example")));
    // A request about an operator names them (and the key to add), no account.
    let add = Approval {
        id: "A3".into(),
        action: ApprovalAction::AddOperator,
        address: None,
        device: None,
        admin_name: Some("olga".into()),
        admin_key: Some(vec![7; 32]),
        ..approval("A3", now + 100)
    };
    store.create_approval(&add).await.unwrap();
    assert_eq!(store.approval("A3").await.unwrap().unwrap(), add);
    assert_eq!(
        pending(now).await,
        ["A2", "A3"],
        "an approved request is no longer pending"
    );
    assert_eq!(store.approval("nope").await.unwrap(), None);
}

/// [`crate::SettingsStore`]: first writer wins.
pub async fn settings(store: &dyn Store) {
    assert_eq!(store.init_setting("suite", "77").await.unwrap(), "77");
    assert_eq!(store.init_setting("suite", "1").await.unwrap(), "77");
    assert_eq!(
        store.get_setting("suite").await.unwrap().as_deref(),
        Some("77")
    );
    assert!(store.delete_setting("suite").await.unwrap());
    assert!(!store.delete_setting("suite").await.unwrap());
    assert_eq!(store.get_setting("suite").await.unwrap(), None);
    assert_eq!(store.init_setting("suite", "77").await.unwrap(), "77");
}

/// [`crate::AuditStore`]: the hash-chained events (single appends and the
/// recorder's batches, time windows, retention) and alerts. Events name
/// accounts but need none to exist.
pub async fn audit(store: &dyn Store, now: UnixTime) {
    let alice = addr("alice@mfa.example");
    let bob = addr("bob@embassy.example");
    // Access events: numbered, hash-chained, filterable by account.
    let ev = |account: Option<&Address>, action: &str| pouch_proto::api::EventBody {
        account: account.cloned(),
        source: Some("127.0.0.1".into()),
        count: 1,
        bytes: 10,
        ..pouch_proto::api::EventBody::new(pouch_proto::security::Action::parse(action), now)
    };
    assert_eq!(
        store
            .append_event(&ev(Some(&alice), "sign_in"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.append_event(&ev(None, "server_start")).await.unwrap(),
        2
    );
    assert_eq!(
        store
            .append_event(&ev(Some(&bob), "queue_fetch"))
            .await
            .unwrap(),
        3
    );
    let all = store.events(0, None, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    pouch_proto::api::verify_event_chain(&all, 1, pouch_proto::api::EVENT_CHAIN_START.into())
        .unwrap();
    assert_eq!(store.event_head().await.unwrap(), (3, all[2].hash.clone()));
    let bobs = store.events(0, Some(&bob), 100).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].parsed().unwrap().action, "queue_fetch");
    let without_second = vec![all[0].clone(), all[2].clone()];
    assert!(
        pouch_proto::api::verify_event_chain(
            &without_second,
            1,
            pouch_proto::api::EVENT_CHAIN_START.into()
        )
        .is_err()
    );

    // By time, and pruned from the oldest with the anchor following.
    let old_event = pouch_proto::api::EventBody {
        at: now - 1000,
        ..ev(Some(&alice), "sign_in")
    };
    assert_eq!(store.append_event(&old_event).await.unwrap(), 4);
    assert_eq!(store.events_since(now, None, 100).await.unwrap().len(), 3);
    assert_eq!(
        store
            .events_since(now, Some(&alice), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.event_count().await.unwrap(), 4);
    assert_eq!(
        store.event_anchor().await.unwrap(),
        (0, pouch_proto::api::EVENT_CHAIN_START.to_string())
    );
    // The chain stays contiguous: everything up to the last old event goes.
    assert_eq!(store.prune_events(now - 500).await.unwrap(), 4);
    assert_eq!(store.event_count().await.unwrap(), 0);
    let (anchor_seq, anchor_hash) = store.event_anchor().await.unwrap();
    assert_eq!(anchor_seq, 4);
    assert_eq!(store.prune_events(now - 500).await.unwrap(), 0);
    assert_eq!(
        store.append_event(&ev(None, "server_start")).await.unwrap(),
        5
    );
    let kept = store.events(0, None, 100).await.unwrap();
    pouch_proto::api::verify_event_chain(&kept, anchor_seq + 1, anchor_hash.clone()).unwrap();

    // A batch (the recorder's): consecutive numbers, one chain, in order,
    // across the backend's rows-per-statement limit.
    let batch: Vec<_> = (0..450)
        .map(|i| pouch_proto::api::EventBody {
            count: i,
            ..ev(Some(&bob), "queue_fetch")
        })
        .collect();
    let seqs = store.append_events(&batch).await.unwrap();
    assert_eq!(seqs, (6..6 + 450).collect::<Vec<u64>>());
    assert_eq!(store.append_events(&[]).await.unwrap(), Vec::<u64>::new());
    let kept = store.events(0, None, 1000).await.unwrap();
    assert_eq!(kept.len(), 451);
    pouch_proto::api::verify_event_chain(&kept, anchor_seq + 1, anchor_hash).unwrap();
    assert!(
        kept[1..]
            .iter()
            .zip(0..)
            .all(|(e, i)| e.parsed().unwrap().count == i)
    );
    assert_eq!(
        store.event_head().await.unwrap(),
        (455, kept[450].hash.clone())
    );
    assert_eq!(
        store.append_event(&ev(None, "server_start")).await.unwrap(),
        456
    );

    // Alerts: numbered, filterable by account.
    let alert = |account: Option<&Address>, rule: &str| pouch_proto::api::Alert {
        id: 0,
        at: now,
        rule: pouch_proto::security::Rule::parse(rule),
        severity: pouch_proto::security::Severity::High,
        account: account.cloned(),
        device: None,
        summary: format!("{rule} happened"),
        event_seq: Some(1),
    };
    let first = store
        .add_alert(&alert(Some(&alice), "new_device"))
        .await
        .unwrap();
    store
        .add_alert(&alert(None, "audit_chain_broken"))
        .await
        .unwrap();
    assert_eq!(store.alerts(0, None).await.unwrap().len(), 2);
    let alices = store.alerts(0, Some(&alice)).await.unwrap();
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].rule, "new_device");
    assert!(store.alerts(first, Some(&alice)).await.unwrap().is_empty());
    // A critical alert about the whole server concerns every account.
    let server_wide = pouch_proto::api::Alert {
        severity: pouch_proto::security::Severity::Critical,
        ..alert(None, "audit_chain_broken")
    };
    store.add_alert(&server_wide).await.unwrap();
    let alices = store.alerts(first, Some(&alice)).await.unwrap();
    assert_eq!(alices.len(), 1);
    assert_eq!(alices[0].severity, "critical");
}

/// [`crate::AuditStore`]'s counters for the detection rules: per window,
/// atomic, summed over windows, pruned.
pub async fn detection_counts(store: &dyn Store, now: UnixTime) {
    let w = now - now.rem_euclid(600);
    assert_eq!(store.count("fail sign_in 10.0.0.1", w, 1).await.unwrap(), 1);
    assert_eq!(store.count("fail sign_in 10.0.0.1", w, 1).await.unwrap(), 2);
    assert_eq!(
        store
            .count("fail sign_in 10.0.0.1", w - 600, 3)
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.count("fail sign_in 10.0.0.2", w, 1).await.unwrap(), 1);
    assert_eq!(
        store
            .counted("fail sign_in 10.0.0.1", w - 600, w + 600)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store
            .counted("fail sign_in 10.0.0.1", w, w + 600)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .counted("fail sign_in 10.0.0.1", w - 600, w)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .counted("never counted", w - 600, w + 600)
            .await
            .unwrap(),
        0
    );
    let names: Vec<String> = ["welcome a d1", "welcome a d2", "welcome a d1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    store.count_each(&names, w).await.unwrap();
    store.count_each(&names[..1], w).await.unwrap();
    store.count_each(&[], w).await.unwrap();
    assert_eq!(store.counted("welcome a d1", w, w + 1).await.unwrap(), 2);
    assert_eq!(store.counted("welcome a d2", w, w + 1).await.unwrap(), 1);
    assert_eq!(store.prune_counts(w).await.unwrap(), 1);
    assert_eq!(
        store
            .counted("fail sign_in 10.0.0.1", w - 600, w + 600)
            .await
            .unwrap(),
        2
    );
}

/// [`crate::DirectoryStore`]: accounts and invites, enrolment, sign-in
/// challenges and tokens, key packages and claims, device lists and link
/// requests, revocation and the administrator reset. It counts the accounts,
/// so it runs before any other area makes one.
pub async fn directory(store: &dyn Store, now: UnixTime) {
    let alice = addr("alice@mfa.example");
    let bob = addr("bob@embassy.example");
    let logged = store.log_size().await.unwrap();

    // Users and invites.
    store.create_user(&alice, Some("Alice"), now).await.unwrap();
    store.create_user(&bob, None, now).await.unwrap();
    assert!(matches!(
        store.create_user(&alice, None, now).await,
        Err(StoreError::Conflict)
    ));
    assert!(store.user_exists(&bob).await.unwrap());
    assert!(!store.user_exists(&addr("eve@x.example")).await.unwrap());
    store
        .create_invite(&alice, b"alice-invite", now + 60)
        .await
        .unwrap();
    store
        .create_invite(&bob, b"bob-invite", now + 60)
        .await
        .unwrap();
    store
        .create_invite(&bob, b"old-invite", now - 1)
        .await
        .unwrap();

    let a1 = store
        .enroll(b"alice-invite", new_device("a1", &alice, 2), now)
        .await
        .unwrap();
    assert_eq!(a1.address, alice);
    let reuse = store
        .enroll(b"alice-invite", new_device("a2", &alice, 1), now)
        .await;
    assert!(
        matches!(reuse, Err(EnrollError::Invite(InviteRejection::Used))),
        "{reuse:?}"
    );
    let expired = store
        .enroll(b"old-invite", new_device("b9", &bob, 1), now)
        .await;
    assert!(
        matches!(expired, Err(EnrollError::Invite(InviteRejection::Expired))),
        "{expired:?}"
    );
    let unknown = store.enroll(b"nope", new_device("b8", &bob, 1), now).await;
    assert!(
        matches!(unknown, Err(EnrollError::Invite(InviteRejection::Unknown))),
        "{unknown:?}"
    );
    let wrong_user = store
        .enroll(b"bob-invite", new_device("x1", &alice, 1), now)
        .await;
    assert!(matches!(
        wrong_user,
        Err(EnrollError::Invite(InviteRejection::Unknown))
    ));
    store
        .enroll(b"bob-invite", new_device("b1", &bob, 1), now)
        .await
        .unwrap();
    assert!(
        store
            .device(&DeviceId("b9".into()))
            .await
            .unwrap()
            .is_none(),
        "a refused enrollment left a device"
    );

    let users = store.list_users().await.unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].address, alice);
    assert_eq!(users[0].devices, 1);

    // Authentication material: challenges are single use and expire.
    let a1_id = a1.device_id.clone();
    store.put_challenge(b"c1", &a1_id, now + 30).await.unwrap();
    assert_eq!(
        store.take_challenge(b"c1", now).await.unwrap(),
        Some(a1_id.clone())
    );
    assert_eq!(store.take_challenge(b"c1", now).await.unwrap(), None);
    store.put_challenge(b"c2", &a1_id, now + 30).await.unwrap();
    assert_eq!(store.take_challenge(b"c2", now + 31).await.unwrap(), None);
    store.put_token(b"t1", &a1_id, now + 100).await.unwrap();
    assert_eq!(
        store.token_device(b"t1", now).await.unwrap(),
        Some(a1_id.clone())
    );
    assert_eq!(store.token_device(b"t1", now + 100).await.unwrap(), None);

    // Key packages: each ordinary one once, then the last resort, repeatedly.
    let b1_id = DeviceId("b1".into());
    assert_eq!(store.count_key_packages(&b1_id).await.unwrap(), 1);
    let first = store
        .claim_key_packages(std::slice::from_ref(&bob), &a1_id, &[])
        .await
        .unwrap()
        .claimed();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].key_package, b"b1-kp-0");
    assert!(!first[0].last_resort);
    for _ in 0..2 {
        let again = store
            .claim_key_packages(std::slice::from_ref(&bob), &a1_id, &[])
            .await
            .unwrap()
            .claimed();
        assert_eq!(again[0].key_package, b"b1-last-resort");
        assert!(again[0].last_resort);
    }
    assert_eq!(store.count_key_packages(&b1_id).await.unwrap(), 0);
    store
        .add_key_packages(&b1_id, &[b"b1-kp-new".to_vec()], Some(b"b1-lr-2"), false)
        .await
        .unwrap();
    // The ordinary package first, then the last-resort one.
    for expected in [&b"b1-kp-new"[..], b"b1-lr-2"] {
        let claimed = store
            .claim_key_packages(std::slice::from_ref(&bob), &a1_id, &[])
            .await
            .unwrap()
            .claimed();
        assert_eq!(claimed[0].key_package, expected);
    }
    // A refreshed pool replaces the ordinary packages still waiting.
    store
        .add_key_packages(&b1_id, &[b"old-1".to_vec(), b"old-2".to_vec()], None, false)
        .await
        .unwrap();
    store
        .add_key_packages(&b1_id, &[b"fresh-1".to_vec()], Some(b"b1-lr-3"), true)
        .await
        .unwrap();
    assert_eq!(store.count_key_packages(&b1_id).await.unwrap(), 1);
    // The ordinary package first, then the last-resort one.
    for expected in [&b"fresh-1"[..], b"b1-lr-3"] {
        let claimed = store
            .claim_key_packages(std::slice::from_ref(&bob), &a1_id, &[])
            .await
            .unwrap()
            .claimed();
        assert_eq!(claimed[0].key_package, expected);
    }
    // The claimer's own device is never handed out to itself.
    assert!(
        store
            .claim_key_packages(std::slice::from_ref(&alice), &a1_id, &[])
            .await
            .unwrap()
            .claimed()
            .is_empty()
    );
    // One claim for a whole mail: all or nothing.
    store
        .add_key_packages(&b1_id, &[b"b1-kp-multi".to_vec()], None, false)
        .await
        .unwrap();
    let ghost = Address::parse("ghost@mfa.test").unwrap();
    match store
        .claim_key_packages(&[bob.clone(), ghost.clone()], &a1_id, &[])
        .await
        .unwrap()
    {
        Claim::UnknownAddress(a) => assert_eq!(a, ghost),
        other => panic!("a claim naming an unknown address handed out {other:?}"),
    }
    assert_eq!(
        store.count_key_packages(&b1_id).await.unwrap(),
        1,
        "nothing is consumed by a refused claim"
    );
    let both = store
        .claim_key_packages(&[alice.clone(), bob.clone()], &a1_id, &[])
        .await
        .unwrap()
        .claimed();
    assert_eq!(both.len(), 1);
    assert_eq!(both[0].key_package, b"b1-kp-multi");

    // Device lists: versions are taken once; publishing approves and revokes.
    let first_list = store.latest_device_list(&alice).await.unwrap().unwrap();
    assert_eq!(first_list.version, 1);
    assert_eq!(first_list.body, b"a1-list-1");
    let mut pending = new_device("a2", &alice, 3);
    pending.device_list = None;
    store
        .create_link_request(
            NewLinkRequest {
                code: "CODE-1".into(),
                poll_hash: b"poll-1".to_vec(),
                nonce: b"n".to_vec(),
                source: "127.0.0.1".into(),
                expires_at: now + 600,
                device: pending,
            },
            now,
        )
        .await
        .unwrap();
    let a2_id = DeviceId("a2".into());
    let req = store.link_request("CODE-1").await.unwrap().unwrap();
    assert_eq!(req.status, "pending");
    assert!(
        !req.device.is_active(),
        "a device waiting for approval is not active"
    );
    assert_eq!(
        store
            .link_request_by_poll(b"poll-1")
            .await
            .unwrap()
            .unwrap()
            .code,
        "CODE-1"
    );
    assert_eq!(
        store
            .link_request_for_device(&DeviceId("a2".into()))
            .await
            .unwrap()
            .unwrap()
            .code,
        "CODE-1"
    );
    assert_eq!(store.count_key_packages(&a2_id).await.unwrap(), 3);
    // A pending device gets no mail: it is never handed out.
    assert!(
        store
            .claim_key_packages(std::slice::from_ref(&alice), &b1_id, &[])
            .await
            .unwrap()
            .claimed()
            .iter()
            .all(|c| c.device.device_id != a2_id)
    );
    let v2 = StoredList {
        version: 2,
        body: b"list-2".to_vec(),
        signature: b"sig".to_vec(),
    };
    store
        .publish_device_list(
            &alice,
            &v2,
            &record("entry-v2"),
            std::slice::from_ref(&a2_id),
            &[],
            now,
        )
        .await
        .unwrap();
    assert!(
        store
            .finish_link_request("CODE-1", "approved", now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish_link_request("CODE-1", "denied", now)
            .await
            .unwrap(),
        "a finished request changed"
    );
    assert!(store.device(&a2_id).await.unwrap().unwrap().is_active());
    let again = store
        .publish_device_list(
            &alice,
            &StoredList {
                version: 2,
                ..v2.clone()
            },
            &record("entry-v2-again"),
            &[],
            &[],
            now,
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "a list version was taken twice"
    );
    // Claims can be restricted to named devices.
    let only = store
        .claim_key_packages(
            std::slice::from_ref(&alice),
            &b1_id,
            std::slice::from_ref(&a2_id),
        )
        .await
        .unwrap()
        .claimed();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].device.device_id, a2_id);
    // Revocation by a new list: the device is out and its tokens are dead.
    store.put_token(b"t-a2", &a2_id, now + 100).await.unwrap();
    assert!(store.token_device(b"t-a2", now).await.unwrap().is_some());
    let v3 = StoredList {
        version: 3,
        body: b"list-3".to_vec(),
        signature: b"sig".to_vec(),
    };
    store
        .publish_device_list(
            &alice,
            &v3,
            &record("entry-v3"),
            &[],
            std::slice::from_ref(&a2_id),
            now,
        )
        .await
        .unwrap();
    assert_eq!(store.token_device(b"t-a2", now).await.unwrap(), None);
    let revoked = store.device(&a2_id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("account"));
    assert_eq!(store.device_list_history(&alice).await.unwrap().len(), 3);
    // A denied link revokes its device.
    let mut denied = new_device("a3", &alice, 1);
    denied.device_list = None;
    store
        .create_link_request(
            NewLinkRequest {
                code: "CODE-2".into(),
                poll_hash: b"poll-2".to_vec(),
                nonce: vec![],
                source: "x".into(),
                expires_at: now + 600,
                device: denied,
            },
            now,
        )
        .await
        .unwrap();
    assert!(
        store
            .finish_link_request("CODE-2", "denied", now)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .device(&DeviceId("a3".into()))
            .await
            .unwrap()
            .unwrap()
            .revoked_by
            .as_deref(),
        Some("denied")
    );
    // Administrator reset: every device out, the reset time recorded.
    assert_eq!(store.reset_at(&bob).await.unwrap(), None);
    store
        .create_invite(&bob, b"bob-invite-before-reset", now + 3600)
        .await
        .unwrap();
    assert!(
        store
            .invite_valid(&bob, b"bob-invite-before-reset", now + 4)
            .await
            .unwrap()
    );
    store.reset_user(&bob, now + 5).await.unwrap();
    assert_eq!(store.reset_at(&bob).await.unwrap(), Some(now + 5));
    // An invite issued before the reset dies with it.
    assert!(
        !store
            .invite_valid(&bob, b"bob-invite-before-reset", now + 6)
            .await
            .unwrap()
    );
    assert!(
        store
            .devices_of(&bob)
            .await
            .unwrap()
            .iter()
            .all(|d| !d.is_active())
    );
    assert!(
        store
            .revoke_device(&a1_id, "admin", None, now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_device(&a1_id, "admin", None, now)
            .await
            .unwrap(),
        "revoked twice"
    );

    // One log entry per stored list, none for a refused one nor for a link,
    // a revocation or a reset without one (the log itself is `log`'s).
    assert_eq!(
        store.log_size().await.unwrap(),
        logged + 4,
        "a1, b1, alice v2, alice v3"
    );
}

/// [`crate::MailStore`]: groups (one commit per epoch, fan-out, membership),
/// per-device queues (paging, acknowledgement, member removal), bounded
/// storage and blobs; with them the delivery bookkeeping other traits keep
/// (stale members for rotation, fetch windows and sources). Conversations
/// need enrolled devices, so it enrols its own. It counts groups, blobs and
/// fetch windows store-wide, so it runs before any other area makes one.
pub async fn mail(store: &dyn Store, now: UnixTime) {
    let a1_id = enrolled(store, now, &addr("mail-alice@mfa.example"), "mail-a1").await;
    let b1_id = enrolled(store, now, &addr("mail-bob@embassy.example"), "mail-b1").await;

    // Groups: creation, one commit per epoch, fan-out, membership.
    let g = GroupId("ab".repeat(16));
    let create = CommitSubmission {
        group_id: g.clone(),
        sender: a1_id.clone(),
        base_epoch: 0,
        commit: None,
        welcome: Some(b"welcome-1".to_vec()),
        added: vec![b1_id.clone()],
        removed: vec![],
        public_state: Some(b"public-state-1".to_vec()),
        max_queued_bytes: u64::MAX,
        now,
        hub_nonce: None,
    };
    assert_eq!(store.group_public_state(&g).await.unwrap(), None);
    let created = store.submit_commit(create).await.unwrap();
    assert_eq!(created.epoch, 1);
    assert_eq!(
        created.queued_for,
        vec![b1_id.clone()],
        "the Welcome's device is the one to wake"
    );
    assert_eq!(
        store.group_public_state(&g).await.unwrap(),
        Some((1, Some(b"public-state-1".to_vec()))),
        "the checked public state is stored with its epoch"
    );
    assert_eq!(
        store.group_member_addresses(&g).await.unwrap(),
        Some(vec![
            addr("mail-alice@mfa.example"),
            addr("mail-bob@embassy.example")
        ]),
        "each member account once, sorted"
    );
    assert_eq!(
        store
            .group_member_addresses(&GroupId("cd".repeat(16)))
            .await
            .unwrap(),
        None
    );
    let stale = store
        .submit_message(&Message {
            group_id: &g,
            sender: &a1_id,
            epoch: 0,
            payload: b"m0",
            blob: None,
            max_queued_bytes: u64::MAX,
            label: None,
            now,
        })
        .await;
    assert!(matches!(
        stale,
        Err(GroupError::Rejected(GroupRejection::StaleEpoch {
            current: 1
        }))
    ));
    assert_eq!(
        store
            .submit_message(&Message {
                group_id: &g,
                sender: &a1_id,
                epoch: 1,
                payload: b"m1",
                blob: None,
                max_queued_bytes: u64::MAX,
                label: None,
                now
            })
            .await
            .unwrap(),
        vec![b1_id.clone()]
    );
    assert_eq!(
        store
            .submit_message(&Message {
                group_id: &g,
                sender: &b1_id,
                epoch: 1,
                payload: b"m2",
                blob: None,
                max_queued_bytes: u64::MAX,
                label: None,
                now
            })
            .await
            .unwrap(),
        vec![a1_id.clone()]
    );
    let outsider = store
        .submit_message(&Message {
            group_id: &g,
            sender: &DeviceId("zz".into()),
            epoch: 1,
            payload: b"m",
            blob: None,
            max_queued_bytes: u64::MAX,
            label: None,
            now,
        })
        .await;
    assert!(matches!(
        outsider,
        Err(GroupError::Rejected(GroupRejection::NotMember))
    ));

    let commit = |base: u64, by: &DeviceId, body: &[u8]| CommitSubmission {
        group_id: g.clone(),
        sender: by.clone(),
        base_epoch: base,
        commit: Some(body.to_vec()),
        welcome: None,
        added: vec![],
        removed: vec![],
        public_state: None,
        max_queued_bytes: u64::MAX,
        now,
        hub_nonce: None,
    };
    assert_eq!(
        store
            .submit_commit(commit(1, &b1_id, b"c-b"))
            .await
            .unwrap()
            .epoch,
        2
    );
    let lost = store.submit_commit(commit(1, &a1_id, b"c-a")).await;
    assert!(
        matches!(
            lost,
            Err(GroupError::Rejected(GroupRejection::StaleEpoch {
                current: 2
            }))
        ),
        "{lost:?}"
    );

    // Bob's queue: welcome, Alice's message, in order; Bob's own is not echoed.
    let q = store.fetch_queue(&b1_id, 0, 100, u64::MAX).await.unwrap();
    assert!(store.queue_pending(&b1_id, 0).await.unwrap());
    assert!(store.queue_pending(&b1_id, q[0].seq).await.unwrap());
    assert!(!store.queue_pending(&b1_id, q[1].seq).await.unwrap());
    let kinds: Vec<_> = q.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, vec![QueueKind::Welcome, QueueKind::Application]);
    assert_eq!(q[1].payload, b"m1");
    assert!(q.windows(2).all(|w| w[0].seq < w[1].seq));
    // Paged by bytes: the first item always comes, then only what fits.
    let first_size = q[0].payload.len() as u64;
    let paged = store.fetch_queue(&b1_id, 0, 100, 1).await.unwrap();
    assert_eq!(
        paged.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![q[0].seq]
    );
    let both = first_size + q[1].payload.len() as u64;
    assert_eq!(
        store.fetch_queue(&b1_id, 0, 100, both).await.unwrap().len(),
        2
    );
    assert_eq!(
        store
            .fetch_queue(&b1_id, 0, 100, both - 1)
            .await
            .unwrap()
            .len(),
        1
    );
    // Alice's queue: Bob's message and Bob's commit.
    let qa = store.fetch_queue(&a1_id, 0, 100, u64::MAX).await.unwrap();
    assert_eq!(
        qa.iter().map(|i| i.payload.as_slice()).collect::<Vec<_>>(),
        vec![&b"m2"[..], b"c-b"]
    );
    assert_eq!(qa[1].epoch, 1);

    // Rotation bookkeeping: Bob committed at `now`; nobody is stale before it, both at or after.
    assert!(store.stale_members(now - 1).await.unwrap().is_empty());
    let stale = store.stale_members(now).await.unwrap();
    assert_eq!(stale.len(), 2, "{stale:?}");

    // Acknowledgement removes exactly what was acknowledged, and the device's
    // acknowledged position only ever moves forward.
    assert_eq!(store.queue_acked(&b1_id).await.unwrap(), 0);
    // The operator's view of every queue moves with it (metrics).
    let before = store.queue_depth().await.unwrap();
    assert!(before.items >= 2, "{before:?}");
    assert!(
        before.oldest.is_some_and(|t| t <= q[0].received_at),
        "{before:?}"
    );
    assert_eq!(
        store.ack_queue(&b1_id, q[0].seq).await.unwrap(),
        vec![q[0].received_at]
    );
    let after = store.queue_depth().await.unwrap();
    assert_eq!(after.items, before.items - 1, "{after:?}");
    assert_eq!(
        after.bytes,
        before.bytes - q[0].payload.len() as u64,
        "{after:?}"
    );
    assert_eq!(store.queue_acked(&b1_id).await.unwrap(), q[0].seq);
    assert!(store.ack_queue(&b1_id, 0).await.unwrap().is_empty());
    assert_eq!(store.queue_acked(&b1_id).await.unwrap(), q[0].seq);
    // Fetch windows add up per window; sources remember when they were last used.
    assert_eq!(store.count_fetch(&b1_id, 600, 5).await.unwrap(), 5);
    assert_eq!(store.count_fetch(&b1_id, 600, 7).await.unwrap(), 12);
    assert_eq!(store.count_fetch(&b1_id, 1200, 1).await.unwrap(), 1);
    assert_eq!(
        store.fetch_windows(&b1_id, 600).await.unwrap(),
        vec![(600, 12), (1200, 1)]
    );
    assert_eq!(
        store.fetch_windows(&b1_id, 601).await.unwrap(),
        vec![(1200, 1)]
    );
    // Windows past the baseline go; the ones after stay whole.
    assert_eq!(store.prune_fetch_windows(1200).await.unwrap(), 1);
    assert_eq!(store.prune_fetch_windows(1200).await.unwrap(), 0);
    assert_eq!(
        store.fetch_windows(&b1_id, 0).await.unwrap(),
        vec![(1200, 1)]
    );
    let seen = |last_here, last_anywhere, sources| SourceHistory {
        last_here,
        last_anywhere,
        sources,
    };
    let first = store.see_source(&b1_id, "10.0.0.1", now).await.unwrap();
    assert_eq!(first, seen(None, None, 0));
    let second = store.see_source(&b1_id, "10.0.0.2", now + 1).await.unwrap();
    assert_eq!(second, seen(None, Some(now), 1));
    let back = store.see_source(&b1_id, "10.0.0.1", now + 2).await.unwrap();
    assert_eq!(back, seen(Some(now), Some(now + 1), 2));
    let rest = store.fetch_queue(&b1_id, 0, 100, u64::MAX).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].seq, q[1].seq);
    assert_eq!(
        store
            .fetch_queue(&b1_id, q[1].seq, 100, u64::MAX)
            .await
            .unwrap()
            .len(),
        0
    );

    // Removing a member: it still receives the commit, then nothing more.
    let mut remove = commit(2, &a1_id, b"c-remove");
    remove.removed = vec![b1_id.clone()];
    assert_eq!(store.submit_commit(remove).await.unwrap().epoch, 3);
    assert_eq!(
        store
            .submit_message(&Message {
                group_id: &g,
                sender: &a1_id,
                epoch: 3,
                payload: b"after",
                blob: None,
                max_queued_bytes: u64::MAX,
                label: None,
                now
            })
            .await
            .unwrap(),
        Vec::<DeviceId>::new()
    );
    let last = store
        .fetch_queue(&b1_id, q[1].seq, 100, u64::MAX)
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].payload, b"c-remove");

    // Bounded storage: a blob lives while a queue item refers to it; a
    // message that would overfill a recipient's queue is refused whole.
    let g2 = GroupId("cd".repeat(16));
    store
        .submit_commit(CommitSubmission {
            group_id: g2.clone(),
            sender: a1_id.clone(),
            base_epoch: 0,
            commit: None,
            welcome: Some(b"w2".to_vec()),
            added: vec![b1_id.clone()],
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now,
            hub_nonce: None,
        })
        .await
        .unwrap();
    // A Welcome to a full queue is refused with its commit: nothing is made.
    let g3 = GroupId("ef".repeat(16));
    let before = store
        .fetch_queue(&b1_id, 0, 100, u64::MAX)
        .await
        .unwrap()
        .len();
    assert!(matches!(
        store
            .submit_commit(CommitSubmission {
                group_id: g3.clone(),
                sender: a1_id.clone(),
                base_epoch: 0,
                commit: None,
                welcome: Some(b"a large welcome".to_vec()),
                added: vec![b1_id.clone()],
                removed: vec![],
                public_state: None,
                max_queued_bytes: 1,
                now,
                hub_nonce: None,
            })
            .await,
        Err(GroupError::Rejected(GroupRejection::QueueFull { .. }))
    ));
    assert_eq!(store.group_members(&g3).await.unwrap(), None);
    assert_eq!(
        store
            .fetch_queue(&b1_id, 0, 100, u64::MAX)
            .await
            .unwrap()
            .len(),
        before
    );
    store.create_blob("big1", &a1_id, now).await.unwrap();
    store
        .put_blob_chunk("big1", &a1_id, 0, b"0123456789", u64::MAX)
        .await
        .unwrap();
    assert!(matches!(
        store
            .put_blob_chunk("big1", &a1_id, 1, b"0123456789", 15)
            .await,
        Err(StoreError::QuotaExceeded)
    ));
    store.finish_blob("big1", &a1_id, 1, 10).await.unwrap();
    let msg = |payload: &'static [u8], blob: Option<&'static str>, max: u64| Message {
        group_id: &g2,
        sender: &a1_id,
        epoch: 1,
        payload,
        blob,
        max_queued_bytes: max,
        label: None,
        now,
    };
    assert!(matches!(
        store
            .submit_message(&msg(b"ref", Some("nope"), u64::MAX))
            .await,
        Err(GroupError::Rejected(GroupRejection::UnknownBlob))
    ));
    let queued = store
        .fetch_queue(&b1_id, 0, 100, u64::MAX)
        .await
        .unwrap()
        .len();
    assert!(matches!(
        store.submit_message(&msg(&[0u8; 64], None, 10)).await,
        Err(GroupError::Rejected(GroupRejection::QueueFull { .. }))
    ));
    assert_eq!(
        store
            .fetch_queue(&b1_id, 0, 100, u64::MAX)
            .await
            .unwrap()
            .len(),
        queued,
        "a refused message leaves nothing behind"
    );
    store
        .submit_message(&msg(b"ref", Some("big1"), u64::MAX))
        .await
        .unwrap();
    assert_eq!(
        store.collect_blobs(now + 1_000_000).await.unwrap(),
        0,
        "still referred to"
    );
    assert!(store.blob_chunk("big1", 0).await.unwrap().is_some());
    let pending = store.fetch_queue(&b1_id, 0, 100, u64::MAX).await.unwrap();
    store
        .ack_queue(&b1_id, pending.last().unwrap().seq)
        .await
        .unwrap();
    assert_eq!(
        store.blob_chunk("big1", 0).await.unwrap(),
        None,
        "gone once fetched"
    );
    // An upload never sent goes after its time.
    store.create_blob("unsent", &a1_id, now).await.unwrap();
    store
        .put_blob_chunk("unsent", &a1_id, 0, b"x", u64::MAX)
        .await
        .unwrap();
    store.finish_blob("unsent", &a1_id, 1, 1).await.unwrap();
    assert_eq!(store.collect_blobs(now).await.unwrap(), 0);
    assert_eq!(store.collect_blobs(now + 1).await.unwrap(), 1);
    assert_eq!(store.blob_chunk("unsent", 0).await.unwrap(), None);
    // Quotas count what is stored: after the deletions the owner has room again.
    store.create_blob("again", &a1_id, now).await.unwrap();
    store
        .put_blob_chunk("again", &a1_id, 0, b"0123456789", 15)
        .await
        .unwrap();

    // Blobs: invisible until finished, owner-only writes.
    store.create_blob("blob1", &a1_id, now).await.unwrap();
    store
        .put_blob_chunk("blob1", &a1_id, 0, b"chunk0", u64::MAX)
        .await
        .unwrap();
    assert!(
        store
            .put_blob_chunk("blob1", &b1_id, 1, b"evil", u64::MAX)
            .await
            .is_err()
    );
    assert_eq!(store.blob_chunk("blob1", 0).await.unwrap(), None);
    assert!(
        store.finish_blob("blob1", &a1_id, 2, 12).await.is_err(),
        "finished with a chunk missing"
    );
    store
        .put_blob_chunk("blob1", &a1_id, 1, b"chunk1", u64::MAX)
        .await
        .unwrap();
    store.finish_blob("blob1", &a1_id, 2, 12).await.unwrap();
    assert_eq!(
        store.blob_chunk("blob1", 1).await.unwrap().as_deref(),
        Some(&b"chunk1"[..])
    );
    assert!(
        store
            .put_blob_chunk("blob1", &a1_id, 0, b"late", u64::MAX)
            .await
            .is_err(),
        "a finished blob changed"
    );
    wide_fan_out(store, now).await;
}

/// [`crate::LogStore`]: the transparency log's entries and Merkle hashes,
/// the checkpoint, and the commitment-key leaf. Entries come from the
/// directory (a first list at enrolment, then each published one), so it
/// enrols and publishes its own; other areas log too, so positions count
/// from the size the log had when it began.
pub async fn log(store: &dyn Store, now: UnixTime) {
    let alice = addr("log-alice@mfa.example");
    let bob = addr("log-bob@embassy.example");
    let start = store.log_size().await.unwrap();
    let at = |offset: u64| (start + offset) as usize;
    // Two accounts with a first list each, then two more lists for Alice
    // and one refused.
    enrolled(store, now, &alice, "log-a1").await;
    enrolled(store, now, &bob, "log-b1").await;
    let list = |version: u64| StoredList {
        version,
        body: format!("list-{version}").into_bytes(),
        signature: b"sig".to_vec(),
    };
    store
        .publish_device_list(&alice, &list(2), &record("entry-v2"), &[], &[], now)
        .await
        .unwrap();
    let again = store
        .publish_device_list(&alice, &list(2), &record("entry-v2-again"), &[], &[], now)
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "a list version was taken twice"
    );
    store
        .publish_device_list(&alice, &list(3), &record("entry-v3"), &[], &[], now)
        .await
        .unwrap();

    // The transparency log: one entry per stored list, none for a refused one,
    // and the Merkle hashes to match.
    assert_eq!(
        store.log_size().await.unwrap(),
        start + 4,
        "a1, b1, alice v2, alice v3"
    );
    let entries = store.log_entries(0, start + 10).await.unwrap();
    assert_eq!(entries[at(2)], b"entry-v2");
    assert_eq!(entries[at(3)], b"entry-v3");
    let alice_entries = store.log_entries_of(&alice).await.unwrap();
    assert_eq!(
        alice_entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![start, start + 2, start + 3]
    );
    assert_eq!(alice_entries[2].leaf, b"entry-v3");
    assert_eq!(
        alice_entries[2].entry.as_deref(),
        Some(&b"entry-v3-full"[..]),
        "the full entry is kept beside its leaf"
    );
    let needed = pouch_log::hashes_needed_for_root(start + 4);
    let fetched = store.log_hashes(&needed).await.unwrap();
    let reader = pouch_log::FetchedHashes(
        needed
            .iter()
            .copied()
            .zip(fetched.into_iter().map(pouch_log::Hash))
            .collect(),
    );
    let root = pouch_log::tree_hash(start + 4, &reader).unwrap();
    let mut expected = pouch_log::FetchedHashes(Default::default());
    for (i, e) in entries.iter().enumerate() {
        let new = pouch_log::stored_hashes(i as u64, e, &expected).unwrap();
        let base = pouch_log::stored_hash_index(0, i as u64);
        for (k, h) in new.into_iter().enumerate() {
            expected.0.insert(base + k as u64, h);
        }
    }
    assert_eq!(root, pouch_log::tree_hash(start + 4, &expected).unwrap());
    assert_eq!(store.checkpoint().await.unwrap(), None);
    assert!(store.save_checkpoint(start + 4, b"cp4").await.unwrap());
    assert!(
        !store.save_checkpoint(start + 3, b"cp3").await.unwrap(),
        "a checkpoint went backwards"
    );
    assert!(
        !store.save_checkpoint(start + 9, b"cp9").await.unwrap(),
        "a checkpoint over entries not stored"
    );
    assert_eq!(
        store.checkpoint().await.unwrap(),
        Some((start + 4, b"cp4".to_vec()))
    );
    // The commitment-key leaf: appended once, never replaced by another.
    assert_eq!(
        store.log_commitment_key(b"key-leaf").await.unwrap(),
        start + 4
    );
    assert_eq!(
        store.log_commitment_key(b"key-leaf").await.unwrap(),
        start + 4,
        "one commitment key per log"
    );
    assert!(matches!(
        store.log_commitment_key(b"another-key").await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.log_size().await.unwrap(), start + 5);
    assert_eq!(
        store.log_entries(start + 4, start + 5).await.unwrap(),
        vec![b"key-leaf".to_vec()]
    );
}

/// A fan-out wider than one multi-row insert (200 rows): every device gets
/// the Welcome and the message, numbered in its own queue, none twice.
async fn wide_fan_out(store: &dyn Store, now: UnixTime) {
    let creator_id = enrolled(store, now, &addr("circular@mfa.example"), "circular-0").await;
    let mut posts = Vec::new();
    for i in 0..250 {
        let post = addr(&format!("post{i}@embassy.example"));
        posts.push(enrolled(store, now, &post, &format!("post-{i:03}")).await);
    }
    let group = GroupId("c1c1".repeat(8));
    store
        .submit_commit(CommitSubmission {
            group_id: group.clone(),
            sender: creator_id.clone(),
            base_epoch: 0,
            commit: None,
            welcome: Some(b"welcome-to-all".to_vec()),
            added: posts.clone(),
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now,
            hub_nonce: None,
        })
        .await
        .unwrap();
    let delivered = store
        .submit_message(&Message {
            group_id: &group,
            sender: &creator_id,
            epoch: 1,
            payload: b"circular",
            blob: None,
            max_queued_bytes: u64::MAX,
            label: None,
            now,
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 250);
    for post in [&posts[0], &posts[199], &posts[200], &posts[249]] {
        let items = store.fetch_queue(post, 0, 10, u64::MAX).await.unwrap();
        let got: Vec<(u64, &[u8])> = items
            .iter()
            .map(|i| (i.seq, i.payload.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![(1, &b"welcome-to-all"[..]), (2, &b"circular"[..])],
            "{post:?}"
        );
    }
    // The Welcome and the circular are each stored once for all 250: one
    // device acknowledging or being revoked takes nothing from the others.
    assert_eq!(store.ack_queue(&posts[0], 2).await.unwrap().len(), 2);
    assert_eq!(
        store
            .fetch_queue(&posts[0], 0, 10, u64::MAX)
            .await
            .unwrap()
            .len(),
        0
    );
    assert!(
        store
            .revoke_device(&posts[1], "test", None, now)
            .await
            .unwrap()
    );
    assert_eq!(store.ack_queue(&posts[2], 1).await.unwrap().len(), 1);
    for post in &posts[2..] {
        let items = store.fetch_queue(post, 0, 10, u64::MAX).await.unwrap();
        let got: Vec<&[u8]> = items.iter().map(|i| i.payload.as_slice()).collect();
        if post == &posts[2] {
            assert_eq!(got, vec![&b"circular"[..]], "{post:?}");
        } else {
            assert_eq!(
                got,
                vec![&b"welcome-to-all"[..], &b"circular"[..]],
                "{post:?}"
            );
        }
    }
    for post in &posts[2..] {
        store.ack_queue(post, 2).await.unwrap();
    }
    for post in &posts {
        assert!(!store.queue_pending(post, 0).await.unwrap());
    }
}
