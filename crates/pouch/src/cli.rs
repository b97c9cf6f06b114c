//! Command-line definitions and dispatch.

/// `println!` for the command's output, ending the process quietly when
/// the reader has gone (`pouch inbox | head`): a closed pipe is how such a
/// reader says it has enough, not an error, and `println!` would panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            crate::cli::stdout_failed(e);
        }
    }};
}

/// Standard output cannot be written: quietly done if the reader closed
/// it, else one line on standard error.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use mail_parser::MimeHeaders as _;
use pouch_client::{Compose, Device, MessageSummary};
use pouch_proto::Address;
use pouch_proto::invite::Invite;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "pouch",
    version = pouch_server::VERSION_LINE,
    about = "Pouch: end-to-end encrypted mail for diplomatic networks",
    after_help = "Examples:
  pouch server --domain mfa.example --tls-name mail.mfa.example
  pouch --home alice enroll \"$(pouch admin user add alice@mfa.example)\"
  pouch --home alice send --to bob@mfa.example --subject Hello --body 'First mail'
  pouch --home bob sync && pouch --home bob read 1
  pouch --home alice bridge          # Thunderbird or Outlook on 127.0.0.1
  pouch admin approvals              # resets waiting for a second administrator"
)]
pub struct Cli {
    /// Where this device's encrypted state lives.
    #[arg(long, global = true, env = "POUCH_HOME")]
    home: Option<PathBuf>,
    /// How the server, witness and bridge write their log on standard
    /// error: text (colour only on a terminal) or json (one object per line).
    #[arg(long, global = true, env = "POUCH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Pouch server (HTTPS).
    Server(ServerArgs),
    /// Administer users on a running server.
    Admin(AdminArgs),
    /// Run a witness that cosigns transparency-log checkpoints (C2SP tlog-witness).
    Witness(WitnessArgs),
    /// Print shell completions (the Debian package installs them).
    Completions {
        /// The shell to complete for.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Write the manual pages (pouch.1 and one per command) into a directory.
    Manpages {
        /// Where to write them (made if absent).
        dir: PathBuf,
    },
    /// Enroll this device with a one-time invite.
    Enroll {
        /// The one-time invite an administrator gave you (`pouch admin user add`).
        invite: String,
        /// A name for this device, shown in your device list.
        #[arg(long, default_value = "device")]
        device_name: String,
    },
    /// Ask to add this new device to an existing account (an existing device approves it).
    Link {
        /// Your account's address.
        address: String,
        /// The server's URL (https://HOST:PORT).
        #[arg(long)]
        server: String,
        /// The server's trust anchor SHA-256 fingerprint (as printed by the server).
        #[arg(long)]
        fingerprint: String,
        /// A name for this device, shown in your device list.
        #[arg(long, default_value = "device")]
        device_name: String,
        /// How long to wait for approval.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// This account's devices: list, approve or deny a new one, revoke one.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// This account's devices and recent access events: which device fetched what, when, from where.
    Activity {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Classification labels: check a label policy file, show a label's marking and STANAG 4774 XML.
    Security {
        #[command(subcommand)]
        command: SecurityCommand,
    },
    /// The server's TLS trust anchor this device trusts; accept a new one.
    TrustAnchor {
        #[command(subcommand)]
        command: TrustAnchorCommand,
    },
    /// Show an account's key fingerprint, device list and history; --accept a changed key.
    Verify {
        /// The account to show.
        address: String,
        /// Accept the account's changed key, after comparing its fingerprint with the person.
        #[arg(long)]
        accept: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The transparency log: `pouch log verify` audits it (no account needed).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Send an encrypted mail.
    Send(SendArgs),
    /// Serve local mail clients (SMTP submission on 127.0.0.1) and keep syncing.
    Bridge {
        /// Where mail clients read mail (IMAP).
        #[arg(long, default_value = "127.0.0.1:1143")]
        imap: std::net::SocketAddr,
        /// Where mail clients submit mail.
        #[arg(long, default_value = "127.0.0.1:1025")]
        smtp: std::net::SocketAddr,
        /// Print the bridge password (for the mail client's settings) and exit.
        #[arg(long)]
        show_password: bool,
        /// Listen on an address outside loopback anyway.
        #[arg(long)]
        allow_non_loopback: bool,
        /// Seconds between syncs with the server.
        #[arg(long, default_value_t = 10)]
        sync_secs: u64,
        /// none, starttls (no login before STARTTLS) or implicit (TLS from the
        /// first byte), with a certificate the bridge makes and keeps.
        #[arg(long, default_value = "none")]
        tls: pouch_bridge::tls::TlsMode,
    },
    /// Send what waits in the outbox, then fetch and decrypt new mail.
    Sync {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mail kept to be sent (the server was unreachable): the next `pouch
    /// sync`, `pouch send` or the bridge sends it.
    Outbox {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List received mail.
    Inbox {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Find mail by words in its subject, people, text or attachment names
    /// (a local index, encrypted with the rest of this device's state).
    Search {
        /// Words to find (all of them).
        #[arg(required_unless_present = "label", default_value = "")]
        query: String,
        /// Only mail with this label: its classification and at least its
        /// category values (SECRET, or SECRET//REL TO CZE).
        #[arg(long)]
        label: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List sent mail.
    Sent {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure mails per second through the whole path (server, MLS, storage).
    Bench {
        /// Run on a scratch database created beside this PostgreSQL URL (SQLite otherwise).
        #[arg(long)]
        postgres: Option<String>,
        /// Recipient counts to measure, comma-separated (one round each).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        recipients: Vec<usize>,
        /// Mails per round (with --workload: mails in all).
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Bytes of text per mail.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Send one attachment of this many MiB and report peak memory instead.
        #[arg(long)]
        attachment_mib: Option<u64>,
        /// Benchmark the transparency log instead (appends/s, proof sizes).
        #[arg(long)]
        log: bool,
        /// With --log: appends to make through the real store.
        #[arg(long, default_value_t = 2000)]
        log_store_entries: u64,
        /// Benchmark the bridge instead: a full mbsync download of this many
        /// mails through the bridge, beside the same through Dovecot.
        #[arg(long)]
        bridge_mails: Option<usize>,
        /// The regression guard: a short run compared, as ratios to raw
        /// OpenMLS, with the baseline in this file; fails below half of it.
        #[arg(long, value_name = "BASELINE")]
        guard: Option<PathBuf>,
        /// With --guard: record this run as the baseline for this build profile.
        #[arg(long, requires = "guard")]
        guard_record: bool,
        /// Run a whole workload instead: `mail` is 20 users with a bridge
        /// each, --messages mails of 4 KiB to 10 of them, 4 concurrent SMTP
        /// submissions, IMAP fetch of every copy, beside Postfix + Dovecot.
        #[arg(long, value_parser = ["mail"])]
        workload: Option<String>,
        /// With --workload: runs of each variant per system (medians printed).
        #[arg(long, default_value_t = 3, requires = "workload")]
        runs: usize,
        /// With --workload: `new` (every mail a new conversation), `replies`, or both.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "new,replies",
            requires = "workload"
        )]
        variants: Vec<String>,
        /// With --workload: Pouch alone, without starting Postfix + Dovecot.
        #[arg(long, requires = "workload")]
        no_compare: bool,
        /// With --workload: a label policy in force, every user cleared, and
        /// every mail labelled by its subject marking (to measure what label
        /// checks cost; compare with a run without).
        #[arg(long, requires = "workload")]
        labels: bool,
        /// With --workload: seconds between each bridge's syncs (the bridge's default).
        #[arg(long, default_value_t = 10, requires = "workload")]
        sync_secs: u64,
        /// Send one circular to this many recipients (at most 1000) instead:
        /// the time until every device has it, new conversation and reply.
        #[arg(long, value_name = "RECIPIENTS")]
        circular: Option<usize>,
        /// Benchmark mail to another domain instead, beside mail within one:
        /// two federating servers, --messages replies each way, then this
        /// many single mails timed from send to arrival.
        #[arg(long, value_name = "SAMPLES")]
        federation: Option<usize>,
    },
    /// Show one mail.
    Read {
        /// The mail's number, as `pouch inbox` or `pouch sent` lists it.
        id: i64,
        /// Print the exact RFC 5322 bytes as sent.
        #[arg(long)]
        raw: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Save the mail's attachments into this directory (made if absent;
        /// a file already there is never overwritten).
        #[arg(long, value_name = "DIR", conflicts_with = "raw")]
        save_attachments: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecurityCommand {
    /// Make the security officer's key (on the officer's own machine, never
    /// the server): it signs the label policy and people's clearances.
    Init {
        /// The officer's name, as devices will show it.
        #[arg(long)]
        name: String,
        /// Where the key is kept, sealed under a passphrase (default: the
        /// user's data directory, pouch/officer).
        #[arg(long, env = "POUCH_OFFICER_HOME")]
        officer_home: Option<PathBuf>,
    },
    /// Check a label policy file (the SPIF model of STANAG 4774) and summarise it.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Trust a changed security officer key (after comparing its
    /// fingerprint with your security officer's own).
    Accept {
        /// The new key's fingerprint (64 hex digits).
        fingerprint: String,
    },
    /// Clear a person for labelled mail, signed with the officer's key and
    /// published in the transparency log (run from the officer's device).
    Clear {
        /// Their address.
        address: String,
        /// The highest classification they may read.
        #[arg(long)]
        max: String,
        /// A category value they hold, TAG:VALUE[,VALUE] or the policy's
        /// marking (REL TO CZE); repeat for several.
        #[arg(long = "category")]
        categories: Vec<String>,
        /// When the clearance ends (YYYY-MM-DD, end of that day UTC, or RFC 3339).
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// Revoke a person's clearance (signed and published like a clearance).
    Revoke {
        /// Their address.
        address: String,
        #[command(flatten)]
        officer: OfficerArgs,
    },
    /// A label as the policy reads it: its marking, or its STANAG 4774 XML.
    Label {
        /// The label: a marking (SECRET//REL TO CZE, SVK) or typed (SECRET REL:CZE,SVK).
        label: String,
        /// The label policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Print the STANAG 4774 XML instead of the marking.
        #[arg(long)]
        xml: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Read and check a policy file; one line per refusal, nothing published.
    Check {
        /// The policy file (TOML; see dist/labels/ministry-example.toml).
        file: PathBuf,
    },
    /// Sign the policy with the officer's key and publish it in the
    /// transparency log (run from the officer's device): every device
    /// enforces it from its next look at the log.
    Publish {
        /// The policy file (TOML).
        file: PathBuf,
        /// The policy's version; one more than the published one when absent.
        #[arg(long)]
        version: Option<u64>,
        #[command(flatten)]
        officer: OfficerArgs,
    },
}

/// Where the security officer's key is (its passphrase: POUCH_OFFICER_PASSPHRASE, else asked).
#[derive(Args)]
struct OfficerArgs {
    /// The officer's key home (default: the user's data directory, pouch/officer).
    #[arg(long, env = "POUCH_OFFICER_HOME")]
    officer_home: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TrustAnchorCommand {
    /// The anchor's SHA-256 this device trusts (and the one before, if it changed).
    Show,
    /// Trust a new anchor the old one did not endorse (a ministry CA
    /// replaced, a device offline through two changes): only after
    /// comparing its SHA-256 with what your administrator announced.
    Accept {
        /// The new anchor's SHA-256 fingerprint (64 hex digits).
        fingerprint: String,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Walk the whole log: checkpoint signature, every entry's signature, each account's chain, the tree.
    Verify {
        /// The server's URL (https://HOST:PORT).
        #[arg(long)]
        server: String,
        /// The server's trust anchor SHA-256 fingerprint (as printed by the server).
        #[arg(long)]
        fingerprint: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// The signed device list beside what the server has registered.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a new device by the code it shows.
    Approve {
        /// The code the new device shows.
        code: String,
        /// Also send this device's mail store to the new device.
        #[arg(long)]
        with_history: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Refuse a new device's request.
    Deny {
        /// The code the new device shows.
        code: String,
    },
    /// Remove a device from the account and from every conversation.
    Revoke {
        /// The device's id, as `pouch device list` shows it.
        device_id: String,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Address and port to serve HTTPS on (loopback unless you open it).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
    /// Where the server keeps its database, TLS anchor and certificate, and the one-time administrator setup secret.
    #[arg(long, default_value = "./pouch-data")]
    data_dir: PathBuf,
    /// postgres://… to run on PostgreSQL; the embedded SQLite database otherwise.
    #[arg(long, env = "POUCH_DATABASE_URL")]
    database_url: Option<String>,
    /// The mail domain this server serves (addresses are NAME@DOMAIN).
    #[arg(long, default_value = "pouch.local")]
    domain: String,
    /// TLS certificate chain (PEM) to serve, issued by --tls-ca; without it the
    /// server makes its own trust anchor and issues and renews its certificate.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA certificate (PEM) that issued --tls-cert: the trust anchor invites
    /// carry, so a renewed certificate from it needs nothing from devices.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// A name clients connect by (DNS name or IP address) for the certificate the
    /// server issues itself, besides localhost and loopback (repeat for several).
    #[arg(long = "tls-name", conflicts_with = "tls_cert")]
    tls_names: Vec<String>,
    /// MLS ciphersuite for a new deployment (hex code point): 004D X-Wing, 004F ML-KEM768+X25519.
    #[arg(long, default_value = "004D")]
    ciphersuite: String,
    /// Every device refreshes its keys in each conversation at least this often (hours).
    #[arg(long, default_value_t = 24.0)]
    rotation_hours: f64,
    /// How long a new device's link request waits for approval (seconds).
    #[arg(long, default_value_t = 600)]
    link_ttl_secs: u64,
    /// How long a device's sign-in token lasts (seconds); devices renew it before it runs out.
    #[arg(long, default_value_t = pouch_server::TOKEN_TTL_SECS)]
    token_ttl_secs: u64,
    /// Mail waiting for one device, at most (MiB); a send that would pass it is refused.
    #[arg(long, default_value_t = 1024)]
    max_queue_mib: u64,
    /// Attachments one device may have waiting on the server (MiB).
    #[arg(long, default_value_t = 4096)]
    max_blob_mib: u64,
    /// HTTPS connections open at once, in all; more are closed at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// HTTPS connections open at once from one network address.
    #[arg(long, default_value_t = 256)]
    max_connections_per_source: usize,
    /// A witness for the transparency log: URL=VERIFIER-KEY (repeat for several).
    #[arg(long)]
    witness: Vec<String>,
    /// Change the trust anchor the server made itself, then serve: the old
    /// anchor signs the new, so devices move to it as they connect (an
    /// access event with a high alert; see the README's "Certificates").
    #[arg(long, conflicts_with = "tls_cert")]
    rotate_anchor: bool,
    /// Start from a backup (`pouch admin backup`): copied into an empty
    /// --data-dir that already holds the old one's key files.
    #[arg(long, value_name = "FILE", conflicts_with = "database_url")]
    restore: Option<PathBuf>,
    /// Config file: the settings above under `[server]` (each flag's name
    /// with `_` for `-`; a flag given here wins) and the policy — event
    /// retention, detection thresholds, alert outputs, responses. Default:
    /// pouch.toml in the data directory, if present.
    #[arg(long, env = "POUCH_CONFIG")]
    config: Option<PathBuf>,
    /// Check the flags and config file, print the settings in effect and
    /// where each came from, and exit without serving.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct WitnessArgs {
    /// Address and port the witness serves on.
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: String,
    /// Where the witness keeps its key and the checkpoints it cosigned.
    #[arg(long, default_value = "./pouch-witness")]
    data_dir: PathBuf,
    /// This witness's name in its cosignatures.
    #[arg(long, default_value = "witness.pouch.local")]
    name: String,
    /// A log to witness, by its checkpoint verifier key (as `pouch server` publishes in /v1/info).
    #[arg(long = "log", required = true)]
    logs: Vec<String>,
}

#[derive(Args)]
struct AdminArgs {
    /// Where this administrator's key lives (made by `pouch admin init`),
    /// apart from any device.
    #[arg(long, env = "POUCH_ADMIN_HOME")]
    admin_home: Option<PathBuf>,
    /// Talk to this server node instead of the one `admin init` recorded
    /// (another node of the same database).
    #[arg(long)]
    server: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make your administrator key. The first administrator gives the
    /// server's one-time setup secret; later ones get a line to give an
    /// operator, who adds them with `pouch admin add`.
    Init {
        /// Your name as an administrator (a-z, 0-9, '.', '-', '_'); events name you by it.
        #[arg(long)]
        name: String,
        /// The server's URL.
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        server: String,
        /// The server's trust anchor SHA-256 (as the server prints it); read
        /// from the data directory's tls-anchor.pem when absent.
        #[arg(long)]
        fingerprint: Option<String>,
        /// The server's data directory, on the server's machine (for the
        /// anchor and the setup secret).
        #[arg(long, default_value = "./pouch-data")]
        data_dir: PathBuf,
        /// The one-time setup secret file (first administrator only);
        /// default: admin-setup.token in the data directory, if present.
        #[arg(long)]
        setup_token_file: Option<PathBuf>,
        /// The role you will ask an operator for (shown in the line to give them).
        #[arg(long, default_value = "operator", value_parser = ["operator", "security", "auditor"])]
        role: String,
    },
    /// Add an administrator (operators): NAME with the key their `admin init` printed.
    Add {
        /// Their administrator name.
        name: String,
        /// operator (users, devices, administrators), security (events,
        /// alerts; reads accounts) or auditor (reads everything).
        #[arg(long, value_parser = ["operator", "security", "auditor"])]
        role: String,
        /// Their public key, as their `pouch admin init` printed it.
        #[arg(long)]
        key: String,
    },
    /// Remove an administrator (operators; not yourself).
    Remove {
        /// Their administrator name.
        name: String,
    },
    /// The administrators, their roles and key fingerprints.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register the security officer's key (security administrators), from
    /// the card their `pouch security init` wrote. Devices pin it; a change
    /// later needs every user's acceptance.
    SecurityOfficer {
        /// The officer's card (officer-card.json in their key home).
        card: PathBuf,
    },
    /// Federation with allied ministries' Pouch servers.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Resets and revocations waiting for a second administrator.
    Approvals {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Take a consistent copy of the server's database while it runs
    /// (operators; SQLite only — PostgreSQL has pg_dump).
    Backup {
        /// The file to write (must not exist; written 0600).
        file: PathBuf,
    },
    /// Approve (and so carry out) another administrator's request: a reset,
    /// a revocation, an operator added or removed.
    Approve {
        /// The request's id, as the requester or `pouch admin approvals` shows it.
        id: String,
        /// To add an operator: their key's fingerprint, as *they* read it to
        /// you from their `pouch admin init` (not as the requester did).
        #[arg(long)]
        fingerprint: Option<String>,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage devices (recorded as administrator actions).
    Device {
        #[command(subcommand)]
        command: AdminDeviceCommand,
    },
    /// The access-event record: export it for a SIEM, or verify its hash chain.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Alerts from the detection rules (the security team's stream).
    Alerts {
        /// Keep watching and print new alerts as they come.
        #[arg(long)]
        follow: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Devices past the key-rotation window.
    Devices {
        /// List the devices that have not refreshed their keys within the rotation window.
        #[arg(long, required = true)]
        stale: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Print this server's card: the `[[federation.peers]]` entry a
    /// partner's operator adds to their pouch.toml (domain, URL, TLS
    /// anchor, log key, witness key). Compare the anchor's SHA-256 with
    /// them by voice.
    Card {
        /// Print JSON instead of the config block.
        #[arg(long)]
        json: bool,
    },
    /// Each peer as this server sees it: last contact (and the last error),
    /// the size of its log this server's witness cosigned and how long ago,
    /// and how much of this server's log its witness cosigned.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Every event since T (RFC 3339 or Unix seconds), one JSON object per line.
    Export {
        /// jsonl (Pouch's own events) or ocsf (OCSF 1.x for a SIEM).
        #[arg(long, value_parser = ["jsonl", "ocsf"], default_value = "jsonl")]
        format: String,
        /// Only events from this time on (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
    },
    /// Walk the whole chain: every event present and unedited.
    Verify,
}

#[derive(Subcommand)]
enum AdminDeviceCommand {
    /// Revoke a device of a user; the user's devices are told and remove it.
    /// Waits for a second administrator's `pouch admin approve`.
    Revoke {
        /// The user's address.
        address: String,
        /// The device's id (as `pouch admin devices` or the user's `pouch device list` shows).
        device_id: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (or re-invite one) and print a one-time invite.
    Add {
        /// The user's address (NAME@DOMAIN).
        address: String,
        /// The user's display name.
        #[arg(long)]
        name: Option<String>,
        /// Invite lifetime in hours.
        #[arg(long, default_value_t = 72)]
        expires_hours: u64,
    },
    /// List users.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// All the user's devices are lost: revoke them all and issue a new invite
    /// (the account key changes; contacts are warned). Waits for a second
    /// administrator's `pouch admin approve`.
    Reset {
        /// The user's address.
        address: String,
    },
}

#[derive(Args)]
struct SendArgs {
    /// Recipients, comma-separated.
    #[arg(long, value_delimiter = ',')]
    to: Vec<String>,
    /// Copy recipients, comma-separated.
    #[arg(long, value_delimiter = ',')]
    cc: Vec<String>,
    /// The subject (a reply's defaults to "Re: " and the original's).
    #[arg(long)]
    subject: Option<String>,
    /// A file to attach (repeat for several).
    #[arg(long)]
    attach: Vec<PathBuf>,
    /// The body; read from standard input when absent.
    #[arg(long)]
    body: Option<String>,
    /// Send this complete RFC 5322 message as it is.
    #[arg(long, conflicts_with_all = ["to", "cc", "subject", "attach", "body", "reply_to", "label", "downgrade"])]
    eml: Option<PathBuf>,
    /// Answer message ID in its conversation.
    #[arg(long)]
    reply_to: Option<i64>,
    /// The classification label, as a marking (SECRET//REL TO CZE, SVK) or
    /// typed (SECRET REL:CZE,SVK); the label policy's default when absent.
    #[arg(long)]
    label: Option<String>,
    /// Send a reply with a lower label than what it answers, saying why
    /// (recorded for the security team).
    #[arg(long, value_name = "REASON")]
    downgrade: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode> {
    match cli.command {
        Command::Server(args) => {
            let given = Given {
                server: matches
                    .subcommand_matches("server")
                    .expect("the server command's matches"),
                top: matches,
            };
            server(args, cli.log_format, given)
        }
        Command::Admin(args) => admin(args),
        Command::Witness(args) => witness(args, &cli.log_format),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let shell = match shell.as_str() {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pouch", &mut out);
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot make {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
            outln!("manual pages written to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            invite,
            device_name,
        } => {
            let home = home(cli.home)?;
            let invite = Invite::decode(&invite)?;
            let passphrase = new_passphrase()?;
            let done = Device::enroll(&home, &passphrase, &invite, &device_name)?;
            outln!(
                "enrolled {} as device {} (ciphersuite 0x{:04x})",
                done.address,
                done.device_id,
                done.ciphersuite
            );
            outln!("state: {}", home.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Link {
            address,
            server,
            fingerprint,
            device_name,
            timeout_secs,
        } => {
            let home = home(cli.home)?;
            let address = Address::parse(&address)?;
            let passphrase = new_passphrase()?;
            let pending = Device::link_start(
                &home,
                &passphrase,
                &server,
                &fingerprint,
                &address,
                &device_name,
            )?;
            outln!("link code: {}", pending.code);
            outln!("this device's key fingerprint: {}", pending.key_fingerprint);
            outln!(
                "On a device already on {address}, run:  pouch device approve {}",
                pending.code
            );
            if let Ok(qr) = qrcode::QrCode::new(pending.code.as_bytes()) {
                outln!(
                    "{}",
                    qr.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                );
            }
            outln!(
                "waiting for approval (expires {})...",
                format_date(pending.expires_at)
            );
            std::io::stdout().flush()?;
            Device::link_wait(
                &home,
                &passphrase,
                std::time::Duration::from_secs(timeout_secs),
                Some(progress_bar()),
            )?;
            outln!("approved: this device is now part of {address}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Device { command } => device_command(cli.home, command),
        Command::Activity { json } => {
            let mut device = open(cli.home)?;
            let devices = device.device_list()?;
            let events = device.activity()?;
            if json {
                let events: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| serde_json::json!({ "seq": e.seq, "event": e.parsed() }))
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "devices": devices, "events": events })
                    )?
                );
            } else {
                outln!("devices:");
                for d in &devices {
                    outln!("  {}  {:<20} {}", d.device_id, d.name, d.state);
                }
                outln!("events:");
                for e in events.iter().filter_map(|e| e.parsed()) {
                    outln!(
                        "  {} {:<18} {:<7} device {:<32} from {:<15} {} item(s) {} B {}",
                        format_date(e.at),
                        e.action,
                        e.outcome,
                        e.device.map(|d| d.0).unwrap_or_else(|| "-".into()),
                        e.source.unwrap_or_else(|| "-".into()),
                        e.count,
                        e.bytes,
                        e.detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            command:
                LogCommand::Verify {
                    server,
                    fingerprint,
                    json,
                },
        } => {
            let mut bar = progress_bar();
            let report = pouch_client::transparency::audit(&server, &fingerprint, &mut |d, t| {
                bar("verifying log", d, t)
            })?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                outln!(
                    "log {}: {} entries, {} accounts",
                    report.origin,
                    report.size,
                    report.accounts
                );
                for p in &report.problems {
                    outln!("PROBLEM: {p}");
                }
                if report.problems.is_empty() {
                    outln!(
                        "ok: checkpoint signed, every entry signed by its account, chains intact, tree matches"
                    );
                }
            }
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Security { command } => security(command, cli.home),
        Command::TrustAnchor { command } => {
            let home = home(cli.home)?;
            match command {
                TrustAnchorCommand::Show => {
                    let device = open(Some(home))?;
                    let (current, previous) = device.trust_anchor()?;
                    outln!("trust anchor SHA-256: {current}");
                    if let Some(previous) = previous {
                        outln!("replaced: {previous}");
                    }
                }
                TrustAnchorCommand::Accept { fingerprint } => {
                    if !pouch_client::local::LocalStore::exists(&home) {
                        return Err(pouch_client::ClientError::NotEnrolled(
                            home.display().to_string(),
                        )
                        .into());
                    }
                    let pass = passphrase("Passphrase for this device: ")?;
                    let old = Device::accept_trust_anchor(&home, &pass, &fingerprint)?;
                    outln!(
                        "this device now trusts the anchor {} (was {old})",
                        fingerprint.trim().to_ascii_lowercase()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            address,
            accept,
            json,
        } => {
            let mut device = open(cli.home)?;
            let address = Address::parse(&address)?;
            let report = if accept {
                device.accept_account_key(&address)?
            } else {
                device.verify(&address)?
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                outln!("{}", report.address);
                outln!("account key:      {}", report.account_key_fingerprint);
                if report.key_changed && !accept {
                    outln!(
                        "WARNING: the account key CHANGED; you had {}",
                        report.pinned_fingerprint.clone().unwrap_or_default()
                    );
                    outln!(
                        "         confirm with the person (compare the code below), then: pouch verify {} --accept",
                        report.address
                    );
                }
                if accept {
                    outln!(
                        "accepted: mail to {} will be encrypted to this account key",
                        report.address
                    );
                }
                outln!("comparison code:  {}", report.comparison_code);
                outln!("device list version {}:", report.version);
                for d in &report.devices {
                    let name = if d.name.is_empty() {
                        "(name sealed to the account)"
                    } else {
                        d.name.as_str()
                    };
                    outln!(
                        "  {}  {}  added {}",
                        d.device_id,
                        name,
                        format_date(d.added_at)
                    );
                }
                outln!("history:");
                for h in &report.history {
                    outln!(
                        "  v{} {} {} device(s) key {}",
                        h.version,
                        h.reason,
                        h.devices,
                        h.account_key_fingerprint
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send(cli.home, args),
        Command::Bridge {
            imap,
            smtp,
            show_password,
            allow_non_loopback,
            sync_secs,
            tls,
        } => {
            if show_password {
                let device = open(cli.home)?;
                outln!("{}", device.bridge_password()?.as_str());
                return Ok(ExitCode::SUCCESS);
            }
            let home = home(cli.home)?;
            if !pouch_client::local::LocalStore::exists(&home) {
                return Err(
                    pouch_client::ClientError::NotEnrolled(home.display().to_string()).into(),
                );
            }
            let pass = passphrase("Passphrase: ")?;
            let certificate = match tls {
                pouch_bridge::tls::TlsMode::None => None,
                _ => Some(pouch_bridge::tls::load_or_create(&home).map_err(|e| anyhow!(e))?),
            };
            let shared = pouch_bridge::Shared::start(move || {
                let device = Device::open(&home, &pass)?;
                device.bridge_password()?;
                Ok(device)
            })?;
            let address = shared.address.clone();
            let config = pouch_bridge::BridgeConfig {
                imap,
                smtp,
                allow_non_loopback,
                sync_every: std::time::Duration::from_secs(sync_secs.max(1)),
                tls,
                certificate: certificate.as_ref().map(|c| c.config.clone()),
            };
            let security = match tls {
                pouch_bridge::tls::TlsMode::None => "none (this machine only)",
                pouch_bridge::tls::TlsMode::StartTls => "STARTTLS",
                pouch_bridge::tls::TlsMode::Implicit => "SSL/TLS",
            };
            init_logging(&cli.log_format, "pouch_bridge=info");
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let (imap_listener, smtp_listener) = pouch_bridge::bind(&config).await?;
                let imap_at = imap_listener.local_addr()?;
                let bound = smtp_listener.local_addr()?;
                shared.with(|d| d.refresh_mailboxes()).await?;
                outln!("Pouch bridge for {address}");
                outln!("Mail client settings:");
                outln!(
                    "  incoming: IMAP server {}  port {}  security: {security}",
                    imap_at.ip(),
                    imap_at.port()
                );
                outln!(
                    "  outgoing: SMTP server {}  port {}  security: {security}",
                    bound.ip(),
                    bound.port()
                );
                if let Some(c) = &certificate {
                    outln!(
                        "  certificate to trust in the mail client: {}",
                        c.cert_path.display()
                    );
                }
                outln!("  user name: {address}");
                outln!("  password: the bridge password (pouch bridge --show-password)");
                outln!("IMAP listening on {imap_at}");
                outln!("SMTP listening on {bound}");
                std::io::stdout().flush()?;
                pouch_bridge::serve(shared, imap_listener, smtp_listener, config).await;
                Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
            })
        }
        Command::Outbox { json } => {
            let waiting = open(cli.home)?.outbox_list()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&waiting)?);
            } else if waiting.is_empty() {
                outln!("the outbox is empty");
            } else {
                for w in waiting {
                    let to: Vec<&str> = w.to.iter().map(|a| a.as_str()).collect();
                    outln!(
                        "{:>4}  {}  to {:<30} {}  ({} attempt(s){})",
                        w.id,
                        format_date(w.queued_at),
                        to.join(", "),
                        w.subject,
                        w.attempts,
                        w.last_error
                            .map(|e| format!("; last: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { json } => {
            let mut device = open(cli.home)?;
            show_progress_on_terminal(&mut device);
            // What waits in the outbox goes first (in order, before new mail is read).
            let drained = device.send_waiting()?;
            for reason in &drained.bounced {
                eprintln!(
                    "warning: a waiting mail could not be sent and was taken out: {reason} (a notice in your inbox says which)"
                );
            }
            if drained.waiting > 0 {
                eprintln!(
                    "{} mail(s) still wait in the outbox: {}",
                    drained.waiting,
                    drained.waiting_because.as_deref().unwrap_or("not due yet")
                );
            }
            let report = device.sync()?;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["outbox"] = serde_json::to_value(&drained)?;
                outln!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                if !drained.sent.is_empty() {
                    outln!("{} waiting mail(s) sent", drained.sent.len());
                }
                outln!(
                    "{} new message(s), {} conversation(s) joined, {} key change(s)",
                    report.new_messages.len(),
                    report.joined_conversations,
                    report.commits
                );
            }
            for (seq, reason) in &report.rejected {
                eprintln!("warning: rejected queue item {seq}: {reason}");
            }
            for alert in report.alerts.iter().chain(report.security_alerts.iter()) {
                eprintln!("ALERT: {alert}");
            }
            // A rejected item or an alert is a security signal: scripts see it in the exit status.
            Ok(
                if report.rejected.is_empty()
                    && report.alerts.is_empty()
                    && report.security_alerts.is_empty()
                {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                },
            )
        }
        Command::Bench {
            workload: Some(_),
            messages,
            runs,
            variants,
            no_compare,
            sync_secs,
            postgres,
            labels,
            ..
        } => {
            let variants = variants
                .iter()
                .map(|v| match v.as_str() {
                    "new" => Ok(crate::workload::Variant::NewConversations),
                    "replies" => Ok(crate::workload::Variant::Replies),
                    other => Err(anyhow::anyhow!(
                        "unknown variant '{other}': use new, replies or new,replies"
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            // The bridges' warnings (a mail postponed, a check that failed)
            // explain a slow run; the server's own log is kept quiet.
            init_logging(&cli.log_format, "pouch_bridge=info,pouch_server=error");
            crate::workload::run(crate::workload::WorkloadArgs {
                mails: messages,
                runs,
                variants,
                postgres,
                sync_secs,
                compare: !no_compare,
                labels,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            federation: Some(samples),
            messages,
            size,
            ..
        } => {
            init_logging(&cli.log_format, "pouch_server=error");
            crate::bench::federation(messages, size, samples)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            circular: Some(n),
            postgres,
            size,
            ..
        } => {
            crate::bench::circular(postgres, n, size)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            bridge_mails: Some(n),
            size,
            ..
        } => {
            crate::bench::bridge(n, size)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            guard: Some(file),
            guard_record,
            ..
        } => {
            crate::bench::guard(&file, guard_record)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            postgres,
            log: true,
            log_store_entries,
            ..
        } => {
            crate::bench::log(postgres, log_store_entries)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            postgres,
            recipients,
            messages,
            size,
            attachment_mib,
            ..
        } => {
            crate::bench::run(crate::bench::BenchArgs {
                postgres,
                recipients,
                messages,
                size,
                attachment_mib,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inbox { json } => {
            let device = open(cli.home)?;
            list(&device, device.inbox()?, json, Person::Sender)
        }
        Command::Search { query, label, json } => {
            let mut device = open(cli.home)?;
            let found = match label {
                Some(label) => device.search_labelled(&query, &label)?,
                None => device.search(&query)?,
            };
            list(&device, found, json, Person::Sender)
        }
        Command::Sent { json } => {
            let device = open(cli.home)?;
            list(&device, device.sent()?, json, Person::Recipients)
        }
        Command::Read {
            id,
            raw,
            json,
            save_attachments,
        } => {
            let device = open(cli.home)?;
            if let Some(dir) = save_attachments {
                let saved = save_attachments_of(&device, id, &dir)?;
                if json {
                    outln!("{}", serde_json::to_string_pretty(&saved)?);
                } else if saved.is_empty() {
                    outln!("message {id} has no attachments");
                }
                for a in saved.iter().filter(|_| !json) {
                    outln!("saved {} ({} bytes)", a.path.display(), a.size);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            if raw {
                device.write_raw(id, &mut out, None)?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let bytes = device.head(id)?;
            if json {
                let s = device.summary(id)?;
                let body = body_text(&bytes);
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "message": s, "body": body })
                    )?
                )?;
            } else {
                let s = device.summary(id)?;
                writeln!(out, "From:    {}", s.from)?;
                writeln!(out, "To:      {}", s.to.join(", "))?;
                if !s.cc.is_empty() {
                    writeln!(out, "Cc:      {}", s.cc.join(", "))?;
                }
                if let Some(marking) = &s.marking {
                    let colours = s.label.as_deref().and_then(|x| device.label_colours(x));
                    writeln!(out, "Label:   {}", marking_for_terminal(marking, colours))?;
                }
                writeln!(out, "Subject: {}", s.subject)?;
                writeln!(out, "Date:    {}", format_date(s.date))?;
                for a in &s.attachments {
                    writeln!(out, "Attachment: {a}")?;
                }
                writeln!(out)?;
                writeln!(out, "{}", body_text(&bytes))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(serde::Serialize)]
struct SavedAttachment {
    /// The name the sender gave, as it was.
    name: String,
    path: PathBuf,
    size: usize,
}

/// `pouch read ID --save-attachments DIR`: each attachment into its own new
/// file. The names come from the sender, so they are made safe: only the
/// last path component, no control characters or leading dots, at most
/// 200 bytes; and an existing file is never overwritten ("name (2).pdf").
fn save_attachments_of(device: &Device, id: i64, dir: &Path) -> Result<Vec<SavedAttachment>> {
    let raw = device.raw(id)?;
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .ok_or_else(|| anyhow!("message {id} cannot be parsed as mail; see it with --raw"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let mut saved = Vec::new();
    for (n, part) in message.attachments().enumerate() {
        let given = part.attachment_name().unwrap_or("").to_string();
        let name = safe_file_name(&given).unwrap_or_else(|| format!("attachment-{}", n + 1));
        let contents = part.contents();
        let path = create_new_file(dir, &name, contents)?;
        saved.push(SavedAttachment {
            name: given,
            path,
            size: contents.len(),
        });
    }
    Ok(saved)
}

/// A sender's attachment name as a file name that stays in the directory.
fn safe_file_name(given: &str) -> Option<String> {
    let last = given.rsplit(['/', '\\']).next().unwrap_or("");
    // Format characters (a right-to-left override turns "invoice\u{202e}fdp.exe"
    // into what reads as a PDF) go; control characters become '_'.
    let format_char = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{00ad}');
    let cleaned: String = last
        .chars()
        .filter(|c| !format_char(*c))
        .map(|c| if c.is_control() || c == ':' { '_' } else { c })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        return None;
    }
    if cleaned.len() <= 200 {
        return Some(cleaned.to_string());
    }
    // Too long: cut the stem, keep a short extension.
    let (stem, ext) = match cleaned.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, format!(".{ext}")),
        _ => (cleaned, String::new()),
    };
    let mut end = (200 - ext.len()).min(stem.len());
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{ext}", stem[..end].trim_end()))
}

/// Writes `contents` to a file in `dir` that did not exist before: `name`,
/// else `stem (2).ext`, `stem (3).ext`…
fn create_new_file(dir: &Path, name: &str, contents: &[u8]) -> Result<PathBuf> {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    for n in 1..1000 {
        let candidate = if n == 1 {
            dir.join(name)
        } else {
            dir.join(format!("{stem} ({n}){ext}"))
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&candidate)
        {
            Ok(mut f) => {
                f.write_all(contents)
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("cannot write {}", candidate.display()))?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(anyhow!("cannot create {}: {e}", candidate.display()));
            }
        }
    }
    bail!(
        "{} already holds 999 files named like {name}; save into another directory",
        dir.display()
    )
}

/// The first text part; `--raw` gives everything.
fn body_text(raw: &[u8]) -> String {
    mail_parser::MessageParser::default()
        .parse(raw)
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default()
}

fn format_date(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

/// Whom a listing names beside each mail: who sent it (inbox, search), or
/// whom it went to (sent mail, where the sender is always you).
#[derive(Clone, Copy)]
enum Person {
    Sender,
    Recipients,
}

/// "bob@x" for one recipient, "bob@x +2" for three.
fn recipients_column(m: &MessageSummary) -> String {
    let mut all = m.to.iter().chain(&m.cc);
    match (all.next(), m.to.len() + m.cc.len()) {
        (None, _) => "(no recipient)".into(),
        (Some(first), 1) => format!("to {first}"),
        (Some(first), n) => format!("to {first} +{}", n - 1),
    }
}

/// A label's marking, in reverse video when standard output is a terminal
/// (colour is a hint; the words are what count). The marking is the
/// policy's text, stripped of control characters all the same.
fn marking_for_terminal(marking: &str, colours: Option<(String, String)>) -> String {
    use std::io::IsTerminal;
    let clean: String = marking.chars().filter(|c| !c.is_control()).collect();
    if !std::io::stdout().is_terminal() {
        return clean;
    }
    let rgb = |hex: &str| -> Option<String> {
        let v = u32::from_str_radix(hex.strip_prefix('#')?, 16).ok()?;
        Some(format!("{};{};{}", v >> 16, (v >> 8) & 0xff, v & 0xff))
    };
    match colours.and_then(|(fg, bg)| Some((rgb(&fg)?, rgb(&bg)?))) {
        Some((fg, bg)) => format!("\x1b[38;2;{fg}m\x1b[48;2;{bg}m{clean}\x1b[0m"),
        None => format!("\x1b[7m{clean}\x1b[0m"),
    }
}

fn list(
    device: &Device,
    messages: Vec<MessageSummary>,
    json: bool,
    person: Person,
) -> Result<ExitCode> {
    let colours_of = |m: &MessageSummary| m.label.as_deref().and_then(|x| device.label_colours(x));
    if json {
        outln!("{}", serde_json::to_string_pretty(&messages)?);
    } else if messages.is_empty() {
        outln!("(no messages)");
    } else {
        for m in messages {
            let clip = if m.attachments.is_empty() { " " } else { "@" };
            let who = match person {
                Person::Sender => m.from.clone(),
                Person::Recipients => recipients_column(&m),
            };
            let marking = m
                .marking
                .as_deref()
                .map(|l| {
                    let colours = colours_of(&m);
                    format!("{} ", marking_for_terminal(&format!("[{l}]"), colours))
                })
                .unwrap_or_default();
            outln!(
                "{:>5} {} {} {:<28} {marking}{}",
                m.id,
                format_date(m.date),
                clip,
                who,
                m.subject
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn send(home_arg: Option<PathBuf>, args: SendArgs) -> Result<ExitCode> {
    let mut device = open(home_arg)?;
    show_progress_on_terminal(&mut device);
    let submitted = if let Some(path) = args.eml {
        if !path.is_file() {
            bail!("{} does not exist or is not a file", path.display());
        }
        device.send_eml_or_keep(&path)?
    } else {
        let parse_all = |list: &[String]| -> Result<Vec<Address>> {
            list.iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| Address::parse(s).map_err(|e| anyhow!(e)))
                .collect()
        };
        let to = parse_all(&args.to)?;
        let cc = parse_all(&args.cc)?;
        if to.is_empty() && cc.is_empty() {
            bail!("name at least one recipient with --to ADDRESS");
        }
        if args.subject.is_none() && args.reply_to.is_none() {
            bail!("give a --subject (or --reply-to ID to answer a message)");
        }
        let body = match args.body {
            Some(b) => b,
            None => {
                let mut b = String::new();
                std::io::stdin()
                    .read_to_string(&mut b)
                    .context("cannot read the body from standard input")?;
                b
            }
        };
        let attachments = args
            .attach
            .iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "attachment".into());
                if !p.is_file() {
                    bail!("attachment {} does not exist or is not a file", p.display());
                }
                Ok((name, p.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        device.send_or_keep(Compose {
            to,
            cc,
            subject: args.subject.unwrap_or_default(),
            body,
            attachments,
            reply_to: args.reply_to,
            label: args.label,
            downgrade: args.downgrade,
            ..Default::default()
        })?
    };
    let sent = match submitted {
        pouch_client::Submitted::Sent(sent) => sent,
        pouch_client::Submitted::Kept {
            message_id,
            reason,
            waiting,
        } => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "kept": true,
                        "message_id": message_id,
                        "waiting": waiting,
                        "reason": reason,
                    }))?
                );
            } else {
                outln!(
                    "kept in the outbox ({waiting} waiting): {reason}; the next 'pouch sync' (or the bridge) sends it"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    for w in &sent.warnings {
        eprintln!("{w}");
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&sent)?);
    } else {
        outln!(
            "sent message {} ({}) to {} device(s)",
            sent.id,
            sent.message_id,
            sent.recipient_devices
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn device_command(home_arg: Option<PathBuf>, command: DeviceCommand) -> Result<ExitCode> {
    let mut device = open(home_arg)?;
    match command {
        DeviceCommand::List { json } => {
            let list = device.device_list()?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for d in list {
                    let me = if d.this_device { " (this device)" } else { "" };
                    outln!(
                        "{}  {:<20} {:<24} {}{me}",
                        d.device_id,
                        d.name,
                        d.state,
                        d.fingerprint
                    );
                }
            }
        }
        DeviceCommand::Approve {
            code,
            with_history,
            yes,
        } => {
            let info = device.link_request(&code)?;
            eprintln!("New device asking to join {}:", info.address);
            eprintln!("  name:        {}", info.device_name);
            eprintln!(
                "  key:         {}",
                pouch_proto::devices::fingerprint(&info.signature_key)
            );
            eprintln!("  from:        {}", info.source);
            eprintln!("  asked at:    {}", format_date(info.created_at));
            if !yes {
                eprint!("Approve it? Type 'yes': ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    bail!(
                        "not approved; nothing changed (use 'pouch device deny {}' to refuse it)",
                        info.code
                    );
                }
            }
            if with_history {
                device.set_progress(progress_bar());
            }
            let commits = device.approve(&info, with_history)?;
            outln!(
                "approved '{}'; added to {commits} conversation change(s)",
                info.device_name
            );
        }
        DeviceCommand::Deny { code } => {
            let info = device.deny(&code)?;
            outln!("denied '{}' ({})", info.device_name, info.device_id);
        }
        DeviceCommand::Revoke { device_id } => {
            let commits = device.revoke(&pouch_proto::DeviceId(device_id.clone()))?;
            outln!("revoked {device_id}; removed from conversations in {commits} commit(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Large attachments and long history transfers show a progress bar when
/// someone watches (standard error is a terminal); scripts and logs get none.
fn show_progress_on_terminal(device: &mut Device) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        device.set_progress(progress_bar());
    }
}

/// A progress bar on stderr for long transfers (history, large mail).
fn progress_bar() -> pouch_client::Progress {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>18} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    Box::new(move |what: &str, done: u64, total: u64| {
        bar.set_message(what.to_string());
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    })
}

fn home(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = arg {
        return Ok(h);
    }
    directories::ProjectDirs::from("", "", "pouch")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| anyhow!("cannot find a data directory: pass --home DIR or set POUCH_HOME"))
}

fn passphrase(prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var("POUCH_PASSPHRASE") {
        return Ok(p);
    }
    rpassword::prompt_password(prompt).map_err(|_| anyhow!(pouch_client::ClientError::NoPassphrase))
}

fn new_passphrase() -> Result<String> {
    let first = passphrase("New passphrase for this device: ")?;
    if first.len() < 8 {
        bail!("the passphrase must have at least 8 characters");
    }
    if std::env::var("POUCH_PASSPHRASE").is_err() && passphrase("Repeat it: ")? != first {
        bail!("the passphrases differ; nothing was created");
    }
    Ok(first)
}

fn open(home_arg: Option<PathBuf>) -> Result<Device> {
    let home = home(home_arg)?;
    if !pouch_client::local::LocalStore::exists(&home) {
        return Err(pouch_client::ClientError::NotEnrolled(home.display().to_string()).into());
    }
    Ok(Device::open(&home, &passphrase("Passphrase: ")?)?)
}

// ---------- server ----------

/// The log on standard error, filtered by RUST_LOG (else `default_filter`):
/// text, coloured only when standard error is a terminal (no escape codes
/// in files), or JSON, one object per line with the fields as plain values.
fn init_logging(format: &str, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// The names the server's own certificate covers besides localhost and
/// loopback: `--tls-name`, and the address it listens on when that is one
/// particular address.
fn tls_names(args: &ServerArgs) -> Vec<String> {
    let mut names = args.tls_names.clone();
    if let Ok(addr) = args.listen.parse::<std::net::SocketAddr>()
        && !addr.ip().is_unspecified()
        && !addr.ip().is_loopback()
    {
        names.push(addr.ip().to_string());
    }
    names
}

/// Which settings the command line (or the environment) gave: those win
/// over the config file, which wins over the flags' defaults.
struct Given<'a> {
    top: &'a clap::ArgMatches,
    server: &'a clap::ArgMatches,
}

impl Given<'_> {
    fn source(&self, id: &str) -> &'static str {
        use clap::parser::ValueSource;
        let source = if id == "log_format" {
            self.top.value_source(id)
        } else {
            self.server.value_source(id)
        };
        match source {
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        }
    }

    fn by_user(&self, id: &str) -> bool {
        self.source(id) != "default"
    }
}

/// What the config file adds to `pouch server`'s flags.
struct MergedConfig {
    policy: pouch_server::config::Policy,
    federation: pouch_server::config::FederationSettings,
    /// The file read, if one was.
    path: Option<PathBuf>,
    /// Where each setting came from, for `--check`.
    sources: std::collections::BTreeMap<&'static str, &'static str>,
}

/// Reads the config file and fills every server setting the command line
/// left at its default from it. Returns the policy and federation, the file
/// read (if any), and where each setting came from.
fn merge_config_file(
    args: &mut ServerArgs,
    log_format: &mut String,
    given: &Given,
) -> Result<MergedConfig> {
    use pouch_server::config::ConfigFile;
    let (path, explicit) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (args.data_dir.join("pouch.toml"), false),
    };
    let file = ConfigFile::load(&path, explicit).map_err(|e| anyhow!(e))?;
    // A policy left in the data directory is not read when another file
    // is named: refused rather than silently dropped (an upgrade from the
    // package that kept its policy there).
    if explicit {
        let data_dir = file
            .server
            .data_dir
            .clone()
            .unwrap_or(args.data_dir.clone());
        let beside = data_dir.join("pouch.toml");
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if beside.exists() && !same(&beside, &path) {
            bail!(
                "{} would not be read (the server reads {}): move its settings into that file and remove it",
                beside.display(),
                path.display()
            );
        }
    }
    let found = explicit || path.exists();
    let mut sources = std::collections::BTreeMap::new();
    let settings = file.server.clone();
    if !explicit
        && let Some(dir) = &settings.data_dir
        && dir != &args.data_dir
    {
        bail!(
            "{}: server.data_dir names {} but the file was found in the data directory {}; remove the key or start with --config {}",
            path.display(),
            dir.display(),
            args.data_dir.display(),
            path.display()
        );
    }
    // One line per setting: the flag's id, the file's key and the field.
    macro_rules! take {
        ($id:literal, $key:ident, $apply:expr) => {{
            let source = given.source($id);
            if !given.by_user($id)
                && let Some(value) = settings.$key.clone()
            {
                #[allow(clippy::redundant_closure_call)]
                ($apply)(value);
                sources.insert(stringify!($key), "config file");
            } else {
                sources.insert(stringify!($key), source);
            }
        }};
    }
    take!("listen", listen, |v| args.listen = v);
    take!("data_dir", data_dir, |v| args.data_dir = v);
    take!("database_url", database_url, |v| args.database_url =
        Some(v));
    take!("domain", domain, |v| args.domain = v);
    take!("tls_cert", tls_cert, |v| args.tls_cert = Some(v));
    take!("tls_key", tls_key, |v| args.tls_key = Some(v));
    take!("tls_ca", tls_ca, |v| args.tls_ca = Some(v));
    take!("tls_names", tls_name, |v| args.tls_names = v);
    take!("ciphersuite", ciphersuite, |v| args.ciphersuite = v);
    take!("rotation_hours", rotation_hours, |v| args.rotation_hours =
        v);
    take!("link_ttl_secs", link_ttl_secs, |v| args.link_ttl_secs = v);
    take!("token_ttl_secs", token_ttl_secs, |v| args.token_ttl_secs =
        v);
    take!("max_queue_mib", max_queue_mib, |v| args.max_queue_mib = v);
    take!("max_blob_mib", max_blob_mib, |v| args.max_blob_mib = v);
    take!("max_connections", max_connections, |v| args
        .max_connections =
        v);
    take!(
        "max_connections_per_source",
        max_connections_per_source,
        |v| args.max_connections_per_source = v
    );
    take!("witness", witness, |v| args.witness = v);
    take!("log_format", log_format, |v| *log_format = v);
    // What clap checks between flags, checked again once the file is in.
    let origin = |key: &str| {
        if sources.get(key) == Some(&"config file") {
            format!("server.{key} in {}", path.display())
        } else {
            format!("--{}", key.replace('_', "-"))
        }
    };
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        bail!(
            "{} needs {} too: give the certificate chain and its private key together",
            origin(if args.tls_cert.is_some() {
                "tls_cert"
            } else {
                "tls_key"
            }),
            if args.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            }
        );
    }
    if args.tls_ca.is_some() && args.tls_cert.is_none() {
        bail!(
            "{} needs tls_cert and tls_key: the CA is the anchor of a certificate you give",
            origin("tls_ca")
        );
    }
    if args.tls_cert.is_some() && !args.tls_names.is_empty() {
        bail!(
            "{} is for the certificate the server issues itself; with tls_cert, put the names in your certificate",
            origin("tls_name")
        );
    }
    if args.restore.is_some() && args.database_url.is_some() {
        bail!(
            "--restore is for the embedded database; on PostgreSQL restore with pg_restore (database_url is set by {})",
            origin("database_url")
        );
    }
    Ok(MergedConfig {
        policy: file.policy(),
        federation: file.federation.clone(),
        path: found.then_some(path),
        sources,
    })
}

/// `pouch server --check`: the settings in effect as a config file would
/// hold them, each with where it came from. A database URL's password is
/// not printed.
fn print_settings(
    args: &ServerArgs,
    log_format: &str,
    file: Option<&Path>,
    sources: &std::collections::BTreeMap<&'static str, &'static str>,
) {
    fn quoted(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }
    fn list(items: &[String]) -> String {
        let items: Vec<String> = items.iter().map(|s| quoted(s)).collect();
        format!("[{}]", items.join(", "))
    }
    let path = |p: &Option<PathBuf>| match p {
        Some(p) => quoted(&p.display().to_string()),
        None => "(unset)".to_string(),
    };
    let database_url = match &args.database_url {
        Some(url) => quoted(&redact_password(url)),
        None => "(unset: embedded SQLite in data_dir)".to_string(),
    };
    let lines: Vec<(&str, String)> = vec![
        ("listen", quoted(&args.listen)),
        ("data_dir", quoted(&args.data_dir.display().to_string())),
        ("database_url", database_url),
        ("domain", quoted(&args.domain)),
        ("tls_cert", path(&args.tls_cert)),
        ("tls_key", path(&args.tls_key)),
        ("tls_ca", path(&args.tls_ca)),
        ("tls_name", list(&args.tls_names)),
        ("ciphersuite", quoted(&args.ciphersuite)),
        ("rotation_hours", format!("{:?}", args.rotation_hours)),
        ("link_ttl_secs", args.link_ttl_secs.to_string()),
        ("token_ttl_secs", args.token_ttl_secs.to_string()),
        ("max_queue_mib", args.max_queue_mib.to_string()),
        ("max_blob_mib", args.max_blob_mib.to_string()),
        ("max_connections", args.max_connections.to_string()),
        (
            "max_connections_per_source",
            args.max_connections_per_source.to_string(),
        ),
        ("witness", list(&args.witness)),
        ("log_format", quoted(log_format)),
    ];
    match file {
        Some(f) => outln!("# config file: {}", f.display()),
        None => outln!("# no config file (defaults and flags only)"),
    }
    outln!("[server]");
    for (key, value) in lines {
        let from = sources.get(key).copied().unwrap_or("default");
        outln!("{key} = {value}  # {from}");
    }
}

/// postgres://user:secret@host/db → postgres://user:***@host/db; a
/// `password=` query parameter too.
fn redact_password(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_string(),
    };
    let url = url.as_str();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

fn server(mut args: ServerArgs, mut log_format: String, given: Given) -> Result<ExitCode> {
    let MergedConfig {
        policy,
        federation,
        path: config_file,
        sources,
    } = merge_config_file(&mut args, &mut log_format, &given)?;
    if args.check {
        print_settings(&args, &log_format, config_file.as_deref(), &sources);
        return Ok(ExitCode::SUCCESS);
    }
    init_logging(&log_format, "info");
    let suite = u16::from_str_radix(args.ciphersuite.trim_start_matches("0x"), 16)
        .map_err(|_| anyhow!("--ciphersuite takes a hex code point such as 004D"))?;
    if !matches!(suite, 0x004D | 0x004F) {
        bail!(
            "ciphersuite {:#06x} is not offered: use 004D (X-Wing) or 004F (ML-KEM768+X25519)",
            suite
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    if let Some(backup) = &args.restore {
        restore_backup(backup, &args.data_dir)?;
    }
    rt.block_on(async move {
        let sqlite_file = args.data_dir.join("pouch.db");
        pouch_server::secure_data_dir(
            &args.data_dir,
            args.database_url.is_none().then_some(sqlite_file.as_path()),
        )
        .with_context(|| format!("cannot prepare data directory {}", args.data_dir.display()))?;
        let store: Arc<dyn pouch_store::Store> = match &args.database_url {
            Some(url) => Arc::new(pouch_store_sql::SqlStore::connect(url).await?),
            None => Arc::new(
                pouch_store_sql::SqlStore::open_sqlite(&args.data_dir.join("pouch.db")).await?,
            ),
        };
        let config = pouch_server::ServerConfig {
            policy,
            federation,
            data_dir: args.data_dir.clone(),
            domain: args.domain.clone(),
            tls: pouch_server::tls::TlsSettings {
                cert: args.tls_cert.clone(),
                key: args.tls_key.clone(),
                ca: args.tls_ca.clone(),
                names: tls_names(&args),
                rotate_anchor: args.rotate_anchor,
            },
            ciphersuite: suite,
            rotation_secs: (args.rotation_hours * 3600.0).round().max(1.0) as u64,
            link_ttl_secs: args.link_ttl_secs,
            token_ttl_secs: args.token_ttl_secs,
            connections: pouch_server::conncap::ConnectionLimits {
                total: args.max_connections,
                per_source: args.max_connections_per_source,
            },
            limits: pouch_server::Limits {
                queue_bytes: args.max_queue_mib << 20,
                blob_bytes: args.max_blob_mib << 20,
                ..Default::default()
            },
            witnesses: args
                .witness
                .iter()
                .map(|w| {
                    let (url, vkey) = w
                        .split_once('=')
                        .ok_or_else(|| anyhow!("--witness takes URL=VERIFIER-KEY (got {w})"))?;
                    pouch_log::witness::WitnessVerifier::parse(vkey)
                        .map_err(|e| anyhow!("--witness {url}: {e}"))?;
                    Ok(pouch_server::service::log::WitnessConfig {
                        url: url.to_string(),
                        vkey: vkey.to_string(),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let prepared = pouch_server::prepare(&config, store).await?;
        let listener = std::net::TcpListener::bind(&args.listen).with_context(|| {
            format!(
                "cannot listen on {}: is another server running there?",
                args.listen
            )
        })?;
        let addr = listener.local_addr()?;
        outln!(
            "Pouch server for @{} listening on https://{addr}",
            prepared.state.domain
        );
        outln!(
            "trust anchor SHA-256 fingerprint: {}",
            prepared.tls.anchor_fingerprint
        );
        if let Some(fed) = &prepared.state.federation {
            outln!(
                "federation listening on https://{} ({} peer{}: {})",
                fed.addr,
                fed.peers.len(),
                if fed.peers.len() == 1 { "" } else { "s" },
                if fed.peers.is_empty() {
                    "none yet; give partners 'pouch admin federation card'".to_string()
                } else {
                    fed.peers
                        .iter()
                        .map(|p| p.domain.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        if !prepared.tls.serving_names.is_empty() {
            let days = prepared
                .tls
                .serving_until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
                .as_secs()
                / 86_400;
            outln!(
                "serving certificate for {} (renewed automatically; {days} days left)",
                prepared.tls.serving_names.join(", ")
            );
        }
        if let Some(change) = &prepared.anchor_change {
            outln!(
                "trust anchor changed: {} replaced {}, which cross-signed it; devices move to it as they connect (new invites carry it)",
                change.new,
                change.previous
            );
        }
        for warning in &prepared.tls.warnings {
            eprintln!("warning: {warning}");
        }
        match (&prepared.admin_setup_created, prepared.admin_setup_pending) {
            (Some(p), _) => outln!(
                "one-time administrator setup secret written to {} (the first 'pouch admin' command on this machine uses it)",
                p.display()
            ),
            (None, true) => outln!(
                "no administrator yet: the setup secret is in {} on the node that first started",
                prepared.admin_setup_path.display()
            ),
            (None, false) => {}
        }
        outln!(
            "storage: {}",
            if args.database_url.is_some() {
                "PostgreSQL"
            } else {
                "SQLite (embedded)"
            }
        );
        std::io::stdout().flush()?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        pouch_server::serve(&prepared, listener, shutdown).await?;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

/// A federation card as the `[[federation.peers]]` block of `pouch.toml`.
fn federation_card_block(card: &pouch_proto::api::FederationCard) -> String {
    // Every value is quoted by TOML's own rules (serialised, not pasted).
    let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
    format!(
        "# Pouch federation card of @{domain}: give it to the partner's operator, who adds it\n\
         # to their pouch.toml and restarts. Compare the TLS anchor's SHA-256 by voice:\n\
         # {sha}\n\
         [[federation.peers]]\n\
         domain = {d}\n\
         url = {u}\n\
         tls_anchor = {a}\n\
         log_key = {l}\n\
         witness_key = {w}",
        domain = card.domain,
        sha = card.tls_anchor_sha256,
        d = quoted(&card.domain),
        u = quoted(&card.url),
        a = quoted(&card.tls_anchor),
        l = quoted(&card.log_key),
        w = quoted(&card.witness_key),
    )
}

/// A label policy file, read and checked.
fn label_policy(path: &Path) -> Result<pouch_label::LabelPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the label policy {}", path.display()))?;
    pouch_label::LabelPolicy::from_toml(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The security officer's key home: the one given, else the user's data directory's.
fn officer_home_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(h) => Ok(h),
        None => directories::ProjectDirs::from("", "", "pouch")
            .map(|d| d.data_dir().join("officer"))
            .ok_or_else(|| anyhow!("cannot find a data directory: pass --officer-home DIR")),
    }
}

/// Opens the officer's key (passphrase: POUCH_OFFICER_PASSPHRASE, else asked).
fn open_officer(args: OfficerArgs) -> Result<pouch_client::officer::OfficerIdentity> {
    let home = officer_home_dir(args.officer_home)?;
    let pass = match std::env::var("POUCH_OFFICER_PASSPHRASE") {
        Ok(p) => p,
        Err(_) => rpassword::prompt_password("Passphrase for the security officer's key: ")
            .map_err(|_| anyhow!("the officer's passphrase is required: set POUCH_OFFICER_PASSPHRASE or run in a terminal"))?,
    };
    Ok(pouch_client::officer::OfficerIdentity::open(&home, &pass)?)
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `--expires`: a date (the end of that day, UTC) or an RFC 3339 time.
fn parse_expiry(text: &str) -> Result<i64> {
    let text = text.trim();
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(t.unix_timestamp());
    }
    let bad = || anyhow!("--expires takes a date (2027-06-30) or RFC 3339 (2027-06-30T17:00:00Z)");
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let month = m
        .parse::<u8>()
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = time::Date::from_calendar_date(
        y.parse().map_err(|_| bad())?,
        month,
        d.parse().map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    Ok(day
        .next_day()
        .unwrap_or(day)
        .midnight()
        .assume_utc()
        .unix_timestamp())
}

fn security(command: SecurityCommand, home_arg: Option<PathBuf>) -> Result<ExitCode> {
    match command {
        SecurityCommand::Init { name, officer_home } => {
            let home = officer_home_dir(officer_home)?;
            let passphrase = match std::env::var("POUCH_OFFICER_PASSPHRASE") {
                Ok(p) => p,
                Err(_) => new_passphrase()?,
            };
            let me = pouch_client::officer::OfficerIdentity::create(&home, &name, &passphrase)?;
            let card = me.write_card(&home, now_secs())?;
            eprintln!("the security officer's key is in {}", home.display());
            eprintln!(
                "give {} to a security administrator, who registers it with 'pouch admin security-officer FILE'",
                card.display()
            );
            outln!(
                "security officer {}: key fingerprint {}",
                me.name,
                me.fingerprint()
            );
        }
        SecurityCommand::Policy {
            command:
                PolicyCommand::Publish {
                    file,
                    version,
                    officer,
                },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the label policy {}", file.display()))?;
            let policy = pouch_label::LabelPolicy::from_toml(&text)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let me = open_officer(officer)?;
            let mut device = open(home_arg)?;
            // Mail labelled under the policy in force must read the same under the new one.
            if let Ok(Some(current)) = device.published_policy() {
                policy.keeps(&current).map_err(|why| {
                    anyhow!(
                        "{} cannot replace the policy in force: {why}",
                        file.display()
                    )
                })?;
            }
            let version = match version {
                Some(v) => v,
                None => device.published_policy_version()? + 1,
            };
            let statement = pouch_label::statement::Statement::Policy {
                sequence: device.next_statement_number(pouch_log::OfficerEntry::POLICY)?,
                version,
                policy: text,
                issued_at: now_secs(),
            };
            let done = device.publish_statement(&me.sign(&statement))?;
            outln!(
                "published label policy {} version {version} (log entry {})",
                policy.id,
                done.index
            );
        }
        SecurityCommand::Clear {
            address,
            max,
            categories,
            expires,
            officer,
        } => {
            let address = Address::parse(&address)?;
            let expires = expires.as_deref().map(parse_expiry).transpose()?;
            let me = open_officer(officer)?;
            let mut device = open(home_arg)?;
            let policy = device.published_policy()?.ok_or_else(|| {
                anyhow!("no label policy is published yet: run 'pouch security policy publish FILE' first")
            })?;
            let clearance = policy.clearance(&max, &categories, expires)?;
            let statement = pouch_label::statement::Statement::clearance(
                address.as_str(),
                &clearance,
                device.next_statement_number(address.as_str())?,
                now_secs(),
            );
            let done = device.publish_statement(&me.sign(&statement))?;
            outln!(
                "{address} is cleared up to {} (log entry {})",
                clearance.max_classification,
                done.index
            );
        }
        SecurityCommand::Revoke { address, officer } => {
            let address = Address::parse(&address)?;
            let me = open_officer(officer)?;
            let mut device = open(home_arg)?;
            let statement = pouch_label::statement::Statement::Revocation {
                sequence: device.next_statement_number(address.as_str())?,
                address: address.as_str().to_string(),
                issued_at: now_secs(),
            };
            let done = device.publish_statement(&me.sign(&statement))?;
            outln!(
                "{address}'s clearance is revoked (log entry {})",
                done.index
            );
        }
        SecurityCommand::Accept { fingerprint } => {
            let mut device = open(home_arg)?;
            let accepted = device.accept_officer_key(&fingerprint)?;
            outln!("this device now trusts the security officer key {accepted}");
        }
        SecurityCommand::Policy {
            command: PolicyCommand::Check { file },
        } => {
            let policy = label_policy(&file)?;
            outln!("policy {} is valid", policy.id);
            let levels: Vec<&str> = policy.classifications.iter().map(|c| c.marking()).collect();
            outln!("classifications (lowest first): {}", levels.join(", "));
            for c in &policy.categories {
                outln!("category {} ({:?}): {}", c.tag, c.kind, c.values.join(", "));
            }
            outln!(
                "default: {}; accredited up to: {}",
                policy.default_label,
                policy.ceiling
            );
        }
        SecurityCommand::Label { label, policy, xml } => {
            let policy = label_policy(&policy)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let label = policy.parse(&label, now)?;
            if let Err(refusal) = policy.within_ceiling(&label) {
                bail!("{refusal}");
            }
            if xml {
                outln!("{}", label.to_xml(&policy));
            } else {
                outln!("{}", policy.marking(&label));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every event, page by page.
fn all_events(api: &pouch_client::net::Api) -> Result<Vec<pouch_proto::api::Event>> {
    let mut all: Vec<pouch_proto::api::Event> = Vec::new();
    loop {
        let after = all.last().map(|e| e.seq).unwrap_or(0);
        let page: Vec<pouch_proto::api::Event> =
            api.get(&format!("/v1/admin/events?after={after}&limit=5000"))?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// `pouch server --restore FILE`: the backup becomes the database of a new
/// data directory, which must already hold the old one's key files (the
/// log's signing key is sealed under `log-wrap.key`; devices trust the TLS
/// anchor).
fn restore_backup(backup: &Path, data_dir: &Path) -> Result<()> {
    if !is_sqlite_file(backup).unwrap_or(false) {
        bail!(
            "{} is not a Pouch backup (not a SQLite database); give the file 'pouch admin backup' wrote",
            backup.display()
        );
    }
    let db = data_dir.join("pouch.db");
    if db.metadata().is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} already holds a database: restore into a new data directory (with the old one's log-wrap.key and tls-*.pem)",
            data_dir.display()
        );
    }
    if !data_dir.join("log-wrap.key").exists() && std::env::var("POUCH_LOG_WRAP_KEY").is_err() {
        bail!(
            "copy log-wrap.key and tls-*.pem from the old data directory into {} first: the backup holds the log's signing key sealed under log-wrap.key",
            data_dir.display()
        );
    }
    pouch_server::secure_data_dir(data_dir, None)
        .with_context(|| format!("cannot prepare data directory {}", data_dir.display()))?;
    for stale in ["pouch.db-wal", "pouch.db-shm"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    std::fs::copy(backup, &db).with_context(|| format!("cannot write {}", db.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))?;
    }
    eprintln!("restored {} into {}", backup.display(), db.display());
    Ok(())
}

/// Whether `path` starts as every SQLite database does.
fn is_sqlite_file(path: &Path) -> Result<bool> {
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read_exact(&mut head).is_ok() && &head == b"SQLite format 3\0")
}

/// Says what waits for a second administrator, and how they approve it.
fn print_pending(p: &pouch_proto::api::PendingApproval) {
    eprintln!(
        "{} of {} waits for a second administrator (until {}); they run:",
        p.action.as_str(),
        p.subject(),
        format_date(p.expires_at)
    );
    match (p.action, &p.key_fingerprint) {
        // The approver vouches for the officer's key: they take its
        // fingerprint from the officer, not from this screen.
        (pouch_proto::api::ApprovalAction::RegisterOfficer, _) => {
            eprintln!(
                "(a second security administrator, with the key fingerprint {} reads them from their own 'pouch security init')",
                p.admin.as_deref().unwrap_or("the security officer")
            );
            outln!("pouch admin approve {} --fingerprint FINGERPRINT", p.id);
        }
        (
            pouch_proto::api::ApprovalAction::AddOperator
            | pouch_proto::api::ApprovalAction::AddSecurityAdmin,
            _,
        ) => {
            eprintln!(
                "(with the key fingerprint {} reads them from their own 'pouch admin init')",
                p.admin.as_deref().unwrap_or("the new administrator")
            );
            outln!("pouch admin approve {} --fingerprint FINGERPRINT", p.id);
        }
        (_, Some(fp)) => {
            eprintln!(
                "(after comparing the key fingerprint {fp} with the one {} reads them from their own 'pouch admin init')",
                p.admin.as_deref().unwrap_or("the new operator")
            );
            outln!("pouch admin approve {} --fingerprint {fp}", p.id);
        }
        (_, None) => outln!("pouch admin approve {}", p.id),
    }
}

/// Prints a one-time invite on stdout (for scripts) and what it is on stderr.
fn print_invite(
    api: &pouch_client::net::Api,
    fingerprint: &str,
    resp: &pouch_proto::api::AddUserResponse,
    what: &str,
) {
    let invite = Invite::new(
        api.base(),
        fingerprint,
        resp.address.clone(),
        &resp.invite_secret,
    );
    eprintln!(
        "{what} for {} (single use, expires {}):",
        resp.address,
        format_date(resp.expires_at)
    );
    outln!("{}", invite.encode());
}

// ---------- witness ----------

fn witness(args: WitnessArgs, log_format: &str) -> Result<ExitCode> {
    init_logging(log_format, "info");
    let logs = args
        .logs
        .iter()
        .map(|vkey| {
            let origin = vkey.split('+').next().unwrap_or_default().to_string();
            Ok(pouch_server::witness::KnownLog {
                origin,
                vkey: vkey.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let w = std::sync::Arc::new(
        pouch_server::witness::Witness::open(&args.data_dir, &args.name, logs).with_context(
            || {
                format!(
                    "cannot open the witness state in {}",
                    args.data_dir.display()
                )
            },
        )?,
    );
    let listener = std::net::TcpListener::bind(&args.listen).with_context(|| {
        format!(
            "cannot listen on {}: is another witness running there?",
            args.listen
        )
    })?;
    outln!(
        "Pouch witness listening on http://{}",
        listener.local_addr()?
    );
    outln!("witness key: {}", w.verifier_key());
    std::io::stdout().flush()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        pouch_server::witness::serve(w, listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

// ---------- admin ----------

/// Where administrator keys live by default: apart from any device.
fn admin_home(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = arg {
        return Ok(h);
    }
    directories::ProjectDirs::from("", "", "pouch")
        .map(|d| d.data_dir().join("admin"))
        .ok_or_else(|| {
            anyhow!("cannot find a data directory: pass --admin-home DIR or set POUCH_ADMIN_HOME")
        })
}

/// The trust anchor's fingerprint from a server data directory.
fn anchor_fingerprint_in(data_dir: &Path) -> Result<String> {
    let anchor = data_dir.join("tls-anchor.pem");
    // A server given --tls-cert without --tls-ca pins its certificate.
    let cert = if anchor.exists() {
        anchor
    } else {
        data_dir.join("tls-cert.pem")
    };
    pouch_server::tls::fingerprint_of_pem_file(&cert)
        .map_err(|e| anyhow!("{e}; pass the server's --fingerprint"))
}

/// `pouch admin init`: a new administrator key, and with the setup secret
/// the server's first administrator.
fn admin_init(home: &Path, command: AdminCommand) -> Result<ExitCode> {
    let AdminCommand::Init {
        name,
        server,
        fingerprint,
        data_dir,
        setup_token_file,
        role,
    } = command
    else {
        unreachable!("called for init only");
    };
    let fingerprint = match fingerprint {
        Some(f) => f.to_ascii_lowercase(),
        None => anchor_fingerprint_in(&data_dir)?,
    };
    let setup_file = setup_token_file.unwrap_or_else(|| data_dir.join("admin-setup.token"));
    let setup_secret = match std::fs::read_to_string(&setup_file) {
        Ok(secret) => Some(secret),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read the setup secret {}: {e}", setup_file.display()),
    };
    // Checked before a key is made: a server that is not there, or not the
    // anchor's, leaves nothing behind.
    pouch_client::net::Api::new(&server, &fingerprint)?
        .get_json::<pouch_proto::api::ServerInfo>("/v1/info")?;
    let passphrase = new_admin_passphrase()?;
    let me = pouch_client::admin::AdminIdentity::create(
        home,
        &name,
        &server,
        &fingerprint,
        &passphrase,
    )?;
    match setup_secret {
        Some(secret) => {
            let api = me.api(None)?;
            if let Err(e) = me.bootstrap(&api, &secret) {
                let _ = std::fs::remove_file(home.join(pouch_client::admin::ADMIN_FILE));
                return Err(e.into());
            }
            // Used: the server refuses it from now on.
            let _ = std::fs::remove_file(&setup_file);
            eprintln!(
                "you are the first administrator of {} ({name}, operator); add others with 'pouch admin add'",
                me.server
            );
            eprintln!(
                "your key: {} (fingerprint {})",
                home.display(),
                me.key_fingerprint()
            );
        }
        None => {
            let role = pouch_proto::api::AdminRole::parse(&role).expect("clap checked it");
            eprintln!(
                "your key is in {} (fingerprint {}); an operator adds you with:",
                home.display(),
                me.key_fingerprint()
            );
            outln!(
                "{}",
                pouch_client::admin::add_command(&name, role, &me.public_key())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn new_admin_passphrase() -> Result<String> {
    let first = passphrase("New passphrase for your administrator key: ")?;
    if first.len() < 8 {
        bail!("the passphrase must have at least 8 characters");
    }
    if std::env::var("POUCH_PASSPHRASE").is_err() && passphrase("Repeat it: ")? != first {
        bail!("the passphrases differ; nothing was created");
    }
    Ok(first)
}

fn admin(args: AdminArgs) -> Result<ExitCode> {
    let home = admin_home(args.admin_home)?;
    if matches!(args.command, AdminCommand::Init { .. }) {
        return admin_init(&home, args.command);
    }
    if !pouch_client::admin::AdminIdentity::exists(&home) {
        // On the server's own machine, before anyone administers it, the
        // first command makes its user the first administrator (the
        // quickstart); anywhere else, 'pouch admin init' comes first.
        let data_dir = PathBuf::from("./pouch-data");
        if args.server.is_some() || !data_dir.join("admin-setup.token").exists() {
            bail!(
                "no administrator key in {}: run 'pouch admin init --name NAME' (or pass --admin-home)",
                home.display()
            );
        }
        let name = std::env::var("USER")
            .ok()
            .map(|u| u.to_ascii_lowercase())
            .filter(|u| pouch_proto::api::admin_name_ok(u))
            .unwrap_or_else(|| "admin".into());
        eprintln!(
            "no administrator yet: making you the first one, '{name}', with the server's setup secret"
        );
        admin_init(
            &home,
            AdminCommand::Init {
                name,
                server: "https://127.0.0.1:8443".into(),
                fingerprint: None,
                data_dir,
                setup_token_file: None,
                role: "operator".into(),
            },
        )?;
    }
    let me = pouch_client::admin::AdminIdentity::open(
        &home,
        &passphrase("Administrator passphrase: ")?,
    )?;
    let fingerprint = me.fingerprint.clone();
    let api = me.api(args.server.as_deref())?;
    me.sign_in(&api)?;
    match args.command {
        AdminCommand::User {
            command:
                UserCommand::Add {
                    address,
                    name,
                    expires_hours,
                },
        } => {
            let address = Address::parse(&address)?;
            let resp: pouch_proto::api::AddUserResponse = api.post(
                "/v1/admin/users",
                &pouch_proto::api::AddUserRequest {
                    address,
                    name,
                    invite_ttl_secs: Some(expires_hours * 3600),
                },
            )?;
            print_invite(&api, &fingerprint, &resp, "invite");
        }
        AdminCommand::User {
            command: UserCommand::Reset { address },
        } => {
            let address = Address::parse(&address)?;
            let pending: pouch_proto::api::PendingApproval = api.post(
                &format!("/v1/admin/users/{address}/reset"),
                &serde_json::json!({}),
            )?;
            print_pending(&pending);
        }
        AdminCommand::Device {
            command: AdminDeviceCommand::Revoke { address, device_id },
        } => {
            let address = Address::parse(&address)?;
            let pending: pouch_proto::api::PendingApproval = api.post(
                &format!("/v1/admin/devices/{address}/{device_id}/revoke"),
                &serde_json::json!({}),
            )?;
            print_pending(&pending);
        }
        AdminCommand::Backup { file } => {
            if file.exists() {
                bail!("{} exists: give a new file name", file.display());
            }
            let partial = PathBuf::from(format!("{}.partial", file.display()));
            let mut out = std::fs::OpenOptions::new();
            out.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                out.mode(0o600);
            }
            let mut out = out
                .open(&partial)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            let written = api.post_to_writer("/v1/admin/backup", &mut out);
            let bytes = match written {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e.into());
                }
            };
            out.sync_all()?;
            drop(out);
            if !is_sqlite_file(&partial)? {
                let _ = std::fs::remove_file(&partial);
                bail!("the server's answer is not a database; nothing was written");
            }
            std::fs::rename(&partial, &file)?;
            outln!(
                "backup written to {} ({} MiB); restore with 'pouch server --restore {} --data-dir NEW-DIR' after copying log-wrap.key and tls-*.pem into NEW-DIR",
                file.display(),
                bytes >> 20,
                file.display()
            );
        }
        AdminCommand::Approve {
            id,
            fingerprint: key_fingerprint,
        } => {
            let done: pouch_proto::api::ApprovalDone = api.post(
                &format!("/v1/admin/approvals/{}", id.trim().to_ascii_uppercase()),
                &pouch_proto::api::ApproveRequest { key_fingerprint },
            )?;
            match &done.invite {
                // A reset's invite alone on standard output, for scripts.
                Some(invite) => {
                    eprintln!("{}: {}", done.subject(), done.detail);
                    print_invite(&api, &fingerprint, invite, "new invite");
                }
                None => outln!("{}: {}", done.subject(), done.detail),
            }
        }
        AdminCommand::SecurityOfficer { card } => {
            let text = std::fs::read_to_string(&card)
                .with_context(|| format!("cannot read the officer's card {}", card.display()))?;
            let card: pouch_proto::api::OfficerStatement = serde_json::from_str(&text)
                .map_err(|_| anyhow!("{} is not an officer's card (officer-card.json from 'pouch security init')", card.display()))?;
            let answer: pouch_proto::api::RegisterOfficerResponse = api.post(
                "/v1/admin/security-officer",
                &pouch_proto::api::RegisterOfficerRequest { card },
            )?;
            let done = match answer {
                pouch_proto::api::RegisterOfficerResponse {
                    registered: Some(done),
                    ..
                } => done,
                pouch_proto::api::RegisterOfficerResponse {
                    pending: Some(p), ..
                } => {
                    print_pending(&p);
                    return Ok(ExitCode::SUCCESS);
                }
                _ => bail!("the server answered neither registered nor waiting: nothing to report"),
            };
            outln!(
                "security officer {} registered: key fingerprint {}",
                done.name,
                done.fingerprint
            );
            if let Some(old) = done.replaced {
                eprintln!(
                    "it replaces key {old}: every device refuses labelled mail until its user runs 'pouch security accept {}'",
                    done.fingerprint
                );
            }
        }
        AdminCommand::Federation {
            command: FederationCommand::Card { json },
        } => {
            let card: pouch_proto::api::FederationCard = api.get("/v1/admin/federation/card")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&card)?);
            } else {
                outln!("{}", federation_card_block(&card));
            }
        }
        AdminCommand::Federation {
            command: FederationCommand::Status { json },
        } => {
            let status: pouch_proto::api::FederationStatus =
                api.get("/v1/admin/federation/status")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                outln!("@{} federates at {}", status.domain, status.url);
                if status.peers.is_empty() {
                    outln!("no peers yet: add a partner's card to pouch.toml and restart");
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                for p in &status.peers {
                    let contact = match p.last_contact {
                        Some(t) => format!("answered {} s ago", (now - t).max(0)),
                        None => "not reached since this server started".into(),
                    };
                    let theirs = match (p.log_size, p.cosigned_age_secs) {
                        (Some(size), Some(age)) => {
                            format!("its log: {size} entries, cosigned here {age} s ago")
                        }
                        _ => "its log: not cosigned here yet".into(),
                    };
                    let ours = match p.ours_cosigned {
                        Some(size) => format!("ours cosigned by it up to {size}"),
                        None => "ours not cosigned by it yet".into(),
                    };
                    outln!("{}  {contact}; {theirs}; {ours}", p.domain);
                    match p.outbox_oldest_secs {
                        Some(age) if p.outbox_items > 0 => outln!(
                            "    outbox: {} item(s) waiting, the oldest for {age} s",
                            p.outbox_items
                        ),
                        _ => outln!("    outbox: empty"),
                    }
                    if let Some(e) = &p.last_error {
                        outln!("    last error: {e}");
                    }
                }
            }
        }
        AdminCommand::Approvals { json } => {
            let pending: Vec<pouch_proto::api::PendingApproval> = api.get("/v1/admin/approvals")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&pending)?);
            } else if pending.is_empty() {
                outln!("nothing waits for approval");
            } else {
                for p in pending {
                    let detail = match (&p.device, &p.key_fingerprint) {
                        (Some(d), _) => d.0.clone(),
                        (None, Some(fp)) => format!("key {fp}"),
                        (None, None) => String::new(),
                    };
                    outln!(
                        "{}  {:<15} {:<32} {} asked by {} at {}, until {}",
                        p.id,
                        p.action.as_str(),
                        p.subject(),
                        detail,
                        p.requested_by,
                        format_date(p.requested_at),
                        format_date(p.expires_at)
                    );
                }
            }
        }
        AdminCommand::Add { name, role, key } => {
            use base64::Engine;
            let public_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key.trim())
                .map_err(|_| {
                    anyhow!("--key is the key their 'pouch admin init' printed (base64url)")
                })?;
            let answer: pouch_proto::api::AddAdminResponse = api.post(
                "/v1/admin/admins",
                &pouch_proto::api::AddAdminRequest {
                    name,
                    role: pouch_proto::api::AdminRole::parse(&role).expect("clap checked it"),
                    public_key,
                },
            )?;
            match (answer.added, answer.pending) {
                (Some(added), _) => outln!(
                    "added {} as {}; their key fingerprint is {} (compare it with theirs)",
                    added.name,
                    added.role,
                    added.key_fingerprint
                ),
                (None, Some(pending)) => print_pending(&pending),
                (None, None) => bail!("the server answered neither added nor waiting"),
            }
        }
        AdminCommand::Remove { name } => {
            let answer: pouch_proto::api::RemoveAdminResponse =
                api.delete_json(&format!("/v1/admin/admins/{name}"))?;
            match answer.pending {
                Some(pending) => print_pending(&pending),
                None => outln!("removed {name}: their key no longer signs in"),
            }
        }
        AdminCommand::List { json } => {
            let admins: Vec<pouch_proto::api::AdminSummary> = api.get("/v1/admin/admins")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&admins)?);
            } else {
                for a in admins {
                    outln!(
                        "{:<20} {:<9} key {}  added by {} at {}",
                        a.name,
                        a.role,
                        &a.key_fingerprint[..16],
                        a.added_by.as_deref().unwrap_or("(setup secret)"),
                        format_date(a.added_at)
                    );
                }
            }
        }
        AdminCommand::Init { .. } => unreachable!("handled above"),
        AdminCommand::Events {
            command: EventsCommand::Export { format, since },
        } => {
            let since = match since {
                None => 0,
                Some(t) => t
                    .parse::<i64>()
                    .ok()
                    .or_else(|| {
                        time::OffsetDateTime::parse(
                            &t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                        .map(|d| d.unix_timestamp())
                    })
                    .ok_or_else(|| {
                        anyhow!("--since takes RFC 3339 (2026-11-30T08:00:00Z) or Unix seconds")
                    })?,
            };
            let mut out = std::io::stdout().lock();
            for e in all_events(&api)? {
                if e.parsed().is_some_and(|b| b.at < since) {
                    continue;
                }
                let line = match format.as_str() {
                    "ocsf" => pouch_proto::ocsf::record(&e),
                    _ => {
                        serde_json::json!({ "seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash, "event": e.parsed() })
                    }
                };
                writeln!(out, "{}", serde_json::to_string(&line)?)?;
            }
        }
        AdminCommand::Events {
            command: EventsCommand::Verify,
        } => {
            let events = all_events(&api)?;
            match pouch_proto::api::verify_event_chain(
                &events,
                1,
                pouch_proto::api::EVENT_CHAIN_START.into(),
            ) {
                Ok(()) => outln!("audit chain intact: {} events", events.len()),
                Err(e) => {
                    outln!("AUDIT CHAIN BROKEN: {e}");
                    return Ok(ExitCode::from(3));
                }
            }
        }
        AdminCommand::Alerts { follow, json } => {
            let mut after = 0u64;
            loop {
                let alerts: Vec<pouch_proto::api::Alert> =
                    api.get(&format!("/v1/admin/alerts?after={after}"))?;
                for a in &alerts {
                    if json {
                        outln!("{}", serde_json::to_string(a)?);
                    } else {
                        outln!(
                            "{} {:<8} {:<20} {:<28} {}",
                            format_date(a.at),
                            a.severity,
                            a.rule,
                            a.account
                                .as_ref()
                                .map(|x| x.to_string())
                                .unwrap_or_default(),
                            a.summary
                        );
                    }
                    after = a.id;
                }
                std::io::stdout().flush()?;
                if !follow {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        AdminCommand::Devices { stale: _, json } => {
            let stale: Vec<pouch_proto::api::StaleDevice> = api.get("/v1/admin/devices/stale")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&stale)?);
            } else if stale.is_empty() {
                outln!("no device is past the rotation window");
            } else {
                for d in stale {
                    outln!(
                        "{:<32} {} conversation {} last key update {}",
                        d.address,
                        d.device_id,
                        d.group_id,
                        format_date(d.last_update)
                    );
                }
            }
        }
        AdminCommand::User {
            command: UserCommand::List { json },
        } => {
            let users: Vec<pouch_proto::api::UserSummary> = api.get("/v1/admin/users")?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                for u in users {
                    outln!(
                        "{:<32} {:>2} device(s)  {}",
                        u.address,
                        u.devices,
                        u.name.unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod help_tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is for in
    /// `--help` (an operator reads `pouch server --help` before anything else).
    #[test]
    fn every_flag_is_described_in_help() {
        fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    out.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                undescribed(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut missing = Vec::new();
        undescribed(&Cli::command(), "pouch", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}

#[cfg(test)]
mod config_file_tests {
    use super::*;
    use clap::CommandFactory;

    /// The settings `pouch server` takes as flags, as config-file keys:
    /// every flag but the per-run ones (`--config`, `--check`, `--restore`).
    fn server_keys() -> Vec<String> {
        let cli = Cli::command();
        let server = cli.find_subcommand("server").unwrap();
        let mut keys: Vec<String> = server
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| {
                !matches!(
                    *l,
                    "config" | "check" | "restore" | "rotate-anchor" | "help" | "home"
                )
            })
            .map(|l| l.replace('-', "_"))
            .collect();
        keys.push("log_format".into());
        keys
    }

    /// A key the file does not know is refused as "unknown field"; a known
    /// one given a value of the wrong type fails differently. So every flag
    /// of `pouch server` has its key in `[server]`.
    #[test]
    fn every_server_flag_has_a_key_in_the_config_file() {
        let keys = server_keys();
        assert!(keys.len() >= 17, "{keys:?}");
        for key in &keys {
            let text = format!("[server]\n{key} = {{ wrong = \"type\" }}\n");
            let err = toml::from_str::<pouch_server::config::ConfigFile>(&text)
                .expect_err("a table is no setting's type")
                .to_string();
            assert!(
                !err.contains("unknown field"),
                "--{} has no config-file key {key}: {err}",
                key.replace('_', "-")
            );
        }
        let err =
            toml::from_str::<pouch_server::config::ConfigFile>("[server]\nlisten_on = \"x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    /// The operator's section of the README lists every key.
    #[test]
    fn the_readme_documents_every_config_file_key() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let section = readme
            .split("## Running it for a ministry (operators)")
            .nth(1)
            .expect("the operators' section");
        for key in server_keys() {
            assert!(
                section.contains(&format!("{key} =")),
                "README's operator section does not show `{key} =`"
            );
        }
    }

    #[test]
    fn a_database_password_is_not_printed() {
        assert_eq!(
            redact_password("postgres://pouch:s3cret@db.mfa:5432/pouch?sslmode=require"),
            "postgres://pouch:***@db.mfa:5432/pouch?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://pouch@db/pouch"),
            "postgres://pouch@db/pouch"
        );
        assert_eq!(redact_password("postgres://db/p@x"), "postgres://db/p@x");
        assert_eq!(
            redact_password("postgres://pouch@db/pouch?sslmode=require&password=s3cret"),
            "postgres://pouch@db/pouch?sslmode=require&password=***"
        );
    }
}

#[cfg(test)]
mod attachment_name_tests {
    use super::safe_file_name;

    #[test]
    fn a_senders_name_cannot_leave_the_directory() {
        assert_eq!(safe_file_name("treaty.pdf").as_deref(), Some("treaty.pdf"));
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            safe_file_name("C:\\Windows\\evil.exe").as_deref(),
            Some("evil.exe")
        );
        assert_eq!(safe_file_name(".bashrc").as_deref(), Some("bashrc"));
        assert_eq!(safe_file_name("a\u{7}b\nc").as_deref(), Some("a_b_c"));
        assert_eq!(safe_file_name(".."), None);
        assert_eq!(safe_file_name("dir/"), None);
        assert_eq!(safe_file_name(""), None);
        let long = "é".repeat(300);
        let cut = safe_file_name(&long).unwrap();
        assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'é'));
        let long = format!("{}.pdf", "a ".repeat(150));
        let cut = safe_file_name(&long).unwrap();
        assert!(cut.len() <= 200 && cut.ends_with("a.pdf"), "{cut}");
        assert_eq!(
            safe_file_name("invoice\u{202e}fdp.exe").as_deref(),
            Some("invoicefdp.exe")
        );
    }
}
