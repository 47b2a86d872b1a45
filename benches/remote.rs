//! Remote-vault benchmarks of the `vaultrunner` binary against the REAL
//! Parachute Vault server (see docs/PERFORMANCE.md, "Remote vault").
//!
//! A plain `main` (the bench target has `harness = false`). It starts the
//! server with `../shared/parachute-vault/run-vault.sh` (on loopback, a
//! throwaway data folder per scenario), puts a counting HTTP proxy of its
//! own between vaultrunner and the server, and prints a Markdown table.
//! Without the script, or without `bun` and `npm` to get it, it prints a
//! note and exits 0, so `cargo bench` passes elsewhere.
//!
//! ```text
//! cargo bench --bench remote                      # all scenarios
//! cargo bench --bench remote -- latency           # some of them:
//!                                                 #   latency poll throughput idle
//! ```
//!
//! Settings (defaults in brackets): `VR_BENCH_REMOTE_N` [50] latency
//! probes per mode (plus 5 warm-up probes), `VR_BENCH_MESSAGES` [1000] and
//! `VR_BENCH_AGENTS` [10] for throughput, `VR_BENCH_REMOTE_IDLE_SECS` [60]
//! for the idle window, `VR_BENCH_VAULT_PORT` [19420] for the server,
//! `VR_BENCH_VAULT_SCRIPT` [../shared/parachute-vault/run-vault.sh from
//! the repository root].
//!
//! What is measured, exactly:
//!
//! - **note → reply latency**: the clock starts before the bench's own
//!   `POST /api/notes` of the inbound note (sent straight to the server)
//!   and stops when the bench's `GET /api/notes/<reply path>` first
//!   answers 200; it polls with a 1 ms sleep between GETs. Nothing is
//!   subtracted: the figure includes the create's round trip and up to
//!   one GET + 1 ms of detection. Before the next probe the bench waits
//!   (outside the timing) for the inbound's `status: handled`, and in the
//!   polling runs for a random part (uniform) of the poll interval.
//! - **the proxy** records, for every request vaultrunner sends, when it
//!   had the whole request and when it had the server's whole answer: that
//!   interval is "the server's request time" (loopback and the proxy's
//!   own forwarding included, so it errs against the server, in
//!   vaultrunner's favour by at most a few hundred µs a request). The
//!   trigger's webhook goes through a second instance of the same proxy
//!   on its way to `serve`, so its arrival time is known.
//! - **own overhead per turn** (webhook): from the webhook's arrival to
//!   the end of the turn's last request (the inbound's stamp), minus the
//!   time in which at least one of that turn's requests was at the server
//!   (the union of their intervals). What is left is vaultrunner's own
//!   time plus the proxy's hops.

// A benchmark may unwrap and panic: it stops on the first thing that
// goes wrong. The crate's lints deny these outside tests (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unchecked_time_subtraction,
    clippy::disallowed_methods
)]

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the remote benchmark uses Linux interfaces (wait4, /proc); skipped");
}

