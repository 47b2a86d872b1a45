//! The index of what matters for routing, and the per-agent FIFO queues.
//!
//! The notes on disk are the truth; this is a cache of them that a scan can
//! rebuild at any time. It keeps the version of every note (to tell real
//! changes from our own writes and from no-op events), the definitions, the
//! eligible inbound messages ordered per agent, and the problems found.
//! No I/O here: callers hand in note text.
//!
//! What it keeps does not grow with the vault's history: an answered
//! message, a reply, a thread note or an ordinary note is a 16-byte
//! version under a 64-bit key of its path, nothing more. Only the notes
//! that matter now (definitions, jobs, messages not yet answered, notes
//! with problems) are kept whole, and each thread's history is its last
//! [`THREAD_RECENT`] answered messages, for at most [`THREADS_KEPT`]
//! threads. [`Index::save`] and [`Index::restore`] carry the small records
//! across a restart (`cache`), so a start reads only the notes that changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

mod cache;
pub use cache::CacheError;

use crate::agent::{Definition, DefinitionError, Kind, parse_definition, valid_name};
use crate::job::{Job, parse_job};
use crate::note::{InboundMessage, Note, NoteKind, Status, has_conflict_markers};
use crate::vault::Version;

/// Order within one agent: `ts`, else modification time (ms), then path.
pub type OrderKey = (i64, String);

/// What the index keeps of an inbound message: its routing facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEntry {
    pub path: String,
    /// `agent`, else `channel`; `None` when neither is set.
    pub agent: Option<String>,
    pub status: Status,
    pub sender: Option<String>,
    pub order: OrderKey,
}

/// Does `sender` mark a note vaultrunner wrote itself (atomically), which
/// therefore needs no settle window?
pub fn written_by_vaultrunner(sender: Option<&str>) -> bool {
    match sender {
        Some("cli") => true,
        Some(s) => ["webhook:", "job:", "callback:", "agent:"]
            .iter()
            .any(|p| s.starts_with(p)),
        None => false,
    }
}

/// How many answered messages of one thread the index keeps, the newest:
/// the history a backend that rebuilds the conversation gets is at most
/// these (and at most its `history_budget` characters).
pub const THREAD_RECENT: usize = 500;

/// How many threads' recent messages the index keeps: past it, the thread
/// whose newest message is the oldest is forgotten (a multi-threaded agent
/// starts a thread per message, and none of those is ever resumed).
pub const THREADS_KEPT: usize = 10_000;

/// How many recent messages the index keeps over all threads (about 100
/// bytes each): past it, threads are forgotten as past [`THREADS_KEPT`].
pub const RECENT_KEPT: usize = 50_000;

/// The key of a note in the index's table of versions: a 64-bit hash of
/// its path (FNV-1a, the same on every run, so a saved index can be read
/// back). Two paths of one vault sharing a key cost only extra reads: each
/// then looks changed to the other.
pub fn path_key(path: &str) -> u64 {
    crate::note::fnv1a(path)
}

/// Hashes a [`path_key`] for the index's tables: the key is a hash of its
/// own, so it is only mixed for the table, not hashed again by SipHash
/// (the default, which was a few percent of a start's CPU).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A table under [`path_key`]s.
type KeyMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// What the index keeps of a note's [`Version`]: 16 bytes that tell it
/// changed (the time saturated to 64 bits, which reaches the year 2262).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    tag: u64,
    ns: i64,
}

impl Seen {
    fn of(v: Version) -> Seen {
        let ns = i64::try_from(v.modified_ns).unwrap_or(if v.modified_ns < 0 {
            i64::MIN
        } else {
            i64::MAX
        });
        Seen { tag: v.tag, ns }
    }
}

/// A thread's recent answered messages, oldest first, and the order of
/// its newest (which thread is forgotten first).
#[derive(Debug, Default)]
struct Recent {
    newest: i64,
    messages: BTreeSet<OrderKey>,
    /// Each message's order, by [`path_key`] (a message is in once).
    at: KeyMap<i64>,
}

/// What the index holds about one relevant note that matters now.
#[derive(Debug, Clone)]
enum Indexed {
    Definition,
    Inbound(MessageEntry),
    /// Not routable; the reason is in `problems`.
    Problem,
}

/// A problem found in a note, for `check`, `status` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub reason: String,
    /// Errors make `check` fail; warnings do not.
    pub is_error: bool,
}

/// What an update changed, so the engine knows whom to wake.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Change {
    pub definitions_changed: bool,
    pub jobs_changed: bool,
    pub queued: Vec<String>,
    /// Problems that are new (or changed) with this update, for the log:
    /// each is logged once, when the note is read or changes, not at every
    /// re-read.
    pub problems: Vec<Problem>,
}

