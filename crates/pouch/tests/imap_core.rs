//! The bridge's IMAP protocol core without a socket: bytes fed in, bytes
//! taken out, and what the session wants next (`Wanted`), on a real
//! device's encrypted store, with mail sent through a real server.
//! The connection-level behaviour (real mail clients) is in bridge.rs.

mod common;

use common::*;
use pouch_bridge::imap::{ImapSession, Wanted};
use pouch_client::Device;

/// Alice, with `mails` mails from Bob in her INBOX, and her bridge's core.
struct Fixture {
    _dir: Scratch,
    server: Server,
    alice: Client,
    bob: Client,
    shared: pouch_bridge::Shared,
    password: String,
}

fn fixture(name: &str, mails: usize) -> Fixture {
    let dir = Scratch::new(name);
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    for i in 0..mails {
        let subject = format!("mail {i}");
        bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            &subject,
            "--body",
            "x",
        ]);
    }
    alice.sync();
    let password = Device::open(&alice.home, PASSPHRASE)
        .unwrap()
        .bridge_password()
        .unwrap()
        .to_string();
    let home = alice.home.clone();
    let shared = pouch_bridge::Shared::start(move || {
        let mut d = Device::open(&home, PASSPHRASE)?;
        d.refresh_mailboxes()?;
        Ok(d)
    })
    .unwrap();
    Fixture {
        _dir: dir,
        server,
        alice,
        bob,
        shared,
        password,
    }
}

/// The device's own HTTP client blocks, so a test's async part runs in a
/// runtime of its own, after the fixture is made.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Feeds `input`, advances once, and returns what was wanted and written.
async fn exchange(s: &mut ImapSession, input: &str) -> (Wanted, String) {
    s.feed(input.as_bytes());
    let wanted = s.advance().await;
    (
        wanted,
        String::from_utf8_lossy(&s.take_output()).into_owned(),
    )
}

fn logged_in_line(f: &Fixture) -> String {
    format!("a LOGIN alice@pouch.local \"{}\"\r\n", f.password)
}

#[test]
fn the_session_answers_by_its_state_from_greeting_to_logout() {
    let f = fixture("imap-core-states", 1);
    runtime().block_on(async {
        let mut s = ImapSession::new(f.shared.clone(), true, None);
        assert!(String::from_utf8_lossy(&s.take_output()).starts_with("* OK [CAPABILITY"));

        // Not authenticated: mail commands are refused, and waiting is bounded
        // by the login deadline (at most a minute).
        let (wanted, out) = exchange(&mut s, "f1 FETCH 1 FLAGS\r\nl1 LIST \"\" *\r\n").await;
        assert!(out.contains("f1 NO Log in first"), "{out}");
        assert!(out.contains("l1 NO Log in first"), "{out}");
        assert!(matches!(wanted, Wanted::Input(d) if d <= std::time::Duration::from_secs(60)));

        // A wrong password, then the right one.
        let (_, out) = exchange(&mut s, "a0 LOGIN alice@pouch.local wrong\r\n").await;
        assert!(out.contains("a0 NO [AUTHENTICATIONFAILED]"), "{out}");
        let (wanted, out) = exchange(&mut s, &logged_in_line(&f)).await;
        assert!(out.contains("a OK [CAPABILITY"), "{out}");
        assert!(matches!(wanted, Wanted::Input(d) if d == std::time::Duration::from_secs(30 * 60)));

        // Authenticated, nothing selected: FETCH and IDLE need a folder.
        let (_, out) = exchange(&mut s, "f2 FETCH 1 FLAGS\r\ni0 IDLE\r\n").await;
        assert!(out.contains("f2 BAD Select a folder first"), "{out}");
        assert!(out.contains("i0 BAD Select a folder before IDLE"), "{out}");

        let (_, out) = exchange(&mut s, "s SELECT INBOX\r\n").await;
        assert!(out.contains("* 1 EXISTS"), "{out}");
        assert!(out.contains("s OK [READ-WRITE] Selected"), "{out}");

        // Logging in again is refused and leaves the folder selected.
        let (_, out) = exchange(&mut s, &logged_in_line(&f)).await;
        assert!(out.contains("a BAD Already logged in"), "{out}");
        let (_, out) = exchange(&mut s, "f4 FETCH 1 (FLAGS)\r\n").await;
        assert!(out.contains("* 1 FETCH (UID 1 FLAGS"), "{out}");

        // IDLE waits for the client; a new mail is told during it.
        let (wanted, out) = exchange(&mut s, "i IDLE\r\n").await;
        assert!(matches!(wanted, Wanted::Idle), "IDLE must wait for DONE");
        assert_eq!(out, "+ idling\r\n");
        f.bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            "during idle",
            "--body",
            "y",
        ]);
        f.shared
            .with(|d| {
                d.sync()?;
                d.refresh_mailboxes()
            })
            .await
            .unwrap();
        s.changed().await;
        let told = String::from_utf8_lossy(&s.take_output()).into_owned();
        assert_eq!(told, "* 2 EXISTS\r\n");
        let (_, out) = exchange(&mut s, "DONE\r\n").await;
        assert!(out.contains("i OK IDLE terminated"), "{out}");

        // Once the folder is closed, FETCH needs one again.
        let (_, out) = exchange(&mut s, "c CLOSE\r\nf3 FETCH 1 FLAGS\r\n").await;
        assert!(out.contains("c OK Close completed"), "{out}");
        assert!(out.contains("f3 BAD Select a folder first"), "{out}");

        let (wanted, out) = exchange(&mut s, "z LOGOUT\r\nn NOOP\r\n").await;
        assert!(
            out.contains("* BYE") && out.contains("z OK Logout completed"),
            "{out}"
        );
        assert!(
            !out.contains("n OK"),
            "nothing is answered after LOGOUT: {out}"
        );
        assert!(matches!(wanted, Wanted::Close));
        drop(f.server);
    });
}

