//! The turn pipeline of SPEC §3, for one inbound message:
//!
//! 1. stamp the inbound `status: working`, `attempts` + 1;
//! 2. upsert the thread note `status: working`;
//!    (1 and 2 are one durable write batch)
//! 3. run the backend;
//! 4. thread end record; 5. the outbound note; 6. the `reply_to`
//!    callback; 7. stamp the inbound `handled|error` (4 to 7 are one durable
//!    write batch, renamed in that order with a barrier before the stamp,
//!    so the inbound is never `handled` without its reply on disk).
//!
//! This file is the pipeline (the I/O and its order); the pure parts are
//! beside it: `paths` (where the thread is), `render` (the notes a turn
//! writes), `request` (what the backend is given), `history` (the
//! conversation rebuilt from the vault).

pub mod attachments;
mod history;
mod paths;
mod render;
mod request;

pub use crate::note::{derived_path, fnv1a, reply_path};
pub use history::{DEFAULT_HISTORY_BUDGET, HistoryOf, load_history};
pub use paths::thread_path;
pub use render::{
    CallbackTo, callback_for, callback_write, delegation_section, failure_body, now_rfc3339,
};
pub use request::vaultrunner_bin;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::agent::Definition;
use crate::backend::{self, AgentEvent, EventSink, TurnError, TurnEvent, TurnOutput, Usage};
use crate::note::{
    FmValue, InboundMessage, Note, NoteKind, Status, ThreadNote, edit_front_matter, link,
};
use crate::vault::{Base, NoteWrite, Plan, Vault, VaultError, Version};

use render::{new_thread, outbound_text, thread_fields};
use request::build_request;

/// A batch that ends with the inbound's stamp: everything before it (the
/// thread record, the reply, the callback) is durable before the inbound
/// says `handled`/`error`, on any file system.
fn stamp_last(writes: &[NoteWrite]) -> Plan {
    Plan {
        barrier: Some(writes.len().saturating_sub(1)),
        sync_dirs: true,
    }
}

/// The claim (`working`, `attempts`): each file is old or new after a crash,
/// never torn, but the renames need not survive a power loss — a lost claim
/// only means the message runs again from `pending`. That saves the
/// directory flushes on the way in.
const CLAIM: Plan = Plan {
    barrier: None,
    sync_dirs: false,
};

/// Attempts after which a message is given up (a 4th start is refused).
pub const MAX_ATTEMPTS: u64 = 3;

/// Inbound notes at this delegation depth or deeper are not run.
pub const MAX_DELEGATION_DEPTH: u64 = 8;

/// What became of a message handed to [`run`].
#[derive(Debug)]
pub enum Outcome {
    /// The note was no longer eligible (edited, deleted, already handled).
    Skipped(String),
    /// Ended with a reply note: `ok` or `error`.
    Done {
        ok: bool,
        /// Did the backend run programs that may have written notes?
        external: bool,
        /// What the engine keeps of it (the status page's recent turns).
        summary: Summary,
    },
    /// Cut short by shutdown; the inbound was put back to `pending`.
    Cancelled,
    /// The turn ran, but its end (thread record, reply, callback, stamp)
    /// could not be written: the message stays `working`, unanswered.
    /// [`record`] writes the end again later, without running the backend
    /// again.
    Unrecorded {
        pending: Box<Unrecorded>,
        error: VaultError,
    },
}

/// What a turn that ended leaves for the engine's record of recent turns
/// (the status page, issue 12).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// The thread note, when the message got one.
    pub thread: Option<String>,
    pub usage: Usage,
    /// Why it failed, for an `error` reply.
    pub error: Option<String>,
}

/// A turn that ran and whose end is not written yet.
#[derive(Debug)]
pub struct Unrecorded {
    path: String,
    def: Arc<Definition>,
    thread: String,
    result: Result<TurnOutput, TurnError>,
    callback: Option<CallbackTo>,
    external: bool,
    /// The lines the reply gains for attachments the turn ran without.
    attachments_note: String,
    /// The end's time, the same on every try.
    now: String,
    /// Notes of the end already in place from an earlier try (the thread
    /// record, the reply, the callback): not written again, so a retry
    /// never counts the turn twice or rewrites a callback that may have
    /// run already.
    landed: Vec<String>,
}

impl Unrecorded {
    fn summary(&self) -> Summary {
        Summary {
            thread: Some(self.thread.clone()),
            usage: self.result.as_ref().map(|o| o.usage).unwrap_or_default(),
            error: self.result.as_ref().err().map(ToString::to_string),
        }
    }
}

/// What became of a turn's end batch (a return value, moved once: the
/// size of a claimed next message in one variant costs nothing).
#[allow(clippy::large_enum_variant)]
enum Ended {
    /// The message is stamped: its reply is on disk. The agent's next
    /// message comes back claimed when its claim landed too.
    Recorded(Written, Option<Claimed>),
    /// The message was deleted during its turn: its thread was closed,
    /// nothing else written.
    Deleted(Written),
    /// The stamp is not in place: try again later. The notes of the batch
    /// that did land are returned for the index.
    Failed(Box<Unrecorded>, Written, VaultError),
    /// The writer panicked and the turn's result is gone with it: the
    /// message is left as it is on disk (`working`), to be run again.
    Lost(VaultError),
}

