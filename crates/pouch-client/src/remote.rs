//! Accounts of other domains (federation). The device talks only to its
//! own server, which asks the account's server (a federation peer) and
//! hands back what it answered: the account's signed device lists, the
//! proof that the newest is in *that* domain's transparency log, and that
//! log's checkpoint — cosigned by this device's own domain's witness.
//!
//! Why the own witness: the device cannot follow every partner's log
//! itself. Its domain's witness cosigns a partner's checkpoint only as a
//! consistent extension of the last one it cosigned, so every checkpoint
//! this device accepts for a partner's log belongs to the one history this
//! ministry was shown (a partner that showed it two is caught by the
//! witness: a critical alert at this ministry's server). A list that
//! history does not record is refused (and reported by the server). What
//! the partner shows its own users is guarded by its own witnesses, not
//! by this one. The witness key is pinned the first time it is needed
//! (like the log key at enrollment).
//!
//! The account key is pinned per address as for any contact, and a
//! changed one is reported the same way.

use crate::Device;
use crate::error::{ClientError, Result};
use crate::transparency::{decode_commitment_key, hashes};
use pouch_log::{AnyEntry, Commitments, Leaf};
use pouch_proto::Address;
use pouch_proto::api;
use pouch_proto::devices::{DeviceListBody, SignedDeviceList};

/// An answer about another domain's account this process checked: its
/// SHA-256, and the device lists it proved.
pub(crate) struct Verified {
    pub(crate) digest: [u8; 32],
    pub(crate) body: DeviceListBody,
    pub(crate) lists: Vec<SignedDeviceList>,
    /// When this process last had it from its server.
    pub(crate) at: std::time::Instant,
}

/// How long a remote account's list this process verified is used without
/// asking again: as long as the directory cache goes without looking at
/// the log ([`crate::transparency::DIRECTORY_FRESHNESS`]), so a burst of mail to one partner is
/// one question, and a change reaches the device as soon after.
pub(crate) const REMOTE_FRESH: std::time::Duration = crate::transparency::DIRECTORY_FRESHNESS;

fn security(msg: String) -> ClientError {
    ClientError::Security(msg)
}

impl Device {
    /// Whether `address` belongs to another domain than this account's.
    pub(crate) fn is_remote(&self, address: &Address) -> bool {
        address.domain() != self.address.domain()
    }

    /// The witness this device's server runs for its peers' logs, pinned on
    /// first use.
    fn federation_witness(&mut self) -> Result<String> {
        if let Some(key) = self.local.meta("federation_witness")? {
            return Ok(key);
        }
        let info: api::ServerInfo = self.api.get("/v1/info")?;
        let key = info.federation_witness.ok_or_else(|| {
            ClientError::Invalid(format!(
                "this server (@{}) does not federate with other domains: check the address",
                self.address.domain()
            ))
        })?;
        pouch_log::witness::WitnessVerifier::parse(&key)
            .map_err(|_| ClientError::Protocol("a malformed federation witness key".into()))?;
        self.local.set_meta("federation_witness", &key)?;
        Ok(key)
    }

    /// The device lists of `address`, an account of another domain, every
    /// version, checked: signed as a history by the account key, the newest
    /// in that domain's log at a checkpoint this device's own domain's
    /// witness cosigned.
    pub(crate) fn remote_lists(
        &mut self,
        address: &Address,
    ) -> Result<(DeviceListBody, Vec<SignedDeviceList>)> {
        let remote = self.remote_answer(address)?;
        self.check_remote_answer(address, remote)
    }

    /// What this device's server answers about `address`, an account of
    /// another domain (as its domain's server answered it).
    pub(crate) fn remote_answer(&mut self, address: &Address) -> Result<api::RemoteDirectory> {
        self.sign_in()?;
        let domain = address.domain().to_string();
        let answer: api::DirectoryResponse = self.api.post(
            "/v1/directory/lists",
            &api::DirectoryRequest {
                addresses: vec![address.clone()],
            },
        )?;
        let Some(remote) = answer.remote.into_iter().find(|r| r.domain == domain) else {
            return Err(ClientError::Invalid(format!(
                "{address} is in {domain}, a domain this server does not federate with; check the address"
            )));
        };
        if let Some(why) = remote.error {
            return Err(ClientError::Server {
                status: 502,
                code: api::ErrorCode::Internal,
                message: format!("cannot check {address} now, try again later: {why}"),
            });
        }
        if remote.unknown.contains(address) {
            return Err(ClientError::Server {
                status: 404,
                code: api::ErrorCode::UnknownRecipient,
                message: format!("{address} is not a Pouch user at {domain}; check the address"),
            });
        }
        Ok(remote)
    }

