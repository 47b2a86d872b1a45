//! A cluster worker (`vaultrunner worker --cluster URL`): pulls turn
//! requests, asks the vault node before it starts one, runs the backend
//! here (API keys are read from this machine's environment), publishes the
//! result to JetStream, and only then acks the request. It has no vault
//! and writes no note.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, message::Acker};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    ClusterError, EventMsg, HEARTBEAT_EVERY, Heartbeat, Outcome, PROTOCOL, Request,
    SHARED_CONSUMER, SUBJECT_ANY, SUBJECT_EVENTS, SUBJECT_RESULTS, SUBJECT_START, StartAnswer,
    StartAsk, TurnResult, decode, other_version, worker_consumer, worker_subject,
};
use crate::backend::{self, EventSink, Exchange, TurnError, TurnOutput, TurnRequest};

/// `vaultrunner worker`'s settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub url: String,
    /// Turns run at once.
    pub jobs: usize,
    /// `--id`, default `<host>-<pid>`.
    pub id: String,
    /// Per-agent workspaces of this worker (`--state`).
    pub state_dir: PathBuf,
}

impl WorkerOptions {
    /// The default id: `<host>-<pid>`, made a valid subject token.
    pub fn default_id() -> String {
        let host: String = super::hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(48)
            .collect();
        format!("{host}-{}", std::process::id())
    }

    /// `$XDG_STATE_HOME/vaultrunner/worker`, or
    /// `~/.local/state/vaultrunner/worker`.
    pub fn default_state_dir() -> PathBuf {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        match (var("XDG_STATE_HOME"), var("HOME")) {
            (Some(x), _) => PathBuf::from(x).join("vaultrunner/worker"),
            (None, Some(h)) => PathBuf::from(h).join(".local/state/vaultrunner/worker"),
            (None, None) => std::env::temp_dir().join("vaultrunner-worker"),
        }
    }
}

struct Worker {
    client: async_nats::Client,
    /// The requests' stream, for its own consumer made again.
    own_stream: jetstream::stream::Stream,
    js: jetstream::Context,
    opts: WorkerOptions,
    host: String,
    running: Mutex<BTreeSet<String>>,
    cancel: CancellationToken,
}

/// Runs a worker until `cancel` (SIGTERM, Ctrl-C): running turns are cut
/// short and their requests handed back for another worker.
pub async fn run(opts: WorkerOptions, cancel: CancellationToken) -> Result<(), ClusterError> {
    super::check_id(&opts.id)?;
    let client = super::connect(&opts.url, &format!("vaultrunner worker {}", opts.id)).await?;
    let js = jetstream::new(client.clone());
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    let (stream, (shared, own), kv) = loop {
        let set_up = async {
            let (turns, _, kv) = super::ensure(&js).await?;
            let shared = super::consumer(&turns, SHARED_CONSUMER, SUBJECT_ANY).await?;
            let own = super::consumer(
                &turns,
                &worker_consumer(&opts.id),
                &worker_subject(&opts.id),
            )
            .await?;
            Ok::<_, ClusterError>((turns, (shared, own), kv))
        };
        match set_up.await {
            Ok(s) => break s,
            Err(e) => {
                if !logged {
                    tracing::warn!("worker: cannot set up yet ({e}); retrying");
                    logged = true;
                }
                if !super::back_off(&mut delay, &cancel).await {
                    return Ok(());
                }
            }
        }
    };
    let w = Arc::new(Worker {
        client,
        own_stream: stream,
        js,
        host: super::hostname(),
        opts,
        running: Mutex::new(BTreeSet::new()),
        cancel: cancel.clone(),
    });
    tracing::info!(
        "worker {} ready on {} ({} jobs)",
        w.opts.id,
        w.opts.url,
        w.opts.jobs
    );
    let beat = tokio::spawn(w.clone().heartbeats(kv.clone()));
    let tasks = tokio_util::task::TaskTracker::new();
    let slots = Arc::new(Semaphore::new(w.opts.jobs.max(1)));
    let mut own = own;
    while !cancel.is_cancelled() {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = cancel.cancelled() => break,
        };
        // Its own (sticky) requests first, without waiting; then any.
        let mut got = match next(&own, None).await {
            Ok(m) => m,
            Err(e) => {
                // Deleted by a vault node that took this worker for gone
                // (it was away longer than the heartbeat TTL): made again.
                tracing::debug!("worker: its own consumer: {e}");
                if let Ok(c) = super::consumer(
                    &w.own_stream,
                    &worker_consumer(&w.opts.id),
                    &worker_subject(&w.opts.id),
                )
                .await
                {
                    own = c;
                }
                None
            }
        };
        if got.is_none() {
            got = tokio::select! {
                m = next(&shared, Some(Duration::from_millis(500))) => m.unwrap_or_else(|e| {
                    tracing::debug!("worker: pull: {e}");
                    None
                }),
                _ = cancel.cancelled() => break,
            };
        }
        let Some(m) = got else {
            continue;
        };
        let w = w.clone();
        tasks.spawn(async move {
            w.take(m).await;
            drop(permit);
        });
    }
    tasks.close();
    // Turns see the same cancellation and hand their requests back.
    let _ = tokio::time::timeout(
        backend::process::KILL_GRACE.saturating_add(Duration::from_secs(5)),
        tasks.wait(),
    )
    .await;
    beat.abort();
    let _ = kv.delete(&w.opts.id).await;
    tracing::info!("worker {} stopped", w.opts.id);
    Ok(())
}

