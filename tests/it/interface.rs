//! The people's interface on the command line (SPEC §9, issue 12): `tail`
//! against a real `serve`, `health`, `--log-format json` and the turn
//! span in text logs, the progress bar of `process` (none off a terminal;
//! one under a pseudo-terminal), completions and the man page.
//!
//! That every argument has a description is checked by a walk of the clap
//! definition in `src/main.rs`'s unit tests (the definition lives in the
//! binary, which these tests only run).

use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// A `command` agent that takes a while and prints two lines.
const SLOW: &str = "sleep 0.4\necho one\necho two\n";

/// `tail VAULT [args…]` in the background (stdout and stderr in one log,
/// not a terminal), with `vars`.
fn spawn_tail(v: &TestVault, args: &[&str], vars: &[(&str, &str)]) -> Serve {
    let mut all = vec!["tail", v.root_str()];
    all.extend_from_slice(args);
    let mut run = v.vr(&all);
    for (k, val) in vars {
        run = run.env(k, val);
    }
    run.spawn(v.next_log("tail"))
}

/// Waits until `tail` has subscribed to its agents (it says so once every
/// stream is open: from then on no turn is missed).
#[track_caller]
fn subscribed(t: &mut Serve) {
    let log = t.log.clone();
    let ok = t.wait_while_running(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tailing "))
    });
    assert!(ok, "tail did not subscribe:\n{}", t.log_text());
}

/// The line of `log` holding `needle`, which must also name `agent`
/// before it (`TIME AGENT  …`).
#[track_caller]
fn line_of<'a>(log: &'a str, agent: &str, needle: &str) -> &'a str {
    let line = log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"));
    let before = &line[..line.find(needle).unwrap()];
    assert_eq!(
        before.split_whitespace().nth(1),
        Some(agent),
        "{needle:?} is not {agent}'s: {line:?}"
    );
    line
}

/// The milliseconds `tail` printed on its `ok <message> in N ms` line.
fn ms_of(log: &str, message: &str) -> Option<u64> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("ok {message} in ")))?;
    line.rsplit_once(" in ")?
        .1
        .strip_suffix(" ms")?
        .trim()
        .parse()
        .ok()
}

#[test]
fn tail_prints_live_turns_with_text_tools_outcome_and_duration() {
    let v = TestVault::with_probes();
    v.command_agent("slow", "", SLOW);
    v.agent(
        "tooly",
        &format!(
            "backend: claude\nprogram: {}\nretry_base: 20ms\n",
            fake("claude")
        ),
        "",
    );
    v.command_agent("broken", "", "echo oops >&2\nexit 3\n");
    let (serve, _addr) = v.serve_http(&[]);
    serve.ready(&v);
    let mut t = spawn_tail(&v, &[], &[]);
    subscribed(&mut t);

    v.message("Inbox/slow.md", "slow", "", "go\n");
    serve.answered(&v, "Inbox/slow.md");
    v.message("Inbox/tool.md", "tooly", "", "scenario=tool\n");
    serve.answered(&v, "Inbox/tool.md");
    v.message("Inbox/broken.md", "broken", "", "go\n");
    serve.answered(&v, "Inbox/broken.md");
    t.wait_for(
        Duration::from_secs(20),
        "tail prints the three ends",
        || {
            let l = t.log_text();
            ["Inbox/slow in ", "Inbox/tool in ", "Inbox/broken in "]
                .iter()
                .all(|end| l.contains(end))
        },
    );
    let log = t.log_text();
    // Not a terminal: no colours, no escape sequences at all.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes off a terminal:\n{log:?}"
    );
    // The message, its streamed text, and its duration (the turn sleeps
    // 0.4 s: the duration is the turn's, not the time tail took).
    line_of(
        &log,
        "slow",
        "message Inbox/slow (thread Threads/slow/slow)",
    );
    line_of(&log, "slow", "| one");
    line_of(&log, "slow", "| two");
    assert!(log.contains("| one\n") && log.contains("| two\n"), "{log}");
    let ms = ms_of(&log, "Inbox/slow").unwrap_or_else(|| panic!("no duration in:\n{log}"));
    assert!((400..20_000).contains(&ms), "duration {ms} ms:\n{log}");
    // Tool calls and their results, then the text after them.
    line_of(
        &log,
        "tooly",
        r#"tool Bash {"command":"echo hi3","description":"Say hi"}"#,
    );
    line_of(&log, "tooly", "tool result: hi3");
    line_of(&log, "tooly", "| The command printed hi3.");
    // A failed turn: its outcome and why.
    let failed = line_of(&log, "broken", "error Inbox/broken in ");
    assert_contains(failed, "exited with status 3: oops");

    // Ctrl-C ends it, with status 0.
    t.signal(libc::SIGINT);
    let st = t
        .wait_exit(Duration::from_secs(10))
        .expect("tail exits on SIGINT");
    assert_eq!(st.code(), Some(0), "{}", t.log_text());
}

