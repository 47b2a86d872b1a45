//! The HTTP trigger (SPEC §5): an API to send messages and watch turns,
//! webhooks, health and metrics, and the status page at `/` with the
//! `/api/status` it polls (`page`, SPEC §9). Every message is written to the vault
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
//!
//! Without a token the API is open to local programs, but not to web
//! pages: a guard refuses (403) a request with a foreign `Origin`, a
//! `Sec-Fetch-Site` other than `same-origin`/`none`, or a `Host` that does
//! not name the listening address (DNS rebinding). Every connection is
//! bounded in time (headers, body, idle keep-alive) and the number of
//! connections is capped from the descriptor limit, so no client can hold
//! the descriptors that note reads and turns need (SPEC §5). See
//! `docs/http.md`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
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
/// Default of [`HttpOptions::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`HttpOptions::body_timeout`].
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// `VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS` overrides [`HEADER_TIMEOUT`].
pub const HEADER_TIMEOUT_ENV: &str = "VAULTRUNNER_HTTP_HEADER_TIMEOUT_MS";
/// `VAULTRUNNER_HTTP_BODY_TIMEOUT_MS` overrides [`BODY_TIMEOUT`].
pub const BODY_TIMEOUT_ENV: &str = "VAULTRUNNER_HTTP_BODY_TIMEOUT_MS";
/// Longest timeout the environment may set, in milliseconds (one hour).
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Credentials and settings of the HTTP trigger.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `VAULTRUNNER_TOKEN`.
    pub token: Option<String>,
    /// `VAULTRUNNER_WEBHOOK_SECRET`.
    pub webhook_secret: Option<String>,
    /// `VAULTRUNNER_VAULT_WEBHOOK_SECRET`: the `?secret=` of a remote
    /// vault's trigger webhook (`POST /api/vault/inbound`).
    pub vault_webhook_secret: Option<String>,
    /// `VAULTRUNNER_GIT_WEBHOOK_SECRET`: the secret of the Git push
    /// webhook's `X-Hub-Signature-256` (`POST /hooks/git`).
    pub git_webhook_secret: Option<String>,
    /// How long a client has to send a request's headers, counted from
    /// the connection's opening or the end of its previous response. It
    /// bounds slow headers and idle keep-alive connections alike (hyper
    /// starts the clock when a connection goes idle).
    pub header_timeout: Duration,
    /// How long a client has to send a request's whole body once its
    /// handler starts reading it; then `408` and the connection closes.
    pub body_timeout: Duration,
    /// `serve --cluster`: the vault node, for `/health`, `/metrics` and
    /// `send` from inside workers' turns (`POST /api/cluster/send`).
    pub cluster: Option<Arc<crate::cluster::node::Node>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            token: None,
            webhook_secret: None,
            vault_webhook_secret: None,
            git_webhook_secret: None,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            cluster: None,
        }
    }
}

impl HttpOptions {
    /// From the environment (empty values count as unset). A timeout
    /// variable that does not parse keeps its default here, with a
    /// warning; [`check_env`] is the strict check `serve` makes first.
    pub fn from_env() -> Self {
        let get = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        let timeout = |var: &str, default: Duration| match env_timeout(var) {
            Ok(t) => t.unwrap_or(default),
            Err(e) => {
                tracing::warn!("{e}; using {default:?}");
                default
            }
        };
        HttpOptions {
            token: get("VAULTRUNNER_TOKEN"),
            webhook_secret: get("VAULTRUNNER_WEBHOOK_SECRET"),
            vault_webhook_secret: get("VAULTRUNNER_VAULT_WEBHOOK_SECRET"),
            git_webhook_secret: get("VAULTRUNNER_GIT_WEBHOOK_SECRET"),
            header_timeout: timeout(HEADER_TIMEOUT_ENV, HEADER_TIMEOUT),
            body_timeout: timeout(BODY_TIMEOUT_ENV, BODY_TIMEOUT),
            cluster: None,
        }
    }
}

/// A timeout from the environment: a whole number of milliseconds, 1 to
/// one hour. `Ok(None)` when unset or empty.
fn env_timeout(var: &str) -> Result<Option<Duration>, HttpError> {
    parse_timeout(var, std::env::var(var).ok())
}

