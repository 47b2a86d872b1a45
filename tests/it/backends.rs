//! End-to-end tests of the model backends (SPEC §4) through the real
//! binary: `vaultrunner process VAULT` on temp vaults, with fakes that speak
//! the real protocols — `tests/fakes/{claude,codex,gemini}` (Python, stdlib
//! only) and in-process HTTP servers for the OpenAI-compatible and
//! Anthropic APIs. Assertions are on reply notes, thread notes and the
//! fakes' logs (argv, stdin, environment, pids; HTTP requests and headers).
//!
//! Every helper lives in this file (tests/common belongs to other suites).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serde_yaml::Mapping;

const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");

fn fakes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fakes")
}

fn fake(name: &str) -> String {
    fakes_dir().join(name).display().to_string()
}

// ---------------------------------------------------------------------------
// A temp vault with a fake log and a fake state directory.

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("vault");
        let state = base.join("state");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        Env {
            log: base.join("fake.log"),
            _tmp: tmp,
            root,
            state,
        }
    }

    fn root_str(&self) -> &str {
        self.root.to_str().unwrap()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }

    /// `Agents/<name>.md` with `extra` raw YAML lines (each ending in `\n`).
    fn agent(&self, name: &str, extra: &str, body: &str) {
        self.write(
            &format!("Agents/{name}.md"),
            &format!("---\ntags:\n  - agent/definition\nname: {name}\n{extra}---\n{body}"),
        );
    }

    /// An inbound message at `Inbox/<stem>.md`.
    fn message(&self, stem: &str, agent: &str, body: &str) {
        self.write(
            &format!("Inbox/{stem}.md"),
            &format!(
                "---\ntags:\n  - agent/message\n  - agent/message/inbound\nagent: {agent}\n---\n{body}\n"
            ),
        );
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in crate::common::SCRUB_ENV {
            cmd.env_remove(k);
        }
        cmd.env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("FAKE_LOG", &self.log)
            .env("FAKE_STATE", &self.state)
            .env("VAULTRUNNER_LOG", "info");
        cmd
    }

    /// `vaultrunner process VAULT` with extra environment; must exit 0.
    fn process_with(&self, env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(&["process", self.root_str()]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run vaultrunner");
        assert!(
            out.status.success(),
            "vaultrunner process failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn process(&self) -> Output {
        self.process_with(&[])
    }

    fn read(&self, rel: &str) -> String {
        let p = self.root.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).exists()
    }

    fn fm(&self, rel: &str) -> Mapping {
        front_matter(&self.read(rel))
    }

    fn get(&self, rel: &str, key: &str) -> Option<String> {
        scalar(&self.fm(rel), key)
    }

    fn body(&self, rel: &str) -> String {
        split_note(&self.read(rel)).1.to_string()
    }

    /// The reply to `Inbox/<stem>.md`: (status, body).
    fn reply(&self, stem: &str) -> (String, String) {
        let rel = format!("Inbox/{stem}.reply.md");
        assert!(self.exists(&rel), "no reply note {rel}");
        let status = self.get(&rel, "status").unwrap_or_default();
        (status, self.body(&rel))
    }

    fn thread(&self, agent: &str) -> String {
        format!("Threads/{agent}/{agent}.md")
    }

    /// All lines of the fakes' log.
    fn log_lines(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return Vec::new();
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// The logged runs of one fake program.
    fn runs(&self, prog: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v["prog"] == prog)
            .collect()
    }

    /// The pids a run left behind: the fakes and their grandchildren.
    fn logged_pids(&self) -> Vec<i32> {
        self.log_lines()
            .iter()
            .filter_map(|v| v["pid"].as_i64())
            .map(|p| p as i32)
            .collect()
    }
}

fn split_note(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text.strip_prefix("---\n") else {
        return (None, text);
    };
    if let Some(i) = rest.find("\n---\n") {
        return (Some(&rest[..i + 1]), &rest[i + 5..]);
    }
    if let Some(fm) = rest.strip_suffix("\n---") {
        return (Some(fm), "");
    }
    (None, text)
}

fn front_matter(text: &str) -> Mapping {
    match split_note(text).0 {
        Some(fm) => serde_yaml::from_str(fm).unwrap_or_else(|e| panic!("yaml {fm:?}: {e}")),
        None => Mapping::new(),
    }
}

