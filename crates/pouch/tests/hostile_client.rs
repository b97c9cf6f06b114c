//! A hostile (or broken) mail client against the bridge: inputs that once
//! took it down — a sequence set of four billion numbers, a LIST pattern with
//! exponential backtracking, lines and literals without end, a flood of
//! connections, password guessing across connections. Each is refused
//! cleanly, the bridge keeps serving another session, and its memory stays
//! under a stated bound (measured from /proc).

mod common;

use common::*;
use std::time::Duration;

/// Peak resident memory the bridge may reach during these attacks. A device
/// with its caches sits near 40 MiB; one APPEND may hold a 64 MiB literal.
const RSS_BOUND_MIB: u64 = 200;

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Another session still gets a greeting and an answer: the bridge serves on.
fn still_serving(bridge: &Bridge) {
    let mut c = Raw::imap_login(bridge.imap_port, &bridge.password);
    let answer = c.command("n", "NOOP");
    assert!(answer.last().unwrap().starts_with("n OK"), "{answer:?}");
}

#[test]
fn the_bridge_survives_a_hostile_imap_client() {
    let dir = Scratch::new("hostile-imap");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bob = user(&dir, &server, "bob");
    bob.ok(&[
        "send",
        "--to",
        "alice@pouch.local",
        "--subject",
        "Hi",
        "--body",
        "x",
    ]);
    let bridge = Bridge::start(&alice);
    let pid = bridge.child.id();

    let mut c = Raw::imap_login(bridge.imap_port, &bridge.password);
    // A folder with a long name, for the pattern below.
    let long = "Archive".repeat(9);
    assert!(
        c.command("c", &format!("CREATE {long}"))
            .last()
            .unwrap()
            .starts_with("c OK")
    );
    c.command("s", "SELECT INBOX");

    // Four billion UIDs in one set: answered from the mailbox, not expanded.
    let answer = c.command("f", "UID FETCH 1:4294967295 (FLAGS)");
    assert!(answer.last().unwrap().starts_with("f OK"), "{answer:?}");
    assert!(answer.len() <= 3, "one message at most: {answer:?}");
    let answer = c.command("g", "UID FETCH 1:*,2:4294967295,4294967295 (UID)");
    assert!(answer.last().unwrap().starts_with("g OK"), "{answer:?}");
    let answer = c.command("h", "UID SEARCH UID 1:4294967295");
    assert!(answer.last().unwrap().starts_with("h OK"), "{answer:?}");

    // A pattern that backtracking would take ages over: matched in linear time.
    let pattern = format!("{}Z", "*".repeat(2000));
    let answer = c.command("p", &format!("LIST \"\" \"{pattern}\""));
    assert!(answer.last().unwrap().starts_with("p OK"), "{answer:?}");
    assert_eq!(answer.len(), 1, "nothing ends in Z: {answer:?}");
    let answer = c.command("q", &format!("LIST \"\" \"{}e\"", "%".repeat(2000)));
    assert!(answer.iter().any(|l| l.contains(&long)), "{answer:?}");
    still_serving(&bridge);

    // A literal larger than the cap is refused before a byte of it is read.
    c.send(b"a APPEND INBOX {999999999}\r\n").unwrap();
    let refusal = c.rest();
    assert!(refusal.contains("a NO Literal too large"), "{refusal}");
    still_serving(&bridge);

    // Before login: no big literal, no long line.
    let mut stranger = Raw::connect(bridge.imap_port);
    stranger.line();
    stranger.send(b"x LOGIN {100000}\r\n").unwrap();
    assert!(stranger.rest().contains("x NO Literal too large"));
    let mut stranger = Raw::connect(bridge.imap_port);
    stranger.line();
    let line = vec![b'a'; 20 * 1024];
    let _ = stranger.send(&line);
    let said = stranger.rest();
    assert!(said.contains("BYE Command too long"), "{said}");

    // After login, a quoted string of 80 MiB without an end: closed at the cap.
    let mut big = Raw::imap_login(bridge.imap_port, &bridge.password);
    let _ = big.send(b"b SEARCH SUBJECT \"");
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..80 {
        if big.send(&chunk).is_err() {
            break;
        }
    }
    assert!(big.rest().contains("BYE Command too long"));
    still_serving(&bridge);

    let peak = peak_rss_mib(pid);
    eprintln!("bridge peak RSS after the IMAP attacks: {peak} MiB");
    assert!(peak < RSS_BOUND_MIB, "peak RSS {peak} MiB");
}

