//! The HTTP API's defences (SPEC §5, issue 9): without a token, web pages
//! other than the server's own are refused (foreign `Origin`,
//! `Sec-Fetch-Site`, DNS rebinding through `Host`); every connection is
//! bounded in time (headers, body, idle keep-alive) and in number (from
//! the descriptor limit), so a flood of slow or idle connections never
//! starves note reads; every error, query errors included, is
//! `{"error": …}`.
//!
//! Each test runs the real `vaultrunner serve` on `127.0.0.1:0` (the
//! address read from `.vaultrunner/http.addr`) and talks raw HTTP/1.1 over
//! `std::net::TcpStream`, so every header (`Host` included) is exactly what
//! the test says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::common::{BIN, SCRUB_ENV, Serve, TestVault, assert_contains, sh_quote, wait_until};

const TOKEN: &str = "guard-test-token";
const SECRET: &str = "guard-test-secret";

/// A running `serve` with HTTP on a free loopback port.
struct Srv {
    serve: Serve,
    /// `127.0.0.1:PORT`.
    addr: String,
    port: u16,
    vault: TestVault,
}

/// A vault with an `echo` agent.
fn echo_vault() -> TestVault {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v
}

/// Starts `vaultrunner serve VAULT --listen 127.0.0.1:0` with `env`, under
/// `ulimit -n NOFILE` when given, and waits for its address.
fn start(vault: TestVault, env: &[(&str, &str)], nofile: Option<u32>) -> Srv {
    let log = vault.parent.join("serve-guard.log");
    let args = [
        "serve",
        vault.root_str(),
        "--listen",
        "127.0.0.1:0",
        "--settle-ms",
        "0",
    ];
    let mut cmd = match nofile {
        None => {
            let mut c = Command::new(BIN);
            c.args(args);
            c
        }
        Some(n) => {
            let mut line = format!("ulimit -n {n} && exec {}", sh_quote(BIN));
            for a in args {
                line.push(' ');
                line.push_str(&sh_quote(a));
            }
            let mut c = Command::new("sh");
            c.args(["-c", &line]);
            c
        }
    };
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
    cmd.env_remove("VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS")
        .env_remove("VAULTRUNNER_HTTP_BODY_TIMEOUT_MS")
        .env("VAULTRUNNER_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("spawn serve");
    let mut serve = Serve { child, log };
    let file = vault.root.join(".vaultrunner/http.addr");
    let mut addr = String::new();
    wait_until(Duration::from_secs(20), "http.addr", || {
        if let Ok(Some(st)) = serve.child.try_wait() {
            panic!("serve exited early ({st}): {}", serve.log_text());
        }
        addr = std::fs::read_to_string(&file).unwrap_or_default();
        addr = addr.trim().to_string();
        !addr.is_empty()
    });
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad http.addr {addr:?}"));
    Srv {
        serve,
        addr,
        port,
        vault,
    }
}

/// An answer: status, header block (lower-cased) and body.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: String,
}

