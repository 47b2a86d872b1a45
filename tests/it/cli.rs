//! End-to-end tests of the CLI (SPEC §1–§3, §5): the real binary on temp
//! vaults, through `init`, `process`, `send`, `check`, `status`, `reset`.

use std::time::Duration;

use crate::common::{
    TestVault, assert_dated_message_path, inbound, is_rfc3339_millis_utc, sh_quote, tags, vr,
};

use crate::common::assert_contains;

// ---------------------------------------------------------------- init/process

#[test]
fn init_then_process_answers_hello_and_a_second_run_writes_nothing() {
    let v = TestVault::new();
    vr(&["init", v.root_str()]).run().success();
    assert!(v.exists("Inbox/hello.md"));
    assert!(!v.exists("Inbox/hello.reply.md"));
    let hello_before = v.read("Inbox/hello.md");

    let out = v.process(&[]);
    assert_contains(&out.stdout, "1 ok");

    // The reply: outbound, status ok, `echo: <message>`.
    let reply = v.fm("Inbox/hello.reply.md");
    let t = tags(&reply);
    assert!(t.contains(&"agent/message/outbound".to_string()), "{t:?}");
    assert!(t.contains(&"agent/message".to_string()), "{t:?}");
    assert_eq!(
        v.get("Inbox/hello.reply.md", "status").as_deref(),
        Some("ok")
    );
    assert_eq!(
        v.get("Inbox/hello.reply.md", "direction").as_deref(),
        Some("outbound")
    );
    assert_eq!(
        v.get("Inbox/hello.reply.md", "agent").as_deref(),
        Some("echo")
    );
    assert_eq!(
        v.get("Inbox/hello.reply.md", "in_reply_to").as_deref(),
        Some("[[Inbox/hello]]")
    );
    assert_eq!(
        v.get("Inbox/hello.reply.md", "thread").as_deref(),
        Some("[[Threads/echo/echo]]")
    );
    assert!(is_rfc3339_millis_utc(
        &v.get("Inbox/hello.reply.md", "ts").unwrap()
    ));
    let message = crate::common::split_note(&hello_before)
        .1
        .trim()
        .to_string();
    assert_eq!(
        v.body("Inbox/hello.reply.md").trim_end(),
        format!("echo: {message}")
    );

    // The inbound is stamped.
    let fm = v.fm("Inbox/hello.md");
    assert_eq!(
        crate::common::scalar(&fm, "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        crate::common::scalar(&fm, "reply").as_deref(),
        Some("[[Inbox/hello.reply]]")
    );
    assert_eq!(
        crate::common::scalar(&fm, "thread").as_deref(),
        Some("[[Threads/echo/echo]]")
    );
    assert_eq!(crate::common::scalar(&fm, "attempts").as_deref(), Some("1"));
    let handled_at = crate::common::scalar(&fm, "handled_at").unwrap();
    assert!(is_rfc3339_millis_utc(&handled_at), "{handled_at}");
    assert!(!fm.contains_key("error"));
    // Nothing else of the inbound changed.
    assert_eq!(
        v.body("Inbox/hello.md"),
        crate::common::split_note(&hello_before).1
    );

    // Thread note.
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("1")
    );

    // A second run finds nothing to do and writes nothing at all.
    let before = v.snapshot_with_mtimes();
    let out = v.process(&[]);
    assert_contains(&out.stdout, "processed 0 message(s)");
    assert_eq!(before, v.snapshot_with_mtimes());
}

#[test]
fn init_never_overwrites_existing_files() {
    let v = TestVault::new();
    v.write("Agents/echo.md", "my own echo\n");
    let out = vr(&["init", v.root_str()]).run().success();
    assert!(!out.stdout.contains("Agents/echo.md"), "{out}");
    assert_eq!(v.read("Agents/echo.md"), "my own echo\n");
    assert!(v.exists("Inbox/hello.md"));
}

#[test]
fn statuses_draft_handled_error_are_left_alone_absent_and_pending_run() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v.message("Inbox/absent.md", "echo", "", "no status\n");
    v.message(
        "Inbox/pending.md",
        "echo",
        "status: pending\n",
        "pending one\n",
    );
    v.message(
        "Inbox/draft.md",
        "echo",
        "status: draft\n",
        "half written\n",
    );
    v.message(
        "Inbox/handled.md",
        "echo",
        "status: handled\n",
        "done already\n",
    );
    v.message(
        "Inbox/error.md",
        "echo",
        "status: error\n",
        "failed before\n",
    );
    let untouched = ["Inbox/draft.md", "Inbox/handled.md", "Inbox/error.md"];
    let before: Vec<Vec<u8>> = untouched
        .iter()
        .map(|p| std::fs::read(v.path(p)).unwrap())
        .collect();

    let out = v.process(&[]);
    assert_contains(&out.stdout, "2 ok");

    for (p, b) in untouched.iter().zip(&before) {
        assert_eq!(&std::fs::read(v.path(p)).unwrap(), b, "{p} changed");
        let reply = p.replace(".md", ".reply.md");
        assert!(!v.exists(&reply), "{reply} should not exist");
    }
    for (p, msg) in [
        ("Inbox/absent", "no status"),
        ("Inbox/pending", "pending one"),
    ] {
        assert_eq!(
            v.get(&format!("{p}.md"), "status").as_deref(),
            Some("handled")
        );
        assert_eq!(
            v.body(&format!("{p}.reply.md")).trim_end(),
            format!("echo: {msg}")
        );
    }

    // Turning the draft into a message makes it run.
    let draft = v
        .read("Inbox/draft.md")
        .replace("status: draft", "status: pending");
    v.write("Inbox/draft.md", &draft);
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/draft.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.body("Inbox/draft.reply.md").trim_end(),
        "echo: half written"
    );
}

#[test]
fn failed_command_writes_an_error_reply_with_stderr() {
    let v = TestVault::new();
    v.command_agent(
        "broken",
        "",
        "echo 'partial output'\necho 'the frobnicator is out of flux' >&2\nexit 3",
    );
    v.message("Inbox/ask.md", "broken", "", "please work\n");
    let out = v.process(&[]);
    // A failed turn is an error reply, not a failed run.
    assert_contains(&out.stdout, "1 error");

    assert_eq!(
        v.get("Inbox/ask.reply.md", "status").as_deref(),
        Some("error")
    );
    let body = v.body("Inbox/ask.reply.md");
    assert_contains(&body, "the frobnicator is out of flux");
    assert_contains(&body, "3");
    let fm = v.fm("Inbox/ask.md");
    assert_eq!(
        crate::common::scalar(&fm, "status").as_deref(),
        Some("error")
    );
    let err = crate::common::scalar(&fm, "error").expect("`error` key on the inbound");
    assert_contains(&err, "the frobnicator is out of flux");
    assert_eq!(
        crate::common::scalar(&fm, "reply").as_deref(),
        Some("[[Inbox/ask.reply]]")
    );
    assert_eq!(crate::common::scalar(&fm, "attempts").as_deref(), Some("1"));
    assert!(is_rfc3339_millis_utc(
        &crate::common::scalar(&fm, "handled_at").unwrap()
    ));
    // The thread records the failed turn.
    assert_eq!(
        v.get("Threads/broken/broken.md", "status").as_deref(),
        Some("error")
    );
    // An error is final: the next run does not retry it.
    let before = v.snapshot();
    v.process(&[]);
    assert_eq!(before, v.snapshot());
}

