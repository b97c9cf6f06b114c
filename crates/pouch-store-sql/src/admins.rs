//! [`AdminStore`]: administrators, their sign-in and the approvals of the
//! two-person rule. Every query runs unchanged on SQLite and PostgreSQL.

use crate::{SqlStore, backend};
use async_trait::async_trait;
use pouch_proto::api::{AdminRole, ApprovalAction};
use pouch_proto::{Address, DeviceId};
use pouch_store::{AdminRecord, AdminStore, Approval, BackupStore, Result, StoreError, UnixTime};
use sqlx::{Row, any::AnyRow};

/// Challenges expire within this long of being issued (the server's, 60 s);
/// older ones are deleted whenever a new one is stored.
const CHALLENGE_LIFETIME_BOUND: UnixTime = 3600;

/// `SELECT` of every administrator column, followed by the rest of the query.
macro_rules! select_admins {
    ($rest:literal) => {
        concat!(
            "SELECT name, role, public_key, added_by, added_at FROM admins ",
            $rest
        )
    };
}

/// `SELECT` of every approval column, followed by the rest of the query.
macro_rules! select_approvals {
    ($rest:literal) => {
        concat!(
            "SELECT id, action, address, device, admin_name, admin_key, requested_by, \
             requested_at, expires_at, approved_by, approved_at FROM approvals ",
            $rest
        )
    };
}

fn damaged(what: &str, value: &str) -> StoreError {
    StoreError::Backend(format!("stored {what} '{value}' is not one Pouch writes"))
}

fn admin_from_row(row: &AnyRow) -> Result<AdminRecord> {
    let role: String = row.try_get("role").map_err(backend)?;
    Ok(AdminRecord {
        name: row.try_get("name").map_err(backend)?,
        role: AdminRole::parse(&role).ok_or_else(|| damaged("role", &role))?,
        public_key: row.try_get("public_key").map_err(backend)?,
        added_by: row.try_get("added_by").map_err(backend)?,
        added_at: row.try_get("added_at").map_err(backend)?,
    })
}

fn approval_from_row(row: &AnyRow) -> Result<Approval> {
    let action: String = row.try_get("action").map_err(backend)?;
    let address: Option<String> = row.try_get("address").map_err(backend)?;
    let device: Option<String> = row.try_get("device").map_err(backend)?;
    Ok(Approval {
        id: row.try_get("id").map_err(backend)?,
        action: ApprovalAction::parse(&action).ok_or_else(|| damaged("action", &action))?,
        address: address
            .map(|a| Address::parse(&a).map_err(|_| damaged("address", &a)))
            .transpose()?,
        device: device.map(DeviceId),
        admin_name: row.try_get("admin_name").map_err(backend)?,
        admin_key: row.try_get("admin_key").map_err(backend)?,
        requested_by: row.try_get("requested_by").map_err(backend)?,
        requested_at: row.try_get("requested_at").map_err(backend)?,
        expires_at: row.try_get("expires_at").map_err(backend)?,
        approved_by: row.try_get("approved_by").map_err(backend)?,
        approved_at: row.try_get("approved_at").map_err(backend)?,
    })
}

/// The insert of an administrator (nothing when the name was ever taken).
fn insert_admin(admin: &AdminRecord) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO admins (name, role, public_key, added_by, added_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&admin.name)
    .bind(admin.role.as_str())
    .bind(&admin.public_key)
    .bind(&admin.added_by)
    .bind(admin.added_at)
}

