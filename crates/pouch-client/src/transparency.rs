//! The client's side of key transparency: it keeps the newest log
//! checkpoint it verified, accepts a new one only with a valid signature and
//! a consistency proof from the old (so the log can only grow), requires an
//! inclusion proof for every device list it relies on, and scans its own
//! account's entries for versions it did not sign.

use crate::Device;
use crate::error::{ClientError, Result};
use pouch_log::{AnyEntry, Checkpoint, Commitments, Hash, Leaf};
use pouch_proto::Address;
use pouch_proto::api;
use pouch_proto::devices::{DeviceListBody, SignedDeviceList};

/// How long one look at the log keeps the directory cache fresh: within
/// one SMTP transaction or one send, every recipient shares a single look.
pub(crate) const DIRECTORY_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(2);

/// A cached list is fetched and verified again after this long even if the
/// log shows no change: a server that once answered with an older version
/// (with a valid proof) cannot make that answer stick for longer.
const DIRECTORY_LIFETIME_SECS: i64 = 600;

/// Past this many new leaves (a device long offline) the directory cache is
/// dropped rather than scanned: fetching lists again costs less than the tiles.
const DIRECTORY_SCAN_MAX: u64 = 4096;

/// Where a device list sits in the log, as proven.
pub(crate) struct Included {
    pub index: u64,
    /// Covered by a checkpoint every required witness cosigned.
    pub witnessed: bool,
}

fn security(msg: String) -> ClientError {
    ClientError::Security(msg)
}

pub(crate) fn hashes(list: &[String]) -> Result<Vec<Hash>> {
    list.iter()
        .map(|h| pouch_log::hash_from_b64(h).map_err(|e| ClientError::Protocol(e.to_string())))
        .collect()
}

impl Device {
    fn log_trust(&self) -> Result<(String, String)> {
        Ok((
            self.local.require_meta("log_key")?,
            self.local.require_meta("log_origin")?,
        ))
    }

    fn pinned_checkpoint(&self) -> Result<Option<(u64, Hash)>> {
        let size: u64 = self
            .local
            .meta("log_size")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if size == 0 {
            return Ok(None);
        }
        let root = pouch_log::hash_from_b64(&self.local.require_meta("log_root")?)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(Some((size, root)))
    }

