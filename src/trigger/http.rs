//! The HTTP trigger (SPEC §5): an API to send messages and watch turns,
//! webhooks, health and metrics. Every message is written to the vault
//! durably (fsynced) before any 2xx answer, so a crash right after the
//! answer loses nothing.
//!
//! Security: with `VAULTRUNNER_TOKEN` set, `/api` and `/hooks` need
//! `Authorization: Bearer <token>` (compared in constant time); a webhook
//! is also accepted with a valid `X-Hub-Signature-256` (HMAC-SHA256 over
//! the raw body with `VAULTRUNNER_WEBHOOK_SECRET`), since senders like
//! GitHub cannot send a bearer token. The live event stream takes the
//! bearer header, or a short-lived single-use ticket in the URL (for
//! browsers' `EventSource`, which cannot set headers) so the long-lived
//! token never goes into a URL. Every error body is `{"error": "…"}`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::agent::valid_name;
use crate::engine::{DURATION_BUCKETS, Engine};
use crate::message::{SendOptions, inbound_text, new_message_path, reply_of};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long an event-stream ticket is valid.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Longest `?wait=`.
pub const MAX_WAIT_SECS: u64 = 3600;

/// Credentials and settings of the HTTP trigger.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `VAULTRUNNER_TOKEN`.
    pub token: Option<String>,
    /// `VAULTRUNNER_WEBHOOK_SECRET`.
    pub webhook_secret: Option<String>,
}

impl HttpOptions {
    /// From the environment (empty values count as unset).
    pub fn from_env() -> Self {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        HttpOptions {
            token: get("VAULTRUNNER_TOKEN"),
            webhook_secret: get("VAULTRUNNER_WEBHOOK_SECRET"),
        }
    }
}

/// Why the HTTP trigger cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to listen on {0} without VAULTRUNNER_TOKEN: anyone who can reach it could run your agents. Set VAULTRUNNER_TOKEN, or listen on 127.0.0.1"
    )]
    NoTokenBeyondLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks the rule "listening beyond loopback needs a token".
pub fn check_listen(addr: SocketAddr, opts: &HttpOptions) -> Result<(), HttpError> {
    if !addr.ip().is_loopback() && opts.token.is_none() {
        return Err(HttpError::NoTokenBeyondLoopback(addr));
    }
    Ok(())
}

struct AppState {
    engine: Arc<Engine>,
    opts: HttpOptions,
    cancel: CancellationToken,
    /// ticket → (agent, issued at).
    tickets: Mutex<HashMap<String, (String, Instant)>>,
}

type St = State<Arc<AppState>>;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

/// An error answer: a status and the text of `{"error": "…"}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Constant-time comparison (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(t.trim().as_bytes(), token.as_bytes()))
}

/// `Ok` if the API may be used with these headers.
fn api_auth(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &state.opts.token {
        None => Ok(()),
        Some(t) if bearer_ok(headers, t) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials: send Authorization: Bearer <VAULTRUNNER_TOKEN>".into(),
        )),
    }
}

/// Verifies `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn signature_ok(secret: &str, body: &[u8], header_value: &str) -> bool {
    let Some(hex) = header_value.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Some(sig) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        )
    })
}

fn known_agent(state: &AppState, name: &str) -> Result<(), ApiError> {
    let known = valid_name(name) && state.engine.with_index(|ix| ix.agent(name).is_some());
    if known {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown agent {name:?}: no definition with that name"),
        ))
    }
}

async fn health(State(state): St) -> Response {
    let agents: Vec<Value> = state
        .engine
        .agent_states()
        .iter()
        .map(|a| json!({"name": a.definition.name, "state": a.state, "queued": a.queued}))
        .collect();
    axum::Json(json!({"status": "ok", "agents": agents})).into_response()
}

