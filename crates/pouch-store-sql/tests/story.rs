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
    use pouch_store::{Claim, NewDevice, Store};
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
    let bob = enroll("bob@mfa.test", "b", vec![b"kp-1".to_vec(), b"kp-2".to_vec()]).await;
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
