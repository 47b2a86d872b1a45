//! Values from outside — definition and job keys, CLI numbers, standard
//! input, names — can neither crash vaultrunner nor be silently misread
//! (SPEC §5a, issue 9): each bad one is an error naming its file and field,
//! or a usage error naming the flag, and everything else keeps working.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{BIN, Out, SCRUB_ENV, TestVault, assert_contains, vr, wait_until};

/// Definitions that crashed vaultrunner (`Duration::from_secs_f64` on
/// parse, `Instant + Duration` on every turn) or were read as defaults
/// (a list or a mapping where one value belongs): (file stem, extra
/// front-matter, the field that must be named).
const BAD_DEFINITIONS: &[(&str, &str, &str)] = &[
    ("t-days", "timeout: 99999999999999999999d\n", "timeout"),
    ("t-u64", "timeout: 18446744073709551615\n", "timeout"),
    ("t-year", "timeout: 366d\n", "timeout"),
    ("t-map", "timeout: {a: 1}\n", "timeout"),
    (
        "s-u64",
        "stall_timeout: 18446744073709551615\n",
        "stall_timeout",
    ),
    (
        "s-hours",
        "stall_timeout: 9999999999999999999999999h\n",
        "stall_timeout",
    ),
    (
        "r-days",
        "retry_base: 99999999999999999999d\n",
        "retry_base",
    ),
    ("b-list", "backend: [claude]\n", "backend"),
    ("n-list", "name: [a, b]\n", "name"),
    ("e-list", "enabled: [true]\n", "enabled"),
    ("m-list", "model: [a, b]\n", "model"),
    ("c-map", "backend: command\ncommand: {a: 1}\n", "command"),
    (
        "c-nested",
        "backend: command\ncommand: [sh, [x]]\n",
        "command",
    ),
    ("a-map", "backend: claude\nargs: {a: 1}\n", "args"),
    (
        "k-list",
        "backend: openai\nmodel: m\nmax_tokens: [1]\n",
        "max_tokens",
    ),
    (
        "temp-nan",
        "backend: openai\nmodel: m\ntemperature: .nan\n",
        "temperature",
    ),
    (
        "temp-inf",
        "backend: openai\nmodel: m\ntemperature: .inf\n",
        "temperature",
    ),
    (
        "u-list",
        "backend: openai\nmodel: m\nbase_url: [x]\n",
        "base_url",
    ),
];

/// Writes every bad definition as `Agents/<stem>.md`, without a `name:`
/// (so the agent is named by its file, unless `name` is the key tested).
fn write_bad_definitions(v: &TestVault) {
    for (stem, extra, _) in BAD_DEFINITIONS {
        v.write(
            &format!("Agents/{stem}.md"),
            &format!("---\ntags: [agent/definition]\n{extra}---\n"),
        );
    }
}

#[track_caller]
fn assert_no_panic(out: &Out) {
    assert_ne!(out.code(), Some(101), "a panic: {out}");
    assert!(!out.stderr.contains("panicked"), "a panic: {out}");
}

#[test]
fn crash_values_and_wrong_types_are_check_errors_naming_file_and_field() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    write_bad_definitions(&v);
    let out = v.check();
    assert_no_panic(&out);
    assert_eq!(out.code(), Some(1), "{out}");
    for (stem, _, field) in BAD_DEFINITIONS {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("error: Agents/{stem}.md: ")))
            .unwrap_or_else(|| panic!("no error for Agents/{stem}.md:\n{out}"));
        assert_contains(line, &format!("field `{field}`"));
    }
    assert_contains(&out.stdout, "over the one-year limit");
    assert_contains(&out.stdout, "expected a single value, got a list");
    assert_contains(&out.stdout, &format!("{} error(s)", BAD_DEFINITIONS.len()));
    // `status` and `schedule` read the same definitions: no panic either.
    for cmd in ["status", "schedule"] {
        let out = vr(&[cmd, v.root_str()]).run();
        assert_no_panic(&out);
    }
}

#[test]
fn process_still_answers_the_other_agents() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    write_bad_definitions(&v);
    v.message("Inbox/good.md", "echo", "", "still here?\n");
    for (stem, _, _) in BAD_DEFINITIONS {
        v.message(&format!("Inbox/to-{stem}.md"), stem, "", "hello\n");
    }
    let out = vr(&["process", v.root_str()]).run();
    assert_no_panic(&out);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(v.body("Inbox/good.reply.md").trim(), "echo: still here?");
    // A disabled agent's messages wait untouched (no false "crash" reply).
    for (stem, _, _) in BAD_DEFINITIONS {
        assert!(!v.exists(&format!("Inbox/to-{stem}.reply.md")), "{stem}");
        assert_eq!(v.get(&format!("Inbox/to-{stem}.md"), "status"), None);
    }
}