/// Sends raw bytes, reads until the server closes.
fn raw(addr: &str, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("reading the answer: {e}; got {:?}", text(&out)));
    parse(&out).unwrap_or_else(|| panic!("not an HTTP answer: {:?}", text(&out)))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse(out: &[u8]) -> Option<Resp> {
    let all = text(out);
    let (head, body) = all.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Resp {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// `METHOD PATH HTTP/1.1` with `headers`, a `Host: <addr>` unless
/// `headers` has a `host`, `Connection: close` and the body's length.
fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// Asserts `status` with a JSON body of exactly `{"error": "<text>"}`;
/// returns the text.
#[track_caller]
fn json_error(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{r:?}");
    assert_contains(&r.head, "content-type: application/json");
    let v: Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert_eq!(obj.len(), 1, "{v}");
    let msg = obj["error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(!msg.is_empty());
    msg.to_string()
}

type Snapshot = std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)>;

/// Every file of the vault (but `.vaultrunner/`) with its bytes and mtime;
/// a file that vanishes while we look (a temp file renamed) is left out.
fn snapshot(v: &TestVault) -> Snapshot {
    crate::common::walk(&v.root)
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with(".vaultrunner/"))
        .filter_map(|(rel, abs)| {
            let m = std::fs::metadata(&abs).and_then(|m| m.modified()).ok()?;
            Some((rel, (std::fs::read(&abs).ok()?, m)))
        })
        .collect()
}

/// The replies under `Inbox/<agent>/` (in its dated folders too).
fn replies(v: &TestVault, agent: &str) -> usize {
    v.notes_under(&format!("Inbox/{agent}"))
        .iter()
        .filter(|n| n.ends_with(".reply.md"))
        .count()
}

/// The vault once nothing is being written (two snapshots 200 ms apart
/// agree and no temp file is left), so a turn still ending is not taken
/// for a write by a refused request.
fn settled(v: &TestVault) -> Snapshot {
    let mut last = snapshot(v);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(v);
        if now == last && !now.keys().any(|k| k.contains(".vaultrunner-")) {
            return now;
        }
        assert!(Instant::now() < deadline, "the vault never settled");
        last = now;
    }
}

/// Asserts that no file of the vault was written since `before`.
#[track_caller]
fn unchanged(v: &TestVault, before: &Snapshot) {
    let now = snapshot(v);
    let changed: Vec<&String> = now
        .keys()
        .chain(before.keys())
        .filter(|k| now.get(*k) != before.get(*k))
        .collect();
    assert!(changed.is_empty(), "written to the vault: {changed:?}");
}

fn sign(body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body);
    let hex: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn cross_origin_posts_are_refused_and_write_nothing() {
    let srv = start(echo_vault(), &[], None);
    let a = srv.addr.as_str();
    let before = settled(&srv.vault);
    let alias = format!("http://localhost:{}", srv.port);
    let https = format!("https://{a}");
    let text = ("Content-Type", "text/plain");
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let evil = ("Origin", "https://evil.example");
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: &[Case] = &[
        // What `fetch(…, {mode: "no-cors", body: "…"})` sends.
        (
            "POST",
            "/api/agents/echo/messages",
            vec![text, evil, ("Sec-Fetch-Site", "cross-site")],
        ),
        // A `<form method=post>` on another site.
        (
            "POST",
            "/api/agents/echo/messages?wait=5",
            vec![form, ("Origin", "http://evil.example:8080")],
        ),
        ("POST", "/hooks/echo", vec![text, evil]),
        (
            "POST",
            "/hooks/echo",
            vec![form, ("Sec-Fetch-Site", "cross-site")],
        ),
        // Sandboxed frames, file:// pages and redirects send `null`.
        (
            "POST",
            "/api/agents/echo/messages",
            vec![text, ("Origin", "null")],
        ),
        // Another server on this machine is another origin, and
        // `same-site` (another port of localhost) is refused too.
        (
            "POST",
            "/api/agents/echo/messages",
            vec![
                text,
                ("Origin", "http://localhost:1"),
                ("Sec-Fetch-Site", "same-site"),
            ],
        ),
        (
            "POST",
            "/hooks/echo",
            vec![text, ("Sec-Fetch-Site", "same-site")],
        ),
        // Another loopback alias is another origin to the browser.
        (
            "POST",
            "/api/agents/echo/messages",
            vec![text, ("Origin", &alias)],
        ),
        // https is not this server's scheme.
        (
            "POST",
            "/api/agents/echo/messages",
            vec![text, ("Origin", &https)],
        ),
        ("POST", "/api/agents/echo/reset", vec![evil]),
        ("POST", "/api/agents/echo/events/ticket", vec![evil]),
        // Reads are refused too.
        ("GET", "/api/agents", vec![evil]),
        ("GET", "/health", vec![("Sec-Fetch-Site", "cross-site")]),
        ("GET", "/api/agents/echo/events", vec![evil]),
        // A CORS preflight gets no CORS headers.
        (
            "OPTIONS",
            "/api/agents/echo/messages",
            vec![evil, ("Access-Control-Request-Method", "POST")],
        ),
    ];
    for (method, path, headers) in cases {
        let r = call(a, method, path, headers, b"content=hello");
        let msg = json_error(&r, 403);
        assert_contains(&msg, "VAULTRUNNER_TOKEN");
        assert!(
            !r.head.contains("access-control-allow-origin"),
            "{method} {path}: {r:?}"
        );
    }
    unchanged(&srv.vault, &before);
    assert!(!srv.vault.exists("Inbox"));
    drop(srv.serve);
}

