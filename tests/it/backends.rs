//! End-to-end tests of the model backends (SPEC §4) through the real
//! binary: `vaultrunner process VAULT` on temp vaults, with fakes that speak
//! the real protocols — `tests/fakes/{claude,codex,gemini}` (Python, stdlib
//! only) and in-process HTTP servers for the OpenAI-compatible and
//! Anthropic APIs. Assertions are on reply notes, thread notes and the
//! fakes' logs (argv, stdin, environment, pids; HTTP requests and headers).
//!
//! The vault, the fakes' log and the process checks are `common`'s; the
//! fake HTTP servers and the argv helpers are here (the servers are
//! shared with `attachments`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serde_yaml::Mapping;

use crate::common::{TestVault, assert_all_dead, fake, fakes_dir, scalar};

/// The reply to `Inbox/<stem>.md`: (status, body).
pub(crate) fn reply(v: &TestVault, stem: &str) -> (String, String) {
    let rel = format!("Inbox/{stem}.reply.md");
    assert!(v.exists(&rel), "no reply note {rel}");
    let status = v.get(&rel, "status").unwrap_or_default();
    (status, v.body(&rel))
}

/// The single thread of `agent`.
fn thread(agent: &str) -> String {
    format!("Threads/{agent}/{agent}.md")
}

/// A numeric front-matter key (panics when absent).
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

fn claude_agent(env: &TestVault, name: &str, extra: &str, body: &str) {
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
    let env = TestVault::new();
    env.agent("cc", "backend: claude\n", "");
    for i in 1..=3 {
        env.message(
            &format!("Inbox/m{i}.md"),
            "cc",
            "",
            &format!("message {i}\n"),
        );
    }
    let path = format!(
        "{}:{}",
        fakes_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.process_with(&[("PATH", &path)]);
    let runs = env.fake_runs("claude");
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
    let thread = thread("cc");
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("3"));
    assert_eq!(env.get(&thread, "status").as_deref(), Some("ok"));
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    for i in 1..=3 {
        assert_eq!(reply(&env, &format!("m{i}")).0, "ok");
        assert_eq!(
            env.get(&format!("Inbox/m{i}.md"), "attempts").as_deref(),
            Some("1")
        );
    }
}

#[test]
fn claude_session_created_then_resumed() {
    let env = TestVault::new();
    // Found on PATH under its default name.
    env.agent(
        "cc",
        "backend: claude\nmodel: opus-test\n",
        "You are terse.\n",
    );
    env.message("Inbox/m1.md", "cc", "", "first message\n");
    let path = format!(
        "{}:{}",
        fakes_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // CLAUDECODE in the daemon's environment must not reach the child (the
    // real CLI refuses to start with it).
    env.process_with(&[("PATH", &path), ("CLAUDECODE", "1")]);

    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Hello from fake claude.\n\nAll done.");
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("handled"));

    let runs = env.fake_runs("claude");
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

    let thread = thread("cc");
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    assert_eq!(env.get(&thread, "status").as_deref(), Some("ok"));
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("1"));

    // Second message: the stored session is resumed.
    env.message("Inbox/m2.md", "cc", "", "second message\n");
    env.process_with(&[("PATH", &path)]);
    let (status, body) = reply(&env, "m2");
    assert_eq!(status, "ok", "{body}");
    let runs = env.fake_runs("claude");
    assert_eq!(runs.len(), 2);
    let a = argv(&runs[1]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(sid.as_str()));
    assert!(!a.contains(&"--session-id".to_string()), "{a:?}");
    assert_eq!(runs[1]["env"]["VAULTRUNNER_SESSION"], sid.as_str());
    assert_eq!(env.get(&thread, "session").as_deref(), Some(sid.as_str()));
    assert_eq!(env.get(&thread, "turn_count").as_deref(), Some("2"));

    // `reset` blanks the session: the next turn creates a new one.
    env.vr(&["reset", env.root_str(), "cc"]).run().success();
    env.message("Inbox/m3.md", "cc", "", "third message\n");
    env.process_with(&[("PATH", &path)]);
    assert_eq!(reply(&env, "m3").0, "ok");
    let a = argv(&env.fake_runs("claude")[2]);
    assert!(!a.contains(&"--resume".to_string()), "{a:?}");
    let fresh = flag_value(&a, "--session-id").expect("a fresh session after reset");
    assert_ne!(fresh, sid);
    assert_eq!(env.get(&thread, "session").as_deref(), Some(fresh.as_str()));
}