#[test]
fn empty_stdout_still_writes_an_ok_reply_with_an_empty_body() {
    let v = TestVault::new();
    v.command_agent("mute", "", "cat > /dev/null");
    v.message("Inbox/quiet.md", "mute", "", "say nothing\n");
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/quiet.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.get("Inbox/quiet.reply.md", "status").as_deref(),
        Some("ok")
    );
    assert_eq!(v.body("Inbox/quiet.reply.md"), "");
}

#[test]
fn one_reply_per_inbound_next_to_it_in_nested_folders() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message("Projects/a/b/question.md", "echo", "", "deep\n");
    v.message("top.md", "echo", "", "shallow\n");
    v.process(&[]);
    assert_eq!(
        v.body("Projects/a/b/question.reply.md").trim_end(),
        "echo: deep"
    );
    assert_eq!(v.body("top.reply.md").trim_end(), "echo: shallow");
    let replies: Vec<_> = v
        .files()
        .into_iter()
        .filter(|f| f.contains(".reply"))
        .collect();
    assert_eq!(
        replies,
        vec!["Projects/a/b/question.reply.md", "top.reply.md"]
    );
}

// --------------------------------------------------------------------- threads

#[test]
fn single_threaded_agent_keeps_one_thread_and_counts_turns() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v.message(
        "Inbox/one.md",
        "echo",
        "ts: 2020-01-01T00:00:00Z\n",
        "one\n",
    );
    v.message(
        "Inbox/two.md",
        "echo",
        "ts: 2020-01-02T00:00:00Z\n",
        "two\n",
    );
    v.process(&[]);
    let threads = v.notes_under("Threads");
    assert_eq!(threads, vec!["Threads/echo/echo.md"]);
    let fm = v.fm("Threads/echo/echo.md");
    assert!(tags(&fm).contains(&"agent/thread".to_string()));
    assert_eq!(
        crate::common::scalar(&fm, "turn_count").as_deref(),
        Some("2")
    );
    assert_eq!(crate::common::scalar(&fm, "agent").as_deref(), Some("echo"));
    assert_eq!(
        crate::common::scalar(&fm, "mode").as_deref(),
        Some("single-threaded")
    );
    assert_eq!(crate::common::scalar(&fm, "status").as_deref(), Some("ok"));
    assert!(is_rfc3339_millis_utc(
        &crate::common::scalar(&fm, "last_turn_at").unwrap()
    ));
    assert!(!fm.contains_key("session"), "echo reports no session");
    for m in ["Inbox/one.md", "Inbox/two.md"] {
        assert_eq!(v.get(m, "thread").as_deref(), Some("[[Threads/echo/echo]]"));
    }

    // One more message later: the count goes on.
    v.message("Inbox/three.md", "echo", "", "three\n");
    v.process(&[]);
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("3")
    );
}

#[test]
fn subject_selects_a_named_thread_that_stays_under_the_agent() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message(
        "Inbox/r1.md",
        "echo",
        "subject: \"Weekly Report: Q3!\"\n",
        "first\n",
    );
    v.message(
        "Inbox/r2.md",
        "echo",
        "subject: weekly report q3\n",
        "second\n",
    );
    v.message("Inbox/evil.md", "echo", "subject: ../../x\n", "escape?\n");
    v.message("Inbox/plain.md", "echo", "", "no subject\n");
    let outside = v.outside_vault();
    v.process(&[]);
    assert_eq!(
        v.notes_under("Threads"),
        vec![
            "Threads/echo/echo--weekly-report-q3.md",
            "Threads/echo/echo--x.md",
            "Threads/echo/echo.md",
        ]
    );
    assert_eq!(
        v.get("Threads/echo/echo--weekly-report-q3.md", "turn_count")
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        v.get("Inbox/evil.md", "thread").as_deref(),
        Some("[[Threads/echo/echo--x]]")
    );
    assert_eq!(v.get("Inbox/evil.md", "status").as_deref(), Some("handled"));
    assert_eq!(outside, v.outside_vault(), "something written outside");
    // One agent's backlog over three threads: each thread ends `ok` with
    // its own count, whichever turn claimed the next message.
    for (t, n) in [
        ("Threads/echo/echo--weekly-report-q3.md", "2"),
        ("Threads/echo/echo--x.md", "1"),
        ("Threads/echo/echo.md", "1"),
    ] {
        assert_eq!(v.get(t, "status").as_deref(), Some("ok"), "{t}");
        assert_eq!(v.get(t, "turn_count").as_deref(), Some(n), "{t}");
    }
}

#[test]
fn multi_threaded_agent_starts_a_thread_per_inbound() {
    let v = TestVault::new();
    v.agent("multi", "mode: multi-threaded\n", "");
    v.message("Inbox/a.md", "multi", "", "a\n");
    v.message("Inbox/b.md", "multi", "", "b\n");
    v.message("Other/a.md", "multi", "", "another a\n");
    v.process(&[]);
    let threads = v.notes_under("Threads/multi");
    assert_eq!(threads.len(), 3, "{threads:?}");
    let mut linked = Vec::new();
    for m in ["Inbox/a.md", "Inbox/b.md", "Other/a.md"] {
        let t = v.get(m, "thread").unwrap();
        let path = format!("{}.md", t.trim_start_matches("[[").trim_end_matches("]]"));
        assert!(threads.contains(&path), "{path} not in {threads:?}");
        assert_eq!(v.get(&path, "turn_count").as_deref(), Some("1"));
        assert_eq!(v.get(&path, "mode").as_deref(), Some("multi-threaded"));
        linked.push(path);
    }
    linked.sort();
    linked.dedup();
    assert_eq!(linked.len(), 3);
}