fn parse_timeout(var: &str, value: Option<String>) -> Result<Option<Duration>, HttpError> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(HttpError::Setting {
            var: var.to_string(),
            value: v,
            reason: format!("must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}"),
        }),
    }
}

/// Checks the HTTP variables of the environment (the timeouts), so that
/// `serve` refuses to start on a value it cannot use.
pub fn check_env() -> Result<(), HttpError> {
    env_timeout(HEADER_TIMEOUT_ENV)?;
    env_timeout(BODY_TIMEOUT_ENV)?;
    Ok(())
}

/// Why the HTTP trigger cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "refusing to listen on {0} without VAULTRUNNER_TOKEN: anyone who can reach it could run your agents. Set VAULTRUNNER_TOKEN, or listen on 127.0.0.1"
    )]
    NoTokenBeyondLoopback(SocketAddr),
    #[error("{var}={value:?}: {reason}")]
    Setting {
        var: String,
        value: String,
        reason: String,
    },
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
    /// The names of this server, for the browser guard.
    guard: Guard,
    /// Seconds since `started` of the last refusal logged at `warn` (one
    /// a second, so a hostile page cannot flood the log).
    last_refusal_log: AtomicU64,
    started: Instant,
    /// Running turns' text so far, for the status page.
    live: Arc<super::page::Live>,
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

/// `Path<String>` whose rejection (a segment that is not UTF-8 once
/// percent-decoded) is a JSON `400`, like every other error.
struct PathName(String);

impl<S: Send + Sync> FromRequestParts<S> for PathName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(PathName(name)),
            Err(e) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("bad path: {}", e.body_text()),
            )),
        }
    }
}

/// `Query<T>` whose rejection (`?wait=abc`) is a JSON `400`.
struct QueryOf<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::try_from_uri(&parts.uri) {
            Ok(Query(q)) => Ok(QueryOf(q)),
            Err(e) => {
                let text = e.body_text();
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("bad query string: {why}"),
                ))
            }
        }
    }
}

/// The `Host` values that name this server: for a loopback listener, its
/// port on `localhost`, `127.0.0.1` and `[::1]` (and its own address, if
/// another loopback one); otherwise its address. Without the port as well
/// when it is 80.
#[derive(Debug, Clone)]
struct Guard {
    hosts: Vec<String>,
}

impl Guard {
    fn new(local: SocketAddr) -> Guard {
        let literal = match local.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        // The listening address first: error messages name it.
        let mut names = vec![literal];
        if local.ip().is_loopback() {
            for alias in ["localhost", "127.0.0.1", "[::1]"] {
                if !names.iter().any(|n| n == alias) {
                    names.push(alias.to_string());
                }
            }
        }
        let port = local.port();
        let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
        if port == 80 {
            hosts.extend(names);
        }
        Guard { hosts }
    }

    fn names_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Why a token-less request must be refused as coming from a web page
    /// that is not this server's own, or `None`. Programs that send no
    /// `Origin` and no `Sec-Fetch-Site` (curl, the CLI, webhook senders)
    /// pass as long as `Host` names this server.
    fn refusal(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        const HOW: &str = "without VAULTRUNNER_TOKEN only programs on this machine and pages served from this address may use the API; set VAULTRUNNER_TOKEN to use it through a proxy, a tunnel or another web page";
        let mut host: Option<&str> = None;
        let hosts = headers
            .get_all(header::HOST)
            .iter()
            .map(|v| v.to_str().ok())
            .chain(uri.authority().map(|a| Some(a.as_str())));
        for h in hosts {
            match h {
                Some(h) if self.names_host(h) => host = host.or(Some(h)),
                Some(h) => {
                    return Some(format!(
                        "Host {h:?} is not this server's address ({}): {HOW}",
                        self.hosts.first().map_or("", String::as_str)
                    ));
                }
                None => return Some(format!("the Host header is not text: {HOW}")),
            }
        }
        for o in headers.get_all(header::ORIGIN) {
            let o = o.to_str().unwrap_or("(not text)");
            let same = o.strip_prefix("http://").is_some_and(|rest| {
                self.names_host(rest) && host.is_none_or(|h| rest.eq_ignore_ascii_case(h))
            });
            if !same {
                return Some(format!("cross-origin request from {o:?} refused: {HOW}"));
            }
        }
        for v in headers.get_all("sec-fetch-site") {
            let v = v.to_str().unwrap_or("(not text)");
            if !(v.eq_ignore_ascii_case("same-origin") || v.eq_ignore_ascii_case("none")) {
                return Some(format!("Sec-Fetch-Site {v:?} refused: {HOW}"));
            }
        }
        None
    }
}

