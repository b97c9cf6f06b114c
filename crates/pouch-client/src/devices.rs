//! The account and its devices, as one device sees them: the account key,
//! signed device lists (checked before anything is encrypted to anyone),
//! pinned account keys of contacts, linking with approval, revocation, and
//! the audit that catches a device the server added on its own.

use crate::error::{ClientError, Result};
use crate::local::LocalStore;
use crate::{Device, now};
use ed25519_dalek::{Signer, SigningKey};
use pouch_proto::api;
use pouch_proto::devices::{
    DeviceListBody, ListedDevice, SignedDeviceList, comparison_code, fingerprint,
};
use pouch_proto::{Address, DeviceId};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use zeroize::Zeroizing;

/// The account signing key. Only the account's devices hold it.
pub struct AccountKey(SigningKey);

impl AccountKey {
    pub fn generate() -> Self {
        AccountKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }
    pub fn from_secret(secret: &[u8]) -> Result<Self> {
        let bytes: [u8; 32] = secret
            .try_into()
            .map_err(|_| ClientError::Local("damaged account key".into()))?;
        Ok(AccountKey(SigningKey::from_bytes(&bytes)))
    }
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }
    pub fn public(&self) -> Vec<u8> {
        self.0.verifying_key().to_bytes().to_vec()
    }
    /// Signs `body`, sealing every device's name and link address first (see
    /// [`ListedDevice::sealed`]); devices already sealed are kept as they are.
    pub fn sign(&self, body: &DeviceListBody) -> SignedDeviceList {
        let mut body = body.clone();
        for d in &mut body.devices {
            if !d.name.is_empty() || d.added_from.is_some() {
                d.sealed = Some(self.seal_details(d));
                d.name.clear();
                d.added_from = None;
            }
        }
        let bytes = serde_json::to_vec(&body).expect("a device list serialises");
        let signature = self
            .0
            .sign(&SignedDeviceList::signing_payload(&bytes))
            .to_bytes()
            .to_vec();
        SignedDeviceList {
            body: bytes,
            signature,
        }
    }
}

/// A device's name for notices; its id where the name cannot be opened
/// (sealed under an account key from before a reset).
fn shown_name(d: &ListedDevice) -> String {
    if d.name.is_empty() {
        format!("device {}", d.device_id)
    } else {
        d.name.clone()
    }
}

/// What is sealed for the account's own devices about one listed device.
#[derive(Serialize, serde::Deserialize)]
struct DeviceDetails {
    name: String,
    #[serde(default)]
    added_from: Option<String>,
}

impl AccountKey {
    /// The symmetric key for device details: derived from the account key,
    /// so every device of the account (and nothing else) has it.
    fn details_cipher(&self) -> chacha20poly1305::ChaCha20Poly1305 {
        use chacha20poly1305::KeyInit;
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0.to_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(b"pouch/device-details/v1");
        let key = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
        chacha20poly1305::ChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key[..]))
    }

    /// Nonce, then the ciphertext of the details, bound to the device id.
    fn seal_details(&self, d: &ListedDevice) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, Payload};
        let details = serde_json::to_vec(&DeviceDetails {
            name: d.name.clone(),
            added_from: d.added_from.clone(),
        })
        .expect("details serialise");
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .details_cipher()
            .encrypt(
                chacha20poly1305::Nonce::from_slice(&nonce),
                Payload {
                    msg: &details,
                    aad: d.device_id.0.as_bytes(),
                },
            )
            .expect("encryption of a small buffer succeeds");
        [nonce.as_slice(), &sealed].concat()
    }

    /// Fills in the name and link address of every device of `body` sealed
    /// under this account key (a list of another account stays as it is).
    pub fn open_details(&self, body: &mut DeviceListBody) {
        use chacha20poly1305::aead::{Aead, Payload};
        let cipher = self.details_cipher();
        for d in &mut body.devices {
            let Some(sealed) = d.sealed.as_deref().filter(|s| s.len() > 12) else {
                continue;
            };
            let opened = cipher
                .decrypt(
                    chacha20poly1305::Nonce::from_slice(&sealed[..12]),
                    Payload {
                        msg: &sealed[12..],
                        aad: d.device_id.0.as_bytes(),
                    },
                )
                .ok()
                .and_then(|plain| serde_json::from_slice::<DeviceDetails>(&plain).ok());
            if let Some(details) = opened {
                d.name = details.name;
                d.added_from = details.added_from;
            }
        }
    }
}

/// Checks a whole history: every version signed by the key it names, each
/// naming its predecessor's hash with the next version number, and the key
/// changing only at a reset. Returns the latest body.
pub fn verify_history(address: &Address, lists: &[SignedDeviceList]) -> Result<DeviceListBody> {
    let bad = |why: String| {
        ClientError::Security(format!(
            "the device list of {address} is not trustworthy: {why}"
        ))
    };
    let mut previous: Option<(DeviceListBody, String)> = None;
    for list in lists {
        let body = list.verify().map_err(|e| bad(e.to_string()))?;
        if &body.address != address {
            return Err(bad("a version names another address".into()));
        }
        if let Some((prev, prev_hash)) = &previous {
            if body.version != prev.version + 1
                || body.previous.as_deref() != Some(prev_hash.as_str())
            {
                return Err(bad(format!(
                    "version {} does not continue version {}",
                    body.version, prev.version
                )));
            }
            if body.account_key != prev.account_key && body.reason != "reset" {
                return Err(bad(format!(
                    "version {} changes the account key without a reset",
                    body.version
                )));
            }
        } else if body.version != 1 {
            return Err(bad("the history does not start at version 1".into()));
        }
        previous = Some((body, list.hash()));
    }
    previous.map(|(b, _)| b).ok_or_else(|| ClientError::Invalid(format!("{address} has no enrolled device yet, so nothing can be encrypted to them; ask them to enroll")))
}

