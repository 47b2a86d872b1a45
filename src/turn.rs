//! The turn pipeline of SPEC §3, for one inbound message:
//!
//! 1. stamp the inbound `status: working`, `attempts` + 1;
//! 2. upsert the thread note `status: working`;
//!    (1 and 2 are one durable write batch)
//! 3. run the backend;
//! 4. thread end record; 5. the outbound note; 7. stamp the inbound
//!    `handled|error` (4, 5, 7 are one durable write batch, renamed in that
//!    order, so a crash leaves a prefix: the inbound is never `handled`
//!    without its reply on disk).
//!
//! Step 6 (the `reply_to` callback) comes with delegation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use crate::agent::{Definition, Mode, valid_name};
use crate::backend::{
    self, AgentEvent, EventSink, TurnError, TurnEvent, TurnOutput, TurnRequest, Usage,
};
use crate::note::{FmValue, Note, NoteKind, TAG_THREAD, edit_front_matter, link, render_new, slug};
use crate::queue::Status;
use crate::vault::{Fingerprint, NoteWrite, Plan, Vault, VaultError};

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

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

pub use crate::note::{derived_path, fnv1a, reply_path};

/// The thread note of a message (SPEC §2, Thread).
pub fn thread_path(def: &Definition, subject: Option<&str>, inbound: &str) -> String {
    let name = &def.name;
    if let Some(subject) = subject.map(str::trim).filter(|s| !s.is_empty()) {
        let s = slug(subject);
        let s = if s.is_empty() {
            format!("{:08x}", fnv1a(subject) as u32)
        } else {
            s
        };
        return format!("Threads/{name}/{name}--{s}");
    }
    match def.mode {
        Mode::SingleThreaded => format!("Threads/{name}/{name}"),
        Mode::MultiThreaded => {
            let stem = inbound.rsplit('/').next().unwrap_or(inbound);
            let s = slug(stem);
            let s: String = s.chars().take(60).collect();
            let h = fnv1a(inbound) as u32;
            if s.is_empty() {
                format!("Threads/{name}/{h:08x}")
            } else {
                format!("Threads/{name}/{s}-{h:08x}")
            }
        }
    }
}

