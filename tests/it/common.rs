//! Shared helpers for the end-to-end tests: a temp vault, note writing and
//! reading (with a front-matter parser of our own, independent of the
//! crate's), and running the real `vaultrunner` binary.
//!
//! Each test binary uses only part of this module.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_yaml::{Mapping, Value};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");

/// Environment variables that would leak into the binary under test: a
/// surrounding vaultrunner turn, server settings, fake scenarios, API keys,
/// or proxies (the fake servers are on loopback and must be reached
/// directly). One list for every test file.
pub const SCRUB_ENV: &[&str] = &[
    "VAULTRUNNER_VAULT",
    "VAULTRUNNER_AGENT",
    "VAULTRUNNER_THREAD",
    "VAULTRUNNER_SESSION",
    "VAULTRUNNER_MESSAGE",
    "VAULTRUNNER_DELEGATION_DEPTH",
    "VAULTRUNNER_SYSTEM_PROMPT",
    "VAULTRUNNER_BIN",
    "VAULTRUNNER_TOKEN",
    "VAULTRUNNER_WEBHOOK_SECRET",
    "CLAUDECODE",
    "FAKE_SCENARIO",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
];

/// A vault in a temp directory: `<tmp>/vault`, so that `<tmp>` (the
/// `parent`) can be watched for anything written outside the vault.
pub struct TestVault {
    tmp: tempfile::TempDir,
    /// The temp directory holding the vault (canonical).
    pub parent: PathBuf,
    /// The vault root (canonical).
    pub root: PathBuf,
}

impl Default for TestVault {
    fn default() -> Self {
        Self::new()
    }
}

impl TestVault {
    /// An empty vault.
    pub fn new() -> TestVault {
        let tmp = tempfile::tempdir().expect("tempdir");
        let parent = std::fs::canonicalize(tmp.path()).expect("canonicalize tempdir");
        let root = parent.join("vault");
        std::fs::create_dir(&root).expect("create vault dir");
        TestVault { tmp, parent, root }
    }

    /// The root as a `&str` (for command lines).
    pub fn root_str(&self) -> &str {
        self.root.to_str().expect("utf-8 temp path")
    }

    /// Absolute path of a vault-relative file (`rel` includes `.md`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes a file (creating directories).
    pub fn write(&self, rel: &str, text: &str) {
        self.write_bytes(rel, text.as_bytes());
    }

    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Sets a file's modification time to `secs` after the epoch.
    pub fn set_mtime(&self, rel: &str, secs: u64) {
        let f = std::fs::File::options()
            .write(true)
            .open(self.path(rel))
            .unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// A file's text.
    pub fn read(&self, rel: &str) -> String {
        let p = self.path(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// A note's front-matter as a YAML mapping (empty without front-matter).
    pub fn fm(&self, rel: &str) -> Mapping {
        front_matter(&self.read(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n---\n{}", self.read(rel)))
    }

    /// A note's body (everything after the closing fence).
    pub fn body(&self, rel: &str) -> String {
        split_note(&self.read(rel)).1.to_string()
    }

    /// A front-matter key as text (`None` when absent or not a scalar).
    pub fn get(&self, rel: &str, key: &str) -> Option<String> {
        scalar(&self.fm(rel), key)
    }

    /// Every file under the vault (relative, `/`-separated) with its bytes,
    /// leaving out vaultrunner's own `.vaultrunner/` state directory.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for (rel, abs) in walk(&self.root) {
            if rel.starts_with(".vaultrunner/") {
                continue;
            }
            out.insert(rel, std::fs::read(abs).unwrap());
        }
        out
    }

    /// Like [`snapshot`](Self::snapshot), with each file's mtime too, so a
    /// rewrite with identical bytes is also caught.
    pub fn snapshot_with_mtimes(&self) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
        let mut out = BTreeMap::new();
        for (rel, abs) in walk(&self.root) {
            if rel.starts_with(".vaultrunner/") {
                continue;
            }
            let m = std::fs::metadata(&abs).unwrap().modified().unwrap();
            out.insert(rel, (std::fs::read(abs).unwrap(), m));
        }
        out
    }

    /// Every file under the vault (relative paths, sorted), without
    /// `.vaultrunner/`.
    pub fn files(&self) -> Vec<String> {
        self.snapshot().into_keys().collect()
    }

    /// The `.md` files directly or deeply under `dir` (relative to the vault).
    pub fn notes_under(&self, dir: &str) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| f.starts_with(&format!("{dir}/")) && f.ends_with(".md"))
            .collect()
    }

