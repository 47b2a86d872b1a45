//! Integration tests of `vaultrunner serve`, driving the real binary on
//! temporary vaults: answering, the settle window, no write loops, hot
//! reload of definitions, the single-instance lock, shutdown and timeouts
//! (no orphaned processes), editor save styles, ignored paths, idle CPU.
//!
//! Every test waits by polling the disk against a deadline (the helpers
//! are in `common`: `Serve::ready`, `answered`, `sentinel`, …). The fixed
//! pauses left are observation windows ("nothing happens for N seconds",
//! idle CPU), the pacing of simulated editors, and one chosen moment;
//! each says which it is.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{
    TestVault, alive, inbound, is_vaultrunner_temp, poll_until, read_pid, reply_of, survivors, vr,
};

/// 30 s: the deadline for notes that wait out a settle window first.
const SLOW: Duration = Duration::from_secs(30);

/// Asserts that the reply to `rel` was written at least 1.3 s after
/// `since` (`what`): the 1.5 s settle window these tests use, less slack.
#[track_caller]
fn assert_quiet_before_reply(v: &TestVault, rel: &str, since: SystemTime, what: &str) {
    let replied = fs::metadata(v.path(&reply_of(rel)))
        .unwrap()
        .modified()
        .unwrap();
    let quiet = replied.duration_since(since).unwrap_or_default();
    assert!(
        quiet >= Duration::from_millis(1300),
        "{rel} was answered only {quiet:?} after {what} (settle is 1.5 s)"
    );
}

// ------------------------------------------------------------------ tests

