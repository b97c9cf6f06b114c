//! The storage conformance story on both backends: SQLite in a scratch
//! directory, and PostgreSQL in a fresh database on the local server
//! (`POUCH_TEST_PG`, default postgres://postgres@127.0.0.1:5432/test).
//! PostgreSQL is required: if it is unreachable the test fails, it never skips.

use pouch_store_sql::SqlStore;

fn pg_base() -> String {
    std::env::var("POUCH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test]
async fn story_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("pouch-story-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.db");
    let _ = std::fs::remove_file(&path);
    let store = SqlStore::open_sqlite(&path).await.unwrap();
    pouch_store::conformance::run(&store).await;
    store.close().await;
    // Reopening applies no migration twice.
    let again = SqlStore::open_sqlite(&path).await.unwrap();
    again.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each area of the story also stands alone, on a store of its own: an
/// area passes without the others having run first.
#[tokio::test]
async fn each_area_alone_on_sqlite() {
    use pouch_store::conformance as story;
    let dir = std::env::temp_dir().join(format!("pouch-areas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let now = 1_700_000_000;
    for area in ["directory", "mail", "log", "audit", "admins", "federation"] {
        let path = dir.join(format!("{area}.db"));
        let _ = std::fs::remove_file(&path);
        let store = SqlStore::open_sqlite(&path).await.unwrap();
        match area {
            "directory" => story::directory(&store, now).await,
            "mail" => story::mail(&store, now).await,
            "log" => story::log(&store, now).await,
            "admins" => story::admins(&store, now).await,
            "federation" => story::federation(&store, now).await,
            _ => story::audit(&store, now).await,
        }
        store.close().await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn story_on_postgres() {
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "story")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG (default postgres://postgres@127.0.0.1:5432/test)");
    let store = SqlStore::connect(&url).await.unwrap();
    pouch_store::conformance::run(&store).await;
    store.close().await;
    drop.await;
}

/// Two claims at once for the same device on PostgreSQL: while one claim's
/// transaction holds an ordinary package, the other takes the next one
/// instead of waiting for it and then falling back to the last-resort package.
#[tokio::test]
async fn a_claim_skips_a_package_another_claim_holds_on_postgres() {
    use pouch_proto::{Address, DeviceId};
    use pouch_store::prelude::*;
    use pouch_store::{Claim, NewDevice};
    use sqlx::Connection;
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "claimlock")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG");
    let store = SqlStore::connect(&url).await.unwrap();
    let enroll = async |who: &str, id: &str, packages: Vec<Vec<u8>>| {
        let address = Address::parse(who).unwrap();
        store.create_user(&address, None, 0).await.unwrap();
        let secret = format!("invite-{id}");
        store
            .create_invite(&address, secret.as_bytes(), i64::MAX)
            .await
            .unwrap();
        store
            .enroll(
                secret.as_bytes(),
                NewDevice {
                    device_id: DeviceId(id.repeat(32)),
                    address: address.clone(),
                    name: "d".into(),
                    signature_key: id.repeat(32).into_bytes(),
                    key_packages: packages,
                    last_resort: b"last-resort".to_vec(),
                    device_list: None,
                },
                0,
            )
            .await
            .unwrap();
        address
    };
    let bob = enroll(
        "bob@mfa.test",
        "b",
        vec![b"kp-1".to_vec(), b"kp-2".to_vec()],
    )
    .await;
    let _ = enroll("ana@mfa.test", "a", vec![b"a-kp".to_vec()]).await;

    // Another claim's transaction holds Bob's first package.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut held = other.begin().await.unwrap();
    sqlx::query(
        "SELECT id FROM key_packages WHERE device_id = $1 AND last_resort = false ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .bind("b".repeat(32))
    .execute(&mut *held)
    .await
    .unwrap();
    let claim = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.claim_key_packages(std::slice::from_ref(&bob), &DeviceId("a".repeat(32)), &[]),
    )
    .await
    .expect("the claim does not wait for the held package")
    .unwrap();
    match claim {
        Claim::Claimed(c) => {
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].key_package, b"kp-2");
            assert!(!c[0].last_resort);
        }
        other => panic!("{other:?}"),
    }
    held.rollback().await.unwrap();
    store.close().await;
    drop.await;
}

/// Enrolls one device per `(address, id)` and puts them all in one new
/// conversation begun by the first; returns the conversation and the devices.
async fn conversation_of(
    store: &SqlStore,
    members: &[(&str, &str)],
) -> (pouch_proto::GroupId, Vec<pouch_proto::DeviceId>) {
    use pouch_proto::{Address, DeviceId, GroupId};
    use pouch_store::prelude::*;
    use pouch_store::{CommitSubmission, NewDevice};
    let mut devices = Vec::new();
    for (who, id) in members {
        let address = Address::parse(who).unwrap();
        store.create_user(&address, None, 0).await.unwrap();
        let secret = format!("invite-{id}");
        store
            .create_invite(&address, secret.as_bytes(), i64::MAX)
            .await
            .unwrap();
        let device = DeviceId(id.repeat(32));
        store
            .enroll(
                secret.as_bytes(),
                NewDevice {
                    device_id: device.clone(),
                    address,
                    name: "d".into(),
                    signature_key: id.repeat(32).into_bytes(),
                    key_packages: vec![],
                    last_resort: b"last-resort".to_vec(),
                    device_list: None,
                },
                0,
            )
            .await
            .unwrap();
        devices.push(device);
    }
    let group = GroupId("e1".repeat(16));
    store
        .submit_commit(CommitSubmission {
            group_id: group.clone(),
            sender: devices[0].clone(),
            base_epoch: 0,
            commit: None,
            welcome: Some(vec![b'w'; 4096]),
            added: devices[1..].to_vec(),
            removed: vec![],
            public_state: None,
            max_queued_bytes: u64::MAX,
            now: 0,
            hub_nonce: None,
        })
        .await
        .unwrap();
    (group, devices)
}

/// A mail to several devices and a Welcome to every added device are each
/// one stored payload, whatever the number of queues; the payload goes with
/// the last copy, acknowledged or dropped with a revoked device; each
/// device's quota still counts the whole size.
async fn payloads_are_stored_once(store: &SqlStore) {
    use pouch_store::Message;
    use pouch_store::prelude::*;
    let (group, devices) = conversation_of(
        store,
        &[
            ("ana@mfa.test", "a"),
            ("bo@mfa.test", "b"),
            ("cy@mfa.test", "c"),
            ("di@mfa.test", "d"),
        ],
    )
    .await;
    let payloads = async || {
        store
            .query_i64("SELECT count(*) FROM queue_payloads")
            .await
            .unwrap()
    };
    assert_eq!(payloads().await, 1, "one Welcome for three added devices");
    let recipients = store
        .submit_message(&Message {
            group_id: &group,
            sender: &devices[0],
            epoch: 1,
            payload: &[b'm'; 1000],
            blob: None,
            max_queued_bytes: u64::MAX,
            label: None,
            now: 0,
        })
        .await
        .unwrap();
    assert_eq!(recipients.len(), 3);
    assert_eq!(payloads().await, 2, "one message body for three recipients");
    assert_eq!(
        store.query_i64("SELECT count(*) FROM queue").await.unwrap(),
        6
    );
    assert_eq!(
        store
            .query_i64("SELECT count(DISTINCT payload_id) FROM queue")
            .await
            .unwrap(),
        2,
        "six queue rows refer to two payloads"
    );
    assert_eq!(
        store
            .query_i64(&format!(
                "SELECT queued_bytes FROM devices WHERE device_id = '{}'",
                devices[1].0
            ))
            .await
            .unwrap(),
        4096 + 1000,
        "a device's quota counts what it will download"
    );
    store.ack_queue(&devices[1], 2).await.unwrap();
    store.ack_queue(&devices[2], 1).await.unwrap();
    assert_eq!(payloads().await, 2, "the others still need both");
    assert!(
        store
            .revoke_device(&devices[3], "test", None, 0)
            .await
            .unwrap()
    );
    assert_eq!(payloads().await, 1, "the Welcome went with its last copy");
    // The sweep deletes a payload nothing refers to (as a race between two
    // nodes and a crash could leave) and keeps the one still queued.
    assert_eq!(store.collect_orphan_payloads().await.unwrap(), 0);
    store
        .execute_sql("INSERT INTO queue_payloads (data) SELECT data FROM queue_payloads")
        .await
        .unwrap();
    assert_eq!(payloads().await, 2);
    assert_eq!(store.collect_orphan_payloads().await.unwrap(), 1);
    assert_eq!(payloads().await, 1);
    let left = store
        .fetch_queue(&devices[2], 0, 10, u64::MAX)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, vec![b'm'; 1000]);
    store.ack_queue(&devices[2], 2).await.unwrap();
    assert_eq!(
        payloads().await,
        0,
        "nothing is left once every copy is acknowledged"
    );
    assert_eq!(
        store
            .query_i64(&format!(
                "SELECT queued_bytes FROM devices WHERE device_id = '{}'",
                devices[1].0
            ))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn payloads_are_stored_once_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("pouch-payloads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqlStore::open_sqlite(&dir.join("server.db")).await.unwrap();
    payloads_are_stored_once(&store).await;
    store.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn payloads_are_stored_once_on_postgres() {
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "payloads")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG");
    let store = SqlStore::connect(&url).await.unwrap();
    payloads_are_stored_once(&store).await;
    store.close().await;
    drop.await;
}

/// Many devices acknowledging their copies of one mail at the same moment on
/// PostgreSQL: each transaction would still see the others' uncommitted
/// copies, and without the re-check after commit all could keep the payload
/// for good (no sweep runs here). Repeated, so that a race shows.
#[tokio::test]
async fn concurrent_acknowledgements_leave_no_payload_behind_on_postgres() {
    use pouch_store::Message;
    use pouch_store::prelude::*;
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "ackrace")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG");
    let store = std::sync::Arc::new(SqlStore::connect(&url).await.unwrap());
    let members: Vec<(String, String)> = (0..9u8)
        .map(|i| (format!("m{i}@mfa.test"), format!("{}", (b'a' + i) as char)))
        .collect();
    let refs: Vec<(&str, &str)> = members
        .iter()
        .map(|(a, i)| (a.as_str(), i.as_str()))
        .collect();
    let (group, devices) = conversation_of(&store, &refs).await;
    let mut acked: std::collections::HashMap<_, u64> = Default::default();
    for round in 0..30u64 {
        store
            .submit_message(&Message {
                group_id: &group,
                sender: &devices[0],
                epoch: 1,
                payload: &round.to_be_bytes(),
                blob: None,
                max_queued_bytes: u64::MAX,
                label: None,
                now: 0,
            })
            .await
            .unwrap();
        let mut acks = Vec::new();
        for d in &devices[1..] {
            let up_to = acked.entry(d.clone()).or_insert(0);
            *up_to = if round == 0 { 2 } else { *up_to + 1 };
            let (store, d, up_to) = (store.clone(), d.clone(), *up_to);
            acks.push(tokio::spawn(async move {
                store.ack_queue(&d, up_to).await.unwrap()
            }));
        }
        for a in acks {
            a.await.unwrap();
        }
        assert_eq!(
            store
                .query_i64("SELECT count(*) FROM queue_payloads")
                .await
                .unwrap(),
            0,
            "round {round}: a payload outlived its last copy"
        );
    }
    std::sync::Arc::into_inner(store).unwrap().close().await;
    drop.await;
}

/// A server store from before shared payloads (schema 10), with mail waiting:
/// the migration moves every queued item's payload, and the mail is fetched
/// byte for byte afterwards, then collected when acknowledged.
async fn queued_mail_survives_the_payload_migration(url: &str, bytes: fn(&str) -> String) {
    use pouch_store::prelude::*;
    let old = SqlStore::connect_at_schema(url, 10).await.unwrap();
    let (welcome, message) = (bytes("welcome-01"), bytes("message-0002"));
    for statement in [
        "INSERT INTO users (address, created_at) VALUES ('bo@mfa.test', 0)".to_string(),
        format!(
            "INSERT INTO devices (device_id, address, name, signature_key, created_at, approved_at, next_seq, queued_bytes) \
             VALUES ('bbbb', 'bo@mfa.test', 'd', {}, 0, 0, 2, 22)",
            bytes("key")
        ),
        format!(
            "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload, received_at) \
             VALUES ('bbbb', 1, 'welcome', 'g', 'x', 1, {welcome}, 5)"
        ),
        format!(
            "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload, received_at) \
             VALUES ('bbbb', 2, 'application', 'g', 'x', 1, {message}, 6)"
        ),
    ] {
        old.execute_sql(&statement).await.unwrap();
    }
    old.close().await;
    let store = SqlStore::connect(url).await.unwrap();
    let device = pouch_proto::DeviceId("bbbb".into());
    let items = store.fetch_queue(&device, 0, 10, 10).await.unwrap();
    assert_eq!(
        items.len(),
        1,
        "sizes were carried over: 10 bytes hold only the first"
    );
    let items = store.fetch_queue(&device, 0, 10, u64::MAX).await.unwrap();
    let got: Vec<(u64, &[u8], i64)> = items
        .iter()
        .map(|i| (i.seq, i.payload.as_slice(), i.received_at))
        .collect();
    assert_eq!(
        got,
        vec![(1, &b"welcome-01"[..], 5), (2, &b"message-0002"[..], 6)]
    );
    store.ack_queue(&device, 2).await.unwrap();
    assert_eq!(
        store
            .query_i64("SELECT count(*) FROM queue_payloads")
            .await
            .unwrap(),
        0
    );
    store.close().await;
}

#[tokio::test]
async fn queued_mail_survives_the_payload_migration_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("pouch-migrate11-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("server.db").display());
    queued_mail_survives_the_payload_migration(&url, |s| format!("CAST('{s}' AS BLOB)")).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn queued_mail_survives_the_payload_migration_on_postgres() {
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "migrate11")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG");
    queued_mail_survives_the_payload_migration(&url, |s| format!("'{s}'::bytea")).await;
    drop.await;
}

/// Several hub nodes (or a retry while the first attempt still runs)
/// forwarding the same items at once: each is queued once.
#[tokio::test]
async fn the_same_forwarded_items_delivered_at_once_are_queued_once_on_postgres() {
    use pouch_proto::api::{QueueItem, QueueKind};
    use pouch_proto::{Address, DeviceId, GroupId};
    use pouch_store::prelude::*;
    use pouch_store::{Forwarded, ForwardedOutcome, NewDevice};
    let (url, drop) = pouch_store_sql::testing::fresh_postgres_database(&pg_base(), "fwdonce")
        .await
        .expect("PostgreSQL must be running at POUCH_TEST_PG");
    let store = std::sync::Arc::new(SqlStore::connect(&url).await.unwrap());
    let address = Address::parse("ana@mfa-a.test").unwrap();
    store.create_user(&address, None, 0).await.unwrap();
    store
        .create_invite(&address, b"invite", i64::MAX)
        .await
        .unwrap();
    let device = DeviceId("a".repeat(32));
    store
        .enroll(
            b"invite",
            NewDevice {
                device_id: device.clone(),
                address,
                name: "d".into(),
                signature_key: vec![7; 32],
                key_packages: vec![],
                last_resort: b"last-resort".to_vec(),
                device_list: None,
            },
            0,
        )
        .await
        .unwrap();
    let group = GroupId::from_bytes(&pouch_proto::hub_group_id(
        "mfa-b.test",
        b"sixteen-bytes-b!",
    ));
    let items: Vec<Forwarded> = (1..=20u64)
        .map(|seq| Forwarded {
            device: device.clone(),
            seq,
            hub_nonce: (seq == 1).then(|| b"sixteen-bytes-b!".to_vec()),
            item: QueueItem {
                seq,
                kind: if seq == 1 {
                    QueueKind::Welcome
                } else {
                    QueueKind::Application
                },
                group_id: group.clone(),
                sender_device: DeviceId("c".repeat(32)),
                epoch: 1,
                payload: format!("item {seq}").into_bytes(),
                received_at: 0,
                label: None,
                blob: None,
            },
        })
        .collect();
    let mut runs = Vec::new();
    for _ in 0..8 {
        let (store, items) = (store.clone(), items.clone());
        runs.push(tokio::spawn(async move {
            store
                .receive_forwarded("mfa-b.test", &items, u64::MAX, 0)
                .await
                .unwrap()
        }));
    }
    let mut queued = 0;
    for run in runs {
        queued += run
            .await
            .unwrap()
            .iter()
            .filter(|o| **o == ForwardedOutcome::Queued)
            .count();
    }
    assert_eq!(queued, 20, "each item queued once");
    let in_queue = store.fetch_queue(&device, 0, 100, u64::MAX).await.unwrap();
    assert_eq!(in_queue.len(), 20);
    std::sync::Arc::try_unwrap(store)
        .ok()
        .unwrap()
        .close()
        .await;
    drop.await;
}
