//! A vault's history (issue 14): what a start reads of it, and the saved
//! index (`.vaultrunner/index.cache`) that spares it the rest.

use std::time::Duration;

use crate::backends::{FakeHttp, OPENAI_KEY, Reply, openai_agent, openai_stream};
use crate::common::*;

/// Writes `n` messages of `agent` answered in its single thread, with
/// their replies, as vaultrunner writes them, under `dir`; all an hour old.
fn answered_history(env: &TestVault, agent: &str, dir: &str, n: usize) {
    for i in 0..n {
        let stem = format!("{dir}/old-{i:04}");
        env.write(
            &format!("{stem}.md"),
            &format!(
                "---\ntags:\n  - agent/message\n  - agent/message/inbound\nagent: {agent}\nsender: http\nts: 2026-01-01T00:{:02}:{:02}.000Z\nstatus: handled\nattempts: 1\nthread: \"[[Threads/{agent}/{agent}]]\"\nhandled_at: 2026-01-01T01:00:00.000Z\nreply: \"[[{stem}.reply]]\"\n---\nquestion {i}\n",
                i / 60,
                i % 60
            ),
        );
        env.write(
            &format!("{stem}.reply.md"),
            &format!(
                "---\ntags:\n  - agent/message\n  - agent/message/outbound\nagent: {agent}\ndirection: outbound\nsender: {agent}\nts: 2026-01-01T01:00:00.000Z\nin_reply_to: \"[[{stem}]]\"\nthread: \"[[Threads/{agent}/{agent}]]\"\nstatus: ok\n---\nanswer {i}\n"
            ),
        );
    }
    env.backdate("", Duration::from_secs(3600));
}

/// `process` with the scan's debug line on; returns how many notes the
/// start-up scan read.
fn process_counting_reads(env: &TestVault, vars: &[(&str, &str)]) -> usize {
    let mut run = env
        .vr(&["process", env.root_str()])
        .env("VAULTRUNNER_LOG", "info,vaultrunner::engine=debug");
    for (k, v) in vars {
        run = run.env(k, v);
    }
    let out = run.run().success();
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("scan: ") && l.contains(" read, "))
        .unwrap_or_else(|| panic!("no scan line in {out}"));
    let before = line.split(" read, ").next().unwrap();
    before
        .rsplit(", ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn a_start_reads_only_the_notes_that_changed_since_the_last_run() {
    let env = TestVault::new();
    env.agent("echo", "backend: echo\n", "");
    answered_history(&env, "echo", "Inbox/echo/2026/01/01", 200);
    env.message("Inbox/new1.md", "echo", "", "hi\n");
    // No saved index yet: every note is read.
    let first = process_counting_reads(&env, &[]);
    assert!(first > 400, "the first run read {first} notes");
    assert!(env.exists("Inbox/new1.reply.md"));
    assert!(env.path(".vaultrunner/index.cache").is_file());
    env.message("Inbox/new2.md", "echo", "", "hi again\n");
    let second = process_counting_reads(&env, &[]);
    // The definition, the new message, and what the last run wrote just
    // before it saved (too fresh to trust): never the 400 old notes.
    assert!(second < 20, "the second run read {second} notes");
    assert_eq!(
        env.get("Inbox/new2.md", "status").as_deref(),
        Some("handled")
    );
    // A note changed while nothing ran is read again, and so answered:
    // an answered message set back to pending.
    let old = "Inbox/echo/2026/01/01/old-0007.md";
    let text = env.read(old).replace("status: handled", "status: pending");
    env.write(old, &text);
    process_counting_reads(&env, &[]);
    assert_eq!(env.get(old, "status").as_deref(), Some("handled"));
    assert_ne!(
        env.get(old, "handled_at").as_deref(),
        Some("2026-01-01T01:00:00.000Z"),
        "answered again"
    );
}

#[test]
fn a_thread_s_history_comes_back_after_a_restart_without_reading_it_again() {
    let server = FakeHttp::start(|_, _| Reply::Stream(openai_stream(&["fine"], 3)));
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "Be brief.\n");
    answered_history(&env, "oa", "Inbox/oa/2026/01/01", 3);
    env.message("Inbox/n1.md", "oa", "", "new one\n");
    process_counting_reads(&env, &[OPENAI_KEY]);
    env.message("Inbox/n2.md", "oa", "", "new two\n");
    let read = process_counting_reads(&env, &[OPENAI_KEY]);
    assert!(read < 6, "the old exchanges were read again: {read} notes");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let texts: Vec<String> = reqs[1].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    // system, the three old exchanges and the first run's, the new message.
    assert_eq!(texts.len(), 1 + 2 * 4 + 1, "{texts:?}");
    assert_eq!(texts[1], "question 0");
    assert_eq!(texts[2], "answer 0");
    assert_eq!(texts[5], "question 2");
    assert!(texts[7].contains("new one"), "{texts:?}");
    assert!(texts[9].contains("new two"), "{texts:?}");
}

#[test]
fn a_saved_index_that_cannot_be_used_is_said_and_every_note_is_read() {
    let env = TestVault::new();
    env.agent("echo", "backend: echo\n", "");
    answered_history(&env, "echo", "Inbox/echo", 20);
    env.message("Inbox/m1.md", "echo", "", "one\n");
    env.process(&[]);
    let cache = ".vaultrunner/index.cache";
    for garbage in [
        b"not a cache at all".to_vec(),
        std::fs::read(env.path(cache)).unwrap()[..30].to_vec(),
    ] {
        env.write_bytes(cache, &garbage);
        let n = env.notes_under("Inbox").len();
        env.message(&format!("Inbox/m{n}.md"), "echo", "", "again\n");
        let out = env.process(&[]);
        assert!(
            out.stderr.contains("index.cache: ") && out.stderr.contains("not used"),
            "{out}"
        );
        assert!(env.exists(&format!("Inbox/m{n}.reply.md")));
        let back = std::fs::read(env.path(cache)).unwrap();
        assert!(back.starts_with(b"vaultrunner index cache\n"), "rewritten");
        // And the one written anew is used.
        assert!(!env.process(&[]).stderr.contains("not used"));
    }
}
