//! Git-sync benchmarks of the `vaultrunner` binary (issue 11 point 8; see
//! docs/PERFORMANCE.md, "Git-synced vaults"), with the real `git` CLI.
//!
//! A plain `main` (the bench target has `harness = false`). Every scenario
//! builds, in a temp directory, a bare `origin.git`, a "phone" clone
//! driven by plain `git` and the server clone that `vaultrunner serve
//! --git-sync` runs on, and prints a Markdown table. Git is isolated from
//! the machine: every git call (the bench's and vaultrunner's) gets
//! `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=<tmp>/gitconfig` and
//! `HOME=<tmp>`. Without `git` on PATH it prints a note and exits 0.
//!
//! ```text
//! cargo bench --bench git_sync                    # all scenarios (~4–5 min)
//! cargo bench --bench git_sync -- webhook poll    # some of them:
//!                                                 #   webhook poll big
//! ```
//!
//! Settings (defaults in brackets): `VR_BENCH_GIT_N` [30] latency probes
//! per mode (plus 1 warm-up probe), `VR_BENCH_GIT_SETTLE_MS` [unset:
//! serve's default settle window] passed as `--settle-ms` to the latency
//! runs, `VR_BENCH_GIT_NOTES` [100000] notes of the big vault,
//! `VR_BENCH_GIT_BASE_NOTES` [1000] notes of the same scenario's small
//! baseline (0: none), `VR_BENCH_GIT_CYCLES` [5] and
//! `VR_BENCH_GIT_PER_CYCLE` [3] messages per cycle, `VR_BENCH_TMPDIR`
//! [system temp dir], `VR_BENCH_KEEP=1` (keep the temp dirs and print
//! where; the git shim's log is there).
//!
//! What is measured, exactly:
//!
//! - **phone push → reply on origin** (`webhook`, `poll`): `serve VAULT
//!   --git-sync` with one `echo` agent. Per probe the phone (outside the
//!   timing) pulls, writes `Inbox/mNNNNN.md`, commits it and pushes. The
//!   clock starts when its `git push` has returned (the message is on
//!   origin) and stops when `git --git-dir origin.git cat-file -e
//!   main:Inbox/mNNNNN.reply.md` first succeeds, polled every 20 ms. In the
//!   webhook run the bench POSTs `/hooks/git` (address from
//!   `<vault>/.vaultrunner/http.addr`) right after the push, inside the
//!   timing, and serve pulls every hour otherwise; in the polling run there
//!   is no hook, `--git-pull-secs 1`, and each probe starts after a random
//!   (uniform) part of that second, outside the timing, so probes do not
//!   lock step with the timer. Stages come from serve's log timestamps.
//! - **git work per sync cycle** (`big`): a vault of 100,000 small notes
//!   in 100 folders, made with `git fast-import` in origin and cloned.
//!   `serve --git-sync --git-pull-secs 3600` runs with a shim first on its
//!   PATH: a `bash` script named `git` that notes `$EPOCHREALTIME` before
//!   and after running the real git, and the arguments, in a file. Each
//!   cycle the phone pushes a few messages in one commit and POSTs the
//!   hook; serve pulls (one cycle), answers, commits and pushes (a second
//!   cycle). The git calls are grouped into cycles by the quiet between
//!   them (a cycle's calls follow each other at once; cycles are ≥ 1 s
//!   apart: the hook's debounce, the engine's settle, the commit's batch
//!   window). Per cycle: its span (first call's start → last call's end:
//!   git plus vaultrunner's own work between calls, plus the shim's start-up
//!   per call, measured and given), Σ git wall, and each command's time.
//!   The same run on a small vault (1,000 notes) is the baseline: a command
//!   whose time grows with the vault walks the whole tree or index.

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

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {
    eprintln!("the git-sync benchmark uses a bash shim and Unix signals; skipped");
}

#[cfg(unix)]
#[path = "common/results.rs"]
mod results;

#[cfg(unix)]
mod unix {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::fs::{self, File};
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");
    const WARMUP: usize = 1;
    /// How often the bench looks for the reply on origin.
    const POLL: Duration = Duration::from_millis(20);
    /// Git calls further apart than this belong to different cycles.
    const CYCLE_GAP: f64 = 0.4;

    /// Variables a parent git (a hook running this) would leak into git calls.
    fn git_leaks() -> impl Iterator<Item = &'static str> {
        vaultrunner::git::REMOVED_ENV
            .into_iter()
            .chain(vaultrunner::git::IDENTITY_ENV)
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

