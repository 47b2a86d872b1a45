//! Integration tests of cron job notes (SPEC §2 Job, issue 4 items 5–6).
//!
//! The scheduler is driven through the library with an injected clock
//! (`Scheduler::tick(&engine, now)`): no test sleeps for minutes. Every job
//! note carries `tz:` so results do not depend on the host's zone. The
//! `schedule` and `check` commands are run as the real binary.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use vaultrunner::engine::Engine;
use vaultrunner::trigger::cron::{Fired, Scheduler};

use crate::common::{Out, TestVault, parse_note, scalar, wait_until_async, without_keys};

/// The two keys vaultrunner owns on a job note.
const JOB_OWNED: &[&str] = &["last_run_at", "last_status"];

/// A vault with the `echo` agent the jobs send to.
fn vault() -> TestVault {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v
}

/// A vault with one job note, `Jobs/<name>.md`; its engine and a fresh
/// scheduler.
fn one_job(name: &str, note: &str) -> (TestVault, Arc<Engine>, Scheduler) {
    let v = vault();
    v.write(&format!("Jobs/{name}.md"), note);
    let engine = v.engine();
    (v, engine, Scheduler::new())
}

/// The note paths (vault-relative, without `.md`) of the notes under `dir`.
fn note_paths(v: &TestVault, dir: &str) -> Vec<String> {
    v.notes_under(dir)
        .into_iter()
        .map(|n| n.strip_suffix(".md").unwrap_or(&n).to_string())
        .collect()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A job note; `extra` is more front-matter lines.
fn job_note(cron: &str, tz: &str, extra: &str) -> String {
    format!(
        "---\ntags: [agent/job]\nagent: echo\ncron: \"{cron}\"\ntz: {tz}\n{extra}---\nGood morning, summarise the inbox.\n"
    )
}

fn fires(r: &[Fired]) -> Vec<(String, DateTime<Utc>)> {
    r.iter()
        .filter_map(|f| match f {
            Fired::Fired {
                message, scheduled, ..
            } => Some((message.clone(), *scheduled)),
            _ => None,
        })
        .collect()
}

fn skips(r: &[Fired]) -> Vec<(DateTime<Utc>, String)> {
    r.iter()
        .filter_map(|f| match f {
            Fired::Skipped {
                scheduled, reason, ..
            } => Some((*scheduled, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Ticks from `from` to `to` (inclusive) every `step`, collecting results.
fn tick_range(
    sched: &mut Scheduler,
    engine: &Engine,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: Duration,
) -> Vec<Fired> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= to {
        out.extend(sched.tick(engine, t));
        t += step;
    }
    out
}

/// Marks an inbound note handled (as a finished turn would) and tells the
/// engine.
fn mark_handled(v: &TestVault, engine: &Engine, path: &str) {
    let rel = format!("{path}.md");
    let text = v.read(&rel);
    let text = text.replacen("---\n", "---\nstatus: handled\n", 1);
    v.write(&rel, &text);
    engine.note_changed(path);
}

#[test]
fn daily_job_fires_once_at_local_nine_and_stamps_the_job_note() {
    let v = vault();
    // Comments, quoting, key order and a body the stamp must not touch.
    let original = "---\n# the morning job\ntags: [agent/job]\nagent: echo   # who\ncron: '0 9 * * *'\ntz: \"Europe/Berlin\"\nsubject: Morning brief\nowner: me\n---\nGood morning, summarise the inbox.\n\n- keep it short\n";
    v.write("Jobs/morning.md", original);
    let engine = v.engine();
    let mut sched = Scheduler::new();

    // First seen at 07:00Z; nothing due yet.
    assert!(sched.tick(&engine, utc("2026-11-21T07:00:00Z")).is_empty());
    assert!(sched.tick(&engine, utc("2026-11-21T07:59:59Z")).is_empty());
    assert_eq!(v.read("Jobs/morning.md"), original);

    // 09:00 in Berlin in winter (CET, UTC+1) is 08:00Z.
    let nine = utc("2026-11-21T08:00:00Z");
    let r = sched.tick(&engine, nine);
    let fired = fires(&r);
    assert_eq!(r.len(), 1, "{r:?}");
    let expected_path = "Inbox/echo/job--jobs-morning--20261121T0800Z";
    assert_eq!(fired, vec![(expected_path.to_string(), nine)]);

    // Repeated ticks at the same and later instants fire nothing more.
    for t in [
        "2026-11-21T08:00:00Z",
        "2026-11-21T08:00:00.500Z",
        "2026-11-21T08:01:00Z",
        "2026-11-21T12:00:00Z",
        "2026-11-22T07:59:59Z",
    ] {
        assert!(sched.tick(&engine, utc(t)).is_empty(), "{t}");
    }
    assert_eq!(note_paths(&v, "Inbox/echo"), vec![expected_path]);

    // The fire note: an inbound message from the job.
    let (m, body) = v.note(expected_path);
    assert_eq!(scalar(&m, "agent").as_deref(), Some("echo"));
    assert_eq!(scalar(&m, "sender").as_deref(), Some("job:Jobs/morning"));
    assert_eq!(scalar(&m, "subject").as_deref(), Some("Morning brief"));
    let tags: Vec<String> = m["tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(tags.contains(&"agent/message/inbound".into()), "{tags:?}");
    assert!(
        body.contains("Good morning, summarise the inbox."),
        "{body}"
    );
    assert!(body.contains("- keep it short"), "{body}");
    // …and it is queued for the agent.
    assert_eq!(engine.with_index(|ix| ix.queue_len("echo")), 1);

    // The job note: stamped, every other byte as it was.
    let stamped = v.read("Jobs/morning.md");
    let (m, _) = parse_note(&stamped).unwrap();
    assert_eq!(
        scalar(&m, "last_run_at").as_deref(),
        Some("2026-11-21T08:00:00.000Z")
    );
    assert_eq!(scalar(&m, "last_status").as_deref(), Some("fired"));
    assert_eq!(without_keys(&stamped, JOB_OWNED), original);

    // Next day (after the first fire was answered): the keys are updated
    // in place, the rest still untouched.
    mark_handled(&v, &engine, expected_path);
    let r = sched.tick(&engine, utc("2026-11-22T08:00:00Z"));
    assert_eq!(fires(&r).len(), 1, "{r:?}");
    let stamped2 = v.read("Jobs/morning.md");
    assert_eq!(without_keys(&stamped2, JOB_OWNED), original);
    let (m, _) = parse_note(&stamped2).unwrap();
    assert_eq!(
        scalar(&m, "last_run_at").as_deref(),
        Some("2026-11-22T08:00:00.000Z")
    );
}

#[test]
fn a_job_that_never_ran_fires_nothing_for_the_past() {
    let (v, engine, mut sched) = one_job("j", &job_note("0 9 * * *", "Europe/Berlin", ""));
    // First seen long after today's 09:00 and yesterday's.
    assert!(sched.tick(&engine, utc("2026-11-21T15:00:00Z")).is_empty());
    assert!(sched.tick(&engine, utc("2026-11-21T23:00:00Z")).is_empty());
    assert!(note_paths(&v, "Inbox/echo").is_empty());
    let (m, _) = v.note("Jobs/j");
    assert!(m.get("last_run_at").is_none());
    // It fires from then on.
    let r = sched.tick(&engine, utc("2026-11-22T08:00:00Z"));
    assert_eq!(fires(&r).len(), 1, "{r:?}");
}

#[test]
fn catch_up_once_fires_one_for_the_latest_missed_time() {
    let (v, engine, mut sched) = one_job(
        "j",
        &job_note(
            "0 9 * * *",
            "Europe/Berlin",
            "last_run_at: 2026-11-18T08:00:00.000Z\n",
        ),
    );
    // Down since the 18th: missed the 19th, 20th and 21st.
    let r = sched.tick(&engine, utc("2026-11-21T12:00:00Z"));
    let f = fires(&r);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(f[0].1, utc("2026-11-21T08:00:00Z"));
    assert_eq!(
        note_paths(&v, "Inbox/echo"),
        vec!["Inbox/echo/job--jobs-j--20261121T0800Z"]
    );
    assert_eq!(
        v.get("Jobs/j.md", "last_run_at").as_deref(),
        Some("2026-11-21T08:00:00.000Z")
    );
    assert!(sched.tick(&engine, utc("2026-11-21T12:00:00Z")).is_empty());
}

#[test]
fn catch_up_skip_records_the_skip_and_fires_nothing() {
    let (v, engine, mut sched) = one_job(
        "j",
        &job_note(
            "0 9 * * *",
            "Europe/Berlin",
            "catch_up: skip\nlast_run_at: 2026-11-18T08:00:00.000Z\n",
        ),
    );
    let r = sched.tick(&engine, utc("2026-11-21T12:00:00Z"));
    assert!(fires(&r).is_empty(), "{r:?}");
    assert_eq!(skips(&r).len(), 1, "{r:?}");
    assert!(note_paths(&v, "Inbox/echo").is_empty());
    let (m, _) = v.note("Jobs/j");
    let status = scalar(&m, "last_status").unwrap();
    assert!(status.starts_with("skipped"), "{status}");
    assert!(status.contains("catch_up"), "{status}");
    // The skipped time is not offered again; the next one fires.
    assert!(sched.tick(&engine, utc("2026-11-21T13:00:00Z")).is_empty());
    let r = sched.tick(&engine, utc("2026-11-22T08:00:00Z"));
    assert_eq!(fires(&r).len(), 1, "{r:?}");
}

#[test]
fn catch_up_skip_still_fires_a_slightly_late_tick() {
    // A tick a minute late (a busy machine) is not a missed run.
    let (_v, engine, mut sched) = one_job(
        "j",
        &job_note("0 9 * * *", "Europe/Berlin", "catch_up: skip\n"),
    );
    sched.tick(&engine, utc("2026-11-21T07:00:00Z"));
    let r = sched.tick(&engine, utc("2026-11-21T08:01:00Z"));
    assert_eq!(fires(&r).len(), 1, "{r:?}");
}

#[test]
fn previous_fire_still_pending_skips_the_next_due_time() {
    let (v, engine, mut sched) = one_job("h", &job_note("0 * * * *", "UTC", ""));
    sched.tick(&engine, utc("2026-11-21T07:30:00Z"));
    let r = sched.tick(&engine, utc("2026-11-21T08:00:00Z"));
    let first = fires(&r);
    assert_eq!(first.len(), 1, "{r:?}");
    let first = first[0].0.clone();

    // Nobody ran it (no dispatcher): 09:00 is skipped and recorded.
    let r = sched.tick(&engine, utc("2026-11-21T09:00:00Z"));
    assert!(fires(&r).is_empty(), "{r:?}");
    let sk = skips(&r);
    assert_eq!(sk.len(), 1, "{r:?}");
    assert_eq!(sk[0].0, utc("2026-11-21T09:00:00Z"));
    assert!(sk[0].1.contains(&first), "{}", sk[0].1);
    let (m, _) = v.note("Jobs/h");
    let status = scalar(&m, "last_status").unwrap();
    assert!(status.starts_with("skipped"), "{status}");
    assert_eq!(
        scalar(&m, "last_run_at").as_deref(),
        Some("2026-11-21T09:00:00.000Z")
    );

    // Still not run at 10:00: skipped again (the 08:00 message is the one
    // still open, whatever was skipped in between).
    let r = sched.tick(&engine, utc("2026-11-21T10:00:00Z"));
    assert!(
        fires(&r).is_empty(),
        "10:00 fired while 08:00 is pending: {r:?}"
    );
    assert_eq!(note_paths(&v, "Inbox/echo"), vec![first.clone()]);

    // Once it is answered, the next due time fires.
    mark_handled(&v, &engine, &first);
    let r = sched.tick(&engine, utc("2026-11-21T11:00:00Z"));
    assert_eq!(fires(&r).len(), 1, "{r:?}");
    assert_eq!(note_paths(&v, "Inbox/echo").len(), 2);
}

#[test]
fn previous_fire_still_pending_is_seen_after_a_restart() {
    let v = vault();
    v.write("Jobs/h.md", &job_note("0 * * * *", "UTC", ""));
    {
        let engine = v.engine();
        let mut sched = Scheduler::new();
        sched.tick(&engine, utc("2026-11-21T07:30:00Z"));
        assert_eq!(
            fires(&sched.tick(&engine, utc("2026-11-21T08:00:00Z"))).len(),
            1
        );
        // Skipped while pending: last_run_at moves on to 09:00.
        assert_eq!(
            skips(&sched.tick(&engine, utc("2026-11-21T09:00:00Z"))).len(),
            1
        );
    }
    // Restart; the 08:00 message is still pending.
    let engine = v.engine();
    let mut sched = Scheduler::new();
    let r = sched.tick(&engine, utc("2026-11-21T10:00:00Z"));
    assert!(fires(&r).is_empty(), "fired while 08:00 is pending: {r:?}");
    assert_eq!(note_paths(&v, "Inbox/echo").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_fire_still_running_skips_and_the_fire_is_answered_once() {
    let v = vault();
    v.write(
        "Agents/slow.md",
        "---\ntags: [agent/definition]\nname: slow\nbackend: command\ncommand: [sh, -c, \"sleep 2; cat\"]\n---\n",
    );
    v.write(
        "Jobs/h.md",
        &job_note("0 * * * *", "UTC", "").replace("agent: echo", "agent: slow"),
    );
    let engine = v.engine();
    let dispatcher = crate::common::dispatch(&engine);
    let mut sched = Scheduler::new();
    let tick = |sched: &mut Scheduler, t: &str| sched.tick(&engine, utc(t));
    tick(&mut sched, "2026-11-21T07:30:00Z");
    let r = tick(&mut sched, "2026-11-21T08:00:00Z");
    let first = fires(&r)[0].0.clone();
    let status = |p: &str| scalar(&v.note(p).0, "status");
    // Running now: the next due time is skipped.
    wait_until_async(
        std::time::Duration::from_secs(10),
        "the turn to start",
        || status(&first).as_deref() == Some("working"),
    )
    .await;
    let r = tick(&mut sched, "2026-11-21T09:00:00Z");
    assert!(fires(&r).is_empty(), "{r:?}");
    assert_eq!(skips(&r).len(), 1, "{r:?}");
    // Answered (exactly one reply): the next due time fires.
    wait_until_async(std::time::Duration::from_secs(15), "the answer", || {
        status(&first).as_deref() == Some("handled")
    })
    .await;
    // The turn's bookkeeping ends just after the last write.
    tokio::time::timeout(std::time::Duration::from_secs(5), engine.wait_idle())
        .await
        .unwrap();
    let r = tick(&mut sched, "2026-11-21T10:00:00Z");
    assert_eq!(fires(&r).len(), 1, "{r:?}");
    let replies: Vec<String> = note_paths(&v, "Inbox/slow")
        .into_iter()
        .filter(|p| p.ends_with(".reply"))
        .collect();
    assert_eq!(replies, vec![format!("{first}.reply")]);
    let (m, body) = v.note(&format!("{first}.reply"));
    assert_eq!(scalar(&m, "status").as_deref(), Some("ok"));
    assert_eq!(body.trim(), "Good morning, summarise the inbox.");
    dispatcher.stop().await;
}

#[test]
fn disabled_job_never_fires() {
    let v = vault();
    v.write(
        "Jobs/off.md",
        &job_note(
            "* * * * *",
            "UTC",
            "enabled: false\nlast_run_at: 2026-11-20T00:00:00.000Z\n",
        ),
    );
    let original = v.read("Jobs/off.md");
    let engine = v.engine();
    let mut sched = Scheduler::new();
    let r = tick_range(
        &mut sched,
        &engine,
        utc("2026-11-21T00:00:00Z"),
        utc("2026-11-21T03:00:00Z"),
        Duration::minutes(7),
    );
    assert!(r.is_empty(), "{r:?}");
    assert!(note_paths(&v, "Inbox/echo").is_empty());
    assert_eq!(v.read("Jobs/off.md"), original);
    assert_eq!(
        sched.next_due(&jobs(&engine), utc("2026-11-21T03:00:00Z")),
        None
    );
}

fn jobs(engine: &Engine) -> Vec<Arc<vaultrunner::job::Job>> {
    engine.with_index(|ix| ix.jobs().cloned().collect())
}

#[test]
fn edited_and_added_jobs_are_picked_up() {
    let (v, engine, mut sched) = one_job("a", &job_note("0 9 * * *", "Europe/Berlin", ""));
    assert!(sched.tick(&engine, utc("2026-11-21T06:00:00Z")).is_empty());

    // Edited: 09:00 → 07:30 local (06:30Z); the watcher would call
    // note_changed.
    v.write("Jobs/a.md", &job_note("30 7 * * *", "Europe/Berlin", ""));
    engine.note_changed("Jobs/a");
    assert_eq!(
        sched.next_due(&jobs(&engine), utc("2026-11-21T06:00:00Z")),
        Some(utc("2026-11-21T06:30:00Z"))
    );
    let r = sched.tick(&engine, utc("2026-11-21T06:30:00Z"));
    assert_eq!(
        fires(&r),
        vec![(
            "Inbox/echo/job--jobs-a--20261121T0630Z".to_string(),
            utc("2026-11-21T06:30:00Z")
        )]
    );
    // The old time no longer fires.
    assert!(sched.tick(&engine, utc("2026-11-21T08:00:00Z")).is_empty());

    // Added while running, found by a rescan: fires from when it is seen.
    v.write(
        "Jobs/b.md",
        &job_note("15 * * * *", "UTC", "subject: hourly\n"),
    );
    engine.scan(false);
    assert_eq!(jobs(&engine).len(), 2);
    assert!(sched.tick(&engine, utc("2026-11-21T08:05:00Z")).is_empty());
    let r = sched.tick(&engine, utc("2026-11-21T08:15:00Z"));
    assert_eq!(
        fires(&r),
        vec![(
            "Inbox/echo/job--jobs-b--20261121T0815Z".to_string(),
            utc("2026-11-21T08:15:00Z")
        )]
    );

    // Removed: nothing more.
    std::fs::remove_file(v.root.join("Jobs/b.md")).unwrap();
    engine.note_changed("Jobs/b");
    assert_eq!(jobs(&engine).len(), 1);
    assert!(sched.tick(&engine, utc("2026-11-21T09:15:00Z")).is_empty());
}

#[test]
fn restart_at_the_same_instant_does_not_fire_again() {
    let v = vault();
    v.write("Jobs/j.md", &job_note("0 9 * * *", "Europe/Berlin", ""));
    let nine = utc("2026-11-21T08:00:00Z");
    {
        let engine = v.engine();
        let mut sched = Scheduler::new();
        sched.tick(&engine, utc("2026-11-21T07:00:00Z"));
        assert_eq!(fires(&sched.tick(&engine, nine)).len(), 1);
    }
    let fire = "Inbox/echo/job--jobs-j--20261121T0800Z";
    let before = v.read(&format!("{fire}.md"));
    for t in [nine, nine + Duration::seconds(30)] {
        let engine = v.engine();
        let mut sched = Scheduler::new();
        let r = sched.tick(&engine, t);
        assert!(r.is_empty(), "{t}: {r:?}");
    }
    assert_eq!(note_paths(&v, "Inbox/echo"), vec![fire]);
    assert_eq!(v.read(&format!("{fire}.md")), before);
}

#[test]
fn crash_between_fire_and_stamp_does_not_duplicate() {
    // The fire note was written (and even answered), but the job note was
    // not stamped before the crash: the restart finds the note and only
    // stamps.
    let v = vault();
    v.write(
        "Jobs/j.md",
        &job_note(
            "0 9 * * *",
            "Europe/Berlin",
            "last_run_at: 2026-11-20T08:00:00.000Z\n",
        ),
    );
    let fire = "Inbox/echo/job--jobs-j--20261121T0800Z";
    let answered = "---\ntags: [agent/message, agent/message/inbound]\nagent: echo\nsender: job:Jobs/j\nstatus: handled\n---\nGood morning, summarise the inbox.\n";
    v.write(&format!("{fire}.md"), answered);
    let engine = v.engine();
    let mut sched = Scheduler::new();
    let r = sched.tick(&engine, utc("2026-11-21T08:00:05Z"));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(note_paths(&v, "Inbox/echo"), vec![fire]);
    assert_eq!(v.read(&format!("{fire}.md")), answered);
    assert_eq!(engine.with_index(|ix| ix.queue_len("echo")), 0);
    assert_eq!(
        v.get("Jobs/j.md", "last_run_at").as_deref(),
        Some("2026-11-21T08:00:00.000Z")
    );
}

#[test]
fn dst_spring_forward_fires_once_at_three() {
    // Europe/Berlin, 2027-03-28: 02:00 CET → 03:00 CEST; 02:30 does not
    // exist and fires once at 03:00 CEST = 01:00Z.
    let (_v, engine, mut sched) = one_job("dst", &job_note("30 2 * * *", "Europe/Berlin", ""));
    let r = tick_range(
        &mut sched,
        &engine,
        utc("2027-03-27T12:00:00Z"),
        utc("2027-03-28T22:00:00Z"),
        Duration::minutes(5),
    );
    assert_eq!(
        fires(&r),
        vec![(
            "Inbox/echo/job--jobs-dst--20270328T0100Z".to_string(),
            utc("2027-03-28T01:00:00Z")
        )],
        "{r:?}"
    );
    assert!(skips(&r).is_empty(), "{r:?}");
    // The next day is back to 02:30 CEST = 00:30Z.
    assert_eq!(
        sched.next_due(&jobs(&engine), utc("2027-03-28T22:00:00Z")),
        Some(utc("2027-03-29T00:30:00Z"))
    );
}

#[test]
fn dst_fall_back_fires_once() {
    // Europe/Berlin, 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 happens at
    // 00:30Z and again at 01:30Z; it fires once, at the first.
    let (_v, engine, mut sched) = one_job("dst", &job_note("30 2 * * *", "Europe/Berlin", ""));
    let r = tick_range(
        &mut sched,
        &engine,
        utc("2026-10-24T12:00:00Z"),
        utc("2026-10-25T22:00:00Z"),
        Duration::minutes(5),
    );
    assert_eq!(
        fires(&r),
        vec![(
            "Inbox/echo/job--jobs-dst--20261025T0030Z".to_string(),
            utc("2026-10-25T00:30:00Z")
        )],
        "{r:?}"
    );
    assert!(skips(&r).is_empty(), "{r:?}");
    // Exactly at the repeated instant, too.
    assert!(sched.tick(&engine, utc("2026-10-25T01:30:00Z")).is_empty());
    assert_eq!(
        sched.next_due(&jobs(&engine), utc("2026-10-25T22:00:00Z")),
        Some(utc("2026-10-26T01:30:00Z"))
    );
}

// ------------------------------------------------------ the real binary

/// `vaultrunner <command> <vault> [args…]`, without the host's `TZ`.
fn run(v: &TestVault, args: &[&str]) -> Out {
    let mut all = vec![args[0], v.root_str()];
    all.extend_from_slice(&args[1..]);
    v.vr(&all).env_remove("TZ").run()
}

#[test]
fn schedule_json_lists_next_fire_times_with_offsets() {
    let v = vault();
    v.write(
        "Jobs/morning.md",
        &job_note("0 9 * * *", "Europe/Berlin", ""),
    );
    v.write(
        "Jobs/ny.md",
        &job_note("30 8 * * mon-fri", "America/New_York", ""),
    );
    v.write(
        "Jobs/off.md",
        &job_note("0 9 * * *", "UTC", "enabled: false\n"),
    );
    let out = run(
        &v,
        &[
            "schedule",
            "--from",
            "2026-11-21T00:00:00Z",
            "--count",
            "3",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let got: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        got,
        json!([
            {
                "job": "Jobs/morning",
                "agent": "echo",
                "next": [
                    "2026-11-21T09:00:00+01:00",
                    "2026-11-22T09:00:00+01:00",
                    "2026-11-23T09:00:00+01:00"
                ]
            },
            {
                "job": "Jobs/ny",
                "agent": "echo",
                "next": [
                    "2026-11-23T08:30:00-05:00",
                    "2026-11-24T08:30:00-05:00",
                    "2026-11-25T08:30:00-05:00"
                ]
            },
            {"job": "Jobs/off", "agent": "echo", "next": []}
        ])
    );
    // Every time is RFC 3339 with an offset.
    for j in got.as_array().unwrap() {
        for t in j["next"].as_array().unwrap() {
            DateTime::parse_from_rfc3339(t.as_str().unwrap()).unwrap();
        }
    }
    // Plain text works too.
    let out = run(&v, &["schedule", "--from", "2026-11-21T00:00:00Z"]);
    assert!(out.status.success(), "{out:?}");
    let text = &out.stdout;
    assert!(text.contains("2026-11-21T09:00:00+01:00"), "{text}");
}

#[test]
fn invalid_cron_or_tz_fail_schedule_and_check_naming_file_and_field() {
    for (file, extra, cron, tz, field) in [
        ("Jobs/badcron.md", "", "61 * * * *", "UTC", "cron"),
        ("Jobs/sixfields.md", "", "0 0 9 * * *", "UTC", "cron"),
        ("Jobs/badtz.md", "", "0 9 * * *", "Mars/Olympus", "tz"),
        (
            "Jobs/badcatch.md",
            "catch_up: always\n",
            "0 9 * * *",
            "UTC",
            "catch_up",
        ),
    ] {
        let v = vault();
        v.write("Jobs/good.md", &job_note("0 9 * * *", "UTC", ""));
        v.write(file, &job_note(cron, tz, extra));
        let out = run(
            &v,
            &["schedule", "--from", "2026-11-21T00:00:00Z", "--json"],
        );
        assert_eq!(out.code(), Some(1), "{file}: {out:?}");
        let err = &out.stderr;
        assert!(err.contains(file), "{file}: {err}");
        assert!(err.contains(&format!("`{field}`")), "{file}: {err}");
        // The valid job is still listed.
        let got: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(got.as_array().unwrap().len(), 1, "{got}");
        assert_eq!(got[0]["job"], "Jobs/good");

        let out = run(&v, &["check"]);
        assert_eq!(out.code(), Some(1), "{file}: {out:?}");
        let all = format!("{}{}", &out.stdout, &out.stderr);
        let line = all
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("{file} not named: {all}"));
        assert!(line.contains(&format!("`{field}`")), "{line}");
        assert!(line.starts_with("error"), "{line}");
    }
}
