//! Robustness (SPEC §5a, issue 9): a full or failing disk never ends a
//! message without its reply, a failing scan never shrinks the index, a
//! failed read is tried again on its own, problems are logged once, and
//! bad messages get a clear error naming the field.
//!
//! Disk failures are injected through the vault's `Faults` hook (it runs
//! everywhere); one test fills a real tmpfs (where one can be mounted).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vaultrunner::engine::{Config, Engine};
use vaultrunner::trigger::watch::WatchOptions;
use vaultrunner::vault::{Faults, LocalVault};

use crate::common::{TestVault, assert_contains, vr};

/// A disk that fails on demand: each rule names the note paths it hits (a
/// suffix of the note path), the operation and how many more times it
/// fails (`u32::MAX`: until cleared). Counts every failure it caused.
#[derive(Debug, Default)]
struct Disk {
    rules: Mutex<Vec<Rule>>,
    failures: AtomicU32,
    /// `list` fails for this folder (`""`: the root) while set.
    unlistable: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
struct Rule {
    op: &'static str,
    suffix: String,
    left: u32,
    errno: i32,
}

impl Disk {
    fn fail(&self, op: &'static str, suffix: &str, times: u32, errno: i32) {
        self.rules.lock().unwrap().push(Rule {
            op,
            suffix: suffix.to_string(),
            left: times,
            errno,
        });
    }

    fn clear(&self) {
        self.rules.lock().unwrap().clear();
        *self.unlistable.lock().unwrap() = None;
    }

    fn check(&self, op: &str, path: &str) -> io::Result<()> {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            if r.op == op && path.ends_with(&r.suffix) && r.left > 0 {
                if r.left != u32::MAX {
                    r.left -= 1;
                }
                self.failures.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(r.errno));
            }
        }
        Ok(())
    }
}

impl Faults for Disk {
    fn write(&self, path: &str) -> io::Result<()> {
        self.check("write", path)
    }
    fn rename(&self, path: &str) -> io::Result<()> {
        self.check("rename", path)
    }
    fn read(&self, path: &str) -> io::Result<()> {
        self.check("read", path)
    }
    fn list(&self, prefix: &str) -> io::Result<()> {
        if self.unlistable.lock().unwrap().as_deref() == Some(prefix) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        Ok(())
    }
}

fn engine(v: &TestVault, disk: &Arc<Disk>) -> Arc<Engine> {
    let vault = LocalVault::open(&v.root)
        .unwrap()
        .with_group_commit()
        .with_faults(disk.clone());
    Engine::new(Arc::new(vault), Config::default())
}

/// Waits (polling) for `f`, up to `secs`.
async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replies(v: &TestVault) -> Vec<String> {
    v.files()
        .into_iter()
        .filter(|f| f.ends_with(".reply.md"))
        .collect()
}

fn echo_vault() -> TestVault {
    let v = TestVault::new();
    v.agent("echo", "backend: echo\n", "");
    v
}

/// serve: the reply of a turn cannot be written (disk full): the message
/// stays `working`, its agent's next message waits behind it, nothing is
/// stamped `error`; once the disk recovers the end is written — once, the
/// turn counted once — and the next message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_cannot_be_written_is_written_once_the_disk_recovers() {
    let v = echo_vault();
    v.message("Inbox/m1.md", "echo", "ts: 2026-01-01T00:00:01Z\n", "first");
    v.message(
        "Inbox/m2.md",
        "echo",
        "ts: 2026-01-01T00:00:02Z\n",
        "second",
    );
    let disk = Arc::new(Disk::default());
    disk.fail("write", "Inbox/m1.reply", u32::MAX, libc::ENOSPC);
    let engine = engine(&v, &disk);
    engine.scan(true);
    let dispatcher = crate::common::dispatch(&engine);
    // Tried, and tried again after a delay.
    eventually(10, "two failed end batches", || {
        disk.failures.load(Ordering::SeqCst) >= 2
    })
    .await;
    assert_eq!(v.get("Inbox/m1.md", "status").as_deref(), Some("working"));
    assert!(v.get("Inbox/m1.md", "error").is_none());
    assert!(replies(&v).is_empty(), "{:?}", replies(&v));
    // Its agent's next message waits (FIFO), untouched.
    assert_eq!(v.get("Inbox/m2.md", "status"), None);
    disk.clear();
    eventually(10, "both answered", || {
        v.get("Inbox/m2.md", "status").as_deref() == Some("handled")
    })
    .await;
    assert_eq!(v.get("Inbox/m1.md", "status").as_deref(), Some("handled"));
    assert_eq!(v.get("Inbox/m1.md", "attempts").as_deref(), Some("1"));
    assert_eq!(replies(&v), vec!["Inbox/m1.reply.md", "Inbox/m2.reply.md"]);
    assert_eq!(v.body("Inbox/m1.reply.md").trim(), "echo: first");
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("2")
    );
    let h1 = v.get("Inbox/m1.md", "handled_at").unwrap();
    let h2 = v.get("Inbox/m2.md", "handled_at").unwrap();
    assert!(h1 <= h2, "m2 answered before m1: {h1} > {h2}");
    dispatcher.stop().await;
}