fn scalar(m: &Mapping, key: &str) -> Option<String> {
    match m.get(key)? {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn num(m: &Mapping, key: &str) -> f64 {
    scalar(m, key)
        .unwrap_or_else(|| panic!("missing {key} in {m:?}"))
        .parse()
        .unwrap()
}

/// argv strings of a logged run.
fn argv(run: &Value) -> Vec<String> {
    run["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The value following `flag` in argv.
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1).cloned())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Is `pid` a live process (not gone, not a zombie)?
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn assert_all_dead(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let live: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if live.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for p in &live {
                // SAFETY: cleaning up our own leftovers.
                unsafe {
                    libc::kill(*p, libc::SIGKILL);
                }
            }
            panic!("processes outlived the turn: {live:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn claude_agent(env: &Env, name: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: claude\nprogram: {}\nretry_base: 20ms\n{extra}",
            fake("claude")
        ),
        body,
    );
}

// ---------------------------------------------------------------------------
// claude

/// A backlog answered in one run: each turn's next message is claimed in
/// its end batch, and still resumes the session that turn stored.
#[test]
fn claude_backlog_resumes_the_session_turn_after_turn() {
    let env = Env::new();
    env.agent("cc", "backend: claude\n", "");
    for i in 1..=3 {
        env.message(&format!("m{i}"), "cc", &format!("message {i}"));
    }
    let path = format!(
        "{}:{}",
        fakes_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.process_with(&[("PATH", &path)]);
    let runs = env.runs("claude");
    assert_eq!(runs.len(), 3);
    let first = argv(&runs[0]);
    let sid = flag_value(&first, "--session-id").expect("a new session first");
    for (i, run) in runs.iter().enumerate().skip(1) {
        let a = argv(run);
        assert_eq!(
            flag_value(&a, "--resume").as_deref(),
            Some(sid.as_str()),
            "turn {i}: {a:?}"
        );
        assert!(
            run["stdin"]
                .as_str()
                .unwrap_or_default()
                .contains(&format!("message {}", i + 1)),
            "turns out of order: {run}"
        );
    }
    let thread = env.thread("cc");
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("3"));
    assert_eq!(env.get(&thread, "status").as_deref(), Some("ok"));
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    for i in 1..=3 {
        assert_eq!(env.reply(&format!("m{i}")).0, "ok");
        assert_eq!(
            env.get(&format!("Inbox/m{i}.md"), "attempts").as_deref(),
            Some("1")
        );
    }
}

#[test]
fn claude_session_created_then_resumed() {
    let env = Env::new();
    // Found on PATH under its default name.
    env.agent(
        "cc",
        "backend: claude\nmodel: opus-test\n",
        "You are terse.\n",
    );
    env.message("m1", "cc", "first message");
    let path = format!(
        "{}:{}",
        fakes_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // CLAUDECODE in the daemon's environment must not reach the child (the
    // real CLI refuses to start with it).
    env.process_with(&[("PATH", &path), ("CLAUDECODE", "1")]);

    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Hello from fake claude.\n\nAll done.");
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("handled"));

    let runs = env.runs("claude");
    assert_eq!(runs.len(), 1);
    let a = argv(&runs[0]);
    for f in ["-p", "--verbose"] {
        assert!(a.contains(&f.to_string()), "{f} missing: {a:?}");
    }
    assert_eq!(
        flag_value(&a, "--output-format").as_deref(),
        Some("stream-json")
    );
    assert_eq!(flag_value(&a, "--model").as_deref(), Some("opus-test"));
    // The definition body, then the delegation section (on by default).
    let sp = flag_value(&a, "--append-system-prompt").unwrap_or_default();
    assert!(
        sp.starts_with("You are terse.\n\n## Delegating to other agents\n"),
        "{sp}"
    );
    assert!(sp.contains("--reply-to cc"), "{sp}");
    assert!(!a.contains(&"--system-prompt".to_string()), "{a:?}");
    assert!(!a.contains(&"--resume".to_string()), "{a:?}");
    let sid = flag_value(&a, "--session-id").expect("--session-id on the first turn");
    assert!(is_uuid(&sid), "{sid}");
    assert_eq!(runs[0]["claudecode"], Value::Null, "CLAUDECODE leaked");
    // The prompt goes on stdin with the run-context header.
    let stdin = runs[0]["stdin"].as_str().unwrap();
    assert!(stdin.contains("first message"), "{stdin}");
    assert!(stdin.contains("agent: cc"), "{stdin}");
    let fenv = &runs[0]["env"];
    assert_eq!(fenv["VAULTRUNNER_AGENT"], "cc");
    assert_eq!(fenv["VAULTRUNNER_THREAD"], "Threads/cc/cc");
    assert_eq!(fenv["VAULTRUNNER_VAULT"], env.root_str());
    assert_eq!(runs[0]["cwd"], env.root_str());

    let thread = env.thread("cc");
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    assert_eq!(env.get(&thread, "status").as_deref(), Some("ok"));
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("1"));

    // Second message: the stored session is resumed.
    env.message("m2", "cc", "second message");
    env.process_with(&[("PATH", &path)]);
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok", "{body}");
    let runs = env.runs("claude");
    assert_eq!(runs.len(), 2);
    let a = argv(&runs[1]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(sid.as_str()));
    assert!(!a.contains(&"--session-id".to_string()), "{a:?}");
    assert_eq!(runs[1]["env"]["VAULTRUNNER_SESSION"], sid.as_str());
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("2"));

    // `reset` blanks the session: the next turn creates a new one.
    let out = env
        .command(&["reset", env.root_str(), "cc"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.message("m3", "cc", "third message");
    env.process_with(&[("PATH", &path)]);
    assert_eq!(env.reply("m3").0, "ok");
    let a = argv(&env.runs("claude")[2]);
    assert!(!a.contains(&"--resume".to_string()), "{a:?}");
    let fresh = flag_value(&a, "--session-id").expect("a fresh session after reset");
    assert_ne!(fresh, sid);
    assert_eq!(env.get(&thread, "session").as_deref(), Some(fresh.as_str()));
}

#[test]
fn claude_usage_accumulates_on_the_thread() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "one");
    env.process();
    let t = env.thread("cc");
    let fm = env.fm(&t);
    // input = input + cache creation + cache read of `result.usage`.
    assert_eq!(num(&fm, "input_tokens"), 117.0);
    assert_eq!(num(&fm, "output_tokens"), 38.0);
    assert!((num(&fm, "total_cost_usd") - 0.0125).abs() < 1e-9, "{fm:?}");

    env.message("m2", "cc", "two scenario=tool");
    env.process();
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok");
    assert_eq!(body.trim(), "The command printed hi3.");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 117.0 + 120.0);
    assert_eq!(num(&fm, "output_tokens"), 38.0 + 50.0);
    assert!((num(&fm, "total_cost_usd") - 0.0325).abs() < 1e-9, "{fm:?}");
    assert_eq!(scalar(&fm, "turn_count").as_deref(), Some("2"));
}