#[test]
fn thread_body_is_never_changed_and_reaches_the_system_prompt() {
    let v = TestVault::new();
    v.write(
        "Agents/sys.md",
        "---\ntags: [agent/definition]\nbackend: command\ncommand: printf '%s' \"$VAULTRUNNER_SYSTEM_PROMPT\"\n---\nYou are sys.\n",
    );
    let thread_body = "\nRemember: the user likes *tea*.\n\n## Notes\n- [[Some Link]] #context\n";
    v.write(
        "Threads/sys/sys.md",
        &format!("---\ntags:\n  - agent/thread\n# my own comment\nagent: sys\n---\n{thread_body}"),
    );
    v.message("Inbox/q.md", "sys", "", "what do I like?\n");
    v.process(&[]);
    assert_eq!(v.get("Inbox/q.reply.md", "status").as_deref(), Some("ok"));
    assert_eq!(
        v.body("Inbox/q.reply.md"),
        "You are sys.\n\nRemember: the user likes *tea*.\n\n## Notes\n- [[Some Link]] #context\n"
    );
    let thread = v.read("Threads/sys/sys.md");
    assert_eq!(crate::common::split_note(&thread).1, thread_body);
    assert_contains(&thread, "# my own comment\n");
    let fm = v.fm("Threads/sys/sys.md");
    assert_eq!(
        crate::common::scalar(&fm, "turn_count").as_deref(),
        Some("1")
    );
    assert!(!fm.contains_key("session"), "command reports no session");
}

// ------------------------------------------------------------------ ordering

#[test]
fn fifo_within_an_agent_by_ts_then_mtime_then_path() {
    let v = TestVault::new();
    v.command_agent(
        "log",
        "",
        "cat >> \"$VAULTRUNNER_VAULT/order.log\"\necho >> \"$VAULTRUNNER_VAULT/order.log\"",
    );
    let day = 86_400u64;
    let base = 1_577_836_800u64; // 2020-01-01T00:00:00Z
    // name, ts (or mtime when None), body
    v.message(
        "Inbox/q/m0.md",
        "log",
        "ts: 2020-01-05T00:00:00Z\n",
        "sixth\n",
    );
    v.message(
        "Inbox/q/m1.md",
        "log",
        "ts: \"2020-01-03T00:00:00Z\"\n",
        "third\n",
    );
    v.message("Inbox/q/m2.md", "log", "", "fourth\n");
    v.set_mtime("Inbox/q/m2.md", base + 3 * day);
    v.message(
        "Inbox/q/m3.md",
        "log",
        "ts: 2020-01-01T00:00:00Z\n",
        "first\n",
    );
    v.message("Inbox/q/m4.md", "log", "", "second\n");
    v.set_mtime("Inbox/q/m4.md", base + day);
    // Same time as m2's mtime: the path decides (m2 < m5).
    v.message(
        "Inbox/q/m5.md",
        "log",
        "ts: 2020-01-04T00:00:00Z\n",
        "fifth\n",
    );
    v.process(&["--jobs", "4"]);
    assert_eq!(
        std::fs::read_to_string(v.path("order.log")).unwrap(),
        "first\nsecond\nthird\nfourth\nfifth\nsixth\n"
    );
}

#[test]
fn jobs_1_never_runs_two_turns_at_once() {
    let v = TestVault::new();
    let script = "d=\"$VAULTRUNNER_VAULT/running\"\nmkdir -p \"$d\"\ntouch \"$d/$VAULTRUNNER_AGENT.$$\"\nn=$(ls \"$d\" | wc -l | tr -d ' ')\nsleep 0.15\nrm \"$d/$VAULTRUNNER_AGENT.$$\"\necho \"$n\" >> \"$VAULTRUNNER_VAULT/counts.log\"\necho \"n=$n\"";
    for a in ["a1", "a2", "a3"] {
        v.command_agent(a, "", script);
        for i in 0..2 {
            v.message(&format!("Inbox/{a}-{i}.md"), a, "", "go\n");
        }
    }
    let out = v.process(&["--jobs", "1"]);
    assert_contains(&out.stdout, "6 ok");
    let counts = std::fs::read_to_string(v.path("counts.log")).unwrap();
    assert_eq!(counts.lines().collect::<Vec<_>>(), vec!["1"; 6], "{counts}");
}