/// The end batch fails after its first notes landed (the thread record and
/// the reply are in place, the callback and the stamp are not): the retry
/// writes only what is missing, so the turn is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_written_end_is_completed_without_counting_the_turn_twice() {
    let v = echo_vault();
    v.agent("boss", "backend: echo\nenabled: false\n", "");
    v.message("Inbox/m.md", "echo", "reply_to: boss\n", "task");
    let disk = Arc::new(Disk::default());
    disk.fail("rename", "Inbox/m.callback", 2, libc::EIO);
    let engine = engine(&v, &disk);
    engine.scan(true);
    let dispatcher = crate::common::dispatch(&engine);
    eventually(15, "the message answered", || {
        v.get("Inbox/m.md", "status").as_deref() == Some("handled")
    })
    .await;
    assert_eq!(disk.failures.load(Ordering::SeqCst), 2);
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        v.get("Inbox/m.callback.md", "agent").as_deref(),
        Some("boss")
    );
    assert_eq!(replies(&v), vec!["Inbox/m.reply.md"]);
    dispatcher.stop().await;
}

/// A user who saves the message in the instant between vaultrunner's read
/// and its write (a `Faults` hook edits the note just before the stamp's
/// rename) keeps the edit: the stamp is refused (compare-and-set), read
/// again and written on the user's text; the turn runs and is counted once.
#[derive(Debug)]
struct EditBeforeRename {
    file: std::path::PathBuf,
    note: &'static str,
    renames: AtomicU32,
    /// Which rename of `note` the edit comes before (1 = the claim).
    at: u32,
}