#[test]
fn claude_replace_mode_and_thread_body_in_system_prompt() {
    let env = Env::new();
    claude_agent(
        &env,
        "cc",
        "system_prompt_mode: replace\ndelegation_prompt: false\n",
        "You are a pirate.\n",
    );
    env.write(
        "Threads/cc/cc.md",
        "---\ntags:\n  - agent/thread\nagent: cc\n---\nThe treasure is buried at dawn.\n",
    );
    env.message("m1", "cc", "ahoy");
    env.process();
    assert_eq!(env.reply("m1").0, "ok");
    let a = argv(&env.runs("claude")[0]);
    assert_eq!(
        flag_value(&a, "--system-prompt").as_deref(),
        Some("You are a pirate.\n\nThe treasure is buried at dawn.")
    );
    assert!(!a.contains(&"--append-system-prompt".to_string()), "{a:?}");
    assert!(!a.contains(&"--model".to_string()), "{a:?}");
    // The user's thread body is left as it was.
    assert_eq!(
        env.body("Threads/cc/cc.md"),
        "The treasure is buried at dawn.\n"
    );
}

#[test]
fn claude_session_stored_only_when_echoed() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    // The CLI reports no session at all: nothing is stored.
    env.message("m1", "cc", "scenario=noecho");
    env.process();
    assert_eq!(env.reply("m1").0, "ok");
    let t = env.thread("cc");
    let s = env.get(&t, "session").unwrap_or_default();
    assert!(s.is_empty(), "stored a session nobody reported: {s}");

    // So the next turn creates one again (no --resume of a made-up id).
    env.message("m2", "cc", "scenario=fork");
    env.process();
    assert_eq!(env.reply("m2").0, "ok");
    let runs = env.runs("claude");
    let a = argv(&runs[1]);
    assert!(!a.contains(&"--resume".to_string()), "{a:?}");
    let asked = flag_value(&a, "--session-id").unwrap();
    // The CLI reported another id than the one asked for: that one is kept.
    let stored = env.get(&t, "session").unwrap();
    assert!(is_uuid(&stored));
    assert_ne!(stored, asked);

    env.message("m3", "cc", "three");
    env.process();
    assert_eq!(env.reply("m3").0, "ok");
    let a = argv(&env.runs("claude")[2]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(stored.as_str()));
}