impl Change {
    /// Adds what another update changed.
    pub fn merge(&mut self, other: Change) {
        self.definitions_changed |= other.definitions_changed;
        self.jobs_changed |= other.jobs_changed;
        self.queued.extend(other.queued);
        self.problems.extend(other.problems);
    }
}

/// The in-memory index of a vault.
#[derive(Debug)]
pub struct Index {
    /// The backends a definition may name (the backends' registry, given
    /// by whoever builds the index: this layer is below the backends).
    kinds: &'static [Kind],
    /// Every known note's version, by [`path_key`].
    versions: KeyMap<Seen>,
    /// The notes that matter now: definitions, messages not answered yet,
    /// notes with problems (an answered message is only a version).
    notes: HashMap<String, Indexed>,
    /// Definition notes by path (first by path wins per name).
    definitions: BTreeMap<String, Result<Arc<Definition>, DefinitionError>>,
    /// Agent name → winning definition.
    agents: BTreeMap<String, Arc<Definition>>,
    /// Eligible messages per agent name, in order.
    queues: BTreeMap<String, BTreeSet<(OrderKey, String)>>,
    /// Eligible messages by path → agent (to remove on change).
    queued_at: HashMap<String, String>,
    problems: BTreeMap<String, Problem>,
    /// Messages currently being run (not queued, not re-queued).
    in_flight: BTreeSet<String>,
    /// The recent answered messages per thread note path, in order (the
    /// history of backends that rebuild the conversation from the vault).
    /// A message that changed or went since is left here and passed over
    /// when its note is read ([`crate::turn::load_history`]).
    threads: HashMap<String, Recent>,
    /// The threads by the order of their newest message, oldest first.
    threads_by_age: BTreeSet<(i64, String)>,
    /// The recent messages over all threads.
    recent_total: usize,
    /// Bumped by every change to the index (a saved index is stale then).
    changes: u64,
    /// Job notes by path (valid ones; invalid ones are problems).
    jobs: BTreeMap<String, Arc<Job>>,
    /// The zone of jobs without `tz`.
    default_tz: Option<chrono_tz::Tz>,
    /// Bumped whenever a job is added, changed or removed.
    jobs_version: u64,
}

/// A note's text read as far as the index needs; pure, so a scan runs it
/// on the threads that read the notes.
#[derive(Debug)]
pub enum Parsed {
    /// No `agent/` anywhere: nothing vaultrunner routes.
    Ordinary,
    /// Has Git conflict markers.
    Conflicted,
    /// Looks like ours but cannot be parsed (why).
    Broken(String),
    Note(Note),
}

impl Parsed {
    pub fn of(text: &str) -> Parsed {
        if !may_be_relevant(text) {
            Parsed::Ordinary
        } else if has_conflict_markers(text) {
            Parsed::Conflicted
        } else {
            match Note::parse(text) {
                Ok(n) => Parsed::Note(n),
                Err(e) => Parsed::Broken(e.to_string()),
            }
        }
    }
}

/// Quick test: can this text be a note of any kind vaultrunner routes?
/// Every kind's tag starts with `agent/`, so a note without that string
/// (in any case) is ordinary and need not be parsed at all.
pub fn may_be_relevant(text: &str) -> bool {
    // Every `/`, found with memchr, then the five bytes before it: about
    // ten times faster than comparing at every position, and this runs on
    // every note of the vault.
    let b = text.as_bytes();
    memchr::memchr_iter(b'/', b).any(|i| {
        i.checked_sub(5)
            .and_then(|s| b.get(s..i))
            .is_some_and(|w| w.eq_ignore_ascii_case(b"agent"))
    })
}

impl Index {
    /// An empty index whose definitions may name the backends in `kinds`
    /// (`backend::KINDS`).
    pub fn new(kinds: &'static [Kind]) -> Self {
        Index {
            kinds,
            versions: KeyMap::default(),
            notes: HashMap::new(),
            definitions: BTreeMap::new(),
            agents: BTreeMap::new(),
            queues: BTreeMap::new(),
            queued_at: HashMap::new(),
            problems: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            threads: HashMap::new(),
            threads_by_age: BTreeSet::new(),
            recent_total: 0,
            changes: 0,
            jobs: BTreeMap::new(),
            default_tz: None,
            jobs_version: 0,
        }
    }

    /// Is `version` the one last seen (or written) of the note at `path`?
    pub fn seen(&self, path: &str, version: Version) -> bool {
        self.seen_key(path_key(path), version)
    }

    /// [`Index::seen`] by the note's [`path_key`].
    pub fn seen_key(&self, key: u64, version: Version) -> bool {
        self.versions.get(&key) == Some(&Seen::of(version))
    }