#[test]
fn tail_follows_one_agent_and_picks_up_agents_defined_later() {
    let v = TestVault::with_probes();
    v.command_agent("slow", "", SLOW);
    let (serve, _addr) = v.serve_http(&[]);
    serve.ready(&v);

    // One agent: the others' turns are not printed.
    let mut one = spawn_tail(&v, &["slow"], &[]);
    subscribed(&mut one);
    let mut all = spawn_tail(&v, &[], &[]);
    subscribed(&mut all);
    v.message("Inbox/s.md", "slow", "", "go\n");
    serve.answered(&v, "Inbox/s.md");
    serve.sentinel(&v, "after-slow");
    one.wait_for(Duration::from_secs(20), "the slow turn's end", || {
        one.log_text().contains("ok Inbox/s in ")
    });
    all.wait_for(Duration::from_secs(20), "the sentinel's end", || {
        all.log_text().contains("ok Sentinel/after-slow")
    });
    assert!(
        !one.log_text().contains("Sentinel/"),
        "tail slow printed another agent's turn:\n{}",
        one.log_text()
    );

    // An agent defined while tail runs is followed after the next list.
    v.agent("late", "backend: echo\n", "");
    all.wait_for(
        Duration::from_secs(20),
        "tail follows the new agent",
        || all.log_text().contains("following agent late too"),
    );
    v.message("Inbox/late.md", "late", "", "hello late\n");
    serve.answered(&v, "Inbox/late.md");
    all.wait_for(Duration::from_secs(20), "the late agent's turn", || {
        all.log_text().contains("ok Inbox/late")
    });
    // echo streams nothing: its reply is shown as the text.
    line_of(&all.log_text(), "late", "| echo: hello late");
}

