//! The bridge's SMTP submission, driven by real mail clients: Python's
//! smtplib, curl (smtp://) and swaks. Mail submitted there arrives
//! encrypted through Pouch, byte for byte; blind copies stay blind; a
//! recipient outside Pouch is refused at RCPT, before anything is written.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs a Python snippet; returns stdout, or panics with stderr.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The raw bytes of the message with `subject` in `who`'s inbox (after a sync).
/// What `who` received with `subject`, waiting for it: the bridge answers
/// SMTP once the mail is in its outbox, and sends it right after.
fn received(who: &Client, subject: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        who.sync();
        let inbox = who.inbox();
        if let Some(m) = inbox.iter().find(|m| m["subject"] == subject) {
            return who.raw(m["id"].as_i64().unwrap());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has no '{subject}': {inbox:?}",
            who.address
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// `who`'s Sent copies with `subject`, once there is one (the bridge files
/// a mail in Sent when it has sent it, just after the recipients can fetch it).
fn sent_copies(who: &Client, subject: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let copies: Vec<_> = who
            .sent()
            .into_iter()
            .filter(|m| m["subject"] == subject)
            .collect();
        if !copies.is_empty() || std::time::Instant::now() > deadline {
            return copies;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

const SEND: &str = r#"
import smtplib, sys
port, password, rcpts, path = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(','), sys.argv[4]
raw = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port) as s:
    s.ehlo()
    assert s.has_extn('auth') and 'PLAIN' in s.esmtp_features['auth'], s.esmtp_features
    s.login('alice@pouch.local', password)
    refused = s.sendmail('alice@pouch.local', rcpts, raw)
    print('refused', refused)
"#;

#[test]
fn mail_clients_submit_through_the_bridge() {
    let dir = Scratch::new("bridge-smtp");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let carol = user(&dir, &server, "carol");
    let dave = user(&dir, &server, "dave");
    let bridge = Bridge::start(&alice);
    let port = bridge.smtp_port.to_string();

    // Python's smtplib: To Bob, Cc Carol, a blind copy to Dave (envelope only),
    // with a line starting with a dot (SMTP dot-stuffing) and 8-bit text.
    let first = b"From: Alice <alice@pouch.local>\r\nTo: bob@pouch.local\r\nCc: carol@pouch.local\r\n\
Subject: Demarche on fisheries\r\nMessage-ID: <demarche-1@pouch.local>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
Dear colleagues,\r\n.a line that starts with a dot\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        .to_vec();
    let path = dir.path("first.eml");
    std::fs::write(&path, &first).unwrap();
    let out = python(
        SEND,
        &[
            &port,
            &bridge.password,
            "bob@pouch.local,carol@pouch.local,dave@pouch.local",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("refused {}"), "{out}");
    for who in [&bob, &carol, &dave] {
        assert_eq!(
            received(who, "Demarche on fisheries"),
            first,
            "{} got other bytes",
            who.address
        );
    }
    // The blind copy is in a conversation of its own: Bob and Carol see only each other.
    let bobs = bob.inbox();
    let m = bobs
        .iter()
        .find(|m| m["subject"] == "Demarche on fisheries")
        .unwrap();
    let shown = m.to_string();
    assert!(!shown.contains("dave"), "{shown}");
    // By conversation: Bob and Carol share one; Dave's copy is in another.
    let conversation = |who: &Client| -> String {
        who.inbox()
            .iter()
            .find(|m| m["subject"] == "Demarche on fisheries")
            .unwrap()["conversation"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(conversation(&bob), conversation(&carol));
    assert_ne!(conversation(&dave), conversation(&bob));
    // One Sent copy.
    assert_eq!(sent_copies(&alice, "Demarche on fisheries").len(), 1);

    // A Bcc field in the submitted message: removed for every recipient, kept in Alice's copy.
    let second = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nBcc: dave@pouch.local\r\n\
Subject: With a Bcc field\r\nMessage-ID: <bcc-2@pouch.local>\r\n\r\nbody\r\n"
        .to_vec();
    let path = dir.path("second.eml");
    std::fs::write(&path, &second).unwrap();
    python(
        SEND,
        &[
            &port,
            &bridge.password,
            "bob@pouch.local,dave@pouch.local",
            path.to_str().unwrap(),
        ],
    );
    let stripped = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\n\
Subject: With a Bcc field\r\nMessage-ID: <bcc-2@pouch.local>\r\n\r\nbody\r\n"
        .to_vec();
    assert_eq!(received(&bob, "With a Bcc field"), stripped);
    assert_eq!(received(&dave, "With a Bcc field"), stripped);
    let conversation_of = |who: &Client| {
        who.inbox()
            .iter()
            .find(|m| m["subject"] == "With a Bcc field")
            .unwrap()["conversation"]
            .clone()
    };
    assert_ne!(
        conversation_of(&bob),
        conversation_of(&dave),
        "the blind copy travels in a conversation of its own"
    );
    let sent = sent_copies(&alice, "With a Bcc field");
    let mine = sent.first().unwrap();
    assert_eq!(alice.raw(mine["id"].as_i64().unwrap()), second);

    // Outside Pouch: refused at RCPT with the reason; a wrong password is refused too.
    let out = python(
        r#"
import smtplib, sys
port, password = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP('127.0.0.1', port) as s:
    try:
        s.login('alice@pouch.local', 'not-the-password')
    except smtplib.SMTPAuthenticationError as e:
        print('login', e.smtp_code)
    s.login('alice@pouch.local', password)
    s.mail('alice@pouch.local')
    code, msg = s.rcpt('someone@example.org')
    print('rcpt', code, msg.decode())
    code, msg = s.rcpt('bob@pouch.local')
    print('rcpt', code)
"#,
        &[&port, &bridge.password],
    );
    assert!(out.contains("login 535"), "{out}");
    assert!(
        out.contains("rcpt 550") && out.contains("never sends unencrypted"),
        "{out}"
    );
    assert!(out.contains("rcpt 250"), "{out}");

    // curl, AUTH PLAIN by default.
    let via_curl = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: Sent with curl\r\n\r\nhello from curl\r\n".to_vec();
    let path = dir.path("curl.eml");
    std::fs::write(&path, &via_curl).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            &format!("smtp://127.0.0.1:{port}"),
            "--mail-from",
            "alice@pouch.local",
            "--mail-rcpt",
            "bob@pouch.local",
            "--user",
            &format!("alice@pouch.local:{}", bridge.password),
            "--upload-file",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(received(&bob, "Sent with curl"), via_curl);

    // swaks, AUTH LOGIN.
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@pouch.local",
            "--auth-password",
            &bridge.password,
            "--from",
            "alice@pouch.local",
            "--to",
            "carol@pouch.local",
            "--header",
            "Subject: Sent with swaks",
            "--body",
            "hello from swaks",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = received(&carol, "Sent with swaks");
    assert!(String::from_utf8_lossy(&got).contains("hello from swaks"));
}

#[test]
fn the_bridge_refuses_to_listen_beyond_this_machine() {
    let dir = Scratch::new("bridge-loopback");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let out = alice.run(&["bridge", "--smtp", "0.0.0.0:0"]);
    assert_one_line_error(&out, "not a loopback address");
    let out = alice.run(&["bridge", "--imap", "192.0.2.1:1143"]);
    assert_one_line_error(&out, "not a loopback address");
}

const IMAP: &str = r#"
import imaplib, json, re, socket, sys, time
port, password = int(sys.argv[1]), sys.argv[2]
out = {}

def session():
    m = imaplib.IMAP4('127.0.0.1', port)
    m.login('alice@pouch.local', password)
    return m

m = imaplib.IMAP4('127.0.0.1', port)
caps = m.capabilities
for c in ['IMAP4REV1', 'IDLE', 'UIDPLUS', 'MOVE', 'UNSELECT', 'ID', 'NAMESPACE', 'LITERAL+', 'SPECIAL-USE', 'AUTH=PLAIN']:
    assert c in caps, (c, caps)
try:
    m.login('alice@pouch.local', 'wrong')
    raise SystemExit('a wrong password was accepted')
except imaplib.IMAP4.error as e:
    out['bad_login'] = str(e)
m.login('alice@pouch.local', password)

# Wait for the bridge's sync to file Bob's two mails.
for _ in range(100):
    typ, data = m.select('INBOX')
    if int(data[0]) >= 2:
        break
    time.sleep(0.2)
assert int(data[0]) == 2, data
typ, lst = m.list('""', '*')
out['list'] = [l.decode() for l in lst]

typ, data = m.uid('FETCH', '1:*', '(UID RFC822.SIZE FLAGS BODY.PEEK[])')
msgs = {}
for item in data:
    if isinstance(item, tuple):
        head, body = item
        uid = int(re.search(rb'UID (\d+)', head).group(1))
        size = int(re.search(rb'RFC822.SIZE (\d+)', head).group(1))
        assert size == len(body), (size, len(body))
        assert re.match(rb'\d+ \(UID ', head), head  # the UID first
        msgs[uid] = body.decode('latin-1')
out['bodies'] = msgs
typ, data = m.fetch('1', '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')
out['subject_field'] = data[0][1].decode()
typ, data = m.fetch('2', '(ENVELOPE)')
out['envelope'] = data[0].decode()
typ, data = m.uid('SEARCH', None, 'UNSEEN')
out['unseen'] = data[0].decode()
typ, data = m.search(None, 'SUBJECT', '"two"')
out['search_two'] = data[0].decode()
typ, data = m.store('1', '+FLAGS', '(\\Flagged)')
out['store'] = data[0].decode()
typ, data = m.fetch('1', '(BODY[TEXT])')
typ, data = m.fetch('1', '(FLAGS)')
out['flags_after_read'] = data[0].decode()

# Another session sees the flags; IDLE there wakes on new mail.
m2 = session()
m2.select('INBOX')
typ, data = m2.fetch('1', '(FLAGS)')
out['flags_other_session'] = data[0].decode()
tag = m2._new_tag().decode()
m2.send(f'{tag} IDLE\r\n'.encode())
assert m2.readline().startswith(b'+'), 'IDLE not accepted'
print(json.dumps({'idle': 'waiting'}), flush=True)
sys.stdin.readline()  # the test sends another mail, then a line
m2.sock.settimeout(15)
woke = b''
while b'EXISTS' not in woke:
    woke += m2.readline()
m2.send(b'DONE\r\n')
out['idle_woke'] = woke.decode()
while True:
    line = m2.readline()
    if line.startswith(tag.encode()):
        out['idle_done'] = line.decode().strip()
        break

# Folders: APPEND, COPY, MOVE, CREATE.
draft = b'From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: a draft\r\n\r\nnot yet\r\n'
typ, data = m.append('Drafts', '(\\Draft)', None, draft)
assert typ == 'OK', data
out['append'] = 'APPENDUID ' + m.response('APPENDUID')[1][0].decode()
typ, data = m.uid('COPY', '1', 'Archive')
assert typ == 'OK', data
out['copy'] = 'COPYUID ' + m.response('COPYUID')[1][0].decode()
typ, data = m.uid('MOVE', '2', 'Trash')
out['move'] = [d.decode() if isinstance(d, bytes) else str(d) for d in data]
typ, data = m.select('INBOX')
out['inbox_after_move'] = data[0].decode()
typ, data = m.create('Cables')
out['create'] = typ
typ, data = m.status('Trash', '(MESSAGES UIDNEXT UIDVALIDITY UNSEEN)')
out['status_trash'] = data[0].decode()
m.logout()
print(json.dumps(out), flush=True)
"#;

#[test]
fn mail_clients_read_through_the_bridge() {
    use std::io::Write;
    let dir = Scratch::new("bridge-imap");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    for (subject, body) in [("one", "first body"), ("two", "second body")] {
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            subject,
            "--body",
            body,
        ]);
    }
    let bridge = Bridge::start(&alice);
    let mut py = Command::new("python3")
        .arg("-c")
        .arg(IMAP)
        .args([&bridge.imap_port.to_string(), &bridge.password])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let Some(Ok(first)) = lines.next() else {
        let mut err = String::new();
        std::io::Read::read_to_string(&mut py.stderr.take().unwrap(), &mut err).unwrap();
        panic!("the IMAP script stopped: {err}");
    };
    assert!(first.contains("waiting"), "{first}");
    // A new mail while the other session idles.
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "three",
        "--body",
        "x",
    ]);
    writeln!(py.stdin.take().unwrap(), "go").unwrap();
    let result = lines.next().map(|l| l.unwrap()).unwrap_or_default();
    let status = py.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut py.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "IMAP script failed: {err}");
    let out: serde_json::Value = serde_json::from_str(&result).unwrap();

    assert!(
        out["bad_login"]
            .as_str()
            .unwrap()
            .contains("AUTHENTICATIONFAILED"),
        "{out}"
    );
    let list = out["list"].to_string();
    for folder in [
        "INBOX",
        "\\\\Sent) \\\"/\\\" \\\"Sent",
        "\\\\Drafts",
        "\\\\Trash",
        "\\\\Junk",
        "\\\\Archive",
    ] {
        assert!(list.contains(folder), "{folder} not in {list}");
    }
    // Byte for byte what `pouch read --raw` gives.
    alice.sync();
    let inbox = alice.inbox();
    for (uid, subject) in [("1", "one"), ("2", "two")] {
        let m = inbox.iter().find(|m| m["subject"] == subject).unwrap();
        let raw = alice.raw(m["id"].as_i64().unwrap());
        assert_eq!(
            out["bodies"][uid].as_str().unwrap().as_bytes(),
            String::from_utf8_lossy(&raw).as_bytes()
        );
    }
    assert!(
        out["subject_field"]
            .as_str()
            .unwrap()
            .starts_with("Subject: one"),
        "{out}"
    );
    assert!(
        out["envelope"].as_str().unwrap().contains("\"two\""),
        "{out}"
    );
    assert_eq!(out["unseen"], "1 2");
    assert_eq!(out["search_two"], "2");
    assert!(
        out["store"].as_str().unwrap().contains("\\Flagged"),
        "{out}"
    );
    // BODY[TEXT] without PEEK marks the message seen.
    let flags = out["flags_after_read"].as_str().unwrap();
    assert!(
        flags.contains("\\Seen") && flags.contains("\\Flagged"),
        "{flags}"
    );
    assert!(
        out["flags_other_session"]
            .as_str()
            .unwrap()
            .contains("\\Flagged"),
        "{out}"
    );
    assert!(
        out["idle_woke"].as_str().unwrap().contains("3 EXISTS"),
        "{out}"
    );
    assert!(out["idle_done"].as_str().unwrap().contains("OK"), "{out}");
    assert!(
        out["append"].as_str().unwrap().contains("APPENDUID"),
        "{out}"
    );
    assert!(out["copy"].as_str().unwrap().contains("COPYUID"), "{out}");
    assert_eq!(
        out["inbox_after_move"], "2",
        "two was moved out, three came in"
    );
    assert_eq!(out["create"], "OK");
    assert!(
        out["status_trash"].as_str().unwrap().contains("MESSAGES 1"),
        "{out}"
    );

    // curl reads a message by UID, byte for byte.
    let got = Command::new("curl")
        .args([
            "-sS",
            &format!("imap://127.0.0.1:{}/INBOX;UID=1", bridge.imap_port),
            "--user",
            &format!("alice@pouch.local:{}", bridge.password),
        ])
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    let one = inbox.iter().find(|m| m["subject"] == "one").unwrap();
    assert_eq!(got.stdout, alice.raw(one["id"].as_i64().unwrap()));
}

/// Every message file under a Maildir folder (cur and new).
fn maildir_messages(folder: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(folder.join(sub)) {
            for e in rd.flatten() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

#[test]
fn mbsync_syncs_both_ways_through_the_bridge() {
    let dir = Scratch::new("bridge-mbsync");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    for subject in ["one", "two"] {
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            subject,
            "--body",
            "text",
        ]);
    }
    let bridge = Bridge::start(&alice);
    let maildir = dir.path("maildir");
    std::fs::create_dir_all(&maildir).unwrap();
    let config = dir.path("mbsyncrc");
    std::fs::write(
        &config,
        format!(
            "IMAPAccount pouch\nHost 127.0.0.1\nPort {}\nUser alice@pouch.local\nPass {}\nSSLType None\nAuthMechs LOGIN\n\n\
IMAPStore pouch-remote\nAccount pouch\n\n\
MaildirStore local\nPath {}/\nInbox {}/INBOX\nSubFolders Verbatim\n\n\
Channel pouch\nFar :pouch-remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\nSync All\n",
            bridge.imap_port,
            bridge.password,
            maildir.display(),
            maildir.display()
        ),
    )
    .unwrap();
    let mbsync = || {
        let out = Command::new("mbsync")
            .args(["-c"])
            .arg(&config)
            .arg("-a")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mbsync failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Wait until the bridge has filed both mails, then pull.
    let mut pulled = Vec::new();
    for _ in 0..50 {
        mbsync();
        pulled = maildir_messages(&maildir.join("INBOX"));
        if pulled.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(pulled.len(), 2);
    alice.sync();
    // Maildir keeps lines ending in LF, and mbsync adds its X-TUID tracking
    // field to its local copies: nothing else may differ.
    let lf = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace("\r\n", "\n")
            .lines()
            .filter(|l| !l.starts_with("X-TUID: "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    for m in alice.inbox() {
        let raw = lf(&alice.raw(m["id"].as_i64().unwrap()));
        assert!(
            pulled.iter().any(|(_, b)| lf(b) == raw),
            "'{}' changed on the way: {raw:?} vs {:?}",
            m["subject"],
            pulled.iter().map(|(_, b)| lf(b)).collect::<Vec<_>>()
        );
    }
    for folder in ["Sent", "Drafts", "Archive", "Trash", "Junk"] {
        assert!(
            maildir.join(folder).is_dir(),
            "{folder} not created locally"
        );
    }

    // Push: a flag set locally, and a draft written locally.
    let (path, _) = &pulled[0];
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let flagged = match name.split_once(":2,") {
        Some((base, flags)) => format!("{base}:2,F{flags}"),
        None => format!("{name}:2,F"),
    };
    std::fs::rename(path, maildir.join("INBOX/cur").join(flagged)).unwrap();
    let draft = b"From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: written offline\r\n\r\ndraft\r\n";
    std::fs::create_dir_all(maildir.join("Drafts/new")).unwrap();
    std::fs::write(maildir.join("Drafts/new/1.draft"), draft).unwrap();
    mbsync();

    let out = python(
        r#"
import imaplib, sys
m = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))
m.login('alice@pouch.local', sys.argv[2])
m.select('INBOX')
typ, data = m.search(None, 'FLAGGED')
print('flagged', data[0].decode())
m.select('Drafts')
typ, data = m.fetch('1:*', '(BODY.PEEK[])')
print('drafts', [d[1] for d in data if isinstance(d, tuple)])
"#,
        &[&bridge.imap_port.to_string(), &bridge.password],
    );
    assert!(
        out.contains("flagged 1") || out.contains("flagged 2"),
        "{out}"
    );
    assert!(out.contains("written offline"), "{out}");
    // A second run changes nothing.
    mbsync();
    assert_eq!(maildir_messages(&maildir.join("INBOX")).len(), 2);
    assert_eq!(maildir_messages(&maildir.join("Drafts")).len(), 1);
}

/// Dovecot's IMAP server as a private, preauthenticated instance on its own
/// Maildir (the differential script hands it a loopback connection, as inetd
/// does): the command line to start it.
fn private_dovecot(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("Maildir")).unwrap();
    let conf = dir.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "mail_location = maildir:{}/Maildir\nlog_path = {}/dovecot.log\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    for p in [dir.to_path_buf(), dir.join("Maildir")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Dovecot will not serve mail as root: run it as nobody.
    [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "env",
        "-i",
        "USER=nobody",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("HOME={}", dir.display()),
        "PATH=/usr/bin:/bin".into(),
        "/usr/lib/dovecot/imap".into(),
        "-c".into(),
        conf.display().to_string(),
    ])
    .collect()
}

#[test]
fn the_bridge_answers_fetch_and_search_as_dovecot_does() {
    let dir = Scratch::new("bridge-differential");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bridge = Bridge::start(&alice);
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut args: Vec<String> = vec![
        data.join("differential.py").display().to_string(),
        bridge.imap_port.to_string(),
        bridge.password.clone(),
    ];
    args.extend(private_dovecot(&dir.path("dovecot")));
    args.push("--".into());
    for m in ["plain", "encoded", "alternative", "attachment", "forwarded"] {
        args.push(data.join(format!("{m}.eml")).display().to_string());
    }
    let out = Command::new("python3").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "differential run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{report:#}");
    assert!(
        report["compared"].as_u64().unwrap() >= 5 * 6 + 16,
        "{report}"
    );
    assert_eq!(report["differences"], serde_json::json!([]), "{report:#}");
}