#[test]
fn a_running_serve_survives_hot_reloading_crash_definitions() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    // A working agent first, then broken in place by an edit.
    v.agent("worker", "timeout: 10m\n", "");
    let mut serve = v.serve(&[]);
    v.message("Inbox/one.md", "worker", "", "first\n");
    wait_until(Duration::from_secs(20), "worker's first reply", || {
        v.exists("Inbox/one.reply.md")
    });
    write_bad_definitions(&v);
    v.agent("worker", "timeout: 99999999999999999999d\n", "");
    // Rewrite a few again: each change is read again.
    v.agent("t-u64", "timeout: 18446744073709551615\nmode: multi\n", "");
    v.message("Inbox/two.md", "echo", "", "after the reload\n");
    wait_until(
        Duration::from_secs(20),
        "echo's reply after the reload",
        || v.exists("Inbox/two.reply.md"),
    );
    assert_eq!(
        v.body("Inbox/two.reply.md").trim(),
        "echo: after the reload"
    );
    assert!(
        serve.child.try_wait().ok().flatten().is_none(),
        "serve stopped:\n{}",
        serve.log_text()
    );
    // The broken worker does not run (no reply at all, not an error one).
    v.message("Inbox/three.md", "worker", "", "are you there?\n");
    v.message("Inbox/four.md", "echo", "", "and now\n");
    wait_until(Duration::from_secs(20), "echo's last reply", || {
        v.exists("Inbox/four.reply.md")
    });
    assert!(!v.exists("Inbox/three.reply.md"));
    let log = serve.log_text();
    assert!(!log.contains("panicked"), "{log}");
    serve.stop();
}

#[test]
fn out_of_range_cli_numbers_are_usage_errors_naming_the_flag() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let root = v.root_str();
    let huge = "18446744073709551615";
    let cases: &[(&[&str], &str)] = &[
        (&["send", root, "echo", "hi", "--wait", huge], "--wait"),
        (
            &["send", root, "echo", "hi", "--wait", "99999999999999999999"],
            "--wait",
        ),
        (&["send", root, "echo", "hi", "--wait", "-1"], "-1"),
        (&["serve", root, "--rescan-secs", huge], "--rescan-secs"),
        (&["serve", root, "--rescan-secs", "0"], "--rescan-secs"),
        (&["serve", root, "--settle-ms", huge], "--settle-ms"),
        (&["serve", root, "--jobs", "0"], "--jobs"),
        (&["serve", root, "--jobs", huge], "--jobs"),
        (&["process", root, "--jobs", "0"], "--jobs"),
        (&["schedule", root, "--count", "0"], "--count"),
        (&["schedule", root, "--count", "1001"], "--count"),
        (&["schedule", root, "--count", huge], "--count"),
    ];
    for (args, flag) in cases {
        let out = vr(args).run();
        assert_no_panic(&out);
        assert_eq!(out.code(), Some(2), "{out}");
        assert_contains(&out.stderr, flag);
    }
    // Nothing was sent, nothing was answered.
    assert!(v.notes_under("Inbox").is_empty(), "{:?}", v.files());
    // The largest values are still accepted.
    let out = vr(&["send", root, "echo", "hi", "--wait", "0"]).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_contains(&out.stderr, "no reply within 0s");
    vr(&["schedule", root, "--count", "1000"]).run().success();
}

#[test]
fn an_agent_name_cannot_forge_log_lines() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message("Inbox/forge.md", "\"x\\nFAKE ERROR line\"", "", "hi\n");
    v.message("Inbox/ok.md", "echo", "", "hi\n");
    let out = v.process(&[]);
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("FAKE ERROR")),
        "a forged line:\n{}",
        out.stderr
    );
    assert_contains(&out.stderr, "x\\nFAKE ERROR line");
    // Every line is a whole event of its own: it starts with its time.
    assert!(out.stderr.ends_with('\n'), "{}", out.stderr);
    for line in out.stderr.lines() {
        assert!(line.starts_with("20"), "not an event of its own: {line:?}");
    }
}

#[test]
fn reset_of_an_unknown_agent_is_an_error() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.agent("helper", "", "");
    let out = vr(&["reset", v.root_str(), "ehco"]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "no agent \"ehco\" in this vault");
    assert_contains(&out.stderr, "the agents are: echo, helper");
    // A known agent without threads yet is fine, and so is an agent whose
    // definition is gone but whose threads remain.
    let out = vr(&["reset", v.root_str(), "echo"]).run().success();
    assert_contains(&out.stdout, "0 thread(s)");
    v.write(
        "Threads/gone/gone.md",
        "---\ntags: [agent/thread]\nagent: gone\nsession: abc\n---\n",
    );
    let out = vr(&["reset", v.root_str(), "gone"]).run().success();
    assert_contains(&out.stdout, "1 thread(s)");
    // The real reason for a reserved or overlong name.
    let out = vr(&["reset", v.root_str(), "CON"]).run().failure();
    assert_contains(&out.stderr, "Windows reserves it");
    let long = "a".repeat(65);
    let out = vr(&["reset", v.root_str(), &long]).run().failure();
    assert_contains(&out.stderr, "65 characters long, at most 64");
    let out = vr(&["send", v.root_str(), "nul", "hi"]).run().failure();
    assert_contains(&out.stderr, "Windows reserves it");
}

