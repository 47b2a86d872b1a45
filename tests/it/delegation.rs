//! Agent-to-agent delegation through notes (SPEC §3 step 6, issue 5):
//! reply_to callbacks with correlation ids, the depth bound, messages that
//! wait for their agent — in one `process` run and under `serve`.

use std::time::Duration;

use crate::common::{TestVault, scalar, tags};

/// An orchestrator (`boss`) that hands the message to two workers with
/// correlation ids and logs every callback it receives.
fn orchestra(v: &TestVault) {
    let log = v.path("callbacks.log");
    v.command_agent(
        "boss",
        "",
        &format!(
            r#"if grep -q '^callback: "true"' "$VAULTRUNNER_MESSAGE"; then
  id=$(sed -n 's/^correlation_id: //p' "$VAULTRUNNER_MESSAGE")
  st=$(sed -n 's/^source_status: //p' "$VAULTRUNNER_MESSAGE")
  echo "$id $st" >> {log}
  echo "noted $id"
else
  task=$(cat)
  "$VAULTRUNNER_BIN" send "$VAULTRUNNER_VAULT" w1 "$task one" --reply-to boss --correlation-id t-1 >/dev/null
  "$VAULTRUNNER_BIN" send "$VAULTRUNNER_VAULT" w2 "$task two" --reply-to boss --correlation-id t-2 >/dev/null
  echo "delegated"
fi"#,
            log = crate::common::sh_quote(&log.display().to_string())
        ),
    );
    v.command_agent("w1", "", "tr a-z A-Z");
    v.command_agent("w2", "", "echo \"failing on purpose\" >&2; exit 4");
}

fn callback_notes(v: &TestVault) -> Vec<String> {
    v.files()
        .into_iter()
        .filter(|f| f.ends_with(".callback.md"))
        .collect()
}