#[test]
fn three_failed_logins_end_the_session() {
    let f = fixture("imap-core-failures", 0);
    runtime().block_on(async {
        let mut s = ImapSession::new(f.shared.clone(), true, None);
        s.take_output();
        let (_, _) = exchange(&mut s, "a LOGIN alice@pouch.local one\r\n").await;
        let (_, _) = exchange(&mut s, "b LOGIN alice@pouch.local two\r\n").await;
        let (wanted, out) = exchange(
            &mut s,
            &format!("c LOGIN alice@pouch.local three\r\n{}", logged_in_line(&f)),
        )
        .await;
        assert!(
            out.contains("c NO") && out.contains("* BYE Too many failed logins"),
            "{out}"
        );
        assert!(
            !out.contains("a OK"),
            "a login after the third failure is not read: {out}"
        );
        assert!(matches!(wanted, Wanted::Close));
    });
}

#[test]
fn pipelined_fetches_are_answered_together_and_in_order() {
    let f = fixture("imap-core-pipelined", 3);
    runtime().block_on(async {
    let mut s = ImapSession::new(f.shared.clone(), true, None);
    s.take_output();
    exchange(&mut s, &logged_in_line(&f)).await;
    exchange(&mut s, "s SELECT INBOX\r\n").await;

    // Three FETCH commands back to back, then a NOOP: the three are
    // answered in one turn of the device's thread, in the order sent, and
    // the NOOP only after them.
    let (wanted, out) = exchange(
        &mut s,
        "f1 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\nf2 FETCH 2 (BODY[])\r\nf3 UID FETCH 1:* (FLAGS)\r\nn NOOP\r\n",
    )
    .await;
    assert!(matches!(wanted, Wanted::Write), "one turn answered, more to do");
    let at = |needle: &str| out.find(needle).unwrap_or_else(|| panic!("{needle} missing in {out}"));
    assert!(at("Subject: mail 0") < at("f1 OK Fetch completed"));
    assert!(at("f1 OK") < at("* 2 FETCH (UID 2 BODY[]"));
    assert!(at("* 2 FETCH (UID 2 BODY[]") < at("f2 OK"));
    // FETCH 2 BODY[] marked mail 2 seen; the FETCH behind it sees that.
    let flags_of_2 = &out[at("f2 OK")..];
    assert!(flags_of_2.contains("* 2 FETCH (UID 2 FLAGS (\\Seen))"), "{out}");
    assert!(!out.contains("n OK"), "the NOOP waits for the FETCHes: {out}");
    let (wanted, out) = exchange(&mut s, "").await;
    assert!(out.starts_with("n OK"), "{out}");
    assert!(matches!(wanted, Wanted::Input(_)));
    });
}

