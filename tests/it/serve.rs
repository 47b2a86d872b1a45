//! Integration tests of `vaultrunner serve`, driving the real binary on
//! temporary vaults: answering, the settle window, no write loops, hot
//! reload of definitions, the single-instance lock, shutdown and timeouts
//! (no orphaned processes), editor save styles, ignored paths, idle CPU.
//!
//! Every test waits by polling the disk against a deadline; the only fixed
//! pauses are observation windows ("nothing happens for N seconds").

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");

// ---------------------------------------------------------------- helpers

/// A temporary vault with two `echo` agents, `probe` (used to tell when a
/// `serve` is ready) and `ok` (for sentinels), and helpers to write and read
/// notes.
struct TestVault {
    dir: TempDir,
    probes: std::cell::Cell<u32>,
}

impl TestVault {
    fn new() -> TestVault {
        let v = TestVault {
            dir: tempfile::tempdir().unwrap(),
            probes: std::cell::Cell::new(0),
        };
        v.agent("probe", "backend: echo\n");
        v.agent("ok", "backend: echo\n");
        v
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file the way a simple program does (create/truncate, write).
    fn write(&self, rel: &str, content: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
    }

    /// Writes a file atomically (temp file with a dot name, then rename), the
    /// way vaultrunner's own writers and careful editors do.
    fn write_atomic(&self, rel: &str, content: &str) {
        let p = self.p(rel);
        let dir = p.parent().unwrap();
        fs::create_dir_all(dir).unwrap();
        let tmp = dir.join(format!(
            ".test-{}.tmp",
            p.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }

    /// Writes `Agents/<name>.md` with the given extra front-matter lines.
    fn agent(&self, name: &str, yaml: &str) {
        self.write(&format!("Agents/{name}.md"), &definition(yaml));
    }

    fn exists(&self, rel: &str) -> bool {
        self.p(rel).exists()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.p(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
    }

    /// The front-matter of a note (panics if it is not valid YAML).
    fn fm(&self, rel: &str) -> serde_yaml::Mapping {
        let text = self.read(rel);
        front_matter(&text).unwrap_or_else(|e| panic!("{rel}: {e}\n{text}"))
    }

    /// A front-matter field as a string (numbers included).
    fn field(&self, rel: &str, key: &str) -> Option<String> {
        scalar(self.fm(rel).get(key)?)
    }

    /// The body of a note (after the front-matter).
    fn body(&self, rel: &str) -> String {
        body_of(&self.read(rel)).to_string()
    }

    /// Every file under the vault (dot folders included) with size and
    /// modification time.
    fn snapshot(&self) -> BTreeMap<String, (u64, SystemTime)> {
        let mut out = BTreeMap::new();
        for f in walk(self.path()) {
            if let Ok(m) = fs::symlink_metadata(&f) {
                let rel = f
                    .strip_prefix(self.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, (m.len(), m.modified().unwrap()));
            }
        }
        out
    }

    /// Every `*.reply.md` (vault-relative).
    fn replies(&self) -> Vec<String> {
        let mut v: Vec<String> = walk(self.path())
            .into_iter()
            .map(|f| {
                f.strip_prefix(self.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|r| r.ends_with(".reply.md"))
            .collect();
        v.sort();
        v
    }
}

/// A definition note with the given extra front-matter lines.
fn definition(yaml: &str) -> String {
    format!("---\ntags: [agent/definition]\n{yaml}---\nA test agent.\n")
}

/// An inbound message note.
fn inbound(agent: &str, body: &str, extra: &str) -> String {
    format!("---\ntags: [agent/message/inbound]\nagent: {agent}\n{extra}---\n{body}\n")
}

/// The reply path of an inbound file path (`x/y.md` → `x/y.reply.md`).
fn reply_of(rel: &str) -> String {
    format!("{}.reply.md", rel.strip_suffix(".md").unwrap())
}

/// Splits the front-matter off a note and parses it.
fn front_matter(text: &str) -> Result<serde_yaml::Mapping, String> {
    let Some(rest) = text.strip_prefix("---\n") else {
        return Ok(serde_yaml::Mapping::new());
    };
    let mut yaml = String::new();
    for line in rest.split_inclusive('\n') {
        let l = line.trim_end_matches(['\n', '\r']);
        if l == "---" || l == "..." {
            return match serde_yaml::from_str::<serde_yaml::Value>(&yaml) {
                Ok(serde_yaml::Value::Mapping(m)) => Ok(m),
                Ok(serde_yaml::Value::Null) => Ok(serde_yaml::Mapping::new()),
                Ok(other) => Err(format!("front-matter is not a mapping: {other:?}")),
                Err(e) => Err(format!("invalid YAML: {e}")),
            };
        }
        yaml.push_str(line);
    }
    Err("front-matter is not closed".into())
}

fn body_of(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("---\n") else {
        return text;
    };
    let mut off = 0;
    for line in rest.split_inclusive('\n') {
        off += line.len();
        let l = line.trim_end_matches(['\n', '\r']);
        if l == "---" || l == "..." {
            return &rest[off..];
        }
    }
    ""
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Every file (not directory) under `root`, dot folders included.
fn walk(root: &Path) -> Vec<PathBuf> {
    crate::common::walk(root)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `secs` pass.
fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child to exit, up to `secs`.
fn wait_exit(child: &mut Child, secs: f64) -> Option<ExitStatus> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Is the process alive (a zombie counts as gone: PID 1 here may not reap)?
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
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

/// Reads a PID a test script wrote, waiting until it is complete.
fn read_pid(file: &Path, secs: f64) -> i32 {
    let mut pid = None;
    let ok = wait_until(secs, || {
        pid = fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        pid.is_some()
    });
    assert!(ok, "{} was not written within {secs}s", file.display());
    pid.unwrap()
}

/// Runs the binary to completion (with a deadline) and returns its output.
fn run_bin(args: &[&str], secs: f64) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain the pipes on threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = match wait_exit(&mut child, secs) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vaultrunner {args:?} did not exit within {secs}s");
        }
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// A running `vaultrunner serve`. Dropping it stops it (TERM, then KILL).
struct Served {
    child: Option<Child>,
    logdir: TempDir,
}

impl Served {
    fn start(vault: &TestVault, settle_ms: u64) -> Served {
        Served::start_args(vault, &["--settle-ms", &settle_ms.to_string()])
    }

    fn start_args(vault: &TestVault, extra: &[&str]) -> Served {
        let logdir = tempfile::tempdir().unwrap();
        let log = fs::File::create(logdir.path().join("serve.log")).unwrap();
        // No HTTP unless a test asks for it: parallel tests (and a real
        // vaultrunner on this machine) would share the default port.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "none"]
        };
        let child = Command::new(BIN)
            .arg("serve")
            .arg(vault.path())
            .args(extra)
            .args(listen)
            .env("VAULTRUNNER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Served {
            child: Some(child),
            logdir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        fs::read_to_string(self.logdir.path().join("serve.log")).unwrap_or_default()
    }

    /// Waits until the start-up scan is logged (the watcher may not be
    /// live yet).
    fn started(&self) {
        assert!(
            wait_until(30.0, || self.log().contains("serving")),
            "serve did not start:\n{}",
            self.log()
        );
    }

    /// Waits until the watcher is live: the start-up scan is logged, then a
    /// probe note (written after that) is answered — by the watcher or by
    /// the scan that follows setting up the watches.
    fn ready(&self, vault: &TestVault) {
        self.started();
        let n = vault.probes.get() + 1;
        vault.probes.set(n);
        let rel = format!("Probe/p{n}.md");
        vault.write_atomic(&rel, &inbound("probe", "ready?", "sender: cli\n"));
        self.wait_for(20.0, &format!("probe {rel} answered"), || {
            vault.exists(&reply_of(&rel))
        });
    }

    /// Waits for `cond` or panics with the serve log.
    fn wait_for(&self, secs: f64, what: &str, cond: impl FnMut() -> bool) {
        if !wait_until(secs, cond) {
            panic!(
                "timed out after {secs}s waiting for: {what}\n--- serve log ---\n{}",
                self.log()
            );
        }
    }

    /// Waits until `rel`'s reply exists and the inbound is stamped.
    fn answered(&self, vault: &TestVault, rel: &str, secs: f64) {
        let reply = reply_of(rel);
        self.wait_for(secs, &format!("{rel} answered"), || {
            vault.exists(&reply)
                && fs::read_to_string(vault.p(rel)).is_ok_and(|t| {
                    front_matter(&t).is_ok_and(|m| {
                        m.get("status")
                            .and_then(scalar)
                            .is_some_and(|s| s == "handled" || s == "error")
                    })
                })
        });
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn still_running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit after a signal.
    fn wait_exit(&mut self, secs: f64) -> Option<ExitStatus> {
        let st = wait_exit(self.child.as_mut().unwrap(), secs);
        if st.is_some() {
            self.child = None;
        }
        st
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            if wait_exit(&mut c, 15.0).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Writes a message to the always-answering `ok` agent and waits for its
/// reply: every event written before it has then been seen by the watcher.
fn sentinel(s: &Served, v: &TestVault, name: &str) {
    let rel = format!("Sentinel/{name}.md");
    v.write(&rel, &inbound("ok", name, ""));
    s.answered(v, &rel, 20.0);
}

/// Asserts that an inbound note is still waiting: no reply, not stamped.
fn assert_waiting(v: &TestVault, rel: &str, s: &Served) {
    assert!(
        !v.exists(&reply_of(rel)),
        "{rel} should wait but was answered: {}\n--- serve log ---\n{}",
        v.read(&reply_of(rel)),
        s.log()
    );
    let st = v.field(rel, "status");
    assert!(
        st.is_none() || st.as_deref() == Some("pending"),
        "{rel} should be untouched, status is {st:?}"
    );
}

/// A shell script in `dir` (outside the vault); returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    p
}

// ------------------------------------------------------------------ tests

#[test]
fn answers_notes_including_in_new_directories() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    let s = Served::start(&v, 0);
    s.ready(&v);

    v.write("Inbox/first.md", &inbound("echo", "hello", ""));
    s.answered(&v, "Inbox/first.md", 20.0);
    assert_eq!(v.body("Inbox/first.reply.md").trim(), "echo: hello");

    // A directory created after start, written into at once.
    fs::create_dir(v.p("Fresh")).unwrap();
    v.write("Fresh/x.md", &inbound("echo", "in a new dir", ""));
    // Nested directories created in one go.
    fs::create_dir_all(v.p("a/b/c")).unwrap();
    v.write("a/b/c/x.md", &inbound("echo", "deep", ""));
    // And a nested tree whose files land before any watch could exist.
    let deep = v.p("p/q/r");
    fs::create_dir_all(&deep).unwrap();
    for i in 0..5 {
        fs::write(
            deep.join(format!("m{i}.md")),
            inbound("echo", &format!("burst {i}"), ""),
        )
        .unwrap();
    }
    s.answered(&v, "Fresh/x.md", 20.0);
    s.answered(&v, "a/b/c/x.md", 20.0);
    for i in 0..5 {
        s.answered(&v, &format!("p/q/r/m{i}.md"), 20.0);
        assert_eq!(
            v.body(&format!("p/q/r/m{i}.reply.md")).trim(),
            format!("echo: burst {i}")
        );
    }
    assert_eq!(v.body("Fresh/x.reply.md").trim(), "echo: in a new dir");
    assert_eq!(v.body("a/b/c/x.reply.md").trim(), "echo: deep");
    for rel in ["Inbox/first.md", "Fresh/x.md", "a/b/c/x.md"] {
        assert_eq!(v.field(rel, "status").as_deref(), Some("handled"));
        assert_eq!(v.field(&reply_of(rel), "status").as_deref(), Some("ok"));
    }
    // Exactly one reply per message, nothing else reply-ish.
    let mut want = vec![
        "Fresh/x.reply.md".to_string(),
        "Inbox/first.reply.md".to_string(),
        "Probe/p1.reply.md".to_string(),
        "a/b/c/x.reply.md".to_string(),
    ];
    want.extend((0..5).map(|i| format!("p/q/r/m{i}.reply.md")));
    want.sort();
    assert_eq!(v.replies(), want);
}

#[test]
fn settle_window_waits_for_quiet_and_answers_once() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    fs::create_dir(v.p("Inbox")).unwrap();
    let mut s = Served::start(&v, 1500);
    s.ready(&v);

    // A single user write: not answered before ~1.5 s of quiet.
    let rel = "Inbox/typed.md";
    let written = SystemTime::now();
    v.write(rel, &inbound("echo", "one shot", ""));
    s.answered(&v, rel, 20.0);
    let replied = fs::metadata(v.p(&reply_of(rel)))
        .unwrap()
        .modified()
        .unwrap();
    let quiet = replied.duration_since(written).unwrap_or_default();
    assert!(
        quiet >= Duration::from_millis(1300),
        "a user note was answered after only {quiet:?} (settle is 1.5 s)"
    );

    // Obsidian-style autosave: the note is rewritten every 300 ms for 3 s,
    // growing each time. It must not be answered while it changes, and
    // must be answered once, with the final text.
    let rel = "Inbox/autosave.md";
    let mut text = String::from("I am typing");
    let start = Instant::now();
    let mut last_write = SystemTime::now();
    while start.elapsed() < Duration::from_secs(3) {
        text.push_str(" more");
        v.write(rel, &inbound("echo", &text, ""));
        last_write = SystemTime::now();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !v.exists(&reply_of(rel)),
            "answered while still being edited (after {:?})\n{}",
            start.elapsed(),
            s.log()
        );
    }
    s.answered(&v, rel, 20.0);
    let replied = fs::metadata(v.p(&reply_of(rel)))
        .unwrap()
        .modified()
        .unwrap();
    let quiet = replied.duration_since(last_write).unwrap_or_default();
    assert!(
        quiet >= Duration::from_millis(1300),
        "answered only {quiet:?} after the last save (settle is 1.5 s)"
    );
    assert_eq!(v.body(&reply_of(rel)).trim(), format!("echo: {text}"));

    // Exactly once: nothing more happens over the next seconds.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(v.field(rel, "status").as_deref(), Some("handled"));
    assert_eq!(v.field(rel, "attempts").as_deref(), Some("1"));
    assert_eq!(
        v.field("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("2")
    );
    assert!(s.still_running());
}

/// A note still being typed when `serve` starts waits for the settle
/// window like any other, and one that a crash left `working` moments
/// before is still recovered once it is quiet.
#[test]
fn the_start_up_scan_waits_for_the_settle_window_and_still_recovers() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    v.write("Inbox/typing.md", &inbound("echo", "half a thou", ""));
    v.write(
        "Inbox/crashed.md",
        &inbound("echo", "cut short", "status: working\nattempts: 1\n"),
    );
    let s = Served::start(&v, 4000);
    s.started();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !v.exists(&reply_of("Inbox/typing.md")),
        "a note written just before the start was answered at once:\n{}",
        s.log()
    );
    // The user finishes the sentence.
    v.write(
        "Inbox/typing.md",
        &inbound("echo", "half a thought, now finished", ""),
    );
    s.answered(&v, "Inbox/typing.md", 30.0);
    s.answered(&v, "Inbox/crashed.md", 30.0);
    assert_eq!(
        v.body(&reply_of("Inbox/typing.md")).trim(),
        "echo: half a thought, now finished"
    );
    assert_eq!(v.field("Inbox/typing.md", "attempts").as_deref(), Some("1"));
    // Recovered: its second start, and answered once.
    assert_eq!(
        v.field("Inbox/crashed.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.field("Inbox/crashed.md", "attempts").as_deref(),
        Some("2")
    );
    assert_eq!(
        v.field("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("2")
    );
}

/// A `working` note the start-up scan deferred stays a recovery even when
/// a rescan (here: a new folder) reads it before its settle timer fires.
#[test]
fn a_deferred_crashed_note_read_by_a_rescan_is_still_recovered() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    v.write(
        "Inbox/crashed.md",
        &inbound("echo", "cut short", "status: working\nattempts: 1\n"),
    );
    // Older than the settle window by the time the rescan comes, but not
    // at the start: the start defers it and sets a 2 s timer.
    std::thread::sleep(Duration::from_millis(1200));
    let s = Served::start(&v, 2000);
    s.started();
    std::thread::sleep(Duration::from_millis(1000));
    // A new folder: the watcher rescans the whole vault at once.
    v.write("Later/new.md", "just a note\n");
    s.answered(&v, "Inbox/crashed.md", 30.0);
    assert_eq!(
        v.field("Inbox/crashed.md", "attempts").as_deref(),
        Some("2")
    );
}

#[test]
fn settle_window_applies_in_new_directories() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    let s = Served::start(&v, 1500);
    s.ready(&v);
    // mkdir, then the note at once: the directory scan must not read it
    // before it has been quiet for the settle window either.
    let written = SystemTime::now();
    fs::create_dir_all(v.p("New/deeper")).unwrap();
    v.write("New/deeper/n.md", &inbound("echo", "in a new dir", ""));
    v.write("New/n.md", &inbound("echo", "next to it", ""));
    s.answered(&v, "New/deeper/n.md", 20.0);
    s.answered(&v, "New/n.md", 20.0);
    for rel in ["New/deeper/n.md", "New/n.md"] {
        let replied = fs::metadata(v.p(&reply_of(rel)))
            .unwrap()
            .modified()
            .unwrap();
        let quiet = replied.duration_since(written).unwrap_or_default();
        assert!(
            quiet >= Duration::from_millis(1300),
            "{rel} was answered after only {quiet:?} (settle is 1.5 s)"
        );
    }
}

#[test]
fn directories_moved_or_renamed_into_place() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    fs::create_dir_all(v.p("Before/sub")).unwrap();
    let s = Served::start(&v, 0);
    s.ready(&v);
    // A folder prepared elsewhere on the same file system, moved in.
    let outside = tempfile::tempdir_in(v.path().parent().unwrap()).unwrap();
    fs::create_dir_all(outside.path().join("Moved/sub")).unwrap();
    fs::write(
        outside.path().join("Moved/sub/m.md"),
        inbound("echo", "moved in", ""),
    )
    .unwrap();
    fs::rename(outside.path().join("Moved"), v.p("Moved")).unwrap();
    s.answered(&v, "Moved/sub/m.md", 20.0);
    // A note written later into the moved-in folder.
    v.write("Moved/sub/later.md", &inbound("echo", "later", ""));
    s.answered(&v, "Moved/sub/later.md", 20.0);
    // A folder of the vault renamed while serving, then written into.
    fs::rename(v.p("Before"), v.p("After")).unwrap();
    v.write("After/sub/r.md", &inbound("echo", "renamed dir", ""));
    s.answered(&v, "After/sub/r.md", 20.0);
    assert_eq!(v.body("After/sub/r.reply.md").trim(), "echo: renamed dir");
}

#[test]
fn cli_sender_skips_the_settle_window() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    // The folders exist already: the notes arrive as watcher events.
    fs::create_dir_all(v.p("Inbox/echo")).unwrap();
    // A long settle so "without waiting" is unmistakable.
    let s = Served::start(&v, 8000);
    s.ready(&v);

    // As `vaultrunner send` writes it: atomically, with `sender: cli`.
    let t0 = Instant::now();
    v.write_atomic("Inbox/sent.md", &inbound("echo", "quick", "sender: cli\n"));
    s.answered(&v, "Inbox/sent.md", 20.0);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a `sender: cli` note waited {took:?} (settle is 8 s)"
    );

    // The real `send` command.
    let t0 = Instant::now();
    let out = run_bin(
        &["send", v.path().to_str().unwrap(), "echo", "via send"],
        20.0,
    );
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rel = format!("{printed}.md");
    assert!(v.exists(&rel), "send printed {printed:?}");
    s.answered(&v, &rel, 20.0);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a sent note waited {took:?} (settle is 8 s)"
    );
    assert_eq!(v.body(&reply_of(&rel)).trim(), "echo: via send");

    // Into a folder that does not exist yet.
    let t0 = Instant::now();
    v.write_atomic(
        "Fresh/sent.md",
        &inbound("echo", "new dir", "sender: cli\n"),
    );
    s.answered(&v, "Fresh/sent.md", 20.0);
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "a `sender: cli` note in a new folder waited {:?} (settle is 8 s)",
        t0.elapsed()
    );

