//! The vault node's side of a cluster: a [`Remote`] that publishes each
//! claimed turn to JetStream and hands back its result, plus the
//! background loops that pull results, answer start checks, relay live
//! events, follow the workers' heartbeats and act on give-ups.
//!
//! Everything it keeps is per message in flight (bounded by `--jobs` and
//! the agents' queues), per live worker, and a few counters.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::Acker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{
    ADVISORY_MAX_DELIVERIES, ClusterError, DefinitionSource, EventMsg, HEARTBEAT_EVERY,
    HEARTBEAT_TTL, Heartbeat, NODE_CONSUMER, ORPHAN_KEEP, Outcome, PROTOCOL, Request, SUBJECT_ANY,
    SUBJECT_EVENTS, SUBJECT_RESULTS, SUBJECT_START, StartAnswer, StartAsk, TurnResult, decode,
    worker_consumer, worker_subject,
};
use crate::backend::{EventSink, TurnError, TurnEvent, TurnOutput};
use crate::turn::{Remote, RemoteTurn};

/// The engine's job slots under a cluster without `--jobs`: the node's
/// own bound (the live workers' jobs) is the one that counts.
pub const UNBOUNDED_JOBS: usize = 4096;

/// How long after its start the vault node answers start checks of the
/// messages it recovered with *wait*: a run a previous vault node started shows in its worker's
/// heartbeats only at the next beat (every [`HEARTBEAT_EVERY`]) and the
/// next read of them (every second). Two beats cover both.
pub const LISTENING: Duration = Duration::from_secs(4);

/// How `serve --cluster` reaches the cluster.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// The vault node's HTTP API as workers reach it (`--advertise`).
    pub vault_url: String,
    /// Turns in flight cluster-wide; `None`: the live workers' `--jobs`.
    pub jobs: Option<usize>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub redelivered: AtomicU64,
    pub results_ignored: AtomicU64,
}

/// A worker as `/health` and `status` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub jobs: usize,
    pub running: Vec<String>,
    pub version: String,
    /// Seconds since its last heartbeat reached the vault node.
    pub last_heartbeat_secs: u64,
    pub live: bool,
    /// False for a worker of another protocol (its turns are not counted).
    pub compatible: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("url", &self.opts.url).finish()
    }
}

/// The vault node of a cluster.
pub struct Node {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NodeOptions,
    state: Mutex<State>,
    /// Woken when a slot frees or the workers change.
    wake: Notify,
    pub counters: Counters,
    /// The turn requests' stream, once set up.
    turns: watch::Receiver<Option<jetstream::stream::Stream>>,
}

#[derive(Default)]
struct State {
    /// When the streams were ready; until [`LISTENING`] later, every start
    /// check waits (below).
    ready_at: Option<Instant>,
    inflight: HashMap<String, Entry>,
    /// Results nobody waited for (path → result), kept for a while.
    orphans: HashMap<String, (TurnResult, Acker, Instant)>,
    workers: HashMap<String, Seen>,
    /// Agent → the worker that ran its last turn.
    sticky: HashMap<String, String>,
    /// Stream sequence → path, for give-ups.
    by_seq: HashMap<u64, String>,
    /// Requests published and not answered yet.
    dispatched: usize,
    /// Turns waiting for a cluster-wide slot, by ticket: the slots go to
    /// them in the order they came (as the local dispatcher goes round
    /// the agents), not to whichever task wakes first.
    waiters: std::collections::BTreeSet<u64>,
    next_ticket: u64,
    /// Dead workers whose subject was cleaned up.
    cleaned: HashSet<String>,
    /// Peers of another protocol, named once.
    warned: HashSet<String>,
}

struct Entry {
    agent: String,
    attempt: u64,
    token: String,
    depth: u64,
    /// Waiting for the result; `None` once it is in.
    done: Option<oneshot::Sender<Result<TurnOutput, TurnError>>>,
    /// The result's ack, sent once the end batch is durable.
    acker: Option<Acker>,
    events: EventSink,
    /// The worker that was told to run it.
    runner: Option<String>,
    /// Published to this worker's subject (sticky).
    target: Option<String>,
    /// The request as published, for a move to any worker.
    payload: Bytes,
    msg_id: String,
    /// Holds a cluster-wide slot.
    counted: bool,
}