#[test]
fn thunderbird_reads_the_folders_and_sends_through_the_bridge() {
    let dir = Scratch::new("bridge-thunderbird");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "For Thunderbird",
        "--body",
        "hello",
    ]);
    let bridge = Bridge::start(&alice);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/thunderbird.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.path("thunderbird-profile"))
        .args([
            &bridge.imap_port.to_string(),
            &bridge.smtp_port.to_string(),
            &bridge.password,
            "For Thunderbird",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thunderbird run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{seen}");
    let folders = seen["folders"].to_string();
    for f in ["INBOX", "Sent", "Drafts", "Trash", "Archive", "Junk"] {
        assert!(folders.contains(f), "{f} not in {folders}");
    }
    assert!(
        seen["subjects"].to_string().contains("For Thunderbird"),
        "{seen}"
    );
    assert_eq!(seen["sent"], "sent", "{seen}");
    // Bob reads what Thunderbird sent.
    let got = received(&bob, "Written in Thunderbird");
    assert!(
        String::from_utf8_lossy(&got).contains("Sent by Thunderbird through the Pouch bridge.")
    );
    // Thunderbird keeps its copy in Sent (fcc, its default) by an APPEND
    // after SMTP, racing the bridge's outbox; once both are filed, Sent
    // holds exactly one copy. Its copy arrives on its own, after the send
    // is reported: give it time before the bridge stops (without the
    // matching, this test sees two copies).
    std::thread::sleep(std::time::Duration::from_secs(8));
    drop(bridge);
    let mut d = pouch_client::Device::open(&alice.home, PASSPHRASE).unwrap();
    d.refresh_mailboxes().unwrap();
    let sent = d.mailbox("Sent").unwrap().unwrap();
    let copies = d
        .entries(sent.id)
        .unwrap()
        .iter()
        .filter(|e| {
            let raw = d.raw(e.message).unwrap();
            String::from_utf8_lossy(&raw).contains("Subject: Written in Thunderbird")
        })
        .count();
    assert_eq!(copies, 1, "copies of the sent mail in Sent");
}

const TLS: &str = r#"
import imaplib, smtplib, ssl, sys
mode, imap_port, smtp_port, password, cert = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cert)
msg = ('From: alice@pouch.local\r\nTo: bob@pouch.local\r\nSubject: over %s\r\n\r\nencrypted on loopback too\r\n' % mode).encode()
# A verifying client that has not been told to trust the bridge's certificate gets nowhere.
system_only = ssl.create_default_context()
try:
    if mode == 'implicit':
        imaplib.IMAP4_SSL('127.0.0.1', imap_port, ssl_context=system_only)
    else:
        imaplib.IMAP4('127.0.0.1', imap_port).starttls(ssl_context=system_only)
    raise SystemExit('an untrusted certificate was accepted')