impl Faults for EditBeforeRename {
    fn rename(&self, path: &str) -> io::Result<()> {
        if path == self.note && self.renames.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            let text = std::fs::read_to_string(&self.file)?;
            std::fs::write(&self.file, format!("{text}\nUSER EDIT\n"))?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_edit_between_read_and_write_is_kept() {
    for (at, when) in [(1, "the claim"), (2, "the stamp")] {
        let v = echo_vault();
        v.message("Inbox/m.md", "echo", "", "task");
        let edit = Arc::new(EditBeforeRename {
            file: v.root.join("Inbox/m.md"),
            note: "Inbox/m",
            renames: AtomicU32::new(0),
            at,
        });
        let vault = LocalVault::open(&v.root)
            .unwrap()
            .with_group_commit()
            .with_faults(edit.clone());
        let engine = Engine::new(Arc::new(vault), Config::default());
        engine.scan(true);
        let dispatcher = crate::common::dispatch(&engine);
        eventually(15, "the message answered", || {
            v.get("Inbox/m.md", "status").as_deref() == Some("handled")
        })
        .await;
        dispatcher.stop().await;
        assert_contains(&v.read("Inbox/m.md"), "USER EDIT");
        assert_eq!(replies(&v), vec!["Inbox/m.reply.md"], "edit before {when}");
        assert_eq!(
            v.get("Threads/echo/echo.md", "turn_count").as_deref(),
            Some("1"),
            "edit before {when}"
        );
        assert_eq!(v.get("Inbox/m.md", "attempts").as_deref(), Some("1"));
    }
}

/// process: a reply that cannot be written leaves the message `working`
/// and unanswered (never `error` without a reply), and `process` names it;
/// a later run answers it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_names_a_message_it_could_not_answer_and_a_later_run_answers_it() {
    let v = echo_vault();
    v.message("Inbox/m.md", "echo", "", "hi");
    let disk = Arc::new(Disk::default());
    disk.fail("write", "Inbox/m.reply", u32::MAX, libc::ENOSPC);
    let e = engine(&v, &disk);
    e.process(CancellationToken::new()).await;
    let unanswered = e.unanswered();
    assert_eq!(unanswered.len(), 1, "{unanswered:?}");
    assert_eq!(unanswered[0].0, "Inbox/m");
    assert_contains(&unanswered[0].1, "No space left on device");
    assert_eq!(v.get("Inbox/m.md", "status").as_deref(), Some("working"));
    assert!(replies(&v).is_empty());
    // The disk is fine again: the next run answers it, once.
    let again = Engine::new(
        Arc::new(LocalVault::open(&v.root).unwrap()),
        Config::default(),
    );
    again.process(CancellationToken::new()).await;
    assert!(again.unanswered().is_empty());
    assert_eq!(v.get("Inbox/m.md", "status").as_deref(), Some("handled"));
    assert_eq!(replies(&v), vec!["Inbox/m.reply.md"]);
    assert_eq!(v.body("Inbox/m.reply.md").trim(), "echo: hi");
    assert_eq!(
        v.get("Threads/echo/echo.md", "turn_count").as_deref(),
        Some("1")
    );
}

/// The claim itself cannot be written: nothing runs, the note keeps every
/// byte, and `process` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_cannot_be_written_leaves_the_message_as_it_was() {
    let v = echo_vault();
    v.message("Inbox/m.md", "echo", "", "hi");
    let before = v.read("Inbox/m.md");
    let disk = Arc::new(Disk::default());
    disk.fail("write", "Inbox/m", u32::MAX, libc::ENOSPC);
    let e = engine(&v, &disk);
    e.process(CancellationToken::new()).await;
    assert_eq!(e.unanswered().len(), 1, "{:?}", e.unanswered());
    assert_eq!(v.read("Inbox/m.md"), before);
    assert!(replies(&v).is_empty());
    assert!(!v.exists("Threads/echo/echo.md"));
}

/// A listing that fails (out of descriptors) does not empty the index:
/// the agents and the queue stay; a later good scan still forgets what
/// really went.
#[test]
fn a_scan_that_cannot_list_the_vault_keeps_the_index() {
    let v = echo_vault();
    v.agent("other", "backend: echo\n", "");
    v.message("Inbox/m.md", "echo", "", "hi");
    let disk = Arc::new(Disk::default());
    let e = engine(&v, &disk);
    e.scan(true);
    let agents = |e: &Engine| e.agent_states().len();
    assert_eq!(agents(&e), 2);
    *disk.unlistable.lock().unwrap() = Some(String::new());
    let r = e.scan(false);
    assert_eq!(r.removed, 0);
    assert_eq!(agents(&e), 2);
    assert_eq!(e.with_index(|ix| ix.queue_len("echo")), 1);
    disk.clear();
    std::fs::remove_file(v.path("Agents/other.md")).unwrap();
    let r = e.scan(false);
    assert_eq!(r.removed, 1);
    assert_eq!(agents(&e), 1);
}

/// A folder that cannot be listed keeps the notes the index knew under it,
/// and only those: a note that really went elsewhere is still forgotten.
#[test]
fn a_folder_that_cannot_be_listed_keeps_its_notes_only() {
    let v = echo_vault();
    v.agent("other", "backend: echo\n", "");
    v.message("Inbox/m.md", "echo", "", "hi");
    let disk = Arc::new(Disk::default());
    let e = engine(&v, &disk);
    e.scan(true);
    *disk.unlistable.lock().unwrap() = Some("Inbox".into());
    std::fs::remove_file(v.path("Agents/other.md")).unwrap();
    let r = e.scan(false);
    assert_eq!(r.removed, 1);
    assert_eq!(e.agent_states().len(), 1);
    assert_eq!(e.with_index(|ix| ix.queue_len("echo")), 1);
}