async fn list_agents(State(state): St, headers: HeaderMap) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    let agents: Vec<Value> = state
        .engine
        .agent_states()
        .iter()
        .map(|a| {
            let d = &a.definition;
            json!({
                "name": d.name,
                "path": d.path,
                "backend": d.backend,
                "mode": d.mode.as_str(),
                "model": d.model,
                "enabled": d.enabled,
                "state": a.state,
                "queued": a.queued,
            })
        })
        .collect();
    axum::Json(json!({ "agents": agents })).into_response()
}

#[derive(Deserialize)]
struct MessageBody {
    content: Option<String>,
    subject: Option<String>,
    sender: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct WaitQuery {
    wait: Option<u64>,
    subject: Option<String>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// Reads the body of `POST /api/agents/{name}/messages`: JSON
/// (`{"content", "subject"?, "sender"?, "reply_to"?, "correlation_id"?}`)
/// or plain text. Returns the message and its options, or why the body is
/// refused (a `400`). Pure, so it can be fuzzed.
pub fn message_from_body(json: bool, bytes: &[u8]) -> Result<(String, SendOptions), String> {
    let (content, opts) = if json {
        let m: MessageBody =
            serde_json::from_slice(bytes).map_err(|e| format!("bad JSON body: {e}"))?;
        let Some(content) = m.content else {
            return Err("bad JSON body: field `content` is missing".into());
        };
        (
            content,
            SendOptions {
                subject: m.subject,
                reply_to: m.reply_to,
                correlation_id: m.correlation_id,
                sender: m.sender,
                delegation_depth: None,
            },
        )
    } else {
        match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_string(), SendOptions::default()),
            Err(_) => return Err("the body is not UTF-8 text".into()),
        }
    };
    if let Some(r) = &opts.reply_to
        && !valid_name(r)
    {
        return Err(format!("field `reply_to`: {r:?} is not a valid agent name"));
    }
    if let Some(s) = &opts.sender
        && (s.trim().is_empty() || s.len() > 200 || s.chars().any(char::is_control))
    {
        return Err("field `sender`: must be a short single line".into());
    }
    if crate::queue::written_by_vaultrunner(opts.sender.as_deref()) {
        return Err("field `sender`: cli, webhook:…, job:…, callback:… and agent:… are vaultrunner's own senders".into());
    }
    Ok((content, opts))
}

/// Writes the message note durably, then (with `wait`) waits for its reply.
async fn deliver(
    state: &AppState,
    agent: &str,
    content: &str,
    opts: SendOptions,
    wait: Option<u64>,
) -> Response {
    let path = new_message_path(agent);
    let text = inbound_text(agent, content, &opts);
    // Subscribe before writing so a fast reply cannot be missed.
    let mut finished = state.engine.finished();
    let engine = state.engine.clone();
    let p = path.clone();
    let written = tokio::task::spawn_blocking(move || engine.write_note(&p, &text)).await;
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!("{path}: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not write the message: {e}"),
            );
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not write the message: {e}"),
            );
        }
    }
    let Some(secs) = wait else {
        return (StatusCode::ACCEPTED, axum::Json(json!({ "path": path }))).into_response();
    };
    let secs = secs.min(MAX_WAIT_SECS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(r) = reply_of(state.engine.vault(), &path) {
            return axum::Json(json!({
                "status": r.status,
                "reply": r.text,
                "path": path,
                "reply_path": r.path,
            }))
            .into_response();
        }
        tokio::select! {
            got = finished.recv() => match got {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down; the message is kept and will be answered after a restart"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return (StatusCode::GATEWAY_TIMEOUT, axum::Json(json!({
                    "error": format!("no reply within {secs} s; the message is kept and will still be answered"),
                    "path": path,
                }))).into_response();
            }
            _ = state.cancel.cancelled() => {
                return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down; the message is kept and will be answered after a restart");
            }
        }
    }
}

async fn post_message(
    State(state): St,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let (content, mut opts) = match message_from_body(is_json(&headers), &bytes) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if opts.subject.is_none() {
        opts.subject = q.subject.clone();
    }
    opts.sender = Some(opts.sender.unwrap_or_else(|| "http".into()));
    deliver(&state, &name, &content, opts, q.wait).await
}