except ssl.SSLError:
    print('untrusted refused')
if mode == 'implicit':
    m = imaplib.IMAP4_SSL('127.0.0.1', imap_port, ssl_context=ctx)
    s = smtplib.SMTP_SSL('127.0.0.1', smtp_port, context=ctx)
else:
    m = imaplib.IMAP4('127.0.0.1', imap_port)
    assert 'STARTTLS' in m.capabilities and 'LOGINDISABLED' in m.capabilities, m.capabilities
    try:
        m.login('alice@pouch.local', password)
        raise SystemExit('a login in the clear was accepted')
    except imaplib.IMAP4.error as e:
        print('clear login refused', e)
    m = imaplib.IMAP4('127.0.0.1', imap_port)
    m.starttls(ssl_context=ctx)
    s = smtplib.SMTP('127.0.0.1', smtp_port)
    s.ehlo()
    assert not s.has_extn('auth') and s.has_extn('starttls'), s.esmtp_features
    s.starttls(context=ctx)
    s.ehlo()
m.login('alice@pouch.local', password)
typ, data = m.select('INBOX')
print('imap', typ, data[0].decode())
s.login('alice@pouch.local', password)
print('smtp refused', s.sendmail('alice@pouch.local', ['bob@pouch.local'], msg))
s.quit()
m.logout()
"#;