#[test]
fn answers_notes_including_in_new_directories() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    let s = v.spawn_serve(&[]);
    s.ready(&v);

    v.message("Inbox/first.md", "echo", "", "hello");
    s.answered_with(&v, "Inbox/first.md", "echo: hello");

    // A directory created after start, written into at once.
    fs::create_dir(v.path("Fresh")).unwrap();
    v.message("Fresh/x.md", "echo", "", "in a new dir");
    // Nested directories created in one go.
    fs::create_dir_all(v.path("a/b/c")).unwrap();
    v.message("a/b/c/x.md", "echo", "", "deep");
    // And a nested tree whose files land before any watch could exist.
    let deep = v.path("p/q/r");
    fs::create_dir_all(&deep).unwrap();
    for i in 0..5 {
        fs::write(
            deep.join(format!("m{i}.md")),
            inbound("echo", "", &format!("burst {i}")),
        )
        .unwrap();
    }
    s.answered(&v, "Fresh/x.md");
    s.answered(&v, "a/b/c/x.md");
    for i in 0..5 {
        s.answered(&v, &format!("p/q/r/m{i}.md"));
        assert_eq!(
            v.body(&format!("p/q/r/m{i}.reply.md")).trim(),
            format!("echo: burst {i}")
        );
    }
    assert_eq!(v.body("Fresh/x.reply.md").trim(), "echo: in a new dir");
    assert_eq!(v.body("a/b/c/x.reply.md").trim(), "echo: deep");
    for rel in ["Inbox/first.md", "Fresh/x.md", "a/b/c/x.md"] {
        assert_eq!(v.get(rel, "status").as_deref(), Some("handled"));
        assert_eq!(v.get(&reply_of(rel), "status").as_deref(), Some("ok"));
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

/// Folders made in one go (`mkdir -p`) with notes written into them at
/// once, before any watch of them can exist: every note is answered
/// promptly by a look at the new folders, and the vault is not scanned for
/// it (a scan costs a listing of every note; dated inbox folders make a new
/// folder a day per agent). Later notes in those folders are seen too.
#[test]
fn notes_in_new_nested_folders_are_answered_without_a_scan_of_the_vault() {
    let v = TestVault::with_probes();
    v.agent(
        "echo",
        "backend: echo
",
        "",
    );
    let s = v
        .serve_run(&[])
        .env("VAULTRUNNER_LOG", "info,vaultrunner=debug")
        .spawn(v.next_log("serve"));
    s.ready(&v);
    let day = v.path("Inbox/echo/2031/01/02");
    fs::create_dir_all(&day).unwrap();
    let mut rels = Vec::new();
    for i in 0..5 {
        fs::write(
            day.join(format!("m{i}.md")),
            inbound("echo", "", &format!("burst {i}")),
        )
        .unwrap();
        rels.push(format!("Inbox/echo/2031/01/02/m{i}.md"));
    }
    v.message("Inbox/echo/2031/month.md", "echo", "", "burst 5");
    rels.push("Inbox/echo/2031/month.md".into());
    for (i, rel) in rels.iter().enumerate() {
        s.answered_with(&v, rel, &format!("echo: burst {i}"));
    }
    // The new folders are watched now.
    v.message("Inbox/echo/2031/01/02/later.md", "echo", "", "later");
    s.answered_with(&v, "Inbox/echo/2031/01/02/later.md", "echo: later");
    let log = s.log_text();
    assert!(
        log.contains("cron scheduler started"),
        "debug lines are off:\n{log}"
    );
    assert!(!log.contains("scanning the vault"), "{log}");
}

#[test]
fn settle_window_waits_for_quiet_and_answers_once() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    // Set up long before `serve` starts: the definitions are read at once,
    // not after a settle window of their own.
    v.backdate("Agents", Duration::from_secs(60));
    fs::create_dir(v.path("Inbox")).unwrap();
    let mut s = v.spawn_serve(&["--settle-ms", "1500"]);
    s.ready(&v);

    // A single user write: not answered before ~1.5 s of quiet.
    let rel = "Inbox/typed.md";
    let written = SystemTime::now();
    v.message(rel, "echo", "", "one shot");
    s.answered(&v, rel);
    assert_quiet_before_reply(&v, rel, written, "it was written");

    // Obsidian-style autosave: the note is rewritten every 300 ms for 3 s,
    // growing each time. It must not be answered while it changes, and
    // must be answered once, with the final text.
    let rel = "Inbox/autosave.md";
    let mut text = String::from("I am typing");
    let start = Instant::now();
    let mut last_write = SystemTime::now();
    while start.elapsed() < Duration::from_secs(3) {
        text.push_str(" more");
        v.message(rel, "echo", "", &text);
        last_write = SystemTime::now();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !v.exists(&reply_of(rel)),
            "answered while still being edited (after {:?})\n{}",
            start.elapsed(),
            s.log_text()
        );
    }
    s.answered(&v, rel);
    assert_quiet_before_reply(&v, rel, last_write, "the last save");
    assert_eq!(v.body(&reply_of(rel)).trim(), format!("echo: {text}"));

    // Exactly once: nothing more happens over the next seconds (an
    // observation window).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(v.get(rel, "status").as_deref(), Some("handled"));
    assert_eq!(v.get(rel, "attempts").as_deref(), Some("1"));
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("2")
    );
    assert!(s.still_running());
}

/// A note still being typed when `serve` starts waits for the settle
/// window like any other, and one that a crash left `working` moments
/// before is still recovered once it is quiet.
#[test]
fn the_start_up_scan_waits_for_the_settle_window_and_still_recovers() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    v.message("Inbox/typing.md", "echo", "", "half a thou");
    v.message(
        "Inbox/crashed.md",
        "echo",
        "status: working\nattempts: 1\n",
        "cut short",
    );
    let s = v.spawn_serve(&["--settle-ms", "4000"]);
    s.started();
    // An observation window: not answered in the first half second.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !v.exists(&reply_of("Inbox/typing.md")),
        "a note written just before the start was answered at once:\n{}",
        s.log_text()
    );
    // The user finishes the sentence.
    v.message(
        "Inbox/typing.md",
        "echo",
        "",
        "half a thought, now finished",
    );
    s.answered_within(&v, "Inbox/typing.md", SLOW);
    s.answered_within(&v, "Inbox/crashed.md", SLOW);
    assert_eq!(
        v.body(&reply_of("Inbox/typing.md")).trim(),
        "echo: half a thought, now finished"
    );
    assert_eq!(v.get("Inbox/typing.md", "attempts").as_deref(), Some("1"));
    // Recovered: its second start, and answered once.
    assert_eq!(
        v.get("Inbox/crashed.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(v.get("Inbox/crashed.md", "attempts").as_deref(), Some("2"));
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("2")
    );
}