/// serve: a note whose read fails (out of descriptors) is read again on
/// its own, with no other event, and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_whose_read_fails_is_read_again_on_its_own() {
    let v = echo_vault();
    let disk = Arc::new(Disk::default());
    disk.fail("read", "Inbox/m", 3, libc::EMFILE);
    let engine = engine(&v, &disk);
    engine.scan_startup(Duration::ZERO);
    let cancel = CancellationToken::new();
    let served = {
        let (e, c) = (engine.clone(), cancel.clone());
        let opts = WatchOptions {
            settle: Some(Duration::ZERO),
            rescan: Some(Duration::from_secs(3600)),
            poll: None,
        };
        tokio::spawn(async move { vaultrunner::server::serve_engine(e, opts, c).await })
    };
    // Let the watcher start, then drop the message in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    v.message("Inbox/m.md", "echo", "", "hi");
    eventually(15, "the message answered", || {
        v.get("Inbox/m.md", "status").as_deref() == Some("handled")
    })
    .await;
    assert_eq!(disk.failures.load(Ordering::SeqCst), 3);
    assert_eq!(replies(&v), vec!["Inbox/m.reply.md"]);
    cancel.cancel();
    served.await.unwrap().unwrap();
}

/// process: notes that cannot be read are tried again, and still failing
/// are named; the rest of the vault is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tries_failed_reads_again_and_names_what_stays_unread() {
    let v = echo_vault();
    v.message("Inbox/a.md", "echo", "", "a");
    v.message("Inbox/b.md", "echo", "", "b");
    let disk = Arc::new(Disk::default());
    disk.fail("read", "Inbox/a", 2, libc::EIO);
    disk.fail("read", "Inbox/b", u32::MAX, libc::EIO);
    let e = engine(&v, &disk);
    e.process(CancellationToken::new()).await;
    assert_eq!(v.get("Inbox/a.md", "status").as_deref(), Some("handled"));
    assert_eq!(e.unread(), vec!["Inbox/b".to_string()]);
    assert_eq!(v.get("Inbox/b.md", "status"), None);
}