fn log_lines(v: &TestVault) -> Vec<String> {
    let mut l: Vec<String> = std::fs::read_to_string(v.path("callbacks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    l.sort();
    l
}

fn assert_callbacks(v: &TestVault) {
    // Exactly one callback per task, with the worker's outcome.
    assert_eq!(log_lines(v), vec!["t-1 ok", "t-2 error"]);
    let cbs = callback_notes(v);
    assert_eq!(cbs.len(), 2, "{cbs:?}");
    for cb in &cbs {
        let fm = v.fm(cb);
        assert!(tags(&fm).contains(&"agent/message/inbound".to_string()));
        assert_eq!(scalar(&fm, "agent").as_deref(), Some("boss"));
        assert_eq!(scalar(&fm, "callback").as_deref(), Some("true"));
        assert!(
            matches!(fm.get("callback"), Some(serde_yaml::Value::String(_))),
            "callback is the string \"true\""
        );
        assert_eq!(scalar(&fm, "delegation_depth").as_deref(), Some("2"));
        assert!(
            fm.get("reply_to").is_none(),
            "a callback never has reply_to"
        );
        assert_eq!(scalar(&fm, "status").as_deref(), Some("handled"));
        let worker = scalar(&fm, "source_agent").unwrap();
        assert!(worker == "w1" || worker == "w2");
        assert_eq!(scalar(&fm, "sender"), Some(format!("callback:{worker}")));
        let src = scalar(&fm, "source_message").unwrap();
        let reply = src.trim_start_matches("[[").trim_end_matches("]]");
        assert!(v.exists(&format!("{reply}.md")), "{reply}");
        assert!(
            scalar(&fm, "source_thread")
                .unwrap()
                .contains(&format!("Threads/{worker}/"))
        );
        // The body links, it does not copy the reply.
        let body = v.body(cb);
        assert!(body.contains(&format!("[[{reply}]]")), "{body}");
        assert!(!body.contains("FAILING") && !body.contains("ONE"), "{body}");
        // The callback itself was answered once.
        assert!(v.exists(&cb.replace(".callback.md", ".callback.reply.md")));
    }
    // The tasks carried the correlation ids and depth 1.
    for (agent, id) in [("w1", "t-1"), ("w2", "t-2")] {
        let notes: Vec<String> = v
            .notes_under(&format!("Inbox/{agent}"))
            .into_iter()
            .filter(|n| !n.contains(".reply") && !n.contains(".callback"))
            .collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        let fm = v.fm(&notes[0]);
        assert_eq!(scalar(&fm, "correlation_id").as_deref(), Some(id));
        assert_eq!(scalar(&fm, "reply_to").as_deref(), Some("boss"));
        assert_eq!(scalar(&fm, "delegation_depth").as_deref(), Some("1"));
    }
}

#[test]
fn orchestrator_gets_one_callback_per_task_in_one_process_run() {
    let v = TestVault::new();
    orchestra(&v);
    v.message("Inbox/plan.md", "boss", "", "do the thing\n");
    let out = v.process(&[]);
    // plan + 2 tasks + 2 callbacks.
    crate::common::assert_contains(&out.stdout, "processed 5 message(s): 4 ok, 1 error");
    assert_callbacks(&v);
    // Running again changes nothing: no duplicate callbacks.
    let before = v.snapshot();
    v.process(&[]);
    assert_eq!(before, v.snapshot());
}

#[test]
fn orchestrator_under_serve() {
    let v = TestVault::new();
    orchestra(&v);
    let mut s = v.serve(&[]);
    v.vr(&["send", v.root_str(), "boss", "do the thing"])
        .run()
        .success();
    crate::common::wait_until(Duration::from_secs(20), "two callbacks", || {
        log_lines(&v).len() >= 2
            && callback_notes(&v)
                .iter()
                .all(|c| v.exists(&c.replace(".callback.md", ".callback.reply.md")))
    });
    // Their turns' last writes: each callback stamped `handled`.
    crate::common::wait_until(Duration::from_secs(20), "the callbacks stamped", || {
        callback_notes(&v)
            .iter()
            .all(|c| v.get(c, "status").as_deref() == Some("handled"))
    });
    s.stop();
    assert_callbacks(&v);
}

#[test]
fn no_callback_at_the_depth_limit() {
    let v = TestVault::new();
    v.agent("a", "backend: echo\n", "");
    v.agent("b", "backend: echo\n", "");
    // Depth 6 → callback at depth 7; depth 7 → its callback would be 8: none;
    // depth 8 → not run at all, no callback.
    for (depth, word) in [(6, "six"), (7, "seven"), (8, "eight")] {
        let extra = format!("reply_to: b\ndelegation_depth: {depth}\n");
        v.message(
            &format!("Inbox/d{depth}.md"),
            "a",
            &extra,
            &format!("{word}\n"),
        );
    }
    v.process(&[]);
    assert!(v.exists("Inbox/d6.callback.md"));
    assert_eq!(
        v.get("Inbox/d6.callback.md", "delegation_depth").as_deref(),
        Some("7")
    );
    assert!(!v.exists("Inbox/d7.callback.md"));
    assert!(!v.exists("Inbox/d8.callback.md"));
    assert_eq!(v.get("Inbox/d7.md", "status").as_deref(), Some("handled"));
    assert_eq!(v.get("Inbox/d8.md", "status").as_deref(), Some("error"));
    crate::common::assert_contains(&v.body("Inbox/d8.reply.md"), "depth");
}

#[test]
fn callback_for_a_message_that_gave_up_or_had_a_bad_agent() {
    let v = TestVault::new();
    v.agent("a", "backend: echo\n", "");
    v.agent("boss", "backend: echo\n", "");
    v.message(
        "Inbox/crashed.md",
        "a",
        "reply_to: boss\ncorrelation_id: c-1\nstatus: working\nattempts: 3\n",
        "x\n",
    );
    v.message(
        "Inbox/bad.md",
        "../x",
        "reply_to: boss\ncorrelation_id: c-2\n",
        "y\n",
    );
    v.process(&[]);
    for (cb, id) in [
        ("Inbox/crashed.callback.md", "c-1"),
        ("Inbox/bad.callback.md", "c-2"),
    ] {
        assert_eq!(v.get(cb, "source_status").as_deref(), Some("error"), "{cb}");
        assert_eq!(v.get(cb, "correlation_id").as_deref(), Some(id));
        assert_eq!(v.get(cb, "agent").as_deref(), Some("boss"));
    }
}

#[test]
fn callback_to_an_agent_that_does_not_exist_yet_waits_for_it() {
    let v = TestVault::new();
    v.agent("a", "backend: echo\n", "");
    v.message("Inbox/t.md", "a", "reply_to: later\n", "task\n");
    v.process(&[]);
    assert!(v.exists("Inbox/t.callback.md"));
    let cb_before = v.read("Inbox/t.callback.md");
    let out = v.check();
    crate::common::assert_contains(
        &out.stdout,
        "Inbox/t.callback.md: waiting for agent \"later\"",
    );
    assert_eq!(v.read("Inbox/t.callback.md"), cb_before, "left untouched");
    v.agent("later", "backend: echo\n", "");
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/t.callback.md", "status").as_deref(),
        Some("handled")
    );
}

#[test]
fn the_documented_example_runs_in_the_example_vault() {
    let v = TestVault::new();
    v.vr(&["init", v.root_str()]).run().success();
    v.vr(&["send", v.root_str(), "planner", "plan a picnic"])
        .run()
        .success();
    let out = v.process(&[]);
    // hello + planner + 2 workers + 2 callbacks.
    crate::common::assert_contains(&out.stdout, "processed 6 message(s): 6 ok, 0 error");
    let replies: Vec<String> = v
        .files()
        .into_iter()
        .filter(|f| f.ends_with(".callback.reply.md"))
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    let mut bodies: Vec<String> = replies
        .iter()
        .map(|r| v.body(r).trim().to_string())
        .collect();
    bodies.sort();
    assert!(
        bodies[0].starts_with("callback for ") && bodies[0].ends_with("-echo: ok"),
        "{bodies:?}"
    );
    assert!(bodies[1].ends_with("-shout: ok"), "{bodies:?}");
}