/// A `working` note the start-up scan deferred stays a recovery even when
/// a rescan (here: a new folder) reads it before its settle timer fires.
#[test]
fn a_deferred_crashed_note_read_by_a_rescan_is_still_recovered() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    v.message(
        "Inbox/crashed.md",
        "echo",
        "status: working\nattempts: 1\n",
        "cut short",
    );
    // Written 1.2 s before the start: older than the settle window by the
    // time the rescan comes, but not at the start, so the start defers it
    // and sets a 2 s timer.
    v.backdate("", Duration::from_millis(1200));
    let s = v.spawn_serve(&["--settle-ms", "2000"]);
    s.started();
    // A chosen moment, not a wait: 1 s after the start the note is older
    // than the settle window and its 2 s timer has not fired yet.
    std::thread::sleep(Duration::from_millis(1000));
    // A new folder: the watcher rescans the whole vault at once.
    v.write("Later/new.md", "just a note\n");
    s.answered_within(&v, "Inbox/crashed.md", SLOW);
    assert_eq!(v.get("Inbox/crashed.md", "attempts").as_deref(), Some("2"));
}

#[test]
fn settle_window_applies_in_new_directories() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    // Set up long before `serve` starts: the definitions are read at once,
    // not after a settle window of their own.
    v.backdate("Agents", Duration::from_secs(60));
    let s = v.spawn_serve(&["--settle-ms", "1500"]);
    s.ready(&v);
    // mkdir, then the note at once: the directory scan must not read it
    // before it has been quiet for the settle window either.
    let written = SystemTime::now();
    fs::create_dir_all(v.path("New/deeper")).unwrap();
    v.message("New/deeper/n.md", "echo", "", "in a new dir");
    v.message("New/n.md", "echo", "", "next to it");
    s.answered(&v, "New/deeper/n.md");
    s.answered(&v, "New/n.md");
    for rel in ["New/deeper/n.md", "New/n.md"] {
        assert_quiet_before_reply(&v, rel, written, "it was written");
    }
}

#[test]
fn directories_moved_or_renamed_into_place() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    fs::create_dir_all(v.path("Before/sub")).unwrap();
    let s = v.spawn_serve(&[]);
    s.ready(&v);
    // A folder prepared elsewhere on the same file system, moved in.
    let outside = tempfile::tempdir_in(&v.parent).unwrap();
    fs::create_dir_all(outside.path().join("Moved/sub")).unwrap();
    fs::write(
        outside.path().join("Moved/sub/m.md"),
        inbound("echo", "", "moved in"),
    )
    .unwrap();
    fs::rename(outside.path().join("Moved"), v.path("Moved")).unwrap();
    s.answered(&v, "Moved/sub/m.md");
    // A note written later into the moved-in folder.
    v.message("Moved/sub/later.md", "echo", "", "later");
    s.answered(&v, "Moved/sub/later.md");
    // A folder of the vault renamed while serving, then written into.
    fs::rename(v.path("Before"), v.path("After")).unwrap();
    v.message("After/sub/r.md", "echo", "", "renamed dir");
    s.answered_with(&v, "After/sub/r.md", "echo: renamed dir");
}