/// What `pouch verify` shows.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub address: Address,
    pub account_key_fingerprint: String,
    pub pinned_fingerprint: Option<String>,
    pub key_changed: bool,
    pub version: u64,
    pub devices: Vec<ListedDevice>,
    pub history: Vec<HistoryEntry>,
    /// Read this aloud to the other person; they see the same digits.
    pub comparison_code: String,
}

#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub reason: String,
    pub issued_at: i64,
    pub devices: usize,
    pub account_key_fingerprint: String,
}

/// A device of the account as `pouch device list` shows it.
#[derive(Debug, Serialize)]
pub struct DeviceEntry {
    pub device_id: DeviceId,
    pub name: String,
    pub fingerprint: String,
    pub on_signed_list: bool,
    pub state: String,
    pub this_device: bool,
}

impl LocalStore {
    pub(crate) fn account_key(&self) -> Result<Option<AccountKey>> {
        match self.meta("account_key")? {
            Some(hex_secret) => {
                let secret = Zeroizing::new(
                    hex::decode(hex_secret)
                        .map_err(|_| ClientError::Local("damaged account key".into()))?,
                );
                Ok(Some(AccountKey::from_secret(&secret)?))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn set_account_key(&self, key: &AccountKey) -> Result<()> {
        self.set_meta("account_key", &hex::encode(key.secret().as_slice()))
    }

    /// Adds a system entry to the inbox (link, revocation, reset, alerts),
    /// with a Date and a Message-ID of its own so that mail clients show
    /// when it happened and thread nothing onto it.
    pub(crate) fn notice(&self, subject: &str, text: &str) -> Result<i64> {
        let at = now();
        let message_id = format!(
            "notice-{}@pouch.invalid",
            hex::encode(rand::random::<[u8; 16]>())
        );
        let raw = format!(
            "From: Pouch <system@pouch.invalid>\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{message_id}>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n",
            crate::mail::encode_header_text(subject),
            crate::mail::rfc5322_date(at),
        );
        self.conn.execute(
            "INSERT INTO messages (group_id, outgoing, sender, recipients, cc, subject, message_id, date, stored_at, size, attachments, raw, system) \
             VALUES ('', 0, 'pouch-system', '[]', '[]', ?1, ?5, ?2, ?2, ?3, '[]', ?4, 1)",
            params![subject, at, raw.len() as i64, raw.as_bytes(), message_id],
        )?;
        Ok(self.conn.last_insert_rowid())
    }
}

/// Devices of every version signed by `key`: what a receiver may believe a
/// member to be (a device removed since was a member then; the commit that
/// removes it comes from its account's own devices).
fn under_key(lists: &[SignedDeviceList], key: &[u8]) -> Vec<Vec<u8>> {
    lists
        .iter()
        .filter_map(|l| l.body_unverified().ok())
        .filter(|b| b.account_key == key)
        .flat_map(|b| b.devices.into_iter().map(|d| d.signature_key))
        .collect()
}

impl Device {
    /// The verified, current device list of `address`: from the directory
    /// cache while the log shows no newer entry for the account, else
    /// fetched and verified ([`Device::fresh_trusted_list`]).
    pub(crate) fn trusted_list(&mut self, address: &Address) -> Result<DeviceListBody> {
        if let Some(body) = self.cached_list(address)? {
            return Ok(body);
        }
        self.fresh_trusted_list(address)
    }

    /// The verified, current device list of `address`, fetched from the
    /// server, with the account key checked against the one pinned for that
    /// contact (or this account's own). Kept in the directory cache when a
    /// witnessed checkpoint covers it.
    pub(crate) fn fresh_trusted_list(&mut self, address: &Address) -> Result<DeviceListBody> {
        if self.is_remote(address) {
            return self.trusted_remote_list(address);
        }
        let watermark = self.directory_watermark()?;
        let history: api::DeviceListHistory =
            self.api.get(&format!("/v1/device-lists/{address}"))?;
        self.verify_served_list(address, &history, None, &watermark)
    }

    /// The verified device lists of `addresses`: cached ones as they are,
    /// the others fetched and verified together ([`Device::fresh_trusted_lists`]).
    /// Fails with the first address (in order) that cannot be trusted.
    pub(crate) fn trusted_lists(
        &mut self,
        addresses: &[Address],
    ) -> Result<std::collections::BTreeMap<Address, DeviceListBody>> {
        let mut lists = std::collections::BTreeMap::new();
        let mut missing = Vec::new();
        for a in addresses {
            match self.cached_list(a)? {
                Some(body) => {
                    lists.insert(a.clone(), body);
                }
                None => missing.push(a.clone()),
            }
        }
        for (a, found) in self.fresh_trusted_lists(&missing)? {
            lists.insert(a, found?);
        }
        Ok(lists)
    }

    /// Like [`Device::fresh_trusted_list`] for many addresses, in one request
    /// per 1,001 (`POST /v1/directory/lists`: every list with the inclusion
    /// proof of its newest version, against one checkpoint), each checked
    /// exactly as one fetched alone (a newest version served without its
    /// proof is asked for one by one, and refused if the log lacks it; an
    /// address the answer leaves out is fetched alone). Results in the order
    /// asked.
    pub(crate) fn fresh_trusted_lists(
        &mut self,
        addresses: &[Address],
    ) -> Result<Vec<(Address, Result<DeviceListBody>)>> {
        let mut unique = addresses.to_vec();
        unique.sort();
        unique.dedup();
        let mut found: std::collections::BTreeMap<Address, Result<DeviceListBody>> =
            Default::default();
        // Other domains' accounts: each through this server to its own.
        let (remote, unique): (Vec<Address>, Vec<Address>) =
            unique.into_iter().partition(|a| self.is_remote(a));
        for a in remote {
            let r = self.trusted_remote_list(&a);
            found.insert(a, r);
        }
        for chunk in unique.chunks(pouch_proto::MAX_RECIPIENTS + 1) {
            self.fetch_list_batch(chunk, &mut found)?;
        }
        // In the order asked; an address asked twice gets the same answer.
        let mut given: std::collections::BTreeMap<
            Address,
            std::result::Result<DeviceListBody, String>,
        > = Default::default();
        let mut results = Vec::with_capacity(addresses.len());
        for a in addresses {
            let r = match found.remove(a) {
                Some(r) => {
                    given.insert(
                        a.clone(),
                        r.as_ref().map(|b| b.clone()).map_err(|e| e.to_string()),
                    );
                    r
                }
                None => match given.get(a) {
                    Some(Ok(body)) => Ok(body.clone()),
                    Some(Err(e)) => Err(ClientError::Invalid(e.clone())),
                    None => Err(ClientError::Protocol(format!(
                        "no directory answer for {a}"
                    ))),
                },
            };
            results.push((a.clone(), r));
        }
        Ok(results)
    }

    /// One `POST /v1/directory/lists` for `chunk` (sorted, no repeats), its
    /// answers checked into `found`.
    fn fetch_list_batch(
        &mut self,
        chunk: &[Address],
        found: &mut std::collections::BTreeMap<Address, Result<DeviceListBody>>,
    ) -> Result<()> {
        let watermark = self.directory_watermark()?;
        let resp: api::DirectoryResponse = match self.api.post(
            "/v1/directory/lists",
            &api::DirectoryRequest {
                addresses: chunk.to_vec(),
            },
        ) {
            Ok(r) => r,
            // A server without the batch (an older one, or a proxy that
            // does not pass it): one by one, as before.
            Err(ClientError::Server {
                status: 404 | 405,
                code,
                ..
            }) if code != api::ErrorCode::UnknownRecipient => {
                for a in chunk {
                    let r = self.fresh_trusted_list(a);
                    found.insert(a.clone(), r);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let unknown: std::collections::BTreeSet<Address> = resp.unknown.into_iter().collect();
        // Only answers to what was asked, one per address.
        let mut served: std::collections::BTreeMap<Address, api::DirectoryEntry> =
            Default::default();
        for entry in resp.entries {
            if chunk.binary_search(&entry.address).is_ok() {
                served.entry(entry.address.clone()).or_insert(entry);
            }
        }
        // Everything that could need a request is done before the local
        // transaction below, which must not wait on the network: the
        // checkpoint (a consistency proof when it is newer than the pinned
        // one) and the commitment key (fetched once).
        let checkpoint = resp.checkpoint;
        match self.accept_checkpoint(checkpoint.as_bytes()) {
            Ok(_) => {}
            // A rolled-back or split log: every list of this answer is
            // refused, as each would be alone.
            Err(ClientError::Security(why)) => {
                for a in chunk {
                    found.insert(a.clone(), Err(ClientError::Security(why.clone())));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.commitments()?;
        let witnessed = self.witnessed_size()?;
        // Lists with a proof the witnesses cover are checked in one local
        // transaction (a thousand members' keys and pins are thousands of
        // small writes: one fsync, not one each). The others may need more
        // requests (older versions' proofs, or the list alone): after it.
        let mut later: Vec<(Address, Option<api::DirectoryEntry>)> = Vec::new();
        let outer = self.local.conn.is_autocommit();
        if outer {
            self.local.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        for address in chunk {
            match served.remove(address) {
                Some(entry)
                    if entry
                        .newest
                        .as_ref()
                        .is_some_and(|p| p.index < witnessed || address == &self.address) =>
                {
                    let history = api::DeviceListHistory {
                        address: entry.address,
                        lists: entry.lists,
                    };
                    let newest = entry.newest.map(|p| p.with_checkpoint(&checkpoint));
                    let r = self.verify_served_list(address, &history, newest, &watermark);
                    found.insert(address.clone(), r);
                }
                other => later.push((address.clone(), other)),
            }
        }
        if outer && let Err(e) = self.local.conn.execute_batch("COMMIT") {
            let _ = self.local.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        for (address, entry) in later {
            let r = match entry {
                Some(entry) => {
                    let history = api::DeviceListHistory {
                        address: entry.address,
                        lists: entry.lists,
                    };
                    let newest = entry.newest.map(|p| p.with_checkpoint(&checkpoint));
                    self.verify_served_list(&address, &history, newest, &watermark)
                }
                None if unknown.contains(&address) => Err(ClientError::Server {
                    status: 404,
                    code: api::ErrorCode::UnknownRecipient,
                    message: format!(
                        "{address} is not a Pouch user on this server; check the address"
                    ),
                }),
                None => self.fresh_trusted_list(&address),
            };
            found.insert(address, r);
        }
        Ok(())
    }

    /// Checks a device-list history the server served for `address` (and,
    /// when it came with it, the inclusion proof of its newest version),
    /// pins or checks the account key, records the devices it names, and
    /// caches the list if the scan has not moved since `watermark`.
    fn verify_served_list(
        &mut self,
        address: &Address,
        history: &api::DeviceListHistory,
        mut newest_inclusion: Option<api::LogInclusion>,
        watermark: &Option<String>,
    ) -> Result<DeviceListBody> {
        if &history.address != address {
            return Err(ClientError::Security(format!(
                "the server answered a question about {address} with the device list of {}",
                history.address
            )));
        }
        let mut body = verify_history(address, &history.lists)?;
        // The newest signed version as it is: what a receiver checks a
        // speaker against (the witness rule below narrows only whom this
        // device encrypts to; a device the account signed for may speak
        // before the witnesses have cosigned its addition).
        let newest: Vec<Vec<u8>> = body
            .devices
            .iter()
            .map(|d| d.signature_key.clone())
            .collect();
        let mut cacheable = None;
        if let Some(latest) = history.lists.last() {
            let included =
                self.check_included_with(address, body.version, latest, newest_inclusion.take())?;
            let witnessed = included.witnessed;
            if witnessed || address == &self.address {
                cacheable = Some(included.index);
            }
            // One's own lists are signed by one's own account key, which the
            // server cannot forge; the witness rule guards lists of others.
            if !witnessed && address != &self.address {
                // Not yet cosigned by the witnesses (they may be down, or this
                // may be a view shown to us alone): rely only on devices that a
                // witnessed version also lists, so neither an added device nor
                // one revoked since is trusted until the change is witnessed.
                let mut witnessed = None;
                for older in history.lists.iter().rev().skip(1) {
                    let b = older
                        .body_unverified()
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    if self.check_included(address, b.version, older)?.witnessed {
                        witnessed = Some(b);
                        break;
                    }
                }
                let kept: Vec<ListedDevice> = body
                    .devices
                    .iter()
                    .filter(|d| {
                        witnessed
                            .as_ref()
                            .is_some_and(|w| w.lists(&d.device_id, &d.signature_key))
                    })
                    .cloned()
                    .collect();
                self.warnings.push(format!(
                    "version {} of {address}'s device list is not yet cosigned by the log's witnesses; using only the {} device(s) a witnessed version also lists",
                    body.version,
                    kept.len()
                ));
                body.devices = kept;
            }
        }
        self.record_device_keys(address, &history.lists)?;
        if address == &self.address {
            let mine = match self.local.account_key()? {
                Some(k) => k.public(),
                // A newly linked device: its account key is on the way over
                // MLS. Until then it trusts the list that names this very
                // device (the approving device signed it), and the key it
                // receives must be the key that signed it.
                None if body.lists(&self.device_id, self.signer.public()) => {
                    // Pinned once: a later list cannot swap in another key.
                    match self.local.meta("expected_account_key")? {
                        Some(pinned) => hex::decode(pinned)
                            .map_err(|_| ClientError::Local("damaged account key pin".into()))?,
                        None => {
                            self.local.set_meta(
                                "expected_account_key",
                                &hex::encode(&body.account_key),
                            )?;
                            body.account_key.clone()
                        }
                    }
                }
                None => {
                    return Err(ClientError::Security(format!(
                        "the server shows a device list for {address} that does not name this device"
                    )));
                }
            };
            if body.account_key != mine {
                return Err(ClientError::Security(format!(
                    "the server shows a device list for {address} that this account did not sign"
                )));
            }
            crate::receipt::remember_verified(
                &self.local,
                address,
                &mine,
                &under_key(&history.lists, &mine),
                &newest,
            )?;
            // Cached only once this device holds the account key (a newly
            // linked device keeps asking until then).
            if let (Some(index), true) = (cacheable, self.local.account_key()?.is_some()) {
                self.cache_list(address, index, &body, watermark)?;
            }
            return Ok(body);
        }
        self.trust_contact(address, &body, &history.lists, &newest)?;
        if let Some(index) = cacheable {
            self.cache_list(address, index, &body, watermark)?;
        }
        Ok(body)
    }

    /// Every device a verified history of `address` names, by key: whom a
    /// receiver can tell a member to be.
    fn record_device_keys(&self, address: &Address, lists: &[SignedDeviceList]) -> Result<()> {
        for version in lists.iter().filter_map(|l| l.body_unverified().ok()) {
            for d in &version.devices {
                self.local.conn.execute(
                    "INSERT OR IGNORE INTO device_keys (signature_key, device_id, address) VALUES (?1, ?2, ?3)",
                    params![d.signature_key, d.device_id.0, address.as_str()],
                )?;
            }
        }
        Ok(())
    }

    /// Pins a contact's account key on first use (a different key later is
    /// [`ClientError::AccountKeyChanged`], an older version a rollback) and
    /// remembers which keys speak for it. `newest`: the signature keys of
    /// the newest version as signed.
    fn trust_contact(
        &mut self,
        address: &Address,
        body: &DeviceListBody,
        lists: &[SignedDeviceList],
        newest: &[Vec<u8>],
    ) -> Result<()> {
        let latest_hash = lists.last().map(|l| l.hash()).unwrap_or_default();
        let pinned: Option<(Vec<u8>, i64)> = self
            .local
            .conn
            .query_row(
                "SELECT account_key, version FROM contacts WHERE address = ?1",
                [address.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match pinned {
            None => {
                self.local.conn.execute(
                    "INSERT INTO contacts (address, account_key, version, list_hash, first_seen) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![address.as_str(), body.account_key, body.version as i64, latest_hash, now()],
                )?;
            }
            Some((key, _)) if key != body.account_key => {
                return Err(ClientError::AccountKeyChanged(address.to_string()));
            }
            Some((_, version)) if (body.version as i64) < version => {
                return Err(ClientError::Security(format!(
                    "the server shows an older device list for {address} (version {} after {version}): refusing",
                    body.version
                )));
            }
            Some(_) => {
                self.local.conn.execute(
                    "UPDATE contacts SET version = ?2, list_hash = ?3 WHERE address = ?1",
                    params![address.as_str(), body.version as i64, latest_hash],
                )?;
            }
        }
        crate::receipt::remember_verified(
            &self.local,
            address,
            &body.account_key,
            &under_key(lists, &body.account_key),
            newest,
        )
    }

    /// The verified, current device list of `address`, an account of
    /// another domain: checked against that domain's log as its server
    /// answered through this one ([`Device::remote_lists`]), its account key
    /// pinned as any contact's.
    ///
    /// An answer byte for byte the same as one this process checked and
    /// trusted before gives the same list without checking it again (its
    /// partner's log has not grown since: the server gives its kept answer).
    pub(crate) fn trusted_remote_list(&mut self, address: &Address) -> Result<DeviceListBody> {
        if let Some(seen) = self.remote_verified.get(address)
            && seen.at.elapsed() < crate::remote::REMOTE_FRESH
        {
            return Ok(seen.body.clone());
        }
        let remote = self.remote_answer(address)?;
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            let bytes =
                serde_json::to_vec(&remote).map_err(|e| ClientError::Protocol(e.to_string()))?;
            sha2::Sha256::digest(bytes).into()
        };
        if let Some(seen) = self.remote_verified.get_mut(address)
            && seen.digest == digest
        {
            seen.at = std::time::Instant::now();
            // Still never below what another process of this device saw since.
            let (body, lists) = (seen.body.clone(), seen.lists.clone());
            self.no_rollback(address, &body, &lists)?;
            return Ok(body);
        }
        let (body, lists) = self.check_remote_answer(address, remote)?;
        self.record_device_keys(address, &lists)?;
        let newest: Vec<Vec<u8>> = body
            .devices
            .iter()
            .map(|d| d.signature_key.clone())
            .collect();
        self.trust_contact(address, &body, &lists, &newest)?;
        self.remote_verified.insert(
            address.clone(),
            crate::remote::Verified {
                digest,
                body: body.clone(),
                lists,
                at: std::time::Instant::now(),
            },
        );
        Ok(body)
    }

    /// `pouch verify ADDRESS`: the account key, device list and its history.
    pub fn verify(&mut self, address: &Address) -> Result<VerifyReport> {
        if self.is_remote(address) {
            return self.verify_remote(address);
        }
        self.sign_in()?;
        let history: api::DeviceListHistory =
            self.api.get(&format!("/v1/device-lists/{address}"))?;
        let mut body = verify_history(address, &history.lists)?;
        if address == &self.address
            && let Some(key) = self.local.account_key()?
        {
            key.open_details(&mut body); // one's own devices, by name
        }
        // The history as the transparency log records it (what everyone sees).
        let logged: api::LogEntries = self.api.get(&format!("/v1/log/entries/{address}"))?;
        let commitments = self.commitments()?;
        let entries = logged
            .entries
            .iter()
            .filter_map(|e| commitments.open(e.index, &e.entry, &e.full, address).ok())
            .map(|e| match e {
                pouch_log::AnyEntry::List(l) => {
                    let b = l.list.body_unverified().ok();
                    HistoryEntry {
                        version: l.version,
                        reason: b.as_ref().map(|b| b.reason.clone()).unwrap_or_default(),
                        issued_at: b.as_ref().map(|b| b.issued_at).unwrap_or_default(),
                        devices: b.as_ref().map(|b| b.devices.len()).unwrap_or_default(),
                        account_key_fingerprint: b
                            .map(|b| fingerprint(&b.account_key))
                            .unwrap_or_default(),
                    }
                }
                pouch_log::AnyEntry::AdminRevocation(r) => HistoryEntry {
                    version: 0,
                    reason: format!("administrator revoked {}", r.device_id),
                    issued_at: r.at,
                    devices: 0,
                    account_key_fingerprint: String::new(),
                },
            })
            .collect();
        self.report(address, &body, entries)
    }

    /// What `pouch verify` shows of `address`'s list `body`, beside the key
    /// this device pinned for it (its own account's, for itself).
    fn report(
        &mut self,
        address: &Address,
        body: &DeviceListBody,
        history: Vec<HistoryEntry>,
    ) -> Result<VerifyReport> {
        let pinned: Option<Vec<u8>> = if address == &self.address {
            self.local.account_key()?.map(|k| k.public())
        } else {
            self.local
                .conn
                .query_row(
                    "SELECT account_key FROM contacts WHERE address = ?1",
                    [address.as_str()],
                    |r| r.get(0),
                )
                .optional()?
        };
        let mine = self
            .local
            .account_key()?
            .map(|k| k.public())
            .unwrap_or_default();
        Ok(VerifyReport {
            address: address.clone(),
            account_key_fingerprint: fingerprint(&body.account_key),
            pinned_fingerprint: pinned.as_ref().map(|k| fingerprint(k)),
            key_changed: pinned.as_ref().is_some_and(|k| k != &body.account_key),
            version: body.version,
            devices: body.devices.clone(),
            history,
            comparison_code: comparison_code(&mine, &body.account_key),
        })
    }

    /// [`Device::verify`] for an account of another domain: its lists as
    /// its domain's log records them ([`Device::remote_lists`]), the history
    /// being the versions themselves.
    fn verify_remote(&mut self, address: &Address) -> Result<VerifyReport> {
        let (body, lists) = self.remote_lists(address)?;
        self.remote_report(address, &body, &lists)
    }

    fn remote_report(
        &mut self,
        address: &Address,
        body: &DeviceListBody,
        lists: &[SignedDeviceList],
    ) -> Result<VerifyReport> {
        let history = lists
            .iter()
            .filter_map(|l| l.body_unverified().ok())
            .map(|b| HistoryEntry {
                version: b.version,
                reason: b.reason.clone(),
                issued_at: b.issued_at,
                devices: b.devices.len(),
                account_key_fingerprint: fingerprint(&b.account_key),
            })
            .collect();
        self.report(address, body, history)
    }

    /// `pouch verify ADDRESS --accept`: trust the account key the server now shows.
    pub fn accept_account_key(&mut self, address: &Address) -> Result<VerifyReport> {
        // What is pinned is what is shown: one answer for both.
        let (report, lists) = if self.is_remote(address) {
            let (body, lists) = self.remote_lists(address)?;
            (self.remote_report(address, &body, &lists)?, lists)
        } else {
            let report = self.verify(address)?;
            let history: api::DeviceListHistory =
                self.api.get(&format!("/v1/device-lists/{address}"))?;
            (report, history.lists)
        };
        let body = verify_history(address, &lists)?;
        let hash = lists.last().map(|l| l.hash()).unwrap_or_default();
        self.local.conn.execute(
            "INSERT INTO contacts (address, account_key, version, list_hash, first_seen) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (address) DO UPDATE SET account_key = excluded.account_key, version = excluded.version, list_hash = excluded.list_hash",
            params![address.as_str(), body.account_key, body.version as i64, hash, now()],
        )?;
        self.uncache_list(address)?;
        Ok(report)
    }

    fn publish_list(&mut self, devices: Vec<ListedDevice>, reason: &str) -> Result<DeviceListBody> {
        let key = self
            .local
            .account_key()?
            .ok_or_else(|| ClientError::Local("this device has no account key".into()))?;
        let history: api::DeviceListHistory = self
            .api
            .get(&format!("/v1/device-lists/{}", self.address))?;
        let current = self.fresh_trusted_list(&self.address.clone())?;
        let body = DeviceListBody {
            address: self.address.clone(),
            version: current.version + 1,
            previous: history.lists.last().map(|l| l.hash()),
            account_key: key.public(),
            devices,
            issued_at: now(),
            reason: reason.to_string(),
        };
        let signed = key.sign(&body);
        // Forgotten before the request: whatever its outcome, the next send
        // asks the server.
        self.uncache_list(&self.address.clone())?;
        self.api
            .post_empty("/v1/device-lists", &api::PublishDeviceList { list: signed })?;
        self.local
            .set_meta("own_list_version", &body.version.to_string())?;
        Ok(body)
    }

    /// `pouch device list`: the signed list beside what the server has registered.
    pub fn device_list(&mut self) -> Result<Vec<DeviceEntry>> {
        self.sign_in()?;
        let me = self.address.clone();
        let list = self.fresh_trusted_list(&me)?;
        let registered: Vec<api::RegisteredDevice> = self.api.get("/v1/devices")?;
        Ok(registered
            .into_iter()
            .map(|r| {
                let on_list = list.lists(&r.device_id, &r.signature_key);
                let state = match (&r.revoked_by, r.approved_at) {
                    (Some(by), _) => format!("revoked ({by})"),
                    (None, None) => "waiting for approval".into(),
                    (None, Some(_)) if on_list => "active".into(),
                    (None, Some(_)) => "NOT ON THE SIGNED LIST".into(),
                };
                DeviceEntry {
                    this_device: r.device_id == self.device_id,
                    fingerprint: fingerprint(&r.signature_key),
                    device_id: r.device_id,
                    name: r.name,
                    on_signed_list: on_list,
                    state,
                }
            })
            .collect())
    }

    /// Looks up a link request by the code the new device shows, and checks
    /// that the code really belongs to the key the server presents.
    pub fn link_request(&mut self, code: &str) -> Result<api::LinkInfo> {
        self.sign_in()?;
        let code = api::normalise_link_code(code).ok_or_else(|| {
            ClientError::Invalid(
                "a link code has 12 letters and digits, like K7QM-3XPA-9D2F".into(),
            )
        })?;
        let info: api::LinkInfo = self.api.get(&format!("/v1/link/{code}"))?;
        if api::link_code(&info.signature_key, &info.nonce) != code {
            return Err(ClientError::Security(
                "the server presented a device whose key does not match the code: refusing (report this to your security team)".into(),
            ));
        }
        if info.status != "pending" {
            return Err(ClientError::Invalid(format!(
                "this link request is {}; start again on the new device",
                info.status
            )));
        }
        Ok(info)
    }

    /// Approves a link: signs the new device list, hands the account key to
    /// the new device over MLS (and, `with_history`, this device's mail
    /// store), and adds it to every conversation.
    pub fn approve(&mut self, info: &api::LinkInfo, with_history: bool) -> Result<u32> {
        let me = self.address.clone();
        let mut devices = self.fresh_trusted_list(&me)?.devices;
        devices.push(ListedDevice {
            device_id: info.device_id.clone(),
            signature_key: info.signature_key.clone(),
            name: info.device_name.clone(),
            added_at: now(),
            added_from: Some(info.source.clone()),
            sealed: None,
        });
        self.publish_list(devices, "linked")?;
        // The account key travels inside a conversation of our own with the new device.
        let key = self
            .local
            .account_key()?
            .ok_or_else(|| ClientError::Local("this device has no account key".into()))?;
        let mut envelopes = vec![pouch_proto::envelope::Envelope::new(
            pouch_proto::envelope::Content::AccountKey {
                secret: key.secret().to_vec(),
            },
        )];
        if with_history {
            let history = self.export_history()?;
            envelopes.push(pouch_proto::envelope::Envelope::new(
                pouch_proto::envelope::Content::History(history),
            ));
        }
        self.send_system(
            std::slice::from_ref(&me),
            std::slice::from_ref(&info.device_id),
            envelopes,
        )?;
        self.local.notice(
            &format!("New device '{}' was added", info.device_name),
            &format!(
                "You approved the device '{}' ({}) from {} at {}.",
                info.device_name,
                info.device_id,
                info.source,
                crate::format_time(now())
            ),
        )?;
        self.reconcile_all()
    }

    pub fn deny(&mut self, code: &str) -> Result<api::LinkInfo> {
        let info = self.link_request(code)?;
        let denied: api::LinkInfo = self.api.post(
            &format!("/v1/link/{}/deny", info.code),
            &serde_json::json!({}),
        )?;
        Ok(denied)
    }

    /// Revokes a device of this account: a new signed list without it, and
    /// MLS commits removing it from every conversation.
    pub fn revoke(&mut self, device_id: &DeviceId) -> Result<u32> {
        self.sign_in()?;
        if device_id == &self.device_id {
            return Err(ClientError::Invalid(
                "a device cannot revoke itself; revoke it from another device of the account"
                    .into(),
            ));
        }
        let me = self.address.clone();
        let current = self.fresh_trusted_list(&me)?;
        if !current.devices.iter().any(|d| &d.device_id == device_id) {
            return Err(ClientError::Invalid(format!(
                "{device_id} is not on this account's device list; see 'pouch device list'"
            )));
        }
        let remaining = current
            .devices
            .into_iter()
            .filter(|d| &d.device_id != device_id)
            .collect();
        self.publish_list(remaining, "revoked")?;
        self.reconcile_all()
    }

    /// Compares what the server has registered for this account with the
    /// signed list, and what the list says with what this device last saw.
    /// Returns alerts; also writes inbox notices for every change.
    pub(crate) fn audit_own_account(&mut self) -> Result<Vec<String>> {
        let me = self.address.clone();
        if self.local.account_key()?.is_none() {
            return Ok(Vec::new());
        }
        let list = self.fresh_trusted_list(&me)?;
        let mut alerts = self.scan_own_entries(list.version, &list.account_key)?;
        for a in &alerts {
            if self.first_time(&format!("log:{a}"))? {
                self.local
                    .notice("ALERT: your device list in the transparency log", a)?;
            }
        }
        let registered: Vec<api::RegisteredDevice> = self.api.get("/v1/devices")?;
        for r in &registered {
            let active = r.approved_at.is_some() && r.revoked_at.is_none();
            if active && !list.lists(&r.device_id, &r.signature_key) {
                let text = format!(
                    "The server has an active device '{}' ({}) for your account that your devices never signed for. \
                     Nothing is encrypted to it. Report this to your security team.",
                    r.name, r.device_id
                );
                if self.first_time(&format!("rogue:{}", r.device_id))? {
                    self.local
                        .notice("ALERT: unknown device on your account", &text)?;
                    // The security team hears it too. (A server that hides the
                    // report still cannot hide the notice above.)
                    let _ = self.api.post_empty(
                        "/v1/reports",
                        &api::ClientReport {
                            kind: pouch_proto::security::ReportKind::UnlistedDevice,
                            detail: format!(
                                "an active device '{}' ({}) is on the server for this account but on no list the account signed",
                                r.name, r.device_id
                            ),
                        },
                    );
                }
                alerts.push(text);
            }
            if r.revoked_by.as_deref() == Some("denied")
                && self.first_time(&format!("denied:{}", r.device_id))?
            {
                self.local.notice(
                    &format!("A request to add device '{}' was denied", r.name),
                    &format!(
                        "A link request for a device named '{}' ({}) was denied at {}.",
                        r.name,
                        r.device_id,
                        crate::format_time(r.revoked_at.unwrap_or_default())
                    ),
                )?;
            }
        }
        // Changes to the signed list since this device last looked.
        let seen: u64 = self
            .local
            .meta("own_list_version")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if list.version > seen {
            let history: api::DeviceListHistory =
                self.api.get(&format!("/v1/device-lists/{me}"))?;
            let mut previous: Option<DeviceListBody> = None;
            let key = self.local.account_key()?;
            for mut body in history
                .lists
                .iter()
                .filter_map(|l| l.body_unverified().ok())
            {
                if let Some(key) = &key {
                    key.open_details(&mut body);
                }
                if body.version > seen
                    && seen > 0
                    && let Some(prev) = &previous
                {
                    for added in body
                        .devices
                        .iter()
                        .filter(|d| !prev.devices.iter().any(|p| p.device_id == d.device_id))
                    {
                        if added.device_id != self.device_id {
                            self.local.notice(
                                    &format!("New device '{}' was added", shown_name(added)),
                                    &format!(
                                        "New device '{}' was added from {} at {}. If this wasn't you: pouch device revoke {}",
                                        shown_name(added),
                                        added.added_from.as_deref().unwrap_or("an unknown address"),
                                        crate::format_time(added.added_at),
                                        added.device_id
                                    ),
                                )?;
                        }
                    }
                    for gone in prev
                        .devices
                        .iter()
                        .filter(|p| !body.devices.iter().any(|d| d.device_id == p.device_id))
                    {
                        self.local.notice(
                            &format!("Device '{}' was revoked", shown_name(gone)),
                            &format!(
                                "The device '{}' ({}) was removed from your account at {}.",
                                shown_name(gone),
                                gone.device_id,
                                crate::format_time(body.issued_at)
                            ),
                        )?;
                    }
                }
                previous = Some(body);
            }
            self.local
                .set_meta("own_list_version", &list.version.to_string())?;
        }
        // A device the administrator revoked is still on the signed list: take it off.
        let admin_revoked: Vec<DeviceId> = registered
            .iter()
            .filter(|r| {
                r.revoked_by.as_deref() == Some("admin")
                    && list.devices.iter().any(|d| d.device_id == r.device_id)
            })
            .map(|r| r.device_id.clone())
            .collect();
        if !admin_revoked.is_empty() {
            for id in &admin_revoked {
                self.local.notice(
                    "Your administrator revoked a device",
                    &format!("The administrator revoked device {id}. It is being removed from your conversations."),
                )?;
            }
            let remaining = list
                .devices
                .into_iter()
                .filter(|d| !admin_revoked.contains(&d.device_id))
                .collect();
            self.publish_list(remaining, "revoked")?;
            self.reconcile_all()?;
        }
        Ok(alerts)
    }

    pub(crate) fn first_time(&self, key: &str) -> Result<bool> {
        let k = format!("seen:{key}");
        if self.local.meta(&k)?.is_some() {
            return Ok(false);
        }
        self.local.set_meta(&k, "1")?;
        Ok(true)
    }
}

impl Device {
    /// New security alerts about this account become inbox entries; returns the high-severity ones.
    pub(crate) fn fetch_alerts(&mut self) -> Result<Vec<String>> {
        let after: u64 = self
            .local
            .meta("alerts_cursor")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let alerts: Vec<pouch_proto::api::Alert> =
            self.api.get(&format!("/v1/alerts?after={after}"))?;
        let mut out = Vec::new();
        for a in &alerts {
            // Device additions and refusals already reach the inbox from the
            // signed device list; the alert stream adds what only the server
            // sees (copied devices, administrator actions, guessing), which is
            // also what fails the sync.
            use pouch_proto::security::{Rule, Severity};
            let already_told = matches!(a.rule, Rule::NewDevice | Rule::LinkRefused)
                && a.severity != Severity::High;
            if a.severity == Severity::Medium && !already_told {
                self.local.notice(
                    &format!("Security notice: {}", a.rule.title()),
                    &format!(
                        "{} at {}. If this wasn't you, tell your security team.",
                        a.summary,
                        crate::format_time(a.at)
                    ),
                )?;
            }
            if a.severity >= Severity::High {
                self.local.notice(
                    &format!("Security alert ({}): {}", a.severity, a.rule.title()),
                    &format!(
                        "{} at {}. If this wasn't you, tell your security team and check your devices: pouch device list",
                        a.summary,
                        crate::format_time(a.at)
                    ),
                )?;
                out.push(format!("{} ({}): {}", a.rule, a.severity, a.summary));
            }
            self.local.set_meta("alerts_cursor", &a.id.to_string())?;
        }
        Ok(out)
    }

    /// `pouch activity`: this account's access events, oldest first.
    pub fn activity(&mut self) -> Result<Vec<pouch_proto::api::Event>> {
        self.sign_in()?;
        self.api.get("/v1/activity")
    }
}
