//! Crash safety, driving the real binary: several agents, hundreds of
//! messages, `serve` and `process` SIGKILLed mid-run at staggered moments
//! and restarted, then one `process` to completion. Afterwards every
//! message is answered exactly once, every note is whole, no temp file is
//! left behind, and the threads counted every turn.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use crate::common::{
    Serve, TestVault, inbound, is_vaultrunner_temp, parse_note, read_note, scalar, tags, walk,
};

/// Messages in all.
const TOTAL: usize = 400;
/// Of which written before the first start (the rest while it runs).
const UPFRONT: usize = 300;

/// (agent, front-matter of its definition).
const AGENTS: &[(&str, &str)] = &[
    ("e0", "backend: echo\n"),
    ("e1", "backend: echo\nmode: multi-threaded\n"),
    ("e2", "backend: echo\n"),
    ("e3", "backend: echo\n"),
    ("e4", "backend: echo\n"),
    ("shout", "backend: command\ncommand: [tr, a-z, A-Z]\n"),
];

// ---------------------------------------------------------------- helpers

/// The `i`-th message: its path, agent and note text.
fn message(i: usize) -> (String, &'static str, String) {
    let agent = AGENTS[i % AGENTS.len()].0;
    let rel = if i.is_multiple_of(7) {
        format!("Inbox/{agent}/deep/m{i:03}.md")
    } else {
        format!("Inbox/{agent}/m{i:03}.md")
    };
    // e2 spreads its messages over three named threads.
    let subject = if agent == "e2" {
        format!("subject: Topic {}\n", (i / AGENTS.len()) % 3)
    } else {
        String::new()
    };
    let text = inbound(agent, &subject, &format!("message number {i}\n"));
    (rel, agent, text)
}

fn expected_reply(agent: &str, i: usize) -> String {
    let m = format!("message number {i}");
    if agent == "shout" {
        m.to_uppercase()
    } else {
        format!("echo: {m}")
    }
}

/// The replies in the Inbox so far.
fn count_replies(v: &TestVault) -> usize {
    walk(&v.path("Inbox"))
        .iter()
        .filter(|(r, _)| r.ends_with(".reply.md"))
        .count()
}

/// Starts `vaultrunner <args>` in the background, its output appended to
/// `log`.
fn start(v: &TestVault, args: &[&str], log: &std::path::Path) -> Serve {
    v.vr(args)
        .env("VAULTRUNNER_LOG", "info")
        .spawn(log.to_path_buf())
}

/// What one kill left behind.
#[derive(Debug)]
struct KillReport {
    how: &'static str,
    replies: usize,
    working: usize,
    temp_files: usize,
    at: Duration,
}

fn inspect(v: &TestVault, how: &'static str, t0: Instant) -> KillReport {
    let files = v.all_files();
    let working = files
        .iter()
        .filter(|r| r.starts_with("Inbox/") && r.ends_with(".md") && !r.ends_with(".reply.md"))
        .filter(|r| {
            fs::read_to_string(v.path(r)).is_ok_and(|t| {
                parse_note(&t)
                    .is_ok_and(|(m, _)| scalar(&m, "status").as_deref() == Some("working"))
            })
        })
        .count();
    KillReport {
        how,
        replies: count_replies(v),
        working,
        temp_files: files.iter().filter(|r| is_vaultrunner_temp(r)).count(),
        at: t0.elapsed(),
    }
}

// ------------------------------------------------------------------- test