async fn reset_agent(State(state): St, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let engine = state.engine.clone();
    let n = name.clone();
    match tokio::task::spawn_blocking(move || crate::message::reset_threads(engine.vault(), &n))
        .await
    {
        Ok(Ok(threads)) => axum::Json(json!({"agent": name, "threads": threads})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn events_ticket(State(state): St, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let ticket = uuid::Uuid::new_v4().simple().to_string();
    let mut t = state.tickets.lock().unwrap_or_else(|p| p.into_inner());
    t.retain(|_, (_, at)| at.elapsed() < TICKET_TTL);
    t.insert(ticket.clone(), (name, Instant::now()));
    axum::Json(json!({"ticket": ticket, "expires_in": TICKET_TTL.as_secs()})).into_response()
}

#[derive(Deserialize, Default)]
struct TicketQuery {
    ticket: Option<String>,
}

async fn events(
    State(state): St,
    Path(name): Path<String>,
    Query(q): Query<TicketQuery>,
    headers: HeaderMap,
) -> Response {
    let by_ticket = q.ticket.as_deref().is_some_and(|t| {
        let mut tickets = state.tickets.lock().unwrap_or_else(|p| p.into_inner());
        matches!(tickets.remove(t), Some((agent, at)) if agent == name && at.elapsed() < TICKET_TTL)
    });
    if !by_ticket && let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let rx = state.engine.subscribe();
    let cancel = state.cancel.clone();
    Sse::new(event_stream(rx, name, cancel))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The live events of one agent, ending at shutdown.
fn event_stream(
    rx: tokio::sync::broadcast::Receiver<crate::backend::AgentEvent>,
    agent: String,
    cancel: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold((rx, agent, cancel), |(mut rx, agent, cancel)| async move {
        loop {
            let got = tokio::select! {
                r = rx.recv() => r,
                _ = cancel.cancelled() => return None,
            };
            match got {
                Ok(ev) if ev.agent == agent => {
                    let kind = match &ev.event {
                        crate::backend::TurnEvent::Text { .. } => "text",
                        crate::backend::TurnEvent::Tool { .. } => "tool",
                        crate::backend::TurnEvent::ToolResult { .. } => "tool_result",
                        crate::backend::TurnEvent::Done { .. } => "done",
                        crate::backend::TurnEvent::Error { .. } => "error",
                    };
                    let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
                    return Some((
                        Ok(Event::default().event(kind).data(data)),
                        (rx, agent, cancel),
                    ));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string());
                    return Some((Ok(ev), (rx, agent, cancel)));
                }
                Err(_) => return None,
            }
        }
    })
}

/// The webhook message: JSON pretty-printed in a code block (readable in
/// the note), text as it is.
pub fn webhook_message(bytes: &[u8]) -> Result<String, String> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
        return Ok(format!("```json\n{pretty}\n```\n"));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| "the body is neither JSON nor UTF-8 text".to_string())
}

async fn webhook(
    State(state): St,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let bytes = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let signed = match (
        &state.opts.webhook_secret,
        headers.get("x-hub-signature-256"),
    ) {
        (Some(secret), Some(sig)) => sig.to_str().is_ok_and(|s| signature_ok(secret, &bytes, s)),
        _ => false,
    };
    let open = state.opts.token.is_none() && state.opts.webhook_secret.is_none();
    let bearer = state
        .opts
        .token
        .as_deref()
        .is_some_and(|t| bearer_ok(&headers, t));
    if !(signed || bearer || open) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials: sign the body (X-Hub-Signature-256) or send Authorization: Bearer",
        );
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let content = match webhook_message(&bytes) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let subject = q.subject.clone().or_else(|| {
        headers
            .get("x-github-event")
            .and_then(|v| v.to_str().ok())
            .map(|e| format!("github {e}"))
    });
    let opts = SendOptions {
        subject,
        sender: Some(format!("webhook:{name}")),
        ..Default::default()
    };
    deliver(&state, &name, &content, opts, q.wait).await
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(state): St) -> Response {
    use std::fmt::Write;
    let m = state.engine.metrics.snapshot();
    let agents = state.engine.agent_states();
    let notes = state.engine.with_index(|ix| ix.len());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP vaultrunner_turns_total Turns run, by agent and outcome."
    );
    let _ = writeln!(out, "# TYPE vaultrunner_turns_total counter");
    for ((agent, status), n) in &m.turns {
        let _ = writeln!(
            out,
            "vaultrunner_turns_total{{agent=\"{}\",status=\"{status}\"}} {n}",
            escape_label(agent)
        );
    }
    let _ = writeln!(
        out,
        "# HELP vaultrunner_turn_duration_seconds Turn duration."
    );
    let _ = writeln!(out, "# TYPE vaultrunner_turn_duration_seconds histogram");
    for (agent, (buckets, sum, count)) in &m.durations {
        let a = escape_label(agent);
        for (b, n) in DURATION_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(
                out,
                "vaultrunner_turn_duration_seconds_bucket{{agent=\"{a}\",le=\"{b}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "vaultrunner_turn_duration_seconds_bucket{{agent=\"{a}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "vaultrunner_turn_duration_seconds_sum{{agent=\"{a}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "vaultrunner_turn_duration_seconds_count{{agent=\"{a}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP vaultrunner_queue_depth Messages waiting, by agent."
    );
    let _ = writeln!(out, "# TYPE vaultrunner_queue_depth gauge");
    for a in &agents {
        let _ = writeln!(
            out,
            "vaultrunner_queue_depth{{agent=\"{}\"}} {}",
            escape_label(&a.definition.name),
            a.queued
        );
    }
    let _ = writeln!(out, "# HELP vaultrunner_notes_indexed Notes in the index.");
    let _ = writeln!(out, "# TYPE vaultrunner_notes_indexed gauge");
    let _ = writeln!(out, "vaultrunner_notes_indexed {notes}");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The router, for tests and for [`run`].
pub fn router(engine: Arc<Engine>, opts: HttpOptions, cancel: CancellationToken) -> Router {
    let state = Arc::new(AppState {
        engine,
        opts,
        cancel,
        tickets: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/agents", get(list_agents))
        .route("/api/agents/{name}/messages", post(post_message))
        .route("/api/agents/{name}/reset", post(reset_agent))
        .route("/api/agents/{name}/events", get(events))
        .route("/api/agents/{name}/events/ticket", post(events_ticket))
        .route("/hooks/{name}", post(webhook))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .with_state(state)
}

/// Serves HTTP on `listener` until `cancel`; in-flight requests finish and
/// event streams end.
pub async fn run(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    opts: HttpOptions,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router(engine, opts, cancel.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        // HMAC-SHA256("It's a Secret to Everybody", "Hello, World!") from
        // GitHub's webhook documentation.
        let body = b"Hello, World!";
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok("It's a Secret to Everybody", body, sig));
        assert!(!signature_ok("wrong", body, sig));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            body,
            "sha1=abc"
        ));
        assert!(!signature_ok(
            "It's a Secret to Everybody",
            body,
            "sha256=zz"
        ));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn listen_rule() {
        let none = HttpOptions::default();
        assert!(check_listen("127.0.0.1:7420".parse().unwrap(), &none).is_ok());
        assert!(check_listen("[::1]:7420".parse().unwrap(), &none).is_ok());
        assert!(check_listen("0.0.0.0:7420".parse().unwrap(), &none).is_err());
        let tok = HttpOptions {
            token: Some("t".into()),
            webhook_secret: None,
        };
        assert!(check_listen("0.0.0.0:7420".parse().unwrap(), &tok).is_ok());
    }
}
