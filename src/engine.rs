//! The engine: keeps the index of a vault, and dispatches queued messages to
//! turns — one at a time per agent, FIFO, up to `jobs` agents at once.
//!
//! Triggers (the watcher, later cron and HTTP) are producers: they put notes
//! on disk and tell the engine a path changed ([`Engine::note_changed`]);
//! the engine reads it, updates the index and wakes the dispatcher.

pub mod activity;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::backend::AgentEvent;
use crate::queue::{Index, written_by_vaultrunner};
use crate::turn::{self, Outcome, TurnEnv};
use crate::vault::{Vault, VaultError, Version};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Agents run at once.
    pub jobs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { jobs: 4 }
    }
}

/// Counters for status and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub turns_ok: AtomicU64,
    pub turns_error: AtomicU64,
    pub skipped: AtomicU64,
    /// Messages whose turn could not be recorded (I/O failures), given up.
    pub stuck: AtomicU64,
}

/// What a turn's task came back with.
enum Ran {
    Turn(Result<Outcome, VaultError>),
    /// The turn panicked (a bug): the message is left as it is on disk.
    Panicked(String),
}

impl Ran {
    /// How the turn ended, for its span and log line: `ok`, `error`,
    /// `skipped`, `cancelled`, `unrecorded` (its notes could not be
    /// written; kept for a later run) or `panicked`.
    fn outcome(&self) -> &'static str {
        match self {
            Ran::Turn(Ok(Outcome::Done { ok: true, .. })) => "ok",
            Ran::Turn(Ok(Outcome::Done { ok: false, .. })) => "error",
            Ran::Turn(Ok(Outcome::Skipped(_))) => "skipped",
            Ran::Turn(Ok(Outcome::Cancelled)) => "cancelled",
            Ran::Turn(Ok(Outcome::Unrecorded { .. }) | Err(_)) => "unrecorded",
            Ran::Panicked(_) => "panicked",
        }
    }

    /// Did the turn fail to write its notes, so that trying again may
    /// answer the message?
    fn unwritten(&self) -> Option<&VaultError> {
        match self {
            Ran::Turn(Err(e)) | Ran::Turn(Ok(Outcome::Unrecorded { error: e, .. })) => Some(e),
            _ => None,
        }
    }
}

/// Notes modified after this time (ns since the epoch) are within the
/// settle window; `None` when there is no window.
fn settle_cutoff(settle: std::time::Duration) -> Option<i128> {
    (!settle.is_zero()).then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(settle)
            .as_nanos() as i128
    })
}

/// An agent's next message and its definition, taken for a pipelined turn.
type NextMessage = (String, Arc<crate::agent::Definition>);

/// How long an agent may keep its slot for turn after turn while other
/// agents wait for one (see `Engine::take_next`).
const CHAIN_QUANTUM: std::time::Duration = std::time::Duration::from_millis(200);

/// A message whose notes could not be written (a full or failing disk) is
/// tried again after this, doubling each time up to [`WRITE_RETRY_MAX`]:
/// for as long as `serve` runs, and [`PROCESS_WRITE_TRIES`] times by
/// `process`, which then exits non-zero naming it.
const WRITE_RETRY_BASE: std::time::Duration = std::time::Duration::from_millis(500);
const WRITE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);
const PROCESS_WRITE_TRIES: u32 = 3;

/// The index saved across restarts, in the vault's state folder.
const CACHE_FILE: &str = "index.cache";
/// A saved index bigger than this is not read (about 40 million notes).
const MAX_CACHE_BYTES: u64 = 1 << 30;
/// A note changed this recently is not saved in the index: a second write
/// so soon may leave the same size and time (coarse file-system clocks).
const CACHE_RACY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often `serve` saves the index when it changed.
pub const CACHE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The wait before the `tries`-th retry (1-based) of a write or a read.
fn retry_delay(tries: u32) -> std::time::Duration {
    WRITE_RETRY_BASE
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(WRITE_RETRY_MAX)
}

struct State {
    index: Index,
    /// Agents with a turn running.
    running: HashSet<String>,
    /// Round-robin start for fairness across agents.
    cursor: usize,
    /// Notes the start-up scan left to the settle window: read with crash
    /// recovery when they are (a `working` one was cut short before).
    recover_later: HashSet<String>,
    /// Notes whose last reads failed for a passing reason, and how often.
    read_failures: std::collections::HashMap<String, u32>,
    /// What listings passed over and was logged (logged again only after
    /// it went away and came back).
    logged_skips: HashSet<(String, String)>,
}

/// A vault being served or processed.
pub struct Engine {
    vault: Arc<dyn Vault>,
    state: Mutex<State>,
    wake: Notify,
    slots: Arc<Semaphore>,
    events: broadcast::Sender<AgentEvent>,
    /// Set when a turn ran a program that may have written notes.
    external_ran: AtomicBool,
    pub stats: Stats,
    /// Turns running now (for `process` to know when all is quiet).
    in_flight: AtomicU64,
    idle: Notify,
    /// Woken when job notes change (the cron trigger waits on it).
    jobs_notify: Notify,
    /// The path of every message whose turn ended (for `?wait`).
    finished: broadcast::Sender<String>,
    pub metrics: Metrics,
    /// Recent turns and per-minute series for the status page (fixed size).
    pub activity: activity::Activity,
    /// Set while `process` runs: failed writes are then tried a bounded
    /// number of times, and the messages left unanswered are named.
    until_quiet: AtomicBool,
    /// Messages `process` gave up on, with why (it exits non-zero).
    unanswered: Mutex<Vec<(String, String)>>,
    /// Notes `process` could not read, after its tries.
    unread: Mutex<Vec<String>>,
    /// Where turns run when not here (a cluster's workers, SPEC §8).
    remote: std::sync::OnceLock<Arc<dyn turn::Remote>>,
    /// [`Index::changes`] when the index was last saved or loaded.
    saved_changes: AtomicU64,
}

