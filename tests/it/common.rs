//! Shared helpers for the end-to-end tests, one copy of each:
//!
//! - [`TestVault`]: a vault in a temp directory, with note writing and
//!   reading (a front-matter parser of our own, independent of the crate's),
//!   the engine over it (for tests that drive the library), and the real
//!   `vaultrunner` binary run on it — to completion ([`TestVault::vr`],
//!   [`TestVault::process`]) or in the background ([`TestVault::serve`],
//!   [`TestVault::spawn_serve`], [`Run::spawn`]).
//! - [`Serve`]: a `vaultrunner` running in the background, its output in a
//!   log, with waits on what it does (started, ready, a note answered, its
//!   HTTP address, its exit) and stopped (TERM, then KILL) when dropped.
//! - Front-matter: [`split_note`] and [`front_matter`] (lenient, as
//!   Obsidian reads a note), [`parse_note`] (strict: a whole note),
//!   [`scalar`], [`tags`], [`without_keys`]; note texts: [`inbound`],
//!   [`reply_of`].
//! - Waits: [`poll_until`], [`wait_until`], [`wait_until_async`],
//!   [`wait_exit`], [`read_pid`]; processes: [`alive`], [`survivors`],
//!   [`assert_all_dead`].
//! - The fake CLIs of `tests/fakes/`: [`fake`], and the log they write
//!   ([`TestVault::fake_runs`]).
//!
//! Every wait polls a condition against a deadline; a deadline only bounds
//! how long a failing test takes. The one fixed pause here is the
//! observation window of [`Serve::assert_still_waiting`]; to make notes
//! look written earlier without waiting, see [`TestVault::backdate`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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
    "VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS",
    "VAULTRUNNER_HTTP_BODY_TIMEOUT_MS",
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

// ------------------------------------------------------------------ vault

/// The keys vaultrunner owns on an inbound note (SPEC §2), as the tests
/// know them (not the crate's list).
pub const OWNED: &[&str] = &[
    "status",
    "attempts",
    "handled_at",
    "reply",
    "thread",
    "error",
];

/// A vault in a temp directory: `<tmp>/vault`, so that `<tmp>` (the
/// `parent`) can be watched for anything written outside the vault.
/// `<tmp>/scratch` holds what a test keeps outside the vault (scripts, pid
/// files, the logs of background runs); `<tmp>/fake.log` and
/// `<tmp>/fake-state` are the fakes' log and state.
pub struct TestVault {
    _tmp: tempfile::TempDir,
    /// The temp directory holding the vault (canonical).
    pub parent: PathBuf,
    /// The vault root (canonical).
    pub root: PathBuf,
    /// Probe notes written so far (see [`Serve::ready`]).
    probes: AtomicU32,
    /// Logs handed out so far (see [`TestVault::next_log`]).
    logs: AtomicU32,
}

impl Default for TestVault {
    fn default() -> Self {
        Self::new()
    }
}

impl TestVault {
    /// An empty vault.
    pub fn new() -> TestVault {
        // VAULTRUNNER_TEST_KEEP=1 keeps the vault, its logs and the fakes'
        // state after the test, to look at a failure.
        let keep = std::env::var_os("VAULTRUNNER_TEST_KEEP").is_some_and(|v| v == "1");
        let tmp = tempfile::Builder::new()
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        let parent = std::fs::canonicalize(tmp.path()).expect("canonicalize tempdir");
        let root = parent.join("vault");
        std::fs::create_dir(&root).expect("create vault dir");
        std::fs::create_dir(parent.join("fake-state")).expect("create fake state dir");
        TestVault {
            _tmp: tmp,
            parent,
            root,
            probes: AtomicU32::new(0),
            logs: AtomicU32::new(0),
        }
    }

    /// A vault with the two `echo` agents a served vault needs for
    /// [`Serve::ready`] (`probe`) and [`Serve::sentinel`] (`ok`).
    pub fn with_probes() -> TestVault {
        let v = TestVault::new();
        v.agent("probe", "backend: echo\n", "");
        v.agent("ok", "backend: echo\n", "");
        v
    }