#[test]
fn cli_sender_skips_the_settle_window() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    // The folders exist already: the notes arrive as watcher events.
    fs::create_dir_all(v.path("Inbox/echo")).unwrap();
    // Set up long before `serve` starts: the definitions are read at once,
    // not after a settle window of their own.
    v.backdate("Agents", Duration::from_secs(60));
    // A long settle so "without waiting" is unmistakable.
    let s = v.spawn_serve(&["--settle-ms", "8000"]);
    s.ready(&v);

    // As `vaultrunner send` writes it: atomically, with `sender: cli`.
    let t0 = Instant::now();
    v.write_atomic("Inbox/sent.md", &inbound("echo", "sender: cli\n", "quick"));
    s.answered(&v, "Inbox/sent.md");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "a `sender: cli` note waited {took:?} (settle is 8 s)"
    );

    // The real `send` command.
    let t0 = Instant::now();
    let out = vr(&["send", v.root_str(), "echo", "via send"])
        .run()
        .success();
    let printed = out.stdout.trim().to_string();
    let rel = format!("{printed}.md");
    assert!(v.exists(&rel), "send printed {printed:?}");
    s.answered(&v, &rel);
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
        &inbound("echo", "sender: cli\n", "new dir"),
    );
    s.answered(&v, "Fresh/sent.md");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "a `sender: cli` note in a new folder waited {:?} (settle is 8 s)",
        t0.elapsed()
    );

    // A user-written note in the same vault does wait.
    let t0 = Instant::now();
    v.message("Inbox/user.md", "echo", "", "typed");
    s.answered_within(&v, "Inbox/user.md", SLOW);
    assert!(
        t0.elapsed() >= Duration::from_millis(7500),
        "a user note was answered after {:?} (settle is 8 s)",
        t0.elapsed()
    );
}

#[test]
fn no_loops_after_replies() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    v.agent("multi", "backend: echo\nmode: multi-threaded\n", "");
    v.agent("shout", "backend: command\ncommand: [tr, a-z, A-Z]\n", "");
    // A command agent that edits a note of its own in the vault each turn
    // (something real tools do): its write is an external change.
    let sc = v.script(
        "scribe.sh",
        "cat > /dev/null\necho \"note $VAULTRUNNER_THREAD\" > \"$VAULTRUNNER_VAULT/scribbles.md\"\necho written",
    );
    v.agent(
        "scribe",
        &format!("backend: command\ncommand: [sh, \"{}\"]\n", sc.display()),
        "",
    );
    let s = v.spawn_serve(&["--settle-ms", "300"]);
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
        v.message(rel, agent, extra, body);
    }
    for (rel, ..) in msgs {
        s.answered_within(&v, rel, SLOW);
    }
    assert_eq!(v.body("Inbox/t2.reply.md").trim(), "LOUDER");
    assert_eq!(v.body("Inbox/w1.reply.md").trim(), "written");

    // Settle margin, then: nothing in the vault changes any more. Both are
    // windows, not waits: the margin lets the last turns' own writes (and
    // any settle window they start) pass — there is nothing to wait on that
    // tells — and a write loop shows only as a change over time.
    std::thread::sleep(Duration::from_millis(800));
    let before = v.stat_snapshot();
    std::thread::sleep(Duration::from_secs(2));
    let after = v.stat_snapshot();
    assert_eq!(
        before,
        after,
        "files changed after the replies (a write loop?)\n--- serve log ---\n{}",
        s.log_text()
    );

    // Each thread counted each of its messages once.
    let mut per_thread: BTreeMap<String, usize> = BTreeMap::new();
    for (rel, ..) in msgs {
        assert_eq!(v.get(rel, "status").as_deref(), Some("handled"), "{rel}");
        assert_eq!(v.get(rel, "attempts").as_deref(), Some("1"), "{rel}");
        let t = v.get(rel, "thread").unwrap();
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
            v.get(&rel, "turn_count").as_deref(),
            Some(n.to_string().as_str()),
            "{rel}"
        );
        assert_eq!(v.get(&rel, "status").as_deref(), Some("ok"), "{rel}");
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
    s.sentinel(&v, "after-touch");
    std::thread::sleep(Duration::from_millis(800));
    let before = v.stat_snapshot();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        before,
        v.stat_snapshot(),
        "files changed after a no-op save"
    );
    assert_eq!(v.read("Inbox/e1.md"), e1);
    assert_eq!(v.get("Inbox/e1.md", "attempts").as_deref(), Some("1"));
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("3")
    );
    assert!(
        v.body("Threads/echo/echo.md")
            .contains("Context from the user.")
    );
}