#[test]
fn jobs_4_runs_four_agents_at_once() {
    let v = TestVault::new();
    // Each turn waits (up to 10 s) until all four agents have started: only
    // possible when all four run at the same time.
    let script = "d=\"$VAULTRUNNER_VAULT/started\"\nmkdir -p \"$d\"\ntouch \"$d/$VAULTRUNNER_AGENT\"\ni=0\nwhile [ \"$(ls \"$d\" | wc -l | tr -d ' ')\" -lt 4 ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\necho \"saw $(ls \"$d\" | wc -l | tr -d ' ')\"";
    for a in ["b1", "b2", "b3", "b4"] {
        v.command_agent(a, "", script);
        v.message(&format!("Inbox/{a}.md"), a, "", "go\n");
    }
    let out = v.process(&["--jobs", "4"]);
    assert_contains(&out.stdout, "4 ok");
    for a in ["b1", "b2", "b3", "b4"] {
        assert_eq!(
            v.body(&format!("Inbox/{a}.reply.md")).trim_end(),
            "saw 4",
            "{a} did not run alongside the others"
        );
    }
    assert!(
        out.elapsed < Duration::from_secs(8),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn one_agent_runs_strictly_serially_even_with_many_jobs() {
    let v = TestVault::new();
    v.command_agent(
        "solo",
        "",
        "if mkdir \"$VAULTRUNNER_VAULT/busy\" 2>/dev/null; then sleep 0.1; rmdir \"$VAULTRUNNER_VAULT/busy\"; echo alone; else echo OVERLAP; fi",
    );
    for i in 0..5 {
        v.message(&format!("Inbox/s{i}.md"), "solo", "", "go\n");
    }
    v.process(&["--jobs", "8"]);
    for i in 0..5 {
        assert_eq!(v.body(&format!("Inbox/s{i}.reply.md")).trim_end(), "alone");
    }
}

// ------------------------------------------------------- turns and delegation

#[test]
fn process_runs_messages_that_turns_send_during_the_run() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let script = format!(
        "{} send \"$VAULTRUNNER_VAULT\" echo \"hi from the delegator\" > /dev/null\necho delegated",
        sh_quote(crate::common::BIN)
    );
    v.command_agent("boss", "", &script);
    v.message("Inbox/task.md", "boss", "", "hand it on\n");
    let out = v.process(&[]);
    assert_contains(&out.stdout, "processed 2 message(s): 2 ok");
    assert_eq!(v.body("Inbox/task.reply.md").trim_end(), "delegated");

    let sent: Vec<String> = v
        .notes_under("Inbox/echo")
        .into_iter()
        .filter(|f| !f.ends_with(".reply.md"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let s = &sent[0];
    assert_eq!(v.get(s, "sender").as_deref(), Some("agent:boss"));
    assert_eq!(v.get(s, "delegation_depth").as_deref(), Some("1"));
    assert_eq!(v.get(s, "status").as_deref(), Some("handled"));
    let reply = s.replace(".md", ".reply.md");
    assert_eq!(v.body(&reply).trim_end(), "echo: hi from the delegator");
}

#[test]
fn two_agents_forwarding_to_each_other_stop_at_depth_8() {
    let v = TestVault::new();
    let fwd = |to: &str| {
        format!(
            "{} send \"$VAULTRUNNER_VAULT\" {to} - > /dev/null\necho forwarded",
            sh_quote(crate::common::BIN)
        )
    };
    v.command_agent("ping", "", &fwd("pong"));
    v.command_agent("pong", "", &fwd("ping"));
    v.message("Inbox/start.md", "ping", "", "ball\n");
    v.process(&[]);
    let mut inbound: Vec<(u64, String)> = v
        .files()
        .into_iter()
        .filter(|f| f.starts_with("Inbox/") && f.ends_with(".md") && !f.ends_with(".reply.md"))
        .map(|f| {
            let d = v
                .get(&f, "delegation_depth")
                .map_or(0, |d| d.parse().unwrap());
            (d, f)
        })
        .collect();
    inbound.sort();
    let depths: Vec<u64> = inbound.iter().map(|(d, _)| *d).collect();
    assert_eq!(depths, (0..=8).collect::<Vec<_>>(), "{inbound:?}");
    for (d, f) in &inbound {
        let status = v.get(f, "status").unwrap();
        let reply = f.replace(".md", ".reply.md");
        if *d < 8 {
            assert_eq!(status, "handled", "{f}");
            assert_eq!(v.body(&reply).trim_end(), "forwarded");
            assert_eq!(v.body(f).trim_end(), "ball");
        } else {
            assert_eq!(status, "error", "{f}");
            assert_contains(&v.body(&reply), "delegation depth 8");
        }
    }
}

#[test]
fn a_turn_sees_the_vaultrunner_environment() {
    let v = TestVault::new();
    v.command_agent(
        "envbot",
        "",
        "printf 'VAULT=%s\\n' \"$VAULTRUNNER_VAULT\"\nprintf 'AGENT=%s\\n' \"$VAULTRUNNER_AGENT\"\nprintf 'THREAD=%s\\n' \"$VAULTRUNNER_THREAD\"\nprintf 'MESSAGE=%s\\n' \"$VAULTRUNNER_MESSAGE\"\nprintf 'DELEGATION_DEPTH=%s\\n' \"$VAULTRUNNER_DELEGATION_DEPTH\"\nprintf 'SESSION=%s\\n' \"$VAULTRUNNER_SESSION\"",
    );
    v.message("Inbox/env.md", "envbot", "", "show me\n");
    v.message(
        "Inbox/deep.md",
        "envbot",
        "delegation_depth: 3\nsubject: Deep Thoughts\n",
        "deeper\n",
    );
    // A non-canonical spelling of the vault path, with a trailing slash.
    let spelled = format!("{}/../vault/", v.root_str());
    vr(&["process", &spelled]).run().success();
    let root = v.root_str();
    assert_eq!(
        v.body("Inbox/env.reply.md").trim_end(),
        format!(
            "VAULT={root}\nAGENT=envbot\nTHREAD=Threads/envbot/envbot\nMESSAGE={root}/Inbox/env.md\nDELEGATION_DEPTH=0\nSESSION="
        )
    );
    assert_eq!(
        v.body("Inbox/deep.reply.md").trim_end(),
        format!(
            "VAULT={root}\nAGENT=envbot\nTHREAD=Threads/envbot/envbot--deep-thoughts\nMESSAGE={root}/Inbox/deep.md\nDELEGATION_DEPTH=3\nSESSION="
        )
    );
}

#[test]
fn inbound_at_depth_8_is_refused_with_an_explaining_reply() {
    let v = TestVault::new();
    v.command_agent(
        "worker",
        "",
        "touch \"$VAULTRUNNER_VAULT/ran-$VAULTRUNNER_DELEGATION_DEPTH\"\necho did it",
    );
    v.message(
        "Inbox/d8.md",
        "worker",
        "delegation_depth: 8\n",
        "too deep\n",
    );
    v.message(
        "Inbox/d7.md",
        "worker",
        "delegation_depth: 7\n",
        "just fine\n",
    );
    let out = v.process(&[]);
    assert_contains(&out.stdout, "1 ok, 1 error");
    assert!(!v.exists("ran-8"), "depth 8 must not run the backend");
    assert!(v.exists("ran-7"));
    assert_eq!(v.get("Inbox/d8.md", "status").as_deref(), Some("error"));
    assert_contains(&v.get("Inbox/d8.md", "error").unwrap(), "delegation depth");
    assert_eq!(
        v.get("Inbox/d8.reply.md", "status").as_deref(),
        Some("error")
    );
    let body = v.body("Inbox/d8.reply.md");
    assert_contains(&body, "delegation depth 8");
    assert_contains(&body, "limit");
    assert_eq!(v.get("Inbox/d7.md", "status").as_deref(), Some("handled"));
}

/// An agent's backlog runs turn after turn, each claiming the next message
/// in its own end batch; a message in the backlog that cannot run (too
/// deep, or broken) is still ended on its own, in its place.
#[test]
fn a_backlog_with_unrunnable_messages_in_it_is_answered_in_order() {
    let v = TestVault::new();
    v.command_agent(
        "log",
        "",
        "cat >> \"$VAULTRUNNER_VAULT/order.log\"\necho >> \"$VAULTRUNNER_VAULT/order.log\"\necho done",
    );
    let msgs = [
        ("m1", "ts: 2020-01-01T00:00:01Z\n", "one\n"),
        (
            "m2",
            "ts: 2020-01-01T00:00:02Z\ndelegation_depth: 9\n",
            "too deep\n",
        ),
        ("m3", "ts: 2020-01-01T00:00:03Z\n", "three\n"),
        (
            "m4",
            "ts: 2020-01-01T00:00:04Z\ndelegation_depth: lots\n",
            "bad depth\n",
        ),
        ("m5", "ts: 2020-01-01T00:00:05Z\n", "five\n"),
    ];
    for (name, extra, body) in msgs {
        v.message(&format!("Inbox/{name}.md"), "log", extra, body);
    }
    let out = v.process(&[]);
    assert_contains(&out.stdout, "3 ok, 2 error");
    assert_eq!(
        std::fs::read_to_string(v.path("order.log")).unwrap(),
        "one\nthree\nfive\n"
    );
    for (name, status) in [
        ("m1", "handled"),
        ("m2", "error"),
        ("m3", "handled"),
        ("m4", "error"),
        ("m5", "handled"),
    ] {
        let fm = v.fm(&format!("Inbox/{name}.md"));
        assert_eq!(
            crate::common::scalar(&fm, "status").as_deref(),
            Some(status),
            "{name}"
        );
        assert!(v.exists(&format!("Inbox/{name}.reply.md")), "{name}");
        if status == "handled" {
            // One start each: a claim made by the turn before counts once.
            assert_eq!(
                crate::common::scalar(&fm, "attempts").as_deref(),
                Some("1"),
                "{name}"
            );
        }
    }
    assert_contains(&v.get("Inbox/m4.md", "error").unwrap(), "delegation_depth");
    let t = "Threads/log/log.md";
    assert_eq!(v.get(t, "turn_count").as_deref(), Some("3"));
    assert_eq!(v.get(t, "status").as_deref(), Some("ok"));
}

/// An agent with a backlog of slow turns gives up its slot after each turn
/// when another agent is waiting: it does not hold the only slot for its
/// whole backlog.
#[test]
fn a_slow_agent_gives_up_its_slot_to_a_waiting_one() {
    let v = TestVault::new();
    let script =
        "sleep 0.3\necho \"$VAULTRUNNER_AGENT\" >> \"$VAULTRUNNER_VAULT/order.log\"\necho done";
    v.command_agent("a-slow", "", script);
    v.command_agent("b-quick", "", script);
    for i in 0..4 {
        v.message(
            &format!("Inbox/s{i}.md"),
            "a-slow",
            &format!("ts: 2020-01-01T00:00:0{i}Z\n"),
            "slow\n",
        );
    }
    v.message("Inbox/q.md", "b-quick", "", "quick\n");
    v.process(&["--jobs", "1"]);
    let log = std::fs::read_to_string(v.path("order.log")).unwrap();
    let order: Vec<&str> = log.lines().collect();
    assert_eq!(order.len(), 5, "{log}");
    let quick = order.iter().position(|a| *a == "b-quick").unwrap();
    assert!(
        quick < 4,
        "b-quick waited for all of a-slow's backlog: {order:?}"
    );
}

#[test]
fn a_message_out_of_attempts_gives_up_without_running() {
    let v = TestVault::new();
    v.command_agent(
        "worker",
        "",
        "touch \"$VAULTRUNNER_VAULT/ran\"\necho did it",
    );
    v.message(
        "Inbox/tired.md",
        "worker",
        "status: working\nattempts: 3\n",
        "crashed thrice\n",
    );
    v.process(&[]);
    assert!(!v.exists("ran"), "the backend must not run a 4th time");
    let fm = v.fm("Inbox/tired.md");
    assert_eq!(
        crate::common::scalar(&fm, "status").as_deref(),
        Some("error")
    );
    assert_eq!(crate::common::scalar(&fm, "attempts").as_deref(), Some("3"));
    assert_contains(&crate::common::scalar(&fm, "error").unwrap(), "gave up");
    assert_eq!(
        v.get("Inbox/tired.reply.md", "status").as_deref(),
        Some("error")
    );
    assert_contains(&v.body("Inbox/tired.reply.md"), "gave up after 3 attempts");
}

// ------------------------------------------------------ waiting for an agent

#[test]
fn a_message_for_an_unknown_agent_waits_untouched_until_it_exists() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message("Inbox/ghost.md", "ghost", "", "are you there?\n");
    let before = v.read("Inbox/ghost.md");
    let out = v.process(&[]);
    assert_contains(&out.stdout, "1 waiting");
    assert_eq!(v.read("Inbox/ghost.md"), before);
    assert!(!v.exists("Inbox/ghost.reply.md"));
    assert!(!v.exists("Threads/ghost"));

    let out = v.check().success();
    assert_contains(&out.stdout, "warning: Inbox/ghost.md");
    assert_contains(&out.stdout, "ghost");
    assert_contains(&out.stdout, "0 error(s)");
    let st = vr(&["status", v.root_str()]).run().success();
    assert_contains(&st.stdout, "waiting: Inbox/ghost.md");

    v.agent("ghost", "", "");
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/ghost.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.body("Inbox/ghost.reply.md").trim_end(),
        "echo: are you there?"
    );
}

#[test]
fn a_disabled_agent_holds_its_messages() {
    let v = TestVault::new();
    v.agent("sleepy", "enabled: false\n", "");
    v.message("Inbox/wake.md", "sleepy", "", "wake up\n");
    let before = v.read("Inbox/wake.md");
    v.process(&[]);
    assert_eq!(v.read("Inbox/wake.md"), before);
    assert!(!v.exists("Inbox/wake.reply.md"));
    let out = v.check().success();
    assert_contains(&out.stdout, "Inbox/wake.md");
    assert_contains(&out.stdout, "disabled");

    v.agent("sleepy", "enabled: true\n", "");
    v.process(&[]);
    assert_eq!(v.body("Inbox/wake.reply.md").trim_end(), "echo: wake up");
}

// -------------------------------------------------------------------- check

#[test]
fn check_reports_invalid_definitions_with_file_and_field() {
    let v = TestVault::new();
    v.agent("badbackend", "backend: gpt-9000\n", "");
    v.agent("badmode", "mode: sideways\n", "");
    v.agent("nocommand", "backend: command\n", "");
    v.agent("badtimeout", "timeout: soonish\n", "");
    v.agent("good", "", "");
    v.message("Inbox/ok.md", "good", "", "still works\n");
    let out = v.check().failure();
    assert_eq!(out.code(), Some(1), "{out}");
    for (file, field) in [
        ("Agents/badbackend.md", "backend"),
        ("Agents/badmode.md", "mode"),
        ("Agents/nocommand.md", "command"),
        ("Agents/badtimeout.md", "timeout"),
    ] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{out}"));
        assert!(line.starts_with("error:"), "{line}");
        assert_contains(line, &format!("`{field}`"));
    }
    assert_contains(&out.stdout, "4 error(s)");
    assert!(!out.stdout.contains("Agents/good.md"), "{out}");

    // The valid agent still works in the same vault.
    v.process(&[]);
    assert_eq!(v.body("Inbox/ok.reply.md").trim_end(), "echo: still works");
}