fn int_of(meta: &Mapping, key: &str) -> Option<u64> {
    match meta.get(key)? {
        // Whole, non-negative numbers only (`2.0` counts as 2; `-1` and
        // `1.5` are not counts).
        serde_yaml::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        serde_yaml::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn float_of(meta: &Mapping, key: &str) -> f64 {
    match meta.get(key) {
        Some(serde_yaml::Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(serde_yaml::Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

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

/// A turn that ran and whose end is not written yet.
#[derive(Debug)]
pub struct Unrecorded {
    path: String,
    def: Arc<Definition>,
    thread: String,
    result: Result<TurnOutput, TurnError>,
    callback: Option<CallbackTo>,
    external: bool,
    /// The end's time, the same on every try.
    now: String,
    /// Notes of the end already in place from an earlier try (the thread
    /// record, the reply, the callback): not written again, so a retry
    /// never counts the turn twice or rewrites a callback that may have
    /// run already.
    landed: Vec<String>,
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
    Ok(match end_batch(env, pending, None).await {
        Ended::Recorded(w, _) => {
            (env.on_written)(w);
            Outcome::Done { ok, external }
        }
        Ended::Deleted(w) => {
            (env.on_written)(w);
            Outcome::Skipped(DELETED_MID_TURN.into())
        }
        Ended::Failed(pending, w, error) => {
            (env.on_written)(w);
            Outcome::Unrecorded { pending, error }
        }
        Ended::Lost(e) => return Err(e),
    })
}

/// Notes written by a turn, with their fingerprints (for the index).
/// Each with its content, so the engine can index what the turn wrote (a
/// callback is a new message to queue; a stamped inbound joins its thread's
/// history) without reading it back.
pub type Written = Vec<(String, Fingerprint, String)>;

/// The running vaultrunner binary, for `$VAULTRUNNER_BIN send …` in turns.
pub fn vaultrunner_bin() -> String {
    // Looked up once (a `readlink` of /proc/self/exe per turn otherwise).
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "vaultrunner".into())
    })
    .clone()
}

/// The section the claude backend's system prompt gains (unless the
/// definition says `delegation_prompt: false`): how to hand work to
/// another agent through the vault. Documented in docs/delegation.md.
pub fn delegation_section(me: &str, agents: &[String]) -> String {
    let others: Vec<&str> = agents
        .iter()
        .map(String::as_str)
        .filter(|a| *a != me)
        .collect();
    let list = if others.is_empty() {
        "(no other agents are defined right now)".to_string()
    } else {
        others.join(", ")
    };
    format!(
        "## Delegating to other agents\n\
         You are the agent `{me}` in a vault run by vaultrunner. To hand a task to another agent, run:\n\
         \n    \"$VAULTRUNNER_BIN\" send \"$VAULTRUNNER_VAULT\" <agent> \"<task>\" --reply-to {me} --correlation-id <id>\n\n\
         Agents here: {list}. The task becomes a note and runs in that agent's queue; you do not wait for it. \
         When it is answered you get a new message with `callback: \"true\"`, its `correlation_id`, \
         `source_status` (ok or error) and a link to the reply note (read it from the vault). \
         Give each task its own correlation id. Delegation chains stop at depth {MAX_DELEGATION_DEPTH}."
    )
}

/// Looks up the answered messages of a thread.
pub type HistoryFn = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Everything a turn needs from the engine.
pub struct TurnEnv {
    pub vault: Arc<Vault>,
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
}

/// Receives the notes a turn wrote.
pub type WrittenFn = Box<dyn Fn(Written) + Send + Sync>;

/// Takes an agent's next message for a pipelined turn (see [`TurnEnv::next`]).
pub type NextFn = Box<dyn Fn() -> Option<(String, Arc<Definition>)> + Send + Sync>;

/// Default `history_budget`: characters of earlier exchanges sent to
/// backends that rebuild the conversation from the vault.
pub const DEFAULT_HISTORY_BUDGET: usize = 200_000;

/// Rebuilds a thread's earlier exchanges from its notes: answered inbound
/// messages and their `ok` replies, newest first until the budget is
/// spent, returned oldest first. Messages answered before the thread's
/// `reset_at` are left out.
pub fn load_history(
    vault: &Vault,
    paths: &[String],
    current: &str,
    reset_at: Option<&str>,
    budget: usize,
) -> Vec<backend::Exchange> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for p in paths.iter().rev() {
        if p == current {
            continue;
        }
        let Ok((text, _)) = vault.read(p) else {
            continue;
        };
        let Ok(n) = Note::parse(&text) else { continue };
        if Status::parse(n.str("status").as_deref()) != Status::Handled {
            continue;
        }
        if let (Some(r), Some(h)) = (reset_at, n.str("handled_at"))
            && h.as_str() <= r
        {
            continue;
        }
        let rp = n
            .str("reply")
            .map(|r| crate::note::unlink(&r).to_string())
            .unwrap_or_else(|| reply_path(p));
        let Ok((rtext, _)) = vault.read(&rp) else {
            continue;
        };
        let Ok(rn) = Note::parse(&rtext) else {
            continue;
        };
        if rn.str("status").as_deref() == Some("error") {
            continue;
        }
        let user = n.body.trim().to_string();
        let assistant = rn.body.trim().to_string();
        used += user.len() + assistant.len();
        if used > budget {
            break;
        }
        out.push(backend::Exchange { user, assistant });
    }
    out.reverse();
    out
}

/// The fields of an inbound message a turn uses.
struct Inbound {
    text: String,
    note: Note,
    agent: String,
    attempts: u64,
    /// The delegation depth, or why the message is answered with an error
    /// without running (a key of the wrong type, a depth that is no number).
    depth: Result<u64, String>,
    subject: Option<String>,
    sender: Option<String>,
}

fn read_inbound(vault: &Vault, path: &str) -> Result<Result<Inbound, String>, VaultError> {
    let (text, _) = match vault.read(path) {
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
    let status = Status::parse(note.str("status").as_deref());
    if !matches!(status, Status::Pending | Status::Working) {
        return Ok(Err(format!("status is now {:?}", status)));
    }
    let Some(agent) = note
        .str("agent")
        .or_else(|| note.str("channel"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    else {
        return Ok(Err("no `agent`".into()));
    };
    // `attempts` bounds crash loops: it counts starts of a message that
    // is still `working`. A message someone set back to `pending` (a
    // deliberate re-run) starts counting afresh.
    let attempts = if status == Status::Working {
        int_of(&note.meta, "attempts").unwrap_or(0)
    } else {
        0
    };
    let depth = match (
        crate::queue::wrong_typed_key(&note),
        note.meta.get("delegation_depth"),
    ) {
        (Some(e), _) => Err(e.to_string()),
        (None, None | Some(serde_yaml::Value::Null)) => Ok(0),
        (None, Some(_)) => int_of(&note.meta, "delegation_depth")
            .ok_or_else(|| "field `delegation_depth` is not a whole number".to_string()),
    };
    Ok(Ok(Inbound {
        subject: note.str("subject"),
        sender: note.str("sender"),
        text,
        note,
        agent,
        attempts,
        depth,
    }))
}

fn zip_written(writes: &[NoteWrite], fps: Vec<Fingerprint>) -> Written {
    writes
        .iter()
        .zip(fps)
        .map(|(w, fp)| (w.path.clone(), fp, w.content.clone()))
        .collect()
}

/// The outbound note's text.
fn outbound_text(agent: &str, inbound: &str, thread: Option<&str>, ok: bool, body: &str) -> String {
    let mut fields: Vec<(&str, FmValue)> = vec![
        ("agent", agent.into()),
        ("direction", "outbound".into()),
        ("sender", agent.into()),
        ("ts", now_rfc3339().into()),
        ("in_reply_to", link(inbound).into()),
    ];
    if let Some(t) = thread {
        fields.push(("thread", link(t).into()));
    }
    fields.push(("status", if ok { "ok" } else { "error" }.into()));
    render_new(&["agent/message", "agent/message/outbound"], &fields, body)
}

/// Step 6: a callback owed to the `reply_to` agent of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackTo {
    pub agent: String,
    pub correlation_id: Option<String>,
    /// The callback's own depth: the message's + 1.
    pub depth: u64,
}

/// The callback a message is owed, if any: it has a valid `reply_to`, and
/// neither it nor the callback would be at or past the depth limit.
pub fn callback_for(note: &Note, depth: u64) -> Option<CallbackTo> {
    let to = note
        .str("reply_to")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())?;
    if !valid_name(&to) {
        tracing::warn!("reply_to {to:?} is not a valid agent name; no callback");
        return None;
    }
    if depth + 1 >= MAX_DELEGATION_DEPTH {
        return None;
    }
    Some(CallbackTo {
        agent: to,
        correlation_id: note.str("correlation_id").filter(|s| !s.trim().is_empty()),
        depth: depth + 1,
    })
}

/// The callback note: a new inbound message to the `reply_to` agent at a
/// path derived from the message's (`<stem>.callback`), so a re-run
/// rewrites it. It never carries `reply_to`; its body is a notification
/// with links, not the reply copied.
pub fn callback_write(
    cb: &CallbackTo,
    message: &str,
    source_agent: &str,
    ok: bool,
    thread: Option<&str>,
    reply: &str,
) -> NoteWrite {
    let status = if ok { "ok" } else { "error" };
    let mut fields: Vec<(&str, FmValue)> = vec![
        ("agent", cb.agent.as_str().into()),
        ("sender", format!("callback:{source_agent}").into()),
        ("ts", now_rfc3339().into()),
        ("callback", "true".into()),
        ("source_status", status.into()),
        ("source_agent", source_agent.into()),
    ];
    if let Some(t) = thread {
        fields.push(("source_thread", link(t).into()));
    }
    fields.push(("source_message", link(reply).into()));
    if let Some(c) = &cb.correlation_id {
        fields.push(("correlation_id", c.as_str().into()));
    }
    fields.push(("delegation_depth", cb.depth.into()));
    let mut body = format!(
        "{source_agent} finished the task you sent ({status}): {}\n",
        link(reply)
    );
    if let Some(t) = thread {
        body.push_str(&format!("\nThread: {}\n", link(t)));
    }
    body.push_str(&format!("\nTask: {}\n", link(message)));
    if let Some(c) = &cb.correlation_id {
        body.push_str(&format!("\nCorrelation id: `{c}`\n"));
    }
    NoteWrite {
        path: derived_path(message, "callback"),
        content: render_new(&["agent/message", "agent/message/inbound"], &fields, &body),
    }
}

/// The body of a failure reply: short and human-readable.
pub fn failure_body(reason: &str) -> String {
    format!("**vaultrunner: this message could not be answered.**\n\n{reason}\n")
}

/// Ends an inbound as `error` without running a turn (invalid agent name,
/// attempts used up, delegation too deep): a failure reply, then the stamp.
fn fail_without_turn(
    vault: &Vault,
    path: &str,
    inbound_text: &str,
    agent: &str,
    thread: Option<&str>,
    reason: &str,
    callback: Option<&CallbackTo>,
) -> Result<Written, VaultError> {
    let reply = reply_path(path);
    let mut writes = Vec::new();
    // A thread left `working` by a crashed turn is closed as `error`.
    if let Some(t) = thread
        && let Ok((ttext, _)) = vault.read(t)
        && let Ok(tn) = Note::parse(&ttext)
        && tn.str("status").as_deref() == Some("working")
        && let Ok((edited, _)) = edit_front_matter(
            &ttext,
            &[
                ("status", "error".into()),
                ("last_turn_at", now_rfc3339().into()),
            ],
        )
    {
        writes.push(NoteWrite {
            path: t.to_string(),
            content: edited,
        });
    }
    writes.push(NoteWrite {
        path: reply.clone(),
        content: outbound_text(agent, path, thread, false, &failure_body(reason)),
    });
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
    writes.push(NoteWrite {
        path: path.to_string(),
        content: edited,
    });
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
    thread_meta: Mapping,
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
    let inbound = tokio::task::spawn_blocking(move || read_inbound(&vault, &p))
        .await
        .map_err(join_err)??;
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
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    fail_without_turn(
                        &vault,
                        &path,
                        &inbound.text,
                        &inbound.agent,
                        thread.as_deref(),
                        &reason,
                        callback.as_ref(),
                    )
                    .map(|w| (w, reason, inbound.agent))
                })
                .await
                .map_err(join_err)??;
                let (written, reason, agent) = written;
                (env.on_written)(written);
                let _ = events.send(AgentEvent {
                    agent,
                    thread: String::new(),
                    message: message_path,
                    event: TurnEvent::Error { message: reason },
                });
                Ok(Err(Outcome::Done {
                    ok: false,
                    external: false,
                }))
            }
        };
    if let Err(why) = crate::agent::check_name(&inbound.agent) {
        let reason = format!("field `agent`: {why}");
        let cb = inbound
            .depth
            .as_ref()
            .ok()
            .and_then(|d| callback_for(&inbound.note, *d));
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
    let thread = thread_path(&def, inbound.subject.as_deref(), path);
    if inbound.attempts >= MAX_ATTEMPTS {
        let reason = format!(
            "gave up after {} attempts: each one was interrupted before it finished (crash or kill); send the message again to retry",
            inbound.attempts
        );
        let cb = callback_for(&inbound.note, depth);
        return fail(Some(thread), reason, inbound, cb).await;
    }

    // Steps 1 + 2: claim the message durably before running anything.
    let (thread_meta, thread_body, written) =
        start_batch(env, &def, path, &thread, &inbound).await?;
    (env.on_written)(written);
    Ok(Ok(Prepared {
        def,
        inbound,
        depth,
        thread,
        thread_meta,
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
        thread_meta,
        thread_body,
    } = prepared;
    // Step 3: run the backend.
    let resume = match (def.mode, inbound.subject.is_some()) {
        (Mode::SingleThreaded, _) | (_, true) => {
            crate::note::get_str(&thread_meta, "session").filter(|s| !s.trim().is_empty())
        }
        _ => None,
    };
    let events = EventSink::new(env.events.clone(), &def.name, &thread, path);
    let (result, external) = match backend::for_definition(&def) {
        Ok(b) => {
            let mut req = build_request(
                env,
                &def,
                path,
                &thread,
                &inbound,
                &thread_body,
                resume,
                depth,
                b.wants_context_header(),
            );
            if b.wants_history() {
                // The vault is the session store: earlier exchanges of this
                // thread (since its `reset_at`), oldest first.
                let paths = (env.history)(&thread);
                let reset_at =
                    crate::note::get_str(&thread_meta, "reset_at").filter(|s| !s.trim().is_empty());
                let budget = def.history_budget.unwrap_or(DEFAULT_HISTORY_BUDGET);
                let vault = env.vault.clone();
                let current = path.to_string();
                req.history = match tokio::task::spawn_blocking(move || {
                    load_history(&vault, &paths, &current, reset_at.as_deref(), budget)
                })
                .await
                {
                    Ok(h) => h,
                    Err(e) => return (Err(join_err(e)), None),
                };
            }
            let external = b.runs_external_programs();
            let grace = backend::process::KILL_GRACE.saturating_add(Duration::from_secs(5));
            let policy = backend::RetryPolicy::for_definition(&def);
            let run = backend::run_with_retries(b.as_ref(), &req, &events, &env.cancel, policy);
            // A safety net only: backends stop at the deadline themselves.
            let r =
                match tokio::time::timeout_at(crate::time::later(req.deadline, grace), run).await {
                    Ok(r) => r,
                    Err(_) => Err(TurnError::Timeout(req.timeout)),
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
    if matches!(result, Err(TurnError::Cancelled)) {
        // Shutdown: hand the message back as it was, so the next start runs
        // it without counting this cut-short attempt.
        let before = crate::note::get_str(&thread_meta, "status");
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
    let callback = callback_for(&inbound.note, depth);
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
        now: now_rfc3339(),
        landed: Vec::new(),
    });
    match end_batch(env, pending, next).await {
        Ended::Recorded(end, claimed) => {
            (env.on_written)(end);
            (Ok(Outcome::Done { ok, external }), claimed)
        }
        Ended::Deleted(end) => {
            (env.on_written)(end);
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

fn join_err(e: tokio::task::JoinError) -> VaultError {
    VaultError::Io {
        path: PathBuf::new(),
        error: std::io::Error::other(e.to_string()),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_request(
    env: &TurnEnv,
    def: &Arc<Definition>,
    path: &str,
    thread: &str,
    inbound: &Inbound,
    thread_body: &str,
    session: Option<String>,
    depth: u64,
    header: bool,
) -> TurnRequest {
    let root = env.vault.root();
    let message = inbound.note.body.trim().to_string();
    let prompt = if header {
        format!(
            "[vaultrunner] time: {} · agent: {} · thread: {} · from: {}\n\n{}",
            now_rfc3339(),
            def.name,
            thread,
            inbound.sender.as_deref().unwrap_or("user"),
            message
        )
    } else {
        message.clone()
    };
    let mut system_prompt = def.system_prompt.clone();
    let mut add = |part: &str| {
        if !part.is_empty() {
            if !system_prompt.is_empty() {
                system_prompt.push_str("\n\n");
            }
            system_prompt.push_str(part);
        }
    };
    add(thread_body.trim());
    if def.backend == "claude" && def.delegation_prompt {
        add(&delegation_section(&def.name, &env.agents));
    }
    let workspace = match def
        .workspace
        .as_deref()
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        None => root.to_path_buf(),
        Some(w) if w.starts_with("~/") => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(&w[2..]))
            .unwrap_or_else(|| root.join(w)),
        Some(w) => root.join(w),
    };
    let env_vars = vec![
        ("VAULTRUNNER_VAULT".to_string(), root.display().to_string()),
        ("VAULTRUNNER_AGENT".to_string(), def.name.clone()),
        ("VAULTRUNNER_THREAD".to_string(), thread.to_string()),
        (
            "VAULTRUNNER_SESSION".to_string(),
            session.clone().unwrap_or_default(),
        ),
        (
            "VAULTRUNNER_MESSAGE".to_string(),
            env.vault.abs(path).display().to_string(),
        ),
        (
            "VAULTRUNNER_DELEGATION_DEPTH".to_string(),
            depth.to_string(),
        ),
        ("VAULTRUNNER_BIN".to_string(), vaultrunner_bin()),
    ];
    TurnRequest {
        definition: def.clone(),
        prompt,
        message,
        system_prompt,
        session,
        workspace,
        env: env_vars,
        timeout: def.timeout,
        deadline: crate::time::after(def.timeout),
        stall: def.stall_timeout,
        history: Vec::new(),
    }
}

/// Steps 1 and 2 in one durable batch. Returns the thread's metadata and
/// body as they were, and what was written.
async fn start_batch(
    env: &TurnEnv,
    def: &Arc<Definition>,
    path: &str,
    thread: &str,
    inbound: &Inbound,
) -> Result<(Mapping, String, Written), VaultError> {
    let vault = env.vault.clone();
    let def = def.clone();
    let path = path.to_string();
    let thread = thread.to_string();
    let text = inbound.text.clone();
    let attempts = inbound.attempts;
    tokio::task::spawn_blocking(move || {
        let (msg, thread_write, meta, body) =
            claim_writes(&vault, &def, &path, &thread, &text, attempts, None)?;
        let writes = vec![msg, thread_write];
        let fps = vault.write_planned(&writes, CLAIM)?;
        Ok((meta, body, zip_written(&writes, fps)))
    })
    .await
    .map_err(join_err)?
}

/// The writes of a claim (steps 1 and 2): the inbound stamped `working`
/// with its attempt counted, and its thread note upserted `working`.
/// `base` is the thread note's text when the caller is about to write it
/// (a pipelined turn's end record); otherwise it is read from disk.
/// Returns the two writes and the thread's metadata and body as they were.
fn claim_writes(
    vault: &Vault,
    def: &Definition,
    path: &str,
    thread: &str,
    inbound_text: &str,
    attempts: u64,
    base: Option<&str>,
) -> Result<(NoteWrite, NoteWrite, Mapping, String), VaultError> {
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
    let current = match base {
        Some(t) => Some(t.to_string()),
        None => vault.read(thread).ok().map(|(t, _)| t),
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
                (edited, n.meta, n.body)
            }
            // A thread note whose YAML the user broke: start it again
            // rather than wedging the agent; its body is kept.
            Err(_) => {
                let body = crate::note::split(&t).body.to_string();
                (format!("{}{}", new_thread(def), body), Mapping::new(), body)
            }
        },
        None => (new_thread(def), Mapping::new(), String::new()),
    };
    Ok((
        NoteWrite {
            path: path.to_string(),
            content: stamped,
        },
        NoteWrite {
            path: thread.to_string(),
            content: thread_text,
        },
        meta,
        body,
    ))
}

fn thread_fields(def: &Definition, status: &str) -> Vec<(&'static str, FmValue)> {
    vec![
        ("agent", def.name.as_str().into()),
        ("mode", def.mode.as_str().into()),
        ("definition", link(&def.path).into()),
        ("backend", def.backend.as_str().into()),
        (
            "model",
            def.model
                .clone()
                .map(FmValue::Str)
                .unwrap_or(FmValue::Remove),
        ),
        ("status", status.into()),
    ]
}

fn new_thread(def: &Definition) -> String {
    let mut fields = thread_fields(def, "working");
    fields.push(("started_at", now_rfc3339().into()));
    fields.push(("turn_count", 0i64.into()));
    render_new(&[TAG_THREAD], &fields, "")
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
        if let Ok((ttext, _)) = vault.read(&thread)
            && let Ok((edited, _)) = edit_front_matter(
                &ttext,
                &[(
                    "status",
                    thread_status.map(FmValue::Str).unwrap_or(FmValue::Remove),
                )],
            )
        {
            w.push(NoteWrite {
                path: thread.clone(),
                content: edited,
            });
        }
        let (text, _) = vault.read(&path)?;
        let attempts = if attempts == 0 {
            FmValue::Remove
        } else {
            attempts.into()
        };
        if let Ok((edited, _)) = edit_front_matter(
            &text,
            &[("status", "pending".into()), ("attempts", attempts)],
        ) {
            w.push(NoteWrite {
                path: path.clone(),
                content: edited,
            });
        }
        let fps = vault.write_planned(&w, Plan::DURABLE)?;
        Ok(zip_written(&w, fps))
    })
    .await
    .map_err(join_err)?
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
    let done = tokio::task::spawn_blocking(move || write_end(&vault, pending, next)).await;
    match done {
        Ok(ended) => ended,
        Err(e) => Ended::Lost(join_err(e)),
    }
}

/// The blocking part of [`end_batch`].
fn write_end(
    vault: &Vault,
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
        && let Ok((ttext, _)) = vault.read(&p.thread)
        && let Ok(tn) = Note::parse(&ttext)
    {
        let turns = int_of(&tn.meta, "turn_count").unwrap_or(0) + 1;
        let mut edits: Vec<(&str, FmValue)> = vec![
            ("status", if ok { "ok" } else { "error" }.into()),
            ("last_turn_at", p.now.clone().into()),
            ("turn_count", turns.into()),
        ];
        if let Ok(out) = &p.result {
            if let Some(s) = &out.session {
                edits.push(("session", s.clone().into()));
            }
            let u: Usage = out.usage;
            if u != Usage::default() || tn.meta.contains_key("input_tokens") {
                let inp = int_of(&tn.meta, "input_tokens").unwrap_or(0) + u.input_tokens;
                let outp = int_of(&tn.meta, "output_tokens").unwrap_or(0) + u.output_tokens;
                let cost = float_of(&tn.meta, "total_cost_usd") + u.total_cost_usd;
                edits.push(("input_tokens", inp.into()));
                edits.push(("output_tokens", outp.into()));
                edits.push(("total_cost_usd", FmValue::Float((cost * 1e6).round() / 1e6)));
            }
        }
        if let Ok((edited, _)) = edit_front_matter(&ttext, &edits) {
            writes.push(NoteWrite {
                path: p.thread.clone(),
                content: edited,
            });
        }
    }
    // Step 7's base: the inbound's current text. Deleted during the turn:
    // close the thread, and answer nobody.
    let text = match vault.read(&p.path) {
        Ok((t, _)) => t,
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
        let body = match &p.result {
            Ok(out) => out.reply.clone(),
            Err(e) => failure_body(&e.to_string()),
        };
        writes.push(NoteWrite {
            path: reply.clone(),
            content: outbound_text(&p.def.name, &p.path, Some(&p.thread), ok, &body),
        });
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
    writes.push(NoteWrite {
        path: p.path.clone(),
        content: stamp,
    });
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
    vault: &Vault,
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
    let nthread = thread_path(&ndef, inbound.subject.as_deref(), &npath);
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
        &inbound.text,
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
            thread_meta: meta,
            thread_body: body,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(mode: Mode) -> Definition {
        let n = Note::parse("---\ntags: [agent/definition]\n---\n").unwrap();
        let mut d = crate::agent::parse_definition("Agents/bot", &n).unwrap();
        d.mode = mode;
        d
    }

    fn test_env(
        vault: &Arc<Vault>,
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
        };
        (env, batches)
    }

    /// A pipelined turn: the next message's claim is written in the end
    /// batch of the turn before it (one thread write), and the next turn
    /// runs from that claim without claiming again.
    #[tokio::test]
    async fn the_next_message_is_claimed_in_the_end_batch() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Arc::new(Vault::open(dir.path()).unwrap());
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

    #[test]
    fn reply_paths_are_derived_from_the_inbound_path() {
        assert_eq!(reply_path("Inbox/hello"), "Inbox/hello.reply");
        assert_eq!(reply_path("hello"), "hello.reply");
        let long = format!("Inbox/{}", "x".repeat(300));
        let r = reply_path(&long);
        assert!(r.len() < 200 && r.ends_with(".reply"));
        assert_eq!(r, reply_path(&long));
        assert_ne!(r, reply_path(&format!("Inbox/{}y", "x".repeat(300))));
    }

    #[test]
    fn callbacks_follow_the_depth_rule() {
        let n = |extra: &str| {
            Note::parse(&format!(
                "---\ntags: [agent/message/inbound]\nagent: w\n{extra}---\ntask\n"
            ))
            .unwrap()
        };
        assert_eq!(callback_for(&n(""), 0), None);
        let cb = callback_for(&n("reply_to: boss\ncorrelation_id: t-1\n"), 1).unwrap();
        assert_eq!(
            cb,
            CallbackTo {
                agent: "boss".into(),
                correlation_id: Some("t-1".into()),
                depth: 2
            }
        );
        assert!(callback_for(&n("reply_to: boss\n"), 6).is_some());
        assert_eq!(callback_for(&n("reply_to: boss\n"), 7), None);
        assert_eq!(callback_for(&n("reply_to: ../x\n"), 0), None);
        let w = callback_write(
            &cb,
            "Inbox/w/task",
            "w",
            true,
            Some("Threads/w/w"),
            "Inbox/w/task.reply",
        );
        assert_eq!(w.path, "Inbox/w/task.callback");
        let note = Note::parse(&w.content).unwrap();
        assert_eq!(note.kind(), NoteKind::Inbound);
        assert_eq!(note.str("agent").as_deref(), Some("boss"));
        assert_eq!(note.str("callback").as_deref(), Some("true"));
        assert!(matches!(
            note.meta.get("callback"),
            Some(serde_yaml::Value::String(_))
        ));
        assert_eq!(note.str("source_status").as_deref(), Some("ok"));
        assert_eq!(
            note.str("source_message").as_deref(),
            Some("[[Inbox/w/task.reply]]")
        );
        assert_eq!(note.str("correlation_id").as_deref(), Some("t-1"));
        assert_eq!(note.str("delegation_depth").as_deref(), Some("2"));
        assert_eq!(note.str("sender").as_deref(), Some("callback:w"));
        assert!(note.str("reply_to").is_none());
        assert!(note.body.contains("[[Inbox/w/task.reply]]"));
    }

    #[test]
    fn delegation_section_names_the_others() {
        let s = delegation_section("boss", &["boss".into(), "a".into(), "b".into()]);
        assert!(s.contains("Agents here: a, b."), "{s}");
        assert!(s.contains("--reply-to boss"));
        assert!(s.contains("$VAULTRUNNER_BIN"));
    }

    #[test]
    fn thread_paths() {
        let s = def(Mode::SingleThreaded);
        assert_eq!(thread_path(&s, None, "Inbox/a"), "Threads/bot/bot");
        assert_eq!(
            thread_path(&s, Some("Weekly Report!"), "Inbox/a"),
            "Threads/bot/bot--weekly-report"
        );
        assert_eq!(
            thread_path(&s, Some("../../etc"), "Inbox/a"),
            "Threads/bot/bot--etc"
        );
        let m = def(Mode::MultiThreaded);
        let a = thread_path(&m, None, "Inbox/Hello There");
        assert!(a.starts_with("Threads/bot/hello-there-"), "{a}");
        assert_eq!(a, thread_path(&m, None, "Inbox/Hello There"));
        assert_ne!(a, thread_path(&m, None, "Other/Hello There"));
        for p in [a, thread_path(&s, Some("!!!"), "x")] {
            crate::vault::check_rel_path(&p).unwrap();
        }
    }
}