/// The browser guard (token-less servers only; with a token, the token
/// decides). A webhook that carries a signature passes when a webhook
/// secret is set: the handler then requires the signature to be valid,
/// which no web page can forge, and a sender behind a tunnel keeps working.
async fn browser_guard(State(state): St, req: Request, next: Next) -> Response {
    if state.opts.token.is_none() {
        let signed_hook = state.opts.webhook_secret.is_some()
            && req.uri().path().starts_with("/hooks/")
            && req.headers().contains_key("x-hub-signature-256");
        if !signed_hook && let Some(why) = state.guard.refusal(req.headers(), req.uri()) {
            let now = state.started.elapsed().as_secs().saturating_add(1);
            let last = state.last_refusal_log.swap(now, Ordering::Relaxed);
            if last != now {
                tracing::warn!(
                    "HTTP 403 for {} {:?}: {why}",
                    req.method(),
                    req.uri().path()
                );
            } else {
                tracing::debug!(
                    "HTTP 403 for {} {:?}: {why}",
                    req.method(),
                    req.uri().path()
                );
            }
            return error(StatusCode::FORBIDDEN, why);
        }
    }
    next.run(req).await
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

/// May a hook be used: its own secret proved (`secret_ok`), or the bearer
/// token sent, or — with neither a token nor that hook's secret set —
/// open like the rest of the API.
fn hook_allowed(
    state: &AppState,
    headers: &HeaderMap,
    secret: Option<&str>,
    secret_ok: bool,
) -> bool {
    let bearer = state
        .opts
        .token
        .as_deref()
        .is_some_and(|t| bearer_ok(headers, t));
    let open = state.opts.token.is_none() && secret.is_none();
    secret_ok || bearer || open
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

/// Is the body signed with `secret` (`X-Hub-Signature-256`)? No secret:
/// no.
fn signed_with(secret: Option<&str>, headers: &HeaderMap, body: &[u8]) -> bool {
    match (secret, headers.get("x-hub-signature-256")) {
        (Some(secret), Some(sig)) => sig.to_str().is_ok_and(|s| signature_ok(secret, body, s)),
        _ => false,
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

/// Why a body could not be read: an error answer that also closes the
/// connection (the rest of the body is not coming, or will not be read).
#[derive(Debug)]
struct BodyError(StatusCode, String);

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let mut r = error(self.0, self.1);
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    }
}

/// Reads a whole body: at most [`MAX_BODY`] bytes (`413`), within the body
/// timeout (`408`); a body the client breaks off is a `400`. On any error
/// the connection closes.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, BodyError> {
    let limit = state.opts.body_timeout;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                BodyError(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                )
            })?;
            if buf.len().saturating_add(chunk.len()) > MAX_BODY {
                return Err(BodyError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {MAX_BODY} bytes"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(BodyError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms; nothing was written",
                limit.as_millis()
            ),
        )),
    }
}

fn known_agent(state: &AppState, name: &str) -> Result<(), ApiError> {
    let (known, broken) = state.engine.with_index(|ix| {
        let known = valid_name(name) && ix.agent(name).is_some();
        (known, ix.broken_definition_of(name).map(|e| e.to_string()))
    });
    if known {
        return Ok(());
    }
    let why = match broken {
        // The agent is there but disabled by a mistake in its note: say
        // which, rather than that it does not exist.
        Some(e) => format!("agent {name:?} is disabled: its definition is broken: {e}"),
        None => format!("unknown agent {name:?}: no definition with that name"),
    };
    Err(ApiError(StatusCode::NOT_FOUND, why))
}