    /// The root as a `&str` (for command lines).
    pub fn root_str(&self) -> &str {
        self.root.to_str().expect("utf-8 temp path")
    }

    /// Absolute path of a vault-relative file (`rel` includes `.md`).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `<tmp>/scratch`, a directory outside the vault (created on demand).
    pub fn scratch(&self) -> PathBuf {
        let d = self.parent.join("scratch");
        std::fs::create_dir_all(&d).expect("create scratch dir");
        d
    }

    /// A fresh log file name in [`scratch`](Self::scratch):
    /// `<what>-<n>.log`, so several runs in one test keep their logs apart.
    pub fn next_log(&self, what: &str) -> PathBuf {
        let n = self.logs.fetch_add(1, Ordering::Relaxed) + 1;
        self.scratch().join(format!("{what}-{n}.log"))
    }

    /// Writes a shell script `name` into [`scratch`](Self::scratch) (outside
    /// the vault) and returns its path; run it as `command: [sh, <path>]`.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.scratch().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        p
    }

    /// Writes a file (creating directories) the way a simple program does:
    /// create or truncate, then write.
    pub fn write(&self, rel: &str, text: &str) {
        self.write_bytes(rel, text.as_bytes());
    }

    /// [`write`](Self::write) for bytes.
    pub fn write_bytes(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    /// Writes a file atomically (a temp file with a dot name, then rename),
    /// the way vaultrunner's own writers and careful editors do.
    pub fn write_atomic(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        let dir = p.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let tmp = dir.join(format!(
            ".test-{}.tmp",
            p.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
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

    /// Moves the mtime of `rel` — a file, or every file under a directory
    /// (`""`: the whole vault) —
    /// `by` into the past, as if written that long ago: `serve` settles a
    /// note by its mtime, so this stands for a pause before it starts.
    pub fn backdate(&self, rel: &str, by: Duration) {
        let when = SystemTime::now()
            .checked_sub(by)
            .expect("a time after 1970");
        let p = self.path(rel);
        let files = if p.is_dir() {
            walk(&p).into_iter().map(|(_, abs)| abs).collect()
        } else {
            vec![p]
        };
        for f in files {
            std::fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|h| h.set_modified(when))
                .unwrap_or_else(|e| panic!("backdate {}: {e}", f.display()));
        }
    }

    /// Does the vault-relative file exist?
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// A file's text.
    pub fn read(&self, rel: &str) -> String {
        let p = self.path(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// A note's front-matter as a YAML mapping (empty without front-matter;
    /// panics on invalid YAML).
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

    /// A note by its note path — vault-relative without `.md`, as the HTTP
    /// API, wikilinks and `send` name it: its front-matter and body. Panics
    /// unless the note is whole (a closed, valid front-matter).
    pub fn note(&self, path: &str) -> (Mapping, String) {
        read_note(&self.path(&format!("{path}.md")))
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

    /// Every file under the vault, `.vaultrunner/` included, with its size
    /// and mtime: cheap enough to take while `serve` runs, for "nothing
    /// changes any more" checks. Files that vanish meanwhile are left out.
    pub fn stat_snapshot(&self) -> BTreeMap<String, (u64, SystemTime)> {
        let mut out = BTreeMap::new();
        for (rel, abs) in walk(&self.root) {
            if let Ok(m) = std::fs::symlink_metadata(&abs) {
                out.insert(rel, (m.len(), m.modified().unwrap()));
            }
        }
        out
    }

    /// Every file under the vault (relative paths, sorted), without
    /// `.vaultrunner/`.
    pub fn files(&self) -> Vec<String> {
        self.all_files()
            .into_iter()
            .filter(|rel| !rel.starts_with(".vaultrunner/"))
            .collect()
    }

    /// Every file under the vault (relative paths, sorted), `.vaultrunner/`
    /// included.
    pub fn all_files(&self) -> Vec<String> {
        walk(&self.root).into_iter().map(|(rel, _)| rel).collect()
    }

    /// The `.md` files directly or deeply under `dir` (relative to the vault).
    pub fn notes_under(&self, dir: &str) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| f.starts_with(&format!("{dir}/")) && f.ends_with(".md"))
            .collect()
    }

    /// Every `*.reply.md` in the vault (relative paths, sorted).
    pub fn replies(&self) -> Vec<String> {
        self.files()
            .into_iter()
            .filter(|f| f.ends_with(".reply.md"))
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

    /// Writes an inbound message note at `rel` (with `.md`); see [`inbound`].
    pub fn message(&self, rel: &str, agent: &str, extra: &str, body: &str) {
        self.write(rel, &inbound(agent, extra, body));
    }

    /// The engine over this vault (group commit on, the start-up scan
    /// done), for tests that drive the library: cron ticks, the in-process
    /// HTTP router.
    pub fn engine(&self) -> Arc<vaultrunner::engine::Engine> {
        let e = vaultrunner::engine::Engine::new(
            Arc::new(
                vaultrunner::vault::LocalVault::open(&self.root)
                    .unwrap()
                    .with_group_commit(),
            ),
            vaultrunner::engine::Config::default(),
        );
        e.scan(true);
        e
    }

    /// Runs the binary with `args` (no vault argument added), with the
    /// fakes' log and state set (see [`fake_runs`](Self::fake_runs)).
    pub fn vr(&self, args: &[&str]) -> Run {
        vr(args)
            .env("FAKE_LOG", &self.fake_log().display().to_string())
            .env("FAKE_STATE", &self.fake_state().display().to_string())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
    }

    /// `vaultrunner process <vault> [extra…]`, asserting success.
    pub fn process(&self, extra: &[&str]) -> Out {
        let mut args = vec!["process", self.root_str()];
        args.extend_from_slice(extra);
        self.vr(&args).run().success()
    }

    /// `vaultrunner process <vault>` with more environment variables,
    /// asserting success.
    pub fn process_with(&self, vars: &[(&str, &str)]) -> Out {
        let mut run = self.vr(&["process", self.root_str()]);
        for (k, v) in vars {
            run = run.env(k, v);
        }
        run.run().success()
    }

    /// `vaultrunner check <vault>` (exit status not asserted).
    pub fn check(&self) -> Out {
        self.vr(&["check", self.root_str()]).run()
    }

    /// The command line of `vaultrunner serve <vault> [extra…]` at log level
    /// info, with `--settle-ms 0` and `--listen none` unless `extra` sets
    /// them (tests run in parallel and must not fight over a port): add
    /// environment, then [`Run::spawn`] it.
    pub fn serve_run(&self, extra: &[&str]) -> Run {
        let mut args = vec!["serve", self.root_str()];
        args.extend_from_slice(extra);
        if !extra.contains(&"--settle-ms") {
            args.extend(["--settle-ms", "0"]);
        }
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "none"]);
        }
        let level = std::env::var("VAULTRUNNER_TEST_LOG").unwrap_or_else(|_| "info".into());
        self.vr(&args).env("VAULTRUNNER_LOG", &level)
    }

    /// Starts [`serve_run(extra)`](Self::serve_run) without waiting for it.
    pub fn spawn_serve(&self, extra: &[&str]) -> Serve {
        self.serve_run(extra).spawn(self.next_log("serve"))
    }

    /// Starts `serve` with HTTP on a free loopback port and the extra
    /// environment `vars`, waits until it has started; it and its HTTP
    /// address (`127.0.0.1:PORT`).
    pub fn serve_http(&self, vars: &[(&str, &str)]) -> (Serve, String) {
        let mut run = self.serve_run(&["--listen", "127.0.0.1:0"]);
        for (k, val) in vars {
            run = run.env(k, val);
        }
        let mut s = run.spawn(self.next_log("serve"));
        s.started();
        let addr = s.http_addr(self);
        (s, addr)
    }

    /// Starts `serve` as [`spawn_serve`](Self::spawn_serve) does and waits
    /// until it has started (holds the lock, scanned the vault).
    pub fn serve(&self, extra: &[&str]) -> Serve {
        let serve = self.spawn_serve(extra);
        serve.started();
        serve
    }

    /// The log the fakes append one JSON line a run to.
    pub fn fake_log(&self) -> PathBuf {
        self.parent.join("fake.log")
    }

    /// The fakes' state directory (sessions they know).
    pub fn fake_state(&self) -> PathBuf {
        self.parent.join("fake-state")
    }

    /// Every line of the fakes' log, parsed.
    pub fn fake_log_lines(&self) -> Vec<serde_json::Value> {
        let Ok(text) = std::fs::read_to_string(self.fake_log()) else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// The logged runs of one fake program (`claude`, `codex`, `gemini`).
    pub fn fake_runs(&self, prog: &str) -> Vec<serde_json::Value> {
        self.fake_log_lines()
            .into_iter()
            .filter(|v| v["prog"] == prog)
            .collect()
    }

    /// The pids the fakes logged: the fakes and their grandchildren.
    pub fn fake_pids(&self) -> Vec<i32> {
        self.fake_log_lines()
            .iter()
            .filter_map(|v| v["pid"].as_i64())
            .filter_map(|p| i32::try_from(p).ok())
            .collect()
    }
}

// ------------------------------------------------------------------ notes

/// The text of an inbound message for `agent`, with extra front-matter
/// lines (`extra`, raw YAML, each line ending in `\n`) and a body.
pub fn inbound(agent: &str, extra: &str, body: &str) -> String {
    format!(
        "---\ntags:\n  - agent/message\n  - agent/message/inbound\nagent: {agent}\n{extra}---\n{body}"
    )
}

/// The reply path of an inbound file path (`x/y.md` → `x/y.reply.md`).
pub fn reply_of(rel: &str) -> String {
    format!("{}.reply.md", rel.strip_suffix(".md").unwrap_or(rel))
}

/// Asserts that `path` (a note path, no `.md`) is where vaultrunner puts a
/// new message to `agent` written between `before` and `after`:
/// `Inbox/<agent>/<YYYY>/<MM>/<DD>/<YYYYMMDD-HHMMSS-mmm>-<8 hex>`, the
/// folders and the stem from the same UTC time.
#[track_caller]
pub fn assert_dated_message_path(
    path: &str,
    agent: &str,
    before: chrono::DateTime<chrono::Utc>,
    after: chrono::DateTime<chrono::Utc>,
) {
    let rest = path
        .strip_prefix(&format!("Inbox/{agent}/"))
        .unwrap_or_else(|| panic!("{path}: not under Inbox/{agent}/"));
    let parts: Vec<&str> = rest.split('/').collect();
    assert_eq!(parts.len(), 4, "{path}: not in Inbox/{agent}/YYYY/MM/DD/");
    let stem = parts[3];
    let (time, hex) = stem
        .rsplit_once('-')
        .unwrap_or_else(|| panic!("{path}: no random suffix"));
    assert!(
        hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{path}: suffix {hex:?}"
    );
    let at = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%d-%H%M%S-%3f")
        .unwrap_or_else(|e| panic!("{path}: time {time:?}: {e}"))
        .and_utc();
    assert_eq!(
        format!("{}/{}/{}", parts[0], parts[1], parts[2]),
        at.format("%Y/%m/%d").to_string(),
        "{path}: the folders are not the stem's day"
    );
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    assert!(
        ms(before) <= ms(at) && ms(at) <= ms(after),
        "{path}: written at {at}, not between {before} and {after} (UTC)"
    );
}

/// Is this (relative or absolute) path one of vaultrunner's own temp files
/// (`.vaultrunner-*.tmp`)?
pub fn is_vaultrunner_temp(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with(".vaultrunner-") && name.ends_with(".tmp")
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

/// Parses a note's front-matter: an empty mapping without one, an error
/// for invalid YAML or YAML that is not a mapping.
pub fn front_matter(text: &str) -> Result<Mapping, String> {
    match split_note(text).0 {
        None => Ok(Mapping::new()),
        Some(y) => yaml_mapping(y),
    }
}

/// Parses a whole note strictly: (front-matter, body), or an error when the
/// note has no front-matter, its block never closes, or its YAML is invalid
/// or not a mapping. For notes vaultrunner writes, which must be whole.
pub fn parse_note(text: &str) -> Result<(Mapping, &str), String> {
    if !text.starts_with("---\n") && !text.starts_with("---\r\n") {
        return Err("no front-matter".into());
    }
    match split_note(text) {
        (Some(y), body) => Ok((yaml_mapping(y)?, body)),
        (None, _) => Err("front-matter is not closed".into()),
    }
}

/// [`parse_note`] of a file by its absolute path, panicking (with the text)
/// when the note is not whole.
pub fn read_note(file: &Path) -> (Mapping, String) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    match parse_note(&text) {
        Ok((m, body)) => (m, body.to_string()),
        Err(e) => panic!("{}: {e}\n{text}", file.display()),
    }
}

/// A front-matter block as a mapping (blank or `null` is empty).
fn yaml_mapping(yaml: &str) -> Result<Mapping, String> {
    if yaml.trim().is_empty() {
        return Ok(Mapping::new());
    }
    match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(other) => Err(format!("front-matter is not a mapping: {other:?}")),
        Err(e) => Err(format!("invalid front-matter: {e}")),
    }
}

/// A scalar value as text (strings, numbers, booleans; `None` otherwise).
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

/// The note with every front-matter line of a top-level key in `keys`
/// removed, with its indented continuation lines (a block value a user
/// wrote); every other byte as it was. For "only the owned keys changed".
pub fn without_keys(text: &str, keys: &[&str]) -> String {
    let mut out = String::new();
    let mut in_fm = false;
    let mut skipping = false;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if i == 0 {
            in_fm = bare == "---";
            out.push_str(line);
            continue;
        }
        if in_fm && (bare == "---" || bare == "...") {
            in_fm = false;
        }
        if in_fm {
            if skipping && bare.starts_with([' ', '\t']) {
                continue;
            }
            skipping = keys.iter().any(|k| bare.starts_with(&format!("{k}:")));
            if skipping {
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

/// Is `s` an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-21T15:04:05.123Z`)?
pub fn is_rfc3339_millis_utc(s: &str) -> bool {
    // `0` stands for any digit; every other byte must match.
    const SHAPE: &[u8] = b"0000-00-00T00:00:00.000Z";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE).all(|(c, &want)| match want {
            b'0' => c.is_ascii_digit(),
            _ => c == want,
        })
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Quotes a string for `sh` (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ------------------------------------------------------------------ fakes

/// `tests/fakes/`: the fake `claude`, `codex` and `gemini` CLIs.
pub fn fakes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes")
}

/// The path of one fake CLI, for a definition's `program:`.
pub fn fake(name: &str) -> String {
    fakes_dir().join(name).display().to_string()
}

// ---------------------------------------------------------------- running

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

/// Starts building `vaultrunner <args…>` (with [`SCRUB_ENV`] removed).
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

/// Starts building `prog <args…>`, a program other than the binary under
/// test (`script`, running it on a pseudo-terminal), with [`SCRUB_ENV`]
/// removed.
pub fn program(prog: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    scrub(&mut cmd);
    Run {
        cmd,
        stdin: None,
        display: format!("{prog} {}", args.join(" ")),
    }
}

impl Run {
    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Run {
        self.cmd.env(k, v);
        self
    }

    /// Removes an environment variable (beyond [`SCRUB_ENV`]).
    pub fn env_remove(mut self, k: &str) -> Run {
        self.cmd.env_remove(k);
        self
    }

    /// Feeds `s` on stdin (otherwise stdin is `/dev/null`).
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
        let Some(status) = wait_exit_every(&mut child, Duration::from_secs(60), POLL_FAST) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish within 60 s", self.display);
        };
        Out {
            status,
            stdout: to.join().unwrap(),
            stderr: te.join().unwrap(),
            display: self.display,
            elapsed: started.elapsed(),
        }
    }

    /// Starts the command in the background (stdin `/dev/null`), stdout and
    /// stderr appended to `log`; the [`Serve`] guard stops it when dropped.
    pub fn spawn(mut self, log: PathBuf) -> Serve {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.display));
        Serve { child, log }
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

    /// The exit code (`None` when killed by a signal).
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

// ------------------------------------------------------------------ waits

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(20);
/// How often waits on a process poll (a run's exit, a crash test's progress).
const POLL_FAST: Duration = Duration::from_millis(2);

/// Polls `f` every 20 ms until it is true (→ `true`) or `timeout` passes
/// (→ `false`, after one last look).
pub fn poll_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll_every(timeout, POLL, f)
}

fn poll_every(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if f() {
            return true;
        }
        if started.elapsed() > timeout {
            return f();
        }
        std::thread::sleep(every);
    }
}