/// Writes the end of a turn whose end batch failed before (see
/// [`Outcome::Unrecorded`]).
pub async fn record(env: &TurnEnv, pending: Box<Unrecorded>) -> Result<Outcome, VaultError> {
    let (ok, external) = (pending.result.is_ok(), pending.external);
    let summary = pending.summary();
    let path = pending.path.clone();
    Ok(match end_batch(env, pending, None).await {
        Ended::Recorded(w, _) => {
            (env.on_written)(w);
            env.recorded(&path);
            Outcome::Done {
                ok,
                external,
                summary,
            }
        }
        Ended::Deleted(w) => {
            (env.on_written)(w);
            env.recorded(&path);
            Outcome::Skipped(DELETED_MID_TURN.into())
        }
        Ended::Failed(pending, w, error) => {
            (env.on_written)(w);
            Outcome::Unrecorded { pending, error }
        }
        Ended::Lost(e) => return Err(e),
    })
}

/// Notes written by a turn, with their versions (for the index).
/// Each with its content, so the engine can index what the turn wrote (a
/// callback is a new message to queue; a stamped inbound joins its thread's
/// history) without reading it back.
pub type Written = Vec<(String, Version, String)>;

/// Looks up the answered messages of a thread.
pub type HistoryFn = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Everything a turn needs from the engine.
pub struct TurnEnv {
    pub vault: Arc<dyn Vault>,
    pub events: tokio::sync::broadcast::Sender<AgentEvent>,
    pub cancel: CancellationToken,
    /// The answered messages of a thread, oldest first (from the index).
    pub history: HistoryFn,
    /// The names of the agents defined now (for the delegation section).
    pub agents: Vec<String>,
    /// Called with each batch of notes the turn wrote, once it is durable
    /// (the engine indexes them: a callback is queued at once, our own
    /// writes are recognised by the watcher).
    pub on_written: WrittenFn,
    /// Asked once a turn's reply is ready: the agent's next message (taken
    /// off its queue) and its definition, when the engine lets the agent
    /// keep its slot. The turn claims it in its own end batch — one flush
    /// and one write of the thread note instead of two — and hands it back
    /// from [`run`] as [`Claimed`].
    pub next: Option<NextFn>,
    /// Where step 3 runs when it is not this process: a cluster's workers
    /// (SPEC §8, `cluster::Node`). `None` runs the backend here.
    pub remote: Option<Arc<dyn Remote>>,
}

impl TurnEnv {
    /// Tells the [`Remote`], if any, that `path`'s end is durable.
    fn recorded(&self, path: &str) {
        if let Some(r) = &self.remote {
            r.recorded(path);
        }
    }
}

/// Runs turns somewhere else (a cluster's workers): the vault node still
/// claims and records every turn; only the backend run (step 3) is handed
/// over.
pub trait Remote: Send + Sync {
    /// Runs the claimed message's turn and returns its result. Waits as
    /// long as it takes (no worker may be up yet); `cancel` is shutdown,
    /// which leaves the turn running where it is.
    fn run(
        &self,
        turn: RemoteTurn,
        events: EventSink,
        cancel: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TurnOutput, TurnError>> + Send>>;

    /// The message's end batch is durable (or the message was deleted):
    /// its result can be let go.
    fn recorded(&self, path: &str);
}

/// A claimed message whose backend run is handed to a [`Remote`].
pub struct RemoteTurn {
    pub path: String,
    /// The attempt the claim counted (the inbound's `attempts`).
    pub attempt: u64,
    pub request: backend::TurnRequest,
}

/// Receives the notes a turn wrote.
pub type WrittenFn = Box<dyn Fn(Written) + Send + Sync>;

/// Takes an agent's next message for a pipelined turn (see [`TurnEnv::next`]).
pub type NextFn = Box<dyn Fn() -> Option<(String, Arc<Definition>)> + Send + Sync>;

/// A message a turn runs: its text (to stamp), its note (the body is the
/// message) and its keys.
struct Inbound {
    text: String,
    /// The version `text` was read at: the base of the claim and stamp.
    version: Version,
    note: Note,
    msg: InboundMessage,
    /// `agent` (or `channel`), present: a message without one is not run.
    agent: String,
    /// Starts so far: counted only while the message is `working` (a
    /// message someone set back to `pending` — a deliberate re-run —
    /// starts counting afresh), so it bounds crash loops.
    attempts: u64,
    /// The delegation depth, or why the message is answered with an error
    /// without running (a key of the wrong type, a depth that is no number).
    depth: Result<u64, String>,
}

fn read_inbound(vault: &dyn Vault, path: &str) -> Result<Result<Inbound, String>, VaultError> {
    let (text, version) = match vault.read(path) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => {
            return Ok(Err("note was deleted".into()));
        }
        Err(e) => return Err(e),
    };
    let note = match Note::parse(&text) {
        Ok(n) => n,
        Err(e) => return Ok(Err(format!("{e}"))),
    };
    if note.kind() != NoteKind::Inbound {
        return Ok(Err("no longer an inbound message".into()));
    }
    let msg = InboundMessage::of(&note);
    if !matches!(msg.status, Status::Pending | Status::Working) {
        return Ok(Err(format!("status is now {:?}", msg.status)));
    }
    let Some(agent) = msg.agent.clone() else {
        return Ok(Err("no `agent`".into()));
    };
    let attempts = if msg.status == Status::Working {
        msg.attempts
    } else {
        0
    };
    let depth = msg.runnable_depth();
    Ok(Ok(Inbound {
        text,
        version,
        note,
        msg,
        agent,
        attempts,
        depth,
    }))
}