async fn health(State(state): St, headers: HeaderMap) -> Response {
    // A remote vault that cannot be reached: nothing is lost, turns wait.
    // A sync that is paused or backing off: turns go on, sent later.
    let vault = state.engine.vault().health().err();
    let sync = state.engine.vault().sync_status();
    let synced = sync
        .as_ref()
        .is_none_or(|s| s.state == crate::vault::SyncState::Ok);
    let status = if vault.is_some() || !synced {
        "degraded"
    } else {
        "ok"
    };
    // With a token, agent names are for those who hold it.
    if let Some(t) = &state.opts.token
        && !bearer_ok(&headers, t)
    {
        return axum::Json(json!({"status": status})).into_response();
    }
    let agents: Vec<Value> = state
        .engine
        .agent_states()
        .iter()
        .map(|a| json!({"name": a.definition.name, "state": a.state, "queued": a.queued}))
        .collect();
    let mut body = json!({"status": status, "agents": agents});
    if let (Some(why), Some(o)) = (vault, body.as_object_mut()) {
        o.insert("vault".into(), json!(why));
    }
    if let (Some(s), Some(o)) = (sync, body.as_object_mut()) {
        o.insert("git".into(), json!(s));
    }
    if let (Some(node), Some(o)) = (&state.opts.cluster, body.as_object_mut()) {
        let (in_flight, bound) = node.load();
        o.insert(
            "cluster".into(),
            json!({"url": node.url(), "in_flight": in_flight, "bound": bound}),
        );
        o.insert("workers".into(), json!(node.workers()));
    }
    axum::Json(body).into_response()
}

/// The Git push webhook (`POST /hooks/git`): upstream changed, pull soon
/// (calls within a second make one pull). Authenticated by
/// `X-Hub-Signature-256` with `VAULTRUNNER_GIT_WEBHOOK_SECRET`, or the
/// bearer token; the body is not read beyond the signature.
async fn git_hook(State(state): St, req: Request) -> Response {
    let headers = req.headers().clone();
    let bytes = match read_body(&state, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let signed = signed_with(state.opts.git_webhook_secret.as_deref(), &headers, &bytes);
    if !hook_allowed(
        &state,
        &headers,
        state.opts.git_webhook_secret.as_deref(),
        signed,
    ) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials: sign the body with VAULTRUNNER_GIT_WEBHOOK_SECRET (X-Hub-Signature-256) or send Authorization: Bearer",
        );
    }
    if !state.engine.vault().sync_soon() {
        return error(
            StatusCode::CONFLICT,
            "git sync is off: start serve with --git-sync to use this webhook",
        );
    }
    (StatusCode::ACCEPTED, axum::Json(json!({"ok": true}))).into_response()
}

#[derive(Deserialize)]
struct VaultHookQuery {
    secret: Option<String>,
}

/// The trigger webhook of a remote vault (`POST /api/vault/inbound`): the
/// vault says a note was created; it is read now, and a new message starts
/// its turn at once. A wake-up only: the poll stays the source of truth
/// (the vault never retries a delivery). Authenticated by `?secret=`
/// (`VAULTRUNNER_VAULT_WEBHOOK_SECRET`) or the bearer token; the answer is
/// `{"ok":true}` and nothing else (the vault would write more into the
/// note).
async fn vault_inbound(
    State(state): St,
    QueryOf(q): QueryOf<VaultHookQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let bytes = match read_body(&state, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let by_secret = match (&state.opts.vault_webhook_secret, &q.secret) {
        (Some(want), Some(got)) => ct_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    };
    if !hook_allowed(
        &state,
        &headers,
        state.opts.vault_webhook_secret.as_deref(),
        by_secret,
    ) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials: put ?secret=<VAULTRUNNER_VAULT_WEBHOOK_SECRET> in the trigger's URL, or send Authorization: Bearer",
        );
    }
    let path = match vault_hook_path(&bytes) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if crate::vault::check_rel_path(&path).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("field `note.path`: {path:?} is not a note path vaultrunner reads"),
        );
    }
    let engine = state.engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.note_changed(&path)).await;
    axum::Json(json!({"ok": true})).into_response()
}