#[test]
fn killed_runs_recover_and_answer_everything_exactly_once() {
    let v = TestVault::new();
    let log = v.scratch().join("runs.log");
    let vault = v.root_str();
    let read_log = || fs::read_to_string(&log).unwrap_or_default();

    for (name, yaml) in AGENTS {
        v.agent(name, yaml, &format!("Agent {name}.\n"));
    }
    for i in 0..UPFRONT {
        let (rel, _, text) = message(i);
        v.write(&rel, &text);
    }

    let t0 = Instant::now();
    let mut kills: Vec<KillReport> = Vec::new();

    // Run 1: serve; the rest of the messages arrive while it runs; killed
    // once it has answered a few dozen.
    {
        let mut c = start(
            &v,
            &["serve", vault, "--settle-ms", "0", "--listen", "none"],
            &log,
        );
        for i in UPFRONT..TOTAL {
            let (rel, _, text) = message(i);
            v.write(&rel, &text);
        }
        let reached = c.wait_while_running(Duration::from_secs(60), || count_replies(&v) >= 40);
        assert!(reached, "run 1 made no progress:\n{}", read_log());
        c.kill();
        kills.push(inspect(&v, "serve, mid-run", t0));
    }
    // Run 2: serve killed almost at once (start-up: lock, temp clean-up,
    // recovery scan, first turns).
    {
        let mut c = start(
            &v,
            &["serve", vault, "--settle-ms", "0", "--listen", "none"],
            &log,
        );
        // A chosen moment, not a wait: 40 ms in, start-up is under way.
        std::thread::sleep(Duration::from_millis(40));
        c.kill();
        kills.push(inspect(&v, "serve, at start-up", t0));
    }
    // Run 3: process, killed mid-run.
    {
        let before = count_replies(&v);
        let mut c = start(&v, &["process", vault], &log);
        let reached =
            c.wait_while_running(Duration::from_secs(60), || count_replies(&v) >= before + 80);
        assert!(reached, "run 3 made no progress:\n{}", read_log());
        c.kill();
        kills.push(inspect(&v, "process, mid-run", t0));
    }
    // Run 4: serve again, killed mid-run.
    {
        let before = count_replies(&v);
        let mut c = start(
            &v,
            &["serve", vault, "--settle-ms", "0", "--listen", "none"],
            &log,
        );
        let reached =
            c.wait_while_running(Duration::from_secs(60), || count_replies(&v) >= before + 80);
        assert!(reached, "run 4 made no progress:\n{}", read_log());
        c.kill();
        kills.push(inspect(&v, "serve, mid-run", t0));
    }
    // Run 5: process, killed after a short, odd delay.
    {
        let mut c = start(&v, &["process", vault], &log);
        // A chosen moment, not a wait (odd, so it falls anywhere in a turn).
        std::thread::sleep(Duration::from_millis(173));
        c.kill();
        kills.push(inspect(&v, "process, after 173 ms", t0));
    }
    for k in &kills {
        eprintln!(
            "killed {} at {:?}: {} replies, {} messages working, {} temp files",
            k.how, k.at, k.replies, k.working, k.temp_files
        );
    }
    let mid_run = kills.iter().filter(|k| k.replies < TOTAL).count();
    assert!(
        mid_run >= 3,
        "fewer than 3 kills hit unfinished work: {kills:?}"
    );
    // The kills interrupted turns (else recovery was not exercised).
    assert!(
        kills.iter().any(|k| k.working > 0),
        "no kill caught a turn in flight: {kills:?}"
    );

    // Finally: process to completion.
    let final_log = v.scratch().join("final.log");
    let mut c = start(&v, &["process", vault], &final_log);
    // Runs until it exits by itself (or 120 s pass).
    let status = c.wait_exit(Duration::from_secs(120));
    if status.is_none() {
        c.kill();
    }
    let out = fs::read_to_string(&final_log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "final process failed or hung ({status:?}):\n{out}"
    );
    eprintln!(
        "final process: {} (total {:?})",
        out.lines().last().unwrap_or_default(),
        t0.elapsed()
    );

    // ---- the vault afterwards
    let files = v.all_files();
    let temps: Vec<_> = files.iter().filter(|r| is_vaultrunner_temp(r)).collect();
    assert!(temps.is_empty(), "temp files left: {temps:?}");

    // Every note is whole: front-matter present and valid YAML.
    for rel in files.iter().filter(|r| r.ends_with(".md")) {
        let text = v.read(rel);
        if let Err(e) = parse_note(&text) {
            panic!("{rel}: {e}\n{text}");
        }
    }

    // The Inbox holds exactly the messages and one reply each.
    let mut want: BTreeSet<String> = BTreeSet::new();
    for i in 0..TOTAL {
        let (rel, ..) = message(i);
        want.insert(rel.replace(".md", ".reply.md"));
        want.insert(rel);
    }
    let have: BTreeSet<String> = files
        .iter()
        .filter(|r| r.starts_with("Inbox/"))
        .cloned()
        .collect();
    let extra: Vec<_> = have.difference(&want).collect();
    let missing: Vec<_> = want.difference(&have).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "Inbox differs: extra {extra:?}, missing {missing:?}"
    );
    // Nothing reply-ish anywhere else.
    let stray: Vec<_> = files
        .iter()
        .filter(|r| !r.starts_with("Inbox/"))
        .filter(|r| r.contains(".reply") || r.contains(".callback"))
        .collect();
    assert!(stray.is_empty(), "stray replies: {stray:?}");

    let mut handled_per_agent: BTreeMap<&str, u64> = BTreeMap::new();
    let mut retried = 0;
    for i in 0..TOTAL {
        let (rel, agent, _) = message(i);
        let (m, body) = read_note(&v.path(&rel));
        assert_eq!(
            scalar(&m, "status").as_deref(),
            Some("handled"),
            "{rel}: {m:?}"
        );
        assert_eq!(body, format!("message number {i}\n"), "{rel}: body changed");
        let stem = rel.strip_suffix(".md").unwrap();
        assert_eq!(
            scalar(&m, "reply").as_deref(),
            Some(format!("[[{stem}.reply]]").as_str()),
            "{rel}"
        );
        let attempts: u64 = scalar(&m, "attempts").unwrap().parse().unwrap();
        assert!((1..=3).contains(&attempts), "{rel}: attempts {attempts}");
        if attempts > 1 {
            retried += 1;
        }
        *handled_per_agent.entry(agent).or_default() += 1;

        let reply = format!("{stem}.reply.md");
        let (r, rbody) = read_note(&v.path(&reply));
        assert_eq!(
            scalar(&r, "status").as_deref(),
            Some("ok"),
            "{reply}: {rbody}"
        );
        assert_eq!(scalar(&r, "agent").as_deref(), Some(agent), "{reply}");
        assert_eq!(
            scalar(&r, "in_reply_to").as_deref(),
            Some(format!("[[{stem}]]").as_str()),
            "{reply}"
        );
        assert_eq!(rbody.trim(), expected_reply(agent, i), "{reply}");
        let t = tags(&r);
        assert!(
            t.iter().any(|t| t == "agent/message/outbound"),
            "{reply}: {t:?}"
        );
    }
    eprintln!("messages that needed more than one attempt: {retried}");

    // Threads: whole, done, and counting at least one turn per message.
    let mut turns_per_agent: BTreeMap<String, u64> = BTreeMap::new();
    for rel in files.iter().filter(|r| r.starts_with("Threads/")) {
        assert!(rel.ends_with(".md"), "unexpected file {rel}");
        let (m, _) = read_note(&v.path(rel));
        assert!(tags(&m).iter().any(|t| t == "agent/thread"), "{rel}");
        assert_eq!(scalar(&m, "status").as_deref(), Some("ok"), "{rel}: {m:?}");
        let agent = scalar(&m, "agent").unwrap();
        let n: u64 = scalar(&m, "turn_count").unwrap().parse().unwrap();
        *turns_per_agent.entry(agent).or_default() += n;
    }
    for (agent, handled) in &handled_per_agent {
        let turns = turns_per_agent.get(*agent).copied().unwrap_or(0);
        assert!(
            turns >= *handled,
            "{agent}: threads count {turns} turns for {handled} handled messages"
        );
    }
    let e1_threads = files
        .iter()
        .filter(|r| r.starts_with("Threads/e1/"))
        .count();
    assert_eq!(
        e1_threads as u64, handled_per_agent["e1"],
        "multi-threaded: one thread per message"
    );
    let e2_threads: Vec<&String> = files
        .iter()
        .filter(|r| r.starts_with("Threads/e2/"))
        .collect();
    assert_eq!(e2_threads.len(), 3, "{e2_threads:?}");

    // Nothing else was created outside Agents/, Inbox/, Threads/ and the
    // lock directory.
    let others: Vec<_> = files
        .iter()
        .filter(|r| {
            !(r.starts_with("Agents/")
                || r.starts_with("Inbox/")
                || r.starts_with("Threads/")
                || r.starts_with(".vaultrunner/"))
        })
        .collect();
    assert!(others.is_empty(), "unexpected files: {others:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t0.elapsed()
    );
}