    /// [`Device::remote_lists`]' checks of one answer.
    pub(crate) fn check_remote_answer(
        &mut self,
        address: &Address,
        remote: api::RemoteDirectory,
    ) -> Result<(DeviceListBody, Vec<SignedDeviceList>)> {
        let domain = remote.domain.clone();
        let witness = self.federation_witness()?;
        let origin = format!("{domain}/log");
        let opened = pouch_log::witness::open_cosigned(
            remote.checkpoint.as_bytes(),
            &remote.log_key,
            &origin,
            std::slice::from_ref(&witness),
        )
        .map_err(|e| security(format!("{domain}'s log checkpoint does not verify: {e}")))?;
        if opened.cosignatures.is_empty() {
            return Err(security(format!(
                "{domain}'s log checkpoint is not cosigned by this domain's witness: refusing {address}'s device list"
            )));
        }
        let checkpoint = opened.checkpoint;
        let included = |index: u64, entry: &[u8], proof: &[String], what: &str| -> Result<()> {
            pouch_log::verify_inclusion(
                &hashes(proof)?,
                checkpoint.size(),
                *checkpoint.hash(),
                index,
                entry,
            )
            .map_err(|e| security(format!("{what} is not provably in {domain}'s log: {e}")))
        };
        // The commitment key that leaves of that log commit to addresses
        // under, as its log records it.
        let key = decode_commitment_key(&remote.commitment_key)
            .ok_or_else(|| ClientError::Protocol("a malformed commitment key".into()))?;
        let key_proof = remote
            .commitment_key_proof
            .as_ref()
            .ok_or_else(|| security(format!("{domain}'s commitment key came without its proof")))?;
        match Leaf::from_bytes(&key_proof.entry) {
            Ok(Leaf::CommitmentKey(leaf)) if leaf.key_hash == key.key_hash() => {}
            _ => {
                return Err(security(format!(
                    "{domain}'s commitment key is not the one its log records"
                )));
            }
        }
        included(
            key_proof.index,
            &key_proof.entry,
            &key_proof.proof,
            &format!("{domain}'s commitment key"),
        )?;
        let commitments = Commitments {
            key,
            key_index: key_proof.index,
        };
        let entry = remote
            .entries
            .into_iter()
            .find(|e| &e.address == address)
            .ok_or_else(|| {
                security(format!(
                    "{domain}'s server left {address} out of its answer"
                ))
            })?;
        let body = crate::devices::verify_history(address, &entry.lists)?;
        let newest = entry.newest.as_ref().ok_or_else(|| {
            security(format!(
                "the newest device list of {address} is not in {domain}'s log yet: refusing to use it"
            ))
        })?;
        included(
            newest.index,
            &newest.entry,
            &newest.proof,
            &format!("{address}'s device list"),
        )?;
        let latest = entry.lists.last().expect("verify_history saw a version");
        let same = match commitments.open(newest.index, &newest.entry, &newest.full, address) {
            Ok(AnyEntry::List(e)) => e.version == body.version && &e.list == latest,
            _ => false,
        };
        if !same {
            return Err(security(format!(
                "{domain}'s log records another device list for {address} than its server served: refusing it"
            )));
        }
        self.no_rollback(address, &body, &entry.lists)?;
        Ok((body, entry.lists))
    }

    /// A remote account's lists never go back: not to a version older than
    /// one this device pinned (`--accept`) or saw in any answer it verified
    /// (an older version is still in the log, and would hide a revoked
    /// device or a reset), nor to another history through it. Newer
    /// versions are remembered, under whichever key.
    pub(crate) fn no_rollback(
        &mut self,
        address: &Address,
        body: &DeviceListBody,
        lists: &[SignedDeviceList],
    ) -> Result<()> {
        use rusqlite::OptionalExtension as _;
        let pinned: Option<(Vec<u8>, i64, String)> = self
            .local
            .conn
            .query_row(
                "SELECT account_key, version, list_hash FROM contacts WHERE address = ?1",
                [address.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let seen_key = format!("remote_seen:{address}");
        let seen: Option<(i64, String)> = self.local.meta(&seen_key)?.and_then(|v| {
            let (version, hash) = v.split_once(' ')?;
            Some((version.parse().ok()?, hash.to_string()))
        });
        let floors = pinned
            .iter()
            .map(|(_, v, h)| (*v, h.clone()))
            .chain(seen.iter().cloned());
        for (version, hash) in floors {
            if (body.version as i64) < version {
                return Err(security(format!(
                    "{address}'s domain shows an older device list (version {} after {version}): refusing it",
                    body.version
                )));
            }
            let at = usize::try_from(version - 1)
                .ok()
                .and_then(|i| lists.get(i))
                .map(|l| l.hash());
            if !hash.is_empty() && at.as_deref() != Some(hash.as_str()) {
                return Err(security(format!(
                    "{address}'s domain shows another history of their device list than the one seen before: refusing it"
                )));
            }
        }
        let latest = lists.last().map(|l| l.hash()).unwrap_or_default();
        if seen
            .as_ref()
            .is_none_or(|(v, _)| (body.version as i64) > *v)
        {
            self.local
                .set_meta(&seen_key, &format!("{} {latest}", body.version))?;
        }
        if let Some((key, version, _)) = &pinned
            && key == &body.account_key
            && (body.version as i64) > *version
        {
            self.local.conn.execute(
                "UPDATE contacts SET version = ?2, list_hash = ?3 WHERE address = ?1",
                rusqlite::params![address.as_str(), body.version as i64, latest],
            )?;
        }
        Ok(())
    }
}