#[test]
fn claude_stale_session_retried_once_fresh() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    let dead = "0badc0de-0000-4000-8000-000000000000";
    env.write(
        "Threads/cc/cc.md",
        &format!("---\ntags:\n  - agent/thread\nagent: cc\nsession: {dead}\n---\n"),
    );
    env.message("m1", "cc", "hello again");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    let runs = env.runs("claude");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        flag_value(&argv(&runs[0]), "--resume").as_deref(),
        Some(dead)
    );
    let fresh = flag_value(&argv(&runs[1]), "--session-id").expect("fresh session");
    assert!(!argv(&runs[1]).contains(&"--resume".to_string()));
    assert_eq!(
        env.get(&env.thread("cc"), "session").as_deref(),
        Some(fresh.as_str())
    );
}

#[test]
fn claude_noisy_stream_with_huge_lines() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=noisy");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{}", &body[..body.len().min(500)]);
    assert_eq!(body.trim(), "Survived the noise.");
}

#[test]
fn claude_auth_failure_is_an_error_reply() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=auth");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("Not logged in"), "{body}");
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("error"));
    assert!(
        env.get("Inbox/m1.md", "error")
            .unwrap_or_default()
            .contains("Not logged in")
    );
    // Permanent: one attempt.
    assert_eq!(env.runs("claude").len(), 1);
    assert_eq!(
        env.get(&env.thread("cc"), "status").as_deref(),
        Some("error")
    );
}

#[test]
fn claude_error_max_turns() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=max_turns");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(
        body.contains("error_max_turns") && body.contains("maximum number of turns"),
        "{body}"
    );
    assert_eq!(env.runs("claude").len(), 1);
}

#[test]
fn claude_transient_retried_until_success() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=overloaded_until:3");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Recovered on attempt 3.");
    assert_eq!(env.runs("claude").len(), 3);
}

#[test]
fn claude_transient_gives_up_after_three_attempts() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=overloaded");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("529 Overloaded"), "{body}");
    assert!(body.contains("3 attempts"), "{body}");
    assert_eq!(env.runs("claude").len(), 3);
}

#[test]
fn claude_transient_after_content_is_not_retried() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=overloaded_after_text");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("Overloaded"), "{body}");
    assert_eq!(env.runs("claude").len(), 1);
}

#[test]
fn claude_exit_without_result_reports_stderr() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=exit_noise");
    env.message("m2", "cc", "scenario=sigterm");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("status 3"), "{body}");
    assert!(body.contains("fake internal failure"), "{body}");
    let (status, body) = env.reply("m2");
    assert_eq!(status, "error");
    assert!(body.contains("SIGTERM"), "{body}");
    assert_eq!(env.runs("claude").len(), 2);
}

#[test]
fn claude_timeout_kills_the_process_group() {
    let env = Env::new();
    claude_agent(&env, "cc", "timeout: 1s\n", "");
    // The fake ignores SIGTERM (so KILL is needed) and leaves a `sleep`
    // grandchild in its group.
    env.message("m1", "cc", "scenario=hang_stubborn");
    let started = Instant::now();
    env.process();
    let took = started.elapsed();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("timed out"), "{body}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let pids = env.logged_pids();
    assert_eq!(pids.len(), 2, "fake and grandchild: {:?}", env.log_lines());
    assert_all_dead(&pids);
    // A timeout is not retried.
    assert_eq!(env.runs("claude").len(), 1);
}

