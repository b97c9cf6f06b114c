//! [`FederationStore`]: the devices of other domains a hub delivers to (rows
//! of `devices` with a `home_domain`, whose queues are what the hub still owes
//! that domain), and what a follower received from hubs.

use crate::queries::{Enqueue, enqueue_many, group_epoch};
use crate::{SqlStore, backend};
use async_trait::async_trait;
use pouch_proto::api::QueueKind;
use pouch_proto::{DeviceId, GroupId};
use pouch_store::{
    BlobState, FederationStore, Forwarded, ForwardedOutcome, RemoteDevice, Result, StoreError,
    UnixTime, peer_stand_in,
};
use sqlx::AnyConnection;

#[async_trait]
impl FederationStore for SqlStore {
    async fn register_remote_devices(
        &self,
        domain: &str,
        devices: &[RemoteDevice],
        now: UnixTime,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for d in devices {
            // Inserted if new (two claims of one account at once both
            // succeed), then compared: a device or account known otherwise
            // (another key, account or domain, one of this server's own) is
            // a conflict.
            sqlx::query(
                "INSERT INTO users (address, name, created_at, home_domain) VALUES ($1, '', $2, $3) \
                 ON CONFLICT (address) DO NOTHING",
            )
            .bind(d.address.as_str())
            .bind(now)
            .bind(domain)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            let home: Option<String> =
                sqlx::query_scalar("SELECT home_domain FROM users WHERE address = $1")
                    .bind(d.address.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
            if home.as_deref() != Some(domain) {
                return Err(StoreError::Conflict);
            }
            // The key is unique among all devices: one taken (a device of
            // this server's, or another peer's) inserts nothing, and the
            // comparison below fails.
            sqlx::query(
                "INSERT INTO devices (device_id, address, name, signature_key, created_at, approved_at, home_domain) \
                 VALUES ($1, $2, '', $3, $4, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&d.device_id.0)
            .bind(d.address.as_str())
            .bind(d.signature_key.as_slice())
            .bind(now)
            .bind(domain)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            let known: Option<(String, Vec<u8>, Option<String>)> = sqlx::query_as(
                "SELECT address, signature_key, home_domain FROM devices WHERE device_id = $1",
            )
            .bind(&d.device_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            match known {
                Some((address, key, home))
                    if address == d.address.as_str()
                        && key == d.signature_key
                        && home.as_deref() == Some(domain) => {}
                _ => return Err(StoreError::Conflict),
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn remote_queues(&self, domain: &str) -> Result<Vec<(DeviceId, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.device_id, d.acked_up_to FROM devices d WHERE d.home_domain = $1 \
             AND EXISTS (SELECT 1 FROM queue q WHERE q.device_id = d.device_id) ORDER BY d.device_id",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|(d, acked)| (DeviceId(d), acked.max(0) as u64))
            .collect())
    }

    async fn remote_backlog(&self, domain: &str) -> Result<(u64, Option<UnixTime>)> {
        let (items, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(q.received_at) FROM queue q JOIN devices d ON d.device_id = q.device_id \
             WHERE d.home_domain = $1",
        )
        .bind(domain)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok((items.max(0) as u64, oldest))
    }

    async fn ensure_peer_stand_in(&self, domain: &str, now: UnixTime) -> Result<DeviceId> {
        let id = peer_stand_in(domain);
        let address = format!("pouch-peer-stand-in@{domain}");
        // Not a key anyone holds (nor an Ed25519 key's length): unique,
        // and the row is never active.
        let key =
            format!("pouch: the stand-in device of the federation peer {domain}").into_bytes();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (address, name, created_at, home_domain) VALUES ($1, '', $2, $3) \
             ON CONFLICT (address) DO NOTHING",
        )
        .bind(&address)
        .bind(now)
        .bind(domain)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO devices (device_id, address, name, signature_key, created_at, home_domain) \
             VALUES ($1, $2, 'stand-in for the peer', $3, $4, $5) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(&id.0)
        .bind(&address)
        .bind(key)
        .bind(now)
        .bind(domain)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(id)
    }

    async fn blob_state(&self, blob_id: &str) -> Result<Option<BlobState>> {
        let row: Option<(String, Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT owner, chunks, size FROM blobs WHERE blob_id = $1")
                .bind(blob_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(row.map(|(owner, chunks, size)| BlobState {
            owner: DeviceId(owner),
            finished: chunks
                .zip(size)
                .map(|(c, s)| (c.max(0) as u32, s.max(0) as u64)),
        }))
    }

    async fn group_hub_nonce(&self, group_id: &GroupId) -> Result<Option<Vec<u8>>> {
        let nonce: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT hub_nonce FROM mls_groups WHERE group_id = $1")
                .bind(&group_id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(nonce.flatten())
    }

    async fn group_hub(&self, group_id: &GroupId) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT hub FROM federation_groups WHERE group_id = $1")
            .bind(&group_id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn receive_forwarded(
        &self,
        origin: &str,
        items: &[Forwarded],
        max_queued_bytes: u64,
        now: UnixTime,
    ) -> Result<Vec<ForwardedOutcome>> {
        let mut tx = self.begin().await?;
        // Rows are locked in one order (device, then position), whatever
        // order the peer sent, so two deliveries at once cannot deadlock.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| {
            (&items[a].device, items[a].seq).cmp(&(&items[b].device, items[b].seq))
        });
        let mut outcomes = vec![ForwardedOutcome::QueueFull; items.len()];
        // A full queue holds back that device's later items, not others'.
        let mut full: Vec<&DeviceId> = Vec::new();
        for i in order {
            let f = &items[i];
            if full.contains(&&f.device) {
                continue;
            }
            let outcome = receive_one(&mut tx, origin, f, max_queued_bytes, now).await?;
            if matches!(
                outcome,
                ForwardedOutcome::QueueFull | ForwardedOutcome::MissingBlob
            ) {
                full.push(&f.device);
            }
            outcomes[i] = outcome;
        }
        tx.commit().await.map_err(backend)?;
        Ok(outcomes)
    }
}

async fn receive_one(
    tx: &mut AnyConnection,
    origin: &str,
    f: &Forwarded,
    max_queued_bytes: u64,
    now: UnixTime,
) -> Result<ForwardedOutcome> {
    // Only this server's own active devices (positions are kept for them
    // alone: a peer naming made-up devices adds no rows).
    let device: Option<(Option<i64>, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT approved_at, revoked_at, home_domain FROM devices WHERE device_id = $1",
    )
    .bind(&f.device.0)
    .fetch_optional(&mut *tx)
    .await
    .map_err(backend)?;
    match device {
        Some((Some(_), None, None)) => {}
        Some((_, _, None)) => return Ok(ForwardedOutcome::DeviceGone),
        _ => return Ok(ForwardedOutcome::NotOurDevice),
    }
    // Everything this item changes can be undone alone (a full queue, a
    // missing blob: it waits at the peer, and nothing it counted stays).
    execute(tx, "SAVEPOINT forwarded").await?;
    let outcome = receive_in_savepoint(tx, origin, f, max_queued_bytes, now).await;
    match &outcome {
        Ok(ForwardedOutcome::QueueFull | ForwardedOutcome::MissingBlob) | Err(_) => {
            execute(tx, "ROLLBACK TO SAVEPOINT forwarded").await?;
        }
        Ok(_) => {}
    }
    execute(tx, "RELEASE SAVEPOINT forwarded").await?;
    outcome
}

async fn execute(tx: &mut AnyConnection, sql: &'static str) -> Result<()> {
    sqlx::query(sql).execute(&mut *tx).await.map_err(backend)?;
    Ok(())
}

async fn receive_in_savepoint(
    tx: &mut AnyConnection,
    origin: &str,
    f: &Forwarded,
    max_queued_bytes: u64,
    now: UnixTime,
) -> Result<ForwardedOutcome> {
    // The position first, as a compare-and-set: its row lock orders two
    // deliveries of the same item (several hub nodes, a retry while the
    // first attempt still runs) and the later one finds it received.
    sqlx::query(
        "INSERT INTO federation_received (origin, device_id, up_to) VALUES ($1, $2, -1) \
         ON CONFLICT (origin, device_id) DO NOTHING",
    )
    .bind(origin)
    .bind(&f.device.0)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let moved = sqlx::query(
        "UPDATE federation_received SET up_to = $3 WHERE origin = $1 AND device_id = $2 AND up_to < $3",
    )
    .bind(origin)
    .bind(&f.device.0)
    .bind(f.seq as i64)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    if moved.rows_affected() == 0 {
        return Ok(ForwardedOutcome::Duplicate);
    }
    // Refused items count as received (the peer drops them).
    if let Some(refused) = check_conversation(tx, origin, f, now).await? {
        return Ok(refused);
    }
    if let Some(blob) = &f.item.blob {
        // Here whole, pushed by this peer before the item (or sent from
        // here in the first place); kept while a queue item refers to it.
        // Another peer's blob of that id is not this one's.
        let marked = sqlx::query(
            "UPDATE blobs SET referenced = TRUE WHERE blob_id = $1 AND chunks IS NOT NULL AND (owner = $2 \
             OR EXISTS (SELECT 1 FROM devices d WHERE d.device_id = blobs.owner AND d.home_domain IS NULL))",
        )
        .bind(blob)
        .bind(&peer_stand_in(origin).0)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        if marked.rows_affected() != 1 {
            return Ok(ForwardedOutcome::MissingBlob);
        }
    }
    let item = Enqueue {
        kind: f.item.kind,
        group: &f.item.group_id,
        sender: &f.item.sender_device,
        epoch: f.item.epoch,
        payload: &f.item.payload,
        blob: f.item.blob.as_deref(),
        label: f.item.label.as_deref(),
        now,
    };
    // Every kind within the quota (a commit too: held back, it waits at
    // the hub until the device has fetched its queue; a hub cannot fill a
    // device's queue past it).
    if enqueue_many(
        &mut *tx,
        std::slice::from_ref(&f.device),
        &item,
        max_queued_bytes,
    )
    .await?
    .is_some()
    {
        return Ok(ForwardedOutcome::QueueFull);
    }
    Ok(ForwardedOutcome::Queued)
}

/// Why `origin` may not put `f` into a queue here, if it may not: the
/// conversation must be one that `origin` hosts (a Welcome into a
/// conversation unknown here makes `origin` its hub).
async fn check_conversation(
    tx: &mut AnyConnection,
    origin: &str,
    f: &Forwarded,
    now: UnixTime,
) -> Result<Option<ForwardedOutcome>> {
    if group_epoch(&mut *tx, &f.item.group_id).await?.is_some() {
        return Ok(Some(ForwardedOutcome::NotItsConversation { hub: None }));
    }
    let hub: Option<String> =
        sqlx::query_scalar("SELECT hub FROM federation_groups WHERE group_id = $1")
            .bind(&f.item.group_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
    match hub {
        Some(hub) if hub == origin => Ok(None),
        Some(hub) => Ok(Some(ForwardedOutcome::NotItsConversation {
            hub: Some(hub),
        })),
        // A conversation's id is its hub's (made from the hub's domain and
        // a nonce): another peer cannot make itself its hub here first.
        None if f.item.kind == QueueKind::Welcome
            && f.hub_nonce.as_ref().is_some_and(|nonce| {
                nonce.len() == pouch_proto::HUB_NONCE_LEN
                    && f.item.group_id.to_bytes().as_deref()
                        == Some(pouch_proto::hub_group_id(origin, nonce).as_slice())
            }) =>
        {
            // Two deliveries of its first Welcome at once: one inserts.
            sqlx::query(
                "INSERT INTO federation_groups (group_id, hub, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id) DO NOTHING",
            )
            .bind(&f.item.group_id.0)
            .bind(origin)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            Ok(None)
        }
        None => Ok(Some(ForwardedOutcome::NotItsConversation { hub: None })),
    }
}