#[async_trait]
impl AdminStore for SqlStore {
    async fn bootstrap_admin(
        &self,
        admin: &AdminRecord,
        setup_key: &str,
        setup_hash: &str,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let consumed = sqlx::query("DELETE FROM settings WHERE key = $1 AND value = $2")
            .bind(setup_key)
            .bind(setup_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admins")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        if consumed != 1 || existing != 0 {
            // Dropping the transaction rolls it back: nothing consumed.
            return Ok(false);
        }
        insert_admin(admin)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn add_admin(&self, admin: &AdminRecord) -> Result<()> {
        let done = insert_admin(admin)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    async fn admin_name_taken(&self, name: &str) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM admins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn admin(&self, name: &str) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(select_admins!("WHERE name = $1 AND removed_at IS NULL"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(admin_from_row).transpose()
    }

    async fn list_admins(&self) -> Result<Vec<AdminRecord>> {
        let rows = sqlx::query(select_admins!("WHERE removed_at IS NULL ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(admin_from_row).collect()
    }

    async fn remove_admin(&self, name: &str, now: UnixTime) -> Result<bool> {
        let done =
            sqlx::query("UPDATE admins SET removed_at = $1 WHERE name = $2 AND removed_at IS NULL")
                .bind(now)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_admin_challenge(
        &self,
        challenge: &[u8],
        name: &str,
        expires_at: UnixTime,
    ) -> Result<()> {
        // Unanswered challenges go on the way, so the table holds at most
        // the last hour's.
        sqlx::query("DELETE FROM admin_challenges WHERE expires_at <= $1")
            .bind(expires_at - CHALLENGE_LIFETIME_BOUND)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        sqlx::query(
            "INSERT INTO admin_challenges (challenge, name, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(challenge)
        .bind(name)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn take_admin_challenge(
        &self,
        challenge: &[u8],
        now: UnixTime,
    ) -> Result<Option<String>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM admin_challenges WHERE challenge = $1 RETURNING name, expires_at",
        )
        .bind(challenge)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        sqlx::query("DELETE FROM admin_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.filter(|(_, exp)| *exp > now).map(|(n, _)| n))
    }

    async fn put_admin_token(
        &self,
        token_hash: &[u8],
        name: &str,
        expires_at: UnixTime,
    ) -> Result<()> {
        sqlx::query("INSERT INTO admin_tokens (token_hash, name, expires_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(name)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn admin_of_token(
        &self,
        token_hash: &[u8],
        now: UnixTime,
    ) -> Result<Option<AdminRecord>> {
        let row = sqlx::query(
            "SELECT a.name, a.role, a.public_key, a.added_by, a.added_at \
             FROM admin_tokens t JOIN admins a ON a.name = t.name \
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND a.removed_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(admin_from_row).transpose()
    }

    async fn create_approval(&self, a: &Approval) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO approvals (id, action, address, device, admin_name, admin_key, requested_by, requested_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&a.id)
        .bind(a.action.as_str())
        .bind(a.address.as_ref().map(|a| a.as_str().to_string()))
        .bind(a.device.as_ref().map(|d| d.0.clone()))
        .bind(a.admin_name.clone())
        .bind(a.admin_key.clone())
        .bind(&a.requested_by)
        .bind(a.requested_at)
        .bind(a.expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict);
        }
        Ok(())
    }

    async fn approval(&self, id: &str) -> Result<Option<Approval>> {
        let row = sqlx::query(select_approvals!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn pending_approvals(&self, now: UnixTime) -> Result<Vec<Approval>> {
        let rows = sqlx::query(select_approvals!(
            "WHERE approved_by IS NULL AND expires_at > $1 ORDER BY requested_at, id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn approve(&self, id: &str, by: &str, now: UnixTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE approvals SET approved_by = $1, approved_at = $2 \
             WHERE id = $3 AND approved_by IS NULL AND expires_at > $4",
        )
        .bind(by)
        .bind(now)
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl BackupStore for SqlStore {
    async fn snapshot_into(&self, dest: &std::path::Path) -> Result<()> {
        match self.dialect {
            // VACUUM INTO: one read transaction, so a consistent copy taken
            // while the server writes, compacted, with no WAL beside it.
            crate::Dialect::Sqlite => {
                let dest = dest.to_str().ok_or_else(|| {
                    StoreError::Backend("the backup path is not valid UTF-8".into())
                })?;
                sqlx::query("VACUUM INTO $1")
                    .bind(dest)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Ok(())
            }
            crate::Dialect::Postgres => Err(StoreError::Unsupported(
                "this server runs on PostgreSQL: back it up with pg_dump (see the README's operators' section)"
                    .into(),
            )),
        }
    }
}