    /// The witnesses whose cosignatures this device requires (all the server announced at enrollment).
    fn witnesses(&self) -> Result<Vec<String>> {
        Ok(self
            .local
            .meta("log_witnesses")?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    /// The size of the newest checkpoint every required witness cosigned
    /// (with witnesses, only entries below it are relied on).
    pub(crate) fn witnessed_size(&self) -> Result<u64> {
        let key = if self.witnesses()?.is_empty() {
            "log_size"
        } else {
            "cosigned_size"
        };
        Ok(self
            .local
            .meta(key)?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Seconds since the newest checkpoint every required witness cosigned, if witnesses are required.
    pub(crate) fn witnessed_age(&self) -> Result<Option<u64>> {
        if self.witnesses()?.is_empty() {
            return Ok(None);
        }
        let at: u64 = self
            .local
            .meta("cosigned_at")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Some((crate::now() as u64).saturating_sub(at)))
    }

    /// Verifies a signed checkpoint and that it extends the pinned one; pins
    /// it, and records it as witnessed if every required witness cosigned it.
    pub(crate) fn accept_checkpoint(&mut self, note: &[u8]) -> Result<Checkpoint> {
        let (key, origin) = self.log_trust()?;
        let witnesses = self.witnesses()?;
        let opened =
            pouch_log::witness::open_cosigned(note, &key, &origin, &witnesses).map_err(|e| {
                security(format!(
                    "the transparency log's checkpoint is not valid: {e}"
                ))
            })?;
        let cp = opened.checkpoint;
        if let Some((size, root)) = self.pinned_checkpoint()? {
            if cp.size() < size {
                return Err(security(format!(
                    "the transparency log went back from {size} to {} entries (a rollback): report this to your security team",
                    cp.size()
                )));
            }
            if cp.size() > size {
                let c: api::LogConsistency = self
                    .api
                    .get_json(&format!("/v1/log/consistency?from={size}&to={}", cp.size()))?;
                pouch_log::verify_consistency(&hashes(&c.proof)?, cp.size(), *cp.hash(), size, root).map_err(|e| {
                    security(format!(
                        "the transparency log is not consistent with what this device saw before ({e}): a split view or a rewrite"
                    ))
                })?;
            } else if *cp.hash() != root {
                return Err(security(
                    "the transparency log shows two different trees of the same size".into(),
                ));
            }
        }
        self.local.set_meta("log_size", &cp.size().to_string())?;
        self.local
            .set_meta("log_root", &pouch_log::hash_to_b64(cp.hash()))?;
        let all_cosigned = witnesses.iter().all(|w| {
            let name = w.split('+').next().unwrap_or_default();
            opened.cosignatures.iter().any(|(n, _)| n == name)
        });
        if !witnesses.is_empty() && all_cosigned && cp.size() >= self.witnessed_size()? {
            let oldest = opened
                .cosignatures
                .iter()
                .map(|(_, t)| *t)
                .min()
                .unwrap_or(0);
            self.local
                .set_meta("cosigned_size", &cp.size().to_string())?;
            self.local.set_meta("cosigned_at", &oldest.to_string())?;
        }
        Ok(cp)
    }

    /// Fetches and accepts the newest checkpoint.
    pub(crate) fn check_log(&mut self) -> Result<u64> {
        let note = self.api.get_bytes_public("/checkpoint")?;
        Ok(self.accept_checkpoint(&note)?.size())
    }

    /// The log's commitment key, fetched once and pinned: the server proves
    /// that the log records its hash, so it cannot give this device a key of
    /// its own making without that showing in the tree.
    pub(crate) fn commitments(&mut self) -> Result<Commitments> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        // Pinned once, never changed: kept in memory after the first read.
        if let Some(known) = &self.commitments_pinned {
            return Ok(known.clone());
        }
        if let (Some(key), Some(index)) = (
            self.local.meta("log_commitment_key")?,
            self.local.meta("log_commitment_index")?,
        ) {
            let key = decode_commitment_key(&key)
                .ok_or_else(|| ClientError::Local("the pinned commitment key is damaged".into()))?;
            let key_index = index
                .parse()
                .map_err(|_| ClientError::Local("the pinned commitment key is damaged".into()))?;
            let known = Commitments { key, key_index };
            self.commitments_pinned = Some(known.clone());
            return Ok(known);
        }
        let served: api::LogCommitmentKey = self.api.get("/v1/log/commitment-key")?;
        let key = decode_commitment_key(&served.key)
            .ok_or_else(|| ClientError::Protocol("a malformed commitment key".into()))?;
        let inc = &served.inclusion;
        match Leaf::from_bytes(&inc.entry) {
            Ok(Leaf::CommitmentKey(leaf)) if leaf.key_hash == key.key_hash() => {}
            _ => {
                return Err(security(
                    "the server's commitment key is not the one its transparency log records"
                        .into(),
                ));
            }
        }
        self.prove_in_log(inc, "the log's commitment key")?;
        self.local
            .set_meta("log_commitment_key", &b64.encode(key.as_bytes()))?;
        self.local
            .set_meta("log_commitment_index", &inc.index.to_string())?;
        Ok(Commitments {
            key,
            key_index: inc.index,
        })
    }

    /// Accepts the checkpoint an inclusion proof comes with (it must extend
    /// the pinned one) and checks that the proven leaf is in its tree.
    pub(crate) fn prove_in_log(
        &mut self,
        inc: &api::LogInclusion,
        what: &str,
    ) -> Result<Checkpoint> {
        let cp = self.accept_checkpoint(inc.checkpoint.as_bytes())?;
        pouch_log::verify_inclusion(
            &hashes(&inc.proof)?,
            cp.size(),
            *cp.hash(),
            inc.index,
            &inc.entry,
        )
        .map_err(|e| security(format!("{what} is not provably in the log: {e}")))?;
        Ok(cp)
    }

    /// Requires that `list` is in the log, proven against a checkpoint that
    /// extends the one this device pinned. Returns where the entry is and
    /// whether a checkpoint every required witness cosigned covers it.
    pub(crate) fn check_included(
        &mut self,
        address: &Address,
        version: u64,
        list: &SignedDeviceList,
    ) -> Result<Included> {
        self.check_included_with(address, version, list, None)
    }

    /// [`Device::check_included`] with the proof the server may already have
    /// served beside the list (`served`); fetched when there is none.
    pub(crate) fn check_included_with(
        &mut self,
        address: &Address,
        version: u64,
        list: &SignedDeviceList,
        served: Option<api::LogInclusion>,
    ) -> Result<Included> {
        let fetched = match served {
            Some(i) => Ok(i),
            None => self.api.get(&format!(
                "/v1/log/inclusion?address={address}&version={version}"
            )),
        };
        let inc: api::LogInclusion = match fetched {
            Ok(i) => i,
            Err(ClientError::Server { status: 404, .. }) => {
                return Err(security(format!(
                    "version {version} of {address}'s device list is not in the transparency log: refusing to use it"
                )));
            }
            Err(e) => return Err(e),
        };
        self.prove_in_log(&inc, &format!("{address}'s device list"))?;
        let commitments = self.commitments()?;
        let same = match commitments.open(inc.index, &inc.entry, &inc.full, address) {
            Ok(AnyEntry::List(entry)) => entry.version == version && &entry.list == list,
            _ => false,
        };
        if !same {
            return Err(security(format!(
                "the log entry for {address} version {version} differs from the list the server served"
            )));
        }
        Ok(Included {
            index: inc.index,
            witnessed: inc.index < self.witnessed_size()?,
        })
    }

    /// Brings the directory cache up to the log's newest checkpoint, at most
    /// once per [`DIRECTORY_FRESHNESS`]: the leaves added since the last look
    /// are checked against the pinned checkpoint, and every cached list whose
    /// account has a later leaf is dropped (fetched and verified again when
    /// next needed). One checkpoint request (and, when the log grew, a
    /// consistency proof and the new tiles) stands in for two requests per
    /// recipient per mail; a device list change is relied on no later than
    /// the log shows it.
    pub(crate) fn refresh_directory(&mut self) -> Result<()> {
        if self
            .directory_checked
            .is_some_and(|at| at.elapsed() < DIRECTORY_FRESHNESS)
        {
            return Ok(());
        }
        // What was looked up of the officer's statements is looked up again
        // (from the store, unless the scan below finds newer ones).
        self.officer_store_changed();
        let size = self.check_log()?;
        let from: Option<u64> = self
            .local
            .meta("directory_scan_size")?
            .and_then(|v| v.parse().ok());
        match (from, self.pinned_checkpoint()?) {
            (Some(from), Some((pinned, root)))
                if from <= pinned && pinned - from <= DIRECTORY_SCAN_MAX =>
            {
                if from < pinned {
                    let leaves = verified_leaves(&self.api, from, pinned, root)?;
                    for (k, leaf) in leaves.iter().enumerate() {
                        let index = (from + k as u64) as i64;
                        match Leaf::from_bytes(leaf) {
                            // A statement of the officer's: the one held for
                            // its subject must be at least this new.
                            Ok(Leaf::Committed(c)) if c.kind == pouch_log::EntryKind::Officer => {
                                self.local.conn.execute(
                                    "INSERT INTO officer_statements (commitment, floor_index) VALUES (?1, ?2) \
                                     ON CONFLICT (commitment) DO UPDATE SET floor_index = MAX(floor_index, excluded.floor_index)",
                                    rusqlite::params![c.account, index],
                                )?
                            }
                            Ok(Leaf::Committed(c)) => self.local.conn.execute(
                                "DELETE FROM directory_cache WHERE commitment = ?1 AND log_index < ?2",
                                rusqlite::params![c.account, index],
                            )?,
                            Ok(Leaf::Named(e)) => self.local.conn.execute(
                                "DELETE FROM directory_cache WHERE address = ?1 AND log_index < ?2",
                                rusqlite::params![e.address().as_str(), index],
                            )?,
                            // A second key would commit later leaves under
                            // another name: trust nothing cached (auditors flag it).
                            Ok(Leaf::CommitmentKey(_)) => {
                                self.local.conn.execute("DELETE FROM directory_cache", [])?
                            }
                            // A leaf this build cannot read may be about anyone.
                            Err(_) => {
                                self.local.conn.execute("UPDATE officer_statements SET stale = 1", [])?;
                                self.local.conn.execute("DELETE FROM directory_cache", [])?
                            }
                        };
                    }
                }
            }
            // First look, or too far behind to scan: start over.
            _ => {
                self.local.conn.execute("DELETE FROM directory_cache", [])?;
                self.local
                    .conn
                    .execute("UPDATE officer_statements SET stale = 1", [])?;
            }
        }
        self.local
            .set_meta("directory_scan_size", &size.to_string())?;
        self.directory_checked = Some(std::time::Instant::now());
        Ok(())
    }

    /// A list from the directory cache, if it is still the newest the log shows.
    pub(crate) fn cached_list(&mut self, address: &Address) -> Result<Option<DeviceListBody>> {
        use rusqlite::OptionalExtension;
        self.refresh_directory()?;
        let body: Option<String> = self
            .local
            .conn
            .query_row(
                "SELECT body FROM directory_cache WHERE address = ?1 AND verified_at > ?2",
                rusqlite::params![address.as_str(), crate::now() - DIRECTORY_LIFETIME_SECS],
                |r| r.get(0),
            )
            .optional()?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Where the directory scan stands (leaves below it were looked at).
    pub(crate) fn directory_watermark(&self) -> Result<Option<String>> {
        self.local.meta("directory_scan_size")
    }

    /// Keeps a verified list (in the log at `index`, witnessed) for later
    /// sends — unless the scan moved while it was fetched (another process
    /// of this device looked at the log meanwhile: a newer leaf may lie
    /// behind the new watermark, unseen by this entry).
    pub(crate) fn cache_list(
        &mut self,
        address: &Address,
        index: u64,
        body: &DeviceListBody,
        watermark_before: &Option<String>,
    ) -> Result<()> {
        if &self.directory_watermark()? != watermark_before {
            return Ok(());
        }
        let commitment = self.commitments()?.key.commit(address);
        let json = serde_json::to_string(body)
            .map_err(|e| ClientError::Local(format!("caching a device list: {e}")))?;
        self.local.conn.execute(
            "INSERT OR REPLACE INTO directory_cache (address, commitment, version, log_index, body, verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![address.as_str(), commitment, body.version as i64, index as i64, json, crate::now()],
        )?;
        Ok(())
    }

    /// Forgets a cached list (this device is about to change it).
    pub(crate) fn uncache_list(&mut self, address: &Address) -> Result<()> {
        self.local.conn.execute(
            "DELETE FROM directory_cache WHERE address = ?1",
            [address.as_str()],
        )?;
        Ok(())
    }

    /// Scans this account's entries in the log: every version must be signed
    /// by this account's key, and none may be newer than what the server
    /// serves as current. Returns alerts.
    pub(crate) fn scan_own_entries(
        &mut self,
        served_version: u64,
        account_key: &[u8],
    ) -> Result<Vec<String>> {
        let me = self.address.clone();
        let found: api::LogEntries = self.api.get(&format!("/v1/log/entries/{me}"))?;
        let commitments = self.commitments()?;
        let mut alerts = Vec::new();
        let mut lists = Vec::new();
        for e in &found.entries {
            match commitments.open(e.index, &e.entry, &e.full, &me) {
                Ok(AnyEntry::List(entry)) => lists.push((e.index, entry)),
                Ok(AnyEntry::AdminRevocation(r)) => {
                    // Visible to the account whatever the server says later.
                    if self.first_time(&format!("logged-admin:{}", e.index))? {
                        self.local.notice(
                            "Your administrator revoked a device (recorded in the log)",
                            &format!(
                                "The transparency log records that the administrator revoked device {} at {}.",
                                r.device_id,
                                crate::format_time(r.at)
                            ),
                        )?;
                    }
                }
                Err(err) => alerts.push(format!(
                    "log entry {} for your account does not match what the log commits to: {err}",
                    e.index
                )),
            }
        }
        // The server lists this account's entries, but could leave one out
        // (a version it showed others): the public leaves since the last
        // scan, checked against the pinned checkpoint, are searched for this
        // account's commitment, and each must be in the listing.
        if let Some((size, root)) = self.pinned_checkpoint()? {
            // Entries from before this device's first scan were the business
            // of the account's devices that existed then.
            let from: u64 = match self
                .local
                .meta("own_scan_size")?
                .and_then(|v| v.parse().ok())
            {
                Some(from) => from,
                None => size,
            };
            if from < size {
                let mine = commitments.key.commit(&me);
                let leaves = verified_leaves(&self.api, from, size, root)?;
                for (k, leaf) in leaves.iter().enumerate() {
                    let index = from + k as u64;
                    let about_me = matches!(
                        Leaf::from_bytes(leaf),
                        Ok(Leaf::Committed(c)) if c.account == mine
                    );
                    if about_me && !found.entries.iter().any(|e| e.index == index) {
                        alerts.push(format!(
                            "the transparency log holds entry {index} about your account that the server does not list: a device list shown to others but hidden from you"
                        ));
                    }
                }
            }
            self.local
                .set_meta("own_scan_size", &size.max(from).to_string())?;
        }
        let mut newest = 0;
        for (index, entry) in &lists {
            newest = newest.max(entry.version);
            let signed_by_me = entry
                .list
                .verify()
                .is_ok_and(|b| b.account_key == account_key);
            // Versions from before a reset were signed by the old account key.
            let before_my_key = entry
                .list
                .body_unverified()
                .is_ok_and(|b| b.account_key != account_key)
                && lists.iter().any(|(later_index, later)| {
                    later_index > index
                        && later
                            .list
                            .body_unverified()
                            .is_ok_and(|b| b.reason == "reset" && b.account_key == account_key)
                });
            if !signed_by_me && !before_my_key {
                alerts.push(format!(
                    "the transparency log holds version {} of your device list that your devices did not sign",
                    entry.version
                ));
            }
        }
        if newest > served_version {
            alerts.push(format!(
                "the server serves version {served_version} of your device list but the log holds version {newest}: something is being hidden (a revocation?)"
            ));
        }
        Ok(alerts)
    }
}

/// What `pouch log verify` found.
#[derive(Debug, serde::Serialize)]
pub struct AuditReport {
    pub origin: String,
    pub size: u64,
    /// Accounts seen: by name before the log held commitments, by commitment after.
    pub accounts: usize,
    pub problems: Vec<String>,
}

/// Walks the whole log as an outside auditor (no account needed): checks
/// the checkpoint's signature, rebuilds the root from every leaf, and checks
/// the leaves' structure: one commitment key, no named leaf after it, each
/// account commitment's list versions increasing. The leaves name no one, so
/// the signatures behind them are checked by the devices that rely on them
/// (every list a device uses must open its leaf); leaves from before
/// commitments are named, and their signatures and chains are checked here.
pub fn audit(
    server: &str,
    fingerprint: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AuditReport> {
    let api = crate::net::Api::new(server, fingerprint)?;
    let info: api::ServerInfo = api.get_json("/v1/info")?;
    let note = api.get_bytes_public("/checkpoint")?;
    let cp = pouch_log::open_checkpoint(&note, &info.log_key, &info.log_origin)
        .map_err(|e| security(format!("the checkpoint does not verify: {e}")))?;
    let mut store = pouch_log::FetchedHashes(Default::default());
    let mut problems = Vec::new();
    let mut chains: std::collections::BTreeMap<Address, Vec<SignedDeviceList>> = Default::default();
    let mut structure = pouch_log::commitment::StructureAudit::default();
    let size = cp.size();
    let mut index = 0u64;
    while index < size {
        let tile = index / 256;
        let width = (size - tile * 256).min(256);
        let bundle = api.get_bytes_public(&entries_path(tile, width))?;
        let entries = parse_bundle(&bundle)?;
        if entries.len() as u64 != width {
            return Err(security("an entry bundle of the wrong width".into()));
        }
        for data in entries {
            let new = pouch_log::stored_hashes(index, data, &store)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let base = pouch_log::stored_hash_index(0, index);
            for (k, h) in new.into_iter().enumerate() {
                store.0.insert(base + k as u64, h);
            }
            // The structure of every leaf; the signatures of named ones.
            if let Some(Leaf::Named(AnyEntry::List(entry))) = structure.add(index, data) {
                match entry.list.verify() {
                    Ok(body) if body.address == entry.address && body.version == entry.version => {
                        chains
                            .entry(entry.address.clone())
                            .or_default()
                            .push(entry.list.clone());
                    }
                    _ => problems.push(format!(
                        "entry {index}: the device list's signature or fields do not match"
                    )),
                }
            }
            index += 1;
        }
        progress(index, size);
    }
    let root =
        pouch_log::tree_hash(size, &store).map_err(|e| ClientError::Protocol(e.to_string()))?;
    problems.extend(structure.problems);
    if root != *cp.hash() {
        problems.push("the entries do not hash to the checkpoint's root".into());
    }
    for (address, lists) in &chains {
        if let Err(e) = crate::devices::verify_history(address, lists) {
            problems.push(format!("{address}: {e}"));
        }
    }
    Ok(AuditReport {
        origin: info.log_origin,
        size,
        accounts: chains.len() + structure.committed.len(),
        problems,
    })
}

/// A commitment key as base64 (as served and as pinned).
pub(crate) fn decode_commitment_key(text: &str) -> Option<pouch_log::CommitmentKey> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    pouch_log::CommitmentKey::from_bytes(&bytes).ok()
}

/// An entry bundle (C2SP tlog-tiles): entries each behind a u16 length.
fn parse_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>> {
    let mut entries = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(security("a malformed entry bundle".into()));
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let data = rest
            .get(2..2 + len)
            .ok_or_else(|| security("a truncated entry bundle".into()))?;
        entries.push(data);
        rest = &rest[2 + len..];
    }
    Ok(entries)
}

fn entries_path(tile: u64, width: u64) -> String {
    if width == 256 {
        format!("/tile/entries/{}", tile_index(tile))
    } else {
        format!("/tile/entries/{}.p/{width}", tile_index(tile))
    }
}

/// Hash tiles from the server, for tlog's `TileHashReader`, which checks
/// each against the tree it reads for (so a tile is never taken on trust).
struct ServedTiles<'a> {
    api: &'a crate::net::Api,
    failure: std::cell::RefCell<Option<ClientError>>,
}

impl pouch_log::TileReader for ServedTiles<'_> {
    fn height(&self) -> u8 {
        pouch_log::TILE_HEIGHT
    }

