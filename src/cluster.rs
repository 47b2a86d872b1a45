//! Beyond one machine (SPEC §8, [docs/cluster.md]): turns run on workers
//! over NATS JetStream, while the vault node stays the vault's one writer
//! and dispatcher.
//!
//! This file holds what both sides share: the names of the streams,
//! consumers, subjects and the heartbeat bucket, the messages on the wire
//! (JSON, protocol [`PROTOCOL`]), the connection (credentials from the
//! environment only) and the idempotent set-up of the streams. The vault
//! node is [`node::Node`] (a [`crate::turn::Remote`]); the worker is
//! [`worker::run`].
//!
//! [docs/cluster.md]: ../../docs/cluster.md

use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

use crate::backend::{TurnEvent, Usage};

pub mod node;
pub mod worker;

/// The version of the messages below. A message of another version is
/// logged and left for a peer that reads it.
pub const PROTOCOL: u32 = 1;

/// The work-queue stream of turn requests.
pub const TURNS: &str = "VAULTRUNNER_TURNS";
/// The stream of results the vault node consumes.
pub const RESULTS: &str = "VAULTRUNNER_RESULTS";
/// The KV bucket of worker heartbeats.
pub const WORKERS: &str = "vaultrunner-workers";
/// Requests any worker may take.
pub const SUBJECT_ANY: &str = "vaultrunner.turns.any";
/// Prefix of the requests for one worker (sticky sessions).
pub const SUBJECT_WORKER: &str = "vaultrunner.turns.worker";
pub const SUBJECT_RESULTS: &str = "vaultrunner.results";
/// The start check (core request/reply, answered by the vault node).
pub const SUBJECT_START: &str = "vaultrunner.start";
/// Live events of running turns (core).
pub const SUBJECT_EVENTS: &str = "vaultrunner.events";
/// JetStream's advisory when a request reached `MaxDeliver`.
pub const ADVISORY_MAX_DELIVERIES: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.VAULTRUNNER_TURNS.*";
/// The workers' shared consumer.
pub const SHARED_CONSUMER: &str = "workers";
/// The vault node's consumer of results.
pub const NODE_CONSUMER: &str = "vault-node";

/// Deliveries of a request that may run. A worker that gets one more
/// delivery than this runs nothing: it answers with the failure result
/// [`gave_up`], through the results stream like any result, so the give-up
/// is as durable as a turn's end. The consumers' `MaxDeliver` is one more
/// still (JetStream's own bound; its advisory is the vault node's backstop).
pub const MAX_DELIVER: i64 = 3;

/// Why a message whose request was delivered [`MAX_DELIVER`] times without
/// a result ends with a failure reply.
pub fn gave_up() -> String {
    format!(
        "the turn was handed to workers {MAX_DELIVER} times and none finished it (each died or stopped mid-turn); send the message again to retry"
    )
}
/// How often a worker says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// A worker not heard from for this long is gone.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How long JetStream deduplicates a re-published message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a result nobody waits for is kept (a restarted vault node may
/// be recovering that very message).
pub const ORPHAN_KEEP: Duration = Duration::from_secs(120);