#[test]
fn tail_says_when_nothing_serves_the_vault() {
    let v = TestVault::with_probes();
    // No serve at all.
    let out = v.vr(&["tail", v.root_str()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "vaultrunner: nothing is serving {0} (no .vaultrunner/http.addr); start `vaultrunner serve {0}`",
            v.root_str()
        ),
        "{out}"
    );
    assert!(out.stdout.is_empty(), "{out}");

    // A stale address (a serve that was killed): nothing answers there.
    v.write(".vaultrunner/http.addr", "127.0.0.1:1");
    let out = v.vr(&["tail", v.root_str()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "nothing is serving");
    assert_contains(&out.stderr, "nothing answers at http://127.0.0.1:1");
    assert_contains(&out.stderr, "start `vaultrunner serve");
    let out = v.vr(&["health", v.root_str()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "nothing is serving");

    // A serve without HTTP: tail says so, rather than "nothing" (the
    // killed serve's address is gone: this serve holds the lock).
    let serve = v.serve(&["--listen", "none"]);
    assert!(!v.exists(".vaultrunner/http.addr"));
    let out = v.vr(&["tail", v.root_str()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "is being served without HTTP");
    drop(serve);

    // Not a folder; a remote vault without --server.
    let missing = v.parent.join("nope");
    let out = v.vr(&["tail", missing.to_str().unwrap()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "no vault at");
    let out = v
        .vr(&["tail", "https://vault.example.invalid/vault/x"])
        .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "give --server URL");
    let out = v.vr(&["tail", v.root_str(), "--server", "http://"]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "--server \"http://\" is not");
}

#[test]
fn tail_names_an_unknown_agent_and_health_answers() {
    let v = TestVault::with_probes();
    let (serve, addr) = v.serve_http(&[]);
    serve.ready(&v);
    let out = v.vr(&["tail", v.root_str(), "ghost"]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(
        &out.stderr,
        &format!("no agent named \"ghost\" at http://{addr} (agents: "),
    );
    assert_contains(&out.stderr, "probe");

    let out = v.vr(&["health", v.root_str()]).run().success();
    let h: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(h["status"], "ok", "{out}");
    // --server instead of http.addr: HOST:PORT or a URL.
    let elsewhere = TestVault::new();
    let out = v
        .vr(&["health", elsewhere.root_str(), "--server", &addr])
        .run()
        .success();
    assert_contains(&out.stdout, "\"status\":\"ok\"");
    let url = format!("http://{addr}/");
    let mut t = spawn_tail(&elsewhere, &["--server", &url], &[]);
    subscribed(&mut t);
}

#[test]
fn tail_needs_the_token_when_serve_has_one() {
    const TOKEN: &str = "s3cret-token";
    let v = TestVault::with_probes();
    v.command_agent("slow", "", SLOW);
    let (serve, addr) = v.serve_http(&[("VAULTRUNNER_TOKEN", TOKEN)]);
    serve.ready(&v);

    let out = v.vr(&["tail", v.root_str()]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "vaultrunner: the server at http://{addr} needs a token: set VAULTRUNNER_TOKEN to the token serve was started with"
        ),
    );
    let out = v
        .vr(&["tail", v.root_str()])
        .env("VAULTRUNNER_TOKEN", "wrong")
        .run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "refused the token in VAULTRUNNER_TOKEN");
    assert!(!out.all().contains("wrong"), "the token is shown: {out}");

    let mut t = spawn_tail(&v, &[], &[("VAULTRUNNER_TOKEN", TOKEN)]);
    subscribed(&mut t);
    v.message("Inbox/t.md", "slow", "", "go\n");
    serve.answered(&v, "Inbox/t.md");
    t.wait_for(
        Duration::from_secs(20),
        "the turn through the token",
        || t.log_text().contains("ok Inbox/t in "),
    );
    assert_contains(&t.log_text(), "| one");
}

#[test]
fn tail_ends_when_serve_goes_away() {
    let v = TestVault::with_probes();
    let (mut serve, addr) = v.serve_http(&[]);
    serve.ready(&v);
    let mut t = spawn_tail(&v, &[], &[]);
    subscribed(&mut t);
    serve.stop();
    let st = t
        .wait_exit(Duration::from_secs(20))
        .expect("tail exits when serve stops");
    assert_eq!(st.code(), Some(1), "{}", t.log_text());
    assert_contains(
        &t.log_text(),
        &format!("vaultrunner: the server at http://{addr} went away"),
    );
}

/// The JSON log lines of a run's stderr, each parsed (a line that is not
/// JSON fails the test).
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

#[test]
fn json_logs_are_one_object_a_line_with_the_turns_fields() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v.command_agent("broken", "", "exit 3\n");
    v.message("Inbox/a.md", "echo", "", "hello\n");
    v.message("Inbox/b.md", "broken", "", "hello\n");
    // A broken definition logs a problem too: every line stays JSON.
    v.write(
        "Agents/bad.md",
        "---\ntags: [agent/definition]\nname: bad\nbackend: [echo]\n---\n",
    );
    let out = v.process(&["--log-format", "json"]);
    assert_contains(&out.stdout, "processed 2 message(s): 1 ok, 1 error");
    let lines = json_lines(&out.stderr);
    assert!(!lines.is_empty(), "no log lines: {out}");
    for l in &lines {
        for key in ["time", "level", "message", "target"] {
            assert!(l.get(key).is_some(), "no {key:?} in {l}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" || l["level"] == "ERROR"),
        "the broken definition is not logged:\n{}",
        out.stderr
    );
    let end = |path: &str| {
        lines
            .iter()
            .find(|l| l["span"]["message"] == path && l.get("outcome").is_some())
            .unwrap_or_else(|| panic!("no end line for {path} in:\n{}", out.stderr))
            .clone()
    };
    let a = end("Inbox/a");
    assert_eq!(a["outcome"], "ok", "{a}");
    assert!(a["duration_ms"].is_u64(), "{a}");
    assert_eq!(a["span"]["name"], "turn", "{a}");
    assert_eq!(a["span"]["agent"], "echo", "{a}");
    assert_eq!(a["span"]["thread"], "Threads/echo/echo", "{a}");
    assert_eq!(a["level"], "INFO", "{a}");
    assert!(a["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    let b = end("Inbox/b");
    assert_eq!(b["outcome"], "error", "{b}");
    assert_eq!(b["span"]["agent"], "broken", "{b}");
}

#[test]
fn text_logs_carry_the_turn_span() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v.message("Inbox/a.md", "echo", "", "hello\n");
    let out = v.process(&[]);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("outcome="))
        .unwrap_or_else(|| panic!("no turn end line: {out}"));
    assert_contains(
        line,
        "INFO turn{agent=echo message=Inbox/a thread=Threads/echo/echo}: ok in ",
    );
    assert_contains(line, " ms outcome=\"ok\" duration_ms=");
    // The global flag goes before or after the command; a bad value is a
    // usage error naming the choices.
    let out = v
        .vr(&["--log-format", "json", "check", v.root_str()])
        .run()
        .success();
    assert_contains(&out.stdout, "0 error(s)");
    let out = v.vr(&["check", v.root_str(), "--log-format", "xml"]).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_contains(&out.stderr, "[possible values: text, json]");
}

/// A vault with `n` messages for a `command` agent that takes a little
/// while, so that `process` has a backlog.
fn backlog(n: usize) -> TestVault {
    let v = TestVault::new();
    v.command_agent("slowish", "", "sleep 0.05\necho done\n");
    for i in 0..n {
        v.message(&format!("Inbox/m{i:02}.md"), "slowish", "", "go\n");
    }
    v
}

#[test]
fn process_shows_no_progress_bar_off_a_terminal() {
    let v = backlog(25);
    let out = v.process(&["--jobs", "1"]);
    assert_contains(&out.stdout, "processed 25 message(s): 25 ok, 0 error");
    assert!(!out.stderr.contains("messages ·"), "{out}");
    assert!(!out.all().contains('\r'), "{out}");
    assert!(!out.all().contains('\u{1b}'), "{out}");
}

#[test]
fn process_shows_a_progress_bar_on_a_terminal() {
    // `script` (util-linux, on every Debian) runs the command on a
    // pseudo-terminal; with no size known, a backlog over 20 gets a bar.
    let script = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "`script` (util-linux / bsdutils) is needed for this test: apt-get install bsdutils",
        );
    let v = backlog(25);
    let cmd = format!(
        "{} process {} --jobs 1",
        sh_quote(BIN),
        sh_quote(v.root_str())
    );
    let out = program(script, &["-qec", &cmd, "/dev/null"])
        .env("VAULTRUNNER_LOG", "warn")
        .run()
        .success();
    assert_contains(&out.stdout, "processed 25 message(s): 25 ok, 0 error");
    assert_contains(&out.stdout, "25/25 messages");
    assert_contains(&out.stdout, "/s · ETA ");

    // A small backlog on a terminal: no bar.
    let v = backlog(3);
    let cmd = format!("{} process {}", sh_quote(BIN), sh_quote(v.root_str()));
    let out = program(script, &["-qec", &cmd, "/dev/null"])
        .run()
        .success();
    assert_contains(&out.stdout, "processed 3 message(s)");
    assert!(!out.stdout.contains("messages ·"), "{out}");
}

#[test]
fn completions_for_each_shell_name_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = vr(&["completions", shell]).run().success();
        assert!(out.stdout.len() > 500, "{shell}: {out}");
        for word in ["serve", "process", "tail", "completions", "log-format"] {
            assert_contains(&out.stdout, word);
        }
    }
    let out = vr(&["completions", "tcsh"]).run();
    assert_eq!(out.code(), Some(2), "{out}");
}