#[test]
fn check_reports_broken_notes_and_process_answers_the_valid_ones() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    // A second definition of `echo`, later by path: reported, ignored.
    v.write(
        "Zzz/echo-copy.md",
        "---\ntags: [agent/definition]\nname: echo\nbackend: command\ncommand: [false]\n---\n",
    );
    v.write(
        "Inbox/broken-yaml.md",
        "---\ntags: [agent/message/inbound\nagent: echo\n---\nunclosed list\n",
    );
    v.write(
        "Inbox/conflicted.md",
        "---\ntags: [agent/message/inbound]\nagent: echo\n---\n<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> origin/main\n",
    );
    // A binary file named .md (invalid UTF-8, NUL bytes), mentioning agent/.
    let mut bin = b"\x89PNG\r\n\x1a\n\0\0\0agent/message/inbound\xff\xfe".to_vec();
    bin.extend(std::iter::repeat_n(0u8, 1000));
    v.write_bytes("Inbox/picture.md", &bin);
    // A note over 8 MiB.
    let mut huge = String::from("---\ntags: [agent/message/inbound]\nagent: echo\n---\n");
    while huge.len() <= 8 * 1024 * 1024 {
        huge.push_str("lorem ipsum dolor sit amet, consectetur adipiscing elit\n");
    }
    v.write("Inbox/huge.md", &huge);
    v.message("Inbox/valid.md", "echo", "", "valid message\n");
    v.message("Inbox/valid2.md", "echo", "", "another valid one\n");

    let out = v.check().failure();
    assert_eq!(out.code(), Some(1), "{out}");
    let line_of = |file: &str| -> String {
        out.stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported:\n{out}"))
            .to_string()
    };
    let l = line_of("Inbox/broken-yaml.md");
    assert!(l.starts_with("error:"), "{l}");
    assert_contains(&l.to_lowercase(), "yaml");
    let l = line_of("Zzz/echo-copy.md");
    assert_contains(&l, "duplicate");
    assert_contains(&l, "Agents/echo.md");
    let l = line_of("Inbox/conflicted.md");
    assert_contains(&l, "conflict");
    let l = line_of("Inbox/picture.md");
    assert!(l.starts_with("warning:"), "a binary .md is a warning: {l}");
    let l = line_of("Inbox/huge.md");
    assert_contains(&l, "limit");
    assert!(!out.stdout.contains("Inbox/valid"), "{out}");

    // `process` survives all of it and answers the valid messages.
    let before: Vec<(String, Vec<u8>)> = [
        "Inbox/broken-yaml.md",
        "Inbox/conflicted.md",
        "Inbox/picture.md",
        "Inbox/huge.md",
    ]
    .iter()
    .map(|p| (p.to_string(), std::fs::read(v.path(p)).unwrap()))
    .collect();
    let out = v.process(&[]);
    assert_contains(&out.stdout, "2 ok, 0 error");
    assert_eq!(
        v.body("Inbox/valid.reply.md").trim_end(),
        "echo: valid message"
    );
    assert_eq!(
        v.body("Inbox/valid2.reply.md").trim_end(),
        "echo: another valid one"
    );
    for (p, b) in before {
        assert_eq!(std::fs::read(v.path(&p)).unwrap(), b, "{p} changed");
        assert!(!v.exists(&p.replace(".md", ".reply.md")), "{p} answered");
    }
}