#[test]
fn claude_stall_timeout_kills_the_process_group() {
    let env = Env::new();
    claude_agent(&env, "cc", "timeout: 60s\nstall_timeout: 1s\n", "");
    env.message("m1", "cc", "scenario=stall");
    let started = Instant::now();
    env.process();
    let took = started.elapsed();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("stall_timeout"), "{body}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let pids = env.logged_pids();
    assert_eq!(pids.len(), 2, "{:?}", env.log_lines());
    assert_all_dead(&pids);
}

#[test]
fn claude_grandchild_does_not_outlive_a_finished_turn() {
    let env = Env::new();
    claude_agent(&env, "cc", "", "");
    env.message("m1", "cc", "scenario=background");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    let pids = env.logged_pids();
    assert_eq!(pids.len(), 2, "{:?}", env.log_lines());
    assert_all_dead(&pids);
}

#[test]
fn claude_missing_binary_then_fixed() {
    let env = Env::new();
    env.agent("cc", "backend: claude\nprogram: /nonexistent/claude\n", "");
    env.message("m1", "cc", "anyone there?");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("not found"), "{body}");
    // The agent stays enabled: fixing the definition is enough.
    claude_agent(&env, "cc", "", "");
    env.message("m2", "cc", "now?");
    env.process();
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok", "{body}");
    // The failed message is not run again.
    assert_eq!(env.runs("claude").len(), 1);
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("error"));
}

// ---------------------------------------------------------------------------
// codex

fn codex_agent(env: &Env, name: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: codex\nprogram: {}\nretry_base: 20ms\n{extra}",
            fake("codex")
        ),
        body,
    );
}

#[test]
fn codex_success_then_resume() {
    let env = Env::new();
    codex_agent(&env, "cx", "model: gpt-5-codex\n", "You are terse.\n");
    env.message("m1", "cx", "list the files");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    let runs = env.runs("codex");
    assert_eq!(runs.len(), 1);
    let a = argv(&runs[0]);
    assert_eq!(&a[..2], ["exec", "--json"]);
    assert_eq!(flag_value(&a, "--model").as_deref(), Some("gpt-5-codex"));
    assert!(!a.contains(&"resume".to_string()), "{a:?}");
    let prompt = a.last().unwrap();
    assert!(prompt.contains("list the files"), "{prompt}");
    assert!(
        prompt.contains("<system>\nYou are terse.\n</system>"),
        "{prompt}"
    );
    // Stdin is closed, not an open pipe.
    assert_eq!(runs[0]["stdin_kind"], "devnull");
    assert_eq!(runs[0]["stdin"], "");

    let t = env.thread("cx");
    let tid = env.get(&t, "session").expect("thread id stored");
    assert!(is_uuid(&tid));
    assert_eq!(body.trim(), format!("Codex turn 1 on thread {tid}."));
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 24763.0);
    assert_eq!(num(&fm, "output_tokens"), 122.0);

    env.message("m2", "cx", "and again");
    env.process();
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), format!("Codex turn 2 on thread {tid}."));
    let a = argv(&env.runs("codex")[1]);
    let i = a.iter().position(|x| x == "resume").expect("resume");
    assert_eq!(a[i + 1], tid);
    assert!(a[i + 2].contains("and again"));
    assert_eq!(num(&env.fm(&t), "input_tokens"), 2.0 * 24763.0);
}

#[test]
fn codex_turn_failed_is_an_error() {
    let env = Env::new();
    codex_agent(&env, "cx", "", "");
    env.message("m1", "cx", "scenario=fail");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("401 Unauthorized"), "{body}");
    assert_eq!(env.runs("codex").len(), 1);
}

#[test]
fn codex_transient_turn_failed_is_retried() {
    let env = Env::new();
    codex_agent(&env, "cx", "", "");
    env.message("m1", "cx", "scenario=overloaded");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("529 Overloaded"), "{body}");
    assert_eq!(env.runs("codex").len(), 3);
}