/// Polls `f` every 20 ms until it is true; panics after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    if !poll_until(timeout, f) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// [`wait_until`] for async tests: polls `f` every 20 ms without blocking
/// the runtime; panics after `timeout`.
pub async fn wait_until_async(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() <= timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits up to `within` for a child to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    wait_exit_every(child, within, POLL)
}

fn wait_exit_every(child: &mut Child, within: Duration, every: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll_every(within, every, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status
}

/// Reads the pid a test script wrote to `file` (write to a temp name, then
/// `mv`), waiting up to 20 s for it.
#[track_caller]
pub fn read_pid(file: &Path) -> i32 {
    let mut pid = None;
    let ok = poll_until(Duration::from_secs(20), || {
        pid = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        pid.is_some()
    });
    assert!(ok, "{} was not written within 20 s", file.display());
    pid.unwrap()
}

/// Is the process alive? A zombie counts as gone (PID 1 here may not reap).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Waits up to `within` for every pid to be gone and returns those still
/// alive then — after SIGKILLing them, so nothing outlives the test.
pub fn survivors(pids: &[i32], within: Duration) -> Vec<i32> {
    poll_until(within, || pids.iter().all(|&p| !alive(p)));
    let live: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &live {
        // SAFETY: cleaning up processes our own test started.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    live
}

/// Asserts every pid is gone within `within` (see [`survivors`]).
#[track_caller]
pub fn assert_all_dead(pids: &[i32], within: Duration) {
    let live = survivors(pids, within);
    assert!(live.is_empty(), "processes outlived the turn: {live:?}");
}

// ------------------------------------------------------------------ serve

/// A `vaultrunner` running in the background (usually `serve`), its stdout
/// and stderr in `log`. Dropping it stops it: SIGTERM, then SIGKILL after
/// 10 s, and reaps it.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
}

impl Serve {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` for `cond`, or panics with `what` and the log.
    #[track_caller]
    pub fn wait_for(&self, within: Duration, what: &str, cond: impl FnMut() -> bool) {
        if !poll_until(within, cond) {
            panic!(
                "timed out after {within:?} waiting for: {what}\n--- log ---\n{}",
                self.log_text()
            );
        }
    }

    /// Waits until `serve` logged `serving …` (after taking the lock and
    /// the start-up scan; the watcher may not be live yet). Polling
    /// `status` instead would race: `status` probes the lock by taking it
    /// for a moment. Panics if it exits first.
    #[track_caller]
    pub fn started(&self) {
        let ok = poll_until(Duration::from_secs(30), || {
            self.log_text().contains("serving ") || !alive(self.pid())
        });
        let log = self.log_text();
        assert!(
            ok && log.contains("serving "),
            "serve did not start (still running: {}):\n{log}",
            alive(self.pid())
        );
    }

    /// Waits until the watcher is live: the start-up scan is logged, then a
    /// probe note (written after that) is answered — by the watcher or by
    /// the scan that follows setting up the watches. Needs the `probe`
    /// agent of [`TestVault::with_probes`].
    #[track_caller]
    pub fn ready(&self, v: &TestVault) {
        self.started();
        let n = v.probes.fetch_add(1, Ordering::Relaxed) + 1;
        let rel = format!("Probe/p{n}.md");
        v.write_atomic(&rel, &inbound("probe", "sender: cli\n", "ready?\n"));
        self.wait_for(
            Duration::from_secs(20),
            &format!("probe {rel} answered"),
            || v.exists(&reply_of(&rel)),
        );
    }

    /// Waits up to 20 s until `rel`'s reply exists and `rel` is stamped
    /// (`handled` or `error`).
    #[track_caller]
    pub fn answered(&self, v: &TestVault, rel: &str) {
        self.answered_within(v, rel, Duration::from_secs(20));
    }

    /// [`answered`](Self::answered) with another deadline.
    #[track_caller]
    pub fn answered_within(&self, v: &TestVault, rel: &str, within: Duration) {
        let reply = reply_of(rel);
        self.wait_for(within, &format!("{rel} answered"), || {
            v.exists(&reply)
                && std::fs::read_to_string(v.path(rel)).is_ok_and(|t| {
                    parse_note(&t).is_ok_and(|(m, _)| {
                        scalar(&m, "status").is_some_and(|s| s == "handled" || s == "error")
                    })
                })
        });
    }

    /// [`answered`](Self::answered), then asserts the reply's body
    /// (trimmed) is `want`.
    #[track_caller]
    pub fn answered_with(&self, v: &TestVault, rel: &str, want: &str) {
        self.answered(v, rel);
        assert_eq!(v.body(&reply_of(rel)).trim(), want, "the reply to {rel}");
    }

    /// Writes a message to the always-answering `ok` agent (see
    /// [`TestVault::with_probes`]) and waits for its reply: every event
    /// written before it has then been seen by the watcher.
    #[track_caller]
    pub fn sentinel(&self, v: &TestVault, name: &str) {
        let rel = format!("Sentinel/{name}.md");
        v.message(&rel, "ok", "", &format!("{name}\n"));
        self.answered(v, &rel);
    }

    /// Asserts that an inbound note is still waiting: no reply, not stamped.
    #[track_caller]
    pub fn assert_waiting(&self, v: &TestVault, rel: &str) {
        assert!(
            !v.exists(&reply_of(rel)),
            "{rel} should wait but was answered: {}\n--- log ---\n{}",
            v.read(&reply_of(rel)),
            self.log_text()
        );
        let st = v.get(rel, "status");
        assert!(
            st.is_none() || st.as_deref() == Some("pending"),
            "{rel} should be untouched, status is {st:?}"
        );
    }

    /// Asserts that each of `rels` still waits once the watcher has seen
    /// it: a [`sentinel`](Self::sentinel) named `sentinel`, then half a
    /// second of observation window, then [`assert_waiting`](Self::assert_waiting).
    #[track_caller]
    pub fn assert_still_waiting(&self, v: &TestVault, sentinel: &str, rels: &[&str]) {
        self.sentinel(v, sentinel);
        std::thread::sleep(Duration::from_millis(500));
        for rel in rels {
            self.assert_waiting(v, rel);
        }
    }

    /// The address of `serve`'s HTTP listener, from
    /// `.vaultrunner/http.addr` (waiting up to 20 s for it; panics if the
    /// process exits first).
    #[track_caller]
    pub fn http_addr(&mut self, v: &TestVault) -> String {
        let f = v.path(".vaultrunner/http.addr");
        let mut addr = String::new();
        let mut exited = None;
        let ok = poll_until(Duration::from_secs(20), || {
            if let Ok(a) = std::fs::read_to_string(&f)
                && !a.trim().is_empty()
            {
                addr = a.trim().to_string();
                return true;
            }
            exited = self.child.try_wait().unwrap();
            exited.is_some()
        });
        if let Some(st) = exited {
            panic!("serve exited early: {st:?}: {}", self.log_text());
        }
        assert!(ok, "no http.addr:\n{}", self.log_text());
        addr
    }

    /// Sends `sig` to it.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Is it still running?
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `within` for it to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, within)
    }

    /// Polls `cond` every 2 ms until it holds (→ `true`), `within` passes
    /// or the process exits (→ `cond()` then).
    pub fn wait_while_running(&mut self, within: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let child = &mut self.child;
        poll_every(within, POLL_FAST, || {
            cond() || child.try_wait().unwrap().is_some()
        });
        cond()
    }

    /// SIGKILLs and reaps it (a process that already exited is fine).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// Stops it with SIGTERM and waits (10 s at most, then SIGKILL); the
    /// exit status, `None` when it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let st = self.wait_exit(Duration::from_secs(10));
        if st.is_none() {
            self.kill();
        }
        st
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asserts `hay` contains `needle`, showing both when not.
#[track_caller]
pub fn assert_contains(hay: &str, needle: &str) {
    assert!(hay.contains(needle), "expected {needle:?} in:\n{hay}");
}

/// An engine's dispatcher running in the background (library-level tests
/// of turns), until [`Dispatching::stop`].
pub struct Dispatching {
    cancel: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// Starts `engine`'s dispatcher on the current tokio runtime.
pub fn dispatch(engine: &Arc<vaultrunner::engine::Engine>) -> Dispatching {
    let cancel = tokio_util::sync::CancellationToken::new();
    let (e, c) = (engine.clone(), cancel.clone());
    let handle = tokio::spawn(async move { e.run_dispatcher(c).await });
    Dispatching { cancel, handle }
}

impl Dispatching {
    /// Stops the dispatcher and waits for its running turns.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap();
    }
}

// ------------------------------------------------------------------ a vault server's API

/// One request to a Parachute Vault API (the fake's or the real one's) as
/// `token`: the status and the JSON answer (`null` when it is not JSON).
pub async fn vault_api(
    http: &reqwest::Client,
    token: &str,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut rb = http
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let v = r
        .json::<serde_json::Value>()
        .await
        .unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// A read-only token of the real server at `base`, minted with `token`'s
/// admin scope (run-vault.sh's test token has it); `None`, with a note
/// naming `test`, when the server will not mint one (the 403 checks are
/// then skipped).
pub async fn mint_read_only(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    label: &str,
    test: &str,
) -> Option<String> {
    let body = serde_json::json!({"label": label, "scopes": ["vault:read"]});
    let (status, v) = vault_api(http, token, "POST", &format!("{base}/tokens"), Some(body)).await;
    match v.get("token").and_then(serde_json::Value::as_str) {
        Some(ro) if status == 201 => Some(ro.to_string()),
        _ => {
            eprintln!(
                "{test}: could not mint a read-only token ({status} {v}); 403 checks skipped"
            );
            None
        }
    }
}

// ------------------------------------------------------------- plain HTTP

/// One HTTP/1.0 request to `http://HOST:PORT/PATH` over a plain socket:
/// (status, body), or `None` when nothing answers.
pub fn http_request(method: &str, url: &str, json: Option<&str>) -> Option<(u16, String)> {
    use std::io::Read;
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: std::net::SocketAddr = host.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = json.unwrap_or("");
    let ct = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `GET url`'s body when it answers 200.
pub fn http_get(url: &str) -> Option<String> {
    http_request("GET", url, None)
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
}

/// `POST url` with a JSON body: (status, body).
pub fn http_post_json(url: &str, json: &str) -> (u16, String) {
    http_request("POST", url, Some(json)).unwrap_or_else(|| panic!("POST {url}: no answer"))
}