#[test]
fn a_fetch_of_many_bodies_goes_out_in_parts() {
    // Three mails with 2 MiB attachments (about 2.8 MiB each in base64)
    // and a small fourth: with 8 MiB of messages per turn, a FETCH of the
    // three big bodies goes out in two parts, and the bridge never holds
    // more than one part.
    let f = fixture("imap-core-parts", 0);
    runtime().block_on(async {
        let big = f.alice.home.parent().unwrap().join("big.bin");
        std::fs::write(&big, vec![0x5a; 2 * 1024 * 1024]).unwrap();
        for i in 0..3 {
            let subject = format!("big {i}");
            f.bob.ok(&[
                "send",
                "--to",
                "alice@pouch.local",
                "--subject",
                &subject,
                "--body",
                "attached",
                "--attach",
                big.to_str().unwrap(),
            ]);
        }
        f.bob.ok(&[
            "send",
            "--to",
            "alice@pouch.local",
            "--subject",
            "small",
            "--body",
            "s",
        ]);
        f.shared
            .with(|d| {
                d.sync()?;
                d.refresh_mailboxes()
            })
            .await
            .unwrap();
        let mut s = ImapSession::new(f.shared.clone(), true, None);
        s.take_output();
        exchange(&mut s, &logged_in_line(&f)).await;
        let (_, out) = exchange(&mut s, "s SELECT INBOX\r\n").await;
        assert!(out.contains("* 4 EXISTS"), "{out}");

        // A FETCH that reads (and so marks seen) the small mail 4 waits
        // behind the split one, though it would fit the first part:
        // nothing of it happens before its turn.
        let (wanted, first) = exchange(
            &mut s,
            "f FETCH 1:3 (BODY.PEEK[])\r\ng FETCH 4 (BODY[])\r\n",
        )
        .await;
        assert!(matches!(wanted, Wanted::Write));
        assert_eq!(
            first.matches(" FETCH (UID ").count(),
            2,
            "two mails fit the first part"
        );
        assert!(!first.contains("f OK"));
        let seen_4 = || async {
            f.shared
                .with(|d| {
                    let inbox = d.mailbox("INBOX").unwrap().unwrap();
                    let e = d.entries(inbox.id).unwrap();
                    e.iter()
                        .any(|e| e.uid == 4 && e.flags.iter().any(|f| f == "\\Seen"))
                })
                .await
        };
        assert!(
            !seen_4().await,
            "mail 4 marked seen before the FETCH that reads it ran"
        );
        assert!(first.len() < pouch_bridge::imap::FETCH_TURN_BYTES as usize + 64 * 1024);

        // Then the rest of it, and the FETCH behind it, in order.
        let (_, second) = exchange(&mut s, "").await;
        let f_at = second.find("f OK Fetch completed").expect("f answered");
        assert!(second[..f_at].contains("* 3 FETCH (UID 3 BODY[]"));
        let g_at = second.find("g OK Fetch completed").expect("g answered");
        assert!(second[f_at..g_at].contains("* 4 FETCH (UID 4 BODY[]"));
        assert!(seen_4().await);
    });
}

#[test]
fn nothing_sent_before_starttls_counts_after_it() {
    let f = fixture("imap-core-starttls", 0);
    runtime().block_on(async {
        let cert = pouch_bridge::tls::load_or_create(&f.alice.home.join("bridge-tls")).unwrap();
        let mut s = ImapSession::new(f.shared.clone(), false, Some(cert.config));
        let greeting = String::from_utf8_lossy(&s.take_output()).into_owned();
        assert!(greeting.contains("STARTTLS LOGINDISABLED"), "{greeting}");

        let (_, out) = exchange(&mut s, &logged_in_line(&f)).await;
        assert!(out.contains("a NO [PRIVACYREQUIRED]"), "{out}");
        // A LOGIN injected behind STARTTLS in the same packet (a man in the
        // middle's trick) is dropped with the cleartext buffer.
        let (wanted, out) =
            exchange(&mut s, &format!("t STARTTLS\r\n{}", logged_in_line(&f))).await;
        assert!(matches!(wanted, Wanted::StartTls(_)));
        assert_eq!(out, "t OK Begin TLS negotiation now\r\n");
        s.tls_started();
        let (wanted, out) = exchange(&mut s, "").await;
        assert_eq!(out, "", "the injected LOGIN was not answered");
        assert!(matches!(wanted, Wanted::Input(_)));
        let (_, out) = exchange(&mut s, "f FETCH 1 FLAGS\r\n").await;
        assert!(
            out.contains("f NO Log in first"),
            "still not logged in: {out}"
        );
    });
}
