//! The engine: keeps the index of a vault, and dispatches queued messages to
//! turns — one at a time per agent, FIFO, up to `jobs` agents at once.
//!
//! Triggers (the watcher, later cron and HTTP) are producers: they put notes
//! on disk and tell the engine a path changed ([`Engine::note_changed`]);
//! the engine reads it, updates the index and wakes the dispatcher.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use crate::backend::AgentEvent;
use crate::queue::{Index, written_by_vaultrunner};
use crate::turn::{self, Outcome, TurnEnv};
use crate::vault::{Fingerprint, Vault, VaultError};

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

/// How often a turn whose notes could not be written is tried again.
const WRITE_RETRIES: u32 = 3;
const WRITE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

struct State {
    index: Index,
    /// Agents with a turn running.
    running: HashSet<String>,
    /// Round-robin start for fairness across agents.
    cursor: usize,
    /// Turns whose notes could not be written, by message path.
    write_failures: std::collections::HashMap<String, u32>,
    /// Notes the start-up scan left to the settle window: read with crash
    /// recovery when they are (a `working` one was cut short before).
    recover_later: HashSet<String>,
}

/// A vault being served or processed.
pub struct Engine {
    vault: Arc<Vault>,
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
    /// A weak handle on itself, for tasks spawned from `&self`.
    self_ref: std::sync::Weak<Engine>,
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
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *b {
                d.0[i] += 1;
            }
        }
        d.1 += secs;
        d.2 += 1;
    }

    pub fn snapshot(&self) -> MetricsInner {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a scan found (for logs).
#[derive(Debug, Default)]
pub struct ScanReport {
    pub notes: usize,
    pub changed: usize,
    pub removed: usize,
}

impl Engine {
    pub fn new(vault: Vault, config: Config) -> Arc<Engine> {
        let (events, _) = broadcast::channel(1024);
        let (finished, _) = broadcast::channel(4096);
        Arc::new_cyclic(|me| Engine {
            jobs_notify: Notify::new(),
            finished,
            metrics: Metrics::default(),
            self_ref: me.clone(),
            vault: Arc::new(vault),
            state: Mutex::new(State {
                index: Index::new(),
                running: HashSet::new(),
                cursor: 0,
                write_failures: Default::default(),
                recover_later: Default::default(),
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

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
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
        self.scan_deferring(recovering, None).0
    }

    /// A scan for `serve`: a changed note modified less than `settle` ago
    /// is not read but returned, for the watcher to read once it has been
    /// quiet — so a scan never reads a half-written note either.
    pub fn scan_settled(&self, settle: std::time::Duration) -> (ScanReport, Vec<String>) {
        self.scan_deferring(false, settle_cutoff(settle))
    }

    /// The start-up scan for `serve`: crash recovery, and like
    /// [`Engine::scan_settled`] a note modified less than `settle` ago is not
    /// read yet (it may be half-typed) but returned, for the watcher to
    /// read once it has been quiet — still with crash recovery, so a note
    /// left `working` by a crash just before is not stranded.
    pub fn scan_startup(&self, settle: std::time::Duration) -> (ScanReport, Vec<String>) {
        let (report, deferred) = self.scan_deferring(true, settle_cutoff(settle));
        self.lock().recover_later.extend(deferred.iter().cloned());
        (report, deferred)
    }

    fn scan_deferring(
        &self,
        recovering: bool,
        defer_after_ns: Option<i128>,
    ) -> (ScanReport, Vec<String>) {
        let listing = self.vault.list();
        for s in &listing.skipped {
            tracing::warn!("{}: {}", s.rel, s.reason);
        }
        let mut report = ScanReport {
            notes: listing.entries.len(),
            ..Default::default()
        };
        // Decide what to read without holding the lock during I/O.
        let (deferred, todo): (Vec<_>, Vec<_>) = {
            let st = self.lock();
            listing
                .entries
                .iter()
                .filter(|e| st.index.fingerprint(&e.path) != Some(e.fingerprint))
                .cloned()
                .partition(|e| defer_after_ns.is_some_and(|c| e.fingerprint.mtime_ns > c))
        };
        let read = read_parallel(&self.vault, &todo);
        let mut woke = false;
        let mut jobs = false;
        {
            let mut st = self.lock();
            for (path, got) in read {
                match got {
                    Ok((text, fp)) => {
                        // A note the start-up scan deferred is read with
                        // recovery, whichever scan or event reads it.
                        let rec = st.recover_later.remove(&path) || recovering;
                        let ch = st.index.update(&path, &text, fp, rec);
                        woke |= ch.definitions_changed || !ch.queued.is_empty();
                        jobs |= ch.jobs_changed;
                        report.changed += 1;
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            let present: HashSet<&str> = listing.entries.iter().map(|e| e.path.as_str()).collect();
            let gone: Vec<String> = st
                .index
                .paths()
                .filter(|p| !present.contains(p.as_str()))
                .cloned()
                .collect();
            for p in gone {
                let ch = st.index.remove(&p);
                woke |= ch.definitions_changed;
                jobs |= ch.jobs_changed;
                report.removed += 1;
            }
        }
        if woke {
            self.wake.notify_one();
        }
        if jobs {
            self.jobs_notify.notify_waiters();
        }
        (report, deferred.into_iter().map(|e| e.path).collect())
    }

    /// A note may have changed on disk (watcher event). Reads it if its
    /// fingerprint differs from the last one seen or written — so our own
    /// writes never trigger anything. Returns the note's sender if it is an
    /// inbound message, for the settle decision.
    pub fn note_changed(&self, path: &str) {
        let (known, recovering) = {
            let mut st = self.lock();
            (st.index.fingerprint(path), st.recover_later.remove(path))
        };
        match self.vault.stat(path) {
            None => {
                if known.is_some() {
                    let ch = self.lock().index.remove(path);
                    self.changed(&ch);
                }
            }
            Some(fp) if Some(fp) == known => {}
            Some(_) => match self.vault.read(path) {
                Ok((text, fp)) => {
                    let ch = self.lock().index.update(path, &text, fp, recovering);
                    self.changed(&ch);
                }
                Err(e) => tracing::warn!("{e}"),
            },
        }
    }

    fn changed(&self, ch: &crate::queue::Change) {
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
    pub fn write_note(&self, path: &str, text: &str) -> Result<Fingerprint, VaultError> {
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
    /// history, and the fingerprints make the watcher's events for them
    /// no-ops.
    pub fn index_written(&self, written: turn::Written) {
        let mut all = crate::queue::Change::default();
        {
            let mut st = self.lock();
            for (p, fp, text) in written {
                let ch = st.index.update(&p, &text, fp, false);
                all.definitions_changed |= ch.definitions_changed;
                all.jobs_changed |= ch.jobs_changed;
                all.queued.extend(ch.queued);
            }
        }
        self.changed(&all);
    }

    /// Reads a note afresh, whatever its fingerprint says.
    fn reindex(&self, path: &str) {
        match self.vault.read(path) {
            Ok((text, fp)) => {
                self.lock().index.update(path, &text, fp, false);
            }
            Err(_) => {
                self.lock().index.remove(path);
            }
        }
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
        written_by_vaultrunner(n.str("sender").as_deref())
    }

    /// Is the note on disk exactly what the index last saw or wrote (same
    /// size and modification time)? Then an event for it needs no read.
    pub fn unchanged(&self, path: &str) -> bool {
        let known = self.lock().index.fingerprint(path);
        known.is_some() && self.vault.stat(path) == known
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
            let agent = &agents[(start + i) % n];
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

    /// Runs turns of one agent in its slot: the message it was given, then,
    /// while [`Engine::take_next`] allows, the agent's next messages, each
    /// claimed in the end batch of the turn before it (pipelined turns).
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
            // Only the claude backend's delegation section needs the list.
            let agent_names: Vec<String> = if def.as_ref().is_some_and(|d| d.backend == "claude") {
                self.with_index(|ix| ix.agents().map(|d| d.name.clone()).collect())
            } else {
                Vec::new()
            };
            // What `next` took off the queue, whatever becomes of the turn.
            let taken: Arc<std::sync::Mutex<Option<NextMessage>>> = Default::default();
            let history_of = self.clone();
            let index_of = self.clone();
            let next_of = self.clone();
            let (next_agent, next_cancel, next_taken) =
                (agent.clone(), cancel.clone(), taken.clone());
            let env = TurnEnv {
                vault: self.vault.clone(),
                events: self.events.clone(),
                cancel: cancel.clone(),
                history: Box::new(move |t| history_of.with_index(|ix| ix.thread_history(t))),
                agents: agent_names,
                on_written: Box::new(move |w| index_of.index_written(w)),
                next: Some(Box::new(move || {
                    let next = next_of.take_next(&next_agent, chain_start, &next_cancel)?;
                    if let Ok(mut t) = next_taken.lock() {
                        *t = Some(next.clone());
                    }
                    Some(next)
                })),
            };
            let started = std::time::Instant::now();
            // The turn runs in a task of its own: should it panic, the
            // bookkeeping below still runs (the agent is freed and the
            // message is retried, then left for the next start).
            let p = path.clone();
            let c = claimed.take();
            let (res, next_claimed) =
                match tokio::spawn(async move { turn::run(&env, def, &p, c).await }).await {
                    Ok(r) => r,
                    Err(e) => (
                        Err(VaultError::Io {
                            path: self.vault.abs(&path),
                            source: std::io::Error::other(format!("the turn panicked: {e}")),
                        }),
                        None,
                    ),
                };
            if let Ok(Outcome::Done { ok, .. }) = &res {
                let secs = started.elapsed().as_secs_f64();
                self.metrics.record(&agent, *ok, secs);
                tracing::info!(
                    "{agent}: {path} → {} in {:.0} ms",
                    if *ok { "ok" } else { "error" },
                    secs * 1000.0
                );
            }
            let next = taken.lock().ok().and_then(|mut t| t.take());
            if next.is_none() {
                // The slot is free before the dispatcher is woken.
                permit.take();
            }
            self.turn_finished(&agent, &path, res, next.is_none());
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
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Some((path, def))
    }

    /// Bookkeeping for a message whose turn ended; `last` frees its agent
    /// for the dispatcher (the agent's turns are over for now).
    fn turn_finished(&self, agent: &str, path: &str, res: Result<Outcome, VaultError>, last: bool) {
        let mut reindex = false;
        {
            let mut st = self.lock();
            if last {
                st.running.remove(agent);
            }
            st.index.finish(path);
            match res {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Done { ok, external } => {
                            if ok {
                                self.stats.turns_ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.stats.turns_error.fetch_add(1, Ordering::Relaxed);
                            }
                            if external {
                                self.external_ran.store(true, Ordering::SeqCst);
                            }
                        }
                        Outcome::Skipped(why) => {
                            tracing::info!("{path}: not run: {why}");
                            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                            // Whatever the note is now, index it afresh so a
                            // message that is still eligible is not dropped.
                            reindex = true;
                        }
                        Outcome::Cancelled => tracing::info!("{path}: cut short by shutdown"),
                    }
                }
                Err(e) => {
                    // The note stays as it is on disk (pending or working).
                    // Try again a few times (a full disk may clear up); then
                    // leave it for the next start, which recovers it.
                    let tries = st.write_failures.entry(path.to_string()).or_insert(0);
                    *tries += 1;
                    if *tries <= WRITE_RETRIES {
                        tracing::error!(
                            "{path}: turn could not be recorded: {e}; retrying in {WRITE_RETRY_DELAY:?}"
                        );
                        let order = st.index.inbound(path).map(|m| m.order.clone());
                        let engine = self.self_ref.upgrade();
                        let (agent, path) = (agent.to_string(), path.to_string());
                        if let (Some(engine), Some(order)) = (engine, order) {
                            self.in_flight.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                tokio::time::sleep(WRITE_RETRY_DELAY).await;
                                engine.lock().index.requeue(&agent, &path, order);
                                engine.released();
                            });
                        }
                    } else {
                        tracing::error!(
                            "{path}: turn could not be recorded: {e}; giving up until the next start"
                        );
                        self.stats.stuck.fetch_add(1, Ordering::Relaxed);
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
        self.vault.clean_temp_files();
        self.scan(true);
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
                self.scan(false);
                continue;
            }
            break;
        }
    }
}

/// A note's text and fingerprint, or why it could not be read.
type ReadResult = Result<(String, Fingerprint), VaultError>;

/// Reads notes on a few threads (the 100,000-note vault must load fast).
fn read_parallel(vault: &Vault, entries: &[crate::vault::Entry]) -> Vec<(String, ReadResult)> {
    // Reading is mostly waiting for the disk when the vault is not in the
    // page cache: more reads in flight than cores pays off (measured: 100k
    // notes with their data evicted in 5.3 s with 2 threads, 2.28 s with
    // 16, 1.89 s with 64; the same 0.8 s warm). At least 32 notes a thread.
    let threads = (entries.len() / 32).clamp(1, 64);
    if threads == 1 {
        return entries
            .iter()
            .map(|e| (e.path.clone(), read_relevant(vault, &e.path)))
            .collect();
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|e| (e.path.clone(), read_relevant(vault, &e.path)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Reads a note; an ordinary note (no `agent/` anywhere) is returned empty,
/// so a huge vault of ordinary notes costs little memory.
fn read_relevant(vault: &Vault, path: &str) -> ReadResult {
    let (text, fp) = vault.read(path)?;
    if crate::queue::may_be_relevant(&text) {
        Ok((text, fp))
    } else {
        Ok((String::new(), fp))
    }
}