#[test]
fn the_bridge_caps_connections_and_slows_password_guessing() {
    let dir = Scratch::new("hostile-conns");
    let server = Server::start(&dir.path("server"), None);
    let alice = user(&dir, &server, "alice");
    let bridge = Bridge::start(&alice);

    // A flood of idle connections: those past the cap are told and closed,
    // and once the flood ends the port serves again.
    let mut held = Vec::new();
    for _ in 0..70 {
        held.push(Raw::connect(bridge.imap_port));
    }
    let greetings: Vec<String> = held.iter_mut().map(|c| c.line()).collect();
    let refused = greetings
        .iter()
        .filter(|g| g.contains("Too many connections"))
        .count();
    assert_eq!(refused, 70 - 64, "{greetings:?}");
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Raw::connect(bridge.imap_port);
        if c.line().starts_with("* OK") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the port never served again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Password guessing over many connections at once: after ten attempts
    // each further guess waits its turn (1 s, doubling), so forty connections
    // buy a dozen guesses in a few seconds rather than forty.
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let port = bridge.imap_port;
            std::thread::spawn(move || {
                let mut c = Raw::connect(port);
                c.line();
                let _ = c.send(format!("g LOGIN alice@pouch.local wrong{i}\r\n").as_bytes());
                // The answer (NO), or nothing if the bridge is gone by then.
                c.line()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let (done, waiting): (Vec<_>, Vec<_>) = guesses.into_iter().partition(|g| g.is_finished());
    let answers: Vec<String> = done.into_iter().map(|g| g.join().unwrap()).collect();
    assert!(
        answers.iter().all(|a| a.starts_with("g NO")),
        "every answered guess is refused: {answers:?}"
    );
    assert!(
        answers.len() <= 13,
        "{} guesses answered in 4 s; the throttle should allow about 12: {answers:?}",
        answers.len()
    );
    drop(waiting);

    // SMTP: an AUTH line without end is cut off at the cap.
    let mut smtp = Raw::connect(bridge.smtp_port);
    assert!(smtp.line().starts_with("220"));
    smtp.send(b"EHLO x\r\n").unwrap();
    while !smtp.line().starts_with("250 ") {}
    smtp.send(b"AUTH PLAIN\r\n").unwrap();
    assert!(smtp.line().starts_with("334"));
    let chunk = vec![b'A'; 1 << 20];
    for _ in 0..20 {
        if smtp.send(&chunk).is_err() {
            break;
        }
    }
    assert!(smtp.rest().contains("500 5.5.2 Line too long"));
    // And so is a command line.
    let mut smtp = Raw::connect(bridge.smtp_port);
    smtp.line();
    let _ = smtp.send(&vec![b'B'; 1 << 20]);
    assert!(smtp.rest().contains("Line too long"));
}

#[test]
fn the_server_drops_clients_that_trickle_or_stall() {
    let dir = Scratch::new("hostile-slow");
    let server = Server::start(&dir.path("server"), None);
    let port = server.url.rsplit(':').next().unwrap().to_string();
    // A TLS client that sends one header line a second, and a TCP client
    // that never starts its handshake: both are cut off (10 s each), while
    // an ordinary request is answered meanwhile.
    let script = r#"
import socket, ssl, sys, time, urllib.request
port = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
slow = ctx.wrap_socket(socket.create_connection(('127.0.0.1', port)))
mute = socket.create_connection(('127.0.0.1', port))
slow.send(b"GET /v1/info HTTP/1.1\r\nHost: pouch\r\n")
start = time.time()
closed = None
while time.time() - start < 40:
    try:
        slow.send(b"X-Slow: 1\r\n")
        slow.settimeout(1)
        if slow.recv(1) == b"":
            closed = time.time() - start
            break
    except socket.timeout:
        pass
    except (ssl.SSLError, OSError):
        closed = time.time() - start
        break
ok = urllib.request.urlopen("https://127.0.0.1:%d/v1/info" % port, context=ctx).status
mute.settimeout(5)
try:
    mute_closed = mute.recv(1) == b""
except (socket.timeout, OSError):
    mute_closed = False
print("trickler closed after", None if closed is None else int(closed), "info", ok, "mute closed", mute_closed)
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&port)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Option<u64> = said
        .split("trickler closed after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    assert!(after.is_some_and(|s| s <= 15), "{said}");
    assert!(said.contains("info 200"), "{said}");
    assert!(said.contains("mute closed True"), "{said}");
}

/// A TCP connection to `port` on 127.0.0.1 from the source address `from`.
fn connect_from(from: &str, port: u16) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    socket.into()
}

/// Whether the server closed the connection at once (rather than waiting
/// for the TLS handshake, as it does for an admitted one).
fn closed_at_once(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn one_address_cannot_hold_all_of_the_servers_connections() {
    let dir = Scratch::new("hostile-conns");
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--max-connections-per-source", "8"],
    );
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    // 127.0.0.2 opens connections and sends nothing: eight are admitted
    // (each waits for its TLS handshake), the ninth is closed at once.
    let mut held: Vec<std::net::TcpStream> =
        (0..8).map(|_| connect_from("127.0.0.2", port)).collect();
    assert!(
        !closed_at_once(&mut held[7]),
        "the eighth connection is admitted"
    );
    let mut ninth = connect_from("127.0.0.2", port);
    assert!(closed_at_once(&mut ninth), "the ninth is refused");
    // Everyone else is served meanwhile.
    let alice = user(&dir, &server, "alice");
    alice.sync();
    // Slots come back when connections close.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = connect_from("127.0.0.2", port);
    assert!(
        !closed_at_once(&mut again),
        "admitted again once others closed"
    );
}

#[test]
fn link_request_spam_is_capped_and_swept() {
    let dir = Scratch::new("hostile-links");
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--link-ttl-secs", "3"],
    );
    let alice = user(&dir, &server, "alice");
    let link = |n: usize| {
        pouch()
            .arg("--home")
            .arg(dir.path(&format!("spam{n}")))
            .env("POUCH_PASSPHRASE", PASSPHRASE)
            .args([
                "link",
                &alice.address,
                "--server",
                &server.url,
                "--fingerprint",
                &server.fingerprint,
                "--device-name",
                "spam",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Five requests wait for approval; the sixth is refused with a reason.
    let mut waiting: Vec<_> = (0..5).map(link).collect();
    let pending = || -> i64 {
        server
            .db()
            .query_row(
                "SELECT count(*) FROM link_requests WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pending() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the five requests never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = link(5).wait_with_output().unwrap();
    assert_one_line_error(&out, "too many link requests");
    for mut c in waiting.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Nobody asks about them again: the sweeper expires them, and what
    // they held (key packages) goes with them.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pending() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending requests were never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let held: i64 = server
        .db()
        .query_row(
            "SELECT count(*) FROM key_packages k JOIN devices d ON d.device_id = k.device_id WHERE d.revoked_by = 'expired'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "expired requests still hold key packages");
    // And the account can be asked again.
    let mut again = link(6);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pending() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "a new request after the sweep was refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = again.kill();
    let _ = again.wait();
}

/// POST /v1/link is open to anyone (a new device has no credentials yet), so
/// it must not tell a stranger who exists: an enrolled account, an invited
/// one without a device, and an address nobody has get the same answers —
/// a code, a status that stays "pending" and then "expired", the same caps —
/// while the security team sees the attempts on accounts that cannot link.
#[test]
fn link_requests_tell_a_stranger_nothing_about_who_exists() {
    use pouch_proto::api;
    let dir = Scratch::new("link-oracle");
    let server = Server::start_with(
        &dir.path("server"),
        None,
        "127.0.0.1:0",
        &["--link-ttl-secs", "3"],
    );
    let _alice = user(&dir, &server, "alice");
    let _ = server.invite("invited@pouch.local");
    let api = pouch_client::net::Api::new(&server.url, &server.fingerprint).unwrap();
    let info: api::ServerInfo = api.get_json("/v1/info").unwrap();
    let suite = pouch_mls::ciphersuite(info.ciphersuite).unwrap();
    let provider = openmls_libcrux_crypto::Provider::default();
    // One request as a new device sends it; the answer's status, and the
    // JSON shape without the values that differ per request anyway.
    let post = |body: &api::LinkRequestBody| -> Result<api::LinkCreated, u16> {
        api.post_json::<_, api::LinkCreated>("/v1/link", body)
            .map_err(|e| match e {
                pouch_client::ClientError::Server {
                    status, message, ..
                } => {
                    assert!(
                        (status == 429 && message.contains("too many link requests"))
                            || (status == 409 && message.contains("already exists")),
                        "{status} {message}"
                    );
                    status
                }
                other => panic!("{other}"),
            })
    };
    let request = |address: &str| {
        let signer = pouch_mls::new_device_signer(&provider).unwrap();
        let address = pouch_proto::Address::parse(address).unwrap();
        let poll_secret = rand::random::<[u8; 32]>().to_vec();
        let kps = pouch_mls::key_packages(&provider, suite, &signer, &address, 2, false).unwrap();
        let last = pouch_mls::key_packages(&provider, suite, &signer, &address, 1, true).unwrap();
        let body = api::LinkRequestBody {
            address,
            device_id: pouch_proto::DeviceId(format!("{:032x}", rand::random::<u128>())),
            device_name: "new laptop".into(),
            signature_key: signer.to_public_vec(),
            nonce: rand::random::<[u8; 16]>().to_vec(),
            poll_secret: poll_secret.clone(),
            key_packages: kps,
            last_resort_key_package: last[0].clone(),
        };
        (post(&body), poll_secret, body)
    };
    let poll = |secret: &[u8]| -> api::LinkInfo {
        api.post_json(
            "/v1/link/status",
            &api::LinkPoll {
                poll_secret: secret.to_vec(),
            },
        )
        .unwrap()
    };
    let addresses = [
        "alice@pouch.local",
        "invited@pouch.local",
        "nobody@pouch.local",
    ];
    let mut secrets = Vec::new();
    for address in addresses {
        let mut answers = Vec::new();
        for n in 0..6 {
            let (answer, secret, body) = request(address);
            if answer.is_ok() {
                secrets.push((address, secret));
            }
            answers.push(answer.map(|c| c.code.len()));
            if n == 0 {
                // The same request again is a conflict, decoy or not.
                assert_eq!(post(&body).map(|_| ()), Err(409), "{address}");
            }
        }
        assert_eq!(
            answers,
            vec![Ok(14), Ok(14), Ok(14), Ok(14), Ok(14), Err(429)],
            "{address}: five requests wait, the sixth is refused"
        );
    }
    for (address, secret) in &secrets {
        let status = poll(secret);
        assert_eq!(
            (status.status.as_str(), status.address.as_str()),
            ("pending", *address)
        );
    }
    std::thread::sleep(Duration::from_secs(4));
    for (address, secret) in &secrets {
        assert_eq!(poll(secret).status, "expired", "{address}");
    }
    // The attempts on accounts that cannot link are on the record.
    let refused: i64 = server
        .db()
        .query_row(
            "SELECT count(*) FROM events WHERE action = 'link_request' AND account IN ('invited@pouch.local', 'nobody@pouch.local') AND body LIKE '%no device of this account%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(refused >= 10, "{refused} attempts recorded");
}