#[test]
fn claude_usage_accumulates_on_the_thread() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "one\n");
    env.process(&[]);
    let t = thread("cc");
    let fm = env.fm(&t);
    // input = input + cache creation + cache read of `result.usage`.
    assert_eq!(num(&fm, "input_tokens"), 117.0);
    assert_eq!(num(&fm, "output_tokens"), 38.0);
    assert!((num(&fm, "total_cost_usd") - 0.0125).abs() < 1e-9, "{fm:?}");

    env.message("Inbox/m2.md", "cc", "", "two scenario=tool\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m2");
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
    let env = TestVault::new();
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
    env.message("Inbox/m1.md", "cc", "", "ahoy\n");
    env.process(&[]);
    assert_eq!(reply(&env, "m1").0, "ok");
    let a = argv(&env.fake_runs("claude")[0]);
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
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    // The CLI reports no session at all: nothing is stored.
    env.message("Inbox/m1.md", "cc", "", "scenario=noecho\n");
    env.process(&[]);
    assert_eq!(reply(&env, "m1").0, "ok");
    let t = thread("cc");
    let s = env.get(&t, "session").unwrap_or_default();
    assert!(s.is_empty(), "stored a session nobody reported: {s}");

    // So the next turn creates one again (no --resume of a made-up id).
    env.message("Inbox/m2.md", "cc", "", "scenario=fork\n");
    env.process(&[]);
    assert_eq!(reply(&env, "m2").0, "ok");
    let runs = env.fake_runs("claude");
    let a = argv(&runs[1]);
    assert!(!a.contains(&"--resume".to_string()), "{a:?}");
    let asked = flag_value(&a, "--session-id").unwrap();
    // The CLI reported another id than the one asked for: that one is kept.
    let stored = env.get(&t, "session").unwrap();
    assert!(is_uuid(&stored));
    assert_ne!(stored, asked);

    env.message("Inbox/m3.md", "cc", "", "three\n");
    env.process(&[]);
    assert_eq!(reply(&env, "m3").0, "ok");
    let a = argv(&env.fake_runs("claude")[2]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(stored.as_str()));
}

#[test]
fn claude_stale_session_retried_once_fresh() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    let dead = "0badc0de-0000-4000-8000-000000000000";
    env.write(
        "Threads/cc/cc.md",
        &format!("---\ntags:\n  - agent/thread\nagent: cc\nsession: {dead}\n---\n"),
    );
    env.message("Inbox/m1.md", "cc", "", "hello again\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let runs = env.fake_runs("claude");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        flag_value(&argv(&runs[0]), "--resume").as_deref(),
        Some(dead)
    );
    let fresh = flag_value(&argv(&runs[1]), "--session-id").expect("fresh session");
    assert!(!argv(&runs[1]).contains(&"--resume".to_string()));
    assert_eq!(
        env.get(&thread("cc"), "session").as_deref(),
        Some(fresh.as_str())
    );
}

#[test]
fn claude_noisy_stream_with_huge_lines() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=noisy\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{}", &body[..body.len().min(500)]);
    assert_eq!(body.trim(), "Survived the noise.");
}

#[test]
fn claude_auth_failure_is_an_error_reply() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=auth\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("Not logged in"), "{body}");
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("error"));
    assert!(
        env.get("Inbox/m1.md", "error")
            .unwrap_or_default()
            .contains("Not logged in")
    );
    // Permanent: one attempt.
    assert_eq!(env.fake_runs("claude").len(), 1);
    assert_eq!(env.get(&thread("cc"), "status").as_deref(), Some("error"));
}

#[test]
fn claude_error_max_turns() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=max_turns\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(
        body.contains("error_max_turns") && body.contains("maximum number of turns"),
        "{body}"
    );
    assert_eq!(env.fake_runs("claude").len(), 1);
}