#[test]
fn definitions_hot_reload() {
    let v = TestVault::with_probes();
    let mut s = v.spawn_serve(&[]);
    s.ready(&v);
    // The `cmd` agent, printing `word`, with more front-matter lines.
    let cmd = |word: &str, extra: &str| {
        let yaml = format!("backend: command\ncommand: [sh, -c, \"echo {word}\"]\n{extra}");
        v.agent("cmd", &yaml, "");
    };

    // A message for an agent that does not exist yet waits...
    v.message("Inbox/late.md", "late", "", "are you there");
    s.assert_still_waiting(&v, "s1", &["Inbox/late.md"]);
    // ...and is answered once the definition is added.
    v.agent("late", "backend: echo\n", "");
    s.answered_with(&v, "Inbox/late.md", "echo: are you there");

    // Editing a definition: the next message uses the new one.
    cmd("one", "");
    v.message("Inbox/c1.md", "cmd", "", "x");
    s.answered_with(&v, "Inbox/c1.md", "one");
    cmd("two", "");
    v.message("Inbox/c2.md", "cmd", "", "x");
    s.answered_with(&v, "Inbox/c2.md", "two");

    // Disabled: new messages wait; enabled again: they run.
    cmd("two", "enabled: false\n");
    v.message("Inbox/c3.md", "cmd", "", "x");
    s.assert_still_waiting(&v, "s2", &["Inbox/c3.md"]);
    cmd("three", "enabled: true\n");
    s.answered_with(&v, "Inbox/c3.md", "three");

    // Deleted: messages wait; restored: they run.
    fs::remove_file(v.path("Agents/cmd.md")).unwrap();
    v.message("Inbox/c4.md", "cmd", "", "x");
    s.assert_still_waiting(&v, "s3", &["Inbox/c4.md"]);
    cmd("four", "");
    s.answered_with(&v, "Inbox/c4.md", "four");

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
    v.agent("badfield", "backend: echo\ntimeout: soon\n", "");
    v.message("Inbox/b1.md", "broken", "", "x");
    v.message("Inbox/c5.md", "cmd", "", "x");
    v.message("Inbox/f1.md", "badfield", "", "x");
    v.message("Inbox/o1.md", "ok", "", "still here");
    v.message("Inbox/l1.md", "late", "", "me too");
    s.answered_with(&v, "Inbox/o1.md", "echo: still here");
    s.answered(&v, "Inbox/l1.md");
    s.assert_still_waiting(&v, "s4", &["Inbox/b1.md", "Inbox/c5.md", "Inbox/f1.md"]);
    assert!(s.still_running(), "serve stopped:\n{}", s.log_text());
    // Fixing the broken definition lets its messages run.
    cmd("fixed", "");
    s.answered_with(&v, "Inbox/c5.md", "fixed");
}