#[test]
fn a_foreign_host_is_refused_dns_rebinding() {
    let srv = start(echo_vault(), &[], None);
    let a = srv.addr.as_str();
    let before = settled(&srv.vault);
    // A page at http://evil.example:PORT whose name now resolves to
    // 127.0.0.1: to the browser its requests are same-origin.
    let host = format!("evil.example:{}", srv.port);
    let origin = format!("http://{host}");
    let rebound = [
        ("Host", host.as_str()),
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    let no_origin = [("Host", host.as_str())];
    for headers in [&rebound[..], &no_origin[..]] {
        for (method, path) in [
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/api/agents"),
            ("GET", "/api/agents/echo/events"),
            ("POST", "/api/agents/echo/messages?wait=5"),
            ("POST", "/api/agents/echo/reset"),
            ("POST", "/hooks/echo"),
            ("GET", "/"),
        ] {
            let r = call(a, method, path, headers, b"hi");
            let msg = json_error(&r, 403);
            assert_contains(&msg, "evil.example");
            assert!(!r.body.contains("\"echo\""), "{r:?}");
        }
    }
    // Near misses of this server's own names.
    let other_port = format!("127.0.0.1:{}", srv.port.wrapping_add(1));
    for h in [
        "127.0.0.1",
        "localhost",
        other_port.as_str(),
        "127.0.0.1.nip.io",
    ] {
        let r = call(a, "GET", "/health", &[("Host", h)], b"");
        json_error(&r, 403);
    }
    // An absolute-form target naming another host.
    let r = call(a, "GET", "http://evil.example/health", &[], b"");
    json_error(&r, 403);
    unchanged(&srv.vault, &before);
    drop(srv.serve);
}

#[test]
fn same_origin_and_headerless_requests_work() {
    let srv = start(echo_vault(), &[], None);
    let a = srv.addr.as_str();
    // curl, the CLI: no Origin, no Sec-Fetch-*.
    let r = call(
        a,
        "POST",
        "/api/agents/echo/messages?wait=10",
        &[],
        b"plain",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["reply"], "echo: plain", "{v}");
    // A webhook sender (no secret configured: open).
    let r = call(
        a,
        "POST",
        "/hooks/echo",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/1"),
        ],
        b"{\"zen\":\"ok\"}",
    );
    assert_eq!(r.status, 202, "{r:?}");
    // Every loopback name of this port, any case.
    for h in [
        format!("127.0.0.1:{}", srv.port),
        format!("localhost:{}", srv.port),
        format!("LocalHost:{}", srv.port),
        format!("[::1]:{}", srv.port),
    ] {
        let r = call(a, "GET", "/health", &[("Host", &h)], b"");
        assert_eq!(r.status, 200, "{h}: {r:?}");
        assert_contains(&r.body, "\"echo\"");
    }
    // A page served from this address (the coming status page): its
    // fetches are same-origin; typing the address is `none`.
    for h in [
        format!("127.0.0.1:{}", srv.port),
        format!("localhost:{}", srv.port),
        format!("[::1]:{}", srv.port),
    ] {
        let origin = format!("http://{h}");
        let page = [
            ("Host", h.as_str()),
            ("Origin", origin.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
            ("Content-Type", "text/plain"),
        ];
        let r = call(
            a,
            "POST",
            "/api/agents/echo/messages",
            &page,
            b"from the page",
        );
        assert_eq!(r.status, 202, "{h}: {r:?}");
        let r = call(a, "GET", "/api/agents", &page, b"");
        assert_eq!(r.status, 200, "{h}: {r:?}");
    }
    let r = call(
        a,
        "GET",
        "/health",
        &[("Sec-Fetch-Site", "none"), ("Sec-Fetch-Mode", "navigate")],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    // HTTP/1.0 without a Host header is no browser.
    let r = raw(a, b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    wait_until(Duration::from_secs(10), "five messages answered", || {
        replies(&srv.vault, "echo") == 5
    });
    drop(srv.serve);
}

#[test]
fn with_a_token_the_token_rules_apply() {
    let srv = start(echo_vault(), &[("VAULTRUNNER_TOKEN", TOKEN)], None);
    let a = srv.addr.as_str();
    let bearer = format!("Bearer {TOKEN}");
    // A proxy or tunnel rewrites Host; a page elsewhere calls with the
    // token: the token decides, not the guard.
    let foreign = [
        ("Host", "vault.example.org"),
        ("Origin", "https://dashboard.example.org"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let mut with_token = foreign.to_vec();
    with_token.push(("Authorization", &bearer));
    let r = call(
        a,
        "POST",
        "/api/agents/echo/messages?wait=10",
        &with_token,
        b"hi",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = call(a, "GET", "/api/agents", &with_token, b"");
    assert_eq!(r.status, 200, "{r:?}");
    let before = settled(&srv.vault);
    for path in ["/api/agents/echo/messages", "/hooks/echo"] {
        let r = call(a, "POST", path, &foreign, b"hi");
        json_error(&r, 401);
    }
    // Agent names are not public.
    let r = call(a, "GET", "/health", &foreign, b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "{\"status\":\"ok\"}");
    let r = call(a, "GET", "/health", &[("Authorization", &bearer)], b"");
    assert_contains(&r.body, "\"echo\"");
    unchanged(&srv.vault, &before);
    drop(srv.serve);
}

#[test]
fn a_signed_webhook_through_a_tunnel_passes_without_a_token() {
    let srv = start(
        echo_vault(),
        &[("VAULTRUNNER_WEBHOOK_SECRET", SECRET)],
        None,
    );
    let a = srv.addr.as_str();
    let body = b"{\"action\":\"opened\"}";
    let sig = sign(body);
    let tunnel = ("Host", "abc123.tunnel.example");
    let r = call(
        a,
        "POST",
        "/hooks/echo?wait=10",
        &[tunnel, ("X-Hub-Signature-256", &sig)],
        body,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let before = settled(&srv.vault);
    // A wrong signature is refused by the webhook's own check.
    let wrong = sign(b"something else");
    let r = call(
        a,
        "POST",
        "/hooks/echo",
        &[tunnel, ("X-Hub-Signature-256", &wrong)],
        body,
    );
    json_error(&r, 401);
    // Unsigned, or the API, through the tunnel: the guard.
    json_error(&call(a, "POST", "/hooks/echo", &[tunnel], body), 403);
    json_error(
        &call(a, "POST", "/api/agents/echo/messages", &[tunnel], body),
        403,
    );
    unchanged(&srv.vault, &before);
    drop(srv.serve);
}

/// Reads from `s` until the server closes it (EOF, reset or broken pipe)
/// or `within` passes; the bytes read and whether it closed.
fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return (out, true);
            }
            Err(_) => return (out, false),
        }
        if t0.elapsed() > within {
            return (out, false);
        }
    }
}

#[test]
fn slow_headers_half_bodies_and_idle_connections_are_closed_within_the_bound() {
    let srv = start(
        echo_vault(),
        &[
            ("VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS", "500"),
            ("VAULTRUNNER_HTTP_BODY_TIMEOUT_MS", "500"),
        ],
        None,
    );
    let a = srv.addr.as_str();
    let before = settled(&srv.vault);
    let bound = Duration::from_secs(5);

    // Idle from the start: never sends a byte.
    let mut s = TcpStream::connect(a).unwrap();
    let t0 = Instant::now();
    let (_, closed) = until_closed(&mut s, bound);
    assert!(closed, "an idle connection was still open after {bound:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );

    // Slow loris: a header byte every 100 ms, never the blank line.
    let mut s = TcpStream::connect(a).unwrap();
    let t0 = Instant::now();
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: {a}\r\nX-Slow: ").as_bytes())
        .unwrap();
    let mut cut = false;
    while t0.elapsed() < bound {
        if s.write_all(b"x").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !cut {
        cut = until_closed(&mut s, Duration::from_millis(100)).1;
    }
    assert!(cut, "slow headers still accepted after {:?}", t0.elapsed());

    // Half a body: 408 (JSON) or a closed connection, and nothing written.
    for path in ["/api/agents/echo/messages", "/hooks/echo"] {
        let mut s = TcpStream::connect(a).unwrap();
        let t0 = Instant::now();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: {a}\r\nContent-Length: 100\r\n\r\nonly ten b")
                .as_bytes(),
        )
        .unwrap();
        let (out, closed) = until_closed(&mut s, bound);
        assert!(
            closed,
            "{path}: half a body still waited for after {bound:?}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t0.elapsed()
        );
        if !out.is_empty() {
            let r = parse(&out).unwrap_or_else(|| panic!("{:?}", text(&out)));
            json_error(&r, 408);
            assert_contains(&r.head, "connection: close");
        }
    }

    // Idle between requests (keep-alive): answered, then closed.
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let (out, closed) = until_closed(&mut s, bound);
    assert!(
        closed,
        "an idle keep-alive connection was still open after {bound:?}"
    );
    let r = parse(&out).unwrap_or_else(|| panic!("{:?}", text(&out)));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );

    unchanged(&srv.vault, &before);
    // And the server still answers.
    assert_eq!(call(a, "GET", "/health", &[], b"").status, 200);
    drop(srv.serve);
}

#[test]
fn event_streams_stay_open_past_the_idle_timeout() {
    let srv = start(
        echo_vault(),
        &[
            ("VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS", "300"),
            ("VAULTRUNNER_HTTP_BODY_TIMEOUT_MS", "300"),
        ],
        None,
    );
    let a = srv.addr.as_str();
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(format!("GET /api/agents/echo/events HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .unwrap();
    // Quiet for five header timeouts.
    std::thread::sleep(Duration::from_millis(1500));
    let r = call(a, "POST", "/api/agents/echo/messages?wait=10", &[], b"ping");
    assert_eq!(r.status, 200, "{r:?}");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while !text(&got).contains("event: done") {
        match s.read(&mut buf) {
            Ok(0) => panic!("the event stream was closed: {:?}", text(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}: {:?}", text(&got)),
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", text(&got));
    }
    let all = text(&got);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert_contains(&all, "text/event-stream");
    assert_contains(&all, "echo: ping");
    drop(srv.serve);
}

/// The number of descriptors a process has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn a_flood_of_idle_connections_does_not_starve_note_reads() {
    if !std::path::Path::new("/proc/self/fd").exists() {
        eprintln!("skipped: needs /proc to count descriptors");
        return;
    }
    const NOFILE: u32 = 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 || lim.rlim_max < u64::from(NOFILE) || lim.rlim_cur < u64::from(NOFILE) + 500 {
        eprintln!(
            "skipped: needs a descriptor limit of at least {} here",
            NOFILE + 500
        );
        return;
    }
    // Timeouts long enough not to help: the cap alone must hold.
    let mut srv = start(
        echo_vault(),
        &[("VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS", "600000")],
        Some(NOFILE),
    );
    let a = srv.addr.as_str();
    let pid = srv.serve.child.id();
    wait_until(
        Duration::from_secs(10),
        "the connection cap in the log",
        || srv.serve.log_text().contains("at most 64 connections"),
    );
    let addr: std::net::SocketAddr = a.parse().unwrap();
    // More connections than the descriptor limit; half of them start a
    // request's headers and stall.
    let mut flood = Vec::new();
    let mut failures = 0;
    while flood.len() < NOFILE as usize + 150 && failures < 20 {
        // A full backlog drops the SYN: give the server a moment.
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(mut s) => {
                if flood.len() % 2 == 1 {
                    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: ");
                }
                flood.push(s);
            }
            Err(_) => failures += 1,
        }
    }
    assert!(
        flood.len() > NOFILE as usize,
        "only {} connections",
        flood.len()
    );
    eprintln!("flood: {} connections open", flood.len());
    // Let the server take what it will.
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(pid);
    eprintln!("flood: serve holds {fds} descriptors of {NOFILE}");
    assert!(fds < NOFILE as usize - 100, "serve holds {fds} descriptors");

    // A message dropped in the vault is still read and answered.
    srv.vault
        .message("Inbox/echo/during-flood.md", "echo", "", "still there?\n");
    wait_until(
        Duration::from_secs(20),
        "the message to be answered",
        || {
            srv.vault
                .get("Inbox/echo/during-flood.md", "status")
                .as_deref()
                == Some("handled")
        },
    );
    assert_eq!(replies(&srv.vault, "echo"), 1);
    assert!(
        matches!(srv.serve.child.try_wait(), Ok(None)),
        "{}",
        srv.serve.log_text()
    );

    // The flood ends; HTTP answers again.
    drop(flood);
    let mut ok = false;
    wait_until(Duration::from_secs(20), "/health after the flood", || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /health HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        ok = parse(&out).is_some_and(|r| r.status == 200 && r.body.contains("\"echo\""));
        ok
    });
    assert!(ok);
    drop(srv.serve);
}

#[test]
fn query_path_and_method_errors_are_json() {
    let srv = start(echo_vault(), &[], None);
    let a = srv.addr.as_str();
    let before = settled(&srv.vault);
    for path in [
        "/api/agents/echo/messages?wait=abc",
        "/api/agents/echo/messages?wait=-1",
        "/api/agents/echo/messages?wait=1.5",
        "/api/agents/echo/messages?wait=",
        "/api/agents/echo/messages?wait=99999999999999999999999",
        "/hooks/echo?wait=abc",
        "/hooks/echo?subject=a&subject=b",
    ] {
        let r = call(a, "POST", path, &[("Content-Type", "text/plain")], b"hi");
        let msg = json_error(&r, 400);
        assert!(
            msg.contains("wait") || msg.contains("subject"),
            "{path}: {msg}"
        );
    }
    let r = call(
        a,
        "GET",
        "/api/agents/echo/events?ticket=a&ticket=b",
        &[],
        b"",
    );
    json_error(&r, 400);
    for (method, path) in [
        ("POST", "/api/agents/%FF/messages"),
        ("POST", "/api/agents/%C3%28/reset"),
        ("GET", "/api/agents/%FF/events"),
        ("POST", "/hooks/%FF"),
    ] {
        let r = call(a, method, path, &[], b"hi");
        let msg = json_error(&r, 400);
        assert_contains(&msg, "path");
    }
    json_error(&call(a, "DELETE", "/health", &[], b""), 405);
    json_error(&call(a, "PUT", "/hooks/echo", &[], b"hi"), 405);
    json_error(&call(a, "GET", "/nothing-here", &[], b""), 404);
    json_error(&call(a, "POST", "/", &[], b""), 405);
    json_error(&call(a, "GET", "/api/agents/echo", &[], b""), 404);
    unchanged(&srv.vault, &before);
    drop(srv.serve);
}

#[test]
fn a_timeout_setting_serve_cannot_use_stops_it_with_the_variable_named() {
    let v = echo_vault();
    for bad in ["abc", "0", "10s"] {
        let out = crate::common::vr(&[
            "serve",
            v.root_str(),
            "--listen",
            "127.0.0.1:0",
            "--settle-ms",
            "0",
        ])
        .env("VAULTRUNNER_HTTP_BODY_TIMEOUT_MS", bad)
        .run()
        .failure();
        assert_contains(&out.stderr, "VAULTRUNNER_HTTP_BODY_TIMEOUT_MS");
        assert_contains(&out.stderr, "milliseconds");
        assert!(!v.exists(".vaultrunner/http.addr"));
    }
}