fn zip_written(writes: &[NoteWrite], fps: Vec<Version>) -> Written {
    writes
        .iter()
        .zip(fps)
        .map(|(w, fp)| (w.path.clone(), fp, w.content.clone()))
        .collect()
}

/// Ends an inbound as `error` without running a turn (invalid agent name,
/// attempts used up, delegation too deep): a failure reply, then the stamp.
fn fail_without_turn(
    vault: &dyn Vault,
    path: &str,
    (inbound_text, inbound_version): (&str, Version),
    agent: &str,
    thread: Option<&str>,
    reason: &str,
    callback: Option<&CallbackTo>,
) -> Result<Written, VaultError> {
    let reply = reply_path(path);
    let mut writes = Vec::new();
    // A thread left `working` by a crashed turn is closed as `error`.
    if let Some(t) = thread
        && let Ok((ttext, tv)) = vault.read(t)
        && let Ok(tn) = Note::parse(&ttext)
        && ThreadNote::of(&tn.meta).status.as_deref() == Some("working")
        && let Ok((edited, _)) = edit_front_matter(
            &ttext,
            &[
                ("status", "error".into()),
                ("last_turn_at", now_rfc3339().into()),
            ],
        )
    {
        writes.push(NoteWrite::update(t, edited, tv));
    }
    writes.push(NoteWrite::any(
        &reply,
        &outbound_text(agent, path, thread, false, &failure_body(reason)),
    ));
    if let Some(cb) = callback {
        writes.push(callback_write(cb, path, agent, false, thread, &reply));
    }
    let mut stamp: Vec<(&str, FmValue)> = vec![
        ("status", "error".into()),
        ("handled_at", now_rfc3339().into()),
        ("reply", link(&reply).into()),
        ("error", reason.into()),
    ];
    if let Some(t) = thread {
        stamp.push(("thread", link(t).into()));
    }
    let (edited, _) = edit_front_matter(inbound_text, &stamp).map_err(|e| VaultError::Edit {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    writes.push(NoteWrite::update(path, edited, inbound_version));
    let fps = vault.write_planned(&writes, stamp_last(&writes))?;
    Ok(zip_written(&writes, fps))
}

/// A message whose claim (steps 1 and 2) the previous turn of its agent
/// already wrote, in that turn's end batch (see [`TurnEnv::next`]).
pub struct Claimed {
    path: String,
    prepared: Prepared,
}

impl Claimed {
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A message ready for step 3: claimed, with its thread as it was.
struct Prepared {
    def: Arc<Definition>,
    inbound: Inbound,
    depth: u64,
    thread: String,
    /// The thread note's keys as they were before the claim.
    thread_note: ThreadNote,
    thread_body: String,
}

/// Runs one turn for the inbound note at `path`, for agent `def` (the
/// engine found it runnable), or for a message the agent's previous turn
/// already claimed. Returns what became of it, and the agent's next
/// message if this turn claimed it too; every batch of notes it writes is
/// handed to `env.on_written` as soon as it is durable.
pub async fn run(
    env: &TurnEnv,
    def: Option<Arc<Definition>>,
    path: &str,
    claimed: Option<Claimed>,
) -> (Result<Outcome, VaultError>, Option<Claimed>) {
    let prepared = match claimed {
        Some(c) if c.path == path => c.prepared,
        _ => match prepare(env, def, path).await {
            Ok(Ok(p)) => p,
            Ok(Err(outcome)) => return (Ok(outcome), None),
            Err(e) => return (Err(e), None),
        },
    };
    run_prepared(env, path, prepared).await
}

/// Reads and checks a message, ends it without a turn if it cannot run,
/// and otherwise claims it (steps 1 and 2, one durable batch).
async fn prepare(
    env: &TurnEnv,
    def: Option<Arc<Definition>>,
    path: &str,
) -> Result<Result<Prepared, Outcome>, VaultError> {
    let vault = env.vault.clone();
    let p = path.to_string();
    let inbound = tokio::task::spawn_blocking(move || read_inbound(&*vault, &p))
        .await
        .map_err(VaultError::join)??;
    let inbound = match inbound {
        Ok(i) => i,
        Err(why) => return Ok(Err(Outcome::Skipped(why))),
    };
    let fail =
        |thread: Option<String>, reason: String, inbound: Inbound, callback: Option<CallbackTo>| {
            let vault = env.vault.clone();
            let path = path.to_string();
            let message_path = path.clone();
            let events = env.events.clone();
            let summary = Summary {
                thread: thread.clone(),
                usage: Usage::default(),
                error: Some(reason.clone()),
            };
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    fail_without_turn(
                        &*vault,
                        &path,
                        (&inbound.text, inbound.version),
                        &inbound.agent,
                        thread.as_deref(),
                        &reason,
                        callback.as_ref(),
                    )
                    .map(|w| (w, reason, inbound.agent))
                })
                .await
                .map_err(VaultError::join)??;
                let (written, reason, agent) = written;
                (env.on_written)(written);
                let _ = events.send(AgentEvent {
                    agent,
                    thread: String::new(),
                    message: message_path,
                    event: TurnEvent::Error { message: reason },
                    ms: Some(0),
                });
                Ok(Err(Outcome::Done {
                    ok: false,
                    external: false,
                    summary,
                }))
            }
        };
    if let Err(why) = crate::agent::check_name(&inbound.agent) {
        let reason = format!("field `agent`: {why}");
        let cb = inbound
            .depth
            .as_ref()
            .ok()
            .and_then(|d| callback_for(&inbound.msg, *d));
        return fail(None, reason, inbound, cb).await;
    }
    let Some(def) = def else {
        return Ok(Err(Outcome::Skipped("no definition".into())));
    };
    let depth = match &inbound.depth {
        Ok(d) => *d,
        Err(e) => return fail(None, e.clone(), inbound, None).await,
    };
    if depth >= MAX_DELEGATION_DEPTH {
        let reason = format!(
            "not run: delegation depth {depth} reached the limit of {MAX_DELEGATION_DEPTH} (agents handing work to each other stop here, so a loop cannot run forever)"
        );
        // No callback follows a message at the limit.
        return fail(None, reason, inbound, None).await;
    }
    let thread = thread_path(&def, inbound.msg.subject.as_deref(), path);
    if inbound.attempts >= MAX_ATTEMPTS {
        let reason = format!(
            "gave up after {} attempts: each one was interrupted before it finished (crash or kill); send the message again to retry",
            inbound.attempts
        );
        let cb = callback_for(&inbound.msg, depth);
        return fail(Some(thread), reason, inbound, cb).await;
    }

    // Steps 1 + 2: claim the message durably before running anything.
    let (thread_note, thread_body, written) =
        start_batch(env, &def, path, &thread, &inbound).await?;
    (env.on_written)(written);
    Ok(Ok(Prepared {
        def,
        inbound,
        depth,
        thread,
        thread_note,
        thread_body,
    }))
}