#[test]
fn mail_clients_reach_the_bridge_over_tls_and_starttls() {
    let dir = Scratch::new("bridge-tls");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let cert = alice.home.join("bridge-cert.pem");
    for mode in ["implicit", "starttls"] {
        let bridge = Bridge::start_with(&alice, &["--tls", mode]);
        let out = python(
            TLS,
            &[
                mode,
                &bridge.imap_port.to_string(),
                &bridge.smtp_port.to_string(),
                &bridge.password,
                cert.to_str().unwrap(),
            ],
        );
        assert!(out.contains("untrusted refused"), "{out}");
        assert!(out.contains("imap OK"), "{out}");
        assert!(out.contains("smtp refused {}"), "{out}");
        if mode == "starttls" {
            assert!(out.contains("clear login refused"), "{out}");
        }
        let got = received(&bob, &format!("over {mode}"));
        assert!(String::from_utf8_lossy(&got).contains("encrypted on loopback too"));
    }
    // The key stays private to the device's owner.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(alice.home.join("bridge-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the bridge's key is readable by others");
}

/// Mail reaches the mail client when it is queued, not at the next sync:
/// the bridge waits on the server (a long-poll) off the device's thread.
/// Its full syncs here are an hour apart, so only the push can bring it.
#[test]
fn new_mail_is_pushed_to_the_bridge_without_waiting_for_a_sync() {
    let dir = Scratch::new("bridge-push");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    let bridge = Bridge::start_syncing(&alice, 3600, &[]);
    // Nothing there yet (and the bridge's first full sync is over).
    let look = r#"
import imaplib, sys, time
port, password, subject, secs = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.time() + secs
while True:
    try:
        m = imaplib.IMAP4('127.0.0.1', port)
        m.login('alice@pouch.local', password)
        break
    except Exception:
        if time.time() > deadline: raise
        time.sleep(0.2)
while time.time() < deadline:
    m.select('INBOX')
    typ, data = m.search(None, 'SUBJECT', '"' + subject + '"')
    if data[0].split():
        print('found')
        break
    time.sleep(0.2)
else:
    print('missing')
"#;
    assert_eq!(
        python(
            look,
            &[
                &bridge.imap_port.to_string(),
                &bridge.password,
                "pushed",
                "3"
            ]
        )
        .trim(),
        "missing"
    );
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "pushed",
        "--body",
        "no sync interval in between",
    ]);
    assert_eq!(
        python(
            look,
            &[
                &bridge.imap_port.to_string(),
                &bridge.password,
                "pushed",
                "90"
            ]
        )
        .trim(),
        "found"
    );
}