#[test]
fn check_is_clean_on_a_fresh_vault() {
    let v = TestVault::new();
    vr(&["init", v.root_str()]).run().success();
    let out = v.check().success();
    assert_contains(&out.stdout, "0 error(s)");
}

// ---------------------------------------------------------------- path tricks

#[test]
fn an_agent_name_with_dot_dots_gets_an_error_reply_and_writes_nothing_outside() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message("Inbox/evil.md", "../../etc", "", "escape\n");
    v.message("Inbox/evil2.md", "\"/tmp/abs\"", "", "absolute\n");
    v.message("Inbox/fine.md", "echo", "", "fine\n");
    // `check` names them before they run.
    let out = v.check().failure();
    for f in ["Inbox/evil.md", "Inbox/evil2.md"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(f))
            .unwrap_or_else(|| panic!("{f} not reported:\n{out}"));
        assert!(line.starts_with("error:"), "{line}");
        assert_contains(line, "not a valid agent name");
    }
    let outside = v.outside_vault();
    v.process(&[]);
    assert_eq!(
        outside,
        v.outside_vault(),
        "something written outside the vault"
    );
    for m in ["Inbox/evil", "Inbox/evil2"] {
        assert_eq!(
            v.get(&format!("{m}.md"), "status").as_deref(),
            Some("error")
        );
        assert_contains(
            &v.get(&format!("{m}.md"), "error").unwrap(),
            "not a valid agent name",
        );
        assert_eq!(
            v.get(&format!("{m}.reply.md"), "status").as_deref(),
            Some("error")
        );
    }
    assert_eq!(v.body("Inbox/fine.reply.md").trim_end(), "echo: fine");
    // Threads only for the real agent.
    assert_eq!(v.notes_under("Threads"), vec!["Threads/echo/echo.md"]);
}

#[test]
fn send_with_an_invalid_agent_name_fails_and_writes_nothing() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let before = v.snapshot();
    let outside = v.outside_vault();
    for bad in ["../../etc", "a/b", "", "sp ace", "évil"] {
        let out = vr(&["send", v.root_str(), bad, "hi"]).run().failure();
        assert_contains(&out.stderr, "not a valid agent name");
    }
    let out = vr(&["send", v.root_str(), "echo", "hi", "--reply-to", "../x"])
        .run()
        .failure();
    assert_contains(&out.stderr, "not a valid agent name");
    assert_eq!(before, v.snapshot());
    assert_eq!(outside, v.outside_vault());
}

// --------------------------------------------------------------------- send

#[test]
fn send_writes_an_inbound_note_and_prints_its_path() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let before = chrono::Utc::now();
    let out = vr(&[
        "send",
        v.root_str(),
        "echo",
        "hello there",
        "--subject",
        "Greetings",
        "--correlation-id",
        "c-42",
    ])
    .run()
    .success();
    let path = out.stdout.trim().to_string();
    // In the folder of the UTC day (issue 14), its reply beside it (below).
    assert_dated_message_path(&path, "echo", before, chrono::Utc::now());
    let rel = format!("{path}.md");
    assert!(v.exists(&rel), "{rel} missing");
    let fm = v.fm(&rel);
    let t = tags(&fm);
    assert!(t.contains(&"agent/message/inbound".to_string()), "{t:?}");
    assert!(t.contains(&"agent/message".to_string()), "{t:?}");
    assert_eq!(crate::common::scalar(&fm, "agent").as_deref(), Some("echo"));
    assert_eq!(crate::common::scalar(&fm, "sender").as_deref(), Some("cli"));
    assert_eq!(
        crate::common::scalar(&fm, "subject").as_deref(),
        Some("Greetings")
    );
    assert_eq!(
        crate::common::scalar(&fm, "correlation_id").as_deref(),
        Some("c-42")
    );
    assert!(is_rfc3339_millis_utc(
        &crate::common::scalar(&fm, "ts").unwrap()
    ));
    assert!(!fm.contains_key("delegation_depth"));
    assert!(!fm.contains_key("status"));
    assert_eq!(v.body(&rel).trim_end(), "hello there");

    v.process(&[]);
    assert_eq!(
        v.body(&format!("{path}.reply.md")).trim_end(),
        "echo: hello there"
    );
    assert_eq!(
        v.get(&rel, "thread").as_deref(),
        Some("[[Threads/echo/echo--greetings]]")
    );
}