#[cfg(target_os = "linux")]
#[path = "common/results.rs"]
mod results;

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;
    use std::fs::{self, File};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use serde_json::{Value, json};

    const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");
    const WARMUP: usize = 5;
    const SECRET: &str = "vr-bench-webhook-secret";

    fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
        match std::env::var(key) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                eprintln!("{key}={v:?} is not a number; using the default");
                default
            }),
            Err(_) => default,
        }
    }

    // ------------------------------------------------------------------
    // The counting proxy

    /// One request that went through a proxy.
    #[derive(Debug, Clone)]
    struct Rec {
        method: String,
        /// Path and query as sent.
        pq: String,
        /// The proxy had the whole request.
        start: Instant,
        /// The proxy had the upstream's whole answer.
        end: Instant,
        status: u16,
        /// The `path` of the note in the answer, if it was one note.
        note_path: Option<String>,
    }

    impl Rec {
        fn dur(&self) -> Duration {
            self.end - self.start
        }

        /// A coarse kind: what vaultrunner asked for.
        fn kind(&self) -> String {
            let api = self
                .pq
                .split_once("/api/")
                .map_or(self.pq.as_str(), |(_, r)| r);
            if self.note_path.as_deref() == Some("_vaultrunner/lease")
                || api.contains("_vaultrunner")
            {
                return format!("{} lease", self.method);
            }
            if api.starts_with("health") {
                return "GET health".into();
            }
            if api.starts_with("notes?") || api == "notes" && self.method == "GET" {
                let tagged = api.contains("tag=");
                return format!(
                    "GET listing page ({})",
                    if tagged { "tagged: poll" } else { "all: scan" }
                );
            }
            if api.starts_with("vault/inbound") {
                return "POST webhook".into();
            }
            format!("{} note", self.method)
        }
    }

    struct ProxyState {
        upstream: Mutex<Option<String>>,
        recs: Mutex<Vec<Rec>>,
        client: reqwest::Client,
    }

    #[derive(Clone)]
    struct Proxy {
        port: u16,
        st: Arc<ProxyState>,
    }

    impl Proxy {
        fn start(rt: &tokio::runtime::Runtime, upstream: Option<String>) -> Proxy {
            let st = Arc::new(ProxyState {
                upstream: Mutex::new(upstream),
                recs: Mutex::new(Vec::new()),
                client: reqwest::Client::builder().no_proxy().build().unwrap(),
            });
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let port = listener.local_addr().unwrap().port();
            let app = axum::Router::new().fallback(forward).with_state(st.clone());
            rt.spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Proxy { port, st }
        }

        fn set_upstream(&self, up: Option<String>) {
            *self.st.upstream.lock().unwrap() = up;
        }

        fn take(&self) -> Vec<Rec> {
            std::mem::take(&mut *self.st.recs.lock().unwrap())
        }

        fn snapshot(&self) -> Vec<Rec> {
            self.st.recs.lock().unwrap().clone()
        }
    }

    fn hop_by_hop(name: &str) -> bool {
        matches!(
            name,
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        )
    }

    async fn forward(State(st): State<Arc<ProxyState>>, req: axum::extract::Request) -> Response {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 256 << 20)
            .await
            .unwrap_or_default();
        let start = Instant::now();
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |x| x.as_str().to_string());
        let method = parts.method.to_string();
        let record = |status: u16, end: Instant, note_path: Option<String>| Rec {
            method: method.clone(),
            pq: pq.clone(),
            start,
            end,
            status,
            note_path,
        };
        let up = st.upstream.lock().unwrap().clone();
        let Some(up) = up else {
            st.recs
                .lock()
                .unwrap()
                .push(record(503, Instant::now(), None));
            return (StatusCode::SERVICE_UNAVAILABLE, "no upstream").into_response();
        };
        let mut rb = st
            .client
            .request(parts.method.clone(), format!("{up}{pq}"))
            .body(bytes);
        for (k, v) in &parts.headers {
            if !hop_by_hop(k.as_str()) {
                rb = rb.header(k, v);
            }
        }
        match rb.send().await {
            Ok(resp) => {
                let status = resp.status();
                let mut headers = HeaderMap::new();
                for (k, v) in resp.headers() {
                    if !hop_by_hop(k.as_str()) {
                        headers.insert(k.clone(), v.clone());
                    }
                }
                let body: Bytes = resp.bytes().await.unwrap_or_default();
                let end = Instant::now();
                let note_path = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("path").and_then(Value::as_str).map(str::to_string));
                st.recs
                    .lock()
                    .unwrap()
                    .push(record(status.as_u16(), end, note_path));
                let mut r = Response::new(axum::body::Body::from(body));
                *r.status_mut() = status;
                *r.headers_mut() = headers;
                r
            }
            Err(e) => {
                st.recs
                    .lock()
                    .unwrap()
                    .push(record(502, Instant::now(), None));
                (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response()
            }
        }
    }

    /// Requests by kind, as "kind ×n" sorted by count.
    fn by_kind(recs: &[Rec]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in recs {
            *m.entry(r.kind()).or_insert(0) += 1;
        }
        m
    }

    fn kinds_text(m: &BTreeMap<String, usize>, per: f64) -> String {
        let mut v: Vec<_> = m.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        v.iter()
            .map(|(k, n)| {
                if per > 0.0 {
                    format!("{k} {:.2}", **n as f64 / per)
                } else {
                    format!("{k} {n}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The time covered by at least one of the intervals.
    fn union_busy(recs: &[&Rec]) -> Duration {
        let mut iv: Vec<(Instant, Instant)> = recs.iter().map(|r| (r.start, r.end)).collect();
        iv.sort();
        let mut total = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (s, e) in iv {
            cur = match cur {
                Some((cs, ce)) if s <= ce => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    total += ce - cs;
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            total += ce - cs;
        }
        total
    }

    // ------------------------------------------------------------------
    // The real server

    struct VaultServer {
        pid: libc::pid_t,
        base: String,
        token: String,
        _data: tempfile::TempDir,
    }

    impl VaultServer {
        /// Starts a fresh server (its own data folder) whose trigger posts
        /// to `hook`. `Err`: why it could not (the bench then skips).
        fn start(script: &Path, port: u16, hook: &str) -> Result<VaultServer, String> {
            let data = tempfile::Builder::new()
                .prefix("vr-bench-remote-vault-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let out = Command::new("bash")
                .arg(script)
                .arg(port.to_string())
                .env("TRIGGER_WEBHOOK", hook)
                .env("VAULT_DATA", data.path())
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let tail: Vec<&str> = err.lines().rev().take(8).collect();
                return Err(format!(
                    "{} failed ({}): {}",
                    script.display(),
                    out.status,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let get = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .map(str::to_string)
                    .ok_or_else(|| format!("the script printed no {k}"))
            };
            Ok(VaultServer {
                pid: get("VAULT_PID")?.parse().map_err(|_| "bad VAULT_PID")?,
                base: get("VAULT_BASE")?,
                token: get("VAULT_TOKEN")?,
                _data: data,
            })
        }

        /// `http://127.0.0.1:PORT` (without `/vault/NAME`).
        fn origin(&self) -> String {
            let i = self.base.find("/vault/").unwrap();
            self.base[..i].to_string()
        }

        /// The vault's path after the origin (`/vault/default`).
        fn vault_path(&self) -> String {
            let i = self.base.find("/vault/").unwrap();
            self.base[i..].to_string()
        }
    }

    impl Drop for VaultServer {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the server the script started for us.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let t0 = Instant::now();
            // Not our child (the script detached it): wait until it is gone.
            while t0.elapsed() < Duration::from_secs(10) {
                // SAFETY: signal 0 only checks that the process exists.
                if unsafe { libc::kill(self.pid, 0) } != 0 {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The bench's own client of the server (straight to it, not through
    /// the proxy, so none of its requests are counted).
    struct Api {
        base: String,
        token: String,
        http: reqwest::Client,
    }

    fn seg(path: &str) -> String {
        path.replace('%', "%25")
            .replace('/', "%2F")
            .replace(' ', "%20")
    }

    impl Api {
        fn new(v: &VaultServer) -> Api {
            Api {
                base: v.base.clone(),
                token: v.token.clone(),
                http: reqwest::Client::builder().no_proxy().build().unwrap(),
            }
        }

        async fn create_many(&self, notes: &[Value]) {
            for chunk in notes.chunks(250) {
                let r = self
                    .http
                    .post(format!("{}/api/notes", self.base))
                    .bearer_auth(&self.token)
                    .json(&json!({ "notes": chunk }))
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                let body = r.text().await.unwrap_or_default();
                assert!(st.is_success(), "batch create: {st}: {body}");
            }
        }

        async fn create(&self, note: &Value) {
            let r = self
                .http
                .post(format!("{}/api/notes", self.base))
                .bearer_auth(&self.token)
                .json(note)
                .send()
                .await
                .unwrap();
            let st = r.status();
            let body = r.text().await.unwrap_or_default();
            assert!(st.is_success(), "create: {st}: {body}");
        }

        /// The note at `path` exactly, or `None`.
        async fn get(&self, path: &str) -> Option<Value> {
            let r = self
                .http
                .get(format!("{}/api/notes/{}", self.base, seg(path)))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return None;
            }
            assert!(r.status().is_success(), "get {path}: {}", r.status());
            let v: Value = r.json().await.unwrap();
            (v.get("path").and_then(Value::as_str) == Some(path)).then_some(v)
        }

        /// Every note with `tag` (metadata only).
        async fn tagged(&self, tag: &str) -> Vec<Value> {
            let mut out = Vec::new();
            loop {
                let r = self
                    .http
                    .get(format!(
                        "{}/api/notes?tag={tag}&limit=500&offset={}&sort=asc",
                        self.base,
                        out.len()
                    ))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .unwrap();
                let page: Vec<Value> = r.json().await.unwrap();
                let n = page.len();
                out.extend(page);
                if n < 500 {
                    return out;
                }
            }
        }
    }

    fn meta<'a>(note: &'a Value, key: &str) -> Option<&'a str> {
        note.get("metadata")?.get(key)?.as_str()
    }

    fn agent_note(name: &str) -> Value {
        json!({
            "path": format!("Agents/{name}"),
            "content": format!("You are {name}, a benchmark agent. Answer briefly."),
            "metadata": {"name": name, "backend": "echo", "mode": "single-threaded"},
            "tags": ["agent/definition"],
        })
    }

    fn inbound_note(path: &str, agent: &str, i: usize) -> Value {
        json!({
            "path": path,
            "content": format!("benchmark message {i}"),
            "metadata": {
                "agent": agent,
                "sender": "bench",
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            },
            "tags": ["agent/message", "agent/message/inbound"],
        })
    }

    fn reply_path(inbound: &str) -> String {
        format!("{inbound}.reply")
    }

    // ------------------------------------------------------------------
    // vaultrunner

    fn command(args: &[&str], token: &str, state: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .env_remove("VAULTRUNNER_VAULT")
            .env_remove("VAULTRUNNER_AGENT")
            .env_remove("VAULTRUNNER_DELEGATION_DEPTH")
            .env_remove("VAULTRUNNER_TOKEN")
            .env_remove("VAULTRUNNER_LOG")
            .env("VAULTRUNNER_VAULT_TOKEN", token)
            .env("VAULTRUNNER_VAULT_WEBHOOK_SECRET", SECRET)
            .env("VAULTRUNNER_STATE_DIR", state);
        cmd
    }

    /// A running `serve`; stopped (TERM, then KILL) on drop.
    struct Serve {
        child: std::process::Child,
        err_path: PathBuf,
        state: tempfile::TempDir,
    }

    impl Serve {
        fn start(vault: &str, extra: &[&str], token: &str) -> Serve {
            let state = tempfile::Builder::new()
                .prefix("vr-bench-remote-state-")
                .tempdir()
                .unwrap();
            let err_path = state.path().join("serve-stderr.txt");
            let mut args = vec!["serve", vault, "--listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            let mut cmd = command(&args, token, state.path());
            cmd.stdout(Stdio::null())
                .stderr(File::create(&err_path).unwrap());
            let child = cmd.spawn().expect("cannot start vaultrunner serve");
            let s = Serve {
                child,
                err_path,
                state,
            };
            let t0 = Instant::now();
            while !s.log().contains("serving") {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "serve did not start:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            s
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.err_path).unwrap_or_default()
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// `http://ADDR` of its HTTP API (from `http.addr` in its state).
        fn http(&self) -> String {
            let t0 = Instant::now();
            loop {
                for e in walk(self.state.path()) {
                    if e.file_name().is_some_and(|n| n == "http.addr") {
                        let a = fs::read_to_string(&e).unwrap_or_default();
                        if !a.trim().is_empty() {
                            return format!("http://{}", a.trim());
                        }
                    }
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "no http.addr");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Serve {
        fn drop(&mut self) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            // SAFETY: kill(2) of our own, not yet reaped, child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    }

    /// utime + stime of a live process, from /proc/<pid>/stat.
    fn proc_cpu(pid: u32) -> Duration {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
            return Duration::ZERO;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ")": state is field 3; utime 14, stime 15 (1-based).
        let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    struct Finished {
        ok: bool,
        status: String,
        elapsed: Duration,
        user: Duration,
        sys: Duration,
        maxrss_kib: i64,
        stderr: String,
    }

    fn tv(t: libc::timeval) -> Duration {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    }

    /// Runs `process` to its end, with its rusage from wait4.
    fn run_process(vault: &str, token: &str, limit: Duration) -> Finished {
        let state = tempfile::Builder::new()
            .prefix("vr-bench-remote-state-")
            .tempdir()
            .unwrap();
        let err_path = state.path().join("stderr.txt");
        let mut cmd = command(&["process", vault], token, state.path());
        cmd.stdout(Stdio::null())
            .stderr(File::create(&err_path).unwrap());
        let t0 = Instant::now();
        let child = cmd.spawn().expect("cannot start vaultrunner process");
        let pid = child.id() as libc::pid_t;
        let watchdog = std::thread::spawn(move || {
            let t = Instant::now();
            // SAFETY: kill(2) with signal 0 checks our child exists.
            while t.elapsed() < limit && unsafe { libc::kill(pid, 0) } == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.elapsed() >= limit {
                eprintln!("  !! process still running after {limit:?}: killing it");
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = loop {
            // SAFETY: pid is our child; status and ru are valid pointers.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if rc == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
                continue;
            }
            break rc;
        };
        let elapsed = t0.elapsed();
        std::mem::forget(child);
        let _ = watchdog.join();
        assert_eq!(rc, pid, "wait4 failed");
        let exited = libc::WIFEXITED(status);
        let code = libc::WEXITSTATUS(status);
        Finished {
            ok: exited && code == 0,
            status: if exited {
                format!("exit {code}")
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            },
            elapsed,
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            maxrss_kib: ru.ru_maxrss,
            stderr: fs::read_to_string(err_path).unwrap_or_default(),
        }
    }

    // ------------------------------------------------------------------
    // Results

    use super::results::Results;

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        // Nearest rank, as benches/engine.rs.
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn ms(d: Duration) -> String {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }

    // ------------------------------------------------------------------
    // The scenarios

    struct Ctx {
        rt: tokio::runtime::Runtime,
        script: PathBuf,
        port: u16,
        /// Between vaultrunner and the server.
        vault_proxy: Proxy,
        /// Between the server's trigger and `serve`.
        hook_proxy: Proxy,
        n: usize,
        messages: usize,
        agents: usize,
        idle_secs: u64,
    }

    impl Ctx {
        fn hook_url(&self) -> String {
            format!(
                "http://127.0.0.1:{}/api/vault/inbound?secret={SECRET}",
                self.hook_proxy.port
            )
        }

        /// A fresh server; the vault proxy pointed at it. `None`: skipped.
        fn server(&self) -> Option<VaultServer> {
            match VaultServer::start(&self.script, self.port, &self.hook_url()) {
                Ok(v) => {
                    self.vault_proxy.set_upstream(Some(v.origin()));
                    self.vault_proxy.take();
                    self.hook_proxy.take();
                    Some(v)
                }
                Err(why) => {
                    eprintln!("remote bench skipped: the real server did not start: {why}");
                    None
                }
            }
        }

        fn proxied(&self, v: &VaultServer) -> String {
            format!(
                "http://127.0.0.1:{}{}",
                self.vault_proxy.port,
                v.vault_path()
            )
        }
    }

    /// One latency probe's figures.
    struct Probe {
        e2e: Duration,
        /// Proxy-side, webhook runs: webhook arrival → end of the turn's
        /// last request; the requests' busy time; their number.
        turn: Option<(Duration, Duration, usize)>,
    }

    /// `serve` with one echo agent; `n` probes (plus warm-ups).
    fn latency_run(
        ctx: &Ctx,
        res: &mut Results,
        label: &str,
        serve_args: &[&str],
        webhook: bool,
        through_proxy: bool,
        jitter: Option<Duration>,
    ) -> Option<()> {
        let sc = format!("latency, {label}");
        let trace = std::env::var_os("VR_BENCH_REMOTE_TRACE").is_some();
        let v = ctx.server()?;
        let api = Api::new(&v);
        ctx.rt.block_on(api.create(&agent_note("echo")));
        let url = if through_proxy {
            ctx.proxied(&v)
        } else {
            v.base.clone()
        };
        let serve = Serve::start(&url, serve_args, &v.token);
        if webhook {
            ctx.hook_proxy.set_upstream(Some(serve.http()));
        } else {
            ctx.hook_proxy.set_upstream(None);
        }
        eprintln!(
            "[{sc}] serve {}; {} probes + {WARMUP} warm-up",
            serve_args.join(" "),
            ctx.n
        );
        std::thread::sleep(Duration::from_millis(500));
        let cpu0 = proc_cpu(serve.pid());
        let mut probes = Vec::new();
        let mut cpu_start = cpu0;
        let mut rng: u64 = 0x5eed_1234_abcd_0001;
        for i in 0..WARMUP + ctx.n {
            if i == WARMUP {
                cpu_start = proc_cpu(serve.pid());
            }
            let path = format!("Inbox/echo/m{i:05}");
            let note = inbound_note(&path, "echo", i);
            let reply = reply_path(&path);
            ctx.vault_proxy.take();
            ctx.hook_proxy.take();
            if let Some(every) = jitter {
                // Outside the timing: arrive at a random point of the
                // poll's cycle, as a user would (right after the last
                // stamp, every probe would land just after a poll and
                // wait a whole interval).
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let frac = (rng >> 11) as f64 / (1u64 << 53) as f64;
                std::thread::sleep(every.mul_f64(frac));
            }
            let probe_t0 = Instant::now();
            let (e2e, _created_at) = ctx.rt.block_on(async {
                let t0 = Instant::now();
                api.create(&note).await;
                let created = Instant::now();
                loop {
                    if api.get(&reply).await.is_some() {
                        return (t0.elapsed(), created);
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(60),
                        "no reply to {path} in 60 s; serve log:\n{}",
                        serve.log()
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            // Outside the timing: the stamp.
            ctx.rt.block_on(async {
                let t = Instant::now();
                loop {
                    if let Some(n) = api.get(&path).await
                        && meta(&n, "status") == Some("handled")
                    {
                        break;
                    }
                    assert!(t.elapsed() < Duration::from_secs(30), "{path} not stamped");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
            let turn = if webhook && through_proxy {
                let hooks = ctx.hook_proxy.take();
                let recs = ctx.vault_proxy.take();
                if trace && i == WARMUP {
                    eprintln!("  one turn's requests (ms from the probe's start):");
                    let mut all: Vec<(&str, &Rec)> = hooks
                        .iter()
                        .map(|h| ("hook ", h))
                        .chain(recs.iter().map(|r| ("vault", r)))
                        .collect();
                    all.sort_by_key(|(_, r)| r.start);
                    for (who, r) in all {
                        eprintln!(
                            "    {who} {:7.2} +{:5.2} {} {} {} → {}",
                            (r.start - probe_t0).as_secs_f64() * 1e3,
                            r.dur().as_secs_f64() * 1e3,
                            r.method,
                            r.pq.split('?').next().unwrap_or(""),
                            r.note_path.as_deref().unwrap_or("-"),
                            r.status
                        );
                    }
                }
                hooks
                    .iter()
                    .filter(|h| h.kind() == "POST webhook")
                    .map(|h| h.start)
                    .min()
                    .map(|hook_at| {
                        let mine: Vec<&Rec> = recs
                            .iter()
                            .filter(|r| r.start >= hook_at)
                            .filter(|r| {
                                let k = r.kind();
                                !k.contains("lease") && !k.contains("listing")
                            })
                            .collect();
                        let last = mine.iter().map(|r| r.end).max().unwrap_or(hook_at);
                        (last - hook_at, union_busy(&mine), mine.len())
                    })
            } else {
                None
            };
            if i >= WARMUP {
                probes.push(Probe { e2e, turn });
            }
        }
        let cpu = proc_cpu(serve.pid()) - cpu_start;
        drop(serve);
        let mut lat: Vec<Duration> = probes.iter().map(|p| p.e2e).collect();
        lat.sort();
        let n = lat.len();
        res.info(
            &sc,
            format!("note created → reply seen by GET, p50 / p99 (n = {n})"),
            format!(
                "{} / {}",
                ms(percentile(&lat, 50.0)),
                ms(percentile(&lat, 99.0))
            ),
        );
        res.info(
            &sc,
            "min / max",
            format!("{} / {}", ms(lat[0]), ms(lat[n - 1])),
        );
        res.info(
            &sc,
            "serve's CPU (user+sys, /proc) per turn",
            format!("{:.2} ms", cpu.as_secs_f64() * 1e3 / n as f64),
        );
        let turns: Vec<(Duration, Duration, usize)> =
            probes.iter().filter_map(|p| p.turn).collect();
        if !turns.is_empty() {
            let mut span: Vec<Duration> = turns.iter().map(|t| t.0).collect();
            let mut busy: Vec<Duration> = turns.iter().map(|t| t.1).collect();
            let mut own: Vec<Duration> = turns.iter().map(|t| t.0.saturating_sub(t.1)).collect();
            span.sort();
            busy.sort();
            own.sort();
            let reqs: usize = turns.iter().map(|t| t.2).sum();
            res.info(
                &sc,
                format!(
                    "webhook arrives → turn's last request answered, p50 / p99 (n = {})",
                    turns.len()
                ),
                format!(
                    "{} / {}",
                    ms(percentile(&span, 50.0)),
                    ms(percentile(&span, 99.0))
                ),
            );
            res.info(
                &sc,
                "of which at the server (union of the turn's requests), p50 / p99",
                format!(
                    "{} / {}",
                    ms(percentile(&busy, 50.0)),
                    ms(percentile(&busy, 99.0))
                ),
            );
            let p50 = percentile(&own, 50.0);
            let p99 = percentile(&own, 99.0);
            res.check(
                &sc,
                "own overhead per turn (the rest: vaultrunner + proxy hops), p50 / p99",
                format!("{} / {}", ms(p50), ms(p99)),
                "< 20 ms",
                p50 < Duration::from_millis(20),
            );
            res.info(
                &sc,
                "requests per turn (after the webhook)",
                format!("{:.2}", reqs as f64 / turns.len() as f64),
            );
        }
        Some(())
    }

    /// Creates `agents` echo agents and `messages` inbound notes (serve
    /// stopped), then times `process` to its end.
    fn throughput_run(ctx: &Ctx, res: &mut Results, through_proxy: bool) -> Option<()> {
        let sc = if through_proxy {
            "throughput, via proxy"
        } else {
            "throughput, direct"
        };
        let v = ctx.server()?;
        ctx.hook_proxy.set_upstream(None);
        let api = Api::new(&v);
        let names: Vec<String> = (0..ctx.agents).map(|i| format!("a{i:02}")).collect();
        let mut notes: Vec<Value> = names.iter().map(|n| agent_note(n)).collect();
        let mut paths = Vec::new();
        for i in 0..ctx.messages {
            let a = &names[i % names.len()];
            let p = format!("Inbox/{a}/m{i:05}");
            notes.push(inbound_note(&p, a, i));
            paths.push(p);
        }
        eprintln!(
            "[{sc}] creating {} agents and {} messages",
            ctx.agents, ctx.messages
        );
        ctx.rt.block_on(api.create_many(&notes));
        // Let the (refused) trigger deliveries of the creates finish.
        std::thread::sleep(Duration::from_secs(2));
        ctx.vault_proxy.take();
        let url = if through_proxy {
            ctx.proxied(&v)
        } else {
            v.base.clone()
        };
        eprintln!("[{sc}] vaultrunner process");
        let run = run_process(&url, &v.token, Duration::from_secs(600));
        let recs = ctx.vault_proxy.take();
        assert!(run.ok, "process: {}\n{}", run.status, run.stderr);
        // Check every message.
        let inbound = ctx.rt.block_on(api.tagged("agent/message/inbound"));
        let handled = inbound
            .iter()
            .filter(|n| meta(n, "status") == Some("handled"))
            .count();
        let replies = ctx.rt.block_on(async {
            let mut k = 0;
            for p in paths.iter().step_by((paths.len() / 20).max(1)) {
                if api.get(&reply_path(p)).await.is_some() {
                    k += 1;
                }
            }
            k
        });
        let sampled = paths.iter().step_by((paths.len() / 20).max(1)).count();
        let turns = ctx.messages as f64;
        let secs = run.elapsed.as_secs_f64();
        res.info(
            sc,
            format!(
                "`process`, {} messages over {} echo agents (default --jobs)",
                ctx.messages, ctx.agents
            ),
            format!("**{:.0} turns/s** ({secs:.2} s)", turns / secs),
        );
        res.check(
            sc,
            "verified: handled · replies (sampled)",
            format!("{handled} of {} · {replies} of {sampled}", ctx.messages),
            "all",
            handled == ctx.messages && replies == sampled,
        );
        let cpu = run.user + run.sys;
        res.info(
            sc,
            "vaultrunner's CPU per turn (user + sys, wait4)",
            format!(
                "**{:.2} ms** ({:.2} + {:.2} s; peak RSS {:.0} MiB)",
                cpu.as_secs_f64() * 1e3 / turns,
                run.user.as_secs_f64(),
                run.sys.as_secs_f64(),
                run.maxrss_kib as f64 / 1024.0
            ),
        );
        if through_proxy {
            let kinds = by_kind(&recs);
            res.info(
                sc,
                "requests per turn (all of `process`'s, ÷ turns)",
                format!(
                    "**{:.2}** ({} requests)",
                    recs.len() as f64 / turns,
                    recs.len()
                ),
            );
            res.info(sc, "… by kind, per turn", kinds_text(&kinds, turns));
            let refs: Vec<&Rec> = recs.iter().collect();
            let server: Duration = recs.iter().map(Rec::dur).sum();
            let busy = union_busy(&refs);
            res.info(
                sc,
                "server time: Σ request times ÷ turns · time with a request in flight ÷ wall",
                format!(
                    "{:.2} ms · {:.0} %",
                    server.as_secs_f64() * 1e3 / turns,
                    busy.as_secs_f64() / secs * 100.0
                ),
            );
            let errors = recs.iter().filter(|r| r.status >= 400).count();
            let by_status = {
                let mut m: BTreeMap<u16, usize> = BTreeMap::new();
                for r in recs.iter().filter(|r| r.status >= 400) {
                    *m.entry(r.status).or_insert(0) += 1;
                }
                m
            };
            res.info(
                sc,
                "answers ≥ 400 (a 409 is a compare-and-set that lost)",
                format!("{errors} {by_status:?}"),
            );
        }
        Some(())
    }

    /// `serve` with the default poll on a vault with nothing to do: the
    /// requests of a window, via the proxy.
    fn idle_run(ctx: &Ctx, res: &mut Results) -> Option<()> {
        let sc = "idle";
        let v = ctx.server()?;
        ctx.hook_proxy.set_upstream(None);
        let api = Api::new(&v);
        // A vault like the throughput one, all answered: agents, messages
        // and replies, so a listing is several pages.
        let names: Vec<String> = (0..ctx.agents).map(|i| format!("a{i:02}")).collect();
        let mut notes: Vec<Value> = names.iter().map(|n| agent_note(n)).collect();
        for i in 0..ctx.messages {
            let a = &names[i % names.len()];
            let p = format!("Inbox/{a}/m{i:05}");
            let mut n = inbound_note(&p, a, i);
            n["metadata"]["status"] = json!("handled");
            n["metadata"]["reply"] = json!(format!("[[{}]]", reply_path(&p)));
            notes.push(n);
            notes.push(json!({
                "path": reply_path(&p),
                "content": "echo",
                "metadata": {"direction": "outbound", "in_reply_to": format!("[[{p}]]")},
                "tags": ["agent/message", "agent/message/outbound"],
            }));
        }
        ctx.rt.block_on(api.create_many(&notes));
        let polled = ctx.agents + ctx.messages;
        let all = notes.len();
        std::thread::sleep(Duration::from_secs(1));
        let url = ctx.proxied(&v);
        let serve = Serve::start(&url, &[], &v.token);
        eprintln!(
            "[{sc}] serve (default --poll-ms) on {all} notes ({polled} of them polled); 5 s start-up, then {} s",
            ctx.idle_secs
        );
        std::thread::sleep(Duration::from_secs(5));
        let startup = ctx.vault_proxy.take();
        let cpu0 = proc_cpu(serve.pid());
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(ctx.idle_secs));
        let window = t0.elapsed();
        let recs = ctx.vault_proxy.snapshot();
        let cpu = proc_cpu(serve.pid()) - cpu0;
        drop(serve);
        let per_min = 60.0 / window.as_secs_f64();
        let kinds = by_kind(&recs);
        res.info(
            sc,
            format!("start-up requests ({all} notes)"),
            format!(
                "{} ({})",
                startup.len(),
                kinds_text(&by_kind(&startup), 0.0)
            ),
        );
        let page = 500usize;
        // The poll asks for the newest 500 tagged notes: one request
        // however many there are.
        let poll_pages = 1;
        // A listing pages until a short page: N notes are ⌊N / 500⌋ + 1
        // requests. The scan lists every note (the lease note too). A
        // lease renewal is one compare-and-set PATCH.
        let scan_pages = (all + 1) / page + 1;
        let bound = 30 * poll_pages + scan_pages + 6;
        let measured = recs.len() as f64 * per_min;
        res.check(
            sc,
            format!(
                "requests per idle minute (measured over {:.0} s, scaled)",
                window.as_secs_f64()
            ),
            format!(
                "**{measured:.0}** ({} in the window: {})",
                recs.len(),
                kinds_text(&kinds, 0.0)
            ),
            format!(
                "≤ 30 polls × {poll_pages} page + 1 scan × {scan_pages} pages + 6 lease renewals × 1 = {bound}"
            ),
            measured <= bound as f64 * 1.05,
        );
        res.info(
            sc,
            "serve's CPU per idle minute (user+sys, /proc)",
            format!("{:.0} ms", cpu.as_secs_f64() * 1e3 * per_min),
        );
        Some(())
    }

    fn load() -> String {
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn which(prog: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
    }

    pub fn main() {
        let wanted: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let want = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
        let script = std::env::var_os("VR_BENCH_VAULT_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/parachute-vault/run-vault.sh")
            });
        if !script.is_file() {
            eprintln!(
                "remote bench skipped: {} not found (set VR_BENCH_VAULT_SCRIPT to run-vault.sh)",
                script.display()
            );
            return;
        }
        if !which("bun") && !which("npm") {
            eprintln!("remote bench skipped: neither bun nor npm (to install bun) is on PATH");
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let vault_proxy = Proxy::start(&rt, None);
        let hook_proxy = Proxy::start(&rt, None);
        let ctx = Ctx {
            rt,
            script,
            port: env_num("VR_BENCH_VAULT_PORT", 19420),
            vault_proxy,
            hook_proxy,
            n: env_num("VR_BENCH_REMOTE_N", 50usize).max(1),
            messages: env_num("VR_BENCH_MESSAGES", 1000usize).max(1),
            agents: env_num("VR_BENCH_AGENTS", 10usize).max(1),
            idle_secs: env_num("VR_BENCH_REMOTE_IDLE_SECS", 60u64).max(1),
        };
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        eprintln!(
            "vaultrunner remote benchmark — binary {BIN}, server script {}, {cpus} CPUs, load {}",
            ctx.script.display(),
            load()
        );
        let mut res = Results::default();
        let long_poll = ["--poll-ms", "3600000", "--rescan-secs", "3600"];
        let t0 = Instant::now();
        let ran = (|| {
            if want("latency") {
                latency_run(
                    &ctx,
                    &mut res,
                    "webhook, direct",
                    &long_poll,
                    true,
                    false,
                    None,
                )?;
                latency_run(
                    &ctx,
                    &mut res,
                    "webhook, via proxy",
                    &long_poll,
                    true,
                    true,
                    None,
                )?;
            }
            if want("poll") {
                latency_run(
                    &ctx,
                    &mut res,
                    "polling only, --poll-ms 2000 (default)",
                    &[],
                    false,
                    false,
                    Some(Duration::from_millis(2000)),
                )?;
                latency_run(
                    &ctx,
                    &mut res,
                    "polling only, --poll-ms 200",
                    &["--poll-ms", "200"],
                    false,
                    false,
                    Some(Duration::from_millis(200)),
                )?;
            }
            if want("throughput") {
                throughput_run(&ctx, &mut res, false)?;
                throughput_run(&ctx, &mut res, true)?;
            }
            if want("idle") {
                idle_run(&ctx, &mut res)?;
            }
            Some(())
        })();
        if ran.is_none() && res.rows.is_empty() {
            return;
        }
        println!(
            "\n## Remote vault results ({cpus} CPUs, load at the end {}, {:.0} s)\n",
            load(),
            t0.elapsed().as_secs_f64()
        );
        println!("{}", res.table());
    }
}