/// Steps 3 to 7 for a claimed message.
async fn run_prepared(
    env: &TurnEnv,
    path: &str,
    prepared: Prepared,
) -> (Result<Outcome, VaultError>, Option<Claimed>) {
    let Prepared {
        def,
        inbound,
        depth,
        thread,
        thread_note,
        thread_body,
    } = prepared;
    // Step 3: run the backend.
    let resume = match (def.mode, inbound.msg.subject.is_some()) {
        (crate::agent::Mode::SingleThreaded, _) | (_, true) => thread_note.session.clone(),
        _ => None,
    };
    // The engine's `turn` span (tracing) learns the thread here.
    tracing::Span::current().record("thread", tracing::field::display(&thread));
    let events = EventSink::new(env.events.clone(), &def.name, &thread, path);
    let mut attachments_note = String::new();
    let (result, external) = match backend::for_definition(&def) {
        Ok(b) => {
            let mut req = build_request(
                env,
                &def,
                path,
                &thread,
                (&inbound.note.body, inbound.msg.sender.as_deref()),
                &thread_body,
                resume,
                depth,
                b.wants_context_header(),
            );
            // The files the message embeds, links or lists, for this
            // message only (the history carries none).
            if attachments::may_have(&inbound.note.meta, &inbound.note.body) {
                let vault = env.vault.clone();
                let (note, meta, body) = (
                    path.to_string(),
                    inbound.note.meta.clone(),
                    inbound.note.body.clone(),
                );
                let (takes, backend_name) = (b.takes(), def.backend.clone());
                let gathered = match tokio::task::spawn_blocking(move || {
                    attachments::gather(&*vault, &note, &meta, &body, takes, &backend_name)
                })
                .await
                {
                    Ok(g) => g,
                    Err(e) => return (Err(VaultError::join(e)), None),
                };
                let mut gathered = gathered;
                if env.remote.is_some() {
                    // A worker has no vault to read them from (docs/cluster.md).
                    for a in std::mem::take(&mut gathered.attachments) {
                        gathered.left.push(attachments::Left {
                            link: a.name,
                            reason: "attachments are not sent to cluster workers".into(),
                        });
                    }
                }
                for l in &gathered.left {
                    tracing::info!("{path}: attachment {} left out: {}", l.link, l.reason);
                }
                attachments_note = attachments::reply_note(&gathered.left);
                attachments::apply(&mut req, gathered);
            }
            if b.wants_history() {
                // The vault is the session store: earlier exchanges of this
                // thread (since its `reset_at`), oldest first.
                let paths = (env.history)(&thread);
                let reset_at = thread_note.reset_at.clone();
                let budget = def.history_budget.unwrap_or(DEFAULT_HISTORY_BUDGET);
                let vault = env.vault.clone();
                let (current, of) = (path.to_string(), thread.clone());
                req.history = match tokio::task::spawn_blocking(move || {
                    let at = HistoryOf {
                        thread: &of,
                        current: &current,
                        reset_at: reset_at.as_deref(),
                    };
                    load_history(&*vault, &paths, &at, budget)
                })
                .await
                {
                    Ok(h) => h,
                    Err(e) => return (Err(VaultError::join(e)), None),
                };
            }
            let external = b.runs_external_programs();
            let r = if let Some(remote) = &env.remote {
                // On a worker, whose deadline starts when it starts the
                // turn: the request may wait for a worker first.
                let turn = RemoteTurn {
                    path: path.to_string(),
                    attempt: inbound.attempts + 1,
                    request: req,
                };
                remote.run(turn, events.clone(), env.cancel.clone()).await
            } else {
                let grace = backend::process::KILL_GRACE.saturating_add(Duration::from_secs(5));
                let policy = backend::RetryPolicy::for_definition(&def);
                let run = backend::run_with_retries(b.as_ref(), &req, &events, &env.cancel, policy);
                // A safety net only: backends stop at the deadline themselves.
                match tokio::time::timeout_at(crate::time::later(req.deadline, grace), run).await {
                    Ok(r) => r,
                    Err(_) => Err(TurnError::Timeout(req.timeout)),
                }
            };
            (r, external)
        }
        Err(e) => (Err(e), false),
    };
    // A program killed by the same SIGTERM that is stopping us (systemd
    // signals the whole cgroup) failed because of the shutdown: hand the
    // message back rather than answering it with an error.
    let result = match result {
        Err(_) if env.cancel.is_cancelled() => Err(TurnError::Cancelled),
        r => r,
    };
    if matches!(result, Err(TurnError::Cancelled)) && env.remote.is_some() {
        // Shutdown of a cluster's vault node: the turn goes on on its
        // worker; the message stays `working`, and the next start recovers
        // it (and adopts the result if it is in by then).
        return (Ok(Outcome::Cancelled), None);
    }
    if matches!(result, Err(TurnError::Cancelled)) {
        // Shutdown: hand the message back as it was, so the next start runs
        // it without counting this cut-short attempt.
        let before = thread_note.status.clone();
        let w = match release(env, path, inbound.attempts, &thread, before).await {
            Ok(w) => w,
            Err(e) => return (Err(e), None),
        };
        (env.on_written)(w);
        events.emit(TurnEvent::Error {
            message: TurnError::Cancelled.to_string(),
        });
        return (Ok(Outcome::Cancelled), None);
    }
    let ok = result.is_ok();
    match &result {
        Ok(out) => events.emit(TurnEvent::Done {
            reply: out.reply.clone(),
        }),
        Err(e) => events.emit(TurnEvent::Error {
            message: e.to_string(),
        }),
    }
    let callback = callback_for(&inbound.msg, depth);
    // The agent's next message, if the engine lets it keep its slot: its
    // claim goes into this turn's end batch.
    let next = if env.cancel.is_cancelled() {
        None
    } else {
        env.next.as_ref().and_then(|f| f())
    };
    let pending = Box::new(Unrecorded {
        path: path.to_string(),
        def,
        thread,
        result,
        callback,
        external,
        attachments_note,
        now: now_rfc3339(),
        landed: Vec::new(),
    });
    let summary = pending.summary();
    match end_batch(env, pending, next).await {
        Ended::Recorded(end, claimed) => {
            (env.on_written)(end);
            env.recorded(path);
            (
                Ok(Outcome::Done {
                    ok,
                    external,
                    summary,
                }),
                claimed,
            )
        }
        Ended::Deleted(end) => {
            (env.on_written)(end);
            env.recorded(path);
            (Ok(Outcome::Skipped(DELETED_MID_TURN.into())), None)
        }
        Ended::Failed(pending, end, error) => {
            (env.on_written)(end);
            (Ok(Outcome::Unrecorded { pending, error }), None)
        }
        Ended::Lost(e) => (Err(e), None),
    }
}