    /// Every path under the temp parent that is not inside the vault.
    pub fn outside_vault(&self) -> Vec<String> {
        walk_all(&self.parent)
            .into_iter()
            .filter(|r| r != "vault" && !r.starts_with("vault/"))
            .collect()
    }

    /// Writes `Agents/<name>.md`: a definition with extra front-matter lines
    /// (`extra` is raw YAML, each line ending in `\n`) and a body.
    pub fn agent(&self, name: &str, extra: &str, body: &str) {
        self.write(
            &format!("Agents/{name}.md"),
            &format!("---\ntags:\n  - agent/definition\nname: {name}\n{extra}---\n{body}"),
        );
    }

    /// A `command` agent running `script` with `sh -c`.
    pub fn command_agent(&self, name: &str, extra: &str, script: &str) {
        let mut yaml = String::from("backend: command\ncommand:\n  - sh\n  - -c\n  - |\n");
        for line in script.lines() {
            yaml.push_str("    ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        yaml.push_str(extra);
        self.agent(name, &yaml, "");
    }

    /// Writes an inbound message note at `rel` (with `.md`).
    pub fn message(&self, rel: &str, agent: &str, extra: &str, body: &str) {
        self.write(
            rel,
            &format!(
                "---\ntags:\n  - agent/message\n  - agent/message/inbound\nagent: {agent}\n{extra}---\n{body}"
            ),
        );
    }

    /// Runs the binary with `args` (no vault argument added).
    pub fn vr(&self, args: &[&str]) -> Run {
        vr(args)
    }

    /// `vaultrunner process <vault> [extra…]`, asserting success.
    pub fn process(&self, extra: &[&str]) -> Out {
        let mut args = vec!["process", self.root_str()];
        args.extend_from_slice(extra);
        vr(&args).run().success()
    }

    /// `vaultrunner check <vault>` (exit status not asserted).
    pub fn check(&self) -> Out {
        vr(&["check", self.root_str()]).run()
    }

    /// Starts `vaultrunner serve <vault> --settle-ms 0 [extra…]` and waits
    /// until it has started (holds the lock, scanned the vault).
    pub fn serve(&self, extra: &[&str]) -> Serve {
        let log = self
            .parent
            .join(format!("serve-{}.log", std::process::id()));
        // No HTTP: tests run in parallel and must not fight over a port.
        let mut args = vec![
            "serve",
            self.root_str(),
            "--settle-ms",
            "0",
            "--listen",
            "none",
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        scrub(&mut cmd);
        cmd.env("VAULTRUNNER_LOG", "info");
        let child = cmd.spawn().expect("spawn serve");
        let mut serve = Serve { child, log };
        // Ready once it logged `serving …` (after taking the lock and the
        // start-up scan). Polling `status` instead would race: `status`
        // probes the lock by taking it for a moment.
        wait_until(Duration::from_secs(20), "serve to start", || {
            if let Ok(Some(st)) = serve.child.try_wait() {
                panic!("serve exited early ({st}): {}", serve.log_text());
            }
            serve.log_text().contains("serving ")
        });
        serve
    }
}

/// Walks a directory: (relative `/`-separated path, absolute path) of every
/// file, dot folders included, sorted. Entries that vanish during the walk
/// (a running vaultrunner's temp files) are skipped.
pub fn walk(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for ent in rd.flatten() {
            let p = ent.path();
            let Ok(ft) = ent.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, p));
            }
        }
    }
    out.sort();
    out
}

