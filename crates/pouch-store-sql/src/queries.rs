//! The store areas' implementations ([`pouch_store::Store`]). Every query here runs unchanged on SQLite and
//! PostgreSQL; multi-row changes are single transactions.

use crate::{Dialect, SqlStore, backend};
use async_trait::async_trait;
use pouch_proto::{
    Address, DeviceId, GroupId,
    api::{QueueItem, QueueKind, UserSummary},
};
use pouch_store::{
    Accepted, AuditStore, Claim, Claimed, CommitSubmission, Device, DirectoryStore, EnrollError,
    GroupError, GroupRejection, InviteRejection, LinkRequest, LogRecord, LogStore, LoggedEntry,
    MailStore, Message, NewDevice, NewLinkRequest, QueueDepth, Result, SettingsStore,
    SourceHistory, StaleMember, StoreError, StoredList, UnixTime, rules,
};
use sqlx::{Any, AnyConnection, Row, any::AnyRow};

/// `SELECT` of every device column, followed by the rest of the query.
macro_rules! select_devices {
    ($rest:literal) => {
        concat!(
            "SELECT device_id, address, name, signature_key, created_at, approved_at, revoked_at, revoked_by, home_domain FROM devices ",
            $rest
        )
    };
}

fn device_from_row(row: &AnyRow) -> Result<Device> {
    let address: String = row.try_get("address").map_err(backend)?;
    Ok(Device {
        device_id: DeviceId(row.try_get("device_id").map_err(backend)?),
        address: Address::parse(&address).map_err(|e| StoreError::Backend(e.to_string()))?,
        name: row.try_get("name").map_err(backend)?,
        signature_key: row.try_get("signature_key").map_err(backend)?,
        created_at: row.try_get("created_at").map_err(backend)?,
        approved_at: row.try_get("approved_at").map_err(backend)?,
        revoked_at: row.try_get("revoked_at").map_err(backend)?,
        revoked_by: row.try_get("revoked_by").map_err(backend)?,
        home_domain: row.try_get("home_domain").map_err(backend)?,
    })
}

/// One item for the queues of several devices.
pub(crate) struct Enqueue<'a> {
    pub(crate) kind: QueueKind,
    pub(crate) group: &'a GroupId,
    pub(crate) sender: &'a DeviceId,
    pub(crate) epoch: u64,
    pub(crate) payload: &'a [u8],
    pub(crate) blob: Option<&'a str>,
    pub(crate) label: Option<&'a str>,
    pub(crate) now: UnixTime,
}

/// Appends one item to the queue of every device in `devices`. The payload
/// is stored once and every queue row refers to it (a mail to a thousand
/// devices is one copy, not a thousand); each device's quota still counts
/// the whole payload, which is what it will download.
///
/// Each device's counter is advanced with `UPDATE ... RETURNING`, which holds
/// the device row's lock until the transaction ends, so concurrent writers to
/// one device commit in sequence order and a reader never skips a number; the
/// locks are taken in one order, so two fan-outs cannot deadlock. The rows go
/// in multi-row inserts, one round trip per 200 devices. Returns the first
/// device whose queue would then hold more than `max_bytes`, if any (the
/// caller refuses the whole fan-out; its transaction is rolled back).
pub(crate) async fn enqueue_many(
    conn: &mut AnyConnection,
    devices: &[DeviceId],
    item: &Enqueue<'_>,
    max_bytes: u64,
) -> Result<Option<DeviceId>> {
    if devices.is_empty() {
        return Ok(None);
    }
    let mut devices = devices.to_vec();
    devices.sort();
    let size = item.payload.len() as i64;
    let mut seqs = Vec::with_capacity(devices.len());
    for device in &devices {
        let (seq, queued): (i64, i64) = sqlx::query_as(
            "UPDATE devices SET next_seq = next_seq + 1, queued_bytes = queued_bytes + $2 \
             WHERE device_id = $1 RETURNING next_seq, queued_bytes",
        )
        .bind(&device.0)
        .bind(size)
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
        if queued.max(0) as u64 > max_bytes {
            return Ok(Some(device.clone()));
        }
        seqs.push(seq);
    }
    let payload_id: i64 = sqlx::query_scalar(
        "INSERT INTO queue_payloads (data, label) VALUES ($1, $2) RETURNING payload_id",
    )
    .bind(item.payload)
    .bind(item.label)
    .fetch_one(&mut *conn)
    .await
    .map_err(backend)?;
    const COLUMNS: usize = 10;
    const ROWS_PER_INSERT: usize = 200;
    for (chunk, chunk_seqs) in devices
        .chunks(ROWS_PER_INSERT)
        .zip(seqs.chunks(ROWS_PER_INSERT))
    {
        let sql = format!(
            "INSERT INTO queue (device_id, seq, kind, group_id, sender_device, epoch, payload_id, size, received_at, blob_id) VALUES {}",
            values_placeholders(chunk.len(), COLUMNS)
        );
        // Built only from this function's own text and placeholder numbers.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (device, seq) in chunk.iter().zip(chunk_seqs) {
            query = query
                .bind(&device.0)
                .bind(*seq)
                .bind(item.kind.as_str())
                .bind(&item.group.0)
                .bind(&item.sender.0)
                .bind(item.epoch as i64)
                .bind(payload_id)
                .bind(size)
                .bind(item.now)
                .bind(item.blob);
        }
        query.execute(&mut *conn).await.map_err(backend)?;
    }
    Ok(None)
}

/// `($1, $2, …), (…)` for `rows` rows of `columns` values each.
fn values_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let row: Vec<String> = (1..=columns)
                .map(|c| format!("${}", r * columns + c))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes the payloads among `payload_ids` that no queue item refers to any
/// more, once this transaction has deleted its own queue rows.
///
/// On SQLite (one writer) that is exact. On PostgreSQL two devices
/// acknowledging the last two copies at once each still see the other's
/// uncommitted row, and both keep the payload: so `ack_queue` runs this
/// again after its commit (whichever commits last then sees both copies
/// gone), and `collect_orphan_payloads` sweeps what a crash between the two
/// left. No row lock is taken: with payloads shared between devices, one
/// would order payload locks against device-row locks and deadlock with
/// multi-device revocations.
async fn collect_payloads(conn: &mut AnyConnection, payload_ids: &mut Vec<i64>) -> Result<()> {
    payload_ids.sort_unstable();
    payload_ids.dedup();
    for id in payload_ids.iter() {
        sqlx::query(
            "DELETE FROM queue_payloads WHERE payload_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM queue WHERE payload_id = $1)",
        )
        .bind(*id)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    Ok(())
}

/// Deletes a blob (and frees its owner's quota) if it was sent and no
/// queue item refers to it any more. Returns whether it was deleted.
async fn collect_blob(conn: &mut AnyConnection, blob_id: &str) -> Result<bool> {
    let still_needed: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM queue WHERE blob_id = $1 LIMIT 1")
            .bind(blob_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
    if still_needed.is_some() {
        return Ok(false);
    }
    delete_blob(conn, blob_id).await
}

/// Deletes a blob and its chunks, and takes its bytes off its owner's count.
async fn delete_blob(conn: &mut AnyConnection, blob_id: &str) -> Result<bool> {
    let stored: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(length(data)), 0) FROM blob_chunks WHERE blob_id = $1",
    )
    .bind(blob_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(backend)?;
    sqlx::query("DELETE FROM blob_chunks WHERE blob_id = $1")
        .bind(blob_id)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let owner: Option<String> =
        sqlx::query_scalar("DELETE FROM blobs WHERE blob_id = $1 RETURNING owner")
            .bind(blob_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
    if let Some(owner) = &owner {
        sqlx::query(
            "UPDATE devices SET blob_bytes = CASE WHEN blob_bytes > $2 THEN blob_bytes - $2 ELSE 0 END WHERE device_id = $1",
        )
        .bind(owner)
        .bind(stored)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    }
    Ok(owner.is_some())
}

async fn members(conn: &mut AnyConnection, group: &GroupId) -> Result<Vec<DeviceId>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT device_id FROM group_members WHERE group_id = $1 ORDER BY device_id",
    )
    .bind(&group.0)
    .fetch_all(&mut *conn)
    .await
    .map_err(backend)?;
    Ok(rows.into_iter().map(|(d,)| DeviceId(d)).collect())
}