#[test]
fn codex_reconnect_noise_is_not_a_failure() {
    let env = Env::new();
    codex_agent(&env, "cx", "", "");
    env.message("m1", "cx", "scenario=retry_noise");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert!(body.starts_with("Codex turn 1"), "{body}");
    assert_eq!(env.runs("codex").len(), 1);
}

#[test]
fn codex_bad_arguments_exit_2() {
    let env = Env::new();
    codex_agent(&env, "cx", "args: [--bogus]\n", "");
    env.message("m1", "cx", "hi");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("exit 2"), "{body}");
    assert!(body.contains("unexpected argument '--bogus'"), "{body}");
    assert_eq!(env.runs("codex").len(), 1);
}

// ---------------------------------------------------------------------------
// gemini

fn gemini_agent(env: &Env, name: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: gemini\nprogram: {}\nretry_base: 20ms\n{extra}",
            fake("gemini")
        ),
        body,
    );
}

#[test]
fn gemini_success_then_resume() {
    let env = Env::new();
    gemini_agent(&env, "gm", "model: gemini-2.5-pro\n", "");
    env.message("m1", "gm", "look around");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Let me look. Gemini turn 1 done.");
    let runs = env.runs("gemini");
    let a = argv(&runs[0]);
    assert_eq!(
        flag_value(&a, "--output-format").as_deref(),
        Some("stream-json")
    );
    assert_eq!(flag_value(&a, "--model").as_deref(), Some("gemini-2.5-pro"));
    assert!(flag_value(&a, "-p").unwrap().contains("look around"));
    assert!(!a.contains(&"--resume".to_string()));
    let t = env.thread("gm");
    let sid = env.get(&t, "session").expect("session stored");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 17382.0);
    assert_eq!(num(&fm, "output_tokens"), 68.0);

    env.message("m2", "gm", "more");
    env.process();
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Let me look. Gemini turn 2 done.");
    let a = argv(&env.runs("gemini")[1]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(sid.as_str()));
}

#[test]
fn gemini_error_result() {
    let env = Env::new();
    gemini_agent(&env, "gm", "", "");
    env.message("m1", "gm", "scenario=error");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("Requested entity was not found"), "{body}");
    assert_eq!(env.runs("gemini").len(), 1);
}

#[test]
fn gemini_auth_exit_41() {
    let env = Env::new();
    gemini_agent(&env, "gm", "", "");
    env.message("m1", "gm", "scenario=auth");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("authentication"), "{body}");
    assert!(body.contains("GEMINI_API_KEY"), "{body}");
    assert_eq!(env.runs("gemini").len(), 1);
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server for the model APIs (std threads, loopback only).

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// A 200 `text/event-stream` body, chunked, one chunk per string.
    Stream(Vec<String>),
}

type Handler = Box<dyn Fn(usize, &Request) -> Reply + Send + Sync>;

struct FakeHttp {
    base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeHttp {
    /// Serves every request with `handler(n, request)`, n counting from 0.
    fn start(handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> FakeHttp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(Box::new(handler));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let reqs = reqs.clone();
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let _ = serve_conn(stream, &reqs, &handler);
                });
            }
        });
        FakeHttp {
            base: format!("http://{addr}"),
            requests,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_conn(
    stream: TcpStream,
    reqs: &Mutex<Vec<Request>>,
    handler: &Handler,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(());
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let req = Request {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let n = {
        let mut r = reqs.lock().unwrap();
        r.push(req.clone());
        r.len() - 1
    };
    let mut out = stream;
    match handler(n, &req) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                reason(status),
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
            out.write_all(body.as_bytes())?;
        }
        Reply::Stream(chunks) => {
            out.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )?;
            for c in chunks {
                out.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(2));
            }
            out.write_all(b"0\r\n\r\n")?;
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// OpenAI chat-completions SSE for `parts` of text: role chunk, content
/// chunks, finish chunk, usage chunk, `[DONE]`.
fn openai_stream(parts: &[&str], prompt_tokens: u64) -> Vec<String> {
    let chunk = |choices: Value, usage: Value| {
        let mut v = json!({
            "id": "chatcmpl-fake123",
            "object": "chat.completion.chunk",
            "created": 1_763_740_800,
            "model": "gpt-test",
            "system_fingerprint": "fp_fake",
            "choices": choices,
        });
        if !usage.is_null() {
            v["usage"] = usage;
        }
        format!("data: {v}\n\n")
    };
    let mut out = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        Value::Null,
    )];
    for p in parts {
        out.push(chunk(
            json!([{"index": 0, "delta": {"content": p}, "logprobs": null, "finish_reason": null}]),
            Value::Null,
        ));
    }
    out.push(chunk(
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
        Value::Null,
    ));
    let completion = parts.len() as u64;
    out.push(chunk(
        json!([]),
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}),
    ));
    out.push("data: [DONE]\n\n".into());
    out
}