/// An agent as `/health` shows it.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub definition: Arc<crate::agent::Definition>,
    /// `idle`, `working` or `queued`.
    pub state: &'static str,
    pub queued: usize,
}

/// Upper bounds (seconds) of the turn-duration histogram.
pub const DURATION_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0];

/// Turn counters and durations per agent, for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<MetricsInner>,
}

#[derive(Debug, Default, Clone)]
pub struct MetricsInner {
    /// (agent, status) → turns.
    pub turns: std::collections::BTreeMap<(String, &'static str), u64>,
    /// agent → (bucket counts, sum of seconds, count).
    pub durations: std::collections::BTreeMap<String, (Vec<u64>, f64, u64)>,
}

impl Metrics {
    fn record(&self, agent: &str, ok: bool, secs: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.turns
            .entry((agent.to_string(), if ok { "ok" } else { "error" }))
            .or_insert(0) += 1;
        let d = m
            .durations
            .entry(agent.to_string())
            .or_insert_with(|| (vec![0; DURATION_BUCKETS.len()], 0.0, 0));
        for (count, b) in d.0.iter_mut().zip(DURATION_BUCKETS) {
            if secs <= *b {
                *count += 1;
            }
        }
        d.1 += secs;
        d.2 += 1;
    }

    pub fn snapshot(&self) -> MetricsInner {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a scan found (for logs, and for the watcher to follow up).
#[derive(Debug, Default)]
pub struct ScanReport {
    pub notes: usize,
    pub changed: usize,
    pub removed: usize,
    /// Notes changed within the settle window, not read yet: read them
    /// once they have been quiet.
    pub deferred: Vec<String>,
    /// Notes whose read failed for a reason that may pass (out of
    /// descriptors, an I/O error): what the index knew of them is kept;
    /// read them again later.
    pub failed: Vec<String>,
}

impl Engine {
    pub fn new(vault: Arc<dyn Vault>, config: Config) -> Arc<Engine> {
        let (events, _) = broadcast::channel(1024);
        let (finished, _) = broadcast::channel(4096);
        Arc::new(Engine {
            jobs_notify: Notify::new(),
            finished,
            metrics: Metrics::default(),
            activity: Default::default(),
            until_quiet: AtomicBool::new(false),
            unanswered: Mutex::new(Vec::new()),
            unread: Mutex::new(Vec::new()),
            remote: std::sync::OnceLock::new(),
            saved_changes: AtomicU64::new(0),
            vault,
            state: Mutex::new(State {
                index: Index::new(crate::backend::KINDS),
                running: HashSet::new(),
                cursor: 0,
                recover_later: Default::default(),
                read_failures: Default::default(),
                logged_skips: Default::default(),
            }),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(config.jobs.max(1))),
            events,
            external_ran: AtomicBool::new(false),
            stats: Stats::default(),
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
        })
    }

    pub fn vault(&self) -> &Arc<dyn Vault> {
        &self.vault
    }

    /// Hands every turn's backend run (step 3) to `remote` from now on:
    /// a cluster's vault node (set once, before turns start).
    pub fn set_remote(&self, remote: Arc<dyn turn::Remote>) {
        let _ = self.remote.set(remote);
    }

    /// Sends a live event of a turn to the SSE streams and the status page.
    pub fn events(&self) -> broadcast::Sender<AgentEvent> {
        self.events.clone()
    }

    /// Live events of every turn.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not wedge the engine: the
        // index is a cache of the disk and stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the index.
    pub fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(&self.lock().index)
    }

    /// Scans the whole vault: reads new and changed notes, forgets deleted
    /// ones. `recovering` is true for the start-up scan (then `working`
    /// messages are crash leftovers and are queued again).
    pub fn scan(&self, recovering: bool) -> ScanReport {
        self.scan_deferring(recovering, None)
    }

    /// A scan for `serve`: a changed note modified less than `settle` ago
    /// is not read but returned in [`ScanReport::deferred`], for the
    /// watcher to read once it has been quiet — so a scan never reads a
    /// half-written note either.
    pub fn scan_settled(&self, settle: std::time::Duration) -> ScanReport {
        self.scan_deferring(false, settle_cutoff(settle))
    }

    /// The start-up scan for `serve`: crash recovery, and like
    /// [`Engine::scan_settled`] a note modified less than `settle` ago is not
    /// read yet (it may be half-typed) but deferred, for the watcher to
    /// read once it has been quiet — still with crash recovery, so a note
    /// left `working` by a crash just before is not stranded.
    pub fn scan_startup(&self, settle: std::time::Duration) -> ScanReport {
        let report = self.scan_deferring(true, settle_cutoff(settle));
        self.lock()
            .recover_later
            .extend(report.deferred.iter().cloned());
        report
    }