#[test]
fn a_second_instance_is_refused() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    let mut s = v.spawn_serve(&[]);
    s.ready(&v);
    let vault = v.root_str();
    for args in [
        vec!["serve", vault, "--settle-ms", "0", "--listen", "none"],
        vec!["process", vault],
    ] {
        let t0 = Instant::now();
        let out = vr(&args).run().failure();
        let err = &out.stderr;
        assert!(
            err.contains("already running"),
            "{args:?}: stderr does not say \"already running\": {err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    // The first one is unaffected.
    assert!(s.still_running());
    v.message("Inbox/after.md", "echo", "", "still served");
    s.answered(&v, "Inbox/after.md");
}

#[test]
fn sigterm_stops_a_running_turn_without_orphans() {
    let v = TestVault::with_probes();
    let aux = v.scratch();
    let a = aux.display().to_string();
    let sc = v.script(
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
        "",
    );
    let mut s = v.spawn_serve(&[]);
    s.ready(&v);
    v.message("Inbox/long.md", "slow", "", "take your time");
    let sh = read_pid(&aux.join("sh.pid"));
    let sleep = read_pid(&aux.join("sleep.pid"));
    assert!(alive(sh) && alive(sleep));
    assert_eq!(v.get("Inbox/long.md", "status").as_deref(), Some("working"));

    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some(),
        "serve did not exit within 10 s of SIGTERM\n{}",
        s.log_text()
    );
    eprintln!("serve exited after {:?} with {:?}", t0.elapsed(), st);
    assert!(
        poll_until(Duration::from_secs(2), || !alive(sh) && !alive(sleep)),
        "turn processes survived shutdown: sh {} sleep {}",
        alive(sh),
        alive(sleep)
    );
    let status = v.get("Inbox/long.md", "status");
    assert!(
        matches!(status.as_deref(), None | Some("pending") | Some("working")),
        "after shutdown the message is {status:?}"
    );
    assert!(!v.exists("Inbox/long.reply.md"));

    // The next run answers it, once.
    v.process(&[]);
    assert_eq!(v.get("Inbox/long.md", "status").as_deref(), Some("handled"));
    assert_eq!(
        v.get("Inbox/long.reply.md", "status").as_deref(),
        Some("ok")
    );
    assert_eq!(v.body("Inbox/long.reply.md").trim(), "finished");
    let inbox: Vec<_> = fs::read_dir(v.path("Inbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut inbox = inbox;
    inbox.sort();
    assert_eq!(inbox, vec!["long.md", "long.reply.md"]);
    assert_eq!(
        v.get("Threads/slow/slow.md", "turn_count").as_deref(),
        Some("1")
    );
    eprintln!(
        "attempts after shutdown + process: {:?}",
        v.get("Inbox/long.md", "attempts")
    );
}

#[test]
fn turn_timeouts_kill_children_and_grandchildren() {
    let v = TestVault::with_probes();
    let aux = v.scratch();
    let a = aux.display().to_string();
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
        let sc = v.script(&format!("{name}.sh"), body);
        v.agent(
            name,
            &format!(
                "backend: command\ncommand: [sh, \"{}\"]\ntimeout: 1s\n",
                sc.display()
            ),
            "",
        );
    }
    let s = v.spawn_serve(&["--settle-ms", "0", "--jobs", "8"]);
    s.ready(&v);
    let t0 = Instant::now();
    for (name, ..) in &cases {
        v.message(&format!("Inbox/{name}.md"), name, "", "go");
    }
    let mut pids = Vec::new();
    for (name, ..) in &cases {
        let tag = if *name == "plain" {
            "plain".to_string()
        } else {
            format!("{name}-sh")
        };
        pids.push((tag.clone(), read_pid(&aux.join(format!("{tag}.pid")))));
        if *name != "plain" {
            pids.push((name.to_string(), read_pid(&aux.join(format!("{name}.pid")))));
        }
    }
    for (name, _, must_time_out) in &cases {
        let rel = format!("Inbox/{name}.md");
        s.answered_within(&v, &rel, SLOW);
        let reply = reply_of(&rel);
        let status = v.get(&reply, "status");
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
            assert_eq!(v.get(&rel, "status").as_deref(), Some("error"));
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
    let ids: Vec<i32> = pids.iter().map(|(_, p)| *p).collect();
    let live = survivors(&ids, Duration::from_secs(3));
    let named: Vec<_> = pids.iter().filter(|(_, p)| live.contains(p)).collect();
    assert!(live.is_empty(), "processes outlived their turn: {named:?}");
    // Each message answered exactly once.
    for (name, ..) in &cases {
        assert_eq!(
            v.get(&format!("Inbox/{name}.md"), "attempts").as_deref(),
            Some("1")
        );
    }
}

#[test]
fn editor_save_styles_and_ignored_paths() {
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    // Ignored copies that exist before start (found by the start-up scan).
    let ignored_before = [
        ".obsidian/early.md",
        ".trash/early.md",
        "Inbox/early.sync-conflict-20261121-120000-ABCDEF.md",
        "Inbox/early (conflicted copy 2026-11-21).md",
    ];
    for rel in ignored_before {
        v.message(rel, "echo", "", "must not run");
    }
    // Notes being edited, still drafts.
    v.message("Inbox/vim.md", "echo", "status: draft\n", "draft");
    v.message("Inbox/trunc.md", "echo", "status: draft\n", "draft");
    let s = v.spawn_serve(&["--settle-ms", "500"]);
    s.ready(&v);

    // Vim: swap file, writability probe `4913`, original renamed to `x.md~`,
    // new file written.
    v.write("Inbox/.vim.md.swp", "swap");
    v.write("Inbox/4913", "");
    fs::remove_file(v.path("Inbox/4913")).unwrap();
    fs::rename(v.path("Inbox/vim.md"), v.path("Inbox/vim.md~")).unwrap();
    v.message("Inbox/vim.md", "echo", "", "saved by vim");
    fs::remove_file(v.path("Inbox/vim.md~")).unwrap();

    // Truncate, pause, then write (a watcher can see an empty file).
    {
        let full = inbound("echo", "", "truncated then written");
        let (head, tail) = full.split_at(full.len() / 2);
        let mut f = fs::File::create(v.path("Inbox/trunc.md")).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(head.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(tail.as_bytes()).unwrap();
    }

    // Syncthing: a dot temp file, renamed into place.
    v.message("Inbox/.syncthing.synced.md.tmp", "echo", "", "synced in");
    fs::rename(
        v.path("Inbox/.syncthing.synced.md.tmp"),
        v.path("Inbox/synced.md"),
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
        v.message(rel, "echo", "", "must not run");
    }

    for rel in ["Inbox/vim.md", "Inbox/trunc.md", "Inbox/synced.md"] {
        s.answered(&v, rel);
    }
    assert_eq!(v.body("Inbox/vim.reply.md").trim(), "echo: saved by vim");
    assert_eq!(
        v.body("Inbox/trunc.reply.md").trim(),
        "echo: truncated then written"
    );
    assert_eq!(v.body("Inbox/synced.reply.md").trim(), "echo: synced in");

    // Let any late event settle (the sentinel, then an observation window
    // past the 500 ms settle), then check exactly-once and untouched.
    s.sentinel(&v, "done");
    std::thread::sleep(Duration::from_millis(1200));
    for rel in ["Inbox/vim.md", "Inbox/trunc.md", "Inbox/synced.md"] {
        assert_eq!(v.get(rel, "status").as_deref(), Some("handled"), "{rel}");
        assert_eq!(v.get(rel, "attempts").as_deref(), Some("1"), "{rel}");
    }
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("3")
    );
    for rel in ignored_before.iter().chain(ignored_after.iter()) {
        assert_eq!(
            v.read(rel),
            inbound("echo", "", "must not run"),
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
    for f in v.all_files() {
        assert!(!is_vaultrunner_temp(&f), "temp file left: {f}");
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
    let v = TestVault::with_probes();
    v.agent("echo", "backend: echo\n", "");
    for i in 0..200 {
        v.write(
            &format!("Notes/d{}/n{i}.md", i % 20),
            &format!("# Note {i}\n\nOrdinary text.\n"),
        );
    }
    v.message("Inbox/m.md", "echo", "", "hi");
    // A job that is not due for months keeps the cron trigger armed.
    v.write(
        "Jobs/yearly.md",
        "---\ntags: [agent/job]\nagent: echo\ncron: \"0 0 1 1 *\"\ntz: UTC\n---\nHappy new year\n",
    );
    // Everything `serve` runs: watcher, dispatcher, cron, HTTP.
    let s = v.spawn_serve(&["--settle-ms", "500", "--listen", "127.0.0.1:0"]);
    s.ready(&v);
    assert!(
        s.log_text().contains("HTTP API on"),
        "HTTP did not start:\n{}",
        s.log_text()
    );
    s.answered(&v, "Inbox/m.md");
    // A margin for the turn's last writes and their events, then the
    // measured window: both fixed, idle is what is measured.
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