/// `AckWait` of the request and result consumers: 30 s, or
/// `VAULTRUNNER_CLUSTER_ACK_WAIT_MS` (for tests; both sides must agree, and
/// a consumer that exists keeps the value it was created with).
pub fn ack_wait() -> Duration {
    std::env::var("VAULTRUNNER_CLUSTER_ACK_WAIT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.clamp(500, 600_000)))
        .unwrap_or(Duration::from_secs(30))
}

/// How often a running turn's request gets an in-progress ack: a third of
/// [`ack_wait`].
pub fn progress_every() -> Duration {
    ack_wait() / 3
}

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("--cluster {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("--id {id:?}: {reason}")]
    Id { id: String, reason: String },
    #[error("{0}")]
    Io(String),
}

fn nats(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// Checks a `--cluster` URL: `nats://`, `tls://` (or a bare `host:port`),
/// with no user or password in it (a command line shows in `ps`).
pub fn check_url(url: &str) -> Result<(), ClusterError> {
    let bad = |reason: &str| ClusterError::Url {
        url: scrub(url),
        reason: reason.to_string(),
    };
    let u = url.trim();
    if u.is_empty() {
        return Err(bad("empty"));
    }
    for part in u.split(',') {
        let rest = match part.split_once("://") {
            Some((scheme, rest)) => {
                if !matches!(
                    scheme.to_ascii_lowercase().as_str(),
                    "nats" | "tls" | "ws" | "wss"
                ) {
                    return Err(bad("the scheme must be nats:// or tls://"));
                }
                rest
            }
            None => part,
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad(
                "credentials do not belong on the command line (it shows in `ps`): set NATS_TOKEN, NATS_USER and NATS_PASSWORD, NATS_NKEY or NATS_CREDS instead",
            ));
        }
        if authority.is_empty() {
            return Err(bad("no host"));
        }
    }
    Ok(())
}

/// The URL with any user and password replaced by `***`.
fn scrub(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let (scheme, rest) = part.split_once("://").unwrap_or(("", part));
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => authority.to_string(),
            };
            if scheme.is_empty() {
                format!("{authority}{path}")
            } else {
                format!("{scheme}://{authority}{path}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects to NATS with the credentials the environment names
/// (`NATS_CREDS`, `NATS_NKEY`, `NATS_TOKEN`, `NATS_USER` + `NATS_PASSWORD`,
/// `NATS_CA`). The client reconnects by itself for ever, and a server that
/// is down at start is waited for.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClusterError> {
    check_url(url)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(|ev| async move {
            match ev {
                async_nats::Event::Connected => tracing::info!("NATS: connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS: disconnected; reconnecting")
                }
                other => tracing::debug!("NATS: {other}"),
            }
        });
    if let Some(path) = env("NATS_CREDS") {
        opts = opts
            .credentials_file(&path)
            .await
            .map_err(|e| ClusterError::Io(format!("NATS_CREDS {path}: {e}")))?;
    }
    if let Some(path) = env("NATS_NKEY") {
        let seed = std::fs::read_to_string(&path)
            .map_err(|e| ClusterError::Io(format!("NATS_NKEY {path}: {e}")))?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if let Some(token) = env("NATS_TOKEN") {
        opts = opts.token(token);
    }
    if let (Some(user), Some(pass)) = (env("NATS_USER"), env("NATS_PASSWORD")) {
        opts = opts.user_and_password(user, pass);
    }
    if let Some(ca) = env("NATS_CA") {
        opts = opts.add_root_certificates(ca.into());
    }
    opts.connect(url.trim()).await.map_err(nats)
}

/// Creates the streams and the heartbeat bucket when they are missing, and
/// returns them as they are otherwise (either side may start first).
pub async fn ensure(
    js: &jetstream::Context,
) -> Result<
    (
        jetstream::stream::Stream,
        jetstream::stream::Stream,
        jetstream::kv::Store,
    ),
    ClusterError,
> {
    use jetstream::stream::{Config, RetentionPolicy, StorageType};
    // A work queue on file storage, deduplicating re-published ids.
    let work_queue = |name: &str, subjects: Vec<String>| Config {
        name: name.into(),
        subjects,
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    let turns = js
        .get_or_create_stream(work_queue(
            TURNS,
            vec![SUBJECT_ANY.into(), format!("{SUBJECT_WORKER}.*")],
        ))
        .await
        .map_err(nats)?;
    let results = js
        .get_or_create_stream(work_queue(RESULTS, vec![SUBJECT_RESULTS.into()]))
        .await
        .map_err(nats)?;
    // The bucket's stream made as `create_key_value` makes it, without
    // its account query, whose answer async-nats cannot read from a 2.9
    // server.
    js.get_or_create_stream(Config {
        name: format!("KV_{WORKERS}"),
        subjects: vec![format!("$KV.{WORKERS}.>")],
        max_messages_per_subject: 1,
        max_age: HEARTBEAT_TTL,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(nats)?;
    let kv = js.get_key_value(WORKERS).await.map_err(nats)?;
    Ok((turns, results, kv))
}

/// One publish of `payload` to `subject` with the message id `msg_id`,
/// waiting (5 s at most) for JetStream's ack. Callers retry with the same
/// id, so a publish whose ack was lost is deduplicated by the stream.
pub async fn publish_once(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: bytes::Bytes,
) -> Result<jetstream::publish::PublishAck, String> {
    let msg = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(msg_id);
    tokio::time::timeout(Duration::from_secs(5), async {
        js.send_publish(subject.to_string(), msg)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("no answer in 5 s".into()))
}

/// Waits `delay` before the next try, then doubles it (5 s at most).
/// False when `cancel` comes first (shutdown).
pub async fn back_off(delay: &mut Duration, cancel: &tokio_util::sync::CancellationToken) -> bool {
    let waited = tokio::select! {
        _ = tokio::time::sleep(*delay) => true,
        _ = cancel.cancelled() => false,
    };
    *delay = (*delay * 2).min(Duration::from_secs(5));
    waited
}

/// A durable explicit-ack pull consumer on `stream` for `filter`.
pub async fn consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    filter: &str,
) -> Result<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>, ClusterError> {
    stream
        .get_or_create_consumer(
            name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: filter.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ack_wait(),
                max_deliver: MAX_DELIVER + 1,
                ..Default::default()
            },
        )
        .await
        .map_err(nats)
}

/// A worker's sticky subject.
pub fn worker_subject(id: &str) -> String {
    format!("{SUBJECT_WORKER}.{id}")
}

/// A worker's sticky consumer.
pub fn worker_consumer(id: &str) -> String {
    format!("worker-{id}")
}

/// Checks a worker id: 1 to 64 letters, digits, `-` and `_` (it is a NATS
/// subject token and a consumer name).
pub fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Id {
            id: id.to_string(),
            reason: "1 to 64 letters, digits, `-` and `_`".into(),
        })
    }
}

/// The definition note a worker builds the backend from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DefinitionSource {
    pub path: String,
    pub text: String,
}

