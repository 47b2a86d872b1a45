//! Issue 14: "a vault's history must not cost memory or start-up time".
//!
//! A plain `main` (the bench target has `harness = false`) that generates a
//! vault with a year of answered messages (100,000 messages and their
//! 100,000 replies over 10 echo agents, in the shapes vaultrunner itself
//! writes: the bench first runs the real binary once on a temp vault and
//! takes its notes as templates), drives the release binary on it and
//! prints a Markdown table. Everything stays in temp directories and on
//! loopback; every scenario is bounded in time and stops what it started.
//!
//! ```text
//! cargo bench --bench history                          # all scenarios
//! cargo bench --bench history -- process serve soak turns   # some of them
//! VR_BENCH_QUICK=1 cargo bench --bench history         # small sizes
//! ```
//!
//! Two layouts of the same history: **dated**
//! (`Inbox/<agent>/YYYY/MM/DD/<YYYYMMDD-HHMMSS-mmm>-<8 hex>.md`, the layout
//! issue 14 introduces) and **flat** (all messages and replies in one
//! folder, `Inbox/<stamp>-<8 hex>.md`).
//!
//! Settings (defaults in brackets, quick-mode values after the slash):
//! `VR_HISTORY_MESSAGES` [100000 / 5000], `VR_HISTORY_AGENTS` [10],
//! `VR_HISTORY_SOAK_RATE` [200] messages/s, `VR_HISTORY_SOAK_SECS`
//! [600 / 60], `VR_HISTORY_SOAK_EMPTY=1` (soak on a fresh empty vault),
//! `VR_HISTORY_TURNS` [2000 / 500] (turns: notes dropped at once),
//! `VR_HISTORY_TURN_ROUNDS` [3 / 1] (turns: rounds on the empty and the
//! history vault, taken in turn after a warm-up round in the full run;
//! the medians are compared),
//! `VR_HISTORY_LATENCY_N` [1000 / 50] (+ 20 / 5 warm-up),
//! `VR_HISTORY_PROCESS_LIMIT_SECS` [60] (a `process` run is killed after
//! it), `VR_BENCH_TMPDIR` [system temp dir], `VR_BENCH_KEEP=1` (keep the
//! vaults and print their paths).

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
    eprintln!("the history benchmark uses Linux interfaces (wait4, syncfs, /proc); skipped");
}

