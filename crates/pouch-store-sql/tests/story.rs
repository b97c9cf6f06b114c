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