#[test]
fn claude_transient_retried_until_success() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=overloaded_until:3\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Recovered on attempt 3.");
    assert_eq!(env.fake_runs("claude").len(), 3);
}

#[test]
fn claude_transient_gives_up_after_three_attempts() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=overloaded\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("529 Overloaded"), "{body}");
    assert!(body.contains("3 attempts"), "{body}");
    assert_eq!(env.fake_runs("claude").len(), 3);
}

#[test]
fn claude_transient_after_content_is_not_retried() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=overloaded_after_text\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("Overloaded"), "{body}");
    assert_eq!(env.fake_runs("claude").len(), 1);
}

#[test]
fn claude_exit_without_result_reports_stderr() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=exit_noise\n");
    env.message("Inbox/m2.md", "cc", "", "scenario=sigterm\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("status 3"), "{body}");
    assert!(body.contains("fake internal failure"), "{body}");
    let (status, body) = reply(&env, "m2");
    assert_eq!(status, "error");
    assert!(body.contains("SIGTERM"), "{body}");
    assert_eq!(env.fake_runs("claude").len(), 2);
}

#[test]
fn claude_timeout_kills_the_process_group() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "timeout: 1s\n", "");
    // The fake ignores SIGTERM (so KILL is needed) and leaves a `sleep`
    // grandchild in its group.
    env.message("Inbox/m1.md", "cc", "", "scenario=hang_stubborn\n");
    let started = Instant::now();
    env.process(&[]);
    let took = started.elapsed();
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("timed out"), "{body}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let pids = env.fake_pids();
    assert_eq!(
        pids.len(),
        2,
        "fake and grandchild: {:?}",
        env.fake_log_lines()
    );
    assert_all_dead(&pids, Duration::from_secs(3));
    // A timeout is not retried.
    assert_eq!(env.fake_runs("claude").len(), 1);
}

#[test]
fn claude_stall_timeout_kills_the_process_group() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "timeout: 60s\nstall_timeout: 1s\n", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=stall\n");
    let started = Instant::now();
    env.process(&[]);
    let took = started.elapsed();
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("stall_timeout"), "{body}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let pids = env.fake_pids();
    assert_eq!(pids.len(), 2, "{:?}", env.fake_log_lines());
    assert_all_dead(&pids, Duration::from_secs(3));
}

#[test]
fn claude_grandchild_does_not_outlive_a_finished_turn() {
    let env = TestVault::new();
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m1.md", "cc", "", "scenario=background\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let pids = env.fake_pids();
    assert_eq!(pids.len(), 2, "{:?}", env.fake_log_lines());
    assert_all_dead(&pids, Duration::from_secs(3));
}

#[test]
fn claude_missing_binary_then_fixed() {
    let env = TestVault::new();
    env.agent("cc", "backend: claude\nprogram: /nonexistent/claude\n", "");
    env.message("Inbox/m1.md", "cc", "", "anyone there?\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("not found"), "{body}");
    // The agent stays enabled: fixing the definition is enough.
    claude_agent(&env, "cc", "", "");
    env.message("Inbox/m2.md", "cc", "", "now?\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m2");
    assert_eq!(status, "ok", "{body}");
    // The failed message is not run again.
    assert_eq!(env.fake_runs("claude").len(), 1);
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("error"));
}

// ---------------------------------------------------------------------------
// codex

fn codex_agent(env: &TestVault, name: &str, extra: &str, body: &str) {
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
    let env = TestVault::new();
    codex_agent(&env, "cx", "model: gpt-5-codex\n", "You are terse.\n");
    env.message("Inbox/m1.md", "cx", "", "list the files\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let runs = env.fake_runs("codex");
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

    let t = thread("cx");
    let tid = env.get(&t, "session").expect("thread id stored");
    assert!(is_uuid(&tid));
    assert_eq!(body.trim(), format!("Codex turn 1 on thread {tid}."));
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 24763.0);
    assert_eq!(num(&fm, "output_tokens"), 122.0);

    env.message("Inbox/m2.md", "cx", "", "and again\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m2");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), format!("Codex turn 2 on thread {tid}."));
    let a = argv(&env.fake_runs("codex")[1]);
    let i = a.iter().position(|x| x == "resume").expect("resume");
    assert_eq!(a[i + 1], tid);
    assert!(a[i + 2].contains("and again"));
    assert_eq!(num(&env.fm(&t), "input_tokens"), 2.0 * 24763.0);
}