    /// A scan never shrinks the index on a failure: a note is forgotten
    /// only when the listing saw its folder whole and the note was not in
    /// it (or its read found it gone). Notes that could not be read for a
    /// passing reason keep what the index knew and are returned in
    /// [`ScanReport::failed`].
    fn scan_deferring(&self, recovering: bool, defer_after_ns: Option<i128>) -> ScanReport {
        let started = std::time::Instant::now();
        // The listing is handed over a folder at a time and sorted here
        // into what to read now, what to leave to the settle window, and
        // the keys of every note listed (to find the ones that went):
        // a big vault's listing is never in memory whole.
        let keys = Mutex::new(Vec::with_capacity(self.lock().index.len()));
        let deferred = Mutex::new(Vec::new());
        // Read and indexed a part at a time, so the notes' texts are never
        // all in memory at once; and read as the listing goes, so neither
        // is the list of notes to read (every note, on a first start).
        let applied = Mutex::new(Applied::default());
        let read = |todo: &[crate::vault::Entry]| {
            let a = read_parallel(&*self.vault, todo, &|reads| {
                self.apply_reads(reads, recovering)
            });
            applied.lock().unwrap_or_else(|p| p.into_inner()).merge(a);
        };
        let todo = Batches::new(SCAN_READ_BATCH);
        let listing = self.vault.list_each(&|entries: Vec<crate::vault::Entry>| {
            let mut k = Vec::with_capacity(entries.len());
            let (mut now, mut later) = (Vec::new(), Vec::new());
            {
                let st = self.lock();
                for e in entries {
                    let key = crate::queue::path_key(&e.path);
                    k.push(key);
                    if st.index.seen_key(key, e.version) {
                        continue;
                    }
                    if defer_after_ns.is_some_and(|c| e.version.modified_ns > c) {
                        later.push(e);
                    } else {
                        now.push(e);
                    }
                }
            }
            keys.lock().unwrap_or_else(|p| p.into_inner()).extend(k);
            deferred
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(later);
            // The other walkers wait while a batch is read: the listing
            // would run ahead of the reading.
            todo.add(now, |batch| read(&batch));
        });
        read(&todo.finish());
        self.log_skipped(&listing.skipped);
        let mut keys = keys.into_inner().unwrap_or_else(|p| p.into_inner());
        keys.sort_unstable();
        let deferred = deferred.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut report = ScanReport {
            notes: keys.len(),
            ..Default::default()
        };
        let mut applied = applied.into_inner().unwrap_or_else(|p| p.into_inner());
        let (gone, removed) = self.lock().index.sweep(
            &|k| keys.binary_search(&k).is_ok(),
            &|p| listing.unknown(p),
            listing.incomplete.is_empty(),
        );
        applied.change.merge(gone);
        self.changed(&applied.change);
        report.changed = applied.changed;
        report.removed = applied.removed + removed;
        report.failed = applied.failed;
        report.deferred = deferred.into_iter().map(|e| e.path).collect();
        drop(keys);
        give_back_memory();
        tracing::debug!(
            "scan: {} notes listed, {} read, {} gone, in {:?}",
            report.notes,
            report.changed,
            report.removed,
            started.elapsed()
        );
        report
    }

    /// Indexes what a part of a scan read (under the lock once).
    fn apply_reads(
        &self,
        reads: Vec<(&crate::vault::Entry, ReadResult)>,
        recovering: bool,
    ) -> Applied {
        let mut out = Applied::default();
        let mut st = self.lock();
        for (entry, got) in reads {
            let path = &entry.path;
            match got {
                Ok((parsed, fp)) => {
                    // A note the start-up scan deferred is read with
                    // recovery, whichever scan or event reads it.
                    let rec = st.recover_later.remove(path) || recovering;
                    out.change
                        .merge(st.index.update_parsed(path, parsed, fp, rec));
                    st.read_failures.remove(path);
                    out.changed += 1;
                }
                // Deleted since the listing: gone.
                Err(e) if e.is_not_found() => {
                    if st.index.knows(path) {
                        out.change.merge(st.index.remove(path));
                        out.removed += 1;
                    }
                }
                Err(e) if e.is_transient() => {
                    // Read later, still with crash recovery when this
                    // is the start-up scan.
                    if recovering || st.recover_later.contains(path) {
                        st.recover_later.insert(path.clone());
                    }
                    read_failed(&mut st, path, &e);
                    out.failed.push(path.clone());
                }
                Err(e) => {
                    out.change
                        .merge(st.index.unreadable(path, entry.version, &e.reason()));
                }
            }
        }
        out
    }

    /// Takes in the index the last run saved (`.vaultrunner/index.cache`),
    /// before the first scan: the scan then reads only the notes that are
    /// not as they were. A file that cannot be used is said once and
    /// passed over (every note is read).
    pub fn load_cache(&self) {
        let Ok(dir) = self.vault.state_dir() else {
            return;
        };
        let file = dir.join(CACHE_FILE);
        let bytes = match std::fs::metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(m) if m.len() > MAX_CACHE_BYTES => Err(format!(
                "{} bytes, over the limit of {MAX_CACHE_BYTES}",
                m.len()
            )),
            _ => std::fs::read(&file).map_err(|e| e.to_string()),
        };
        let restored = bytes.and_then(|b| self.lock().index.restore(&b).map_err(|e| e.to_string()));
        match restored {
            Ok(n) => tracing::debug!("{}: {n} notes known from the last run", file.display()),
            Err(e) => tracing::warn!(
                "{}: {e}; not used (every note is read, and the file written anew)",
                file.display()
            ),
        }
        self.saved_changes
            .store(self.lock().index.changes(), Ordering::Relaxed);
    }

    /// Has the index changed since it was last saved or loaded?
    pub fn cache_stale(&self) -> bool {
        self.lock().index.changes() != self.saved_changes.load(Ordering::Relaxed)
    }