/// A turn request (published to [`TURNS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub v: u32,
    pub path: String,
    pub attempt: u64,
    pub agent: String,
    /// The turn's capability for `send` through the vault node's HTTP API.
    pub token: String,
    pub definition: DefinitionSource,
    pub prompt: String,
    pub message: String,
    pub system_prompt: String,
    pub session: Option<String>,
    pub timeout_ms: u64,
    pub stall_ms: u64,
    /// Earlier exchanges (user, assistant), oldest first.
    pub history: Vec<(String, String)>,
    /// SPEC §4's environment, as the vault node sets it.
    pub env: Vec<(String, String)>,
    /// The vault node's HTTP API (`VAULTRUNNER_VAULT` inside the turn).
    pub vault_url: String,
}

impl Request {
    /// The JetStream message id: a re-publish of the same attempt is
    /// deduplicated.
    pub fn msg_id(&self) -> String {
        format!("{}#{}", self.path, self.attempt)
    }
}

/// What a turn produced, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        reply: String,
        session: Option<String>,
        usage: Usage,
    },
    Error {
        message: String,
        /// Set when the turn timed out after this many milliseconds.
        timeout_ms: Option<u64>,
    },
}

/// A turn's result (published to [`RESULTS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TurnResult {
    pub v: u32,
    pub path: String,
    pub attempt: u64,
    pub worker: String,
    pub outcome: Outcome,
}

/// A worker's heartbeat (the value of its key in [`WORKERS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    pub v: u32,
    pub id: String,
    pub host: String,
    pub jobs: usize,
    /// The messages it runs now.
    pub running: Vec<String>,
    /// Its release (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When it sent this, RFC 3339 (its clock).
    pub at: String,
}

/// A worker's question before it runs a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StartAsk {
    pub v: u32,
    pub path: String,
    pub attempt: u64,
    pub worker: String,
}