/// Runs `send <vault> echo -` with `len` bytes on stdin, writing them from
/// a thread that ignores a closed pipe (the refused input is not read to
/// its end).
fn send_stdin(v: &TestVault, len: usize) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["send", v.root_str(), "echo", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in SCRUB_ENV {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().expect("spawn send");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if stdin.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let out = child.wait_with_output().expect("wait for send");
    let _ = writer.join();
    out
}

#[test]
fn send_refuses_an_oversized_message() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    // Over the limit: refused with a clear error, nothing written, and
    // the input is not read to its end (16 MiB, twice what a note may be).
    for len in [1024 * 1024 + 1, 16 * 1024 * 1024] {
        let out = send_stdin(&v, len);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_contains(&stderr, "over the limit of 1048576 (1 MiB)");
        assert!(v.notes_under("Inbox").is_empty(), "{:?}", v.files());
    }
    // At the limit it is sent, and answered.
    let out = send_stdin(&v, 1024 * 1024);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v.notes_under("Inbox/echo").len(), 1);
    v.process(&[]);
    assert_eq!(v.notes_under("Inbox/echo").len(), 2, "{:?}", v.files());
}

fn job(cron: &str) -> String {
    format!("---\ntags: [agent/job]\nagent: echo\ncron: \"{cron}\"\ntz: UTC\n---\nhello\n")
}

#[test]
fn a_schedule_that_never_fires_is_refused_by_check_and_schedule() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.write("Jobs/feb30.md", &job("0 9 30 2 *"));
    v.write("Jobs/apr31.md", &job("0 0 31 4 *"));
    // Rare but real: kept.
    v.write("Jobs/leap.md", &job("0 9 29 2 *"));
    v.write("Jobs/or-rule.md", &job("0 9 30 2 mon"));
    let out = v.check();
    assert_no_panic(&out);
    assert_eq!(out.code(), Some(1), "{out}");
    for f in ["Jobs/feb30.md", "Jobs/apr31.md"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("error: {f}: ")))
            .unwrap_or_else(|| panic!("no error for {f}:\n{out}"));
        assert_contains(line, "field `cron`");
        assert_contains(line, "never fires");
    }
    assert_contains(&out.stdout, "2 error(s)");

    let out = vr(&[
        "schedule",
        v.root_str(),
        "--from",
        "2026-11-21T00:00:00Z",
        "--count",
        "1",
        "--json",
    ])
    .run();
    assert_no_panic(&out);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "error: Jobs/feb30.md: ");
    assert_contains(&out.stderr, "never fires");
    let got: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let next = |job: &str| {
        got.as_array()
            .and_then(|a| a.iter().find(|j| j["job"] == job))
            .map(|j| j["next"].clone())
    };
    assert_eq!(next("Jobs/feb30"), None);
    assert_eq!(
        next("Jobs/leap"),
        Some(serde_json::json!(["2028-02-29T09:00:00+00:00"]))
    );
    assert_eq!(
        next("Jobs/or-rule"),
        Some(serde_json::json!(["2027-02-01T09:00:00+00:00"]))
    );
}

#[test]
fn help_describes_every_argument_and_lists_the_exit_codes() {
    let top = vr(&["--help"]).run().success();
    assert_contains(&top.stdout, "Exit codes:");
    for code in ["  0 ", "  1 ", "  2 ", "  130 "] {
        assert_contains(&top.stdout, code);
    }
    for cmd in [
        "serve",
        "process",
        "send",
        "init",
        "check",
        "status",
        "reset",
        "schedule",
        "tail",
        "health",
        "completions",
        "man",
    ] {
        // `-h`: one line an argument (`--help` puts descriptions on the
        // next line once any argument has a long description).
        let out = vr(&[cmd, "-h"]).run().success();
        let mut in_list = false;
        for line in out.stdout.lines() {
            if line == "Arguments:" || line == "Options:" {
                in_list = true;
                continue;
            }
            if line.is_empty() {
                in_list = false;
                continue;
            }
            let entry = line.trim_start();
            if in_list && (entry.starts_with('-') || entry.starts_with('<')) {
                // `  <VAULT>  The vault directory`, `  -h, --help  Print help`
                let described = line.trim().split("  ").filter(|p| !p.is_empty()).count() >= 2;
                assert!(described, "`{cmd} --help`: no description: {line:?}");
            }
        }
    }
}