fn sse(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn anthropic_start(input_tokens: u64) -> String {
    sse(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_01FakeFake", "type": "message", "role": "assistant",
            "model": "claude-test", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    )
}

fn anthropic_text_delta(t: &str) -> String {
    sse(
        "content_block_delta",
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
    )
}

/// A whole Anthropic Messages stream for `parts` of text.
fn anthropic_stream(parts: &[&str], input_tokens: u64, output_tokens: u64) -> Vec<String> {
    let mut out = vec![
        anthropic_start(input_tokens),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse("ping", json!({"type": "ping"})),
    ];
    for p in parts {
        out.push(anthropic_text_delta(p));
    }
    out.push(sse(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(sse(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    out.push(sse("message_stop", json!({"type": "message_stop"})));
    out
}

fn anthropic_overloaded() -> String {
    sse(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

/// The (role, content) pairs of a request's `messages`.
fn roles(req: &Request) -> Vec<(String, String)> {
    req.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// openai

fn openai_agent(env: &Env, name: &str, base: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: openai\nmodel: gpt-test\nbase_url: {base}/v1\napi_key_env: FAKE_OPENAI_KEY\nretry_base: 20ms\ntimeout: 20s\n{extra}"
        ),
        body,
    );
}

const OPENAI_KEY: (&str, &str) = ("FAKE_OPENAI_KEY", "sk-test-123");

#[test]
fn openai_stream_history_and_reset() {
    let server = FakeHttp::start(|n, _| {
        let replies = [
            ["Hello", " there", "!"],
            ["Second", " answer", "."],
            ["Fresh", " start", "."],
        ];
        Reply::Stream(openai_stream(&replies[n.min(2)], 11))
    });
    let env = Env::new();
    openai_agent(&env, "oa", &server.base, "", "Be brief.\n");
    env.message("m1", "oa", "first question");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Hello there!");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(r.body["model"], "gpt-test");
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    let m = roles(r);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0], ("system".into(), "Be brief.".into()));
    assert_eq!(m[1].0, "user");
    assert!(m[1].1.contains("first question"), "{m:?}");
    let t = env.thread("oa");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 11.0);
    assert_eq!(num(&fm, "output_tokens"), 3.0);
    // No session for an HTTP backend: the vault is the session store.
    assert!(env.get(&t, "session").unwrap_or_default().is_empty());

    // The second message carries the first exchange, oldest first.
    env.message("m2", "oa", "second question");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = env.reply("m2");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Second answer.");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let m = roles(&reqs[1]);
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(m[0].0, "system");
    assert_eq!(m[1], ("user".into(), "first question".into()));
    assert_eq!(m[2], ("assistant".into(), "Hello there!".into()));
    assert_eq!(m[3].0, "user");
    assert!(m[3].1.contains("second question"));
    assert_eq!(num(&env.fm(&t), "input_tokens"), 22.0);

    // After a reset the earlier exchanges are left out.
    let out = env
        .command(&["reset", env.root_str(), "oa"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.message("m3", "oa", "third question");
    env.process_with(&[OPENAI_KEY]);
    assert_eq!(env.reply("m3").1.trim(), "Fresh start.");
    let m = roles(&server.requests()[2]);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].0, "system");
    assert!(m[1].1.contains("third question"));
}

#[test]
fn openai_429_with_retry_after_then_success() {
    let server = FakeHttp::start(|n, _| {
        if n == 0 {
            Reply::Full {
                status: 429,
                headers: vec![("retry-after", "0".into())],
                body: json!({"error": {"message": "Rate limit reached for gpt-test", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}).to_string(),
            }
        } else {
            Reply::Stream(openai_stream(&["Made", " it"], 5))
        }
    });
    let env = Env::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("m1", "oa", "hi");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Made it");
    assert_eq!(server.requests().len(), 2);
    // No system prompt, no system message.
    assert_eq!(roles(&server.requests()[1]).len(), 1);
}

#[test]
fn openai_401_fails_at_once() {
    let server = FakeHttp::start(|_, _| {
        Reply::Full {
        status: 401,
        headers: vec![],
        body: json!({"error": {"message": "Incorrect API key provided: sk-test***123.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string(),
    }
    });
    let env = Env::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("m1", "oa", "hi");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("401"), "{body}");
    assert!(body.contains("Incorrect API key"), "{body}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn openai_missing_api_key_env_fails_without_a_request() {
    let server = FakeHttp::start(|_, _| Reply::Stream(openai_stream(&["never"], 1)));
    let env = Env::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("m1", "oa", "hi");
    env.process();
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("FAKE_OPENAI_KEY"), "{body}");
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------
// anthropic

fn anthropic_agent(env: &Env, name: &str, base: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: anthropic\nmodel: claude-test\nbase_url: {base}\napi_key_env: FAKE_ANTHROPIC_KEY\nmax_tokens: 256\nretry_base: 20ms\ntimeout: 20s\n{extra}"
        ),
        body,
    );
}

const ANTHROPIC_KEY: (&str, &str) = ("FAKE_ANTHROPIC_KEY", "sk-ant-test-456");

#[test]
fn anthropic_stream_and_history() {
    let server = FakeHttp::start(|n, _| {
        if n == 0 {
            Reply::Stream(anthropic_stream(&["Hi", " from", " the API"], 25, 9))
        } else {
            Reply::Stream(anthropic_stream(&["Again"], 40, 2))
        }
    });
    let env = Env::new();
    anthropic_agent(&env, "an", &server.base, "", "You are kind.\n");
    env.message("m1", "an", "hello api");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Hi from the API");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some("sk-ant-test-456"));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["model"], "claude-test");
    assert_eq!(r.body["max_tokens"], 256);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["system"], "You are kind.");
    let m = roles(r);
    assert_eq!(m.len(), 1);
    assert!(m[0].1.contains("hello api"));
    let t = env.thread("an");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 25.0);
    assert_eq!(num(&fm, "output_tokens"), 9.0);

    env.message("m2", "an", "second");
    env.process_with(&[ANTHROPIC_KEY]);
    assert_eq!(env.reply("m2").1.trim(), "Again");
    let m = roles(&server.requests()[1]);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m[0], ("user".into(), "hello api".into()));
    assert_eq!(m[1], ("assistant".into(), "Hi from the API".into()));
    assert!(m[2].1.contains("second"));
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 65.0);
    assert_eq!(num(&fm, "output_tokens"), 11.0);
}

#[test]
fn anthropic_overloaded_before_content_is_retried() {
    let server = FakeHttp::start(|n, _| {
        if n == 0 {
            Reply::Stream(vec![
                anthropic_start(10),
                sse("ping", json!({"type": "ping"})),
                anthropic_overloaded(),
            ])
        } else {
            Reply::Stream(anthropic_stream(&["Second", " try"], 10, 2))
        }
    });
    let env = Env::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    env.message("m1", "an", "hi");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Second try");
    assert_eq!(server.requests().len(), 2);
    // No system prompt: no `system` key.
    assert!(server.requests()[1].body.get("system").is_none());
}

#[test]
fn anthropic_overloaded_after_content_is_not_retried() {
    let server = FakeHttp::start(|_, _| {
        Reply::Stream(vec![
            anthropic_start(10),
            sse(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            anthropic_text_delta("Partial"),
            anthropic_overloaded(),
        ])
    });
    let env = Env::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    env.message("m1", "an", "hi");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = env.reply("m1");
    assert_eq!(status, "error");
    assert!(body.contains("overloaded_error"), "{body}");
    assert_eq!(server.requests().len(), 1);
}