/// The vault path of the note a trigger delivery names: `note.path`, or
/// `_id/<id>` for a note without one.
fn vault_hook_path(bytes: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("the body is not the vault's trigger JSON: {e}"))?;
    let note = v
        .get("note")
        .and_then(Value::as_object)
        .ok_or("field `note`: missing, or not an object")?;
    match (note.get("path"), note.get("id")) {
        (Some(Value::String(p)), _) if !p.trim().is_empty() => Ok(p.trim().to_string()),
        (_, Some(Value::String(id))) if !id.is_empty() && !id.contains('/') => {
            Ok(format!("_id/{id}"))
        }
        _ => Err("field `note`: neither a `path` nor an `id`".into()),
    }
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
    let deadline = tokio::time::sleep(Duration::from_secs(secs));
    let mut deadline = std::pin::pin!(deadline);
    loop {
        if let Some(r) = reply_of(&**state.engine.vault(), &path) {
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
            () = &mut deadline => {
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
    PathName(name): PathName,
    QueryOf(q): QueryOf<WaitQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let bytes = match read_body(&state, body).await {
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

#[derive(Deserialize)]
struct ClusterSend {
    token: String,
    agent: String,
    content: String,
    subject: Option<String>,
    reply_to: Option<String>,
    correlation_id: Option<String>,
}

/// `send` from inside a cluster worker's turn (docs/cluster.md): the
/// per-turn token of a turn in flight is the credential, and says which
/// agent sends and at what delegation depth.
async fn cluster_send(State(state): St, body: Body) -> Response {
    let Some(node) = state.opts.cluster.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this serve runs no cluster (start it with --cluster)",
        );
    };
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let m: ClusterSend = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    };
    let Some((from, depth)) = node.turn_of_token(&m.token) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "field `token`: no turn in flight holds this token (it is good only while its turn runs)",
        );
    };
    if let Err(why) = crate::agent::check_name(&m.agent) {
        return error(StatusCode::BAD_REQUEST, format!("field `agent`: {why}"));
    }
    if let Some(r) = &m.reply_to
        && let Err(why) = crate::agent::check_name(r)
    {
        return error(StatusCode::BAD_REQUEST, format!("field `reply_to`: {why}"));
    }
    if m.content.len() > MAX_BODY {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("field `content`: more than {} bytes", MAX_BODY),
        );
    }
    let opts = SendOptions {
        subject: m.subject,
        reply_to: m.reply_to,
        correlation_id: m.correlation_id,
        sender: Some(format!("agent:{from}")),
        delegation_depth: Some(depth.saturating_add(1)),
    };
    deliver(&state, &m.agent, &m.content, opts, None).await
}