    /// Does the index know a note at `path`?
    pub fn knows(&self, path: &str) -> bool {
        self.versions.contains_key(&path_key(path))
    }

    /// Changes with every update and removal.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Number of notes known.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The notes kept whole (definitions, jobs, messages not answered,
    /// problems): every other note is only a version.
    fn whole_paths(&self) -> impl Iterator<Item = &String> {
        self.notes
            .keys()
            .chain(self.jobs.keys())
            .chain(self.problems.keys())
    }

    /// Forgets the notes a listing no longer has: `listed` says whether a
    /// [`path_key`] is one of the notes it found, `unknown` whether it
    /// could not see a path (an unreadable folder), and `complete` that it
    /// saw every folder. A note kept only as a version is forgotten only
    /// after a complete listing (its path is not known to ask `unknown`).
    /// Returns what changed and how many notes were forgotten.
    pub fn sweep(
        &mut self,
        listed: &dyn Fn(u64) -> bool,
        unknown: &dyn Fn(&str) -> bool,
        complete: bool,
    ) -> (Change, usize) {
        let gone: Vec<String> = self
            .whole_paths()
            .filter(|p| !listed(path_key(p)) && !unknown(p))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut change = Change::default();
        let mut removed = 0;
        for p in gone {
            if self.knows(&p) {
                removed += 1;
            }
            change.merge(self.remove(&p));
        }
        if complete {
            let whole: HashSet<u64> = self.whole_paths().map(|p| path_key(p)).collect();
            let before = self.versions.len();
            self.versions.retain(|k, _| listed(*k) || whole.contains(k));
            removed += before - self.versions.len();
            if before != self.versions.len() {
                self.changes += 1;
            }
        }
        (change, removed)
    }

    /// Forgets a note that is gone from disk.
    pub fn remove(&mut self, path: &str) -> Change {
        self.versions.remove(&path_key(path));
        self.unindex(path)
    }

    fn unindex(&mut self, path: &str) -> Change {
        let mut change = Change::default();
        self.changes += 1;
        self.problems.remove(path);
        if let Some(agent) = self.queued_at.remove(path)
            && let Some(q) = self.queues.get_mut(&agent)
        {
            q.retain(|(_, p)| p != path);
        }
        if self.jobs.remove(path).is_some() {
            self.jobs_version += 1;
            change.jobs_changed = true;
        }
        if let Some(Indexed::Definition) = self.notes.remove(path) {
            self.definitions.remove(path);
            change.problems.extend(self.rebuild_agents());
            change.definitions_changed = true;
        }
        change
    }

    /// Records a note that cannot be read for a reason that lasts until the
    /// note changes (a binary file, a note over the size limit): it is not
    /// read again while its version stays, and `check` and the log say
    /// why, once.
    pub fn unreadable(&mut self, path: &str, fp: Version, reason: &str) -> Change {
        let before = self.problems.get(path).cloned();
        self.versions.insert(path_key(path), Seen::of(fp));
        let mut change = self.unindex(path);
        self.problem(path, &format!("cannot be read: {reason} (ignored)"), false);
        change.problems.extend(self.new_problem(path, before));
        change
    }

    /// The problem a note has now, if it is not the one it had before.
    fn new_problem(&self, path: &str, before: Option<Problem>) -> Option<Problem> {
        self.problems
            .get(path)
            .filter(|p| Some(*p) != before.as_ref())
            .cloned()
    }

    /// Indexes a note's current text. `recovering` is true only during the
    /// start-up scan, when `working` messages are leftovers of a crash and
    /// are queued again.
    pub fn update(&mut self, path: &str, text: &str, fp: Version, recovering: bool) -> Change {
        self.update_parsed(path, Parsed::of(text), fp, recovering)
    }

    /// [`Index::update`] with the text already read as far as the index
    /// needs ([`Parsed::of`], which a scan runs on its readers' threads).
    pub fn update_parsed(
        &mut self,
        path: &str,
        parsed: Parsed,
        fp: Version,
        recovering: bool,
    ) -> Change {
        let before = self.problems.get(path).cloned();
        let mut change = self.update_quiet(path, parsed, fp, recovering);
        if let Some(p) = self.new_problem(path, before)
            && !change.problems.contains(&p)
        {
            change.problems.push(p);
        }
        change
    }