#[test]
fn man_pages_are_roff_from_the_definition() {
    let out = vr(&["man"]).run().success();
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(first.starts_with('.'), "not roff: {first:?}");
    let th = out
        .stdout
        .lines()
        .position(|l| l.starts_with(".TH vaultrunner 1 "))
        .expect(".TH");
    let sh = out
        .stdout
        .lines()
        .position(|l| l.starts_with(".SH"))
        .expect(".SH");
    assert!(th < sh, "the .TH comes first:\n{}", out.stdout);
    for word in ["tail", "completions", "Exit codes:", "130"] {
        assert_contains(&out.stdout, word);
    }
    let out = vr(&["man", "tail"]).run().success();
    assert_contains(&out.stdout, ".TH vaultrunner-tail 1 ");
    assert_contains(&out.stdout, "VAULTRUNNER_TOKEN");
    let out = vr(&["man", "nope"]).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_contains(&out.stderr, "no command \"nope\"");

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    vr(&["man", "--out-dir", pages.to_str().unwrap()])
        .run()
        .success();
    for page in ["vaultrunner.1", "vaultrunner-serve.1", "vaultrunner-tail.1"] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap();
        assert_contains(&text, ".TH ");
    }
}

#[test]
fn help_lists_the_exit_codes() {
    let out = vr(&["--help"]).run().success();
    assert_contains(&out.stdout, "Exit codes:");
    for code in ["  0 ", "  1 ", "  2 ", "  130 "] {
        assert_contains(&out.stdout, code);
    }
    for cmd in ["tail", "health", "completions", "man"] {
        assert_contains(&out.stdout, cmd);
    }
}