/// Under `serve`, a message `send` writes into a new dated folder (the
/// first of the day) is answered at once, beside it, by a look at the new
/// folders rather than a scan of the vault; messages in the old layouts
/// (`Inbox/<agent>/x.md`, the vault root) are still answered, by `serve`
/// and by `process`.
#[test]
fn send_under_serve_is_answered_in_its_dated_folder_and_old_layouts_still_work() {
    let v = TestVault::with_probes();
    v.agent("echo", "", "");
    let mut serve = v
        .serve_run(&[])
        .env("VAULTRUNNER_LOG", "info,vaultrunner=debug")
        .spawn(v.next_log("serve"));
    serve.ready(&v);
    for i in 0..3 {
        let before = chrono::Utc::now();
        let out = v
            .vr(&["send", v.root_str(), "echo", &format!("dated {i}")])
            .run()
            .success();
        let path = out.stdout.trim().to_string();
        assert_dated_message_path(&path, "echo", before, chrono::Utc::now());
        let rel = format!("{path}.md");
        serve.answered_with(&v, &rel, &format!("echo: dated {i}"));
        assert_eq!(v.get(&rel, "status").as_deref(), Some("handled"));
    }
    // The old layouts, beside the dated folders.
    v.message("Inbox/echo/old.md", "echo", "", "old layout");
    v.message("at-the-root.md", "echo", "", "at the root");
    serve.answered_with(&v, "Inbox/echo/old.md", "echo: old layout");
    serve.answered_with(&v, "at-the-root.md", "echo: at the root");
    let log = serve.log_text();
    assert_contains(&log, "cron scheduler started"); // debug lines are on
    assert!(!log.contains("scanning the vault"), "{log}");
    serve.stop();

    v.write(
        "Inbox/echo/old2.md",
        &inbound("echo", "", "old layout again"),
    );
    v.write("root2.md", &inbound("echo", "", "root again"));
    v.process(&[]);
    assert_eq!(
        v.body("Inbox/echo/old2.reply.md").trim(),
        "echo: old layout again"
    );
    assert_eq!(v.body("root2.reply.md").trim(), "echo: root again");
}

#[test]
fn send_dash_reads_the_message_from_stdin() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let msg = "line one\nline two with \"quotes\" and #hash\n";
    let out = vr(&["send", v.root_str(), "echo", "-"])
        .stdin(msg)
        .run()
        .success();
    let rel = format!("{}.md", out.stdout.trim());
    assert_eq!(v.body(&rel), msg);
    assert_eq!(v.get(&rel, "sender").as_deref(), Some("cli"));
}

#[test]
fn send_to_an_agent_without_definition_warns_but_writes() {
    let v = TestVault::new();
    let out = vr(&["send", v.root_str(), "later", "hold on"])
        .run()
        .success();
    assert_contains(&out.stderr, "no definition");
    assert!(v.exists(&format!("{}.md", out.stdout.trim())));
}

#[test]
fn send_wait_prints_the_reply_while_serve_runs() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let mut serve = v.serve(&[]);
    let out = vr(&["send", v.root_str(), "echo", "ping pong", "--wait", "10"]).run();
    assert!(
        out.status.success(),
        "{out}\nserve log:\n{}",
        serve.log_text()
    );
    assert_eq!(out.stdout.trim_end(), "echo: ping pong");

    // An error reply is printed too, with a non-zero exit.
    v.command_agent("fail", "", "echo 'no luck' >&2; exit 1");
    // Give the watcher a moment to see the new definition: poll `send --wait`.
    let out = vr(&["send", v.root_str(), "fail", "try", "--wait", "10"]).run();
    assert_eq!(
        out.code(),
        Some(1),
        "{out}\nserve log:\n{}",
        serve.log_text()
    );
    assert_contains(&out.stdout, "no luck");
    serve.stop();
}

#[test]
fn send_wait_times_out_with_exit_2_and_keeps_the_message() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let out = vr(&["send", v.root_str(), "echo", "nobody serves", "--wait", "1"]).run();
    assert_eq!(out.code(), Some(2), "{out}");
    assert_contains(&out.stderr, "no reply within 1s");
    let sent = v.notes_under("Inbox/echo");
    assert_eq!(sent.len(), 1);
    // Still answered later.
    v.process(&[]);
    assert_eq!(v.get(&sent[0], "status").as_deref(), Some("handled"));
}

// ----------------------------------------------------------- lock and status

#[test]
fn process_refuses_a_vault_that_serve_holds_and_status_says_served() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let st = vr(&["status", v.root_str()]).run().success();
    assert_contains(&st.stdout, "not served");
    let mut serve = v.serve(&[]);
    let out = vr(&["process", v.root_str()]).run().failure();
    assert_contains(&out.stderr, "already running");
    assert!(out.elapsed < Duration::from_secs(5), "{:?}", out.elapsed);
    let st = vr(&["status", v.root_str()]).run().success();
    assert_contains(&st.stdout, "served by a running vaultrunner");
    assert_contains(&st.stdout, "echo");
    serve.stop();
    // Once it is gone the lock is free again.
    let st = vr(&["status", v.root_str()]).run().success();
    assert_contains(&st.stdout, "not served");
    v.process(&[]);
}

#[test]
fn status_lists_agents_turns_and_queues() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.agent("other", "enabled: false\n", "");
    v.message("Inbox/1.md", "echo", "", "one\n");
    v.process(&[]);
    v.message("Inbox/2.md", "echo", "", "two\n");
    let st = vr(&["status", v.root_str()]).run().success();
    let echo = st
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("echo "))
        .unwrap_or_else(|| panic!("{st}"));
    assert_contains(echo, "queued 1");
    assert_contains(echo, "turns 1");
    assert_contains(echo, " ok");
    let other = st
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("other "))
        .unwrap_or_else(|| panic!("{st}"));
    assert_contains(other, "disabled");
}

#[test]
fn a_missing_vault_is_an_error_for_process_and_check() {
    let v = TestVault::new();
    let missing = v.parent.join("nope");
    let m = missing.to_str().unwrap();
    for cmd in ["process", "check", "status"] {
        let out = vr(&[cmd, m]).run().failure();
        assert_contains(&out.stderr, "nope");
    }
    assert!(!missing.exists());
}

// --------------------------------------------------------------------- reset