    // A user-written note in the same vault does wait.
    let t0 = Instant::now();
    v.write("Inbox/user.md", &inbound("echo", "typed", ""));
    s.answered(&v, "Inbox/user.md", 30.0);
    assert!(
        t0.elapsed() >= Duration::from_millis(7500),
        "a user note was answered after {:?} (settle is 8 s)",
        t0.elapsed()
    );
}

#[test]
fn no_loops_after_replies() {
    let v = TestVault::new();
    let aux = tempfile::tempdir().unwrap();
    v.agent("echo", "backend: echo\n");
    v.agent("multi", "backend: echo\nmode: multi-threaded\n");
    v.agent("shout", "backend: command\ncommand: [tr, a-z, A-Z]\n");
    // A command agent that edits a note of its own in the vault each turn
    // (something real tools do): its write is an external change.
    let sc = script(
        aux.path(),
        "scribe.sh",
        "cat > /dev/null\necho \"note $VAULTRUNNER_THREAD\" > \"$VAULTRUNNER_VAULT/scribbles.md\"\necho written",
    );
    v.agent(
        "scribe",
        &format!("backend: command\ncommand: [sh, \"{}\"]\n", sc.display()),
    );
    let s = Served::start(&v, 300);
    s.ready(&v);

    let msgs = [
        ("Inbox/e1.md", "echo", "one", ""),
        ("Inbox/e2.md", "echo", "two", ""),
        ("Inbox/e3.md", "echo", "three", "sender: cli\n"),
        ("Inbox/s1.md", "echo", "topic", "subject: Weekly Report\n"),
        ("Inbox/m1.md", "multi", "a", ""),
        ("Inbox/m2.md", "multi", "b", ""),
        ("Inbox/t1.md", "shout", "loud", ""),
        ("Inbox/t2.md", "shout", "louder", ""),
        ("Inbox/w1.md", "scribe", "write", ""),
    ];
    for (rel, agent, body, extra) in msgs {
        v.write(rel, &inbound(agent, body, extra));
    }
    for (rel, ..) in msgs {
        s.answered(&v, rel, 30.0);
    }
    assert_eq!(v.body("Inbox/t2.reply.md").trim(), "LOUDER");
    assert_eq!(v.body("Inbox/w1.reply.md").trim(), "written");

    // Settle margin, then: nothing in the vault changes any more.
    std::thread::sleep(Duration::from_millis(800));
    let before = v.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    let after = v.snapshot();
    assert_eq!(
        before,
        after,
        "files changed after the replies (a write loop?)\n--- serve log ---\n{}",
        s.log()
    );

    // Each thread counted each of its messages once.
    let mut per_thread: BTreeMap<String, usize> = BTreeMap::new();
    for (rel, ..) in msgs {
        assert_eq!(v.field(rel, "status").as_deref(), Some("handled"), "{rel}");
        assert_eq!(v.field(rel, "attempts").as_deref(), Some("1"), "{rel}");
        let t = v.field(rel, "thread").unwrap();
        let t = t
            .trim_start_matches("[[")
            .trim_end_matches("]]")
            .to_string();
        *per_thread.entry(t).or_default() += 1;
    }
    assert!(per_thread.contains_key("Threads/echo/echo--weekly-report"));
    for (t, n) in &per_thread {
        let rel = format!("{t}.md");
        assert_eq!(
            v.field(&rel, "turn_count").as_deref(),
            Some(n.to_string().as_str()),
            "{rel}"
        );
        assert_eq!(v.field(&rel, "status").as_deref(), Some("ok"), "{rel}");
    }
    // Multi-threaded: one thread per message.
    assert_eq!(
        per_thread
            .keys()
            .filter(|k| k.starts_with("Threads/multi/"))
            .count(),
        2
    );

    // The user opens a handled note and saves it unchanged (new mtime), and
    // edits a thread's body: neither starts a turn or rewrites anything.
    let e1 = v.read("Inbox/e1.md");
    v.write("Inbox/e1.md", &e1);
    let thread = v.read("Threads/echo/echo.md");
    v.write(
        "Threads/echo/echo.md",
        &format!("{thread}\nContext from the user.\n"),
    );
    sentinel(&s, &v, "after-touch");
    std::thread::sleep(Duration::from_millis(800));
    let before = v.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(before, v.snapshot(), "files changed after a no-op save");
    assert_eq!(v.read("Inbox/e1.md"), e1);
    assert_eq!(v.field("Inbox/e1.md", "attempts").as_deref(), Some("1"));
    assert_eq!(
        v.field("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("3")
    );
    assert!(
        v.body("Threads/echo/echo.md")
            .contains("Context from the user.")
    );
}

#[test]
fn definitions_hot_reload() {
    let v = TestVault::new();
    let mut s = Served::start(&v, 0);
    s.ready(&v);

    // A message for an agent that does not exist yet waits...
    v.write("Inbox/late.md", &inbound("late", "are you there", ""));
    sentinel(&s, &v, "s1");
    std::thread::sleep(Duration::from_millis(500));
    assert_waiting(&v, "Inbox/late.md", &s);
    // ...and is answered once the definition is added.
    v.agent("late", "backend: echo\n");
    s.answered(&v, "Inbox/late.md", 20.0);
    assert_eq!(v.body("Inbox/late.reply.md").trim(), "echo: are you there");

    // Editing a definition: the next message uses the new one.
    v.agent("cmd", "backend: command\ncommand: [sh, -c, \"echo one\"]\n");
    v.write("Inbox/c1.md", &inbound("cmd", "x", ""));
    s.answered(&v, "Inbox/c1.md", 20.0);
    assert_eq!(v.body("Inbox/c1.reply.md").trim(), "one");
    v.agent("cmd", "backend: command\ncommand: [sh, -c, \"echo two\"]\n");
    v.write("Inbox/c2.md", &inbound("cmd", "x", ""));
    s.answered(&v, "Inbox/c2.md", 20.0);
    assert_eq!(v.body("Inbox/c2.reply.md").trim(), "two");

    // Disabled: new messages wait; enabled again: they run.
    v.agent(
        "cmd",
        "backend: command\ncommand: [sh, -c, \"echo two\"]\nenabled: false\n",
    );
    v.write("Inbox/c3.md", &inbound("cmd", "x", ""));
    sentinel(&s, &v, "s2");
    std::thread::sleep(Duration::from_millis(500));
    assert_waiting(&v, "Inbox/c3.md", &s);
    v.agent(
        "cmd",
        "backend: command\ncommand: [sh, -c, \"echo three\"]\nenabled: true\n",
    );
    s.answered(&v, "Inbox/c3.md", 20.0);
    assert_eq!(v.body("Inbox/c3.reply.md").trim(), "three");

    // Deleted: messages wait; restored: they run.
    fs::remove_file(v.p("Agents/cmd.md")).unwrap();
    v.write("Inbox/c4.md", &inbound("cmd", "x", ""));
    sentinel(&s, &v, "s3");
    std::thread::sleep(Duration::from_millis(500));
    assert_waiting(&v, "Inbox/c4.md", &s);
    v.agent(
        "cmd",
        "backend: command\ncommand: [sh, -c, \"echo four\"]\n",
    );
    s.answered(&v, "Inbox/c4.md", 20.0);
    assert_eq!(v.body("Inbox/c4.reply.md").trim(), "four");

    // Broken YAML in a new definition and in an existing one: those agents
    // wait, the others keep answering, serve keeps running.
    v.write(
        "Agents/broken.md",
        "---\ntags: [agent/definition\nname: broken\nbackend: echo\n---\n",
    );
    v.write(
        "Agents/cmd.md",
        "---\ntags: [agent/definition]\nbackend: command\ncommand: [sh, -c, \"echo five\"\n---\n",
    );
    // Valid YAML, invalid field: disabled with an error.
    v.agent("badfield", "backend: echo\ntimeout: soon\n");
    v.write("Inbox/b1.md", &inbound("broken", "x", ""));
    v.write("Inbox/c5.md", &inbound("cmd", "x", ""));
    v.write("Inbox/f1.md", &inbound("badfield", "x", ""));
    v.write("Inbox/o1.md", &inbound("ok", "still here", ""));
    v.write("Inbox/l1.md", &inbound("late", "me too", ""));
    s.answered(&v, "Inbox/o1.md", 20.0);
    s.answered(&v, "Inbox/l1.md", 20.0);
    assert_eq!(v.body("Inbox/o1.reply.md").trim(), "echo: still here");
    sentinel(&s, &v, "s4");
    std::thread::sleep(Duration::from_millis(500));
    for rel in ["Inbox/b1.md", "Inbox/c5.md", "Inbox/f1.md"] {
        assert_waiting(&v, rel, &s);
    }
    assert!(s.still_running(), "serve stopped:\n{}", s.log());
    // Fixing the broken definition lets its messages run.
    v.agent(
        "cmd",
        "backend: command\ncommand: [sh, -c, \"echo fixed\"]\n",
    );
    s.answered(&v, "Inbox/c5.md", 20.0);
    assert_eq!(v.body("Inbox/c5.reply.md").trim(), "fixed");
}

#[test]
fn a_second_instance_is_refused() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    let mut s = Served::start(&v, 0);
    s.ready(&v);
    let vault = v.path().to_str().unwrap();
    for args in [
        vec!["serve", vault, "--settle-ms", "0", "--listen", "none"],
        vec!["process", vault],
    ] {
        let t0 = Instant::now();
        let out = run_bin(&args, 15.0);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
        assert!(
            err.contains("already running"),
            "{args:?}: stderr does not say \"already running\": {err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    // The first one is unaffected.
    assert!(s.still_running());
    v.write("Inbox/after.md", &inbound("echo", "still served", ""));
    s.answered(&v, "Inbox/after.md", 20.0);
}

#[test]
fn sigterm_stops_a_running_turn_without_orphans() {
    let v = TestVault::new();
    let aux = tempfile::tempdir().unwrap();
    let a = aux.path().display().to_string();
    let sc = script(
        aux.path(),
        "slow.sh",
        &format!(
            "cat > /dev/null\n\
             if [ -e '{a}/ran' ]; then echo finished; exit 0; fi\n\
             touch '{a}/ran'\n\
             echo $$ > '{a}/sh.tmp' && mv '{a}/sh.tmp' '{a}/sh.pid'\n\
             sleep 30 &\n\
             echo $! > '{a}/sleep.tmp' && mv '{a}/sleep.tmp' '{a}/sleep.pid'\n\
             wait"
        ),
    );
    v.agent(
        "slow",
        &format!(
            "backend: command\ncommand: [sh, \"{}\"]\ntimeout: 5m\n",
            sc.display()
        ),
    );
    let mut s = Served::start(&v, 0);
    s.ready(&v);
    v.write("Inbox/long.md", &inbound("slow", "take your time", ""));
    let sh = read_pid(&aux.path().join("sh.pid"), 20.0);
    let sleep = read_pid(&aux.path().join("sleep.pid"), 20.0);
    assert!(alive(sh) && alive(sleep));
    assert_eq!(
        v.field("Inbox/long.md", "status").as_deref(),
        Some("working")
    );

    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(10.0);
    assert!(
        st.is_some(),
        "serve did not exit within 10 s of SIGTERM\n{}",
        s.log()
    );
    eprintln!("serve exited after {:?} with {:?}", t0.elapsed(), st);
    assert!(
        wait_until(2.0, || !alive(sh) && !alive(sleep)),
        "turn processes survived shutdown: sh {} sleep {}",
        alive(sh),
        alive(sleep)
    );
    let status = v.field("Inbox/long.md", "status");
    assert!(
        matches!(status.as_deref(), None | Some("pending") | Some("working")),
        "after shutdown the message is {status:?}"
    );
    assert!(!v.exists("Inbox/long.reply.md"));

    // The next run answers it, once.
    let out = run_bin(&["process", v.path().to_str().unwrap()], 60.0);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        v.field("Inbox/long.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.field("Inbox/long.reply.md", "status").as_deref(),
        Some("ok")
    );
    assert_eq!(v.body("Inbox/long.reply.md").trim(), "finished");
    let inbox: Vec<_> = fs::read_dir(v.p("Inbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut inbox = inbox;
    inbox.sort();
    assert_eq!(inbox, vec!["long.md", "long.reply.md"]);
    assert_eq!(
        v.field("Threads/slow/slow.md", "turn_count").as_deref(),
        Some("1")
    );
    eprintln!(
        "attempts after shutdown + process: {:?}",
        v.field("Inbox/long.md", "attempts")
    );
}

#[test]
fn turn_timeouts_kill_children_and_grandchildren() {
    let v = TestVault::new();
    let aux = tempfile::tempdir().unwrap();
    let a = aux.path().display().to_string();
    let pidfile = |n: &str| format!("echo $$ > '{a}/{n}.tmp' && mv '{a}/{n}.tmp' '{a}/{n}.pid'");
    let bgpid = |n: &str| format!("echo $! > '{a}/{n}.tmp' && mv '{a}/{n}.tmp' '{a}/{n}.pid'");
    // (agent, script, must the reply be a timeout error?)
    let cases = [
        // The turn is the sleep itself.
        (
            "plain",
            format!("cat > /dev/null\n{}\nexec sleep 30", pidfile("plain")),
            true,
        ),
        // A grandchild, and the script waits for it.
        (
            "grand",
            format!(
                "cat > /dev/null\n{}\nsleep 1000 &\n{}\nwait",
                pidfile("grand-sh"),
                bgpid("grand")
            ),
            true,
        ),
        // Everything ignores TERM: only KILL (after the grace) ends it.
        (
            "stubborn",
            format!(
                "trap '' TERM\ncat > /dev/null\n{}\nsleep 1000 &\n{}\nwait",
                pidfile("stubborn-sh"),
                bgpid("stubborn")
            ),
            true,
        ),
        // The script exits but a grandchild keeps its stdout open.
        (
            "holder",
            format!(
                "cat > /dev/null\n{}\nsleep 1000 &\n{}\necho partial",
                pidfile("holder-sh"),
                bgpid("holder")
            ),
            false,
        ),
        // The script exits at once, leaving a detached grandchild behind:
        // the turn succeeds and the grandchild does not outlive it.
        (
            "leaver",
            format!(
                "cat > /dev/null\n{}\nsleep 1000 > /dev/null 2>&1 &\n{}\necho done",
                pidfile("leaver-sh"),
                bgpid("leaver")
            ),
            false,
        ),
    ];
    for (name, body, _) in &cases {
        let sc = script(aux.path(), &format!("{name}.sh"), body);
        v.agent(
            name,
            &format!(
                "backend: command\ncommand: [sh, \"{}\"]\ntimeout: 1s\n",
                sc.display()
            ),
        );
    }
    let s = Served::start_args(&v, &["--settle-ms", "0", "--jobs", "8"]);
    s.ready(&v);
    let t0 = Instant::now();
    for (name, ..) in &cases {
        v.write(&format!("Inbox/{name}.md"), &inbound(name, "go", ""));
    }
    let mut pids = Vec::new();
    for (name, ..) in &cases {
        let tag = if *name == "plain" {
            "plain".to_string()
        } else {
            format!("{name}-sh")
        };
        pids.push((
            tag.clone(),
            read_pid(&aux.path().join(format!("{tag}.pid")), 20.0),
        ));
        if *name != "plain" {
            pids.push((
                name.to_string(),
                read_pid(&aux.path().join(format!("{name}.pid")), 20.0),
            ));
        }
    }
    for (name, _, must_time_out) in &cases {
        let rel = format!("Inbox/{name}.md");
        s.answered(&v, &rel, 30.0);
        let reply = reply_of(&rel);
        let status = v.field(&reply, "status");
        let body = v.body(&reply);
        eprintln!(
            "{name}: {status:?} after {:?}: {}",
            t0.elapsed(),
            body.trim()
        );
        if *must_time_out {
            assert_eq!(status.as_deref(), Some("error"), "{name}: {body}");
            let lower = body.to_lowercase();
            assert!(
                lower.contains("timed out") || lower.contains("timeout"),
                "{name}: the reply does not mention the timeout: {body}"
            );
            assert_eq!(v.field(&rel, "status").as_deref(), Some("error"));
        }
        if *name == "leaver" {
            assert_eq!(status.as_deref(), Some("ok"), "{body}");
            assert_eq!(body.trim(), "done");
        }
    }
    // Timeouts are 1 s plus a 3 s TERM→KILL grace at most.
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "timeouts took {:?}",
        t0.elapsed()
    );
    let survivors: Vec<_> = pids.iter().filter(|(_, p)| alive(*p)).cloned().collect();
    let ok = wait_until(3.0, || pids.iter().all(|(_, p)| !alive(*p)));
    assert!(ok, "processes outlived their turn: {survivors:?}");
    // Each message answered exactly once.
    for (name, ..) in &cases {
        assert_eq!(
            v.field(&format!("Inbox/{name}.md"), "attempts").as_deref(),
            Some("1")
        );
    }
}

#[test]
fn editor_save_styles_and_ignored_paths() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    // Ignored copies that exist before start (found by the start-up scan).
    let ignored_before = [
        ".obsidian/early.md",
        ".trash/early.md",
        "Inbox/early.sync-conflict-20261121-120000-ABCDEF.md",
        "Inbox/early (conflicted copy 2026-11-21).md",
    ];
    for rel in ignored_before {
        v.write(rel, &inbound("echo", "must not run", ""));
    }
    // Notes being edited, still drafts.
    v.write("Inbox/vim.md", &inbound("echo", "draft", "status: draft\n"));
    v.write(
        "Inbox/trunc.md",
        &inbound("echo", "draft", "status: draft\n"),
    );
    let s = Served::start(&v, 500);
    s.ready(&v);

    // Vim: swap file, writability probe `4913`, original renamed to `x.md~`,
    // new file written.
    v.write("Inbox/.vim.md.swp", "swap");
    v.write("Inbox/4913", "");
    fs::remove_file(v.p("Inbox/4913")).unwrap();
    fs::rename(v.p("Inbox/vim.md"), v.p("Inbox/vim.md~")).unwrap();
    v.write("Inbox/vim.md", &inbound("echo", "saved by vim", ""));
    fs::remove_file(v.p("Inbox/vim.md~")).unwrap();

    // Truncate, pause, then write (a watcher can see an empty file).
    {
        let full = inbound("echo", "truncated then written", "");
        let (head, tail) = full.split_at(full.len() / 2);
        let mut f = fs::File::create(v.p("Inbox/trunc.md")).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(head.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(tail.as_bytes()).unwrap();
    }

    // Syncthing: a dot temp file, renamed into place.
    v.write(
        "Inbox/.syncthing.synced.md.tmp",
        &inbound("echo", "synced in", ""),
    );
    fs::rename(
        v.p("Inbox/.syncthing.synced.md.tmp"),
        v.p("Inbox/synced.md"),
    )
    .unwrap();

    // Ignored copies written while serving.
    let ignored_after = [
        ".obsidian/late.md",
        ".obsidian/plugins/x/late.md",
        ".trash/late.md",
        "Inbox/late.sync-conflict-20261121-130000-ABCDEF.md",
        "Inbox/late (conflicted copy 2026-11-21).md",
        "Inbox/late.md~",
    ];
    for rel in ignored_after {
        v.write(rel, &inbound("echo", "must not run", ""));
    }

    for rel in ["Inbox/vim.md", "Inbox/trunc.md", "Inbox/synced.md"] {
        s.answered(&v, rel, 20.0);
    }
    assert_eq!(v.body("Inbox/vim.reply.md").trim(), "echo: saved by vim");
    assert_eq!(
        v.body("Inbox/trunc.reply.md").trim(),
        "echo: truncated then written"
    );
    assert_eq!(v.body("Inbox/synced.reply.md").trim(), "echo: synced in");

    // Let any late event settle, then check exactly-once and untouched.
    sentinel(&s, &v, "done");
    std::thread::sleep(Duration::from_millis(1200));
    for rel in ["Inbox/vim.md", "Inbox/trunc.md", "Inbox/synced.md"] {
        assert_eq!(v.field(rel, "status").as_deref(), Some("handled"), "{rel}");
        assert_eq!(v.field(rel, "attempts").as_deref(), Some("1"), "{rel}");
    }
    assert_eq!(
        v.field("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("3")
    );
    for rel in ignored_before.iter().chain(ignored_after.iter()) {
        assert_eq!(
            v.read(rel),
            inbound("echo", "must not run", ""),
            "{rel} was modified"
        );
    }
    let mut inbox: Vec<String> = v
        .replies()
        .into_iter()
        .filter(|r| r.starts_with("Inbox/") || r.starts_with('.'))
        .collect();
    inbox.sort();
    assert_eq!(
        inbox,
        vec![
            "Inbox/synced.reply.md",
            "Inbox/trunc.reply.md",
            "Inbox/vim.reply.md"
        ]
    );
    // No temp files of ours anywhere.
    for f in walk(v.path()) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !(name.starts_with(".vaultrunner-") && name.ends_with(".tmp")),
            "temp file left: {}",
            f.display()
        );
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = s.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn idle_serve_uses_no_cpu() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n");
    for i in 0..200 {
        v.write(
            &format!("Notes/d{}/n{i}.md", i % 20),
            &format!("# Note {i}\n\nOrdinary text.\n"),
        );
    }
    v.write("Inbox/m.md", &inbound("echo", "hi", ""));
    // A job that is not due for months keeps the cron trigger armed.
    v.write(
        "Jobs/yearly.md",
        "---\ntags: [agent/job]\nagent: echo\ncron: \"0 0 1 1 *\"\ntz: UTC\n---\nHappy new year\n",
    );
    // Everything `serve` runs: watcher, dispatcher, cron, HTTP.
    let s = Served::start_args(&v, &["--settle-ms", "500", "--listen", "127.0.0.1:0"]);
    s.ready(&v);
    assert!(
        s.log().contains("HTTP API on"),
        "HTTP did not start:\n{}",
        s.log()
    );
    s.answered(&v, "Inbox/m.md", 20.0);
    std::thread::sleep(Duration::from_millis(1000));
    let pid = s.pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    assert!(
        used <= 2,
        "an idle serve used {used} clock ticks of CPU in 3 s (polling?)"
    );
}