    fn read_tiles(
        &self,
        tiles: &[pouch_log::Tile],
    ) -> std::result::Result<Vec<Vec<u8>>, pouch_log::TlogError> {
        tiles
            .iter()
            .map(|t| {
                let width = if t.width() == 256 {
                    String::new()
                } else {
                    format!(".p/{}", t.width())
                };
                let path = format!("/tile/{}/{}{width}", t.level(), tile_index(t.level_index()));
                self.api.get_bytes_public(&path).map_err(|e| {
                    *self.failure.borrow_mut() = Some(e);
                    pouch_log::TlogError::InvalidInput("a tile could not be fetched".into())
                })
            })
            .collect()
    }

    fn save_tiles(&self, _: &[pouch_log::Tile], _: &[Vec<u8>]) {}
}

/// The public leaves `from..size` of the tree (`size`, `root`), each checked
/// against that tree through the hash tiles.
fn verified_leaves(
    api: &crate::net::Api,
    from: u64,
    size: u64,
    root: Hash,
) -> Result<Vec<Vec<u8>>> {
    let mut leaves = Vec::new();
    let mut tile = from / 256;
    while tile * 256 < size {
        let width = (size - tile * 256).min(256);
        let bundle = api.get_bytes_public(&entries_path(tile, width))?;
        let entries = parse_bundle(&bundle)?;
        if entries.len() as u64 != width {
            return Err(security("an entry bundle of the wrong width".into()));
        }
        for (k, data) in entries.into_iter().enumerate() {
            if tile * 256 + k as u64 >= from {
                leaves.push(data.to_vec());
            }
        }
        tile += 1;
    }
    let tiles = ServedTiles {
        api,
        failure: Default::default(),
    };
    let indexes: Vec<u64> = (from..size)
        .map(|i| pouch_log::stored_hash_index(0, i))
        .collect();
    let hashes = pouch_log::HashReader::read_hashes(
        &pouch_log::TileHashReader::new(size, root, &tiles),
        &indexes,
    )
    .map_err(|e| match tiles.failure.take() {
        Some(fetch) => fetch,
        None => security(format!(
            "the transparency log's public tiles do not match its checkpoint ({e})"
        )),
    })?;
    for (leaf, hash) in leaves.iter().zip(hashes) {
        if pouch_log::record_hash(leaf) != hash {
            return Err(security(
                "the transparency log's public entries do not match its checkpoint".into(),
            ));
        }
    }
    Ok(leaves)
}

fn tile_index(n: u64) -> String {
    let mut s = format!("{:03}", n % 1000);
    let mut n = n / 1000;
    while n > 0 {
        s = format!("x{:03}/{s}", n % 1000);
        n /= 1000;
    }
    s
}