    /// Saves what a restart may trust of the index (`.vaultrunner/index.cache`,
    /// through a temp file and a rename; a cache needs no flush: a file cut
    /// short by a crash is refused by its checksum). Notes changed in the
    /// last [`CACHE_RACY`] are left out, and so are notes whose reads
    /// failed or that a start-up scan left for later.
    pub fn save_cache(&self) {
        let Ok(dir) = self.vault.state_dir() else {
            return;
        };
        let before_ns = std::time::SystemTime::now()
            .checked_sub(CACHE_RACY)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut buf = Vec::new();
        let changes = {
            let st = self.lock();
            let exclude: HashSet<u64> = st
                .recover_later
                .iter()
                .chain(st.read_failures.keys())
                .map(|p| crate::queue::path_key(p))
                .collect();
            st.index.save(&exclude, before_ns, &mut buf);
            st.index.changes()
        };
        let file = dir.join(CACHE_FILE);
        let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
        let written = std::fs::write(&tmp, &buf).and_then(|()| std::fs::rename(&tmp, &file));
        drop(buf);
        give_back_memory();
        match written {
            Ok(()) => self.saved_changes.store(changes, Ordering::Relaxed),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(
                    "{}: cannot be written: {e} (the next start reads every note)",
                    file.display()
                );
            }
        }
    }

    /// Logs what a listing passed over (symlinks out of the vault, notes
    /// over the size limit, unreadable folders) once, not at every scan.
    fn log_skipped(&self, skipped: &[crate::vault::Skipped]) {
        let mut st = self.lock();
        let now: HashSet<(String, String)> = skipped
            .iter()
            .map(|s| (s.rel.clone(), s.reason.clone()))
            .collect();
        for s in &now {
            if !st.logged_skips.contains(s) {
                tracing::warn!("{}: {}", s.0, s.1);
            }
        }
        st.logged_skips = now;
    }

    /// A note may have changed on disk (watcher event). Reads it if its
    /// version differs from the last one seen or written — so our own
    /// writes never trigger anything. Returns `false` when the read failed
    /// for a reason that may pass (the index keeps what it knew): the
    /// caller reads it again after [`Engine::read_retry_delay`].
    pub fn note_changed(&self, path: &str) -> bool {
        let recovering = self.lock().recover_later.remove(path);
        let fp = match self.vault.stat(path) {
            None => {
                let ch = {
                    let mut st = self.lock();
                    st.index.knows(path).then(|| st.index.remove(path))
                };
                if let Some(ch) = ch {
                    self.changed(&ch);
                }
                return true;
            }
            Some(fp) if self.lock().index.seen(path, fp) => return true,
            Some(fp) => fp,
        };
        let ch = match self.vault.read(path) {
            Ok((text, fp)) => {
                let mut st = self.lock();
                st.read_failures.remove(path);
                st.index.update(path, &text, fp, recovering)
            }
            Err(e) if e.is_not_found() => self.lock().index.remove(path),
            Err(e) if e.is_transient() => {
                let mut st = self.lock();
                if recovering {
                    st.recover_later.insert(path.to_string());
                }
                read_failed(&mut st, path, &e);
                return false;
            }
            Err(e) => self.lock().index.unreadable(path, fp, &e.reason()),
        };
        self.changed(&ch);
        true
    }

    /// How long to wait before reading a note whose read failed again
    /// (growing with each failure, at most a minute).
    pub fn read_retry_delay(&self, path: &str) -> std::time::Duration {
        let n = self.lock().read_failures.get(path).copied().unwrap_or(1);
        retry_delay(n)
    }

    fn changed(&self, ch: &crate::queue::Change) {
        for p in &ch.problems {
            if p.is_error {
                tracing::error!("{}.md: {}", p.path, p.reason);
            } else {
                tracing::warn!("{}.md: {}", p.path, p.reason);
            }
        }
        if ch.definitions_changed || ch.queued.len() > 16 {
            self.record_depths(&self.lock());
        } else if !ch.queued.is_empty() {
            // Only the agents that got a message (a pass over every agent
            // at every note would cost each turn more as agents are added).
            let st = self.lock();
            for agent in &ch.queued {
                self.activity.depth(agent, st.index.queue_len(agent));
            }
        }
        if ch.definitions_changed || !ch.queued.is_empty() {
            self.wake.notify_one();
        }
        if ch.jobs_changed {
            self.jobs_notify.notify_waiters();
        }
    }

    /// Resolves when job notes change next.
    pub fn jobs_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.jobs_notify.notified()
    }

    /// Paths of messages whose turn ends, as they end.
    pub fn finished(&self) -> broadcast::Receiver<String> {
        self.finished.subscribe()
    }

    /// Writes a note durably (atomic, fsynced) and indexes it at once, so
    /// a message written by a trigger is queued without waiting for the
    /// watcher. Blocking: call from a blocking context.
    pub fn write_note(&self, path: &str, text: &str) -> Result<Version, VaultError> {
        let fp = self.vault.write(path, text)?;
        let ch = self.lock().index.update(path, text, fp, false);
        self.changed(&ch);
        Ok(fp)
    }

    /// Creates a note only if nothing is at its path (durably), and indexes
    /// it. Returns `false` if it was already there. Blocking.
    pub fn create_note(&self, path: &str, text: &str) -> Result<bool, VaultError> {
        let created = self.vault.create_new(path, text)?;
        if created && let Some(fp) = self.vault.stat(path) {
            let ch = self.lock().index.update(path, text, fp, false);
            self.changed(&ch);
        }
        Ok(created)
    }

    /// Tells the status page's record every agent's queue depth (and
    /// which agents are defined).
    fn record_depths(&self, st: &State) {
        self.activity.depths(
            st.index
                .agents()
                .map(|d| (d.name.as_str(), st.index.queue_len(&d.name))),
        );
    }

    /// The status page's record (`GET /api/status`), with the queues as
    /// they are now.
    pub fn activity_snapshot(&self) -> activity::Snapshot {
        self.record_depths(&self.lock());
        self.activity.snapshot()
    }

    /// Each agent's state for `/health` and `/api/agents`.
    pub fn agent_states(&self) -> Vec<AgentState> {
        let st = self.lock();
        st.index
            .agents()
            .map(|d| {
                let queued = st.index.queue_len(&d.name);
                let state = if st.running.contains(&d.name) {
                    "working"
                } else if queued > 0 {
                    "queued"
                } else {
                    "idle"
                };
                AgentState {
                    definition: d.clone(),
                    state,
                    queued,
                }
            })
            .collect()
    }

    /// Indexes notes a turn wrote, as soon as they are durable: a callback
    /// is a new message to queue, a stamped inbound joins its thread's
    /// history, and the versions make the watcher's events for them
    /// no-ops.
    pub fn index_written(&self, written: turn::Written) {
        let mut all = crate::queue::Change::default();
        {
            let mut st = self.lock();
            for (p, fp, text) in written {
                all.merge(st.index.update(&p, &text, fp, false));
            }
        }
        self.changed(&all);
    }

    /// Reads a note afresh, whatever its version says.
    fn reindex(&self, path: &str) {
        let ch = match self.vault.read(path) {
            Ok((text, fp)) => self.lock().index.update(path, &text, fp, false),
            Err(e) if e.is_not_found() => self.lock().index.remove(path),
            // Kept as the index knew it; read again at the next event or scan.
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        self.changed(&ch);
    }

    /// Does the note at `path` need no settle window (an inbound note that
    /// vaultrunner wrote itself, atomically)?
    pub fn skip_settle(&self, path: &str) -> bool {
        let Ok((text, _)) = self.vault.read(path) else {
            return false;
        };
        let Ok(n) = crate::note::Note::parse(&text) else {
            return false;
        };
        written_by_vaultrunner(crate::note::InboundMessage::of(&n).sender.as_deref())
    }

    /// Is the note on disk exactly what the index last saw or wrote (same
    /// size and modification time)? Then an event for it needs no read.
    pub fn unchanged(&self, path: &str) -> bool {
        self.vault
            .stat(path)
            .is_some_and(|v| self.lock().index.seen(path, v))
    }

    /// Starts every turn that can start now. Returns how many started.
    fn dispatch(self: &Arc<Self>, cancel: &CancellationToken) -> usize {
        if cancel.is_cancelled() {
            return 0;
        }
        let mut started = 0;
        let mut st = self.lock();
        let agents: Vec<String> = st.index.queued_agents().map(|(a, _)| a.clone()).collect();
        if agents.is_empty() {
            return 0;
        }
        let n = agents.len();
        let start = st.cursor % n;
        for i in 0..n {
            let Some(agent) = agents.get((start + i) % n) else {
                continue;
            };
            if st.running.contains(agent) || !st.index.runnable(agent) {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                st.cursor = (start + i) % n;
                break;
            };
            let Some(path) = st.index.pop(agent) else {
                continue;
            };
            self.activity.depth(agent, st.index.queue_len(agent));
            let def = st.index.agent(agent).cloned();
            st.running.insert(agent.clone());
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            started += 1;
            let engine = self.clone();
            let agent = agent.clone();
            let cancel = cancel.clone();
            tokio::spawn(engine.run_agent(agent, path, def, cancel, permit));
        }
        started
    }

    /// What a turn needs from the engine. `taken` receives the agent's next
    /// message when the turn takes it for a pipelined claim.
    fn turn_env(
        self: &Arc<Self>,
        agent: &str,
        def: Option<&crate::agent::Definition>,
        chain_start: std::time::Instant,
        cancel: &CancellationToken,
        taken: Option<Arc<std::sync::Mutex<Option<NextMessage>>>>,
    ) -> TurnEnv {
        // Only the claude backend's delegation section needs the list.
        let agents: Vec<String> = if def.is_some_and(|d| d.backend == "claude") {
            self.with_index(|ix| ix.agents().map(|d| d.name.clone()).collect())
        } else {
            Vec::new()
        };
        let history_of = self.clone();
        let index_of = self.clone();
        let next = taken.map(|taken| {
            let (engine, agent, cancel) = (self.clone(), agent.to_string(), cancel.clone());
            Box::new(move || {
                let next = engine.take_next(&agent, chain_start, &cancel)?;
                if let Ok(mut t) = taken.lock() {
                    *t = Some(next.clone());
                }
                Some(next)
            }) as turn::NextFn
        });
        TurnEnv {
            vault: self.vault.clone(),
            events: self.events.clone(),
            cancel: cancel.clone(),
            history: Box::new(move |t| history_of.with_index(|ix| ix.thread_history(t))),
            agents,
            on_written: Box::new(move |w| index_of.index_written(w)),
            next,
            remote: self.remote.get().cloned(),
        }
    }

    /// Runs one turn in a task of its own: should it panic, the caller's
    /// bookkeeping still runs (the agent is freed; the message is left as
    /// it is, for the next start).
    async fn run_turn(
        &self,
        env: TurnEnv,
        def: Option<Arc<crate::agent::Definition>>,
        path: &str,
        claimed: Option<turn::Claimed>,
    ) -> (Ran, Option<turn::Claimed>) {
        let p = path.to_string();
        // The turn's task runs in the caller's `turn` span.
        let run =
            tracing::Instrument::in_current_span(
                async move { turn::run(&env, def, &p, claimed).await },
            );
        match tokio::spawn(run).await {
            Ok((res, next)) => (Ran::Turn(res), next),
            Err(e) => (Ran::Panicked(e.to_string()), None),
        }
    }

    /// Runs turns of one agent in its slot: the message it was given, then,
    /// while [`Engine::take_next`] allows, the agent's next messages, each
    /// claimed in the end batch of the turn before it (pipelined turns).
    ///
    /// A message whose notes cannot be written (a full or failing disk)
    /// keeps the agent: nothing else of it runs before it is answered, in
    /// order. Its slot is freed while it waits, and it is tried again with
    /// a growing delay — its end alone when the turn ran (the backend does
    /// not run twice), the whole message when even its claim failed.
    async fn run_agent(
        self: Arc<Self>,
        agent: String,
        mut path: String,
        mut def: Option<Arc<crate::agent::Definition>>,
        cancel: CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut permit = Some(permit);
        let chain_start = std::time::Instant::now();
        let mut claimed: Option<turn::Claimed> = None;
        loop {
            // What `next` took off the queue, whatever becomes of the turn.
            let taken: Arc<std::sync::Mutex<Option<NextMessage>>> = Default::default();
            let env = self.turn_env(
                &agent,
                def.as_deref(),
                chain_start,
                &cancel,
                Some(taken.clone()),
            );
            let started = std::time::Instant::now();
            // One span per message (SPEC §9): its log lines, the turn's
            // included, carry the agent, the message and the thread; the
            // outcome and duration are recorded when it ends.
            let span = tracing::info_span!(
                "turn",
                agent = %agent,
                message = %path,
                thread = tracing::field::Empty,
                outcome = tracing::field::Empty,
                duration_ms = tracing::field::Empty,
            );
            self.activity.turn_started(&agent, &path);
            let (mut ran, next_claimed) = tracing::Instrument::instrument(
                self.run_turn(env, def.clone(), &path, claimed.take()),
                span.clone(),
            )
            .await;
            let mut next = taken.lock().ok().and_then(|mut t| t.take());
            let mut tries = 0;
            while let Some(e) = ran.unwritten() {
                // The next message waits until this one is answered.
                if let Some((np, _)) = next.take() {
                    self.put_back(&agent, &np);
                }
                tries += 1;
                permit.take();
                let retry = self.wait_to_retry(&path, e, tries, &cancel);
                if !tracing::Instrument::instrument(retry, span.clone()).await {
                    break;
                }
                ran = match ran {
                    Ran::Turn(Ok(Outcome::Unrecorded { pending, .. })) => {
                        let env = self.turn_env(&agent, None, chain_start, &cancel, None);
                        let record = turn::record(&env, pending);
                        Ran::Turn(tracing::Instrument::instrument(record, span.clone()).await)
                    }
                    _ => {
                        // Nothing ran: the message goes again from the
                        // start, in a job slot like any turn.
                        let slot = tokio::select! {
                            p = self.slots.clone().acquire_owned() => p.ok(),
                            _ = cancel.cancelled() => None,
                        };
                        let Some(slot) = slot else { break };
                        permit = Some(slot);
                        // The definition as it is now (it may have been
                        // edited or removed meanwhile).
                        def = self.with_index(|ix| ix.agent(&agent).filter(|d| d.enabled).cloned());
                        let env = self.turn_env(&agent, def.as_deref(), chain_start, &cancel, None);
                        let again = self.run_turn(env, def.clone(), &path, None);
                        tracing::Instrument::instrument(again, span.clone()).await.0
                    }
                };
            }
            let elapsed = started.elapsed();
            let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            let outcome = ran.outcome();
            if let Ran::Turn(Ok(Outcome::Done { ok, summary, .. })) = &ran {
                self.metrics.record(&agent, *ok, elapsed.as_secs_f64());
                self.activity
                    .turn_ended(&agent, &path, *ok, elapsed, summary);
                // The span names the agent and the message.
                span.in_scope(|| {
                    tracing::info!(outcome, duration_ms, "{outcome} in {duration_ms} ms")
                });
            } else {
                self.activity.turn_stopped(&agent, &path);
            }
            // Recorded after that line, so a text log does not say them
            // twice; the lines that follow (skipped, cut short) carry them.
            span.record("outcome", outcome);
            span.record("duration_ms", duration_ms);
            if next.is_none() {
                // The slot is free before the dispatcher is woken.
                permit.take();
            }
            span.in_scope(|| self.turn_finished(&agent, &path, ran, next.is_none()));
            let Some((next_path, next_def)) = next else {
                break;
            };
            // Claimed with the end batch, or (when it could not be) run
            // from the start like any message.
            claimed = next_claimed.filter(|c| c.path() == next_path);
            path = next_path;
            def = Some(next_def);
        }
    }

    /// Waits before trying a message whose notes could not be written
    /// again. `false` when it is not tried again: shutdown, or `process`
    /// gave up on it (it is then named in [`Engine::unanswered`]).
    async fn wait_to_retry(
        &self,
        path: &str,
        e: &VaultError,
        tries: u32,
        cancel: &CancellationToken,
    ) -> bool {
        if cancel.is_cancelled() {
            tracing::error!(
                "{path}: its notes could not be written ({e}); shutting down, the next start answers it"
            );
            return false;
        }
        if self.until_quiet.load(Ordering::SeqCst) && tries > PROCESS_WRITE_TRIES {
            tracing::error!(
                "{path}: not answered: its notes could not be written ({e}); a later run answers it"
            );
            self.unanswered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((path.to_string(), e.to_string()));
            return false;
        }
        if let VaultError::Changed { .. } = e
            && tries <= PROCESS_WRITE_TRIES
        {
            // Someone else's edit won the race and is kept: read the
            // notes again and decide again, at once.
            tracing::info!("{e}; reading it again");
            return !cancel.is_cancelled();
        }
        let delay = retry_delay(tries);
        if tries == 1 {
            tracing::error!(
                "{path}: its notes could not be written: {e}; the message is kept and tried again in {delay:?}"
            );
        } else {
            tracing::warn!(
                "{path}: still cannot be written (try {tries}): {e}; trying again in {delay:?}"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => !cancel.is_cancelled(),
            _ = cancel.cancelled() => false,
        }
    }

    /// Puts a message the agent's turn had taken for a pipelined claim back
    /// at its place in the queue (the turn before it is not answered yet).
    fn put_back(&self, agent: &str, path: &str) {
        let mut st = self.lock();
        match st.index.inbound(path).map(|m| m.order.clone()) {
            Some(order) => st.index.requeue(agent, path, order),
            None => st.index.finish(path),
        }
        drop(st);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Messages `process` could not answer because their notes could not
    /// be written, with why.
    pub fn unanswered(&self) -> Vec<(String, String)> {
        self.unanswered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next message of an agent whose turn is ending, when the agent may
    /// keep its slot: it is still runnable, nothing is shutting down, and
    /// either no other agent waits for a slot or this agent has held it for
    /// less than [`CHAIN_QUANTUM`] (so a backlog of quick turns is
    /// pipelined, and slow turns never keep others waiting).
    fn take_next(
        &self,
        agent: &str,
        chain_start: std::time::Instant,
        cancel: &CancellationToken,
    ) -> Option<NextMessage> {
        if cancel.is_cancelled() {
            return None;
        }
        let mut st = self.lock();
        if !st.index.runnable(agent) {
            return None;
        }
        let def = st.index.agent(agent).cloned()?;
        if chain_start.elapsed() >= CHAIN_QUANTUM && self.slots.available_permits() == 0 {
            let waiting = st
                .index
                .queued_agents()
                .any(|(a, _)| a != agent && !st.running.contains(a) && st.index.runnable(a));
            if waiting {
                return None;
            }
        }
        let path = st.index.pop(agent)?;
        self.activity.depth(agent, st.index.queue_len(agent));
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some((path, def))
    }

    /// Bookkeeping for a message whose turn ended; `last` frees its agent
    /// for the dispatcher (the agent's turns are over for now).
    fn turn_finished(&self, agent: &str, path: &str, ran: Ran, last: bool) {
        let mut reindex = false;
        {
            let mut st = self.lock();
            if last {
                st.running.remove(agent);
            }
            st.index.finish(path);
            match ran {
                Ran::Turn(Ok(Outcome::Done { ok, external, .. })) => {
                    if ok {
                        self.stats.turns_ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.turns_error.fetch_add(1, Ordering::Relaxed);
                    }
                    if external {
                        self.external_ran.store(true, Ordering::SeqCst);
                    }
                }
                Ran::Turn(Ok(Outcome::Skipped(why))) => {
                    tracing::info!("{path}: not run: {why}");
                    self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                    // Whatever the note is now, index it afresh so a
                    // message that is still eligible is not dropped.
                    reindex = true;
                }
                Ran::Turn(Ok(Outcome::Cancelled)) => {
                    tracing::info!("{path}: cut short by shutdown");
                }
                // Shutdown, or `process` gave up: the note stays as it is
                // on disk (`pending`, or `working` with its turn run), and
                // the next start answers it.
                Ran::Turn(Ok(Outcome::Unrecorded { .. })) | Ran::Turn(Err(_)) => {
                    self.stats.stuck.fetch_add(1, Ordering::Relaxed);
                }
                Ran::Panicked(e) => {
                    tracing::error!(
                        "{path}: the turn panicked ({e}); the message is left as it is until the next start"
                    );
                    self.stats.stuck.fetch_add(1, Ordering::Relaxed);
                    if self.until_quiet.load(Ordering::SeqCst) {
                        self.unanswered
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((path.to_string(), format!("the turn panicked: {e}")));
                    }
                }
            }
        }
        if reindex {
            self.reindex(path);
        }
        let _ = self.finished.send(path.to_string());
        if last {
            self.released();
        } else {
            // The agent goes on with its next message (already counted in
            // flight): nothing for the dispatcher or `process` to look at.
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// One piece of work in flight is over: let the dispatcher look again
    /// and `process` check whether all is quiet.
    fn released(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.wake.notify_one();
        self.idle.notify_waiters();
    }

    /// The dispatcher loop: runs until `cancel`, then waits for running
    /// turns to end (they see the same token and stop their processes).
    pub async fn run_dispatcher(self: &Arc<Self>, cancel: CancellationToken) {
        loop {
            self.dispatch(&cancel);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = cancel.cancelled() => break,
            }
        }
        self.wait_idle().await;
    }

    /// Waits until no turn is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// `process`: runs every eligible message to completion, including ones
    /// that turns create, then returns.
    pub async fn process(self: &Arc<Self>, cancel: CancellationToken) {
        self.until_quiet.store(true, Ordering::SeqCst);
        self.load_cache();
        let mut unread = self.scan(true).failed;
        let mut tries = 0;
        loop {
            loop {
                let notified = self.idle.notified();
                let started = self.dispatch(&cancel);
                if started == 0 && self.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                if cancel.is_cancelled() {
                    self.wait_idle().await;
                    return;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = cancel.cancelled() => {}
                }
            }
            // Programs run by turns may have written new notes (`send`):
            // look again until a look finds nothing new to run.
            if self.external_ran.swap(false, Ordering::SeqCst) {
                unread.extend(self.scan(false).failed);
                continue;
            }
            // Notes that could not be read: again, a few times.
            unread.sort();
            unread.dedup();
            if unread.is_empty() || tries >= PROCESS_WRITE_TRIES || cancel.is_cancelled() {
                break;
            }
            tries += 1;
            tokio::select! {
                _ = tokio::time::sleep(retry_delay(tries)) => {}
                _ = cancel.cancelled() => {}
            }
            unread.retain(|p| !self.note_changed(p));
        }
        if !unread.is_empty() {
            tracing::error!(
                "{} note(s) could not be read; a later run reads them: {}",
                unread.len(),
                unread.join(", ")
            );
        }
        *self.unread.lock().unwrap_or_else(|p| p.into_inner()) = unread;
        if self.cache_stale() {
            self.save_cache();
        }
    }

    /// How far `process` is: messages whose turns ended (ok, error,
    /// skipped or given up) and messages still to go (queued for an agent
    /// that can run them, or running). Cheap enough to poll for a progress
    /// bar.
    pub fn progress(&self) -> (u64, u64) {
        let s = &self.stats;
        let done = [&s.turns_ok, &s.turns_error, &s.skipped, &s.stuck]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add);
        let queued: usize = self.with_index(|ix| {
            ix.queued_agents()
                .filter(|(a, _)| ix.runnable(a))
                .map(|(_, n)| n)
                .sum()
        });
        let left = u64::try_from(queued)
            .unwrap_or(u64::MAX)
            .saturating_add(self.in_flight.load(Ordering::SeqCst));
        (done, left)
    }

    /// Notes `process` could not read (for a reason that may pass).
    pub fn unread(&self) -> Vec<String> {
        self.unread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counts a failed read of a note and logs the first one (the retries are
/// quiet until it is read again).
fn read_failed(st: &mut State, path: &str, e: &VaultError) {
    let n = st.read_failures.entry(path.to_string()).or_insert(0);
    *n += 1;
    if *n == 1 {
        tracing::warn!("{e}; reading it again later");
    }
}

/// A note as the index needs it and its version, or why it could not be
/// read.
type ReadResult = Result<(crate::queue::Parsed, Version), VaultError>;

/// Hands the memory a scan or a save of the index used for a moment back
/// to the system (glibc keeps freed memory in its arenas otherwise, and a
/// long-running `serve` would look as big as its biggest moment).
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What indexing a part of a scan's reads did.
#[derive(Default)]
struct Applied {
    change: crate::queue::Change,
    changed: usize,
    removed: usize,
    failed: Vec<String>,
}

impl Applied {
    fn merge(&mut self, other: Applied) {
        self.change.merge(other.change);
        self.changed += other.changed;
        self.removed += other.removed;
        self.failed.extend(other.failed);
    }
}

/// How many notes a reader reads (and parses) before it hands them to the
/// index: at most 64 readers × 32 parsed notes are in memory at once.
const READ_PART: usize = 32;

/// How many notes to read a scan gathers from its listing before it reads
/// them.
const SCAN_READ_BATCH: usize = 16_384;

/// What `apply` is handed: a part of the notes read.
type Reads<'e> = Vec<(&'e crate::vault::Entry, ReadResult)>;

/// Gathers items from several threads and hands them on in batches of at
/// least `size` (what is left at the end is the caller's), one batch at a
/// time: a thread adding while a batch is handed on waits for it.
struct Batches<T> {
    size: usize,
    gathered: Mutex<Vec<T>>,
}

impl<T> Batches<T> {
    fn new(size: usize) -> Self {
        Batches {
            size,
            gathered: Mutex::new(Vec::new()),
        }
    }

    /// Adds `items`; hands the gathered batch to `take` once it is full.
    fn add(&self, items: Vec<T>, take: impl FnOnce(Vec<T>)) {
        let mut g = self.gathered.lock().unwrap_or_else(|p| p.into_inner());
        g.extend(items);
        if g.len() >= self.size {
            take(std::mem::take(&mut *g));
        }
    }

    /// What was gathered since the last batch.
    fn finish(self) -> Vec<T> {
        self.gathered
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads notes on a few threads (the 100,000-note vault must load fast),
/// handing each [`READ_PART`] notes read to `apply` (which indexes them), so
/// only a few parts' texts are in memory at once.
fn read_parallel<'e>(
    vault: &dyn Vault,
    entries: &'e [crate::vault::Entry],
    apply: &(dyn Fn(Reads<'e>) -> Applied + Sync),
) -> Applied {
    let read_all = |c: &'e [crate::vault::Entry]| -> Applied {
        let mut out = Applied::default();
        for part in c.chunks(READ_PART) {
            let reads = part
                .iter()
                .map(|e| (e, read_relevant(vault, &e.path)))
                .collect();
            out.merge(apply(reads));
        }
        out
    };
    // Reading is mostly waiting for the disk when the vault is not in the
    // page cache: more reads in flight than cores pays off (measured: 100k
    // notes with their data evicted in 5.3 s with 2 threads, 2.28 s with
    // 16, 1.89 s with 64; the same 0.8 s warm). At least 32 notes a thread.
    let threads = (entries.len() / 32).clamp(1, 64);
    if threads == 1 {
        return read_all(entries);
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut out = Applied::default();
        let mut handles = Vec::new();
        for c in entries.chunks(chunk) {
            // A thread that cannot be had (the system is out of them) is
            // no failure: this thread reads that part itself.
            match std::thread::Builder::new().spawn_scoped(s, move || read_all(c)) {
                Ok(h) => handles.push(h),
                Err(_) => out.merge(read_all(c)),
            }
        }
        // A reader that panicked leaves the rest of its notes unread (as
        // if not listed): they are neither changed nor forgotten.
        for h in handles {
            out.merge(h.join().unwrap_or_default());
        }
        out
    })
}

/// Reads a note and parses it as far as the index needs (on the reader's
/// thread, not under the index's lock).
fn read_relevant(vault: &dyn Vault, path: &str) -> ReadResult {
    let (text, fp) = vault.read(path)?;
    Ok((crate::queue::Parsed::of(&text), fp))
}

#[cfg(test)]
mod tests {
    use super::Batches;
    use std::sync::Mutex;

    #[test]
    fn batches_hand_every_item_on_once_and_one_batch_at_a_time() {
        let b = Batches::new(100);
        let taken = Mutex::new(Vec::new());
        let handing = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let (b, taken, handing) = (&b, &taken, &handing);
                s.spawn(move || {
                    for i in 0..260u32 {
                        b.add(vec![t * 1000 + i; 1], |batch: Vec<u32>| {
                            assert!(!handing.swap(true, std::sync::atomic::Ordering::SeqCst));
                            assert!(batch.len() >= 100);
                            taken.lock().unwrap().push(batch);
                            handing.store(false, std::sync::atomic::Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        let taken = taken.into_inner().unwrap();
        assert!(taken.len() >= 9, "{} batches", taken.len());
        let mut all: Vec<u32> = taken.into_iter().flatten().chain(b.finish()).collect();
        all.sort_unstable();
        let want: Vec<u32> = (0..4)
            .flat_map(|t| (0..260).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(all, want);
    }
}