#[test]
fn the_shipped_unit_is_the_one_the_docs_show() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("packaging/vaultrunner.service")).unwrap();
    let docs = std::fs::read_to_string(root.join("docs/deployment.md")).unwrap();
    let at = docs
        .find("[packaging/vaultrunner.service](../packaging/vaultrunner.service)")
        .expect("deployment.md points at the unit file");
    let block = docs[at..]
        .split_once("```ini\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(b, _)| b)
        .expect("an ini block after the link");
    assert_eq!(
        block, unit,
        "docs/deployment.md and packaging/vaultrunner.service differ"
    );
    // What the unit relies on: SIGTERM to vaultrunner only, a stop bound
    // above serve's own 10 s, the vault path on ExecStart.
    for line in [
        "ExecStart=%h/.cargo/bin/vaultrunner serve %h/Notes",
        "KillMode=mixed",
        "TimeoutStopSec=15",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    // The Dockerfile runs what docs/deployment.md says.
    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for needle in [
        "cargo build --release --locked",
        "FROM debian:bookworm-slim",
        "USER vaultrunner",
        "VOLUME /vault",
        r#"CMD ["vaultrunner", "health", "/vault", "--server", "127.0.0.1:7420"]"#,
        r#"CMD ["serve", "/vault", "--listen", "0.0.0.0:7420"]"#,
    ] {
        assert_contains(&docker, needle);
    }
}