/// Every path (files and directories) under `root`, relative and sorted.
fn walk_all(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = ent.path();
            out.push(
                p.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
            if ent.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Splits a note into (front-matter YAML, body). A note whose first line is
/// not `---`, or whose block never closes, has no front-matter.
pub fn split_note(text: &str) -> (Option<&str>, &str) {
    let Some(first_end) = text.find('\n') else {
        return (None, text);
    };
    if text[..first_end].trim_end_matches('\r') != "---" {
        return (None, text);
    }
    let start = first_end + 1;
    let mut pos = start;
    while pos < text.len() {
        let end = text[pos..].find('\n').map(|i| pos + i);
        let line = &text[pos..end.unwrap_or(text.len())];
        let l = line.trim_end_matches('\r');
        if l == "---" || l == "..." {
            let body_start = end.map_or(text.len(), |e| e + 1);
            return (Some(&text[start..pos]), &text[body_start..]);
        }
        match end {
            Some(e) => pos = e + 1,
            None => break,
        }
    }
    (None, text)
}

/// Parses a note's front-matter.
pub fn front_matter(text: &str) -> Result<Mapping, String> {
    match split_note(text).0 {
        None => Ok(Mapping::new()),
        Some(y) if y.trim().is_empty() => Ok(Mapping::new()),
        Some(y) => match serde_yaml::from_str::<Value>(y) {
            Ok(Value::Mapping(m)) => Ok(m),
            Ok(other) => Err(format!("front-matter is not a mapping: {other:?}")),
            Err(e) => Err(format!("invalid front-matter: {e}")),
        },
    }
}

/// A scalar value as text.
pub fn scalar(m: &Mapping, key: &str) -> Option<String> {
    match m.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The tags of a front-matter mapping (list or comma/space string).
pub fn tags(m: &Mapping) -> Vec<String> {
    match m.get("tags") {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Is `s` an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-21T15:04:05.123Z`)?
pub fn is_rfc3339_millis_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Quotes a string for `sh` (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn scrub(cmd: &mut Command) {
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
}

/// A command line for the binary under test.
pub struct Run {
    cmd: Command,
    stdin: Option<String>,
    display: String,
}

/// Starts building `vaultrunner <args…>`.
pub fn vr(args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    scrub(&mut cmd);
    Run {
        cmd,
        stdin: None,
        display: format!("vaultrunner {}", args.join(" ")),
    }
}

impl Run {
    pub fn env(mut self, k: &str, v: &str) -> Run {
        self.cmd.env(k, v);
        self
    }

    pub fn stdin(mut self, s: &str) -> Run {
        self.stdin = Some(s.to_string());
        self
    }

    /// Runs to completion (60 s at most) and captures the output.
    pub fn run(mut self) -> Out {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.display));
        if let Some(s) = self.stdin.take() {
            let mut w = child.stdin.take().unwrap();
            w.write_all(s.as_bytes()).unwrap();
        }
        let started = Instant::now();
        // Read the pipes on threads so a chatty child never blocks.
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let to = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut so, &mut s).ok();
            s
        });
        let te = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut se, &mut s).ok();
            s
        });
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within 60 s", self.display);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Out {
            status,
            stdout: to.join().unwrap(),
            stderr: te.join().unwrap(),
            display: self.display,
            elapsed: started.elapsed(),
        }
    }
}

/// What a run of the binary left.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub display: String,
    pub elapsed: Duration,
}

impl Out {
    /// Asserts exit status 0.
    pub fn success(self) -> Out {
        assert!(self.status.success(), "{self}");
        self
    }

    /// Asserts a non-zero exit.
    pub fn failure(self) -> Out {
        assert!(!self.status.success(), "expected failure: {self}");
        self
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.display, self.status, self.stdout, self.stderr
        )
    }
}

/// Polls `f` every 20 ms until it is true; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `vaultrunner serve`, killed (and reaped) when dropped.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
}

impl Serve {
    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and waits (10 s at most, then SIGKILL).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        #[cfg(unix)]
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Asserts `hay` contains `needle`, showing both when not.
#[track_caller]
pub fn assert_contains(hay: &str, needle: &str) {
    assert!(hay.contains(needle), "expected {needle:?} in:\n{hay}");
}