/// One request of `consumer`, waiting up to `wait` (`None`: only what is
/// there now).
async fn next(
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    wait: Option<Duration>,
) -> Result<Option<jetstream::Message>, String> {
    // A pull request sent just before a disconnect is forgotten by the
    // server: its answer never comes, so the wait is bounded here too.
    let bound = wait
        .unwrap_or_default()
        .saturating_add(Duration::from_secs(1));
    let pulled = tokio::time::timeout(bound, async {
        let batch = match wait {
            Some(d) => consumer.batch().max_messages(1).expires(d).messages().await,
            None => consumer.fetch().max_messages(1).messages().await,
        };
        match batch {
            Ok(mut b) => Ok(b.next().await),
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap_or(Ok(None));
    match pulled {
        Ok(Some(Ok(m))) => Ok(Some(m)),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Err(e.to_string())
        }
    }
}

impl Worker {
    async fn heartbeats(self: Arc<Self>, kv: jetstream::kv::Store) {
        loop {
            let hb = Heartbeat {
                v: PROTOCOL,
                id: self.opts.id.clone(),
                host: self.host.clone(),
                jobs: self.opts.jobs,
                running: self
                    .running
                    .lock()
                    .map(|r| r.iter().cloned().collect())
                    .unwrap_or_default(),
                version: env!("CARGO_PKG_VERSION").into(),
                at: crate::turn::now_rfc3339(),
            };
            if let Ok(body) = serde_json::to_vec(&hb)
                && let Err(e) = kv.put(&self.opts.id, body.into()).await
            {
                tracing::debug!("worker: heartbeat: {e}");
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    }

    /// Takes one request: checks it, asks the vault node, runs it,
    /// publishes its result, acks it.
    async fn take(&self, m: jetstream::Message) {
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        let (msg, acker) = m.split();
        let req = match decode::<Request>("turn request", &msg.payload) {
            Ok(r) => r,
            Err(why) if other_version(&why) => {
                tracing::error!("worker: {why}; handed back for another worker");
                let _ = acker
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                return;
            }
            Err(why) => {
                tracing::error!("worker: {why}; dropped");
                let _ = acker.ack_with(AckKind::Term).await;
                return;
            }
        };
        if delivered > 1 {
            tracing::info!("{}: delivered again ({delivered})", req.path);
        }
        if delivered > super::MAX_DELIVER {
            // Each earlier delivery's worker died or stopped mid-turn.
            tracing::warn!("{}: {}", req.path, super::gave_up());
            let result = TurnResult {
                v: PROTOCOL,
                path: req.path.clone(),
                attempt: req.attempt,
                worker: self.opts.id.clone(),
                outcome: Outcome::Error {
                    message: super::gave_up(),
                    timeout_ms: None,
                },
            };
            if self.publish_result(&result, &acker).await {
                let _ = acker.ack().await;
            }
            return;
        }
        // Ask before running; keep the request alive while waiting.
        loop {
            let local = self
                .running
                .lock()
                .map(|r| r.contains(&req.path))
                .unwrap_or(false);
            let answer = if local {
                StartAnswer::Wait
            } else {
                self.ask(&req).await
            };
            match answer {
                StartAnswer::Run => break,
                StartAnswer::Drop { reason } => {
                    tracing::info!("{}: not run: {reason}", req.path);
                    let _ = acker.ack().await;
                    return;
                }
                StartAnswer::Wait => {
                    let _ = acker.ack_with(AckKind::Progress).await;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.cancel.cancelled() => {
                            let _ = acker.ack_with(AckKind::Nak(None)).await;
                            return;
                        }
                    }
                }
            }
        }
        if let Ok(mut r) = self.running.lock() {
            r.insert(req.path.clone());
        }
        let result = self.run_turn(&req, &acker).await;
        if let Ok(mut r) = self.running.lock() {
            r.remove(&req.path);
        }
        let outcome = match result {
            Err(TurnError::Cancelled) => {
                // Shutdown: hand it back at once, for another worker.
                let _ = acker.ack_with(AckKind::Nak(None)).await;
                return;
            }
            Ok(out) => Outcome::Ok {
                reply: out.reply,
                session: out.session,
                usage: out.usage,
            },
            Err(TurnError::Timeout(d)) => Outcome::Error {
                message: TurnError::Timeout(d).to_string(),
                timeout_ms: Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            Err(e) => Outcome::Error {
                message: e.to_string(),
                timeout_ms: None,
            },
        };
        let result = TurnResult {
            v: PROTOCOL,
            path: req.path.clone(),
            attempt: req.attempt,
            worker: self.opts.id.clone(),
            outcome,
        };
        if self.publish_result(&result, &acker).await {
            let _ = acker.ack().await;
        }
    }

    async fn ask(&self, req: &Request) -> StartAnswer {
        let ask = StartAsk {
            v: PROTOCOL,
            path: req.path.clone(),
            attempt: req.attempt,
            worker: self.opts.id.clone(),
        };
        let Ok(body) = serde_json::to_vec(&ask) else {
            return StartAnswer::Wait;
        };
        match self.client.request(SUBJECT_START, body.into()).await {
            Ok(m) => match serde_json::from_slice::<StartAnswer>(&m.payload) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("worker: the vault node's answer: {e}");
                    StartAnswer::Wait
                }
            },
            // No vault node now (restarting): keep the request and ask again.
            Err(e) => {
                tracing::debug!("{}: start check: {e}", req.path);
                StartAnswer::Wait
            }
        }
    }

    /// Publishes the result until JetStream has it (in-progress acks keep
    /// the request meanwhile). False on shutdown: the request is handed
    /// back instead.
    async fn publish_result(&self, r: &TurnResult, acker: &Acker) -> bool {
        let Ok(body) = serde_json::to_vec(r) else {
            return false;
        };
        let id = format!("{}#{}", r.path, r.attempt);
        let mut delay = Duration::from_millis(100);
        loop {
            let sent =
                super::publish_once(&self.js, SUBJECT_RESULTS, &id, body.clone().into()).await;
            match sent {
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!("{}: cannot publish the result ({e}); retrying", r.path);
                    let _ = acker.ack_with(AckKind::Progress).await;
                    if !super::back_off(&mut delay, &self.cancel).await {
                        let _ = acker.ack_with(AckKind::Nak(None)).await;
                        return false;
                    }
                }
            }
        }
    }

    async fn run_turn(&self, req: &Request, acker: &Acker) -> Result<TurnOutput, TurnError> {
        let note = crate::note::Note::parse(&req.definition.text).map_err(|e| {
            TurnError::Failed(format!(
                "{}: on worker {}: {e}",
                req.definition.path, self.opts.id
            ))
        })?;
        let def = crate::agent::parse_definition(&req.definition.path, &note, backend::KINDS)
            .map_err(|e| TurnError::Failed(format!("on worker {}: {e}", self.opts.id)))?;
        let def = Arc::new(def);
        let b = backend::for_definition(&def)?;
        let timeout = Duration::from_millis(req.timeout_ms);
        let mut env: Vec<(String, String)> = req.env.clone();
        env.push(("VAULTRUNNER_WORKER".into(), self.opts.id.clone()));
        env.push(("VAULTRUNNER_TURN_TOKEN".into(), req.token.clone()));
        env.push(("VAULTRUNNER_BIN".into(), crate::turn::vaultrunner_bin()));
        let workspace = workspace(def.workspace.as_deref(), &self.opts.state_dir, &def.name);
        if let Err(e) = std::fs::create_dir_all(&workspace) {
            return Err(TurnError::Failed(format!(
                "on worker {}: workspace {}: {e}",
                self.opts.id,
                workspace.display()
            )));
        }
        let turn = TurnRequest {
            definition: def.clone(),
            prompt: req.prompt.clone(),
            message: req.message.clone(),
            system_prompt: req.system_prompt.clone(),
            session: req.session.clone(),
            workspace,
            env,
            timeout,
            deadline: crate::time::after(timeout),
            stall: Duration::from_millis(req.stall_ms),
            history: req
                .history
                .iter()
                .map(|(u, a)| Exchange {
                    user: u.clone(),
                    assistant: a.clone(),
                })
                .collect(),
            mcp_config: None,
            attachments: Vec::new(),
        };
        // Live events go to the vault node over a core subject.
        let (tx, mut rx) = tokio::sync::broadcast::channel(256);
        let events = EventSink::new(tx, &def.name, "", &req.path);
        let (client, path, attempt) = (self.client.clone(), req.path.clone(), req.attempt);
        let relay = tokio::spawn(async move {
            while let Ok(ev) = rx.recv().await {
                let msg = EventMsg {
                    v: PROTOCOL,
                    path: path.clone(),
                    attempt,
                    event: ev.event,
                };
                if let Ok(body) = serde_json::to_vec(&msg) {
                    let _ = client.publish(SUBJECT_EVENTS, body.into()).await;
                }
            }
        });
        let policy = backend::RetryPolicy::for_definition(&def);
        let grace = backend::process::KILL_GRACE.saturating_add(Duration::from_secs(5));
        let run = backend::run_with_retries(b.as_ref(), &turn, &events, &self.cancel, policy);
        let run = tokio::time::timeout_at(crate::time::later(turn.deadline, grace), run);
        tokio::pin!(run);
        let mut progress = tokio::time::interval(super::progress_every());
        progress.tick().await;
        let result = loop {
            tokio::select! {
                r = &mut run => break r.unwrap_or(Err(TurnError::Timeout(timeout))),
                _ = progress.tick() => {
                    let _ = acker.ack_with(AckKind::Progress).await;
                }
            }
        };
        relay.abort();
        match result {
            Err(_) if self.cancel.is_cancelled() => Err(TurnError::Cancelled),
            r => r,
        }
    }
}

/// Where a turn runs on this worker: the definition's `workspace` when it
/// is an absolute or `~/` path that exists here, else a folder of the
/// worker's own for the agent.
pub fn workspace(configured: Option<&str>, state_dir: &Path, agent: &str) -> PathBuf {
    let own = state_dir.join("agents").join(agent);
    let Some(w) = configured.map(str::trim).filter(|w| !w.is_empty()) else {
        return own;
    };
    let path = if let Some(rest) = w.strip_prefix("~/") {
        match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(rest),
            None => return own,
        }
    } else {
        PathBuf::from(w)
    };
    if path.is_absolute() && path.is_dir() {
        path
    } else {
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_is_the_definitions_when_it_exists_here_else_the_workers_own() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let own = state.join("agents").join("a");
        assert_eq!(workspace(None, &state, "a"), own);
        assert_eq!(workspace(Some("  "), &state, "a"), own);
        // Relative to the vault: a folder of the vault node's disk.
        assert_eq!(workspace(Some("work/a"), &state, "a"), own);
        let there = tmp.path().join("repo");
        std::fs::create_dir(&there).unwrap();
        let w = there.display().to_string();
        assert_eq!(workspace(Some(&w), &state, "a"), there);
        let missing = tmp.path().join("nope").display().to_string();
        assert_eq!(workspace(Some(&missing), &state, "a"), own);
    }

    #[test]
    fn the_default_id_is_a_valid_subject_token() {
        let id = WorkerOptions::default_id();
        super::super::check_id(&id).unwrap();
        assert!(id.ends_with(&std::process::id().to_string()));
    }
}