    fn now_wall() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    }

    /// The real git: the first `git` on PATH.
    fn real_git() -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("git"))
                .find(|g| g.is_file())
        })
    }

    // ------------------------------------------------------------------
    // The three repositories

    struct Fx {
        /// `None` with `VR_BENCH_KEEP` (the folder stays).
        _dir: Option<tempfile::TempDir>,
        home: PathBuf,
        gitconfig: PathBuf,
        origin: PathBuf,
        phone: PathBuf,
        vault: PathBuf,
    }

    impl Fx {
        fn new(label: &str) -> Fx {
            let prefix = format!("vr-bench-git-{label}-");
            let mut b = tempfile::Builder::new();
            b.prefix(&prefix);
            let dir = match std::env::var_os("VR_BENCH_TMPDIR") {
                Some(t) => b.tempdir_in(t),
                None => b.tempdir(),
            }
            .unwrap();
            let home = dir.path().to_path_buf();
            let dir = if std::env::var_os("VR_BENCH_KEEP").is_some() {
                eprintln!("  keeping {}", dir.keep().display());
                None
            } else {
                Some(dir)
            };
            let gitconfig = home.join("gitconfig");
            fs::write(
                &gitconfig,
                "[user]\n\tname = phone\n\temail = phone@example.invalid\n\
                 [init]\n\tdefaultBranch = main\n\
                 [pull]\n\trebase = false\n\
                 [core]\n\tautocrlf = false\n",
            )
            .unwrap();
            Fx {
                origin: home.join("origin.git"),
                phone: home.join("phone"),
                vault: home.join("vault"),
                home,
                gitconfig,
                _dir: dir,
            }
        }

        fn git_env(&self) -> Vec<(&'static str, String)> {
            vec![
                ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
                ("GIT_CONFIG_GLOBAL", self.gitconfig.display().to_string()),
                ("HOME", self.home.display().to_string()),
            ]
        }

        fn git_cmd(&self, dir: &Path, args: &[&str]) -> Command {
            let mut cmd = Command::new("git");
            cmd.current_dir(dir)
                .args(args)
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_EDITOR", "true");
            for k in git_leaks() {
                cmd.env_remove(k);
            }
            for (k, v) in self.git_env() {
                cmd.env(k, v);
            }
            cmd
        }

        fn git(&self, dir: &Path, args: &[&str]) -> Output {
            self.git_cmd(dir, args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("spawn git {args:?}: {e}"))
        }

        #[track_caller]
        fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
            let out = self.git(dir, args);
            assert!(
                out.status.success(),
                "git {args:?} in {} failed ({}):\n{}{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }

        /// Is `rev` (`main:path`) in origin?
        fn origin_has(&self, rev: &str) -> bool {
            let o = self.origin.display().to_string();
            self.git(&self.home, &["--git-dir", &o, "cat-file", "-e", rev])
                .status
                .success()
        }

        fn origin_show(&self, rev: &str) -> Option<String> {
            let o = self.origin.display().to_string();
            let out = self.git(&self.home, &["--git-dir", &o, "show", rev]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        }

        /// origin (bare) and the server clone holding an echo agent and
        /// `.gitignore` (`.vaultrunner/`), pushed with an upstream; the
        /// phone cloned (full).
        fn small(&self) {
            self.git_ok(&self.home, &["init", "-q", "--bare", "origin.git"]);
            self.git_ok(&self.home, &["clone", "-q", "origin.git", "vault"]);
            fs::create_dir_all(self.vault.join("Agents")).unwrap();
            fs::write(self.vault.join("Agents/echo.md"), echo_agent()).unwrap();
            fs::write(self.vault.join(".gitignore"), ".vaultrunner/\n").unwrap();
            self.git_ok(&self.vault, &["add", "-A"]);
            self.git_ok(
                &self.vault,
                &[
                    "-c",
                    "user.name=setup",
                    "-c",
                    "user.email=setup@example.invalid",
                    "commit",
                    "-q",
                    "-m",
                    "setup",
                ],
            );
            self.git_ok(&self.vault, &["push", "-q", "-u", "origin", "main"]);
            self.git_ok(&self.home, &["clone", "-q", "origin.git", "phone"]);
        }

        /// origin made by `git fast-import` with `notes` notes in 100
        /// folders (plus the echo agent and `.gitignore`), the server
        /// clone (full checkout) and a sparse phone clone (top-level files
        /// and `Inbox/`). Returns the times of the steps.
        fn big(&self, notes: usize) -> Vec<(String, Duration)> {
            let mut times = Vec::new();
            self.git_ok(&self.home, &["init", "-q", "--bare", "origin.git"]);
            let t = Instant::now();
            let mut fi = self
                .git_cmd(&self.origin, &["fast-import", "--quiet"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            {
                let mut w = std::io::BufWriter::new(fi.stdin.take().unwrap());
                let msg = format!("a vault of {notes} notes");
                write!(
                    w,
                    "commit refs/heads/main\ncommitter setup <setup@example.invalid> 1764547200 +0000\ndata {}\n{msg}\n",
                    msg.len()
                )
                .unwrap();
                let inline = |w: &mut std::io::BufWriter<_>, path: &str, body: &str| {
                    write!(w, "M 100644 inline {path}\ndata {}\n{body}\n", body.len()).unwrap();
                };
                inline(&mut w, ".gitignore", ".vaultrunner/\n");
                inline(&mut w, "Agents/echo.md", &echo_agent());
                for i in 0..notes {
                    let (a, b) = (i % 10, (i / 10) % 10);
                    let path = format!("Notes/{a}/{b}/n{i:06}.md");
                    inline(&mut w, &path, &small_note(i));
                }
                w.flush().unwrap();
            }
            assert!(fi.wait().unwrap().success(), "git fast-import failed");
            times.push(("fast-import into origin".to_string(), t.elapsed()));
            let t = Instant::now();
            self.git_ok(&self.home, &["clone", "-q", "origin.git", "vault"]);
            times.push((
                "`git clone` of the server (checks out every note)".to_string(),
                t.elapsed(),
            ));
            let t = Instant::now();
            self.git_ok(
                &self.home,
                &["clone", "-q", "--sparse", "origin.git", "phone"],
            );
            self.git_ok(&self.phone, &["sparse-checkout", "add", "Inbox"]);
            times.push(("sparse clone of the phone".to_string(), t.elapsed()));
            times
        }

        /// The phone: pull, write `paths` (each an inbound note), one
        /// commit, push. Returns when the push returned, and how long
        /// the push took.
        fn phone_send(&self, paths: &[String]) -> (Instant, f64, Duration) {
            self.git_ok(&self.phone, &["pull", "-q", "--ff-only"]);
            for p in paths {
                let full = self.phone.join(format!("{p}.md"));
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, inbound(p)).unwrap();
                self.git_ok(&self.phone, &["add", &format!("{p}.md")]);
            }
            self.git_ok(&self.phone, &["commit", "-q", "-m", "phone: a message"]);
            let t = Instant::now();
            self.git_ok(&self.phone, &["push", "-q", "origin", "main"]);
            (Instant::now(), now_wall(), t.elapsed())
        }
    }

    fn echo_agent() -> String {
        "---\ntags:\n  - agent/definition\nname: echo\nbackend: echo\nmode: single-threaded\n---\nYou are echo, a benchmark agent.\n".to_string()
    }

    fn inbound(path: &str) -> String {
        format!(
            "---\ntags:\n  - agent/message\n  - agent/message/inbound\nagent: echo\nsender: phone\n---\nbenchmark message {path}\n"
        )
    }

    /// A small ordinary note (~250–400 bytes), front-matter on 30 %.
    fn small_note(i: usize) -> String {
        let mut s = String::new();
        if i % 10 < 3 {
            let _ = write!(s, "---\ntitle: Note {i}\ntags:\n  - t{}\n---\n", i % 37);
        }
        let _ = write!(
            s,
            "# Note {i}\n\nSome text of note {i}, linking [[n{:06}]] and #topic{}.\n\n- a point\n- another point about {}\n\nA last paragraph so the note is not tiny; it says nothing much.\n",
            (i * 7919) % 100_000,
            i % 13,
            i % 101
        );
        s
    }

    // ------------------------------------------------------------------
    // vaultrunner

    /// A running `serve --git-sync`; stopped (TERM, then KILL) on drop.
    struct Serve {
        child: Child,
        err_path: PathBuf,
        vault: PathBuf,
    }

    impl Serve {
        fn start(fx: &Fx, extra: &[&str], shim: Option<(&Path, &Path)>) -> Serve {
            let err_path = fx.home.join(format!(
                "serve-{}.log",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
            ));
            let v = fx.vault.display().to_string();
            let mut args = vec!["serve", &v, "--listen", "127.0.0.1:0", "--git-sync"];
            args.extend_from_slice(extra);
            let mut cmd = Command::new(BIN);
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&err_path).unwrap())
                .env("VAULTRUNNER_LOG", "info")
                .env_remove("VAULTRUNNER_VAULT")
                .env_remove("VAULTRUNNER_AGENT")
                .env_remove("VAULTRUNNER_DELEGATION_DEPTH")
                .env_remove("VAULTRUNNER_TOKEN")
                .env_remove("VAULTRUNNER_GIT_WEBHOOK_SECRET")
                .env_remove("VAULTRUNNER_STATE_DIR");
            for k in git_leaks() {
                cmd.env_remove(k);
            }
            for (k, val) in fx.git_env() {
                cmd.env(k, val);
            }
            if let Some((dir, log)) = shim {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut all = vec![dir.to_path_buf()];
                all.extend(std::env::split_paths(&path));
                cmd.env("PATH", std::env::join_paths(all).unwrap())
                    .env("VR_GIT_SHIM_LOG", log);
            }
            let child = cmd.spawn().expect("cannot start vaultrunner serve");
            let s = Serve {
                child,
                err_path,
                vault: fx.vault.clone(),
            };
            let t0 = Instant::now();
            while !s.log().contains("serving") {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "serve did not start:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            s
        }

        fn log(&self) -> String {
            fs::read_to_string(&self.err_path).unwrap_or_default()
        }

        /// `ADDR` of its HTTP API (`<vault>/.vaultrunner/http.addr`).
        fn addr(&self) -> String {
            let p = self.vault.join(".vaultrunner/http.addr");
            let t0 = Instant::now();
            loop {
                let a = fs::read_to_string(&p).unwrap_or_default();
                if !a.trim().is_empty() {
                    return a.trim().to_string();
                }
                assert!(t0.elapsed() < Duration::from_secs(20), "no {}", p.display());
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn pid(&self) -> u32 {
            self.child.id()
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

    /// `POST /hooks/git` (open: no token, no secret); the status code.
    fn hook(addr: &str) -> u16 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /hooks/git HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime of a live process, from /proc/<pid>/stat.
    fn proc_cpu(pid: u32) -> Duration {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
            return Duration::ZERO;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    /// serve's log as (unix seconds, message) per line.
    fn log_events(text: &str) -> Vec<(f64, String)> {
        text.lines()
            .filter_map(|l| {
                let (ts, rest) = l.split_once(' ')?;
                let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
                let secs = t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9;
                let msg = rest.trim_start();
                let msg = msg.split_once(' ').map_or(msg, |(_, m)| m).trim_start();
                Some((secs, msg.to_string()))
            })
            .collect()
    }

    /// The first event at or after `from` whose message has `needle`.
    fn first_after(ev: &[(f64, String)], from: f64, needle: &str) -> Option<f64> {
        ev.iter()
            .find(|(t, m)| *t >= from && m.contains(needle))
            .map(|(t, _)| *t)
    }

    // ------------------------------------------------------------------
    // Results

    use super::results::Results;

    /// Nearest rank, as the other benches.
    fn pct(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }

    fn ms(secs: f64) -> String {
        if secs.is_nan() {
            return "–".into();
        }
        format!("{:.0} ms", secs * 1e3)
    }

    fn p50_p99(v: Vec<f64>) -> String {
        let v = sorted(v);
        format!(
            "{} / {} (min {}, n = {})",
            ms(pct(&v, 50.0)),
            ms(pct(&v, 99.0)),
            ms(v.first().copied().unwrap_or(f64::NAN)),
            v.len()
        )
    }

    fn median(v: Vec<f64>) -> f64 {
        pct(&sorted(v), 50.0)
    }

    // ------------------------------------------------------------------
    // Latency: phone push → reply on origin

    struct Probe {
        e2e: f64,
        push: f64,
        /// When the phone's push returned (unix seconds), and the message.
        wall0: f64,
        stem: String,
        /// From serve's log, seconds after the push returned.
        pulled: Option<f64>,
        turned: Option<f64>,
        committed: Option<f64>,
        pushed: Option<f64>,
    }

    fn latency_run(res: &mut Results, n: usize, webhook: bool) {
        let sc = if webhook {
            "push → reply, webhook (`--git-pull-secs 3600` + `POST /hooks/git`)"
        } else {
            "push → reply, polling only (`--git-pull-secs 1`)"
        };
        let fx = Fx::new(if webhook { "webhook" } else { "poll" });
        fx.small();
        let settle = std::env::var("VR_BENCH_GIT_SETTLE_MS").ok();
        let mut args = vec!["--git-pull-secs", if webhook { "3600" } else { "1" }];
        if let Some(s) = &settle {
            args.extend(["--settle-ms", s.as_str()]);
        }
        let serve = Serve::start(&fx, &args, None);
        let addr = serve.addr();
        eprintln!(
            "[{sc}] serve {}; {n} probes + {WARMUP} warm-up",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(1500));
        let mut rng: u64 = 0x5eed_1234_abcd_0001;
        let mut probes = Vec::new();
        let mut cpu0 = proc_cpu(serve.pid());
        for i in 0..WARMUP + n {
            if i == WARMUP {
                cpu0 = proc_cpu(serve.pid());
            }
            let stem = format!("Inbox/m{i:05}");
            if !webhook {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let frac = (rng >> 11) as f64 / (1u64 << 53) as f64;
                std::thread::sleep(Duration::from_secs_f64(frac));
            }
            let (t0, wall0, push) = fx.phone_send(std::slice::from_ref(&stem));
            if webhook {
                let st = hook(&addr);
                assert_eq!(st, 202, "POST /hooks/git answered {st}");
            }
            let rev = format!("main:{stem}.reply.md");
            loop {
                if fx.origin_has(&rev) {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "no reply to {stem} on origin in 60 s; serve log:\n{}",
                    serve.log()
                );
                std::thread::sleep(POLL);
            }
            let e2e = t0.elapsed().as_secs_f64();
            // Outside the timing: the stamp is on origin too.
            let t = Instant::now();
            while !fx
                .origin_show(&format!("main:{stem}.md"))
                .is_some_and(|s| s.contains("status: handled"))
            {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "{stem} not stamped on origin"
                );
                std::thread::sleep(POLL);
            }
            if i >= WARMUP {
                probes.push(Probe {
                    e2e,
                    push: push.as_secs_f64(),
                    wall0,
                    stem,
                    pulled: None,
                    turned: None,
                    committed: None,
                    pushed: None,
                });
            }
        }
        let cpu = proc_cpu(serve.pid()) - cpu0;
        // serve's log lines come a little after what they report reaches
        // origin: read once at the end, each probe within its window.
        std::thread::sleep(Duration::from_millis(300));
        let log = serve.log();
        drop(serve);
        let ev = log_events(&log);
        let walls: Vec<f64> = probes.iter().map(|p| p.wall0).collect();
        for (i, p) in probes.iter_mut().enumerate() {
            let end = walls.get(i + 1).copied().unwrap_or(f64::INFINITY);
            let w: Vec<(f64, String)> = ev
                .iter()
                .filter(|(t, _)| *t >= p.wall0 - 0.001 && *t < end)
                .cloned()
                .collect();
            let turned = first_after(&w, 0.0, &format!("{} → ", p.stem));
            let pulled =
                first_after(&w, 0.0, "git: pulled").filter(|x| turned.is_none_or(|t| *x <= t));
            let committed = turned.and_then(|t| first_after(&w, t, "git: committed"));
            let pushed = committed.and_then(|c| first_after(&w, c, "git: pushed"));
            let rel = |x: Option<f64>| x.map(|x| x - p.wall0);
            p.pulled = rel(pulled);
            p.turned = rel(turned);
            p.committed = rel(committed);
            p.pushed = rel(pushed);
        }
        let n = probes.len();
        res.info(
            sc,
            "**push returned → reply on origin**, p50 / p99",
            p50_p99(probes.iter().map(|p| p.e2e).collect()),
        );
        let stage = |f: &dyn Fn(&Probe) -> Option<f64>| {
            let v: Vec<f64> = probes.iter().filter_map(f).collect();
            let k = v.len();
            let m = median(v);
            if k == n {
                ms(m)
            } else {
                format!("{} ({k} of {n})", ms(m))
            }
        };
        res.info(
            sc,
            "stages, medians from the push returning: `git: pulled` · turn done (`echo: … → ok`) · `git: committed` · `git: pushed`",
            format!(
                "{} · {} · {} · {}",
                stage(&|p| p.pulled),
                stage(&|p| p.turned),
                stage(&|p| p.committed),
                stage(&|p| p.pushed),
            ),
        );
        res.info(
            sc,
            "stage lengths, medians: push → pulled · pulled → turn done · turn done → committed · committed → pushed · pushed → seen by the bench",
            format!(
                "{} · {} · {} · {} · {}",
                stage(&|p| p.pulled),
                stage(&|p| Some(p.turned? - p.pulled?)),
                stage(&|p| Some(p.committed? - p.turned?)),
                stage(&|p| Some(p.pushed? - p.committed?)),
                stage(&|p| Some(p.e2e - p.pushed?)),
            ),
        );
        res.info(
            sc,
            "the phone's own `git push`, median",
            ms(median(probes.iter().map(|p| p.push).collect())),
        );
        res.info(
            sc,
            "serve's CPU per message (user + sys, /proc; git children not included)",
            format!("{:.1} ms", cpu.as_secs_f64() * 1e3 / n as f64),
        );
        let paused = log.lines().filter(|l| l.contains("paused")).count();
        let rejected = log.lines().filter(|l| l.contains("push rejected")).count();
        res.info(
            sc,
            "log: pauses · push rejections · settle window",
            format!(
                "{paused} · {rejected} · {}",
                settle.map_or("default".to_string(), |s| format!("--settle-ms {s}"))
            ),
        );
    }

    // ------------------------------------------------------------------
    // Git work per cycle (with the shim)

    /// One git call the shim saw.
    #[derive(Debug, Clone)]
    struct Call {
        start: f64,
        end: f64,
        /// `GIT_INDEX_FILE` was set (vaultrunner's private index).
        private: bool,
        /// The arguments after vaultrunner's fixed `-c` options.
        args: Vec<String>,
    }

    impl Call {
        fn dur(&self) -> f64 {
            self.end - self.start
        }

        /// What the call is, for the table: the subcommand and the flags
        /// that tell its uses apart.
        fn kind(&self) -> String {
            let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
            let sub_at = a
                .iter()
                .position(|x| !x.starts_with('-') && !x.contains('='))
                .unwrap_or(0);
            let sub = a.get(sub_at).copied().unwrap_or("?");
            let rest = a.get(sub_at + 1..).unwrap_or_default();
            let flags: Vec<&str> = rest
                .iter()
                .copied()
                .take_while(|x| *x != "--")
                .filter(|x| x.starts_with('-') && *x != "-z" && *x != "-q")
                .collect();
            let mut k = sub.to_string();
            match sub {
                "read-tree" if !flags.is_empty() => k = format!("{sub} {}", flags.join(" ")),
                "read-tree" => k.push_str(" <commit>"),
                "update-index" | "rev-parse" | "merge-base" | "ls-files" | "cat-file"
                | "symbolic-ref" | "hash-object"
                    if !flags.is_empty() =>
                {
                    k = format!("{sub} {}", flags.join(" "));
                }
                _ => {}
            }
            if self.private {
                k.push_str(" [private index]");
            }
            k
        }
    }

    const SHIM: &str = r#"#!/bin/bash
# vaultrunner bench: times each git call (EPOCHREALTIME: no fork).
s=$EPOCHREALTIME
"$VR_GIT_SHIM_REAL" "$@"
rc=$?
e=$EPOCHREALTIME
printf -v line '%s %s %s %s' "$s" "$e" "$rc" "${GIT_INDEX_FILE:+private}"
for a in "$@"; do a=${a//$'\n'/ }; a=${a//$'\t'/ }; line+=$'\t'"$a"; done
printf '%s\n' "$line" >> "$VR_GIT_SHIM_LOG"
exit $rc
"#;

    fn write_shim(dir: &Path, real: &Path) -> PathBuf {
        let bin = dir.join("shim-bin");
        fs::create_dir_all(&bin).unwrap();
        let text = SHIM.replace("\"$VR_GIT_SHIM_REAL\"", &format!("'{}'", real.display()));
        let p = bin.join("git");
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// The fixed `-c` options vaultrunner puts first (src/git.rs).
    const CONFIG_ARGS: usize = 8;

    fn read_calls(log: &Path) -> Vec<Call> {
        let text = fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let head = f.next()?;
                let mut h = head.split(' ');
                let start: f64 = h.next()?.parse().ok()?;
                let end: f64 = h.next()?.parse().ok()?;
                let _rc = h.next()?;
                let private = h.next() == Some("private");
                let mut args: Vec<String> = f.map(str::to_string).collect();
                if args.first().map(String::as_str) == Some("-c")
                    && args.get(1).is_some_and(|a| a.starts_with("core.quotepath"))
                {
                    args.drain(..CONFIG_ARGS.min(args.len()));
                }
                Some(Call {
                    start,
                    end,
                    private,
                    args,
                })
            })
            .collect()
    }

    /// Calls split where the quiet between two exceeds [`CYCLE_GAP`].
    fn cycles(calls: &[Call]) -> Vec<Vec<Call>> {
        let mut out: Vec<Vec<Call>> = Vec::new();
        let mut last_end = f64::NEG_INFINITY;
        for c in calls {
            if c.start - last_end > CYCLE_GAP || out.is_empty() {
                out.push(Vec::new());
            }
            last_end = last_end.max(c.end);
            out.last_mut().unwrap().push(c.clone());
        }
        out
    }

    fn has(cy: &[Call], kind: &str) -> bool {
        cy.iter().any(|c| c.kind() == kind)
    }

    /// What one size's run measured.
    struct BigRun {
        notes: usize,
        /// (kind of cycle, cycles' spans, Σ git, calls) and per-command
        /// medians of the time per cycle.
        pull: Vec<Vec<Call>>,
        commit: Vec<Vec<Call>>,
        startup: Option<Vec<Call>>,
        shim_overhead: f64,
        /// From serve's log: last turn done → committed, → pushed; hook
        /// → pulled.
        turn_to_commit: Vec<f64>,
        turn_to_push: Vec<f64>,
        hook_to_pull: Vec<f64>,
        setup: Vec<(String, Duration)>,
        startup_secs: f64,
    }

    /// bash's own start-up per call (the shim's cost beyond git): `shim
    /// --version` vs `git --version`, 30 each.
    fn shim_overhead(shim: &Path, real: &Path, log: &Path) -> f64 {
        let time = |prog: &Path| {
            let t = Instant::now();
            for _ in 0..30 {
                let out = Command::new(prog)
                    .arg("--version")
                    .env("VR_GIT_SHIM_LOG", log)
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(out.success());
            }
            t.elapsed().as_secs_f64() / 30.0
        };
        let (a, b) = (time(&shim.join("git")), time(real));
        let _ = fs::remove_file(log);
        (a - b).max(0.0)
    }

    fn big_run(notes: usize, n_cycles: usize, per_cycle: usize) -> BigRun {
        let label = format!("big{notes}");
        let fx = Fx::new(&label);
        eprintln!(
            "[git work per cycle, {notes} notes] setting up in {}",
            fx.home.display()
        );
        let setup = fx.big(notes);
        for (what, d) in &setup {
            eprintln!("  {what}: {:.1} s", d.as_secs_f64());
        }
        let real = real_git().unwrap();
        let shim_dir = write_shim(&fx.home, &real);
        let shim_log = fx.home.join("git-calls.log");
        let overhead = shim_overhead(&shim_dir, &real, &shim_log);
        let t = Instant::now();
        let serve = Serve::start(
            &fx,
            &["--git-pull-secs", "3600"],
            Some((&shim_dir, &shim_log)),
        );
        let startup_secs = t.elapsed().as_secs_f64();
        let addr = serve.addr();
        // The start-up cycle, then quiet.
        wait_quiet(
            &shim_log,
            Duration::from_millis(1500),
            Duration::from_secs(120),
        );
        let startup = Some(read_calls(&shim_log));
        let startup_end = now_wall();
        let mut k = 0usize;
        let mut hooks_at = Vec::new();
        for c in 0..n_cycles {
            let paths: Vec<String> = (0..per_cycle)
                .map(|_| {
                    k += 1;
                    format!("Inbox/c{c:02}m{k:04}")
                })
                .collect();
            let (t0, wall0, _) = fx.phone_send(&paths);
            hooks_at.push(wall0);
            assert_eq!(hook(&addr), 202);
            for p in &paths {
                let rev = format!("main:{p}.reply.md");
                while !fx.origin_has(&rev) {
                    assert!(
                        t0.elapsed() < Duration::from_secs(90),
                        "no reply to {p} on origin; serve log:\n{}",
                        serve.log()
                    );
                    std::thread::sleep(POLL);
                }
            }
            wait_quiet(
                &shim_log,
                Duration::from_millis(1200),
                Duration::from_secs(60),
            );
            eprintln!(
                "  cycle {}: {per_cycle} messages answered and on origin after {:.2} s",
                c + 1,
                t0.elapsed().as_secs_f64()
            );
        }
        let log = serve.log();
        drop(serve);
        let calls: Vec<Call> = read_calls(&shim_log)
            .into_iter()
            .filter(|c| c.start > startup_end)
            .collect();
        let all = cycles(&calls);
        let pull: Vec<Vec<Call>> = all
            .iter()
            // git's own checkout, or vaultrunner's of the changed paths
            // (which asks `check-attr` first); never a commit.
            .filter(|cy| {
                (has(cy, "read-tree -m -u") || has(cy, "check-attr")) && !has(cy, "commit-tree")
            })
            .cloned()
            .collect();
        let commit: Vec<Vec<Call>> = all
            .iter()
            .filter(|cy| has(cy, "commit-tree"))
            .cloned()
            .collect();
        let ev = log_events(&log);
        let (mut turn_to_commit, mut turn_to_push, mut hook_to_pull) =
            (Vec::new(), Vec::new(), Vec::new());
        for (i, h) in hooks_at.iter().enumerate() {
            let next = hooks_at.get(i + 1).copied().unwrap_or(f64::INFINITY);
            let within: Vec<&(f64, String)> =
                ev.iter().filter(|(t, _)| *t >= *h && *t < next).collect();
            let last_turn = within
                .iter()
                .filter(|(_, m)| m.contains("echo: Inbox/") && m.contains(" → "))
                .map(|(t, _)| *t)
                .fold(f64::NAN, f64::max);
            let pulled = within
                .iter()
                .find(|(_, m)| m.contains("git: pulled"))
                .map(|(t, _)| *t);
            if let Some(p) = pulled {
                hook_to_pull.push(p - h);
            }
            if !last_turn.is_nan() {
                let c = within
                    .iter()
                    .find(|(t, m)| *t >= last_turn && m.contains("git: committed"))
                    .map(|(t, _)| *t);
                let p = within
                    .iter()
                    .find(|(t, m)| *t >= last_turn && m.contains("git: pushed"))
                    .map(|(t, _)| *t);
                if let Some(c) = c {
                    turn_to_commit.push(c - last_turn);
                }
                if let Some(p) = p {
                    turn_to_push.push(p - last_turn);
                }
            }
        }
        BigRun {
            notes,
            pull,
            commit,
            startup,
            shim_overhead: overhead,
            turn_to_commit,
            turn_to_push,
            hook_to_pull,
            setup,
            startup_secs,
        }
    }

    /// Waits until the shim's log has not grown for `quiet`.
    fn wait_quiet(log: &Path, quiet: Duration, limit: Duration) {
        let t0 = Instant::now();
        let mut len = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        let mut since = Instant::now();
        while since.elapsed() < quiet {
            assert!(t0.elapsed() < limit, "git never went quiet");
            std::thread::sleep(Duration::from_millis(50));
            let l = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
            if l != len {
                len = l;
                since = Instant::now();
            }
        }
    }

    fn span(cy: &[Call]) -> f64 {
        let s = cy.iter().map(|c| c.start).fold(f64::INFINITY, f64::min);
        let e = cy.iter().map(|c| c.end).fold(f64::NEG_INFINITY, f64::max);
        e - s
    }

    fn git_sum(cy: &[Call]) -> f64 {
        cy.iter().map(Call::dur).sum()
    }

    /// Median per cycle of each kind of command's summed time, in the
    /// order of the first cycle, with the call count.
    fn per_command(cys: &[Vec<Call>]) -> Vec<(String, f64, usize)> {
        let mut order: Vec<String> = Vec::new();
        let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for cy in cys {
            let mut this: BTreeMap<String, f64> = BTreeMap::new();
            for c in cy {
                let k = c.kind();
                if !order.contains(&k) {
                    order.push(k.clone());
                }
                *this.entry(k.clone()).or_insert(0.0) += c.dur();
                *counts.entry(k).or_insert(0) += 1;
            }
            for k in &order {
                per.entry(k.clone())
                    .or_default()
                    .push(this.get(k).copied().unwrap_or(0.0));
            }
        }
        order
            .into_iter()
            .map(|k| {
                let m = median(per.remove(&k).unwrap_or_default());
                let n = counts.get(&k).copied().unwrap_or(0);
                (k, m, n)
            })
            .collect()
    }

    fn report_big(res: &mut Results, r: &BigRun, base: Option<&BigRun>, per_cycle: usize) {
        let sc = format!("git per cycle, {} notes", r.notes);
        for (what, d) in &r.setup {
            res.info(
                &sc,
                format!("setup: {what}"),
                format!("{:.1} s", d.as_secs_f64()),
            );
        }
        res.info(
            &sc,
            "serve start → `serving` (start-up scan)",
            format!("{:.2} s", r.startup_secs),
        );
        if let Some(s) = &r.startup {
            res.info(
                &sc,
                "start-up (open checks + the first cycle): first call → last · Σ git · calls",
                format!("{} · {} · {}", ms(span(s)), ms(git_sum(s)), s.len()),
            );
        }
        res.info(
            &sc,
            "the shim's own start-up per git call (bash; inside a span, not in Σ git)",
            format!("{:.1} ms", r.shim_overhead * 1e3),
        );
        for (name, cys) in [
            (
                "pull cycle (after the hook: fetch, take in the phone's commit)",
                &r.pull,
            ),
            (
                "commit + push cycle (the turns' writes: commit, fetch, push)",
                &r.commit,
            ),
        ] {
            if cys.is_empty() {
                res.info(&sc, name, "none seen".into());
                continue;
            }
            let spans: Vec<f64> = cys.iter().map(|c| span(c)).collect();
            let sums: Vec<f64> = cys.iter().map(|c| git_sum(c)).collect();
            let calls = median(cys.iter().map(|c| c.len() as f64).collect());
            let sp = sorted(spans.clone());
            let own = median(
                cys.iter()
                    .map(|c| span(c) - c.len() as f64 * r.shim_overhead)
                    .collect(),
            );
            res.info(
                &sc,
                format!("{name}: span, median (min–max) · minus the shim's start-ups"),
                format!(
                    "{} ({}–{}) · {}",
                    ms(median(spans)),
                    ms(sp[0]),
                    ms(sp[sp.len() - 1]),
                    ms(own)
                ),
            );
            // vaultrunner's own time: every git call it makes, but the
            // transport to the remote (`fetch`, `push`: the network's and
            // the remote's time, the same whatever the vault's size).
            let local = median(
                cys.iter()
                    .map(|c| {
                        c.iter()
                            .filter(|x| !matches!(x.kind().as_str(), "fetch" | "push"))
                            .map(|x| x.end - x.start)
                            .sum::<f64>()
                    })
                    .collect(),
            );
            res.check(
                &sc,
                format!(
                    "**{name}: vaultrunner's own git time** (Σ git without `fetch`/`push`), median"
                ),
                format!("**{}**", ms(local)),
                "< 200 ms",
                local < 0.2,
            );
            res.info(
                &sc,
                format!("{name}: Σ git, median · calls"),
                format!("{} · {calls:.0}", ms(median(sums))),
            );
            let base_cmds: BTreeMap<String, f64> = base
                .map(|b| {
                    let bc = if name.starts_with("pull") {
                        &b.pull
                    } else {
                        &b.commit
                    };
                    per_command(bc)
                        .into_iter()
                        .map(|(k, m, _)| (k, m))
                        .collect()
                })
                .unwrap_or_default();
            let mut cmds = per_command(cys);
            cmds.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
            let text = cmds
                .iter()
                .map(|(k, m, n)| {
                    let per = *n as f64 / cys.len() as f64;
                    let b = base_cmds
                        .get(k)
                        .map(|b| format!(", {} at {} notes", ms(*b), base.map_or(0, |b| b.notes)))
                        .unwrap_or_default();
                    if per > 1.05 {
                        format!("`{k}` ×{per:.0} {}{b}", ms(*m))
                    } else {
                        format!("`{k}` {}{b}", ms(*m))
                    }
                })
                .collect::<Vec<_>>()
                .join(" · ");
            res.info(&sc, format!("{name}: per command, median per cycle"), text);
        }
        res.info(
            &sc,
            format!("log: `git: pulled` after the hook (incl. the 1 s debounce), median ({per_cycle} messages a cycle)"),
            ms(median(r.hook_to_pull.clone())),
        );
        res.info(
            &sc,
            "log: last turn done → `git: committed` · → `git: pushed` (incl. the 1 s batch window), medians",
            format!(
                "{} · {}",
                ms(median(r.turn_to_commit.clone())),
                ms(median(r.turn_to_push.clone()))
            ),
        );
    }

    fn load() -> String {
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn main() {
        let wanted: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let want = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
        let Some(real) = real_git() else {
            eprintln!("git-sync bench skipped: no git on PATH");
            return;
        };
        let version = Command::new(&real)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        eprintln!(
            "vaultrunner git-sync benchmark — binary {BIN}, {version} ({}), {cpus} CPUs, load {}",
            real.display(),
            load()
        );
        let n = env_num("VR_BENCH_GIT_N", 30usize).max(1);
        let notes = env_num("VR_BENCH_GIT_NOTES", 100_000usize).max(1);
        let base_notes = env_num("VR_BENCH_GIT_BASE_NOTES", 1000usize);
        let n_cycles = env_num("VR_BENCH_GIT_CYCLES", 5usize).max(1);
        let per_cycle = env_num("VR_BENCH_GIT_PER_CYCLE", 3usize).max(1);
        let mut res = Results::echoing();
        let t0 = Instant::now();
        if want("webhook") {
            latency_run(&mut res, n, true);
        }
        if want("poll") {
            latency_run(&mut res, n, false);
        }
        if want("big") {
            let base = (base_notes > 0).then(|| big_run(base_notes, n_cycles.min(2), per_cycle));
            let big = big_run(notes, n_cycles, per_cycle);
            if let Some(b) = &base {
                report_big(&mut res, b, None, per_cycle);
            }
            report_big(&mut res, &big, base.as_ref(), per_cycle);
        }
        println!(
            "\n## Git sync results ({version}, {cpus} CPUs, load at the end {}, {:.0} s)\n",
            load(),
            t0.elapsed().as_secs_f64()
        );
        println!("{}", res.table());
    }
}