async fn reset_agent(State(state): St, PathName(name): PathName, headers: HeaderMap) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    if let Err(r) = known_agent(&state, &name) {
        return r.into_response();
    }
    let engine = state.engine.clone();
    let n = name.clone();
    match tokio::task::spawn_blocking(move || crate::message::reset_threads(&**engine.vault(), &n))
        .await
    {
        Ok(Ok(threads)) => axum::Json(json!({"agent": name, "threads": threads})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn events_ticket(State(state): St, PathName(name): PathName, headers: HeaderMap) -> Response {
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
    PathName(name): PathName,
    QueryOf(q): QueryOf<TicketQuery>,
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
    PathName(name): PathName,
    QueryOf(q): QueryOf<WaitQuery>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let bytes = match read_body(&state, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let signed = signed_with(state.opts.webhook_secret.as_deref(), &headers, &bytes);
    if !hook_allowed(
        &state,
        &headers,
        state.opts.webhook_secret.as_deref(),
        signed,
    ) {
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

async fn metrics(State(state): St, headers: HeaderMap) -> Response {
    use std::fmt::Write;
    // Its labels name the agents, which are not public with a token set.
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
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
    if let Some(node) = &state.opts.cluster {
        let c = &node.counters;
        for (name, help, n) in [
            (
                "published",
                "Turn requests published to JetStream.",
                c.published.load(Ordering::Relaxed),
            ),
            (
                "redelivered",
                "Turn requests started again on another worker.",
                c.redelivered.load(Ordering::Relaxed),
            ),
            (
                "results_ignored",
                "Results ignored: a duplicate, or for no message in flight.",
                c.results_ignored.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP vaultrunner_cluster_{name}_total {help}");
            let _ = writeln!(out, "# TYPE vaultrunner_cluster_{name}_total counter");
            let _ = writeln!(out, "vaultrunner_cluster_{name}_total {n}");
        }
        let live = node.workers().iter().filter(|w| w.live).count();
        let (in_flight, bound) = node.load();
        for (name, help, n) in [
            ("workers", "Live workers.", live),
            (
                "in_flight",
                "Turns published and not answered yet.",
                in_flight,
            ),
            ("bound", "Turns the vault node lets run at once now.", bound),
        ] {
            let _ = writeln!(out, "# HELP vaultrunner_cluster_{name} {help}");
            let _ = writeln!(out, "# TYPE vaultrunner_cluster_{name} gauge");
            let _ = writeln!(out, "vaultrunner_cluster_{name} {n}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `GET /`: the status page (public: it names no agent; with a token set
/// it asks for it before it shows anything).
async fn status_page(State(state): St) -> Response {
    super::page::index(state.opts.token.is_some())
}

/// `GET /api/status`: what the status page shows.
async fn api_status(State(state): St, headers: HeaderMap) -> Response {
    if let Err(r) = api_auth(&state, &headers) {
        return r.into_response();
    }
    axum::Json(super::page::status(&state.engine, &state.live)).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The router, for tests and for [`run`]. `local` is the address it is
/// served on: without a token, requests must name it in `Host`.
pub fn router(
    engine: Arc<Engine>,
    opts: HttpOptions,
    cancel: CancellationToken,
    local: SocketAddr,
) -> Router {
    let live = super::page::Live::follow(&engine, cancel.clone());
    let state = Arc::new(AppState {
        engine,
        opts,
        cancel,
        live,
        tickets: Mutex::new(HashMap::new()),
        guard: Guard::new(local),
        last_refusal_log: AtomicU64::new(0),
        started: Instant::now(),
    });
    Router::new()
        .route("/", get(status_page))
        .route(
            super::page::JS_PATH,
            get(|| async { super::page::script() }),
        )
        .route(
            super::page::CSS_PATH,
            get(|| async { super::page::stylesheet() }),
        )
        .route("/api/status", get(api_status))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/agents", get(list_agents))
        .route("/api/agents/{name}/messages", post(post_message))
        .route("/api/agents/{name}/reset", post(reset_agent))
        .route("/api/agents/{name}/events", get(events))
        .route("/api/agents/{name}/events/ticket", post(events_ticket))
        .route("/hooks/git", post(git_hook))
        .route("/hooks/{name}", post(webhook))
        .route("/api/vault/inbound", post(vault_inbound))
        .route("/api/cluster/send", post(cluster_send))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        // After the routes and fallbacks, so it guards them all.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser_guard,
        ))
        .with_state(state)
}

/// The most connections served at once: a quarter of the soft descriptor
/// limit (`RLIMIT_NOFILE`), between 4 and 4096, so at least three
/// quarters stay for note reads, writes and turns whatever clients do.
pub fn max_connections() -> usize {
    cap_for(nofile_limit().unwrap_or(1024))
}

fn cap_for(soft_limit: u64) -> usize {
    usize::try_from((soft_limit / 4).clamp(4, 4096)).unwrap_or(4096)
}

/// The soft `RLIMIT_NOFILE`.
fn nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
            #[allow(clippy::useless_conversion)]
            return u64::try_from(r.rlim_cur).ok();
        }
    }
    None
}

/// An accept error that concerns only the connection being accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves HTTP/1.1 on `listener` until `cancel`; in-flight requests finish
/// and event streams end.
///
/// A connection is accepted only while fewer than [`max_connections`] are
/// open (the others wait in the kernel's backlog, holding none of our
/// descriptors). Each must complete a request's headers within
/// `header_timeout` of opening or of its previous response (slow headers
/// and idle keep-alive), and a body within `body_timeout`.
pub async fn run(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    opts: HttpOptions,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let local = listener.local_addr()?;
    let header_timeout = opts.header_timeout;
    let app = router(engine, opts, cancel.clone(), local);
    let cap = max_connections();
    tracing::info!(
        "HTTP: at most {cap} connections (a quarter of the descriptor limit), header/idle timeout {header_timeout:?}"
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    let connections = tokio_util::task::TaskTracker::new();
    let mut last_warned: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = cancel.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory: the connection waits in
                // the backlog; try again shortly rather than spin.
                if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!("HTTP: cannot accept a connection: {e}");
                    last_warned = Some(Instant::now());
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = cancel.cancelled() => break,
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!("HTTP connection: {e}");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                header::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn guard_names_of_a_loopback_listener() {
        let g = Guard::new("127.0.0.1:7420".parse().unwrap());
        for ok in [
            "127.0.0.1:7420",
            "localhost:7420",
            "LOCALHOST:7420",
            "[::1]:7420",
        ] {
            assert!(g.names_host(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "localhost",
            "127.0.0.1:7421",
            "localhost.:7420",
            "evil.example:7420",
            "127.0.0.2:7420",
            "",
        ] {
            assert!(!g.names_host(bad), "{bad}");
        }
        // Port 80 may be left out of Host; another loopback address
        // names itself too.
        let g = Guard::new("127.0.0.5:80".parse().unwrap());
        assert!(g.names_host("localhost"));
        assert!(g.names_host("127.0.0.5"));
        assert!(g.names_host("127.0.0.5:80"));
        assert_eq!(g.hosts.first().map(String::as_str), Some("127.0.0.5:80"));
        let g = Guard::new("[::1]:9".parse().unwrap());
        assert!(g.names_host("[::1]:9") && g.names_host("127.0.0.1:9"));
    }

    #[test]
    fn guard_refusals() {
        let g = Guard::new("127.0.0.1:7420".parse().unwrap());
        let uri: Uri = "/api/agents".parse().unwrap();
        let pass = |h: &[(&str, &str)]| g.refusal(&headers(h), &uri).is_none();
        assert!(pass(&[]));
        assert!(pass(&[("host", "127.0.0.1:7420")]));
        assert!(pass(&[
            ("host", "localhost:7420"),
            ("origin", "http://localhost:7420"),
            ("sec-fetch-site", "same-origin"),
        ]));
        assert!(pass(&[("origin", "http://127.0.0.1:7420")]));
        assert!(pass(&[("sec-fetch-site", "none")]));
        for bad in [
            &[("host", "evil.example:7420")][..],
            &[("host", "127.0.0.1:7420"), ("host", "evil.example")][..],
            &[("origin", "http://evil.example")][..],
            &[("origin", "null")][..],
            &[("origin", "https://127.0.0.1:7420")][..],
            &[("origin", "http://127.0.0.1:7421")][..],
            &[
                ("host", "127.0.0.1:7420"),
                ("origin", "http://localhost:7420"),
            ][..],
            &[("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "same-site")][..],
            &[("sec-fetch-site", "whatever")][..],
        ] {
            assert!(!pass(bad), "{bad:?}");
        }
        let absolute: Uri = "http://evil.example/health".parse().unwrap();
        assert!(g.refusal(&HeaderMap::new(), &absolute).is_some());
    }

    #[test]
    fn timeouts_from_the_environment_are_bounded() {
        let var = HEADER_TIMEOUT_ENV;
        let parse = |v: &str| parse_timeout(var, Some(v.to_string()));
        assert!(matches!(parse("250"), Ok(Some(d)) if d == Duration::from_millis(250)));
        assert!(matches!(parse(" 3600000 "), Ok(Some(d)) if d == Duration::from_secs(3600)));
        assert!(matches!(parse(" "), Ok(None)));
        assert!(matches!(parse_timeout(var, None), Ok(None)));
        for bad in [
            "0",
            "abc",
            "-1",
            "1.5",
            "10s",
            "3600001",
            "99999999999999999999999",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("milliseconds"), "{bad}: {e}");
        }
    }

    #[test]
    fn connection_cap_is_a_quarter_of_the_descriptor_limit() {
        assert_eq!(cap_for(256), 64);
        assert_eq!(cap_for(1024), 256);
        assert_eq!(cap_for(8), 4);
        assert_eq!(cap_for(u64::MAX), 4096);
        assert!((4..=4096).contains(&max_connections()));
    }

    #[test]
    fn listen_rule() {
        let none = HttpOptions::default();
        assert!(check_listen("127.0.0.1:7420".parse().unwrap(), &none).is_ok());
        assert!(check_listen("[::1]:7420".parse().unwrap(), &none).is_ok());
        assert!(check_listen("0.0.0.0:7420".parse().unwrap(), &none).is_err());
        let tok = HttpOptions {
            token: Some("t".into()),
            ..HttpOptions::default()
        };
        assert!(check_listen("0.0.0.0:7420".parse().unwrap(), &tok).is_ok());
    }
}