struct Seen {
    hb: Heartbeat,
    revision: u64,
    at: Instant,
    compatible: bool,
}

impl State {
    fn live(&self, id: &str, now: Instant) -> bool {
        self.workers
            .get(id)
            .is_some_and(|w| now.saturating_duration_since(w.at) < HEARTBEAT_TTL)
    }

    fn release_slot(&mut self, path: &str) {
        if let Some(e) = self.inflight.get_mut(path)
            && e.counted
        {
            e.counted = false;
            self.dispatched = self.dispatched.saturating_sub(1);
        }
    }
}

/// CLI backends keep their sessions on the machine that made them.
fn sticky_backend(backend: &str) -> bool {
    matches!(backend, "claude" | "codex" | "gemini")
}

impl Node {
    /// Connects (waiting for NATS if it is down) and starts the loops.
    pub async fn start(
        opts: NodeOptions,
        cancel: CancellationToken,
    ) -> Result<Arc<Node>, ClusterError> {
        let client = super::connect(&opts.url, "vaultrunner vault node").await?;
        let js = jetstream::new(client.clone());
        let (tx, turns) = watch::channel(None);
        let node = Arc::new(Node {
            client,
            js,
            opts,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            counters: Counters::default(),
            turns,
        });
        tokio::spawn(node.clone().set_up(tx, cancel));
        Ok(node)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the streams (retrying while NATS is away), then runs the
    /// loops until shutdown.
    async fn set_up(
        self: Arc<Self>,
        tx: watch::Sender<Option<jetstream::stream::Stream>>,
        cancel: CancellationToken,
    ) {
        let mut delay = Duration::from_millis(200);
        let mut logged = false;
        let (turns, results, _kv) = loop {
            match super::ensure(&self.js).await {
                Ok(s) => break s,
                Err(e) => {
                    if !logged {
                        tracing::warn!("cluster: cannot set up the streams yet ({e}); retrying");
                        logged = true;
                    }
                    if !super::back_off(&mut delay, &cancel).await {
                        return;
                    }
                }
            }
        };
        tracing::info!("cluster: streams ready on {}", self.opts.url);
        self.lock().ready_at = Some(Instant::now());
        let _ = tx.send(Some(turns.clone()));
        tokio::spawn(self.clone().results_loop(results, cancel.clone()));
        tokio::spawn(self.clone().heartbeats_loop(turns, cancel.clone()));
        tokio::spawn(self.clone().serve_subject(SUBJECT_START, cancel.clone()));
        tokio::spawn(self.clone().serve_subject(SUBJECT_EVENTS, cancel.clone()));
        tokio::spawn(
            self.clone()
                .serve_subject(ADVISORY_MAX_DELIVERIES, cancel.clone()),
        );
    }

    /// The cluster-wide bound on turns in flight now.
    fn capacity(&self, st: &State, now: Instant) -> usize {
        self.opts.jobs.unwrap_or_else(|| {
            st.workers
                .iter()
                .filter(|(id, w)| w.compatible && st.live(id, now))
                .map(|(_, w)| w.hb.jobs)
                .sum()
        })
    }

    /// Publishes until JetStream acks (the same message id each time, so
    /// a publish whose ack was lost is deduplicated). `None` on shutdown.
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
        cancel: &CancellationToken,
    ) -> Option<u64> {
        let mut delay = Duration::from_millis(100);
        let mut logged = false;
        loop {
            let sent = super::publish_once(&self.js, subject, msg_id, payload.clone()).await;
            match sent {
                Ok(ack) => {
                    if logged {
                        tracing::info!("cluster: publishing again");
                    }
                    return Some(ack.sequence);
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!("cluster: cannot publish {msg_id} ({e}); retrying");
                        logged = true;
                    }
                    if !super::back_off(&mut delay, cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn run_remote(
        self: Arc<Self>,
        turn: RemoteTurn,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Result<TurnOutput, TurnError> {
        let req = &turn.request;
        let def = &req.definition;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let depth = req
            .env
            .iter()
            .find(|(k, _)| k == "VAULTRUNNER_DELEGATION_DEPTH")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let text = match serde_yaml::to_string(&def.meta) {
            Ok(yaml) => format!("---\n{yaml}---\n"),
            Err(e) => return Err(TurnError::Failed(format!("{}: {e}", def.path))),
        };
        let env = req
            .env
            .iter()
            .filter(|(k, _)| k != "VAULTRUNNER_BIN")
            .map(|(k, v)| match k.as_str() {
                "VAULTRUNNER_VAULT" => (k.clone(), self.opts.vault_url.clone()),
                "VAULTRUNNER_MESSAGE" => (k.clone(), turn.path.clone()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        let request = Request {
            v: PROTOCOL,
            path: turn.path.clone(),
            attempt: turn.attempt,
            agent: def.name.clone(),
            token: token.clone(),
            definition: DefinitionSource {
                path: def.path.clone(),
                text,
            },
            prompt: req.prompt.clone(),
            message: req.message.clone(),
            system_prompt: req.system_prompt.clone(),
            session: req.session.clone(),
            timeout_ms: u64::try_from(req.timeout.as_millis()).unwrap_or(u64::MAX),
            stall_ms: u64::try_from(req.stall.as_millis()).unwrap_or(u64::MAX),
            history: req
                .history
                .iter()
                .map(|x| (x.user.clone(), x.assistant.clone()))
                .collect(),
            env,
            vault_url: self.opts.vault_url.clone(),
        };
        let payload = match serde_json::to_vec(&request) {
            Ok(p) => Bytes::from(p),
            Err(e) => return Err(TurnError::Failed(format!("the turn request: {e}"))),
        };
        let msg_id = request.msg_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.lock();
            // A result of this message's earlier attempt that came in with
            // nobody waiting (a restart): the turn ran; adopt it.
            if let Some((r, _, _)) = st.orphans.get(&turn.path)
                && r.attempt < turn.attempt
                && let Some((r, acker, _)) = st.orphans.remove(&turn.path)
            {
                tracing::info!(
                    "{}: adopting the result of attempt {} from {}",
                    turn.path,
                    r.attempt,
                    r.worker
                );
                st.sticky.insert(def.name.clone(), r.worker.clone());
                st.inflight.insert(
                    turn.path.clone(),
                    Entry {
                        agent: def.name.clone(),
                        attempt: turn.attempt,
                        token,
                        depth,
                        done: None,
                        acker: Some(acker),
                        events,
                        runner: Some(r.worker.clone()),
                        target: None,
                        payload,
                        msg_id,
                        counted: false,
                    },
                );
                return outcome(r.outcome);
            }
            st.inflight.insert(
                turn.path.clone(),
                Entry {
                    agent: def.name.clone(),
                    attempt: turn.attempt,
                    token,
                    depth,
                    done: Some(tx),
                    acker: None,
                    events,
                    runner: None,
                    target: None,
                    payload: payload.clone(),
                    msg_id: msg_id.clone(),
                    counted: false,
                },
            );
        }
        // Wait for the streams and a cluster-wide slot.
        let mut turns = self.turns.clone();
        tokio::select! {
            r = turns.wait_for(Option::is_some) => if r.is_err() { return Err(TurnError::Cancelled) },
            _ = cancel.cancelled() => return Err(TurnError::Cancelled),
        }
        let ticket = {
            let mut st = self.lock();
            let t = st.next_ticket;
            st.next_ticket += 1;
            st.waiters.insert(t);
            t
        };
        // Gives the ticket back if this turn stops waiting (shutdown).
        let _queued = Ticket(self.clone(), ticket);
        let target = loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut st = self.lock();
                let now = Instant::now();
                if st.dispatched < self.capacity(&st, now) && st.waiters.first() == Some(&ticket) {
                    st.waiters.remove(&ticket);
                    st.dispatched += 1;
                    let target = if sticky_backend(&def.backend) {
                        st.sticky
                            .get(&def.name)
                            .filter(|w| st.live(w, now))
                            .cloned()
                    } else {
                        None
                    };
                    if let Some(e) = st.inflight.get_mut(&turn.path) {
                        e.counted = true;
                        e.target = target.clone();
                    }
                    drop(st);
                    // The next in line may take a slot left free.
                    self.wake.notify_waiters();
                    break target;
                }
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                _ = cancel.cancelled() => return Err(TurnError::Cancelled),
            }
        };
        let subject = target
            .as_deref()
            .map(worker_subject)
            .unwrap_or_else(|| SUBJECT_ANY.to_string());
        let Some(seq) = self.publish(&subject, &msg_id, payload, &cancel).await else {
            return Err(TurnError::Cancelled);
        };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        self.lock().by_seq.insert(seq, turn.path.clone());
        tracing::debug!("{}: published to {subject} (seq {seq})", turn.path);
        tokio::select! {
            r = rx => r.unwrap_or(Err(TurnError::Cancelled)),
            _ = cancel.cancelled() => Err(TurnError::Cancelled),
        }
    }

    fn on_result(&self, r: TurnResult, acker: Acker) {
        let mut st = self.lock();
        let path = r.path.clone();
        let waiting = st.inflight.get(&path).map(|e| e.done.is_some());
        match waiting {
            Some(true) => {
                st.release_slot(&path);
                let Some(e) = st.inflight.get_mut(&path) else {
                    return;
                };
                e.acker = Some(acker);
                e.runner = Some(r.worker.clone());
                let done = e.done.take();
                let agent = e.agent.clone();
                st.sticky.insert(agent, r.worker.clone());
                if let Some(tx) = done {
                    let _ = tx.send(outcome(r.outcome));
                }
                drop(st);
                self.wake.notify_waiters();
            }
            Some(false) => {
                // A second run's result for a message whose result is in.
                drop(st);
                self.ignore(&r, acker, "its result is in already");
            }
            None => match st.orphans.entry(path) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    drop(st);
                    self.ignore(&r, acker, "a result of it is kept already");
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    tracing::debug!("{}: a result with nobody waiting; kept for a while", r.path);
                    v.insert((r, acker, Instant::now()));
                }
            },
        }
    }

    fn ignore(&self, r: &TurnResult, acker: Acker, why: &str) {
        self.counters
            .results_ignored
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            "{}: result of attempt {} from {} ignored: {why}",
            r.path,
            r.attempt,
            r.worker
        );
        tokio::spawn(async move {
            let _ = acker.ack().await;
        });
    }

    async fn results_loop(
        self: Arc<Self>,
        results: jetstream::stream::Stream,
        cancel: CancellationToken,
    ) {
        let mut consumer = None;
        let mut logged = false;
        while !cancel.is_cancelled() {
            let c = match &consumer {
                Some(c) => c,
                None => match super::consumer(&results, NODE_CONSUMER, SUBJECT_RESULTS).await {
                    Ok(c) => consumer.insert(c),
                    Err(e) => {
                        tracing::warn!("cluster: results consumer: {e}");
                        pause(&cancel).await;
                        continue;
                    }
                },
            };
            let batch = c
                .batch()
                .max_messages(64)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    if !logged {
                        tracing::warn!("cluster: cannot pull results ({e}); retrying");
                        logged = true;
                    }
                    pause(&cancel).await;
                    continue;
                }
            };
            logged = false;
            loop {
                // Bounded: a pull sent just before a disconnect is never
                // answered by the server that comes back.
                let next = tokio::select! {
                    n = tokio::time::timeout(Duration::from_millis(1500), batch.next()) => n,
                    _ = cancel.cancelled() => return,
                };
                let Ok(Some(m)) = next else { break };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("cluster: results: {e}");
                        break;
                    }
                };
                let (msg, acker) = m.split();
                match decode::<TurnResult>("result", &msg.payload) {
                    Ok(r) => self.on_result(r, acker),
                    Err(why) => {
                        tracing::warn!("cluster: {SUBJECT_RESULTS}: {why}; dropped");
                        self.counters
                            .results_ignored
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = acker.ack().await;
                    }
                }
            }
        }
    }

    /// Follows the workers' heartbeats every second; moves requests of a
    /// sticky worker that is gone; lets go of results kept too long.
    async fn heartbeats_loop(
        self: Arc<Self>,
        turns: jetstream::stream::Stream,
        cancel: CancellationToken,
    ) {
        // The bucket's puts, as they happen: a plain subscription to its
        // subjects, so reading heartbeats makes no consumer (a `keys()`
        // pass a second did, and could hang under load, ageing every
        // worker out). A worker beats every 2 s, within the node's first
        // 4 s of start checks that wait.
        let prefix = format!("$KV.{}.", super::WORKERS);
        let mut sub = loop {
            match self.client.subscribe(format!("{prefix}>")).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("cluster: heartbeats: {e}");
                    pause(&cancel).await;
                    if cancel.is_cancelled() {
                        return;
                    }
                }
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut beats: Vec<(String, u64, Bytes)> = Vec::new();
        let mut gone_now: Vec<String> = Vec::new();
        let mut revision = 0u64;
        while !cancel.is_cancelled() {
            tokio::select! {
                m = sub.next() => {
                    let Some(m) = m else { return };
                    let Some(key) = m.subject.as_str().strip_prefix(&prefix) else { continue };
                    let deleted = m.headers.as_ref().and_then(|h| h.get("KV-Operation")).is_some();
                    if deleted {
                        gone_now.push(key.to_string());
                    } else {
                        revision += 1;
                        beats.push((key.to_string(), revision, m.payload));
                    }
                    continue;
                }
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            let beats = std::mem::take(&mut beats);
            for key in std::mem::take(&mut gone_now) {
                // Stopped on purpose: gone now, not in 10 s.
                if let Some(w) = self.lock().workers.get_mut(&key) {
                    w.at = Instant::now()
                        .checked_sub(HEARTBEAT_TTL)
                        .unwrap_or_else(Instant::now);
                }
            }
            let now = Instant::now();
            let mut moves = Vec::new();
            let mut cleanups = Vec::new();
            let mut expired = Vec::new();
            {
                let mut st = self.lock();
                for (key, revision, value) in beats {
                    let (hb, compatible) = match decode::<Heartbeat>("heartbeat", &value) {
                        Ok(hb) => (hb, true),
                        Err(why) => {
                            if st.warned.insert(key.clone()) {
                                tracing::warn!(
                                    "cluster: worker {key}: {why}; its turns are not counted"
                                );
                            }
                            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&value) else {
                                continue;
                            };
                            let hb = Heartbeat {
                                v: 0,
                                id: key.clone(),
                                host: v.get("host").and_then(|h| h.as_str()).unwrap_or("?").into(),
                                jobs: 0,
                                running: Vec::new(),
                                version: v
                                    .get("version")
                                    .and_then(|h| h.as_str())
                                    .unwrap_or("?")
                                    .into(),
                                at: String::new(),
                            };
                            (hb, false)
                        }
                    };
                    let fresh = st.workers.get(&key).is_none_or(|w| w.revision != revision);
                    if fresh {
                        if !st.workers.contains_key(&key) {
                            tracing::info!(
                                "cluster: worker {key} on {} ({} jobs)",
                                hb.host,
                                hb.jobs
                            );
                        }
                        st.cleaned.remove(&key);
                        st.workers.insert(
                            key,
                            Seen {
                                hb,
                                revision,
                                at: now,
                                compatible,
                            },
                        );
                    }
                }
                let gone: Vec<String> = st
                    .workers
                    .keys()
                    .filter(|id| !st.live(id, now))
                    .cloned()
                    .collect();
                for id in gone {
                    if st.cleaned.insert(id.clone()) {
                        tracing::warn!(
                            "cluster: worker {id} is gone (no heartbeat for {HEARTBEAT_TTL:?})"
                        );
                        cleanups.push(id.clone());
                    }
                    let forget = st
                        .workers
                        .get(&id)
                        .is_some_and(|w| now.saturating_duration_since(w.at) > HEARTBEAT_TTL * 30);
                    if forget {
                        st.workers.remove(&id);
                    }
                }
                let dead: Vec<String> = st
                    .inflight
                    .values()
                    .filter_map(|e| e.target.clone())
                    .filter(|t| !st.live(t, now))
                    .collect();
                for (path, e) in st.inflight.iter_mut() {
                    if e.done.is_some() && e.target.as_ref().is_some_and(|t| dead.contains(t)) {
                        e.target = None;
                        moves.push((path.clone(), format!("{}#any", e.msg_id), e.payload.clone()));
                    }
                }
                st.sticky.retain(|_, w| !dead.contains(w));
                let old: Vec<String> = st
                    .orphans
                    .iter()
                    .filter(|(_, (_, _, at))| now.saturating_duration_since(*at) > ORPHAN_KEEP)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in old {
                    if let Some(o) = st.orphans.remove(&p) {
                        expired.push(o);
                    }
                }
            }
            self.wake.notify_waiters();
            for (r, acker, _) in expired {
                self.ignore(&r, acker, "no message in flight took it");
            }
            for (path, id, payload) in moves {
                tracing::info!("{path}: its sticky worker is gone; sent to any worker");
                if let Some(seq) = self.publish(SUBJECT_ANY, &id, payload, &cancel).await {
                    self.lock().by_seq.insert(seq, path);
                }
            }
            for id in cleanups {
                let _ = turns.purge().filter(worker_subject(&id)).await;
                let _ = turns.delete_consumer(&worker_consumer(&id)).await;
            }
        }
    }

    /// Serves a core subject: start checks, live events, give-ups.
    async fn serve_subject(self: Arc<Self>, subject: &'static str, cancel: CancellationToken) {
        let mut sub = loop {
            match self.client.subscribe(subject).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!("cluster: subscribe {subject}: {e}");
                    pause(&cancel).await;
                    if cancel.is_cancelled() {
                        return;
                    }
                }
            }
        };
        loop {
            let m = tokio::select! {
                m = sub.next() => m,
                _ = cancel.cancelled() => return,
            };
            let Some(m) = m else { return };
            match subject {
                SUBJECT_START => {
                    let answer = match decode::<StartAsk>("start check", &m.payload) {
                        Ok(ask) => self.decide(&ask),
                        Err(why) => {
                            tracing::warn!("cluster: {SUBJECT_START}: {why}");
                            StartAnswer::Drop { reason: why }
                        }
                    };
                    if let (Some(reply), Ok(body)) = (m.reply, serde_json::to_vec(&answer)) {
                        let _ = self.client.publish(reply, body.into()).await;
                    }
                }
                SUBJECT_EVENTS => match decode::<EventMsg>("event", &m.payload) {
                    Ok(ev) => self.relay(ev),
                    Err(why) => tracing::debug!("cluster: {SUBJECT_EVENTS}: {why}"),
                },
                _ => self.gave_up(&m.payload),
            }
        }
    }

    /// The start check (docs/cluster.md, "A turn, step by step").
    pub fn decide(&self, ask: &StartAsk) -> StartAnswer {
        let now = Instant::now();
        let mut st = self.lock();
        // Just started: a run a previous vault node started of a message
        // it recovered (claimed again, so past its first attempt) may not
        // show in the heartbeats yet. A message first claimed by this node
        // cannot be running anywhere else.
        let recovered = st.inflight.get(&ask.path).is_some_and(|e| e.attempt > 1);
        if recovered
            && st
                .ready_at
                .is_none_or(|at| now.saturating_duration_since(at) < LISTENING)
        {
            return StartAnswer::Wait;
        }
        let busy_elsewhere = st.workers.iter().any(|(id, w)| {
            id != &ask.worker && st.live(id, now) && w.hb.running.contains(&ask.path)
        });
        let runner_live = st
            .inflight
            .get(&ask.path)
            .and_then(|e| e.runner.clone())
            .filter(|r| r != &ask.worker && st.live(r, now));
        let Some(e) = st.inflight.get_mut(&ask.path) else {
            return StartAnswer::Drop {
                reason: "not in flight at the vault node: answered already, or not its message"
                    .into(),
            };
        };
        if e.done.is_none() {
            return StartAnswer::Drop {
                reason: "its result is in already".into(),
            };
        }
        if runner_live.is_some() || busy_elsewhere {
            return StartAnswer::Wait;
        }
        if ask.attempt != e.attempt {
            tracing::debug!(
                "{}: a copy of attempt {} starts for attempt {}",
                ask.path,
                ask.attempt,
                e.attempt
            );
        }
        if e.runner.as_ref().is_some_and(|r| r != &ask.worker) {
            self.counters.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        e.runner = Some(ask.worker.clone());
        StartAnswer::Run
    }

    fn relay(&self, ev: EventMsg) {
        if matches!(ev.event, TurnEvent::Done { .. } | TurnEvent::Error { .. }) {
            return; // the pipeline sends the last event itself
        }
        let st = self.lock();
        if let Some(e) = st.inflight.get(&ev.path)
            && e.done.is_some()
        {
            e.events.emit(ev.event);
        }
    }

    /// JetStream gave a request up after `MaxDeliver` deliveries.
    fn gave_up(&self, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let Some(seq) = v.get("stream_seq").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let mut st = self.lock();
        let Some(path) = st.by_seq.remove(&seq) else {
            return;
        };
        st.release_slot(&path);
        let done = st.inflight.get_mut(&path).and_then(|e| e.done.take());
        drop(st);
        if let Some(tx) = done {
            tracing::warn!(
                "{path}: delivered {} times and no worker finished it",
                super::MAX_DELIVER
            );
            let _ = tx.send(Err(TurnError::Failed(super::gave_up())));
            self.wake.notify_waiters();
        }
        let turns = self.turns.borrow().clone();
        if let Some(t) = turns {
            tokio::spawn(async move {
                let _ = t.delete_message(seq).await;
            });
        }
    }

    /// The agent and delegation depth of the turn in flight that holds
    /// `token` (a `send` from inside a worker's turn).
    pub fn turn_of_token(&self, token: &str) -> Option<(String, u64)> {
        let st = self.lock();
        st.inflight
            .values()
            .find(|e| !token.is_empty() && e.token == token)
            .map(|e| (e.agent.clone(), e.depth))
    }

    /// The workers, for `/health` and `status`.
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = Instant::now();
        let st = self.lock();
        let mut v: Vec<WorkerView> = st
            .workers
            .iter()
            .map(|(id, w)| WorkerView {
                id: id.clone(),
                host: w.hb.host.clone(),
                jobs: w.hb.jobs,
                running: w.hb.running.clone(),
                version: w.hb.version.clone(),
                last_heartbeat_secs: now.saturating_duration_since(w.at).as_secs(),
                live: st.live(id, now),
                compatible: w.compatible,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Turns in flight (published, not answered) and the bound now.
    pub fn load(&self) -> (usize, usize) {
        let st = self.lock();
        (st.dispatched, self.capacity(&st, Instant::now()))
    }

    pub fn url(&self) -> &str {
        &self.opts.url
    }
}

/// A turn's place in the line for a cluster-wide slot, given back when
/// it is dropped.
struct Ticket(Arc<Node>, u64);

impl Drop for Ticket {
    fn drop(&mut self) {
        let removed = self.0.lock().waiters.remove(&self.1);
        if removed {
            self.0.wake.notify_waiters();
        }
    }
}

fn outcome(o: Outcome) -> Result<TurnOutput, TurnError> {
    match o {
        Outcome::Ok {
            reply,
            session,
            usage,
        } => Ok(TurnOutput {
            reply,
            session,
            usage,
        }),
        Outcome::Error {
            timeout_ms: Some(ms),
            ..
        } => Err(TurnError::Timeout(Duration::from_millis(ms))),
        Outcome::Error { message, .. } => Err(TurnError::Failed(message)),
    }
}

async fn pause(cancel: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        _ = cancel.cancelled() => {}
    }
}

impl Remote for Arc<Node> {
    fn run(
        &self,
        turn: RemoteTurn,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Result<TurnOutput, TurnError>> + Send>> {
        Box::pin(self.clone().run_remote(turn, events, cancel))
    }

    fn recorded(&self, path: &str) {
        let mut st = self.lock();
        st.release_slot(path);
        if let Some(e) = st.inflight.remove(path) {
            st.by_seq.retain(|_, p| p != path);
            if let Some(acker) = e.acker {
                tokio::spawn(async move {
                    let _ = acker.ack().await;
                });
            }
        }
        drop(st);
        self.wake.notify_waiters();
    }
}