    /// [`Index::update_parsed`] without the comparison of problems.
    fn update_quiet(
        &mut self,
        path: &str,
        parsed: Parsed,
        fp: Version,
        recovering: bool,
    ) -> Change {
        self.versions.insert(path_key(path), Seen::of(fp));
        let mut change = self.unindex(path);
        let note = match parsed {
            Parsed::Ordinary => return change,
            Parsed::Conflicted => {
                self.problem(
                    path,
                    "has Git conflict markers; resolve the conflict first (not processed)",
                    true,
                );
                return change;
            }
            // Only a note that looks like ours is worth reporting.
            Parsed::Broken(e) => {
                self.problem(path, &format!("{e} (note skipped)"), true);
                return change;
            }
            Parsed::Note(n) => n,
        };
        match note.kind() {
            NoteKind::Definition => {
                let def = parse_definition(path, &note, self.kinds).map(Arc::new);
                if let Err(e) = &def {
                    self.problems.insert(
                        path.to_string(),
                        Problem {
                            path: path.to_string(),
                            reason: format!(
                                "definition disabled: field `{}`: {}",
                                e.field, e.reason
                            ),
                            is_error: true,
                        },
                    );
                }
                self.definitions.insert(path.to_string(), def);
                self.notes.insert(path.to_string(), Indexed::Definition);
                change.problems.extend(self.rebuild_agents());
                change.definitions_changed = true;
            }
            NoteKind::Inbound => {
                let inbound = InboundMessage::of(&note);
                let mut msg = entry_of(path, &inbound, fp);
                // A message left `working` by a crash was the head of its
                // agent's queue (one turn at a time per agent); our own
                // claim stamp changed its file time, so without a `ts` it
                // would fall to the back. It goes first again.
                if msg.status == Status::Working && recovering {
                    msg.order.0 = i64::MIN;
                }
                let eligible = match msg.status {
                    Status::Pending => true,
                    Status::Working => recovering,
                    Status::Unknown => {
                        self.problem(
                            path,
                            "unknown `status` (expected pending, draft, working, handled or error); left alone",
                            false,
                        );
                        false
                    }
                    _ => false,
                };
                if let Some(e) = check_paths(path) {
                    self.problem(path, &e, true);
                    self.notes.insert(path.to_string(), Indexed::Inbound(msg));
                    return change;
                }
                if let Some(e) = &inbound.unroutable {
                    self.problem(path, &format!("{e}; the message is left alone"), true);
                    self.notes.insert(path.to_string(), Indexed::Inbound(msg));
                    return change;
                }
                if let Some(e) = &inbound.invalid {
                    self.problem(
                        path,
                        &format!("{e}; the message is answered with an error"),
                        true,
                    );
                } else if let Some(ts) = &inbound.ts
                    && inbound.ts_ms.is_none()
                {
                    self.problem(
                        path,
                        &format!(
                            "field `ts`: {ts:?} is not an ISO-8601 time; ordered by file time"
                        ),
                        false,
                    );
                }
                if msg.status == Status::Handled
                    && let Some(t) = inbound.thread
                {
                    self.remember(t, msg.order.clone());
                }
                if eligible && !self.in_flight.contains(path) {
                    match &msg.agent {
                        None => self.problem(
                            path,
                            "inbound message without `agent` (or `channel`): nobody to route it to",
                            true,
                        ),
                        Some(agent) => {
                            if let Err(why) = crate::agent::check_name(agent) {
                                self.problem(
                                    path,
                                    &format!("field `agent`: {why}; the message is answered with an error"),
                                    true,
                                );
                            }
                            self.queues
                                .entry(agent.clone())
                                .or_default()
                                .insert((msg.order.clone(), path.to_string()));
                            self.queued_at.insert(path.to_string(), agent.clone());
                            change.queued.push(agent.clone());
                            if let Some(why) = self.waits_because(agent) {
                                change.problems.push(Problem {
                                    path: path.to_string(),
                                    reason: format!("waiting for agent {agent:?}: {why}"),
                                    is_error: false,
                                });
                            }
                        }
                    }
                }
                // An answered message is only its version (and maybe a
                // place in its thread's history), unless it has a problem.
                if !msg.status.is_done() {
                    self.notes.insert(path.to_string(), Indexed::Inbound(msg));
                }
            }
            NoteKind::Job => {
                let tz = *self.default_tz.get_or_insert_with(crate::job::host_tz);
                match parse_job(path, &note, tz) {
                    Ok(job) => {
                        self.jobs.insert(path.to_string(), Arc::new(job));
                        self.jobs_version += 1;
                        change.jobs_changed = true;
                    }
                    Err(e) => {
                        self.problem(
                            path,
                            &format!("job disabled: field `{}`: {}", e.field, e.reason),
                            true,
                        );
                        self.jobs_version += 1;
                        change.jobs_changed = true;
                    }
                }
            }
            _ => {}
        }
        change
    }