/// Why a message that was deleted during its turn has no reply.
const DELETED_MID_TURN: &str =
    "the message was deleted during its turn: its thread is closed, no reply is written";

/// Steps 1 and 2 in one durable batch. Returns the thread's metadata and
/// body as they were, and what was written.
async fn start_batch(
    env: &TurnEnv,
    def: &Arc<Definition>,
    path: &str,
    thread: &str,
    inbound: &Inbound,
) -> Result<(ThreadNote, String, Written), VaultError> {
    let vault = env.vault.clone();
    let def = def.clone();
    let path = path.to_string();
    let thread = thread.to_string();
    let text = inbound.text.clone();
    let version = inbound.version;
    let attempts = inbound.attempts;
    tokio::task::spawn_blocking(move || {
        let (msg, thread_write, meta, body) = claim_writes(
            &*vault,
            &def,
            &path,
            &thread,
            (&text, version),
            attempts,
            None,
        )?;
        let writes = vec![msg, thread_write];
        let fps = vault.write_planned(&writes, CLAIM)?;
        Ok((meta, body, zip_written(&writes, fps)))
    })
    .await
    .map_err(VaultError::join)?
}

/// The writes of a claim (steps 1 and 2): the inbound stamped `working`
/// with its attempt counted, and its thread note upserted `working`.
/// `base` is the thread note's text when the caller is about to write it
/// (a pipelined turn's end record, whose write keeps its own base);
/// otherwise it is read from the vault, and the write expects it unchanged.
/// Returns the two writes and the thread's metadata and body as they were.
fn claim_writes(
    vault: &dyn Vault,
    def: &Definition,
    path: &str,
    thread: &str,
    (inbound_text, inbound_version): (&str, Version),
    attempts: u64,
    base: Option<&str>,
) -> Result<(NoteWrite, NoteWrite, ThreadNote, String), VaultError> {
    let (stamped, _) = edit_front_matter(
        inbound_text,
        &[
            ("status", "working".into()),
            ("attempts", (attempts + 1).into()),
            ("thread", link(thread).into()),
        ],
    )
    .map_err(|e| VaultError::Edit {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    let (current, thread_base) = match base {
        Some(t) => (Some(t.to_string()), Base::Any),
        None => match vault.read(thread) {
            Ok((t, v)) => (Some(t), Base::Read(v)),
            Err(_) => (None, Base::Any),
        },
    };
    let (thread_text, meta, body) = match current {
        Some(t) => match Note::parse(&t) {
            Ok(n) => {
                let fields = thread_fields(def, "working");
                let edits: Vec<(&str, FmValue)> =
                    fields.iter().map(|(k, v)| (*k, v.clone())).collect();
                let edited = edit_front_matter(&t, &edits)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|_| new_thread(def));
                (edited, ThreadNote::of(&n.meta), n.body)
            }
            // A thread note whose YAML the user broke: start it again
            // rather than wedging the agent; its body is kept.
            Err(_) => {
                let body = crate::note::split(&t).body.to_string();
                (
                    format!("{}{}", new_thread(def), body),
                    ThreadNote::default(),
                    body,
                )
            }
        },
        None => (new_thread(def), ThreadNote::default(), String::new()),
    };
    Ok((
        NoteWrite::update(path, stamped, inbound_version),
        NoteWrite {
            path: thread.to_string(),
            content: thread_text,
            base: thread_base,
        },
        meta,
        body,
    ))
}

/// Puts a cut-short message back to `pending` with its attempts as before.
async fn release(
    env: &TurnEnv,
    path: &str,
    attempts: u64,
    thread: &str,
    thread_status: Option<String>,
) -> Result<Written, VaultError> {
    let vault = env.vault.clone();
    let path = path.to_string();
    let thread = thread.to_string();
    tokio::task::spawn_blocking(move || {
        let mut w = Vec::new();
        // The thread goes back to the status it had before this turn.
        if let Ok((ttext, tv)) = vault.read(&thread)
            && let Ok((edited, _)) = edit_front_matter(
                &ttext,
                &[(
                    "status",
                    thread_status.map(FmValue::Str).unwrap_or(FmValue::Remove),
                )],
            )
        {
            w.push(NoteWrite::update(&thread, edited, tv));
        }
        let (text, version) = vault.read(&path)?;
        let attempts = if attempts == 0 {
            FmValue::Remove
        } else {
            attempts.into()
        };
        if let Ok((edited, _)) = edit_front_matter(
            &text,
            &[("status", "pending".into()), ("attempts", attempts)],
        ) {
            w.push(NoteWrite::update(&path, edited, version));
        }
        let fps = vault.write_planned(&w, Plan::DURABLE)?;
        Ok(zip_written(&w, fps))
    })
    .await
    .map_err(VaultError::join)?
}

/// Steps 4, 5, 6 and 7 in one durable batch, renamed in that order, with
/// a barrier before the stamp. With `next` (the agent's next message), its
/// claim joins the batch after the stamp: the thread note is written once,
/// with this turn's end record and `working` for the next.
///
/// When the batch cannot be written (a full or failing disk), the message
/// is not stamped: there is no reply without its record, and no stamp
/// without its reply. The turn comes back [`Ended::Failed`], to be written
/// again later by [`record`].
async fn end_batch(
    env: &TurnEnv,
    pending: Box<Unrecorded>,
    next: Option<(String, Arc<Definition>)>,
) -> Ended {
    let vault = env.vault.clone();
    let done = tokio::task::spawn_blocking(move || write_end(&*vault, pending, next)).await;
    match done {
        Ok(ended) => ended,
        Err(e) => Ended::Lost(VaultError::join(e)),
    }
}

/// The blocking part of [`end_batch`].
fn write_end(
    vault: &dyn Vault,
    mut pending: Box<Unrecorded>,
    next: Option<(String, Arc<Definition>)>,
) -> Ended {
    let p = &*pending;
    let ok = p.result.is_ok();
    let reply = reply_path(&p.path);
    let mut writes = Vec::with_capacity(6);
    // Step 4: the thread's end record, on its current text (the user may
    // have edited its body during the turn).
    if !p.landed.contains(&p.thread)
        && let Ok((ttext, tv)) = vault.read(&p.thread)
        && let Ok(tn) = Note::parse(&ttext)
    {
        let t = ThreadNote::of(&tn.meta);
        let mut edits: Vec<(&str, FmValue)> = vec![
            ("status", if ok { "ok" } else { "error" }.into()),
            ("last_turn_at", p.now.clone().into()),
            ("turn_count", t.turn_count.saturating_add(1).into()),
        ];
        if let Ok(out) = &p.result {
            if let Some(s) = &out.session {
                edits.push(("session", s.clone().into()));
            }
            let u: Usage = out.usage;
            if u != Usage::default() || t.has_usage {
                let inp = t.input_tokens.saturating_add(u.input_tokens);
                let outp = t.output_tokens.saturating_add(u.output_tokens);
                let cost = t.total_cost_usd + u.total_cost_usd;
                edits.push(("input_tokens", inp.into()));
                edits.push(("output_tokens", outp.into()));
                edits.push(("total_cost_usd", FmValue::Float((cost * 1e6).round() / 1e6)));
            }
        }
        if let Ok((edited, _)) = edit_front_matter(&ttext, &edits) {
            writes.push(NoteWrite::update(&p.thread, edited, tv));
        }
    }
    // Step 7's base: the inbound's current text. Deleted during the turn:
    // close the thread, and answer nobody.
    // Renamed by a sync meanwhile: the stamp goes to the new path.
    let moved = |e: &VaultError| {
        e.is_not_found()
            .then(|| vault.moved_to(&p.path))
            .flatten()
            .and_then(|to| vault.read(&to).ok().map(|t| (to, t)))
    };
    let (stamp_path, (text, version)) = match vault.read(&p.path) {
        Ok(t) => (p.path.clone(), t),
        Err(e) if let Some(found) = moved(&e) => {
            tracing::info!(
                "{}: renamed to {} during its turn; stamped there",
                p.path,
                found.0
            );
            found
        }
        Err(e) if e.is_not_found() => {
            tracing::info!("{}: {DELETED_MID_TURN}", p.path);
            return match vault.write_in_order(&writes, Plan::DURABLE) {
                Ok(fps) => Ended::Deleted(zip_written(&writes, fps)),
                Err(w) => {
                    tracing::error!("{}: its thread could not be closed: {}", p.path, w.error);
                    Ended::Deleted(zip_written(&writes, w.landed))
                }
            };
        }
        Err(e) => return Ended::Failed(pending, Vec::new(), e),
    };
    // Step 5: the outbound note.
    if !p.landed.contains(&reply) {
        let mut body = match &p.result {
            Ok(out) => out.reply.clone(),
            Err(e) => failure_body(&e.to_string()),
        };
        body.push_str(&p.attachments_note);
        writes.push(NoteWrite::any(
            &reply,
            &outbound_text(&p.def.name, &p.path, Some(&p.thread), ok, &body),
        ));
    }
    // Step 6: the callback, before the inbound is stamped, so a crash in
    // between cannot lose it.
    if let Some(cb) = &p.callback {
        let w = callback_write(cb, &p.path, &p.def.name, ok, Some(&p.thread), &reply);
        if !p.landed.contains(&w.path) {
            writes.push(w);
        }
    }
    // Step 7: stamp the inbound, on its current text.
    let err = p.result.as_ref().err().map(|e| FmValue::Str(e.to_string()));
    let stamp = edit_front_matter(
        &text,
        &[
            ("status", if ok { "handled" } else { "error" }.into()),
            ("handled_at", p.now.clone().into()),
            ("reply", link(&reply).into()),
            ("thread", link(&p.thread).into()),
            ("error", err.unwrap_or(FmValue::Remove)),
        ],
    );
    let stamp = match stamp {
        Ok((s, _)) => s,
        Err(e) => {
            let e = VaultError::Edit {
                path: p.path.clone(),
                reason: e.to_string(),
            };
            return Ended::Failed(pending, Vec::new(), e);
        }
    };
    writes.push(NoteWrite::update(&stamp_path, stamp, version));
    // The barrier before the stamp; a claim of the next message goes
    // after it (appended, so the stamp's index stays).
    let plan = stamp_last(&writes);
    let stamp_at = writes.len() - 1;
    let thread = p.thread.clone();
    let claimed =
        next.and_then(|(npath, ndef)| claim_next(vault, &mut writes, &thread, npath, ndef));
    match vault.write_in_order(&writes, plan) {
        Ok(fps) => Ended::Recorded(zip_written(&writes, fps), claimed),
        Err(w) => {
            let landed = w.landed.len();
            let written = zip_written(&writes, w.landed);
            if landed > stamp_at {
                // The message is answered; only the next one's claim did
                // not land: it runs from the start, like any message.
                tracing::warn!(
                    "{}: the claim of the next message could not be written: {}",
                    pending.path,
                    w.error
                );
                return Ended::Recorded(written, None);
            }
            pending
                .landed
                .extend(written.iter().map(|(p, _, _)| p.clone()));
            Ended::Failed(pending, written, w.error)
        }
    }
}

/// Adds the claim of the agent's next message to a turn's end batch, if
/// that message can run now (still eligible, attempts and depth within
/// bounds, for this agent). Otherwise nothing is added and the message
/// runs on its own, which also ends it properly when it cannot run.
fn claim_next(
    vault: &dyn Vault,
    writes: &mut Vec<NoteWrite>,
    thread: &str,
    npath: String,
    ndef: Arc<Definition>,
) -> Option<Claimed> {
    let inbound = read_inbound(vault, &npath).ok()?.ok()?;
    let depth = inbound.depth.clone().ok()?;
    if inbound.agent != ndef.name
        || depth >= MAX_DELEGATION_DEPTH
        || inbound.attempts >= MAX_ATTEMPTS
    {
        return None;
    }
    let nthread = thread_path(&ndef, inbound.msg.subject.as_deref(), &npath);
    // The same thread: edit the end record this batch writes.
    let same = writes
        .iter()
        .position(|w| w.path == nthread && nthread == thread);
    let base = same.and_then(|i| writes.get(i)).map(|w| w.content.clone());
    // The thread's metadata comes back as the next turn starts: after this
    // turn's end record (the session to resume), before the claim.
    let (msg, thread_write, meta, body) = claim_writes(
        vault,
        &ndef,
        &npath,
        &nthread,
        (&inbound.text, inbound.version),
        inbound.attempts,
        base.as_deref(),
    )
    .ok()?;
    match same.and_then(|i| writes.get_mut(i)) {
        Some(w) => w.content = thread_write.content,
        None => writes.push(thread_write),
    }
    writes.push(msg);
    Some(Claimed {
        path: npath,
        prepared: Prepared {
            def: ndef,
            inbound,
            depth,
            thread: nthread,
            thread_note: meta,
            thread_body: body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Mode;

    /// A definition `Agents/bot` in `mode` (also for the tests of
    /// `paths`).
    pub(super) fn def(mode: Mode) -> Definition {
        let n = Note::parse("---\ntags: [agent/definition]\n---\n").unwrap();
        let mut d =
            crate::agent::parse_definition("Agents/bot", &n, crate::backend::KINDS).unwrap();
        d.mode = mode;
        d
    }

    fn test_env(
        vault: &Arc<dyn Vault>,
        next: Option<NextFn>,
    ) -> (TurnEnv, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
        let batches: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Default::default();
        let b = batches.clone();
        let env = TurnEnv {
            vault: vault.clone(),
            events: tokio::sync::broadcast::channel(16).0,
            cancel: CancellationToken::new(),
            history: Box::new(|_| Vec::new()),
            agents: Vec::new(),
            on_written: Box::new(move |w| {
                b.lock()
                    .unwrap()
                    .push(w.into_iter().map(|(p, _, _)| p).collect())
            }),
            next,
            remote: None,
        };
        (env, batches)
    }

    /// A pipelined turn: the next message's claim is written in the end
    /// batch of the turn before it (one thread write), and the next turn
    /// runs from that claim without claiming again.

    #[tokio::test]
    async fn the_next_message_is_claimed_in_the_end_batch() {
        let dir = tempfile::tempdir().unwrap();
        let vault: Arc<dyn Vault> = Arc::new(crate::vault::LocalVault::open(dir.path()).unwrap());
        for m in ["m1", "m2"] {
            vault
                .write(
                    &format!("Inbox/{m}"),
                    &format!(
                        "---\ntags: [agent/message/inbound]\nagent: bot # the echo bot\n---\n{m} text\n"
                    ),
                )
                .unwrap();
        }
        let d = Arc::new(def(Mode::SingleThreaded));
        let nd = d.clone();
        let (env, batches) = test_env(
            &vault,
            Some(Box::new(move || Some(("Inbox/m2".into(), nd.clone())))),
        );
        let (res, claimed) = run(&env, Some(d.clone()), "Inbox/m1", None).await;
        assert!(matches!(res, Ok(Outcome::Done { ok: true, .. })), "{res:?}");
        let claimed = claimed.expect("m2 claimed with m1's end");
        assert_eq!(claimed.path(), "Inbox/m2");
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0], vec!["Inbox/m1", "Threads/bot/bot"]);
        assert_eq!(
            b[1],
            vec!["Threads/bot/bot", "Inbox/m1.reply", "Inbox/m1", "Inbox/m2"]
        );
        let get = |p: &str, k: &str| {
            let (t, _) = vault.read(p).unwrap();
            Note::parse(&t).unwrap().str(k)
        };
        assert_eq!(get("Inbox/m1", "status").as_deref(), Some("handled"));
        assert_eq!(get("Inbox/m2", "status").as_deref(), Some("working"));
        assert_eq!(get("Inbox/m2", "attempts").as_deref(), Some("1"));
        assert_eq!(get("Threads/bot/bot", "status").as_deref(), Some("working"));
        assert_eq!(get("Threads/bot/bot", "turn_count").as_deref(), Some("1"));
        // The user's comment on m2 survived the claim.
        assert!(
            vault
                .read("Inbox/m2")
                .unwrap()
                .0
                .contains("agent: bot # the echo bot")
        );

        let (env2, batches2) = test_env(&vault, None);
        let (res, more) = run(&env2, Some(d), "Inbox/m2", Some(claimed)).await;
        assert!(matches!(res, Ok(Outcome::Done { ok: true, .. })), "{res:?}");
        assert!(more.is_none());
        // No second claim: only the end batch.
        let b = batches2.lock().unwrap().clone();
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(get("Inbox/m2", "status").as_deref(), Some("handled"));
        assert_eq!(get("Inbox/m2", "attempts").as_deref(), Some("1"));
        assert_eq!(get("Threads/bot/bot", "status").as_deref(), Some("ok"));
        assert_eq!(get("Threads/bot/bot", "turn_count").as_deref(), Some("2"));
        assert!(vault.read("Inbox/m2.reply").unwrap().0.contains("m2 text"));
    }
}