async fn is_active_device(conn: &mut AnyConnection, device: &DeviceId) -> Result<bool> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT device_id FROM devices WHERE device_id = $1 AND revoked_at IS NULL AND approved_at IS NOT NULL")
            .bind(&device.0)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?;
    Ok(row.is_some())
}

pub(crate) async fn group_epoch(conn: &mut AnyConnection, group: &GroupId) -> Result<Option<u64>> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT epoch FROM mls_groups WHERE group_id = $1")
        .bind(&group.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(row.map(|(e,)| e as u64))
}

/// How a link request is looked up: by the code people type, or by the new device's poll secret.
enum LinkKey<'a> {
    Code(&'a str),
    Poll(&'a [u8]),
    Device(&'a DeviceId),
}

impl SqlStore {
    async fn find_link_request(&self, key: LinkKey<'_>) -> Result<Option<LinkRequest>> {
        let query = match key {
            LinkKey::Code(code) => sqlx::query(
                "SELECT code, device_id, nonce, source, created_at, expires_at, status FROM link_requests WHERE code = $1",
            )
            .bind(code.to_string()),
            LinkKey::Poll(hash) => sqlx::query(
                "SELECT code, device_id, nonce, source, created_at, expires_at, status FROM link_requests WHERE poll_hash = $1",
            )
            .bind(hash.to_vec()),
            LinkKey::Device(d) => sqlx::query(
                "SELECT code, device_id, nonce, source, created_at, expires_at, status FROM link_requests WHERE device_id = $1",
            )
            .bind(d.0.clone()),
        };
        let Some(row) = query.fetch_optional(&self.pool).await.map_err(backend)? else {
            return Ok(None);
        };
        let device_id = DeviceId(row.try_get("device_id").map_err(backend)?);
        let device = self.device(&device_id).await?.ok_or(StoreError::NotFound)?;
        Ok(Some(LinkRequest {
            code: row.try_get("code").map_err(backend)?,
            device,
            nonce: row.try_get("nonce").map_err(backend)?,
            source: row.try_get("source").map_err(backend)?,
            created_at: row.try_get("created_at").map_err(backend)?,
            expires_at: row.try_get("expires_at").map_err(backend)?,
            status: row.try_get("status").map_err(backend)?,
        }))
    }

    /// Runs a `DELETE … WHERE window_start < $1` of a per-window counter
    /// table with `before`; returns how many rows went.
    async fn delete_windows_before(&self, delete: &'static str, before: UnixTime) -> Result<u64> {
        let deleted = sqlx::query(delete)
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(backend)?
            .rows_affected();
        Ok(deleted)
    }

    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, Any>> {
        self.pool.begin().await.map_err(backend)
    }

    async fn commit_inner(
        &self,
        tx: &mut AnyConnection,
        s: &CommitSubmission,
    ) -> std::result::Result<Accepted, GroupError> {
        let recipients = match group_epoch(tx, &s.group_id).await? {
            None => {
                if s.base_epoch != 0 {
                    return Err(GroupRejection::UnknownGroup.into());
                }
                // A conversation another domain hosts and this server follows
                // keeps its id: a local one under the same id would take its
                // members' messages away from the hub.
                let followed: Option<(String,)> =
                    sqlx::query_as("SELECT hub FROM federation_groups WHERE group_id = $1")
                        .bind(&s.group_id.0)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                if followed.is_some() {
                    return Err(StoreError::Conflict.into());
                }
                sqlx::query(
                    "INSERT INTO mls_groups (group_id, epoch, created_at, hub_nonce) VALUES ($1, 1, $2, $3)",
                )
                .bind(&s.group_id.0)
                .bind(s.now)
                .bind(s.hub_nonce.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                sqlx::query("INSERT INTO group_members (group_id, device_id, updated_at) VALUES ($1, $2, $3)")
                    .bind(&s.group_id.0)
                    .bind(&s.sender.0)
                    .bind(s.now)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Vec::new()
            }
            Some(current) => {
                // Compare-and-set: exactly one commit wins each epoch, even
                // across server nodes; the row lock holds until commit.
                let updated = sqlx::query(
                    "UPDATE mls_groups SET epoch = epoch + 1 WHERE group_id = $1 AND epoch = $2",
                )
                .bind(&s.group_id.0)
                .bind(s.base_epoch as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                if updated.rows_affected() != 1 {
                    return Err(GroupRejection::StaleEpoch { current }.into());
                }
                let members = members(tx, &s.group_id).await?;
                if !members.contains(&s.sender) {
                    return Err(GroupRejection::NotMember.into());
                }
                members.into_iter().filter(|d| d != &s.sender).collect()
            }
        };
        let new_epoch = s.base_epoch + 1;
        let mut queued_for = Vec::with_capacity(recipients.len() + s.added.len());
        if let Some(state) = &s.public_state {
            sqlx::query("UPDATE mls_groups SET public_state = $1 WHERE group_id = $2")
                .bind(state.as_slice())
                .bind(&s.group_id.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        // A commit carries fresh key material for its sender (an update path).
        sqlx::query(
            "UPDATE group_members SET updated_at = $1 WHERE group_id = $2 AND device_id = $3",
        )
        .bind(s.now)
        .bind(&s.group_id.0)
        .bind(&s.sender.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        for removed in &s.removed {
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND device_id = $2")
                .bind(&s.group_id.0)
                .bind(&removed.0)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for added in &s.added {
            if !is_active_device(tx, added).await? {
                return Err(GroupRejection::UnknownDevice.into());
            }
            sqlx::query(
                "INSERT INTO group_members (group_id, device_id, updated_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(&s.group_id.0)
            .bind(&added.0)
            .bind(s.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        // Commits to existing members are never refused for a full queue: a
        // group that cannot move to its next epoch would be stuck for
        // everyone. A Welcome to a full queue is (below): nothing is added.
        if let Some(commit) = &s.commit {
            let item = Enqueue {
                kind: QueueKind::Commit,
                group: &s.group_id,
                sender: &s.sender,
                epoch: s.base_epoch,
                payload: commit,
                blob: None,
                label: None,
                now: s.now,
            };
            enqueue_many(tx, &recipients, &item, u64::MAX).await?;
            queued_for.extend(recipients.iter().cloned());
        }
        if let Some(welcome) = &s.welcome {
            let item = Enqueue {
                kind: QueueKind::Welcome,
                group: &s.group_id,
                sender: &s.sender,
                epoch: new_epoch,
                payload: welcome,
                blob: None,
                label: None,
                now: s.now,
            };
            if let Some(device) = enqueue_many(tx, &s.added, &item, s.max_queued_bytes).await? {
                return Err(GroupRejection::QueueFull { device }.into());
            }
            queued_for.extend(s.added.iter().cloned());
        }
        Ok(Accepted {
            epoch: new_epoch,
            queued_for,
        })
    }

    async fn message_inner(
        &self,
        tx: &mut AnyConnection,
        m: &Message<'_>,
    ) -> std::result::Result<Vec<DeviceId>, GroupError> {
        let current = group_epoch(tx, m.group_id)
            .await?
            .ok_or(GroupRejection::UnknownGroup)?;
        if current != m.epoch {
            return Err(GroupRejection::StaleEpoch { current }.into());
        }
        let members = members(tx, m.group_id).await?;
        if !members.contains(m.sender) {
            return Err(GroupRejection::NotMember.into());
        }
        if let Some(blob) = m.blob {
            // Only a finished blob of the sender's own (for another
            // domain's device: one its server pushed, owned by that
            // server's stand-in), now kept while referred to.
            let marked = sqlx::query(
                "UPDATE blobs SET referenced = TRUE WHERE blob_id = $1 AND chunks IS NOT NULL AND (owner = $2 \
                 OR owner = (SELECT 'peer:' || home_domain FROM devices WHERE device_id = $2 AND home_domain IS NOT NULL))",
            )
            .bind(blob)
            .bind(&m.sender.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if marked.rows_affected() != 1 {
                return Err(GroupRejection::UnknownBlob.into());
            }
        }
        let item = Enqueue {
            kind: QueueKind::Application,
            group: m.group_id,
            sender: m.sender,
            epoch: m.epoch,
            payload: m.payload,
            blob: m.blob,
            label: m.label,
            now: m.now,
        };
        let recipients: Vec<DeviceId> = members.into_iter().filter(|d| d != m.sender).collect();
        if let Some(device) = enqueue_many(tx, &recipients, &item, m.max_queued_bytes).await? {
            return Err(GroupRejection::QueueFull { device }.into());
        }
        Ok(recipients)
    }
}

#[async_trait]
impl SettingsStore for SqlStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn delete_setting(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        self.get_setting(key).await?.ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl DirectoryStore for SqlStore {
    async fn invite_valid(
        &self,
        address: &Address,
        secret_hash: &[u8],
        now: UnixTime,
    ) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM invites WHERE secret_hash = $1 AND address = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(secret_hash)
        .bind(address.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn create_user(
        &self,
        address: &Address,
        name: Option<&str>,
        now: UnixTime,
    ) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO users (address, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (address) DO NOTHING",
        )
        .bind(address.as_str())
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            Err(StoreError::Conflict)
        } else {
            Ok(())
        }
    }

    async fn list_users(&self) -> Result<Vec<UserSummary>> {
        let rows = sqlx::query(
            "SELECT u.address, u.name, u.created_at, \
               (SELECT COUNT(*) FROM devices d WHERE d.address = u.address AND d.revoked_at IS NULL) AS devices \
             FROM users u WHERE u.home_domain IS NULL ORDER BY u.address",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let address: String = row.try_get("address").map_err(backend)?;
                let devices: i64 = row.try_get("devices").map_err(backend)?;
                Ok(UserSummary {
                    address: Address::parse(&address)
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                    name: row.try_get("name").map_err(backend)?,
                    created_at: row.try_get("created_at").map_err(backend)?,
                    devices: devices as u32,
                })
            })
            .collect()
    }

    async fn user_exists(&self, address: &Address) -> Result<bool> {
        // Another domain's accounts known here (members of conversations
        // hosted here) are not this server's users.
        let row: Option<(String,)> =
            sqlx::query_as("SELECT address FROM users WHERE address = $1 AND home_domain IS NULL")
                .bind(address.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn create_invite(
        &self,
        address: &Address,
        secret_hash: &[u8],
        expires_at: UnixTime,
    ) -> Result<()> {
        sqlx::query("INSERT INTO invites (secret_hash, address, expires_at) VALUES ($1, $2, $3)")
            .bind(secret_hash)
            .bind(address.as_str())
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn enroll(
        &self,
        secret_hash: &[u8],
        device: NewDevice,
        now: UnixTime,
    ) -> std::result::Result<Device, EnrollError> {
        let mut tx = self.begin().await?;
        // Claim the invite first: the conditional UPDATE lets exactly one
        // enrollment win a race for the same invite.
        let claimed = sqlx::query(
            "UPDATE invites SET used_at = $1 WHERE secret_hash = $2 AND address = $3 \
             AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(secret_hash)
        .bind(device.address.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if claimed.rows_affected() != 1 {
            let row: Option<(Option<i64>, i64)> = sqlx::query_as(
                "SELECT used_at, expires_at FROM invites WHERE secret_hash = $1 AND address = $2",
            )
            .bind(secret_hash)
            .bind(device.address.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            return Err(match row {
                None => InviteRejection::Unknown,
                Some((Some(_), _)) => InviteRejection::Used,
                Some((None, _)) => InviteRejection::Expired,
            }
            .into());
        }
        insert_device(&mut tx, &device, Some(now), now).await?;
        if let Some((list, entry)) = &device.device_list {
            insert_list(&mut tx, &device.address, list, now).await?;
            append_log(&mut tx, device.address.as_str(), list.version, entry).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(Device {
            device_id: device.device_id,
            address: device.address,
            name: device.name,
            signature_key: device.signature_key,
            created_at: now,
            approved_at: Some(now),
            revoked_at: None,
            revoked_by: None,
            home_domain: None,
        })
    }

    async fn latest_device_list(&self, address: &Address) -> Result<Option<StoredList>> {
        let row: Option<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT version, body, signature FROM device_lists WHERE address = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(address.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(v, body, signature)| StoredList {
            version: v as u64,
            body,
            signature,
        }))
    }

    async fn device_list_history(&self, address: &Address) -> Result<Vec<StoredList>> {
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT version, body, signature FROM device_lists WHERE address = $1 ORDER BY version",
        )
        .bind(address.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(v, body, signature)| StoredList {
                version: v as u64,
                body,
                signature,
            })
            .collect())
    }

    async fn publish_device_list(
        &self,
        address: &Address,
        list: &StoredList,
        log_entry: &LogRecord,
        activate: &[DeviceId],
        revoke: &[DeviceId],
        now: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_list(&mut tx, address, list, now).await?;
        append_log(&mut tx, address.as_str(), list.version, log_entry).await?;
        for d in activate {
            sqlx::query("UPDATE devices SET approved_at = $1 WHERE device_id = $2 AND address = $3 AND revoked_at IS NULL")
                .bind(now)
                .bind(&d.0)
                .bind(address.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for d in revoke {
            revoke_in(&mut tx, d, "account", now).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn create_link_request(&self, r: NewLinkRequest, now: UnixTime) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_device(&mut tx, &r.device, None, now).await?;
        sqlx::query(
            "INSERT INTO link_requests (code, poll_hash, device_id, nonce, source, created_at, expires_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
        )
        .bind(&r.code)
        .bind(&r.poll_hash)
        .bind(&r.device.device_id.0)
        .bind(&r.nonce)
        .bind(&r.source)
        .bind(now)
        .bind(r.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(unique_is_conflict)?;
        tx.commit().await.map_err(backend)
    }

    async fn link_request(&self, code: &str) -> Result<Option<LinkRequest>> {
        self.find_link_request(LinkKey::Code(code)).await
    }

    async fn link_request_by_poll(&self, poll_hash: &[u8]) -> Result<Option<LinkRequest>> {
        self.find_link_request(LinkKey::Poll(poll_hash)).await
    }

    async fn link_request_for_device(&self, device_id: &DeviceId) -> Result<Option<LinkRequest>> {
        self.find_link_request(LinkKey::Device(device_id)).await
    }

    async fn finish_link_request(&self, code: &str, status: &str, now: UnixTime) -> Result<bool> {
        let mut tx = self.begin().await?;
        let device: Option<String> = sqlx::query_scalar(
            "UPDATE link_requests SET status = $1 WHERE code = $2 AND status = 'pending' RETURNING device_id",
        )
        .bind(status)
        .bind(code)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let Some(device) = device else {
            return Ok(false);
        };
        if status != "approved" {
            revoke_in(&mut tx, &DeviceId(device), status, now).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn count_pending_links(&self, address: &Address, source: &str) -> Result<(u64, u64)> {
        let (by_address, by_source): (i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT count(*) FROM link_requests l JOIN devices d ON d.device_id = l.device_id \
                 WHERE l.status = 'pending' AND d.address = $1), \
               (SELECT count(*) FROM link_requests WHERE status = 'pending' AND source = $2)",
        )
        .bind(address.as_str())
        .bind(source)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok((by_address as u64, by_source as u64))
    }

    async fn overdue_links(&self, now: UnixTime, limit: u32) -> Result<Vec<LinkRequest>> {
        let codes: Vec<String> = sqlx::query_scalar(
            "SELECT code FROM link_requests WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut out = Vec::new();
        for code in codes {
            if let Some(r) = self.link_request(&code).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn revoke_device(
        &self,
        device_id: &DeviceId,
        by: &str,
        log_entry: Option<&LogRecord>,
        now: UnixTime,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = revoke_in(&mut tx, device_id, by, now).await?;
        if let (true, Some(entry)) = (done, log_entry) {
            let address: String =
                sqlx::query_scalar("SELECT address FROM devices WHERE device_id = $1")
                    .bind(&device_id.0)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
            let address =
                Address::parse(&address).map_err(|e| StoreError::Backend(e.to_string()))?;
            append_log(&mut tx, address.as_str(), 0, entry).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(done)
    }

    async fn reset_user(&self, address: &Address, now: UnixTime) -> Result<()> {
        let mut tx = self.begin().await?;
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT device_id FROM devices WHERE address = $1 AND revoked_at IS NULL",
        )
        .bind(address.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        for (id,) in ids {
            revoke_in(&mut tx, &DeviceId(id), "reset", now).await?;
        }
        // Invites issued before the reset die with it: the only way in
        // afterwards is the invite the reset itself issues.
        sqlx::query("UPDATE invites SET expires_at = $1 WHERE address = $2 AND used_at IS NULL AND expires_at > $1")
            .bind(now)
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let done = sqlx::query("UPDATE users SET reset_at = $1 WHERE address = $2")
            .bind(now)
            .bind(address.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.map_err(backend)
    }

    async fn reset_at(&self, address: &Address) -> Result<Option<UnixTime>> {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT reset_at FROM users WHERE address = $1")
                .bind(address.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.and_then(|(r,)| r))
    }

    async fn stale_members(&self, older_than: UnixTime) -> Result<Vec<StaleMember>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT d.address, m.device_id, m.group_id, m.updated_at FROM group_members m \
             JOIN devices d ON d.device_id = m.device_id \
             WHERE m.updated_at <= $1 AND d.revoked_at IS NULL ORDER BY d.address, m.device_id, m.group_id",
        )
        .bind(older_than)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|(a, d, g, at)| {
                Ok(StaleMember {
                    address: Address::parse(&a).map_err(|e| StoreError::Backend(e.to_string()))?,
                    device_id: DeviceId(d),
                    group_id: GroupId(g),
                    updated_at: at,
                })
            })
            .collect()
    }

    async fn device(&self, device_id: &DeviceId) -> Result<Option<Device>> {
        let row = sqlx::query(select_devices!("WHERE device_id = $1"))
            .bind(&device_id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(device_from_row).transpose()
    }

    async fn devices_of(&self, address: &Address) -> Result<Vec<Device>> {
        let rows = sqlx::query(select_devices!(
            "WHERE address = $1 ORDER BY created_at, device_id"
        ))
        .bind(address.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(device_from_row).collect()
    }

    async fn put_challenge(
        &self,
        challenge: &[u8],
        device_id: &DeviceId,
        expires_at: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_challenges (challenge, device_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(challenge)
        .bind(&device_id.0)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn take_challenge(&self, challenge: &[u8], now: UnixTime) -> Result<Option<DeviceId>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM auth_challenges WHERE challenge = $1 RETURNING device_id, expires_at",
        )
        .bind(challenge)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        // Expired challenges of any device are swept on the way.
        sqlx::query("DELETE FROM auth_challenges WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.filter(|(_, exp)| *exp > now).map(|(d, _)| DeviceId(d)))
    }

    async fn put_token(
        &self,
        token_hash: &[u8],
        device_id: &DeviceId,
        expires_at: UnixTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_tokens (token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash)
        .bind(&device_id.0)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn token_device(&self, token_hash: &[u8], now: UnixTime) -> Result<Option<DeviceId>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT t.device_id FROM auth_tokens t JOIN devices d ON d.device_id = t.device_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND d.revoked_at IS NULL AND d.approved_at IS NOT NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(row.map(|(d,)| DeviceId(d)))
    }

    async fn add_key_packages(
        &self,
        device_id: &DeviceId,
        packages: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        replace_pool: bool,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        if replace_pool {
            sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort = $2")
                .bind(&device_id.0)
                .bind(false)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        insert_key_packages(&mut tx, device_id, packages, last_resort).await?;
        tx.commit().await.map_err(backend)
    }

    async fn count_key_packages(&self, device_id: &DeviceId) -> Result<u32> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND last_resort = $2",
        )
        .bind(&device_id.0)
        .bind(false)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(n as u32)
    }

    async fn claim_key_packages(
        &self,
        addresses: &[Address],
        exclude: &DeviceId,
        only: &[DeviceId],
    ) -> Result<Claim> {
        let mut tx = self.begin().await?;
        let mut claimed = Vec::new();
        for address in addresses {
            let known: Option<(String,)> =
                sqlx::query_as("SELECT address FROM users WHERE address = $1")
                    .bind(address.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            if known.is_none() {
                tx.rollback().await.map_err(backend)?;
                return Ok(Claim::UnknownAddress(address.clone()));
            }
            let rows = sqlx::query(select_devices!(
                "WHERE address = $1 AND revoked_at IS NULL AND approved_at IS NOT NULL AND device_id <> $2 \
                 ORDER BY created_at, device_id"
            ))
            .bind(address.as_str())
            .bind(&exclude.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
            for row in &rows {
                let device = device_from_row(row)?;
                if !only.is_empty() && !only.contains(&device.device_id) {
                    continue;
                }
                // Handing out and deleting is one statement, so two claimers can
                // never receive the same ordinary package. On PostgreSQL a
                // package another claim's transaction holds is skipped (else
                // this claim would wait for it, find it gone, and fall back to
                // the last-resort package with others still in the pool);
                // SQLite runs one writing transaction at a time anyway.
                let ordinary: Option<Vec<u8>> = sqlx::query_scalar(match self.dialect {
                    Dialect::Postgres => {
                        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                         WHERE device_id = $1 AND last_resort = $2 ORDER BY id LIMIT 1 \
                         FOR UPDATE SKIP LOCKED) RETURNING data"
                    }
                    Dialect::Sqlite => {
                        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                         WHERE device_id = $1 AND last_resort = $2 ORDER BY id LIMIT 1) RETURNING data"
                    }
                })
                .bind(&device.device_id.0)
                .bind(false)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
                let (key_package, last_resort) = match ordinary {
                    Some(kp) => (kp, false),
                    None => {
                        let lr: Option<Vec<u8>> = sqlx::query_scalar(
                            "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort = $2 \
                             ORDER BY id DESC LIMIT 1",
                        )
                        .bind(&device.device_id.0)
                        .bind(true)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(backend)?;
                        match lr {
                            Some(kp) => (kp, true),
                            None => continue,
                        }
                    }
                };
                claimed.push(Claimed {
                    device,
                    key_package,
                    last_resort,
                });
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(Claim::Claimed(claimed))
    }
}

#[async_trait]
impl LogStore for SqlStore {
    async fn log_size(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT size FROM log_state WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn log_hashes(&self, indexes: &[u64]) -> Result<Vec<[u8; 32]>> {
        let mut out = Vec::with_capacity(indexes.len());
        for i in indexes {
            let h: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT hash FROM log_hashes WHERE idx = $1")
                    .bind(*i as i64)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
            out.push(
                h.ok_or(StoreError::NotFound)?
                    .try_into()
                    .map_err(|_| StoreError::Backend("damaged log hash".into()))?,
            );
        }
        Ok(out)
    }

    async fn log_entries(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        sqlx::query_scalar("SELECT data FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx")
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn log_entries_of(&self, address: &Address) -> Result<Vec<LoggedEntry>> {
        self.logged_under(address.as_str()).await
    }

    async fn append_officer_statement(
        &self,
        subject: &str,
        version: u64,
        record: &LogRecord,
    ) -> Result<u64> {
        let column = officer_column(subject);
        let mut tx = self.begin().await?;
        // append_log's first statement locks the log's size row, so the
        // count below sees every statement committed before this one.
        let index = append_log(&mut tx, &column, version, record).await?;
        let (newest, count): (Option<i64>, i64) =
            sqlx::query_as("SELECT MAX(version), COUNT(*) FROM log_entries WHERE address = $1")
                .bind(&column)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        if newest != Some(version as i64) || count as u64 != version {
            return Err(StoreError::Conflict);
        }
        tx.commit().await.map_err(backend)?;
        Ok(index)
    }

    async fn officer_statements(&self, subject: &str) -> Result<Vec<LoggedEntry>> {
        self.logged_under(&officer_column(subject)).await
    }

    async fn log_commitment_key(&self, leaf: &[u8]) -> Result<u64> {
        // Two nodes starting at once both try; the unique index lets one in
        // and the other reads what it wrote.
        for _ in 0..2 {
            let existing: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT idx, data FROM log_entries WHERE address = ''")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(backend)?;
            if let Some((index, data)) = existing {
                return if data == leaf {
                    Ok(index as u64)
                } else {
                    Err(StoreError::Conflict)
                };
            }
            let mut tx = self.begin().await?;
            let record = LogRecord {
                leaf: leaf.to_vec(),
                entry: Vec::new(),
            };
            match append_log(&mut tx, "", 0, &record).await {
                Ok(index) => {
                    if tx.commit().await.is_ok() {
                        return Ok(index);
                    }
                }
                Err(_) => drop(tx),
            }
        }
        Err(StoreError::Backend(
            "could not record the log's commitment key".into(),
        ))
    }

    async fn checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let row: (i64, Option<Vec<u8>>) =
            sqlx::query_as("SELECT checkpoint_size, checkpoint FROM log_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.1.map(|note| (row.0 as u64, note)))
    }

    async fn save_checkpoint(&self, size: u64, note: &[u8]) -> Result<bool> {
        let done = sqlx::query("UPDATE log_state SET checkpoint_size = $1, checkpoint = $2 WHERE id = 1 AND checkpoint_size < $1 AND size >= $1")
            .bind(size as i64)
            .bind(note)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn replace_checkpoint(&self, size: u64, note: &[u8]) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE log_state SET checkpoint = $2 WHERE id = 1 AND checkpoint_size = $1",
        )
        .bind(size as i64)
        .bind(note)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn count(&self, name: &str, window_start: UnixTime, n: u64) -> Result<u64> {
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO detection_counts (name, window_start, n) VALUES ($1, $2, $3) \
             ON CONFLICT (name, window_start) DO UPDATE SET n = detection_counts.n + excluded.n \
             RETURNING n",
        )
        .bind(name)
        .bind(window_start)
        .bind(n as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(total as u64)
    }

    async fn count_each(&self, names: &[String], window_start: UnixTime) -> Result<()> {
        let mut unique: Vec<&String> = names.iter().collect();
        unique.sort();
        unique.dedup();
        if unique.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for name in unique {
            sqlx::query(
                "INSERT INTO detection_counts (name, window_start, n) VALUES ($1, $2, 1) \
                 ON CONFLICT (name, window_start) DO UPDATE SET n = detection_counts.n + 1",
            )
            .bind(name)
            .bind(window_start)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn counted(&self, name: &str, since: UnixTime, until: UnixTime) -> Result<u64> {
        let total: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM detection_counts \
             WHERE name = $1 AND window_start >= $2 AND window_start < $3",
        )
        .bind(name)
        .bind(since)
        .bind(until)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(total as u64)
    }

    async fn prune_counts(&self, before: UnixTime) -> Result<u64> {
        self.delete_windows_before(
            "DELETE FROM detection_counts WHERE window_start < $1",
            before,
        )
        .await
    }

    async fn append_events(&self, bodies: &[pouch_proto::api::EventBody]) -> Result<Vec<u64>> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        let jsons = bodies
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut tx = self.begin().await?;
        // The state row's lock serialises appends, across nodes too; a batch
        // takes its range of sequence numbers at once.
        let (last, mut prev): (i64, String) = sqlx::query_as(
            "UPDATE events_state SET last_seq = last_seq + $1 WHERE id = 1 RETURNING last_seq, last_hash",
        )
        .bind(bodies.len() as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let first = last - bodies.len() as i64 + 1;
        let mut seqs = Vec::with_capacity(bodies.len());
        // Rows of one statement, under the bind limits of both backends.
        const COLUMNS: usize = 7;
        const ROWS_PER_INSERT: usize = 200;
        for (chunk_no, chunk) in bodies.chunks(ROWS_PER_INSERT).enumerate() {
            let sql = format!(
                "INSERT INTO events (seq, at, account, action, body, prev_hash, hash) VALUES {}",
                values_placeholders(chunk.len(), COLUMNS)
            );
            // Built only from this function's own text and placeholder numbers.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, body) in chunk.iter().enumerate() {
                let n = chunk_no * ROWS_PER_INSERT + i;
                let seq = first + n as i64;
                let hash = pouch_proto::api::Event::chain_hash(&prev, seq as u64, &jsons[n]);
                query = query
                    .bind(seq)
                    .bind(body.at)
                    .bind(body.account.as_ref().map(|a| a.as_str().to_string()))
                    .bind(body.action.as_str().to_string())
                    .bind(jsons[n].clone())
                    .bind(std::mem::replace(&mut prev, hash.clone()))
                    .bind(hash);
                seqs.push(seq as u64);
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        sqlx::query("UPDATE events_state SET last_hash = $1 WHERE id = 1")
            .bind(&prev)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(seqs)
    }

    async fn events(
        &self,
        after_seq: u64,
        account: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<pouch_proto::api::Event>> {
        let rows: Vec<(i64, String, String, String)> = match account {
            Some(a) => sqlx::query_as(
                "SELECT seq, body, prev_hash, hash FROM events WHERE seq > $1 AND account = $2 ORDER BY seq LIMIT $3",
            )
            .bind(after_seq as i64)
            .bind(a.as_str().to_string())
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query_as("SELECT seq, body, prev_hash, hash FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after_seq as i64)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await,
        }
        .map_err(backend)?;
        Ok(rows.into_iter().map(event_from_row).collect())
    }

    async fn add_alert(&self, a: &pouch_proto::api::Alert) -> Result<u64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO alerts (at, rule, severity, account, device, summary, event_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(a.at)
        .bind(a.rule.as_str())
        .bind(a.severity.as_str())
        .bind(a.account.as_ref().map(|x| x.as_str().to_string()))
        .bind(a.device.as_ref().map(|d| d.0.clone()))
        .bind(&a.summary)
        .bind(a.event_seq.map(|s| s as i64))
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(id as u64)
    }

    async fn alerts(
        &self,
        after_id: u64,
        account: Option<&Address>,
    ) -> Result<Vec<pouch_proto::api::Alert>> {
        type Row = (
            i64,
            i64,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<i64>,
        );
        let rows: Vec<Row> = match account {
            Some(a) => sqlx::query_as(
                "SELECT id, at, rule, severity, account, device, summary, event_seq FROM alerts \
                 WHERE id > $1 AND (account = $2 OR (account IS NULL AND severity = 'critical')) \
                 ORDER BY id LIMIT 1000",
            )
            .bind(after_id as i64)
            .bind(a.as_str().to_string())
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query_as(
                "SELECT id, at, rule, severity, account, device, summary, event_seq FROM alerts \
                 WHERE id > $1 ORDER BY id LIMIT 1000",
            )
            .bind(after_id as i64)
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, at, rule, severity, account, device, summary, event_seq)| {
                    pouch_proto::api::Alert {
                        id: id as u64,
                        at,
                        rule: pouch_proto::security::Rule::parse(&rule),
                        // No version writes another value: an edited row is
                        // shown as critical rather than hidden.
                        severity: pouch_proto::security::Severity::parse(&severity)
                            .unwrap_or(pouch_proto::security::Severity::Critical),
                        account: account.and_then(|a| Address::parse(&a).ok()),
                        device: device.map(DeviceId),
                        summary,
                        event_seq: event_seq.map(|s| s as u64),
                    }
                },
            )
            .collect())
    }

    async fn event_head(&self) -> Result<(u64, String)> {
        let (seq, hash): (i64, String) =
            sqlx::query_as("SELECT last_seq, last_hash FROM events_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok((seq as u64, hash))
    }

    async fn events_since(
        &self,
        since: UnixTime,
        account: Option<&Address>,
        limit: u32,
    ) -> Result<Vec<pouch_proto::api::Event>> {
        let rows: Vec<(i64, String, String, String)> = match account {
            Some(a) => sqlx::query_as(
                "SELECT seq, body, prev_hash, hash FROM events WHERE account = $1 AND at >= $2 ORDER BY seq LIMIT $3",
            )
            .bind(a.as_str().to_string())
            .bind(since)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query_as(
                "SELECT seq, body, prev_hash, hash FROM events WHERE at >= $1 ORDER BY seq LIMIT $2",
            )
            .bind(since)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await,
        }
        .map_err(backend)?;
        Ok(rows.into_iter().map(event_from_row).collect())
    }

    async fn event_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n as u64)
    }

    async fn event_anchor(&self) -> Result<(u64, String)> {
        let (seq, hash): (i64, String) =
            sqlx::query_as("SELECT anchor_seq, anchor_hash FROM events_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok((seq as u64, hash))
    }

    async fn prune_events(&self, before: UnixTime) -> Result<u64> {
        let mut tx = self.begin().await?;
        // Lock the state row first, as appends do, so the anchor and the rows move together.
        sqlx::query("UPDATE events_state SET last_seq = last_seq WHERE id = 1")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let last: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM events WHERE at < $1 ORDER BY seq DESC LIMIT 1")
                .bind(before)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let done = sqlx::query("DELETE FROM events WHERE seq <= $1")
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("UPDATE events_state SET anchor_seq = $1, anchor_hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn count_fetch(
        &self,
        device_id: &DeviceId,
        window_start: UnixTime,
        items: u64,
    ) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO fetch_windows (device_id, window_start, items) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id, window_start) DO UPDATE SET items = fetch_windows.items + excluded.items \
             RETURNING items",
        )
        .bind(&device_id.0)
        .bind(window_start)
        .bind(items as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(n as u64)
    }

    async fn prune_fetch_windows(&self, before: UnixTime) -> Result<u64> {
        self.delete_windows_before("DELETE FROM fetch_windows WHERE window_start < $1", before)
            .await
    }

    async fn fetch_windows(
        &self,
        device_id: &DeviceId,
        since: UnixTime,
    ) -> Result<Vec<(UnixTime, u64)>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT window_start, items FROM fetch_windows WHERE device_id = $1 AND window_start >= $2 ORDER BY window_start",
        )
        .bind(&device_id.0)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows.into_iter().map(|(w, n)| (w, n as u64)).collect())
    }

    async fn see_source(
        &self,
        device_id: &DeviceId,
        source: &str,
        now: UnixTime,
    ) -> Result<SourceHistory> {
        let mut tx = self.begin().await?;
        let last_here: Option<i64> = sqlx::query_scalar(
            "SELECT last_seen FROM device_sources WHERE device_id = $1 AND source = $2",
        )
        .bind(&device_id.0)
        .bind(source)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        let (sources, last_anywhere): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MAX(last_seen) FROM device_sources WHERE device_id = $1",
        )
        .bind(&device_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO device_sources (device_id, source, first_seen, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (device_id, source) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(&device_id.0)
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(SourceHistory {
            last_here,
            last_anywhere,
            sources: sources as u64,
        })
    }
}

#[async_trait]
impl MailStore for SqlStore {
    async fn submit_commit(
        &self,
        s: CommitSubmission,
    ) -> std::result::Result<Accepted, GroupError> {
        let mut tx = self.begin().await?;
        let accepted = self.commit_inner(&mut tx, &s).await?;
        tx.commit().await.map_err(backend)?;
        Ok(accepted)
    }

    async fn submit_message(
        &self,
        message: &Message<'_>,
    ) -> std::result::Result<Vec<DeviceId>, GroupError> {
        let mut tx = self.begin().await?;
        let n = self.message_inner(&mut tx, message).await?;
        tx.commit().await.map_err(backend)?;
        Ok(n)
    }

    async fn submit_message_once(
        &self,
        message: &Message<'_>,
        submission: &str,
    ) -> std::result::Result<Option<Vec<DeviceId>>, GroupError> {
        let mut tx = self.begin().await?;
        // First: a repeat is known whatever happened to the group since.
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM submissions WHERE sender_device = $1 AND submission_id = $2",
        )
        .bind(&message.sender.0)
        .bind(submission)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if seen.is_some() {
            return Ok(None);
        }
        // A refusal rolls everything back: the same id may come again.
        let recipients = self.message_inner(&mut tx, message).await?;
        // Remembered only for a message that reached someone: a member
        // alone in a conversation cannot grow the table with ids.
        if !recipients.is_empty() {
            let fresh = sqlx::query(
                "INSERT INTO submissions (sender_device, submission_id, accepted_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (sender_device, submission_id) DO NOTHING",
            )
            .bind(&message.sender.0)
            .bind(submission)
            .bind(message.now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if fresh.rows_affected() == 0 {
                // The same id, sent twice at once, committed first by the
                // other: this one's queue items are rolled back.
                return Ok(None);
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(Some(recipients))
    }

    async fn forget_submissions(&self, before: UnixTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM submissions WHERE accepted_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn group_public_state(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<(u64, Option<Vec<u8>>)>> {
        let row: Option<(i64, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT epoch, public_state FROM mls_groups WHERE group_id = $1")
                .bind(&group_id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.map(|(epoch, state)| (epoch as u64, state)))
    }

    async fn group_members(&self, group_id: &GroupId) -> Result<Option<(u64, Vec<DeviceId>)>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        let Some(epoch) = group_epoch(&mut conn, group_id).await? else {
            return Ok(None);
        };
        Ok(Some((epoch, members(&mut conn, group_id).await?)))
    }

    async fn group_member_addresses(&self, group_id: &GroupId) -> Result<Option<Vec<Address>>> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        if group_epoch(&mut conn, group_id).await?.is_none() {
            return Ok(None);
        }
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT d.address FROM group_members gm JOIN devices d ON d.device_id = gm.device_id \
             WHERE gm.group_id = $1 ORDER BY d.address",
        )
        .bind(&group_id.0)
        .fetch_all(&mut *conn)
        .await
        .map_err(backend)?;
        rows.into_iter()
            .map(|(a,)| Address::parse(&a).map_err(|e| StoreError::Backend(e.to_string())))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn queue_pending(&self, device_id: &DeviceId, after: u64) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM queue WHERE device_id = $1 AND seq > $2 LIMIT 1")
                .bind(&device_id.0)
                .bind(after as i64)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn fetch_queue(
        &self,
        device_id: &DeviceId,
        after: u64,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<QueueItem>> {
        // Sizes first, payloads only for the items that fit.
        let sizes: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, size FROM queue WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(&device_id.0)
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut total = 0u64;
        let mut last = None;
        for (seq, size) in sizes {
            total = total.saturating_add(size.max(0) as u64);
            if last.is_some() && total > max_bytes {
                break;
            }
            last = Some(seq);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT q.seq, q.kind, q.group_id, q.sender_device, q.epoch, p.data, p.label, q.received_at, q.blob_id \
             FROM queue q JOIN queue_payloads p ON p.payload_id = q.payload_id \
             WHERE q.device_id = $1 AND q.seq > $2 AND q.seq <= $3 ORDER BY q.seq",
        )
        .bind(&device_id.0)
        .bind(after as i64)
        .bind(last)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind").map_err(backend)?;
                let seq: i64 = row.try_get("seq").map_err(backend)?;
                let epoch: i64 = row.try_get("epoch").map_err(backend)?;
                Ok(QueueItem {
                    seq: seq as u64,
                    kind: rules::queue_kind(&kind)?,
                    group_id: GroupId(row.try_get("group_id").map_err(backend)?),
                    sender_device: DeviceId(row.try_get("sender_device").map_err(backend)?),
                    epoch: epoch as u64,
                    payload: row.try_get("data").map_err(backend)?,
                    received_at: row.try_get("received_at").map_err(backend)?,
                    label: row.try_get("label").map_err(backend)?,
                    blob: row.try_get("blob_id").map_err(backend)?,
                })
            })
            .collect()
    }

    async fn ack_queue(&self, device_id: &DeviceId, up_to: u64) -> Result<Vec<UnixTime>> {
        let mut tx = self.begin().await?;
        let gone: Vec<(i64, i64, Option<String>, i64)> = sqlx::query_as(
            "DELETE FROM queue WHERE device_id = $1 AND seq <= $2 RETURNING size, payload_id, blob_id, received_at",
        )
        .bind(&device_id.0)
        .bind(up_to as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let freed: i64 = gone.iter().map(|(n, _, _, _)| *n).sum();
        sqlx::query(
            "UPDATE devices SET queued_bytes = CASE WHEN queued_bytes > $2 THEN queued_bytes - $2 ELSE 0 END WHERE device_id = $1",
        )
        .bind(&device_id.0)
        .bind(freed)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // A blob goes once the last queue item that refers to it is acknowledged.
        let mut payloads: Vec<i64> = gone.iter().map(|(_, p, _, _)| *p).collect();
        payloads.sort_unstable();
        payloads.dedup();
        collect_payloads(&mut tx, &mut payloads.clone()).await?;
        let mut blobs: Vec<&str> = gone
            .iter()
            .filter_map(|(_, _, b, _)| b.as_deref())
            .collect();
        blobs.sort();
        blobs.dedup();
        for blob in blobs {
            collect_blob(&mut tx, blob).await?;
        }
        sqlx::query(
            "UPDATE devices SET acked_up_to = CASE WHEN acked_up_to < $2 THEN $2 ELSE acked_up_to END \
             WHERE device_id = $1",
        )
        .bind(&device_id.0)
        .bind(up_to as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if self.dialect == Dialect::Postgres && !payloads.is_empty() {
            // Now that this acknowledgement is visible: see `collect_payloads`.
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            collect_payloads(&mut conn, &mut payloads).await?;
        }
        Ok(gone.into_iter().map(|(_, _, _, at)| at).collect())
    }

    async fn queue_depth(&self) -> Result<QueueDepth> {
        let (items, bytes, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT), MIN(received_at) FROM queue",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(QueueDepth {
            items: items as u64,
            bytes: bytes as u64,
            oldest,
        })
    }

    async fn queue_acked(&self, device_id: &DeviceId) -> Result<u64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT acked_up_to FROM devices WHERE device_id = $1")
                .bind(&device_id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn create_blob(&self, blob_id: &str, owner: &DeviceId, now: UnixTime) -> Result<()> {
        sqlx::query("INSERT INTO blobs (blob_id, owner, created_at) VALUES ($1, $2, $3)")
            .bind(blob_id)
            .bind(&owner.0)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn collect_orphan_payloads(&self) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM queue_payloads WHERE payload_id IN (SELECT p.payload_id FROM queue_payloads p \
             WHERE NOT EXISTS (SELECT 1 FROM queue q WHERE q.payload_id = p.payload_id) LIMIT 1000)",
        )
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn collect_blobs(&self, unsent_before: UnixTime) -> Result<u64> {
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT blob_id FROM blobs b WHERE \
               (NOT b.referenced AND b.created_at < $1) \
               OR (b.referenced AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.blob_id = b.blob_id)) \
             LIMIT 1000",
        )
        .bind(unsent_before)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut deleted = 0;
        for blob in candidates {
            let mut tx = self.begin().await?;
            // Checked again inside the transaction: a send may have referred to it since.
            let gone = sqlx::query_scalar::<_, i64>(
                "SELECT CASE WHEN referenced THEN 1 ELSE 0 END FROM blobs WHERE blob_id = $1",
            )
            .bind(&blob)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            let done = match gone {
                Some(1) => collect_blob(&mut tx, &blob).await?,
                Some(_) => delete_blob(&mut tx, &blob).await?,
                None => false,
            };
            tx.commit().await.map_err(backend)?;
            deleted += done as u64;
        }
        Ok(deleted)
    }

    async fn put_blob_chunk(
        &self,
        blob_id: &str,
        owner: &DeviceId,
        index: u32,
        data: &[u8],
        max_owned_bytes: u64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let open: Option<(String,)> = sqlx::query_as(
            "SELECT blob_id FROM blobs WHERE blob_id = $1 AND owner = $2 AND chunks IS NULL",
        )
        .bind(blob_id)
        .bind(&owner.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
        if open.is_none() {
            return Err(StoreError::NotFound);
        }
        // The owner's stored bytes, counted as chunks arrive (a retried
        // chunk replaces the earlier copy and its count).
        let earlier: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(length(data)), 0) FROM blob_chunks WHERE blob_id = $1 AND idx = $2",
        )
        .bind(blob_id)
        .bind(index as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        let owned: i64 = sqlx::query_scalar(
            "UPDATE devices SET blob_bytes = blob_bytes + $2 - $3 WHERE device_id = $1 RETURNING blob_bytes",
        )
        .bind(&owner.0)
        .bind(data.len() as i64)
        .bind(earlier)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
        if owned.max(0) as u64 > max_owned_bytes {
            return Err(StoreError::QuotaExceeded);
        }
        // A retried upload of the same chunk replaces it.
        sqlx::query(
            "INSERT INTO blob_chunks (blob_id, idx, data) VALUES ($1, $2, $3) \
             ON CONFLICT (blob_id, idx) DO UPDATE SET data = excluded.data",
        )
        .bind(blob_id)
        .bind(index as i64)
        .bind(data)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn finish_blob(
        &self,
        blob_id: &str,
        owner: &DeviceId,
        chunks: u32,
        size: u64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM blob_chunks WHERE blob_id = $1 AND idx < $2")
                .bind(blob_id)
                .bind(chunks as i64)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
        if stored != chunks as i64 {
            return Err(StoreError::NotFound);
        }
        let done = sqlx::query(
            "UPDATE blobs SET chunks = $1, size = $2 WHERE blob_id = $3 AND owner = $4 AND chunks IS NULL",
        )
        .bind(chunks as i64)
        .bind(size as i64)
        .bind(blob_id)
        .bind(&owner.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.map_err(backend)
    }

    async fn blob_chunk(&self, blob_id: &str, index: u32) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar(
            "SELECT c.data FROM blob_chunks c JOIN blobs b ON b.blob_id = c.blob_id \
             WHERE c.blob_id = $1 AND c.idx = $2 AND b.chunks IS NOT NULL",
        )
        .bind(blob_id)
        .bind(index as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)
    }
}

pub(crate) fn unique_is_conflict(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        _ => backend(e),
    }
}

async fn insert_device(
    tx: &mut AnyConnection,
    device: &NewDevice,
    approved_at: Option<UnixTime>,
    now: UnixTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO devices (device_id, address, name, signature_key, created_at, approved_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&device.device_id.0)
    .bind(device.address.as_str())
    .bind(&device.name)
    .bind(&device.signature_key)
    .bind(now)
    .bind(approved_at)
    .execute(&mut *tx)
    .await
    .map_err(unique_is_conflict)?;
    insert_key_packages(
        tx,
        &device.device_id,
        &device.key_packages,
        Some(&device.last_resort),
    )
    .await
}

async fn insert_list(
    tx: &mut AnyConnection,
    address: &Address,
    list: &StoredList,
    now: UnixTime,
) -> Result<()> {
    sqlx::query("INSERT INTO device_lists (address, version, body, signature, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(address.as_str())
        .bind(list.version as i64)
        .bind(&list.body)
        .bind(&list.signature)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unique_is_conflict)?;
    Ok(())
}

/// Where an officer's statements about `subject` are filed in `log_entries`
/// (beside accounts' entries, which are filed by address: no address
/// begins so).
fn officer_column(subject: &str) -> String {
    format!("officer:{subject}")
}

impl SqlStore {
    /// The log entries filed under `column`, oldest first.
    async fn logged_under(&self, column: &str) -> Result<Vec<LoggedEntry>> {
        let rows: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT idx, data, entry FROM log_entries WHERE address = $1 ORDER BY idx",
        )
        .bind(column)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(index, leaf, entry)| LoggedEntry {
                index: index as u64,
                leaf,
                entry,
            })
            .collect())
    }
}

/// Appends one entry to the transparency log in the caller's transaction:
/// the size counter's row lock serialises appends (across PostgreSQL nodes
/// too), and the entry and its Merkle hashes commit with the change they
/// record — an acknowledged entry is never lost, none is stored half.
async fn append_log(
    tx: &mut AnyConnection,
    address: &str,
    version: u64,
    record: &LogRecord,
) -> Result<u64> {
    let entry = record.leaf.as_slice();
    let size: i64 =
        sqlx::query_scalar("UPDATE log_state SET size = size + 1 WHERE id = 1 RETURNING size")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
    let index = (size - 1) as u64;
    let needed = pouch_log::hashes_needed_to_append(index);
    let mut fetched = std::collections::HashMap::new();
    for i in needed {
        let h: Vec<u8> = sqlx::query_scalar("SELECT hash FROM log_hashes WHERE idx = $1")
            .bind(i as i64)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        fetched.insert(
            i,
            pouch_log::Hash(
                h.try_into()
                    .map_err(|_| StoreError::Backend("damaged log hash".into()))?,
            ),
        );
    }
    let new = pouch_log::stored_hashes(index, entry, &pouch_log::FetchedHashes(fetched))
        .map_err(|e| StoreError::Backend(format!("log hashing: {e}")))?;
    let base = pouch_log::stored_hash_index(0, index);
    for (k, h) in new.iter().enumerate() {
        sqlx::query("INSERT INTO log_hashes (idx, hash) VALUES ($1, $2)")
            .bind((base + k as u64) as i64)
            .bind(h.0.to_vec())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    sqlx::query(
        "INSERT INTO log_entries (idx, address, version, data, entry) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(index as i64)
    .bind(address)
    .bind(version as i64)
    .bind(entry)
    .bind((!record.entry.is_empty()).then_some(record.entry.as_slice()))
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    Ok(index)
}

/// Revokes a device and drops what it could still use: tokens, key packages, queue.
async fn revoke_in(
    tx: &mut AnyConnection,
    device: &DeviceId,
    by: &str,
    now: UnixTime,
) -> Result<bool> {
    let done = sqlx::query("UPDATE devices SET revoked_at = $1, revoked_by = $2 WHERE device_id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(by)
        .bind(&device.0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    let mut payloads: Vec<i64> =
        sqlx::query_scalar("DELETE FROM queue WHERE device_id = $1 RETURNING payload_id")
            .bind(&device.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(backend)?;
    collect_payloads(tx, &mut payloads).await?;
    for sql in [
        "DELETE FROM auth_tokens WHERE device_id = $1",
        "DELETE FROM key_packages WHERE device_id = $1",
        "UPDATE devices SET queued_bytes = 0 WHERE device_id = $1",
    ] {
        sqlx::query(sql)
            .bind(&device.0)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    Ok(done.rows_affected() == 1)
}

async fn insert_key_packages(
    tx: &mut AnyConnection,
    device_id: &DeviceId,
    packages: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Result<()> {
    for kp in packages {
        sqlx::query("INSERT INTO key_packages (device_id, data, last_resort) VALUES ($1, $2, $3)")
            .bind(&device_id.0)
            .bind(kp.as_slice())
            .bind(false)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    if let Some(lr) = last_resort {
        // The newest last-resort package replaces the previous one.
        sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort = $2")
            .bind(&device_id.0)
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("INSERT INTO key_packages (device_id, data, last_resort) VALUES ($1, $2, $3)")
            .bind(&device_id.0)
            .bind(lr)
            .bind(true)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    Ok(())
}

/// An events row (seq, body, prev_hash, hash) as the chain's `Event`.
fn event_from_row(
    (seq, body, prev_hash, hash): (i64, String, String, String),
) -> pouch_proto::api::Event {
    pouch_proto::api::Event {
        seq: seq as u64,
        body,
        prev_hash,
        hash,
    }
}