    /// The valid job notes.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<Job>> {
        self.jobs.values()
    }

    /// Changes whenever the set of jobs changes.
    pub fn jobs_version(&self) -> u64 {
        self.jobs_version
    }

    /// Sets the zone of jobs without `tz` (tests; default: the host's).
    pub fn set_default_tz(&mut self, tz: chrono_tz::Tz) {
        self.default_tz = Some(tz);
    }

    fn problem(&mut self, path: &str, reason: &str, is_error: bool) {
        self.problems.insert(
            path.to_string(),
            Problem {
                path: path.to_string(),
                reason: reason.to_string(),
                is_error,
            },
        );
        self.notes.insert(path.to_string(), Indexed::Problem);
    }

    /// Rebuilds the agent table from the definitions (first by path wins);
    /// returns the duplicate-definition problems that are new.
    fn rebuild_agents(&mut self) -> Vec<Problem> {
        let old: Vec<Problem> = self
            .problems
            .values()
            .filter(|p| p.reason.starts_with("duplicate definition"))
            .cloned()
            .collect();
        self.agents.clear();
        let mut dupes = Vec::new();
        for (path, def) in &self.definitions {
            if let Ok(def) = def {
                if let Some(first) = self.agents.get(&def.name) {
                    dupes.push((path.clone(), def.name.clone(), first.path.clone()));
                } else {
                    self.agents.insert(def.name.clone(), def.clone());
                }
            }
        }
        self.problems
            .retain(|_, p| !p.reason.starts_with("duplicate definition"));
        let mut new = Vec::new();
        for (path, name, first) in dupes {
            let p = Problem {
                path: path.clone(),
                reason: format!(
                    "duplicate definition of agent {name:?}: {first}.md comes first by path and wins; this one is ignored"
                ),
                is_error: true,
            };
            if !old.contains(&p) {
                new.push(p.clone());
            }
            self.problems.insert(path, p);
        }
        new
    }

    /// The winning definition of an agent.
    pub fn agent(&self, name: &str) -> Option<&Arc<Definition>> {
        self.agents.get(name)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.agents.values()
    }

    /// Can messages for this agent run now?
    pub fn runnable(&self, agent: &str) -> bool {
        self.agents.get(agent).is_some_and(|d| d.enabled) || !valid_name(agent)
    }

    /// Agents that have queued messages.
    pub fn queued_agents(&self) -> impl Iterator<Item = (&String, usize)> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(a, q)| (a, q.len()))
    }

    /// How many messages wait for this agent.
    pub fn queue_len(&self, agent: &str) -> usize {
        self.queues.get(agent).map_or(0, BTreeSet::len)
    }

    /// Takes the next message of an agent off its queue, marking it in
    /// flight.
    pub fn pop(&mut self, agent: &str) -> Option<String> {
        let q = self.queues.get_mut(agent)?;
        let first = q.pop_first()?;
        self.queued_at.remove(&first.1);
        self.in_flight.insert(first.1.clone());
        Some(first.1)
    }

    /// A turn for this message ended (or was abandoned).
    pub fn finish(&mut self, path: &str) {
        self.in_flight.remove(path);
    }

    /// Puts a message back at its place in its agent's queue (a turn that
    /// was cut short by shutdown, in `process`-until-quiet loops).
    pub fn requeue(&mut self, agent: &str, path: &str, order: OrderKey) {
        self.in_flight.remove(path);
        self.queues
            .entry(agent.to_string())
            .or_default()
            .insert((order, path.to_string()));
        self.queued_at.insert(path.to_string(), agent.to_string());
    }

    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.values()
    }

    /// Definitions that failed validation.
    pub fn broken_definitions(&self) -> impl Iterator<Item = &DefinitionError> {
        self.definitions.values().filter_map(|d| d.as_ref().err())
    }

    /// The broken definition an agent most likely has: one whose note is
    /// named after it (`Agents/<name>.md`), when no valid one names it.
    pub fn broken_definition_of(&self, name: &str) -> Option<&DefinitionError> {
        if self.agents.contains_key(name) {
            return None;
        }
        self.broken_definitions()
            .find(|e| e.path.rsplit('/').next() == Some(name))
    }

    /// Why messages for `agent` wait (no definition, or a disabled one),
    /// or `None` when they can run (or are answered with an error: an
    /// invalid name).
    fn waits_because(&self, agent: &str) -> Option<&'static str> {
        if !valid_name(agent) {
            return None;
        }
        match self.agents.get(agent) {
            None => Some("no definition for this agent (yet)"),
            Some(d) if !d.enabled => Some("agent is disabled"),
            Some(_) => None,
        }
    }

    /// Queued messages whose agent has no definition or is disabled.
    pub fn waiting(&self) -> Vec<(String, String, &'static str)> {
        let mut out = Vec::new();
        for (agent, q) in &self.queues {
            let Some(why) = self.waits_because(agent) else {
                continue;
            };
            for (_, p) in q {
                out.push((p.clone(), agent.clone(), why));
            }
        }
        out
    }

    /// Records an answered message in its thread's recent messages: once
    /// (a message answered again moves to its new place), at most
    /// [`THREAD_RECENT`] of them, in at most [`THREADS_KEPT`] threads.
    fn remember(&mut self, thread: String, order: OrderKey) {
        let recent = self.threads.entry(thread.clone()).or_default();
        let was = (!recent.messages.is_empty()).then_some(recent.newest);
        let before = recent.messages.len();
        if let Some(old) = recent.at.insert(path_key(&order.1), order.0)
            && old != order.0
        {
            recent.messages.remove(&(old, order.1.clone()));
        }
        recent.messages.insert(order);
        while recent.messages.len() > THREAD_RECENT {
            if let Some((_, p)) = recent.messages.pop_first() {
                recent.at.remove(&path_key(&p));
            }
        }
        self.recent_total = (self.recent_total + recent.messages.len()).saturating_sub(before);
        recent.newest = recent.messages.last().map_or(i64::MIN, |o| o.0);
        if was != Some(recent.newest) {
            if let Some(w) = was {
                self.threads_by_age.remove(&(w, thread.clone()));
            }
            self.threads_by_age.insert((recent.newest, thread));
        }
        while self.threads.len() > THREADS_KEPT || self.recent_total > RECENT_KEPT {
            let Some((_, oldest)) = self.threads_by_age.pop_first() else {
                break;
            };
            if let Some(r) = self.threads.remove(&oldest) {
                self.recent_total = self.recent_total.saturating_sub(r.messages.len());
            }
        }
    }

    /// The recent answered messages of a thread, oldest first (some may
    /// have changed or gone since: the reader checks each note).
    pub fn thread_history(&self, thread: &str) -> Vec<String> {
        self.threads
            .get(thread)
            .map(|r| r.messages.iter().map(|(_, p)| p.clone()).collect())
            .unwrap_or_default()
    }

    /// The inbound facts of an indexed message.
    pub fn inbound(&self, path: &str) -> Option<&MessageEntry> {
        match self.notes.get(path) {
            Some(Indexed::Inbound(m)) => Some(m),
            _ => None,
        }
    }

    /// A message from `sender` that is queued or being run, if any (the
    /// cron trigger's "previous fire still open" check).
    pub fn open_message_from(&self, sender: &str) -> Option<&String> {
        self.in_flight
            .iter()
            .chain(self.queued_at.keys())
            .find(|p| {
                self.inbound(p)
                    .is_some_and(|m| m.sender.as_deref() == Some(sender))
            })
    }
}