#[test]
fn reset_blanks_the_session_and_keeps_every_other_byte() {
    let v = TestVault::new();
    // A command agent that shows the session it is asked to resume.
    v.command_agent("bot", "", "printf 'session=%s' \"$VAULTRUNNER_SESSION\"");
    let thread = "---\ntags:\n  - agent/thread\n# keep this comment\nagent: bot\nsession: abc # resume me\nturn_count: 7\ntitle: 'Quoted'\n---\nMy notes about #bot.\n";
    v.write("Threads/bot/bot.md", thread);
    let other = "---\ntags: [agent/thread]\nagent: bot\nsession: \"def\"\n---\n";
    v.write("Threads/bot/bot--topic.md", other);
    let untouched = "---\ntags: [agent/thread]\nagent: else\nsession: xyz\n---\n";
    v.write("Threads/else/else.md", untouched);

    // Before the reset a turn resumes the thread's session.
    v.message("Inbox/before.md", "bot", "", "who am I talking to?\n");
    v.process(&[]);
    assert_eq!(v.body("Inbox/before.reply.md").trim_end(), "session=abc");
    let thread = v.read("Threads/bot/bot.md");

    let out = vr(&["reset", v.root_str(), "bot"]).run().success();
    assert_contains(&out.stdout, "2 thread(s)");

    let after = v.read("Threads/bot/bot.md");
    let session = v.fm("Threads/bot/bot.md").get("session").cloned();
    assert!(
        matches!(&session, Some(serde_yaml::Value::Null))
            || matches!(&session, Some(serde_yaml::Value::String(s)) if s.is_empty()),
        "{session:?}"
    );
    // `reset_at` is stamped too (for backends that rebuild the history from
    // the thread's notes).
    let reset_at = v.get("Threads/bot/bot.md", "reset_at").unwrap();
    assert!(is_rfc3339_millis_utc(&reset_at), "{reset_at}");
    let without_reset_keys = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.starts_with("session:") && !l.starts_with("reset_at:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_reset_keys(&after), without_reset_keys(&thread));
    assert_contains(&after, "# keep this comment\n");
    assert!(after.ends_with("---\nMy notes about #bot.\n"), "{after}");
    assert_eq!(
        v.get("Threads/bot/bot--topic.md", "session").as_deref(),
        Some("")
    );
    assert_eq!(v.read("Threads/else/else.md"), untouched);

    // The next turn starts afresh.
    v.message("Inbox/after.md", "bot", "", "and now?\n");
    v.process(&[]);
    assert_eq!(v.body("Inbox/after.reply.md").trim_end(), "session=");

    let out = vr(&["reset", v.root_str(), "../x"]).run().failure();
    assert_contains(&out.stderr, "not a valid agent name");
}

// ---------------------------------------------------------------------- help

#[test]
fn every_subcommand_has_help() {
    let top = vr(&["--help"]).run().success();
    let mut commands: Vec<String> = Vec::new();
    let mut in_commands = false;
    for line in top.stdout.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() {
                break;
            }
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                commands.push(name);
            }
        }
    }
    for expected in [
        "serve", "process", "send", "init", "check", "status", "reset",
    ] {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} missing from {commands:?}"
        );
    }
    for c in &commands {
        let out = vr(&[c, "--help"]).run().success();
        assert_contains(&out.stdout, "Usage:");
    }
    vr(&["--version"]).run().success();
    vr(&["no-such-command"]).run().failure();
}

// ------------------------------------------------------------ fixes found in review

#[test]
fn a_message_set_back_to_pending_starts_its_attempts_afresh() {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    // A user re-ran this note several times: it is `pending`, not a crash
    // leftover, so the crash-loop bound does not apply.
    v.message(
        "Inbox/again.md",
        "echo",
        "status: pending\nattempts: 5\n",
        "once more\n",
    );
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/again.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(v.get("Inbox/again.md", "attempts").as_deref(), Some("1"));
    assert_eq!(v.body("Inbox/again.reply.md").trim(), "echo: once more");
}

#[test]
fn a_missing_workspace_is_named_not_mistaken_for_a_missing_program() {
    let v = TestVault::new();
    v.agent(
        "cat",
        "backend: command\ncommand: [cat]\nworkspace: no/such/dir\n",
        "",
    );
    v.message("Inbox/m.md", "cat", "", "hi\n");
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/m.reply.md", "status").as_deref(),
        Some("error")
    );
    let body = v.body("Inbox/m.reply.md");
    assert_contains(&body, "workspace");
    assert_contains(&body, "does not exist");
    assert!(!body.contains("not found on PATH"), "{body}");
}

#[test]
fn windows_reserved_agent_names_are_refused_up_front() {
    let v = TestVault::new();
    v.agent("con", "backend: echo\n", "");
    let out = v.check().failure();
    assert_contains(&out.stdout, "Agents/con.md");
    assert_contains(&out.stdout, "field `name`");
    let out = v.vr(&["send", v.root_str(), "aux", "hi"]).run().failure();
    assert_contains(&out.all(), "not a valid agent name");
}

#[test]
fn an_interrupted_process_says_so_and_exits_130() {
    let v = TestVault::new();
    v.command_agent("slow", "", "sleep 20; cat");
    v.message("Inbox/a.md", "slow", "", "one\n");
    v.message("Inbox/b.md", "slow", "", "two\n");
    let child = std::process::Command::new(crate::common::BIN)
        .args(["process", v.root_str()])
        .env_remove("VAULTRUNNER_VAULT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::common::wait_until(
        std::time::Duration::from_secs(10),
        "the turn to start",
        || v.get("Inbox/a.md", "status").as_deref() == Some("working"),
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(130));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_contains(&err, "interrupted; 1 message(s) still queued");
    // The cut-short message went back to pending; nothing was answered.
    assert_eq!(v.get("Inbox/a.md", "status").as_deref(), Some("pending"));
    assert!(!v.exists("Inbox/a.reply.md"));
}

#[test]
fn a_closed_stderr_and_stdout_do_not_stop_the_work() {
    // `vaultrunner process V 2>&1 >/dev/null | head -1`: every log line after
    // the first fails to write. That must not panic turns (it used to wedge
    // every agent after its first message).
    let v = TestVault::new();
    for a in ["a", "b"] {
        v.agent(a, "backend: echo\n", "");
        for i in 0..5 {
            v.message(&format!("Inbox/{a}{i}.md"), a, "", &format!("m{i}\n"));
        }
    }
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["process", v.root_str()])
        .env("VAULTRUNNER_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close both pipes without reading anything.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = crate::common::wait_exit(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("process hung with closed output"));
    assert!(status.success(), "{status:?}");
    for a in ["a", "b"] {
        for i in 0..5 {
            assert_eq!(
                v.get(&format!("Inbox/{a}{i}.md"), "status").as_deref(),
                Some("handled")
            );
        }
    }
}