/// The vault node's answer to a [`StartAsk`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum StartAnswer {
    /// Run it: the message is in flight and nobody else runs it.
    Run,
    /// Keep it and ask again: another live worker runs it.
    Wait,
    /// Ack it away: the message is answered, or unknown here.
    Drop { reason: String },
}

/// A live event of a running turn (core subject [`SUBJECT_EVENTS`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventMsg {
    pub v: u32,
    pub path: String,
    pub attempt: u64,
    pub event: TurnEvent,
}

/// Reads a message of the protocol, saying what is wrong with it.
pub fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Versioned {
        v: Option<u32>,
    }
    match serde_json::from_slice::<Versioned>(bytes) {
        Ok(Versioned { v: Some(PROTOCOL) }) => {}
        Ok(Versioned { v: Some(v) }) => {
            return Err(format!(
                "a {what} of protocol {v}; this vaultrunner speaks protocol {PROTOCOL} (run the same release on every machine)"
            ));
        }
        Ok(Versioned { v: None }) => return Err(format!("not a vaultrunner {what}: no `v`")),
        Err(e) => return Err(format!("not a vaultrunner {what}: {e}")),
    }
    serde_json::from_slice(bytes).map_err(|e| format!("a malformed {what}: {e}"))
}

/// Is this decode error about another protocol version (a peer that can
/// read it may exist)?
pub fn other_version(why: &str) -> bool {
    why.contains(" of protocol ")
}

/// This machine's name, for heartbeats.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_credentials_is_refused_and_names_the_variables() {
        let e = check_url("nats://alice:secret@127.0.0.1:4222")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NATS_TOKEN"), "{e}");
        assert!(!e.contains("secret") && !e.contains("alice"), "{e}");
        assert!(e.contains("command line"), "{e}");
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("tls://a:4222,tls://b:4222").is_ok());
        assert!(check_url("127.0.0.1:4222").is_ok());
        assert!(check_url("http://127.0.0.1:4222").is_err());
        assert!(check_url("nats://").is_err());
        assert!(check_url(" ").is_err());
    }

    #[test]
    fn ids_are_subject_tokens() {
        assert!(check_id("box-1_a").is_ok());
        for bad in ["", "a.b", "a b", "a*", ">", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_of_another_protocol_or_malformed_are_named() {
        let r = TurnResult {
            v: PROTOCOL,
            path: "Inbox/a.md".into(),
            attempt: 1,
            worker: "w".into(),
            outcome: Outcome::Ok {
                reply: "hi".into(),
                session: None,
                usage: Usage::default(),
            },
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode::<TurnResult>("result", &bytes).unwrap(), r);
        let other = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":1", "\"v\":2");
        let e = decode::<TurnResult>("result", other.as_bytes()).unwrap_err();
        assert!(other_version(&e), "{e}");
        let e = decode::<TurnResult>("result", b"{\"v\":1,\"path\":3}").unwrap_err();
        assert!(e.contains("malformed") && !other_version(&e), "{e}");
        let e = decode::<TurnResult>("result", b"\xff\x00").unwrap_err();
        assert!(e.contains("not a vaultrunner result"), "{e}");
        let e = decode::<TurnResult>("result", b"{}").unwrap_err();
        assert!(e.contains("no `v`"), "{e}");
    }

    #[test]
    fn answers_and_events_read_back() {
        for a in [
            StartAnswer::Run,
            StartAnswer::Wait,
            StartAnswer::Drop {
                reason: "done".into(),
            },
        ] {
            let s = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<StartAnswer>(&s).unwrap(), a);
        }
        let ev = EventMsg {
            v: PROTOCOL,
            path: "p".into(),
            attempt: 2,
            event: TurnEvent::Tool {
                name: "Bash".into(),
                input: serde_json::json!({"command": "ls"}),
            },
        };
        let s = serde_json::to_vec(&ev).unwrap();
        assert_eq!(decode::<EventMsg>("event", &s).unwrap(), ev);
    }
}