#[test]
fn codex_turn_failed_is_an_error() {
    let env = TestVault::new();
    codex_agent(&env, "cx", "", "");
    env.message("Inbox/m1.md", "cx", "", "scenario=fail\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("401 Unauthorized"), "{body}");
    assert_eq!(env.fake_runs("codex").len(), 1);
}

#[test]
fn codex_transient_turn_failed_is_retried() {
    let env = TestVault::new();
    codex_agent(&env, "cx", "", "");
    env.message("Inbox/m1.md", "cx", "", "scenario=overloaded\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("529 Overloaded"), "{body}");
    assert_eq!(env.fake_runs("codex").len(), 3);
}

#[test]
fn codex_reconnect_noise_is_not_a_failure() {
    let env = TestVault::new();
    codex_agent(&env, "cx", "", "");
    env.message("Inbox/m1.md", "cx", "", "scenario=retry_noise\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert!(body.starts_with("Codex turn 1"), "{body}");
    assert_eq!(env.fake_runs("codex").len(), 1);
}

#[test]
fn codex_bad_arguments_exit_2() {
    let env = TestVault::new();
    codex_agent(&env, "cx", "args: [--bogus]\n", "");
    env.message("Inbox/m1.md", "cx", "", "hi\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("exit 2"), "{body}");
    assert!(body.contains("unexpected argument '--bogus'"), "{body}");
    assert_eq!(env.fake_runs("codex").len(), 1);
}

// ---------------------------------------------------------------------------
// gemini

fn gemini_agent(env: &TestVault, name: &str, extra: &str, body: &str) {
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
    let env = TestVault::new();
    gemini_agent(&env, "gm", "model: gemini-2.5-pro\n", "");
    env.message("Inbox/m1.md", "gm", "", "look around\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Let me look. Gemini turn 1 done.");
    let runs = env.fake_runs("gemini");
    let a = argv(&runs[0]);
    assert_eq!(
        flag_value(&a, "--output-format").as_deref(),
        Some("stream-json")
    );
    assert_eq!(flag_value(&a, "--model").as_deref(), Some("gemini-2.5-pro"));
    assert!(flag_value(&a, "-p").unwrap().contains("look around"));
    assert!(!a.contains(&"--resume".to_string()));
    let t = thread("gm");
    let sid = env.get(&t, "session").expect("session stored");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 17382.0);
    assert_eq!(num(&fm, "output_tokens"), 68.0);

    env.message("Inbox/m2.md", "gm", "", "more\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m2");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Let me look. Gemini turn 2 done.");
    let a = argv(&env.fake_runs("gemini")[1]);
    assert_eq!(flag_value(&a, "--resume").as_deref(), Some(sid.as_str()));
}

#[test]
fn gemini_error_result() {
    let env = TestVault::new();
    gemini_agent(&env, "gm", "", "");
    env.message("Inbox/m1.md", "gm", "", "scenario=error\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("Requested entity was not found"), "{body}");
    assert_eq!(env.fake_runs("gemini").len(), 1);
}

#[test]
fn gemini_auth_exit_41() {
    let env = TestVault::new();
    gemini_agent(&env, "gm", "", "");
    env.message("Inbox/m1.md", "gm", "", "scenario=auth\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("authentication"), "{body}");
    assert!(body.contains("GEMINI_API_KEY"), "{body}");
    assert_eq!(env.fake_runs("gemini").len(), 1);
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 server for the model APIs (std threads, loopback only).

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    /// Lower-cased names.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Value,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) enum Reply {
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// A 200 `text/event-stream` body, chunked, one chunk per string.
    Stream(Vec<String>),
}

type Handler = Box<dyn Fn(usize, &Request) -> Reply + Send + Sync>;

pub(crate) struct FakeHttp {
    pub(crate) base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeHttp {
    /// Serves every request with `handler(n, request)`, n counting from 0.
    pub(crate) fn start(
        handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
    ) -> FakeHttp {
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

    pub(crate) fn requests(&self) -> Vec<Request> {
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
                // Pacing, not a wait: the client sees the chunks arrive
                // one by one, as from a real model server.
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
pub(crate) fn openai_stream(parts: &[&str], prompt_tokens: u64) -> Vec<String> {
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
pub(crate) fn anthropic_stream(
    parts: &[&str],
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<String> {
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

pub(crate) fn openai_agent(env: &TestVault, name: &str, base: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: openai\nmodel: gpt-test\nbase_url: {base}/v1\napi_key_env: FAKE_OPENAI_KEY\nretry_base: 20ms\ntimeout: 20s\n{extra}"
        ),
        body,
    );
}

pub(crate) const OPENAI_KEY: (&str, &str) = ("FAKE_OPENAI_KEY", "sk-test-123");

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
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "Be brief.\n");
    env.message("Inbox/m1.md", "oa", "", "first question\n");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m1");
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
    let t = thread("oa");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 11.0);
    assert_eq!(num(&fm, "output_tokens"), 3.0);
    // No session for an HTTP backend: the vault is the session store.
    assert!(env.get(&t, "session").unwrap_or_default().is_empty());

    // The second message carries the first exchange, oldest first.
    env.message("Inbox/m2.md", "oa", "", "second question\n");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m2");
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
    env.vr(&["reset", env.root_str(), "oa"]).run().success();
    env.message("Inbox/m3.md", "oa", "", "third question\n");
    env.process_with(&[OPENAI_KEY]);
    assert_eq!(reply(&env, "m3").1.trim(), "Fresh start.");
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
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("Inbox/m1.md", "oa", "", "hi\n");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m1");
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
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("Inbox/m1.md", "oa", "", "hi\n");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("401"), "{body}");
    assert!(body.contains("Incorrect API key"), "{body}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn openai_missing_api_key_env_fails_without_a_request() {
    let server = FakeHttp::start(|_, _| Reply::Stream(openai_stream(&["never"], 1)));
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("Inbox/m1.md", "oa", "", "hi\n");
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("FAKE_OPENAI_KEY"), "{body}");
    assert!(server.requests().is_empty());
}

// ---------------------------------------------------------------------------
// anthropic

pub(crate) fn anthropic_agent(env: &TestVault, name: &str, base: &str, extra: &str, body: &str) {
    env.agent(
        name,
        &format!(
            "backend: anthropic\nmodel: claude-test\nbase_url: {base}\napi_key_env: FAKE_ANTHROPIC_KEY\nmax_tokens: 256\nretry_base: 20ms\ntimeout: 20s\n{extra}"
        ),
        body,
    );
}

pub(crate) const ANTHROPIC_KEY: (&str, &str) = ("FAKE_ANTHROPIC_KEY", "sk-ant-test-456");

#[test]
fn anthropic_stream_and_history() {
    let server = FakeHttp::start(|n, _| {
        if n == 0 {
            Reply::Stream(anthropic_stream(&["Hi", " from", " the API"], 25, 9))
        } else {
            Reply::Stream(anthropic_stream(&["Again"], 40, 2))
        }
    });
    let env = TestVault::new();
    anthropic_agent(&env, "an", &server.base, "", "You are kind.\n");
    env.message("Inbox/m1.md", "an", "", "hello api\n");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = reply(&env, "m1");
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
    let t = thread("an");
    let fm = env.fm(&t);
    assert_eq!(num(&fm, "input_tokens"), 25.0);
    assert_eq!(num(&fm, "output_tokens"), 9.0);

    env.message("Inbox/m2.md", "an", "", "second\n");
    env.process_with(&[ANTHROPIC_KEY]);
    assert_eq!(reply(&env, "m2").1.trim(), "Again");
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
    let env = TestVault::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    env.message("Inbox/m1.md", "an", "", "hi\n");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = reply(&env, "m1");
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
    let env = TestVault::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    env.message("Inbox/m1.md", "an", "", "hi\n");
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error");
    assert!(body.contains("overloaded_error"), "{body}");
    assert_eq!(server.requests().len(), 1);
}