#[cfg(target_os = "linux")]
#[path = "common/results.rs"]
mod results;

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeSet;
    use std::fs::{self, File};
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, mpsc};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use super::results::Results;

    const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");
    const SCENARIOS: &[&str] = &["process", "serve", "turns", "soak"];
    const MIB: f64 = 1024.0;

    // ------------------------------------------------------------------
    // Settings

    struct Settings {
        quick: bool,
        messages: usize,
        agents: usize,
        soak_rate: f64,
        soak_secs: u64,
        soak_empty: bool,
        turns: usize,
        turn_rounds: usize,
        latency_n: usize,
        latency_warmup: usize,
        process_limit: Duration,
        tmp: PathBuf,
        keep: bool,
    }

    fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
        match std::env::var(key) {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                eprintln!("{key}={v:?} is not a number; using the default");
                default
            }),
            Err(_) => default,
        }
    }

    fn env_flag(key: &str) -> bool {
        std::env::var(key).is_ok_and(|v| !v.is_empty() && v != "0")
    }

    impl Settings {
        fn from_env() -> Settings {
            let quick = env_flag("VR_BENCH_QUICK");
            let q = |full: usize, small: usize| if quick { small } else { full };
            let agents = env_num("VR_HISTORY_AGENTS", 10usize).max(1);
            Settings {
                quick,
                messages: env_num("VR_HISTORY_MESSAGES", q(100_000, 5_000)).max(agents),
                agents,
                soak_rate: env_num("VR_HISTORY_SOAK_RATE", 200.0f64).max(1.0),
                soak_secs: env_num("VR_HISTORY_SOAK_SECS", if quick { 60 } else { 600 }).max(10),
                soak_empty: env_flag("VR_HISTORY_SOAK_EMPTY"),
                turns: env_num("VR_HISTORY_TURNS", q(2_000, 500)).max(agents),
                turn_rounds: env_num("VR_HISTORY_TURN_ROUNDS", q(3, 1)).max(1),
                latency_n: env_num("VR_HISTORY_LATENCY_N", q(1000, 50)).max(1),
                latency_warmup: q(20, 5),
                process_limit: Duration::from_secs(env_num("VR_HISTORY_PROCESS_LIMIT_SECS", 60)),
                tmp: std::env::var_os("VR_BENCH_TMPDIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir),
                keep: env_flag("VR_BENCH_KEEP"),
            }
        }

        fn tempdir(&self, label: &str) -> tempfile::TempDir {
            let mut d = tempfile::Builder::new()
                .prefix(&format!("vr-history-{label}-"))
                .tempdir_in(&self.tmp)
                .expect("cannot create a temp dir");
            if self.keep {
                d.disable_cleanup(true);
                eprintln!("  (keeping {})", d.path().display());
            }
            d
        }

        fn agent_names(&self) -> Vec<String> {
            (0..self.agents).map(|i| format!("a{i}")).collect()
        }
    }

    // ------------------------------------------------------------------
    // Small helpers

    fn ms(d: Duration) -> String {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }

    fn secs(d: Duration) -> String {
        format!("{:.3} s", d.as_secs_f64())
    }

    fn mib(kib: i64) -> String {
        format!("{:.1} MiB", kib as f64 / MIB)
    }

    fn tail(s: &str, n: usize) -> String {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The 1-minute load average: other work on the machine skews results.
    fn loadavg() -> String {
        fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }

    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        // Nearest rank.
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(ms).expect("time in range")
    }

    /// `2026-11-21T16:45:47.220Z`, as vaultrunner writes `ts`.
    fn rfc3339(ms: i64) -> String {
        utc(ms).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    }

    /// Flushes the file system holding `dir` (so a measured run does not pay
    /// for flushing the set-up writes).
    fn syncfs(dir: &Path) {
        let d = File::open(dir).expect("open dir");
        // SAFETY: valid fd for the duration of the call.
        let rc = unsafe { libc::syncfs(d.as_raw_fd()) };
        assert_eq!(rc, 0, "syncfs: {}", std::io::Error::last_os_error());
    }

    fn front_matter_value(text: &str, key: &str) -> Option<String> {
        let rest = text.strip_prefix("---\n")?;
        let end = rest.find("\n---")?;
        rest[..end].lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    }

    /// `X.md` → `X.reply.md` (vault-relative or absolute).
    fn reply_of(path: &str) -> String {
        format!("{}.reply.md", path.strip_suffix(".md").unwrap_or(path))
    }

    fn dir_size(dir: &Path) -> (u64, usize) {
        let mut bytes = 0;
        let mut files = 0;
        let Ok(rd) = fs::read_dir(dir) else {
            return (0, 0);
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                let (b, f) = dir_size(&e.path());
                bytes += b;
                files += f;
            } else {
                bytes += e.metadata().map_or(0, |m| m.len());
                files += 1;
            }
        }
        (bytes, files)
    }

    /// A small deterministic PRNG (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    const WORDS: &str = "please summarise the meeting notes from yesterday and list open \
         questions about budget draft an email to Anna on project timeline what \
         changed since last week review this paragraph for tone translate into \
         German check links in reading list remind me of deadlines compare two \
         options server migration invoice is due Friday plan a short trip with \
         trains only ideas talk conference [[Projects/Atlas]] #todo quickly \
         thanks! could you explain why build failed";

    /// A message body of 50–400 characters, one line, varied.
    fn body(r: &mut Rng, i: usize) -> String {
        let words: Vec<&str> = WORDS.split_whitespace().collect();
        let target = 50 + r.below(351) as usize;
        let mut s = format!("Message {i}:");
        while s.len() < target {
            s.push(' ');
            s.push_str(words[r.below(words.len() as u64) as usize]);
        }
        let mut cut = target.min(s.len());
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.trim_end().to_string()
    }

    fn echo_agent(name: &str) -> String {
        // Single-threaded is the default mode.
        format!(
            "---\ntags:\n  - agent/definition\nname: {name}\nbackend: echo\n---\nYou are {name}, a benchmark agent. Answer briefly.\n"
        )
    }

    fn write_agents(vault: &Path, names: &[String]) {
        fs::create_dir_all(vault.join("Agents")).unwrap();
        for n in names {
            fs::write(vault.join(format!("Agents/{n}.md")), echo_agent(n)).unwrap();
        }
    }

    // ------------------------------------------------------------------
    // Running the binary

    fn base_command<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            // A bench run must never inherit a turn's or a server's context.
            .env_remove("VAULTRUNNER_VAULT")
            .env_remove("VAULTRUNNER_AGENT")
            .env_remove("VAULTRUNNER_DELEGATION_DEPTH")
            .env_remove("VAULTRUNNER_TOKEN")
            .env_remove("VAULTRUNNER_WEBHOOK_SECRET")
            .env_remove("VAULTRUNNER_LOG");
        cmd
    }

    /// What a finished child process did.
    struct Finished {
        ok: bool,
        status: String,
        elapsed: Duration,
        /// Peak resident set size, KiB (wait4's ru_maxrss).
        maxrss_kib: i64,
        user: Duration,
        sys: Duration,
        stdout: String,
        stderr: String,
    }

    fn tv(t: libc::timeval) -> Duration {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    }

    /// Runs the binary to completion (killed after `limit`), timing it from
    /// spawn to exit and collecting its resource usage with `wait4`.
    fn run_to_end(args: &[&std::ffi::OsStr], logs: &Path, limit: Duration) -> Finished {
        let out_path = logs.join("stdout.txt");
        let err_path = logs.join("stderr.txt");
        let mut cmd = base_command(args);
        cmd.stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&err_path).expect("stderr file"));
        let t0 = Instant::now();
        let child = cmd.spawn().expect("cannot start vaultrunner");
        let pid = child.id() as libc::pid_t;
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // The watchdog kills a run that overstays.
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
                eprintln!("  !! still running after {limit:?}: killing it");
                // SAFETY: plain kill(2) of our own child, not yet reaped.
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
        let _ = done_tx.send(());
        let _ = watchdog.join();
        // The child is reaped; `std`'s handle must not wait again.
        std::mem::forget(child);
        assert_eq!(rc, pid, "wait4 failed: {}", std::io::Error::last_os_error());
        let exited = libc::WIFEXITED(status);
        let code = libc::WEXITSTATUS(status);
        let status_text = if exited {
            format!("exit {code}")
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        Finished {
            ok: exited && code == 0,
            status: status_text,
            elapsed,
            maxrss_kib: ru.ru_maxrss,
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
            stdout: fs::read_to_string(out_path).unwrap_or_default(),
            stderr: fs::read_to_string(err_path).unwrap_or_default(),
        }
    }

    /// Runs the binary briefly (a set-up step) and returns its stdout.
    fn run_ok(args: &[&std::ffi::OsStr]) -> String {
        let out = base_command(args)
            .output()
            .expect("cannot start vaultrunner");
        assert!(
            out.status.success(),
            "vaultrunner {:?} failed: {}\n{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// VmRSS and VmHWM of a process, KiB.
    fn memory_kib(pid: u32) -> (i64, i64) {
        let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let get = |key: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (get("VmRSS:"), get("VmHWM:"))
    }

    /// The CPU time a process has used (user + system), in clock ticks.
    fn cpu_ticks(pid: u32) -> Option<u64> {
        let st = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command's name, which is in parentheses.
        let rest = &st[st.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    /// The clock ticks a second (`/proc/PID/stat`'s unit; 100 on Linux).
    fn clock_ticks_per_s() -> f64 {
        // SAFETY: sysconf only reads a constant of the system.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }

    /// Waits until `pid` has used no CPU for half a second (at most
    /// `limit`); returns how long that took.
    fn wait_idle(pid: u32, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let (mut last, mut still) = (cpu_ticks(pid), 0);
        while t0.elapsed() < limit && still < 5 {
            std::thread::sleep(Duration::from_millis(100));
            let now = cpu_ticks(pid);
            if now == last {
                still += 1;
            } else {
                (last, still) = (now, 0);
            }
        }
        t0.elapsed()
    }

    /// A running `serve`; stopped (TERM, then KILL) on drop.
    struct Server {
        child: std::process::Child,
        err_path: PathBuf,
        vault: PathBuf,
        started: Instant,
    }

    impl Server {
        /// Spawns `serve VAULT --listen 127.0.0.1:0 EXTRA…` and returns at
        /// once (the clock of start-up starts here).
        fn spawn(vault: &Path, extra: &[&str], logs: &Path, label: &str) -> Server {
            let err_path = logs.join(format!("serve-{label}.txt"));
            // A stale address must not be taken for this server's.
            let _ = fs::remove_file(vault.join(".vaultrunner/http.addr"));
            let mut args: Vec<&std::ffi::OsStr> = vec!["serve".as_ref(), vault.as_os_str()];
            args.push("--listen".as_ref());
            args.push("127.0.0.1:0".as_ref());
            args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
            let mut cmd = base_command(&args);
            cmd.stdout(Stdio::null())
                .stderr(File::create(&err_path).expect("stderr file"));
            let started = Instant::now();
            let child = cmd.spawn().expect("cannot start vaultrunner serve");
            Server {
                child,
                err_path,
                vault: vault.to_path_buf(),
                started,
            }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.err_path).unwrap_or_default()
        }

        fn exited(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }

        /// The address serve wrote to `.vaultrunner/http.addr`, once there.
        fn addr(&self) -> Option<String> {
            fs::read_to_string(self.vault.join(".vaultrunner/http.addr"))
                .ok()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
        }

        /// Polls `GET /health` until it lists every one of `agents`; returns
        /// the address and the time from spawn, or `None` after `limit`.
        fn wait_healthy(
            &mut self,
            agents: &[String],
            limit: Duration,
        ) -> Option<(String, Duration)> {
            while self.started.elapsed() < limit {
                if self.exited() {
                    return None;
                }
                if let Some(addr) = self.addr()
                    && let Some(body) = http_get(&addr, "/health")
                    && lists_agents(&body, agents)
                {
                    return Some((addr, self.started.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        }

        /// SIGTERM, wait (bounded), SIGKILL. Returns how long the graceful
        /// stop took, if it happened.
        fn stop(&mut self) -> Option<Duration> {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(Duration::ZERO);
            }
            let t0 = Instant::now();
            // SAFETY: plain kill(2) of our own, not yet reaped, child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            None
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn lists_agents(health: &str, agents: &[String]) -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(health) else {
            return false;
        };
        let Some(list) = v["agents"].as_array() else {
            return false;
        };
        let names: BTreeSet<&str> = list.iter().filter_map(|a| a["name"].as_str()).collect();
        agents.iter().all(|a| names.contains(a.as_str()))
    }

    /// A plain HTTP/1.1 GET on loopback; the body of a 200, else `None`.
    fn http_get(addr: &str, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// An HTTP/1.1 client on one keep-alive connection (reconnects after an
    /// error). Only what the bench needs: POST with a JSON body, answers
    /// with `Content-Length`.
    struct KeepAlive {
        addr: String,
        conn: Option<BufReader<TcpStream>>,
    }

    impl KeepAlive {
        fn new(addr: &str) -> KeepAlive {
            KeepAlive {
                addr: addr.to_string(),
                conn: None,
            }
        }

        fn post_json(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
            let r = self.try_post(path, body);
            if r.is_err() {
                self.conn = None;
            }
            r
        }

        fn try_post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, String)> {
            if self.conn.is_none() {
                let s = TcpStream::connect(&self.addr)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                self.conn = Some(BufReader::new(s));
            }
            let conn = self.conn.as_mut().unwrap();
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            conn.get_mut().write_all(req.as_bytes())?;
            let mut line = String::new();
            conn.read_line(&mut line)?;
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
            let mut len = 0usize;
            let mut close = false;
            loop {
                line.clear();
                if conn.read_line(&mut line)? == 0 {
                    return Err(std::io::Error::other("connection closed in the headers"));
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    } else if k.eq_ignore_ascii_case("connection")
                        && v.trim().eq_ignore_ascii_case("close")
                    {
                        close = true;
                    } else if k.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(std::io::Error::other("chunked answers not supported"));
                    }
                }
            }
            let mut buf = vec![0u8; len];
            conn.read_exact(&mut buf)?;
            if close {
                self.conn = None;
            }
            Ok((code, String::from_utf8_lossy(&buf).into_owned()))
        }
    }

    // ------------------------------------------------------------------
    // The shapes of vaultrunner's own notes

    /// Placeholders in the templates.
    const STEM: &str = "@@STEM@@";
    const AGENT: &str = "@@AGENT@@";
    const BODY: &str = "@@BODY@@";
    const TS: &str = "@@TS@@";
    const HANDLED_AT: &str = "@@HANDLED_AT@@";
    const REPLY_TS: &str = "@@REPLY_TS@@";
    const STARTED_AT: &str = "@@STARTED_AT@@";
    const LAST_TURN_AT: &str = "@@LAST_TURN_AT@@";
    const TURN_COUNT: &str = "@@TURN_COUNT@@";

    /// The notes vaultrunner wrote for one message, with the values that
    /// vary replaced by placeholders.
    struct Shapes {
        /// The inbound note as `send` writes it.
        pending: String,
        /// The same after its turn (`status: handled`, `attempts`, `thread`,
        /// `handled_at`, `reply`).
        handled: String,
        /// Its `.reply.md`.
        reply: String,
        /// The agent's thread note.
        thread: String,
    }

    fn fill(template: &str, subs: &[(&str, &str)]) -> String {
        let mut s = template.to_string();
        for (k, v) in subs {
            if s.contains(k) {
                s = s.replace(k, v);
            }
        }
        s
    }

    /// Replaces the value of front-matter `key` with `placeholder`
    /// (keeping quotes around it, if any).
    fn templatize_key(text: &str, key: &str, placeholder: &str) -> String {
        let Some(rest) = text.strip_prefix("---\n") else {
            panic!("a note without front-matter:\n{text}");
        };
        let end = rest.find("\n---").expect("front-matter end") + 4;
        let (fm, after) = text.split_at(end);
        let mut out = String::with_capacity(text.len());
        let mut found = false;
        for line in fm.split_inclusive('\n') {
            if let Some(v) = line.strip_prefix(key).and_then(|r| r.strip_prefix(": ")) {
                let v = v.trim_end();
                let quoted = v.starts_with('"') && v.ends_with('"') && v.len() >= 2;
                let q = if quoted { "\"" } else { "" };
                out.push_str(&format!("{key}: {q}{placeholder}{q}"));
                out.push_str(&line[key.len() + 2 + v.len()..]);
                found = true;
            } else {
                out.push_str(line);
            }
        }
        assert!(found, "no `{key}` in the note:\n{text}");
        out.push_str(after);
        out
    }

    /// Runs the real binary once (`send`, then `process`) on a temp vault
    /// and takes its notes as templates.
    fn capture_shapes(s: &Settings) -> Shapes {
        const NAME: &str = "templateagent";
        const TEXT: &str = "TEMPLATE message BODY for the bench";
        let root = s.tempdir("shapes");
        let vault = root.path().join("vault");
        write_agents(&vault, &[NAME.to_string()]);
        let out = run_ok(&[
            "send".as_ref(),
            vault.as_os_str(),
            NAME.as_ref(),
            TEXT.as_ref(),
        ]);
        // The new inbound note: the only .md under Inbox/.
        let mut found = Vec::new();
        collect_md(&vault.join("Inbox"), &mut found);
        assert_eq!(found.len(), 1, "send wrote {found:?} (stdout {out:?})");
        let msg_abs = found.remove(0);
        let rel = msg_abs
            .strip_prefix(&vault)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let stem = rel.strip_suffix(".md").unwrap().to_string();
        let pending = fs::read_to_string(&msg_abs).unwrap();
        run_ok(&["process".as_ref(), vault.as_os_str()]);
        let handled = fs::read_to_string(&msg_abs).unwrap();
        let reply = fs::read_to_string(vault.join(reply_of(&rel))).unwrap();
        let thread_path = vault.join(format!("Threads/{NAME}/{NAME}.md"));
        let thread = fs::read_to_string(&thread_path)
            .unwrap_or_else(|e| panic!("no thread note at {}: {e}", thread_path.display()));
        assert_eq!(
            front_matter_value(&handled, "status").as_deref(),
            Some("handled"),
            "the template message was not handled:\n{handled}"
        );
        eprintln!(
            "[shapes] from the binary: {rel}\n--- pending\n{pending}--- handled\n{handled}--- reply\n{reply}--- thread\n{thread}---"
        );
        let generic = |t: &str| {
            t.replace(&stem, STEM)
                .replace(TEXT, BODY)
                .replace(NAME, AGENT)
        };
        let pending = generic(&templatize_key(&pending, "ts", TS));
        let handled = templatize_key(
            &templatize_key(&handled, "ts", TS),
            "handled_at",
            HANDLED_AT,
        );
        let handled = generic(&handled);
        let reply = generic(&templatize_key(&reply, "ts", REPLY_TS));
        let mut thread_t = thread.clone();
        for (k, p) in [
            ("started_at", STARTED_AT),
            ("last_turn_at", LAST_TURN_AT),
            ("turn_count", TURN_COUNT),
        ] {
            if front_matter_value(&thread_t, k).is_some() {
                thread_t = templatize_key(&thread_t, k, p);
            }
        }
        let thread_t = generic(&thread_t);
        // Nothing of the template message may be left over.
        let id = stem.rsplit('-').next().unwrap();
        for (what, t) in [
            ("pending", &pending),
            ("handled", &handled),
            ("reply", &reply),
            ("thread", &thread_t),
        ] {
            assert!(
                !t.contains(id) && !t.contains(NAME) && !t.contains(TEXT),
                "the {what} template still names the template message:\n{t}"
            );
        }
        assert!(
            handled.contains(STEM),
            "handled note has no reply link:\n{handled}"
        );
        assert!(
            reply.contains(STEM),
            "reply has no in_reply_to link:\n{reply}"
        );
        assert!(
            thread_t.contains(TURN_COUNT),
            "thread note has no turn_count:\n{thread}"
        );
        Shapes {
            pending,
            handled,
            reply,
            thread: thread_t,
        }
    }

    fn collect_md(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_md(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }

    // ------------------------------------------------------------------
    // The generated vaults

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Layout {
        Dated,
        Flat,
    }

    impl Layout {
        fn name(self) -> &'static str {
            match self {
                Layout::Dated => "dated",
                Layout::Flat => "flat",
            }
        }

        /// The vault-relative stem (no `.md`) of a message to `agent` at `ms`.
        fn stem(self, agent: &str, ms: i64, id: u32) -> String {
            let t = utc(ms);
            let name = format!("{}-{id:08x}", t.format("%Y%m%d-%H%M%S-%3f"));
            match self {
                Layout::Dated => format!("Inbox/{agent}/{}/{name}", t.format("%Y/%m/%d")),
                Layout::Flat => format!("Inbox/{name}"),
            }
        }
    }

    /// A vault with a generated history.
    struct Vault {
        _root: tempfile::TempDir,
        vault: PathBuf,
        /// Outside the vault, same file system: temp files renamed in.
        staging: PathBuf,
        logs: PathBuf,
        layout: Layout,
        agents: Vec<String>,
        history: usize,
        shapes: Arc<Shapes>,
        rng: Rng,
        added: usize,
    }

    impl Vault {
        /// A vault with `agents` and no messages (the turns scenario's
        /// baseline; the soak's with `VR_HISTORY_SOAK_EMPTY=1`).
        fn empty(s: &Settings, shapes: &Arc<Shapes>, label: &str) -> Vault {
            let root = s.tempdir(label);
            let vault = root.path().join("vault");
            let staging = root.path().join("staging");
            let logs = root.path().join("logs");
            for d in [&staging, &logs] {
                fs::create_dir_all(d).unwrap();
            }
            let agents = s.agent_names();
            write_agents(&vault, &agents);
            for a in &agents {
                fs::create_dir_all(vault.join("Inbox").join(a)).unwrap();
            }
            syncfs(&vault);
            Vault {
                _root: root,
                vault,
                staging,
                logs,
                layout: Layout::Dated,
                agents,
                history: 0,
                shapes: shapes.clone(),
                rng: Rng(0x5EED_0000 + label.len() as u64),
                added: 0,
            }
        }

        /// The history vault of `layout`: `s.messages` answered messages
        /// (round-robin over the agents, spread over the year before now)
        /// with their replies and the agents' thread notes, plus one new
        /// pending message.
        fn generate(s: &Settings, shapes: &Arc<Shapes>, layout: Layout) -> Vault {
            let mut v = Vault::empty(s, shapes, layout.name());
            v.layout = layout;
            v.history = s.messages;
            let n = s.messages;
            let agents = v.agents.clone();
            let end = now_ms() - 86_400_000;
            let start = end - 365 * 86_400_000;
            let step = (end - start) / n as i64;
            eprintln!(
                "[{}] generating {n} answered messages + {n} replies over {} agents …",
                layout.name(),
                agents.len()
            );
            let t0 = Instant::now();
            // Every message's time and id first (one RNG, so the vault is
            // the same on every run), the folders, then the files from a
            // few threads.
            let mut rng = Rng(0x1234_5678);
            let plan: Vec<(i64, u32, u64)> = (0..n)
                .map(|i| {
                    let ms = start + i as i64 * step + rng.below(step.max(1) as u64 / 2) as i64;
                    (ms, rng.next() as u32, rng.next())
                })
                .collect();
            let mut dirs = BTreeSet::new();
            for (i, (ms, id, _)) in plan.iter().enumerate() {
                let stem = layout.stem(&agents[i % agents.len()], *ms, *id);
                dirs.insert(v.vault.join(Path::new(&stem).parent().unwrap()));
            }
            for d in &dirs {
                fs::create_dir_all(d).unwrap();
            }
            let bytes = AtomicU64::new(0);
            let writers = 4;
            std::thread::scope(|sc| {
                for w in 0..writers {
                    let (plan, agents, vault, shapes, bytes) =
                        (&plan, &agents, &v.vault, &v.shapes, &bytes);
                    sc.spawn(move || {
                        let mut local = 0u64;
                        for i in (w..plan.len()).step_by(writers) {
                            let (ms, id, seed) = plan[i];
                            let agent = &agents[i % agents.len()];
                            let mut r = Rng(seed);
                            let stem = layout.stem(agent, ms, id);
                            let text = body(&mut r, i);
                            let handled_ms = ms + 300 + r.below(2_000) as i64;
                            let reply_ms = handled_ms - 1 - r.below(5) as i64;
                            let (ts, hs, rs) =
                                (rfc3339(ms), rfc3339(handled_ms), rfc3339(reply_ms));
                            let subs = [
                                (STEM, stem.as_str()),
                                (AGENT, agent.as_str()),
                                (BODY, text.as_str()),
                                (TS, ts.as_str()),
                                (HANDLED_AT, hs.as_str()),
                                (REPLY_TS, rs.as_str()),
                            ];
                            let msg = fill(&shapes.handled, &subs);
                            let reply = fill(&shapes.reply, &subs);
                            fs::write(vault.join(format!("{stem}.md")), &msg).unwrap();
                            fs::write(vault.join(format!("{stem}.reply.md")), &reply).unwrap();
                            local += (msg.len() + reply.len()) as u64;
                        }
                        bytes.fetch_add(local, Ordering::Relaxed);
                    });
                }
            });
            // The thread notes: one conversation per agent.
            for (a, agent) in agents.iter().enumerate() {
                let mine: Vec<i64> = plan
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % agents.len() == a)
                    .map(|(_, p)| p.0)
                    .collect();
                let (first, last) = (mine[0], *mine.last().unwrap() + 2_500);
                let (fs_, ls, count) = (rfc3339(first), rfc3339(last), mine.len().to_string());
                let text = fill(
                    &v.shapes.thread,
                    &[
                        (AGENT, agent.as_str()),
                        (STARTED_AT, fs_.as_str()),
                        (LAST_TURN_AT, ls.as_str()),
                        (TURN_COUNT, count.as_str()),
                    ],
                );
                let p = v.vault.join(format!("Threads/{agent}/{agent}.md"));
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, text).unwrap();
            }
            let gen_time = t0.elapsed();
            let t1 = Instant::now();
            syncfs(&v.vault);
            eprintln!(
                "[{}] {} notes ({:.0} MiB of text) in {} folders: generated in {:.1} s + syncfs {:.1} s",
                layout.name(),
                2 * n + agents.len() * 2,
                bytes.load(Ordering::Relaxed) as f64 / MIB / MIB,
                dirs.len(),
                gen_time.as_secs_f64(),
                t1.elapsed().as_secs_f64()
            );
            // Exactly one new pending message.
            let first = agents[0].clone();
            v.add_pending(&first);
            syncfs(&v.vault);
            v
        }

        /// Writes a new pending message to `agent` with `ts` = now (as
        /// `send` writes it, at this layout's path): plain write, then
        /// rename in from outside the vault. Returns its vault-relative path.
        fn add_pending(&mut self, agent: &str) -> String {
            self.add_pending_at(agent, now_ms(), false)
        }

        fn add_pending_at(&mut self, agent: &str, ms: i64, fsync: bool) -> String {
            self.added += 1;
            let id = self.rng.next() as u32;
            let stem = self.layout.stem(agent, ms, id);
            let text = body(&mut self.rng, self.history + self.added);
            let ts = rfc3339(ms);
            let note = fill(
                &self.shapes.pending,
                &[
                    (STEM, stem.as_str()),
                    (AGENT, agent),
                    (BODY, text.as_str()),
                    (TS, ts.as_str()),
                ],
            );
            let rel = format!("{stem}.md");
            let dst = self.vault.join(&rel);
            let tmp = self.staging.join(format!("{id:08x}-{}.md", self.added));
            {
                let mut f = File::create(&tmp).unwrap();
                f.write_all(note.as_bytes()).unwrap();
                if fsync {
                    f.sync_all().unwrap();
                }
            }
            let dir = dst.parent().unwrap();
            if !dir.exists() {
                fs::create_dir_all(dir).unwrap();
            }
            fs::rename(&tmp, &dst).unwrap();
            rel
        }

        fn answered(&self, rel: &str) -> bool {
            self.vault.join(reply_of(rel)).exists()
        }

        fn handled(&self, rel: &str) -> bool {
            let t = fs::read_to_string(self.vault.join(rel)).unwrap_or_default();
            front_matter_value(&t, "status").as_deref() == Some("handled")
        }

        /// Today's folder of every agent (dated layout), so that notes
        /// dropped in later land in a folder that exists.
        fn make_today_dirs(&self) {
            for a in &self.agents {
                let stem = self.layout.stem(a, now_ms(), 0);
                fs::create_dir_all(self.vault.join(Path::new(&stem).parent().unwrap())).unwrap();
            }
        }
    }

    /// The history vaults, each generated once per bench run, when first
    /// needed.
    struct Vaults {
        shapes: Option<Arc<Shapes>>,
        dated: Option<Vault>,
        flat: Option<Vault>,
    }

    impl Vaults {
        fn shapes(&mut self, s: &Settings) -> Arc<Shapes> {
            self.shapes
                .get_or_insert_with(|| Arc::new(capture_shapes(s)))
                .clone()
        }

        fn get(&mut self, s: &Settings, layout: Layout) -> &mut Vault {
            let shapes = self.shapes(s);
            let slot = match layout {
                Layout::Dated => &mut self.dated,
                Layout::Flat => &mut self.flat,
            };
            slot.get_or_insert_with(|| Vault::generate(s, &shapes, layout))
        }
    }

    // ------------------------------------------------------------------
    // Scenario: process

    struct ProcessRun {
        elapsed: Duration,
        maxrss_kib: i64,
        ok: bool,
    }

    fn process_runs(s: &Settings, v: &mut Vault, res: &mut Results) -> Vec<ProcessRun> {
        let sc = format!("process ({})", v.layout.name());
        let mut runs = Vec::new();
        let load0 = loadavg();
        for run in 1..=3 {
            // Run 1 answers the pending message the vault was made with;
            // runs 2 and 3 each get a new one.
            let rel = if run == 1 {
                first_pending(v)
            } else {
                let a = v.agents[run % v.agents.len()].clone();
                let rel = v.add_pending(&a);
                syncfs(&v.vault);
                rel
            };
            let r = run_to_end(
                &["process".as_ref(), v.vault.as_os_str()],
                &v.logs,
                s.process_limit,
            );
            let answered = v.answered(&rel) && v.handled(&rel);
            eprintln!(
                "[{sc}] run {run}: {} ({}), peak RSS {}, user {:.2} s sys {:.2} s, reply: {}; stdout: {}",
                secs(r.elapsed),
                r.status,
                mib(r.maxrss_kib),
                r.user.as_secs_f64(),
                r.sys.as_secs_f64(),
                if answered { "yes" } else { "NO" },
                r.stdout.trim()
            );
            if !r.ok {
                eprintln!("[{sc}] stderr (tail):\n{}", tail(&r.stderr, 15));
            }
            if run == 1 {
                let (b, f) = dir_size(&v.vault.join(".vaultrunner"));
                res.info(
                    &sc,
                    "`.vaultrunner/` after run 1",
                    format!("{f} files, {:.1} MiB", b as f64 / MIB / MIB),
                );
            }
            res.info(
                &sc,
                format!("run {run}: CPU user / sys"),
                format!("{:.2} / {:.2} s", r.user.as_secs_f64(), r.sys.as_secs_f64()),
            );
            runs.push(ProcessRun {
                elapsed: r.elapsed,
                maxrss_kib: r.maxrss_kib,
                ok: r.ok && answered,
            });
        }
        let first = &runs[0];
        res.check(
            &sc,
            format!(
                "run 1 (right after generating; {} answered messages + replies): wall",
                v.history
            ),
            secs(first.elapsed),
            "< 1 s",
            first.ok && first.elapsed < Duration::from_secs(1),
        );
        res.check(
            &sc,
            "run 1: peak RSS",
            mib(first.maxrss_kib),
            "< 60 MB",
            (first.maxrss_kib as f64) * 1024.0 < 60e6,
        );
        let warm = &runs[1..];
        res.check(
            &sc,
            "runs 2–3 (1 new message each): wall",
            warm.iter()
                .map(|r| secs(r.elapsed))
                .collect::<Vec<_>>()
                .join(" · "),
            "< 1 s",
            warm.iter()
                .all(|r| r.ok && r.elapsed < Duration::from_secs(1)),
        );
        res.check(
            &sc,
            "runs 2–3: peak RSS",
            warm.iter()
                .map(|r| mib(r.maxrss_kib))
                .collect::<Vec<_>>()
                .join(" · "),
            "< 60 MB",
            warm.iter().all(|r| (r.maxrss_kib as f64) * 1024.0 < 60e6),
        );
        res.check(
            &sc,
            "every run answered its new message",
            format!("{} of {}", runs.iter().filter(|r| r.ok).count(), runs.len()),
            "all",
            runs.iter().all(|r| r.ok),
        );
        res.info(
            &sc,
            "load average (1 min) before / after",
            format!("{load0} / {}", loadavg()),
        );
        runs
    }

    /// The pending message a generated vault was made with.
    fn first_pending(v: &Vault) -> String {
        let mut found = Vec::new();
        let dir = match v.layout {
            Layout::Dated => v.vault.join("Inbox").join(&v.agents[0]),
            Layout::Flat => v.vault.join("Inbox"),
        };
        collect_md(&dir, &mut found);
        let newest = found
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(".reply.md"))
            .max()
            .expect("a message");
        let rel = newest
            .strip_prefix(&v.vault)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(!v.handled(&rel), "{rel} is not pending");
        rel
    }

    fn process(s: &Settings, vaults: &mut Vaults, res: &mut Results) {
        let dated = process_runs(s, vaults.get(s, Layout::Dated), res);
        let flat = process_runs(s, vaults.get(s, Layout::Flat), res);
        let ratio = |f: &ProcessRun, d: &ProcessRun| {
            f.elapsed.as_secs_f64() / d.elapsed.as_secs_f64().max(1e-9)
        };
        let r1 = ratio(&flat[0], &dated[0]);
        let warm = |rs: &[ProcessRun]| {
            rs[1..].iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>() / (rs.len() - 1) as f64
        };
        let rw = warm(&flat) / warm(&dated).max(1e-9);
        let peak = |rs: &[ProcessRun]| rs.iter().map(|r| r.maxrss_kib).max().unwrap_or(0);
        let rm = peak(&flat) as f64 / peak(&dated).max(1) as f64;
        const SC: &str = "process (flat ÷ dated)";
        res.check(SC, "run 1 wall", format!("{r1:.2}×"), "≤ 1.5×", r1 <= 1.5);
        res.check(
            SC,
            "runs 2–3 wall (mean)",
            format!("{rw:.2}×"),
            "≤ 1.5×",
            rw <= 1.5,
        );
        res.check(
            SC,
            "peak RSS (max of the runs)",
            format!("{rm:.2}×"),
            "≤ 1.5×",
            rm <= 1.5,
        );
    }

    // ------------------------------------------------------------------
    // Scenario: serve start-up

    struct StartUp {
        took: Option<Duration>,
        rss_kib: i64,
        hwm_kib: i64,
    }

    fn serve_startups(v: &Vault, res: &mut Results) -> Vec<StartUp> {
        let sc = format!("serve start-up ({})", v.layout.name());
        let load0 = loadavg();
        let mut out = Vec::new();
        for (i, label) in ["first start", "second start"].iter().enumerate() {
            let mut server = Server::spawn(&v.vault, &[], &v.logs, &format!("startup-{i}"));
            let got = server.wait_healthy(&v.agents, Duration::from_secs(120));
            let (rss, hwm) = memory_kib(server.pid());
            // And a little later: what the start left behind.
            std::thread::sleep(Duration::from_secs(3));
            let (rss3, hwm3) = memory_kib(server.pid());
            let stopped = server.stop();
            let log = server.log();
            eprintln!(
                "[{sc}] {label}: /health lists all agents after {}; VmRSS {} VmHWM {} (3 s later {} / {}); stop {}",
                got.as_ref().map_or("— (never)".into(), |g| secs(g.1)),
                mib(rss),
                mib(hwm),
                mib(rss3),
                mib(hwm3),
                stopped.map_or("killed".into(), ms)
            );
            if got.is_none() {
                eprintln!("[{sc}] serve log (tail):\n{}", tail(&log, 20));
            }
            let serving = log
                .lines()
                .find(|l| l.contains("serving "))
                .and_then(|l| l.split_once("serving "))
                .map(|(_, l)| format!("serving {}", l.trim()));
            if let Some(l) = serving
                && i == 0
            {
                res.info(
                    &sc,
                    "serve's start-up log line",
                    format!("`{}`", l.replace('|', "/")),
                );
            }
            res.check(
                &sc,
                format!(
                    "{label}: spawn → `/health` lists all {} agents",
                    v.agents.len()
                ),
                got.as_ref().map_or("never (120 s)".into(), |g| secs(g.1)),
                "< 1 s",
                got.as_ref().is_some_and(|g| g.1 < Duration::from_secs(1)),
            );
            res.check(
                &sc,
                format!("{label}: VmRSS / VmHWM then"),
                format!("{} / {}", mib(rss), mib(hwm)),
                "< 60 MB resident",
                got.is_some() && (rss as f64) * 1024.0 < 60e6,
            );
            res.info(
                &sc,
                format!("{label}: VmRSS / VmHWM 3 s later"),
                format!("{} / {}", mib(rss3), mib(hwm3)),
            );
            out.push(StartUp {
                took: got.map(|g| g.1),
                rss_kib: rss,
                hwm_kib: hwm,
            });
        }
        res.info(
            &sc,
            "load average (1 min) before / after",
            format!("{load0} / {}", loadavg()),
        );
        out
    }

    fn serve(s: &Settings, vaults: &mut Vaults, res: &mut Results) {
        let dated = serve_startups(vaults.get(s, Layout::Dated), res);
        let flat = serve_startups(vaults.get(s, Layout::Flat), res);
        const SC: &str = "serve start-up (flat ÷ dated)";
        for (i, label) in ["first start", "second start"].iter().enumerate() {
            if let (Some(f), Some(d)) = (flat[i].took, dated[i].took) {
                let r = f.as_secs_f64() / d.as_secs_f64().max(1e-9);
                res.check(
                    SC,
                    format!("{label}: time"),
                    format!("{r:.2}×"),
                    "≤ 1.5×",
                    r <= 1.5,
                );
            }
            let r = flat[i].rss_kib as f64 / dated[i].rss_kib.max(1) as f64;
            res.check(
                SC,
                format!("{label}: VmRSS"),
                format!("{r:.2}×"),
                "≤ 1.5×",
                r <= 1.5,
            );
        }
        res.info(
            SC,
            "VmHWM at `/health`, dated · flat (first, second start)",
            format!(
                "{} · {} ({} · {})",
                mib(dated[0].hwm_kib),
                mib(flat[0].hwm_kib),
                mib(dated[1].hwm_kib),
                mib(flat[1].hwm_kib)
            ),
        );
    }

    // ------------------------------------------------------------------
    // Scenario: soak

    fn soak(s: &Settings, vaults: &mut Vaults, res: &mut Results) {
        let shapes = vaults.shapes(s);
        let mut fresh = None;
        let v: &Vault = if s.soak_empty {
            fresh.insert(Vault::empty(s, &shapes, "soak-empty"))
        } else {
            vaults.get(s, Layout::Dated)
        };
        let sc = format!(
            "soak ({})",
            if s.soak_empty {
                "empty vault".to_string()
            } else {
                format!("{} vault, {} answered messages", v.layout.name(), v.history)
            }
        );
        let load0 = loadavg();
        let mut server = Server::spawn(&v.vault, &[], &v.logs, "soak");
        let Some((addr, took)) = server.wait_healthy(&v.agents, Duration::from_secs(120)) else {
            res.check(&sc, "serve started", "no".into(), "yes", false);
            eprintln!("[soak] serve log:\n{}", tail(&server.log(), 20));
            return;
        };
        let pid = server.pid();
        eprintln!(
            "[{sc}] serve up after {}; {} messages/s for {} s from 4 clients …",
            secs(took),
            s.soak_rate,
            s.soak_secs
        );
        let clients = 4usize;
        let rate = s.soak_rate;
        let dur = Duration::from_secs(s.soak_secs);
        let agents = Arc::new(v.agents.clone());
        let (tx, rx) = mpsc::channel::<String>();
        let errors = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for c in 0..clients {
            let (tx, agents, errors, first_error, addr) = (
                tx.clone(),
                agents.clone(),
                errors.clone(),
                first_error.clone(),
                addr.clone(),
            );
            handles.push(std::thread::spawn(move || {
                let mut http = KeepAlive::new(&addr);
                let mut r = Rng(0xC0FF_EE00 + c as u64);
                let mut last = t0;
                for k in (c..).step_by(clients) {
                    let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                    if due >= t0 + dur {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let agent = &agents[k % agents.len()];
                    let content = body(&mut r, k);
                    let json = serde_json::json!({ "content": content }).to_string();
                    match http.post_json(&format!("/api/agents/{agent}/messages"), &json) {
                        Ok((202, b)) => {
                            let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                            match v["path"].as_str() {
                                Some(p) => {
                                    let _ = tx.send(p.to_string());
                                }
                                None => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    first_error
                                        .lock()
                                        .unwrap()
                                        .get_or_insert(format!("202 without a path: {b}"));
                                }
                            }
                        }
                        Ok((code, b)) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("{code}: {b}"));
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(format!("{e}"));
                        }
                    }
                    last = Instant::now();
                }
                last
            }));
        }
        drop(tx);
        // Sample memory and lag every 5 s while the clients send.
        let mut unanswered: Vec<String> = Vec::new();
        let mut sent = 0usize;
        let mut samples: Vec<(Duration, i64, usize)> = Vec::new();
        let check = |unanswered: &mut Vec<String>| {
            unanswered.retain(|p| !v.vault.join(reply_of(p)).exists());
        };
        let mut next = t0 + Duration::from_secs(5);
        let mut clients_done = false;
        while !clients_done {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += Duration::from_secs(5);
            for p in rx.try_iter() {
                unanswered.push(p);
                sent += 1;
            }
            check(&mut unanswered);
            let (rss, _) = memory_kib(pid);
            let at = t0.elapsed();
            samples.push((at, rss, unanswered.len()));
            clients_done =
                handles.iter().all(|h| h.is_finished()) || at > dur + Duration::from_secs(60);
            if samples.len().is_multiple_of(12) || clients_done {
                eprintln!(
                    "[soak] {:>4.0} s: {sent} sent, lag {}, VmRSS {}",
                    at.as_secs_f64(),
                    unanswered.len(),
                    mib(rss)
                );
            }
            if server.exited() {
                eprintln!("[soak] serve exited:\n{}", tail(&server.log(), 20));
                break;
            }
        }
        let last_send = handles
            .into_iter()
            .map(|h| h.join().unwrap_or(t0))
            .max()
            .unwrap_or(t0);
        for p in rx.try_iter() {
            unanswered.push(p);
            sent += 1;
        }
        let send_secs = (last_send - t0).as_secs_f64().max(1e-9);
        check(&mut unanswered);
        let lag_end = unanswered.len();
        let (rss_end, hwm_end) = memory_kib(pid);
        // Then every message must get its reply (bounded).
        let drain_limit = Duration::from_secs(300);
        let d0 = Instant::now();
        while !unanswered.is_empty() && d0.elapsed() < drain_limit && !server.exited() {
            std::thread::sleep(Duration::from_millis(100));
            check(&mut unanswered);
        }
        let drained = d0.elapsed();
        let (rss_drained, hwm_drained) = memory_kib(pid);
        let stopped = server.stop();
        let errors = errors.load(Ordering::Relaxed);
        // The baseline: the sample at 60 s (at half the soak when it is
        // shorter than two minutes).
        let base_at = if dur >= Duration::from_secs(120) {
            Duration::from_secs(60)
        } else {
            dur / 2
        };
        let base = samples
            .iter()
            .find(|x| x.0 + Duration::from_millis(500) >= base_at)
            .copied()
            .unwrap_or((Duration::ZERO, 0, 0));
        let end = samples
            .iter()
            .rev()
            .find(|x| x.0 <= dur + Duration::from_secs(3))
            .copied()
            .unwrap_or((Duration::ZERO, rss_end, lag_end));
        let lag_max = samples.iter().map(|x| x.2).max().unwrap_or(0).max(lag_end);
        let achieved = sent as f64 / send_secs;
        res.info(
            &sc,
            "serve start-up before the soak (spawn → `/health`)",
            secs(took),
        );
        res.check(
            &sc,
            format!(
                "achieved rate ({clients} keep-alive clients, {} s)",
                s.soak_secs
            ),
            format!("{achieved:.1} msgs/s ({sent} accepted, {errors} refused or failed)"),
            format!("{rate:.0}/s"),
            achieved >= 0.95 * rate && errors == 0,
        );
        if let Some(e) = first_error.lock().unwrap().as_ref() {
            res.info(
                &sc,
                "first failed request",
                format!("`{}`", e.replace('|', "/")),
            );
        }
        res.info(
            &sc,
            format!("VmRSS at {:.0} s", base.0.as_secs_f64()),
            mib(base.1),
        );
        res.info(
            &sc,
            format!("VmRSS at the end ({:.0} s)", end.0.as_secs_f64()),
            mib(end.1),
        );
        let grew = (end.1 - base.1) as f64 * 1024.0;
        res.check(
            &sc,
            "VmRSS growth from the first-minute sample to the end",
            format!("{:+.1} MiB", grew / MIB / MIB),
            "within 20 MB",
            grew.abs() <= 20e6,
        );
        res.info(&sc, "VmHWM at the end of sending", mib(hwm_end));
        res.info(
            &sc,
            "VmRSS / VmHWM after the drain",
            format!("{} / {}", mib(rss_drained), mib(hwm_drained)),
        );
        res.info(
            &sc,
            "VmRSS samples, MiB (every 5 s; one a minute shown)",
            samples
                .iter()
                .filter(|x| samples.len() <= 12 || (x.0.as_secs() + 2) % 60 < 5)
                .map(|x| format!("{:.0}", x.1 as f64 / MIB))
                .collect::<Vec<_>>()
                .join(" · "),
        );
        res.info(
            &sc,
            "lag (sent − replies on disk): max · at the end of sending",
            format!("{lag_max} · {lag_end}"),
        );
        res.info(
            &sc,
            "drain after the sends stopped",
            if unanswered.is_empty() {
                secs(drained)
            } else {
                format!(
                    "{} still unanswered after {}",
                    unanswered.len(),
                    secs(drained)
                )
            },
        );
        res.check(
            &sc,
            "every message answered",
            (if unanswered.is_empty() && sent > 0 {
                "yes"
            } else {
                "no"
            })
            .into(),
            "yes",
            unanswered.is_empty() && sent > 0,
        );
        res.info(
            &sc,
            "graceful stop",
            stopped.map_or("did not stop; killed".into(), ms),
        );
        res.info(
            &sc,
            "load average (1 min) before / after",
            format!("{load0} / {}", loadavg()),
        );
    }

    // ------------------------------------------------------------------
    // Scenario: turns

    struct TurnFigures {
        turns_per_s: f64,
        /// `serve`'s CPU time (user + system) per turn in (a), in ms.
        cpu_ms: f64,
        p50: Duration,
        p99: Duration,
    }

    fn turns_on(
        s: &Settings,
        v: &mut Vault,
        label: &str,
        res: &mut Results,
    ) -> Option<TurnFigures> {
        let sc = format!("turns ({label})");
        let load0 = loadavg();
        v.make_today_dirs();
        syncfs(&v.vault);
        let mut server = Server::spawn(&v.vault, &["--settle-ms", "0"], &v.logs, "turns");
        let Some((_, took)) = server.wait_healthy(&v.agents, Duration::from_secs(120)) else {
            res.check(&sc, "serve started", "no".into(), "yes", false);
            eprintln!("[{sc}] serve log:\n{}", tail(&server.log(), 20));
            return None;
        };
        // What a start does after `/health` answers (the save of the index
        // it read, the watcher's walk of the folders) is the start-up's
        // cost, not the turns': they are timed once `serve` is idle.
        let idle = wait_idle(server.pid(), Duration::from_secs(60));
        res.info(
            &sc,
            "serve up (`/health`) · idle after that",
            format!("{} · {}", secs(took), secs(idle)),
        );
        // (a) Throughput: `turns` notes dropped in at once, round-robin.
        let n = s.turns;
        eprintln!(
            "[{sc}] serve up after {}, idle {} later; dropping {n} notes …",
            secs(took),
            secs(idle)
        );
        // The notes are dropped in while `serve` is stopped (SIGSTOP) and
        // it is let go once all are there: how fast the bench's own writes
        // go (this disk's flushes vary a lot) then changes nothing of how
        // the turns arrive, nor of their CPU.
        let base_ms = now_ms();
        let pid = server.pid() as libc::pid_t;
        // SAFETY: kill only sends a signal to the child this bench started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let w = Instant::now();
        let mut pending: Vec<String> = (0..n)
            .map(|i| {
                let a = v.agents[i % v.agents.len()].clone();
                v.add_pending_at(&a, base_ms + i as i64, false)
            })
            .collect();
        let written = w.elapsed();
        let cpu0 = cpu_ticks(server.pid());
        let t0 = Instant::now();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let last_of_each: Vec<String> = pending[n.saturating_sub(v.agents.len())..].to_vec();
        let mut last_reply = t0;
        let limit = Duration::from_secs(300);
        while !pending.is_empty() && t0.elapsed() < limit && !server.exited() {
            let before = pending.len();
            pending.retain(|p| !v.answered(p));
            if pending.len() < before {
                last_reply = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took_all = last_reply - t0;
        let done = n - pending.len();
        let tps = done as f64 / took_all.as_secs_f64().max(1e-9);
        eprintln!(
            "[{sc}] {done} of {n} answered; last reply {} after SIGCONT ({} to write them): {tps:.0} turns/s",
            secs(took_all),
            ms(written)
        );
        // Let the last turns finish (the stamps land after the replies).
        let w0 = Instant::now();
        while w0.elapsed() < Duration::from_secs(30) && !last_of_each.iter().all(|p| v.handled(p)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The CPU the turns took, apart from the waits for their flushes
        // (it still moves with how the notes arrive: notes that trickle
        // in are turned in smaller groups, each costing more).
        let cpu = match (cpu0, cpu_ticks(server.pid())) {
            (Some(a), Some(b)) => (b - a) as f64 * 1000.0 / clock_ticks_per_s(),
            _ => f64::NAN,
        };
        let cpu_ms = cpu / done.max(1) as f64;
        // (b) Latency: one message at a time.
        let (warm, probes) = (s.latency_warmup, s.latency_n);
        let mut lat = Vec::with_capacity(probes);
        let mut timeouts = 0;
        for i in 0..warm + probes {
            let a = v.agents[i % v.agents.len()].clone();
            // The write (fsynced, outside the timing) and the rename in.
            let ms_now = now_ms();
            let rel = v.add_pending_staged(&a, ms_now);
            let reply = v.vault.join(reply_of(&rel.0));
            let t = Instant::now();
            fs::rename(&rel.1, v.vault.join(&rel.0)).unwrap();
            let mut got = false;
            while t.elapsed() < Duration::from_secs(10) {
                if reply.exists() {
                    got = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let d = t.elapsed();
            if !got {
                timeouts += 1;
                continue;
            }
            if i >= warm {
                lat.push(d);
            }
            let t1 = Instant::now();
            while t1.elapsed() < Duration::from_secs(5) && !v.handled(&rel.0) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let (rss, hwm) = memory_kib(server.pid());
        server.stop();
        lat.sort();
        res.info(
            &sc,
            format!(
                "(a) {n} notes dropped in while `serve --settle-ms 0` is stopped: SIGCONT → last reply"
            ),
            format!(
                "{} ({done} answered; writing them took {})",
                secs(took_all),
                ms(written)
            ),
        );
        res.info(&sc, "(a) turns/s", format!("{tps:.0}"));
        res.info(
            &sc,
            "(a) serve's CPU (user + system) per turn",
            format!("{cpu_ms:.3} ms"),
        );
        if lat.is_empty() {
            res.check(
                &sc,
                "(b) latency probes answered",
                "none".into(),
                "all",
                false,
            );
            return None;
        }
        let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
        res.info(
            &sc,
            format!("(b) note renamed in → reply file seen, {probes} probes (+{warm} warm-up): p50 / p99"),
            format!("{} / {} ({timeouts} timed out)", ms(p50), ms(p99)),
        );
        res.info(
            &sc,
            "serve VmRSS / VmHWM at the end",
            format!("{} / {}", mib(rss), mib(hwm)),
        );
        res.info(
            &sc,
            "load average (1 min) before / after",
            format!("{load0} / {}", loadavg()),
        );
        (done == n && timeouts == 0).then_some(TurnFigures {
            turns_per_s: tps,
            cpu_ms,
            p50,
            p99,
        })
    }

    impl Vault {
        /// A pending message written (and fsynced) to the staging folder;
        /// returns its vault-relative path and the temp file to rename.
        fn add_pending_staged(&mut self, agent: &str, ms: i64) -> (String, PathBuf) {
            self.added += 1;
            let id = self.rng.next() as u32;
            let stem = self.layout.stem(agent, ms, id);
            let text = body(&mut self.rng, self.history + self.added);
            let ts = rfc3339(ms);
            let note = fill(
                &self.shapes.pending,
                &[
                    (STEM, stem.as_str()),
                    (AGENT, agent),
                    (BODY, text.as_str()),
                    (TS, ts.as_str()),
                ],
            );
            let rel = format!("{stem}.md");
            let dir = self.vault.join(&rel);
            let dir = dir.parent().unwrap();
            if !dir.exists() {
                fs::create_dir_all(dir).unwrap();
            }
            let tmp = self.staging.join(format!("{id:08x}-{}.md", self.added));
            let mut f = File::create(&tmp).unwrap();
            f.write_all(note.as_bytes()).unwrap();
            f.sync_all().unwrap();
            (rel, tmp)
        }
    }

    fn turns(s: &Settings, vaults: &mut Vaults, res: &mut Results) {
        let shapes = vaults.shapes(s);
        let v = vaults.get(s, Layout::Dated);
        let mut empty = Vault::empty(s, &shapes, "turns-empty");
        let label = format!("{} vault, {} answered messages", v.layout.name(), v.history);
        // Rounds on the two vaults in turn: this machine's disk (every
        // turn's writes are flushed) is not equally fast for minutes on
        // end, and one run of each would compare two moments.
        // Round 0, a warm-up that is not counted (in the full run): the
        // first round on each vault also met the tail of the vault's
        // generation and the history vault's first start without a saved
        // index.
        let (mut base, mut hist) = (Vec::new(), Vec::new());
        let first = if s.quick { 1 } else { 0 };
        for round in first..=s.turn_rounds {
            let r = |l: &str| match round {
                0 => format!("{l}, warm-up round"),
                _ if s.turn_rounds > 1 => format!("{l}, round {round}"),
                _ => l.to_string(),
            };
            let b = turns_on(s, &mut empty, &r("empty vault"), res);
            let h = turns_on(s, v, &r(&label), res);
            if round > 0 {
                base.extend(b);
                hist.extend(h);
            }
        }
        drop(empty);
        const SC: &str = "turns (history ÷ empty)";
        if base.len() < s.turn_rounds || hist.len() < s.turn_rounds {
            res.check(SC, "every round complete", "no".into(), "yes", false);
            return;
        }
        let median = |xs: &[TurnFigures], f: &dyn Fn(&TurnFigures) -> f64| {
            let mut v: Vec<f64> = xs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let of = |f: &dyn Fn(&TurnFigures) -> f64| (median(&hist, f), median(&base, f));
        let rounds = if s.turn_rounds > 1 {
            format!(" (median of {} rounds)", s.turn_rounds)
        } else {
            String::new()
        };
        let (h, b) = of(&|t| t.turns_per_s);
        let r = h / b.max(1e-9);
        res.check(
            SC,
            format!("(a) turns/s{rounds}"),
            format!("{r:.2} ({h:.0} vs {b:.0})"),
            "≥ 0.90",
            r >= 0.9,
        );
        let (h, b) = of(&|t| t.cpu_ms);
        let r = h / b.max(1e-9);
        res.check(
            SC,
            format!("(a) serve's CPU per turn{rounds}"),
            format!("{r:.2} ({h:.3} vs {b:.3} ms)"),
            "≤ 1.10",
            r <= 1.1,
        );
        for (name, f) in [
            (
                "p50",
                &(|t: &TurnFigures| t.p50.as_secs_f64()) as &dyn Fn(&TurnFigures) -> f64,
            ),
            ("p99", &|t: &TurnFigures| t.p99.as_secs_f64()),
        ] {
            let (h, b) = of(f);
            let r = h / b.max(1e-9);
            res.check(
                SC,
                format!("(b) latency {name}{rounds}"),
                format!(
                    "{r:.2} ({} vs {})",
                    ms(Duration::from_secs_f64(h)),
                    ms(Duration::from_secs_f64(b))
                ),
                "≤ 1.10",
                r <= 1.1,
            );
        }
    }

    // ------------------------------------------------------------------

    pub fn main() {
        let wanted: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        for w in &wanted {
            if !SCENARIOS.contains(&w.as_str()) {
                eprintln!(
                    "unknown scenario {w:?}; choose from: {}",
                    SCENARIOS.join(" ")
                );
                std::process::exit(2);
            }
        }
        let on = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
        let s = Settings::from_env();
        let mut res = Results::echoing();
        let t0 = Instant::now();
        let load_start = loadavg();
        eprintln!(
            "vaultrunner history benchmark{} — binary {BIN}, temp dir {}, {} messages over {} agents",
            if s.quick { " (quick)" } else { "" },
            s.tmp.display(),
            s.messages,
            s.agents
        );
        let mut vaults = Vaults {
            shapes: None,
            dated: None,
            flat: None,
        };
        // The soak comes last: it adds its messages to the dated vault.
        if on("process") {
            process(&s, &mut vaults, &mut res);
        }
        if on("serve") {
            serve(&s, &mut vaults, &mut res);
        }
        // The flat vault is done with.
        vaults.flat = None;
        if on("turns") {
            turns(&s, &mut vaults, &mut res);
        }
        if on("soak") {
            soak(&s, &mut vaults, &mut res);
        }
        println!();
        println!(
            "vaultrunner history benchmark{} ({:.0} s; {} answered messages over {} agents)",
            if s.quick { " — QUICK sizes" } else { "" },
            t0.elapsed().as_secs_f64(),
            s.messages,
            s.agents
        );
        println!(
            "machine: {} CPUs, 1-min load average {} at start, {} at end",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_start,
            loadavg()
        );
        println!();
        print!("{}", res.table());
        let missed = res.missed();
        if missed > 0 {
            println!("\n{missed} target(s) missed.");
        }
    }
}