/// A real full disk (a small tmpfs): the turn fills it, so its end cannot
/// be written. `process` exits non-zero naming the messages and stamps
/// none of them `error`; with space freed, the next run answers each
/// exactly once.
#[test]
fn a_full_disk_never_ends_a_message_without_its_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m"])
        .arg("tmpfs")
        .arg(&mnt)
        .output();
    match &mounted {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!(
                "skipped a_full_disk_never_ends_a_message_without_its_reply: cannot mount a tmpfs here ({other:?}); the injected-failure tests cover the same paths"
            );
            return;
        }
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let root = mnt.join("vault");
    std::fs::create_dir(&root).unwrap();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    // The first turn fills the disk (once), then answers.
    write(
        "Agents/fill.md",
        "---\ntags: [agent/definition]\nbackend: command\ncommand: [sh, -c, \"[ -e ../filled ] || { : > ../filled; head -c 4000000 /dev/zero > ../fill 2>/dev/null; }; echo answer\"]\n---\n",
    );
    for m in ["one", "two"] {
        write(
            &format!("Inbox/{m}.md"),
            &format!("---\ntags: [agent/message/inbound]\nagent: fill\n---\n{m}\n"),
        );
    }
    let root_s = root.to_str().unwrap();
    let out = vr(&["process", root_s]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stderr, "not answered: Inbox/one.md");
    assert_contains(&out.stderr, "not answered: Inbox/two.md");
    let fm = |rel: &str| {
        crate::common::front_matter(&std::fs::read_to_string(root.join(rel)).unwrap()).unwrap()
    };
    let status = |rel: &str| crate::common::scalar(&fm(rel), "status");
    for m in ["one", "two"] {
        assert_ne!(status(&format!("Inbox/{m}.md")).as_deref(), Some("error"));
        assert!(!root.join(format!("Inbox/{m}.reply.md")).exists());
    }
    assert_eq!(status("Inbox/one.md").as_deref(), Some("working"));
    // Space again.
    std::fs::remove_file(mnt.join("fill")).unwrap();
    let out = vr(&["process", root_s]).run().success();
    assert_contains(&out.stdout, "2 ok");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (rel, _) in crate::common::walk(&root) {
        if rel.ends_with(".reply.md") {
            *counts.entry(rel).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    for m in ["one", "two"] {
        assert_eq!(status(&format!("Inbox/{m}.md")).as_deref(), Some("handled"));
        let reply = std::fs::read_to_string(root.join(format!("Inbox/{m}.reply.md"))).unwrap();
        assert_contains(&reply, "answer");
    }
}

/// A message deleted during its turn: its thread is closed (not left
/// `working`), and no reply appears for a message that is gone.
#[test]
fn a_message_deleted_mid_turn_closes_its_thread() {
    let v = TestVault::new();
    v.command_agent("del", "", "rm \"$VAULTRUNNER_MESSAGE\"\necho done");
    v.message("Inbox/m.md", "del", "", "hi");
    v.process(&[]);
    assert!(!v.exists("Inbox/m.md"));
    assert!(!v.exists("Inbox/m.reply.md"));
    assert_eq!(v.get("Threads/del/del.md", "status").as_deref(), Some("ok"));
    assert_eq!(
        v.get("Threads/del/del.md", "turn_count").as_deref(),
        Some("1")
    );
}

/// Keys of a message holding a list or a mapping: whom it is for and its
/// status leave it alone (reported by check); the others answer it with
/// an error naming the field. Nothing reads them as absent.
#[test]
fn wrong_typed_message_keys_are_named_never_read_as_absent() {
    let v = echo_vault();
    v.message("Inbox/subject.md", "echo", "subject: [a, b]\n", "hi");
    v.message("Inbox/status.md", "echo", "status: [handled]\n", "hi");
    v.write(
        "Inbox/agent.md",
        "---\ntags: [agent/message/inbound]\nagent: {name: echo}\n---\nhi\n",
    );
    let check = v.check();
    assert_eq!(check.code(), Some(1), "{check}");
    assert_contains(&check.stdout, "Inbox/subject.md: field `subject`");
    assert_contains(&check.stdout, "Inbox/status.md: field `status`");
    assert_contains(&check.stdout, "Inbox/agent.md: field `agent`");
    v.process(&[]);
    assert_eq!(
        v.get("Inbox/subject.md", "status").as_deref(),
        Some("error")
    );
    assert_contains(&v.body("Inbox/subject.reply.md"), "field `subject`");
    assert_eq!(
        v.get("Inbox/subject.reply.md", "status").as_deref(),
        Some("error")
    );
    // Left alone, byte for byte.
    assert!(!v.exists("Inbox/status.reply.md"));
    assert!(!v.exists("Inbox/agent.reply.md"));
    assert_eq!(v.get("Inbox/agent.md", "status"), None);
}

/// A message whose file name vaultrunner refuses to write (a control
/// character) could be neither stamped nor answered: it is reported and
/// left alone, and nothing is written for it.
#[test]
fn a_message_whose_name_cannot_be_written_is_reported_and_left_alone() {
    let v = echo_vault();
    v.message("Inbox/bad\u{1}name.md", "echo", "", "hi");
    v.message("Inbox/good.md", "echo", "", "hi");
    let check = v.check();
    assert_contains(&check.stdout, "control character");
    v.process(&[]);
    assert_eq!(v.get("Inbox/good.md", "status").as_deref(), Some("handled"));
    assert_eq!(v.get("Inbox/bad\u{1}name.md", "status"), None);
    assert_eq!(replies(&v), vec!["Inbox/good.reply.md"]);
}

/// Every problem `check` reports is logged by `process` and `serve` when
/// the note is read, once: not again when the note is re-read unchanged
/// in substance, and again when the problem changes.
#[test]
fn problems_are_logged_once_with_file_and_reason() {
    let v = echo_vault();
    v.agent("bad", "backend: gpt\n", "");
    v.write(
        "Inbox/broken.md",
        "---\ntags: [agent/message/inbound\n---\nhi\n",
    );
    let out = v.process(&[]);
    let count = |hay: &str, needle: &str| hay.matches(needle).count();
    assert_eq!(
        count(
            &out.stderr,
            "Agents/bad.md: definition disabled: field `backend`"
        ),
        1,
        "{out}"
    );
    assert_eq!(
        count(&out.stderr, "Inbox/broken.md: invalid YAML"),
        1,
        "{out}"
    );

    let mut s = v.serve(&[]);
    let log = || s.log_text();
    crate::common::wait_until(Duration::from_secs(10), "the problem logged", || {
        log().contains("Agents/bad.md: definition disabled")
    });
    // Re-read (new mtime) with the same problem: not logged again. (Written
    // atomically: with no settle window a truncate-then-write save would
    // show the watcher an empty note in between, a real change.)
    let text = v.read("Agents/bad.md");
    v.write("Agents/.bad.tmp", &text);
    std::fs::rename(v.path("Agents/.bad.tmp"), v.path("Agents/bad.md")).unwrap();
    v.message("Inbox/after-touch.md", "echo", "", "sentinel");
    crate::common::wait_until(Duration::from_secs(10), "the sentinel answered", || {
        v.exists("Inbox/after-touch.reply.md")
    });
    assert_eq!(
        count(&log(), "Agents/bad.md: definition disabled"),
        1,
        "{}",
        log()
    );
    // A different problem: logged.
    v.agent("bad", "backend: echo\ntimeout: soon\n", "");
    crate::common::wait_until(Duration::from_secs(10), "the new problem logged", || {
        log().contains("Agents/bad.md: definition disabled: field `timeout`")
    });
    s.stop();
}

/// A cron fire whose message cannot be written is not lost: the job note
/// says so (its `last_run_at` unchanged, so a restart still sees the time
/// due), and a later try fires it for the time it was scheduled.
#[test]
fn a_cron_fire_that_cannot_be_written_is_fired_later_never_lost() {
    use vaultrunner::trigger::cron::{Fired, Scheduler};
    let utc = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let v = echo_vault();
    v.write(
        "Jobs/j.md",
        "---\ntags: [agent/job]\nagent: echo\ncron: \"0 9 * * *\"\ntz: UTC\nlast_run_at: 2026-11-20T09:00:00.000Z\n---\nGood morning\n",
    );
    let disk = Arc::new(Disk::default());
    let e = engine(&v, &disk);
    e.scan(true);
    // The next write (the fire's message) fails.
    disk.fail("write", "", 1, libc::ENOSPC);
    let mut sched = Scheduler::new();
    let r = sched.tick(&e, utc("2026-11-21T09:00:30Z"));
    assert!(matches!(r.as_slice(), [Fired::Failed { .. }]), "{r:?}");
    assert_eq!(
        v.get("Jobs/j.md", "last_run_at").as_deref(),
        Some("2026-11-20T09:00:00.000Z")
    );
    assert_contains(
        &v.get("Jobs/j.md", "last_status").unwrap(),
        "could not write",
    );
    assert!(v.notes_under("Inbox").is_empty());
    // Held for a while, then fired for 09:00.
    assert!(sched.tick(&e, utc("2026-11-21T09:00:35Z")).is_empty());
    let r = sched.tick(&e, utc("2026-11-21T09:00:45Z"));
    match r.as_slice() {
        [Fired::Fired { scheduled, .. }] => assert_eq!(*scheduled, utc("2026-11-21T09:00:00Z")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v.get("Jobs/j.md", "last_run_at").as_deref(),
        Some("2026-11-21T09:00:00.000Z")
    );
    assert_eq!(v.notes_under("Inbox").len(), 1);
}