/// Why a message at `path` can never be answered where it is: its own path
/// or its reply's has characters (or a length) that vaultrunner refuses to
/// write, so it could be neither stamped nor replied to.
fn check_paths(path: &str) -> Option<String> {
    let refused = crate::vault::check_rel_path(path)
        .and_then(|()| crate::vault::check_rel_path(&crate::note::reply_path(path)))
        .err()?;
    Some(format!(
        "{refused}; rename the note so it can be answered (left alone)"
    ))
}

/// What the index keeps of an inbound note at `path`: its routing facts,
/// ordered by `ts`, else the note's modification time (ms), then path.
fn entry_of(path: &str, m: &InboundMessage, fp: Version) -> MessageEntry {
    let modified_ms = (fp.modified_ns / 1_000_000) as i64;
    MessageEntry {
        path: path.to_string(),
        agent: m.agent.clone(),
        status: m.status,
        sender: m.sender.clone(),
        order: (m.ts_ms.unwrap_or(modified_ms), path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing::KINDS;

    fn fp(ms: i128) -> Version {
        Version {
            tag: 1,
            modified_ns: ms * 1_000_000,
        }
    }

    const DEF: &str = "---\ntags: [agent/definition]\n---\n";

    fn msg(agent: &str, extra: &str) -> String {
        format!("---\ntags: [agent/message/inbound]\nagent: {agent}\n{extra}---\nhi\n")
    }

    #[test]
    fn order_is_ts_then_modified_then_path() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), false);
        ix.update("m/3", &msg("a", ""), fp(5_000), false);
        ix.update(
            "m/2",
            &msg("a", "ts: 2000-01-01T00:00:02Z\n"),
            fp(9_999_999_999_999),
            false,
        );
        ix.update(
            "m/1",
            &msg("a", "ts: \"2000-01-01T00:00:01Z\"\n"),
            fp(0),
            false,
        );
        ix.update("m/0", &msg("a", ""), fp(5_000), false);
        let order: Vec<_> = std::iter::from_fn(|| ix.pop("a")).collect();
        // modified 5 s after the epoch sorts before the year-2000 `ts` values;
        // equal times fall back to the path.
        assert_eq!(order, vec!["m/0", "m/3", "m/1", "m/2"]);
    }

    #[test]
    fn statuses_and_recovery() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), false);
        ix.update(
            "m/draft",
            &msg(
                "a",
                "status: draft
",
            ),
            fp(1),
            false,
        );
        ix.update(
            "m/done",
            &msg(
                "a",
                "status: handled
",
            ),
            fp(1),
            false,
        );
        ix.update(
            "m/err",
            &msg(
                "a",
                "status: error
",
            ),
            fp(1),
            false,
        );
        ix.update(
            "m/work",
            &msg(
                "a",
                "status: working
",
            ),
            fp(1),
            false,
        );
        assert_eq!(ix.queue_len("a"), 0);
        ix.update("m/work", &msg("a", "status: working\n"), fp(2), true);
        assert_eq!(ix.queue_len("a"), 1);
        ix.update("m/odd", &msg("a", "status: later\n"), fp(1), false);
        assert_eq!(ix.queue_len("a"), 1);
        assert!(ix.problems().any(|p| p.path == "m/odd" && !p.is_error));
    }

    #[test]
    fn a_recovered_message_keeps_its_place_at_the_front() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), true);
        ix.update("m/older", &msg("a", ""), fp(10), true);
        // Crashed mid-turn: its claim stamp gave it the newest file time.
        ix.update(
            "m/crashed",
            &msg("a", "status: working\nattempts: 1\n"),
            fp(99),
            true,
        );
        assert_eq!(ix.pop("a").as_deref(), Some("m/crashed"));
        assert_eq!(ix.pop("a").as_deref(), Some("m/older"));
    }

    #[test]
    fn in_flight_is_not_requeued_by_an_edit() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), false);
        ix.update("m/1", &msg("a", ""), fp(1), false);
        assert_eq!(ix.pop("a").as_deref(), Some("m/1"));
        ix.update("m/1", &msg("a", ""), fp(2), false);
        assert_eq!(ix.queue_len("a"), 0);
        ix.finish("m/1");
        ix.update("m/1", &msg("a", ""), fp(3), false);
        assert_eq!(ix.queue_len("a"), 1);
    }

    #[test]
    fn definitions_duplicates_broken_and_deleted() {
        let mut ix = Index::new(KINDS);
        ix.update(
            "Agents/b",
            "---\ntags: [agent/definition]\nname: x\n---\n",
            fp(0),
            false,
        );
        ix.update(
            "Agents/a",
            "---\ntags: [agent/definition]\nname: x\nbackend: echo\n---\n",
            fp(0),
            false,
        );
        assert_eq!(ix.agent("x").unwrap().path, "Agents/a");
        assert!(
            ix.problems()
                .any(|p| p.path == "Agents/b" && p.reason.contains("duplicate"))
        );
        ix.update(
            "Agents/c",
            "---\ntags: [agent/definition]\nbackend: nope\n---\n",
            fp(0),
            false,
        );
        assert!(ix.agent("c").is_none());
        assert_eq!(ix.broken_definitions().count(), 1);
        ix.remove("Agents/a");
        assert_eq!(ix.agent("x").unwrap().path, "Agents/b");
        assert!(!ix.problems().any(|p| p.reason.contains("duplicate")));
    }

    #[test]
    fn waiting_for_missing_or_disabled_agent() {
        let mut ix = Index::new(KINDS);
        ix.update("m/1", &msg("ghost", ""), fp(1), false);
        ix.update(
            "Agents/off",
            "---\ntags: [agent/definition]\nenabled: false\n---\n",
            fp(0),
            false,
        );
        ix.update("m/2", &msg("off", ""), fp(1), false);
        assert!(!ix.runnable("ghost"));
        assert!(!ix.runnable("off"));
        let w = ix.waiting();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn irrelevant_and_broken_notes() {
        let mut ix = Index::new(KINDS);
        let ch = ix.update(
            "plain",
            "---\ntitle: [broken\n---\njust a note",
            fp(1),
            false,
        );
        assert_eq!(ch, Change::default());
        assert_eq!(ix.problems().count(), 0);
        ix.update(
            "bad",
            "---\ntags: [agent/message/inbound\n---\n",
            fp(1),
            false,
        );
        let p: Vec<_> = ix.problems().collect();
        assert_eq!(p.len(), 1);
        assert!(p[0].reason.contains("invalid YAML"), "{}", p[0].reason);
        ix.update("conf", "---\ntags: [agent/message/inbound]\nagent: a\n---\n<<<<<<< HEAD\na\n=======\nb\n>>>>>>> x\n", fp(1), false);
        assert_eq!(ix.queue_len("a"), 0);
        assert!(
            ix.problems()
                .any(|p| p.path == "conf" && p.reason.contains("conflict"))
        );
    }

    fn answered(agent: &str, thread: &str, ts_s: u32) -> String {
        msg(
            agent,
            &format!(
                "status: handled\nthread: \"[[{thread}]]\"\nts: 2026-01-01T{:02}:{:02}:{:02}Z\n",
                ts_s / 3600,
                ts_s / 60 % 60,
                ts_s % 60
            ),
        )
    }

    #[test]
    fn an_answered_message_is_only_a_version_and_a_thread_keeps_its_newest() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), false);
        let n = THREAD_RECENT as u32 + 100;
        for i in 0..n {
            ix.update(
                &format!("m/{i:04}"),
                &answered("a", "Threads/a/a", i),
                fp(1),
                false,
            );
        }
        assert!(ix.knows("m/0000") && ix.seen("m/0000", fp(1)) && !ix.seen("m/0000", fp(2)));
        assert!(
            ix.inbound("m/0000").is_none(),
            "an answered message is not kept whole"
        );
        let h = ix.thread_history("Threads/a/a");
        assert_eq!(h.len(), THREAD_RECENT);
        assert_eq!(h.first().map(String::as_str), Some("m/0100"));
        assert_eq!(
            h.last().map(String::as_str),
            Some(format!("m/{:04}", n - 1).as_str())
        );
        // Answered again (set back to pending, run): once, at its new place.
        ix.update("m/0200", &answered("a", "Threads/a/a", n + 5), fp(3), false);
        let h = ix.thread_history("Threads/a/a");
        assert_eq!(h.iter().filter(|p| *p == "m/0200").count(), 1);
        assert_eq!(h.last().map(String::as_str), Some("m/0200"));
        // A pending message is kept whole.
        ix.update("m/new", &msg("a", ""), fp(4), false);
        assert!(ix.inbound("m/new").is_some());
    }

    #[test]
    fn past_the_cap_the_thread_with_the_oldest_newest_message_is_forgotten() {
        let mut ix = Index::new(KINDS);
        // Thread i's one message is at second i, but indexed newest first.
        for i in (0..=THREADS_KEPT as u32).rev() {
            ix.update(
                &format!("m/{i}"),
                &answered("a", &format!("T/{i}"), i),
                fp(1),
                false,
            );
        }
        assert!(ix.thread_history("T/0").is_empty(), "the oldest went");
        assert_eq!(ix.thread_history("T/1"), vec!["m/1"]);
        assert_eq!(ix.thread_history(&format!("T/{THREADS_KEPT}")).len(), 1);
    }

    #[test]
    fn a_sweep_forgets_versions_only_after_a_complete_listing() {
        let mut ix = Index::new(KINDS);
        ix.update("Agents/a", DEF, fp(0), false);
        ix.update("plain", "text", fp(1), false);
        ix.update("gone", "text", fp(1), false);
        ix.update("m/q", &msg("a", ""), fp(1), false);
        let listed: HashSet<u64> = ["Agents/a", "plain"].iter().map(|p| path_key(p)).collect();
        // An unreadable folder: the queued message under it stays, and so
        // does every note kept only as a version.
        let listed = |k| listed.contains(&k);
        let (_, removed) = ix.sweep(&listed, &|p| p.starts_with("m/"), false);
        assert_eq!(removed, 0);
        assert!(ix.knows("gone") && ix.queue_len("a") == 1);
        let (_, removed) = ix.sweep(&listed, &|_| false, true);
        assert_eq!(removed, 2);
        assert!(!ix.knows("gone") && !ix.knows("m/q") && ix.queue_len("a") == 0);
        assert!(ix.knows("plain") && ix.agent("a").is_some());
    }

    #[test]
    fn relevance_prefilter() {
        assert!(may_be_relevant("tags: [Agent/Job]"));
        assert!(may_be_relevant("#agent/message/inbound"));
        assert!(may_be_relevant("agent/"));
        assert!(!may_be_relevant("agents/ a/b gent/ agent"));
        assert!(!may_be_relevant(""));
        assert!(!may_be_relevant("/agent"));
    }

    #[test]
    fn vaultrunner_senders() {
        assert!(written_by_vaultrunner(Some("cli")));
        assert!(written_by_vaultrunner(Some("webhook:github")));
        assert!(written_by_vaultrunner(Some("job:Jobs/daily")));
        assert!(!written_by_vaultrunner(Some("alice")));
        assert!(!written_by_vaultrunner(None));
    }
}
