//! [`pouch_store::Store`] on SQL databases: the embedded SQLite default and
//! PostgreSQL for deployments that run several stateless server nodes.
//!
//! One implementation serves both, through sqlx's `Any` driver: every query is
//! written in the SQL both databases share (`$n` parameters, `RETURNING`,
//! compare-and-set updates), so there is a single commit path to review and
//! the conformance story proves it on both. What differs is confined to
//! [`Dialect`]: the schema files, connection set-up, and how the database is
//! kept consistent under concurrency (SQLite: one writer connection;
//! PostgreSQL: row locks taken by `UPDATE ... RETURNING`).
#![forbid(unsafe_code)]

mod admins;
mod federation;
mod queries;

use pouch_store::{Result, StoreError};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The server's store on SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
}

/// Schema migrations, in order. Each is applied once, in a transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        include_str!("../migrations/sqlite_0001_initial.sql"),
        include_str!("../migrations/postgres_0001_initial.sql"),
    ),
    (
        2,
        include_str!("../migrations/sqlite_0002_devices.sql"),
        include_str!("../migrations/postgres_0002_devices.sql"),
    ),
    (
        3,
        include_str!("../migrations/sqlite_0003_rotation.sql"),
        include_str!("../migrations/postgres_0003_rotation.sql"),
    ),
    (
        4,
        include_str!("../migrations/sqlite_0004_log.sql"),
        include_str!("../migrations/postgres_0004_log.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite_0005_events.sql"),
        include_str!("../migrations/postgres_0005_events.sql"),
    ),
    (
        6,
        include_str!("../migrations/sqlite_0006_alerts.sql"),
        include_str!("../migrations/postgres_0006_alerts.sql"),
    ),
    (
        7,
        include_str!("../migrations/sqlite_0007_detection.sql"),
        include_str!("../migrations/postgres_0007_detection.sql"),
    ),
    (
        8,
        include_str!("../migrations/sqlite_0008_bounds.sql"),
        include_str!("../migrations/postgres_0008_bounds.sql"),
    ),
    (
        9,
        include_str!("../migrations/sqlite_0009_commitments.sql"),
        include_str!("../migrations/postgres_0009_commitments.sql"),
    ),
    (
        10,
        include_str!("../migrations/sqlite_0010_public_groups.sql"),
        include_str!("../migrations/postgres_0010_public_groups.sql"),
    ),
    (
        11,
        include_str!("../migrations/sqlite_0011_shared_payloads.sql"),
        include_str!("../migrations/postgres_0011_shared_payloads.sql"),
    ),
    (
        12,
        include_str!("../migrations/sqlite_0012_detection_counts.sql"),
        include_str!("../migrations/postgres_0012_detection_counts.sql"),
    ),
    (
        13,
        include_str!("../migrations/sqlite_0013_admins.sql"),
        include_str!("../migrations/postgres_0013_admins.sql"),
    ),
    (
        14,
        include_str!("../migrations/sqlite_0014_operator_approvals.sql"),
        include_str!("../migrations/postgres_0014_operator_approvals.sql"),
    ),
    (
        15,
        include_str!("../migrations/sqlite_0015_submissions.sql"),
        include_str!("../migrations/postgres_0015_submissions.sql"),
    ),
    (
        16,
        include_str!("../migrations/sqlite_0016_labels.sql"),
        include_str!("../migrations/postgres_0016_labels.sql"),
    ),
    (
        17,
        include_str!("../migrations/sqlite_0017_federation.sql"),
        include_str!("../migrations/postgres_0017_federation.sql"),
    ),
];

/// An arbitrary constant: the advisory lock that serialises migrations when
/// several PostgreSQL nodes start at once.
const MIGRATION_LOCK: i64 = 0x0070_6f75_6368;

pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqlStore {
    /// Opens (creating if needed) the embedded SQLite database at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::connect(&url).await
    }

    /// Connects to `sqlite://…` or `postgres://…` and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Backend(
                "unsupported database URL: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
                    .into(),
            ));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let pool = match dialect {
            // One connection: SQLite has one writer anyway, and a single
            // connection makes every transaction serial without lock upgrades.
            Dialect::Sqlite => {
                options
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await
            }
            Dialect::Postgres => options.max_connections(16).connect(url).await,
        }
        .map_err(|e| StoreError::Backend(format!("cannot open the database: {e}")))?;
        let store = SqlStore { pool, dialect };
        store.migrate(i64::MAX).await?;
        Ok(store)
    }

    /// Like `connect`, but applies migrations only up to `version`: a store
    /// as an earlier release left it, for the tests of the later migrations.
    /// Its queries are this release's, so use it only to write rows with SQL
    /// and then open it again with `connect`.
    #[doc(hidden)]
    pub async fn connect_at_schema(url: &str, version: i64) -> Result<Self> {
        install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open the database: {e}")))?;
        let store = SqlStore { pool, dialect };
        store.migrate(version).await?;
        Ok(store)
    }

    /// Runs one SQL statement (tests writing rows as an earlier release did).
    #[doc(hidden)]
    pub async fn execute_sql(&self, statement: &str) -> Result<()> {
        self.pool
            .execute(sqlx::AssertSqlSafe(statement.to_string()))
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// One integer a query returns (tests reading what the store holds).
    #[doc(hidden)]
    pub async fn query_i64(&self, query: &str) -> Result<i64> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies every migration up to and including `upto` not applied yet.
    async fn migrate(&self, upto: i64) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
        }
        let result = async {
            conn.execute("CREATE TABLE IF NOT EXISTS pouch_schema (version BIGINT PRIMARY KEY)")
                .await
                .map_err(backend)?;
            for (version, sqlite, postgres) in MIGRATIONS.iter().filter(|m| m.0 <= upto) {
                let applied: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM pouch_schema WHERE version = $1")
                        .bind(*version)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(backend)?;
                if applied.is_some() {
                    continue;
                }
                let ddl = match self.dialect {
                    Dialect::Sqlite => *sqlite,
                    Dialect::Postgres => *postgres,
                };
                conn.execute("BEGIN").await.map_err(backend)?;
                let step = async {
                    conn.execute(sqlx::raw_sql(ddl)).await?;
                    sqlx::query("INSERT INTO pouch_schema (version) VALUES ($1)")
                        .bind(*version)
                        .execute(&mut *conn)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                match step {
                    Ok(()) => conn.execute("COMMIT").await.map_err(backend)?,
                    Err(e) => {
                        let _ = conn.execute("ROLLBACK").await;
                        return Err(StoreError::Backend(format!(
                            "migration {version} failed: {e}"
                        )));
                    }
                };
            }
            Ok(())
        }
        .await;
        if self.dialect == Dialect::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
        }
        result
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

/// Helpers for tests that need a scratch PostgreSQL database of their own.
pub mod testing {
    use sqlx::{AnyConnection, Connection, Executor, Row};
    use std::future::Future;

    /// Every value of every row of every table in the PostgreSQL database at
    /// `url`, concatenated: what an intruder with the database would read.
    /// Runs one statement on the database at `url`, as an intruder with it would.
    pub async fn execute(url: &str, statement: &str) -> Result<(), sqlx::Error> {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url).await?;
        conn.execute(sqlx::AssertSqlSafe(statement.to_string()))
            .await?;
        Ok(())
    }

    pub async fn dump_postgres(url: &str) -> Result<Vec<u8>, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url).await?;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await?;
        let mut out = Vec::new();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1",
            )
            .bind(&table)
            .fetch_all(&mut conn)
            .await?;
            // Every column as bytes: text and bytea both convert losslessly.
            let select = columns
                .iter()
                .map(|c| format!("CAST(\"{c}\" AS TEXT)::bytea AS \"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {select} FROM \"{table}\""
            )))
            .fetch_all(&mut conn)
            .await?;
            for row in rows {
                for i in 0..columns.len() {
                    if let Ok(Some(v)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                        out.extend_from_slice(&v);
                        out.push(b'\n');
                    }
                }
            }
        }
        Ok(out)
    }

    /// Creates an empty database beside `base_url`'s and returns its URL and a
    /// future that drops it. Fails (never skips) when PostgreSQL is unreachable.
    pub async fn fresh_postgres_database(
        base_url: &str,
        tag: &str,
    ) -> Result<(String, impl Future<Output = ()> + use<>), sqlx::Error> {
        sqlx::any::install_default_drivers();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!("pouch_{tag}_{}_{nanos}", std::process::id());
        let mut admin = AnyConnection::connect(base_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let (prefix, _) = base_url.rsplit_once('/').unwrap_or((base_url, ""));
        let url = format!("{prefix}/{name}");
        let base = base_url.to_string();
        let drop = async move {
            if let Ok(mut admin) = AnyConnection::connect(&base).await {
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await;
            }
        };
        Ok((url, drop))
    }

    /// What the queues hold in the database at `url` (either backend), read
    /// beside the running server: (queue rows, stored payloads, their bytes).
    pub async fn queue_storage(url: &str) -> Result<(i64, i64, i64), sqlx::Error> {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url).await?;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM queue")
            .fetch_one(&mut conn)
            .await?;
        let (payloads, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), CAST(COALESCE(sum(length(data)), 0) AS BIGINT) FROM queue_payloads",
        )
        .fetch_one(&mut conn)
        .await?;
        Ok((rows, payloads, bytes))
    }
}
