//! A fake Parachute Vault server (`../shared/PARACHUTE-VAULT.md`), in
//! process on `127.0.0.1:0`, for tests. It answers as the real server
//! (0.3.6-rc.30) was measured to, quirks included; where it was found to
//! differ from the real one, the real one won (docs/remote-vault.md, "The
//! API as vaultrunner uses it", lists what it covers and what it does not).
//!
//! The whole public API:
//!
//! ```ignore
//! let fake = FakeVault::start().await;       // one vault, "default"
//! fake.base()            // "http://127.0.0.1:PORT/vault/default"
//! fake.token()           // a token with vault:read + vault:write
//! fake.read_only_token() // vault:read only: writes answer 403 insufficient_scope
//! fake.set_down(true)    // every request answers 503 (Retry-After: 1) until set_down(false)
//! fake.stop().await      // really gone: connections dropped, the port refuses
//! fake.restart().await   // back on the same port, notes kept
//! fake.fail_next(2, 500) // the next 2 requests answer 500 (a 2xx status: a non-JSON body)
//! fake.requests("PATCH /notes/{id}") // requests received by method + route
//! fake.request_counts() / fake.total_requests() / fake.reset_requests()
//! fake.notes()           // snapshot: every note as the server's JSON, in createdAt order
//! fake.note("Inbox/hi")  // one note by id, then exact path
//! fake.edit("Inbox/hi", json!({"content": "…", "metadata": {…}, "tags": {"add": […]}}))
//!                        // a user's concurrent edit: applied as a PATCH, updatedAt moves
//! fake.with_trigger(url, &["agent/message/inbound"])
//!                        // POST {"trigger","event":"created","note"} to url once per note
//!                        // created with all those tags; never retried
//! fake.trigger_deliveries() // how many deliveries were attempted
//! ```
//!
//! Routes counted: `GET /health` (the server's, unauthenticated),
//! `GET /api/health`, `GET /notes`, `POST /notes`, `GET /notes/{id}`,
//! `PATCH /notes/{id}`, `DELETE /notes/{id}`, `other`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

const VAULT: &str = "default";
const TOKEN: &str = "pvt_fake_full_token_0001";
const READ_ONLY_TOKEN: &str = "pvt_fake_read_only_token_0002";
/// As in `../shared/parachute-vault/run-vault.sh`.
const TRIGGER_NAME: &str = "channel_inbound";

/// A running fake vault. Dropping it stops the server.
pub struct FakeVault {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    store: Mutex<Store>,
    down: AtomicBool,
    /// (how many, status) of injected failures still to answer.
    fail: Mutex<(u32, u16)>,
    counts: Mutex<BTreeMap<String, u64>>,
    trigger: Mutex<Option<(String, Vec<String>)>>,
    deliveries: AtomicU64,
}

#[derive(Default)]
struct Store {
    /// In creation order (the order of `createdAt`, ties kept).
    notes: Vec<FakeNote>,
    /// The last timestamp handed out, in ms (ids and times never repeat
    /// within a millisecond's counter).
    counter: u64,
}

#[derive(Clone)]
struct FakeNote {
    id: String,
    path: Option<String>,
    content: String,
    metadata: Map<String, Value>,
    tags: BTreeSet<String>,
    created_ms: i64,
    updated_ms: i64,
}

impl FakeVault {
    pub async fn start() -> FakeVault {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            down: AtomicBool::new(false),
            fail: Mutex::new((0, 0)),
            counts: Mutex::new(BTreeMap::new()),
            trigger: Mutex::new(None),
            deliveries: AtomicU64::new(0),
        });
        let fake = FakeVault {
            shared,
            addr,
            running: Mutex::new(None),
        };
        fake.serve(listener);
        fake
    }

    /// `http://127.0.0.1:PORT/vault/default`.
    pub fn base(&self) -> String {
        format!("http://{}/vault/{VAULT}", self.addr)
    }

    pub fn token(&self) -> &'static str {
        TOKEN
    }

    pub fn read_only_token(&self) -> &'static str {
        READ_ONLY_TOKEN
    }

    /// While down, every request (health included) answers `503` with
    /// `Retry-After: 1`, as a proxy in front of a stopped server does.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Stops listening and drops every open connection: requests are
    /// refused until [`FakeVault::restart`].
    pub async fn stop(&self) {
        let handle = self.running.lock().unwrap().take();
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
    }

    /// Listens again on the same port (the notes are kept).
    pub async fn restart(&self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the fake vault cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// The next `n` requests answer `status` (`{"error":"injected failure"}`,
    /// or for a 2xx status an HTML page: a body that is not the API's JSON).
    /// A 429 or 503 carries `Retry-After: 1`.
    pub fn fail_next(&self, n: u32, status: u16) {
        *self.shared.fail.lock().unwrap() = (n, status);
    }

    /// Requests received for a route (`"PATCH /notes/{id}"`, …).
    pub fn requests(&self, route: &str) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared.counts.lock().unwrap().clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.shared.counts.lock().unwrap().values().sum()
    }

    pub fn reset_requests(&self) {
        self.shared.counts.lock().unwrap().clear();
    }

    /// Every note as the server answers `GET /api/notes/{id}`, in
    /// `createdAt` order.
    pub fn notes(&self) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store.notes.iter().map(FakeNote::full).collect()
    }

    /// One note by id, then by exact path.
    pub fn note(&self, id_or_path: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .resolve(id_or_path)
            .and_then(|i| store.notes.get(i))
            .map(FakeNote::full)
    }

    /// A user's edit of a note (by id or exact path), made meanwhile: the
    /// `patch` is applied as a forced PATCH (`content` replaces,
    /// `metadata` merges, `tags: {add, remove}`) and `updatedAt` moves.
    /// Returns the new `updatedAt`, or `None` when there is no such note.
    pub fn edit(&self, id_or_path: &str, patch: Value) -> Option<String> {
        let mut store = self.shared.store.lock().unwrap();
        let i = store.resolve(id_or_path)?;
        let now = store.now_after(store.notes.get(i)?.updated_ms);
        let note = store.notes.get_mut(i)?;
        if let Some(Value::String(c)) = patch.get("content") {
            note.content = c.clone();
        }
        if let Some(Value::Object(m)) = patch.get("metadata") {
            for (k, v) in m {
                note.metadata.insert(k.clone(), v.clone());
            }
        }
        apply_tags(note, patch.get("tags"));
        note.updated_ms = now;
        Some(iso(now))
    }

    /// From now on, a note created carrying all of `tags` (and neither
    /// marker) is posted to `url` once, as the real server's
    /// `channel_inbound` trigger of `run-vault.sh` does (which also wants
    /// an `agent` metadata key; this one does not). It is stamped
    /// `channel_inbound_pending_at` before the delivery and, on a 2xx JSON
    /// answer, `channel_inbound_rendered_at` instead (the answer's
    /// `content`/`metadata` written in), without moving `updatedAt`. A
    /// failed delivery leaves `_pending_at` and is never retried.
    pub fn with_trigger(&self, url: &str, tags: &[&str]) -> &Self {
        *self.shared.trigger.lock().unwrap() = Some((
            url.to_string(),
            tags.iter().map(|t| t.to_string()).collect(),
        ));
        self
    }

    pub fn trigger_deliveries(&self) -> u64 {
        self.shared.deliveries.load(Ordering::SeqCst)
    }

    fn serve(&self, listener: TcpListener) {
        let app = router(self.shared.clone());
        let task = tokio::spawn(async move {
            // Dropped with this task: aborting it closes every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let service = hyper_util::service::TowerToHyperService::new(app.clone());
                        conns.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        if let Ok(mut r) = self.running.lock()
            && let Some(h) = r.take()
        {
            h.abort();
        }
    }
}

// ---------------------------------------------------------------- the store

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// As JavaScript's `toISOString()`: `2026-12-01T07:06:49.537Z`.
fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn parse_iso(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// The server's `normalizePath`: trim, `\` → `/`, a final `.md` (any case)
/// dropped, runs of `/` collapsed, one leading and one trailing `/` dropped.
fn normalize(p: &str) -> Option<String> {
    let p = p.trim().replace('\\', "/");
    let p = if p.len() >= 3
        && p.is_char_boundary(p.len() - 3)
        && p[p.len() - 3..].eq_ignore_ascii_case(".md")
    {
        p[..p.len() - 3].to_string()
    } else {
        p
    };
    let mut c = String::new();
    for ch in p.chars() {
        if !(ch == '/' && c.ends_with('/')) {
            c.push(ch);
        }
    }
    let c = c.strip_prefix('/').unwrap_or(&c);
    let c = c.strip_suffix('/').unwrap_or(c);
    (!c.is_empty()).then(|| c.to_string())
}

impl Store {
    /// A fresh timestamp, after `after` (as the real server's CAS rule).
    fn now_after(&self, after: i64) -> i64 {
        now_ms().max(after + 1)
    }

    fn resolve(&self, id_or_path: &str) -> Option<usize> {
        self.notes
            .iter()
            .position(|n| n.id == id_or_path)
            .or_else(|| {
                self.notes
                    .iter()
                    .position(|n| n.path.as_deref() == Some(id_or_path))
            })
    }

    fn new_id(&mut self, ms: i64) -> String {
        let n = self.counter % 1000;
        self.counter += 1;
        let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
        format!("{}{n:03}", t.format("%Y-%m-%d-%H-%M-%S-%3f"))
    }
}

impl FakeNote {
    fn full(&self) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("content".into(), json!(self.content));
        if let Some(p) = &self.path {
            o.insert("path".into(), json!(p));
        }
        if !self.metadata.is_empty() {
            o.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        o.insert("createdAt".into(), json!(iso(self.created_ms)));
        o.insert("updatedAt".into(), json!(iso(self.updated_ms)));
        o.insert("tags".into(), json!(self.tags));
        Value::Object(o)
    }

    /// The listing's lean shape: no content, `byteSize` and `preview`.
    fn index(&self) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        if let Some(p) = &self.path {
            o.insert("path".into(), json!(p));
        }
        o.insert("createdAt".into(), json!(iso(self.created_ms)));
        o.insert("updatedAt".into(), json!(iso(self.updated_ms)));
        o.insert("tags".into(), json!(self.tags));
        if !self.metadata.is_empty() {
            o.insert("metadata".into(), Value::Object(self.metadata.clone()));
        }
        o.insert("byteSize".into(), json!(self.content.len()));
        let collapsed = self
            .content
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        o.insert(
            "preview".into(),
            json!(collapsed.chars().take(120).collect::<String>()),
        );
        Value::Object(o)
    }
}

/// `{"add":[…],"remove":[…]}`; anything else (a plain list) is ignored.
fn apply_tags(note: &mut FakeNote, tags: Option<&Value>) {
    let Some(Value::Object(t)) = tags else { return };
    let list = |k: &str| -> Vec<String> {
        t.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for a in list("add") {
        note.tags.insert(a);
    }
    for r in list("remove") {
        note.tags.remove(&r);
    }
}

// ---------------------------------------------------------------- the server

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(server_health))
        .route("/vault/{vault}/api/health", any(health))
        .route("/vault/{vault}/api/notes", any(notes))
        .route("/vault/{vault}/api/notes/{id}", any(note))
        .fallback(fallback)
        // Notes over vaultrunner's 8 MiB limit can be written (the real
        // server takes them), not axum's 2 MB default.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn not_found() -> Response {
    answer(404, json!({"error": "Not found"}))
}

fn internal() -> Response {
    answer(500, json!({"error": "Internal server error"}))
}

/// Counts the request, then answers (`Some`) for the injected states (down, a
/// failure to come), the vault's name and the token.
fn gate(
    s: &Shared,
    method: &Method,
    route: &str,
    vault: Option<&str>,
    headers: &HeaderMap,
) -> Option<Response> {
    *s.counts
        .lock()
        .unwrap()
        .entry(format!("{method} {route}"))
        .or_insert(0) += 1;
    if s.down.load(Ordering::SeqCst) {
        return Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({"error": "Service Unavailable"})),
            )
                .into_response(),
        );
    }
    {
        let mut fail = s.fail.lock().unwrap();
        if fail.0 > 0 {
            fail.0 -= 1;
            let status = StatusCode::from_u16(fail.1).unwrap();
            if status.is_success() {
                return Some(
                    (
                        status,
                        [(header::CONTENT_TYPE, "text/html")],
                        "<html><body>a captive portal</body></html>",
                    )
                        .into_response(),
                );
            }
            let mut r = answer(fail.1, json!({"error": "injected failure"}));
            if matches!(fail.1, 429 | 503) {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, "1".parse().unwrap());
            }
            return Some(r);
        }
    }
    let vault = vault?; // the server's own /health needs no token
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    let write = match token {
        None => {
            return Some(answer(
                401,
                json!({"error": "Unauthorized", "message": "API key required"}),
            ));
        }
        Some(TOKEN) => true,
        Some(READ_ONLY_TOKEN) => false,
        Some(_) => {
            return Some(answer(
                401,
                json!({"error": "Unauthorized", "message": "Invalid API key"}),
            ));
        }
    };
    if vault != VAULT {
        return Some(answer(
            404,
            json!({"error": "Vault not found", "vault": vault}),
        ));
    }
    if !write && !matches!(*method, Method::GET | Method::HEAD) {
        return Some(answer(
            403,
            json!({"error": "Forbidden", "error_type": "insufficient_scope",
                   "message": "This endpoint requires the 'vault:write' scope (or 'vault:default:write').",
                   "required_scope": "vault:write", "granted_scopes": ["vault:read"]}),
        ));
    }
    None
}

async fn server_health(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&s, &method, "/health", None, &headers) {
        return r;
    }
    answer(200, json!({"status": "ok", "vaults": [VAULT]}))
}

async fn fallback(State(s): State<Arc<Shared>>, method: Method, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&s, &method, "other", None, &headers) {
        return r;
    }
    not_found()
}

async fn health(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Path(vault): Path<String>,
) -> Response {
    if let Some(r) = gate(&s, &method, "/api/health", Some(&vault), &headers) {
        return r;
    }
    answer(200, json!({"status": "ok", "vault": vault}))
}

async fn notes(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Path(vault): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&s, &method, "/notes", Some(&vault), &headers) {
        return r;
    }
    match method {
        Method::GET => list(&s, query.as_deref().unwrap_or("")),
        Method::POST => create(&s, &body),
        _ => answer(405, json!({"error": "Method not allowed"})),
    }
}

async fn note(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Path((vault, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&s, &method, "/notes/{id}", Some(&vault), &headers) {
        return r;
    }
    match method {
        Method::GET => {
            let store = s.store.lock().unwrap();
            match store.resolve(&id).and_then(|i| store.notes.get(i)) {
                Some(n) => answer(200, n.full()),
                None => not_found(),
            }
        }
        Method::PATCH => patch(&s, &id, &body),
        Method::DELETE => {
            let mut store = s.store.lock().unwrap();
            match store.resolve(&id) {
                Some(i) => {
                    let n = store.notes.remove(i);
                    answer(200, json!({"deleted": true, "id": n.id}))
                }
                None => not_found(),
            }
        }
        _ => answer(405, json!({"error": "Method not allowed"})),
    }
}

/// `GET /api/notes`: the first of each parameter counts (a repeated `tag=`
/// is ignored); unknown ones are ignored.
fn list(s: &Shared, query: &str) -> Response {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_pairs(query) {
        params.entry(k).or_insert(v);
    }
    let p = |k: &str| params.get(k).map(String::as_str);
    let split = |k: &str| -> Vec<String> {
        p(k).map(|v| {
            v.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
    };
    let tags = split("tag");
    let exclude = split("exclude_tag");
    let all = p("tag_match") == Some("all");
    let limit: i64 = p("limit").and_then(|l| l.parse().ok()).unwrap_or(50);
    let offset: usize = p("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let content = p("include_content") == Some("true");
    let store = s.store.lock().unwrap();
    let mut selected: Vec<&FakeNote> = store
        .notes
        .iter()
        .filter(|n| {
            tags.is_empty()
                || if all {
                    tags.iter().all(|t| n.tags.contains(t))
                } else {
                    tags.iter().any(|t| n.tags.contains(t))
                }
        })
        .filter(|n| !exclude.iter().any(|t| n.tags.contains(t)))
        .filter(|n| p("path").is_none_or(|want| n.path.as_deref() == Some(want)))
        .filter(|n| {
            p("path_prefix")
                .is_none_or(|pre| n.path.as_deref().is_some_and(|path| like_prefix(path, pre)))
        })
        .collect();
    selected.sort_by_key(|n| n.created_ms); // stable: ties keep creation order
    if p("sort") == Some("desc") {
        selected.reverse();
    }
    let page = selected.into_iter().skip(offset);
    let page: Vec<Value> = if limit < 0 {
        page.map(|n| if content { n.full() } else { n.index() })
            .collect()
    } else {
        page.take(limit as usize)
            .map(|n| if content { n.full() } else { n.index() })
            .collect()
    };
    answer(200, Value::Array(page))
}

/// SQLite's `path LIKE prefix || '%'`: ASCII case folded, `_` any one
/// character, `%` any run.
fn like_prefix(path: &str, prefix: &str) -> bool {
    fn m(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => true, // the trailing '%'
            Some(('%', rest)) => (0..=s.len()).any(|i| m(rest, &s[i..])),
            Some((c, rest)) => match s.split_first() {
                Some((h, srest)) if *c == '_' || c.eq_ignore_ascii_case(h) => m(rest, srest),
                _ => false,
            },
        }
    }
    let p: Vec<char> = prefix.chars().collect();
    let s: Vec<char> = path.chars().collect();
    m(&p, &s)
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{query}")).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn empty_note(index: usize) -> Response {
    answer(
        400,
        json!({"error_type": "empty_note", "error": "EmptyNoteError",
               "message": format!("empty_note: a note must have either content or a path (item index {index})"),
               "item_index": index}),
    )
}

fn path_conflict(path: &str) -> Response {
    answer(
        409,
        json!({"error_type": "path_conflict", "error": "path_conflict", "path": path,
               "message": format!("path_conflict: another note already uses path {path:?}")}),
    )
}

/// `POST /api/notes`: one note, or `{"notes":[…]}` (a bare list too). Every
/// item is checked for `empty_note` first; then they are created in order
/// and the first `path_conflict` stops the batch (earlier ones stay).
fn create(s: &Arc<Shared>, body: &[u8]) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return internal();
    };
    let (items, batch) = match &v {
        Value::Array(a) => (a.clone(), true),
        Value::Object(o) => match o.get("notes") {
            Some(Value::Array(a)) => (a.clone(), true),
            _ => (vec![v.clone()], false),
        },
        _ => (vec![v.clone()], false),
    };
    let path_of = |item: &Value| item.get("path").and_then(Value::as_str).and_then(normalize);
    let content_of = |item: &Value| {
        item.get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    for (i, item) in items.iter().enumerate() {
        if path_of(item).is_none() && content_of(item).trim().is_empty() {
            return empty_note(i);
        }
    }
    let mut created = Vec::new();
    {
        let mut store = s.store.lock().unwrap();
        for item in &items {
            let path = path_of(item);
            if let Some(p) = &path
                && store.notes.iter().any(|n| n.path.as_deref() == Some(p))
            {
                return path_conflict(p);
            }
            let now = now_ms();
            let id = match item.get("id").and_then(Value::as_str) {
                Some(id) if store.notes.iter().any(|n| n.id == id) => return internal(),
                Some(id) => id.to_string(),
                None => store.new_id(now),
            };
            let note = FakeNote {
                id,
                path,
                content: content_of(item),
                metadata: item
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default(),
                tags: item
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                created_ms: now,
                updated_ms: now,
            };
            created.push(note.clone());
            store.notes.push(note);
        }
    }
    for n in &created {
        fire_trigger(s, n);
    }
    if batch {
        answer(
            201,
            Value::Array(created.iter().map(FakeNote::full).collect()),
        )
    } else {
        answer(
            201,
            created.first().map(FakeNote::full).unwrap_or(Value::Null),
        )
    }
}

/// `PATCH /api/notes/{idOrPath}`, in the real server's order: the note,
/// the precondition (428), the update of content/path/metadata with its
/// compare-and-set (409), then the tags.
fn patch(s: &Shared, id_or_path: &str, body: &[u8]) -> Response {
    let mut store = s.store.lock().unwrap();
    let Some(i) = store.resolve(id_or_path) else {
        return answer(
            404,
            json!({"error": format!("Note not found: {id_or_path:?}")}),
        );
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return internal();
    };
    let current = store.notes.get(i).unwrap().clone();
    let if_updated_at = body.get("if_updated_at").filter(|v| !v.is_null());
    if if_updated_at.is_none() && body.get("force") != Some(&Value::Bool(true)) {
        return answer(
            428,
            json!({"error_type": "precondition_required", "error": "precondition_required",
                   "message": "update requires `if_updated_at` (the note's last-seen updated_at) or `force: true`.",
                   "note_id": current.id, "path": current.path}),
        );
    }
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_string);
    let new_path = body.get("path").map(|p| p.as_str().and_then(normalize));
    let metadata = body.get("metadata").and_then(Value::as_object);
    let mut updated = current.clone();
    if content.is_some() || new_path.is_some() || metadata.is_some() || if_updated_at.is_some() {
        if content.is_some() || new_path.is_some() {
            let c = content.clone().unwrap_or_else(|| current.content.clone());
            let p = new_path.clone().unwrap_or_else(|| current.path.clone());
            if c.trim().is_empty() && p.is_none() {
                return empty_note(0);
            }
        }
        let mut now = now_ms();
        if let Some(expected) = if_updated_at {
            let expected = expected
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| expected.to_string());
            // As the server: a new version strictly after the one expected;
            // an expected "version" that is no time at all is a 500.
            if iso(now) <= expected {
                match parse_iso(&expected) {
                    Some(ms) => now = ms + 1,
                    None => return internal(),
                }
            }
            if expected != iso(current.updated_ms) {
                let message = format!(
                    "conflict: note {:?} has been modified (current updated_at={}, expected={expected})",
                    current.id,
                    iso(current.updated_ms)
                );
                return answer(
                    409,
                    json!({"error_type": "conflict", "current_updated_at": iso(current.updated_ms),
                           "your_updated_at": expected, "path": current.path, "note_id": current.id,
                           "message": message, "error": "conflict", "expected_updated_at": expected}),
                );
            }
        }
        if let Some(Some(p)) = &new_path
            && store
                .notes
                .iter()
                .any(|n| n.id != current.id && n.path.as_deref() == Some(p))
        {
            return path_conflict(p);
        }
        if let Some(c) = content {
            updated.content = c;
        }
        if let Some(p) = new_path {
            updated.path = p;
        }
        if let Some(m) = metadata {
            for (k, v) in m {
                updated.metadata.insert(k.clone(), v.clone());
            }
        }
        updated.updated_ms = now.max(current.updated_ms + 1);
    }
    apply_tags(&mut updated, body.get("tags"));
    let out = updated.full();
    if let Some(slot) = store.notes.get_mut(i) {
        *slot = updated;
    }
    answer(200, out)
}

/// Stamps and posts a created note to the trigger's URL, once (in the
/// background, as the real server's hook does after answering).
fn fire_trigger(s: &Arc<Shared>, note: &FakeNote) {
    let Some((url, tags)) = s.trigger.lock().unwrap().clone() else {
        return;
    };
    let pending = format!("{TRIGGER_NAME}_pending_at");
    let rendered = format!("{TRIGGER_NAME}_rendered_at");
    if !tags.iter().all(|t| note.tags.contains(t))
        || note.metadata.contains_key(&pending)
        || note.metadata.contains_key(&rendered)
    {
        return;
    }
    // The note as it was before the marker (as the real server sends it).
    let payload = json!({
        "trigger": TRIGGER_NAME,
        "event": "created",
        "note": {"id": note.id, "content": note.content, "path": note.path, "tags": note.tags,
                 "metadata": note.metadata, "attachments": [],
                 "createdAt": iso(note.created_ms), "updatedAt": iso(note.updated_ms)},
    });
    marker_write(s, &note.id, |n| {
        n.metadata.insert(pending.clone(), json!(iso(now_ms())));
    });
    s.deliveries.fetch_add(1, Ordering::SeqCst);
    let s = s.clone();
    let id = note.id.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let answer: Option<Value> = match client.post(&url).json(&payload).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) if b.is_empty() => Some(json!({})),
                Ok(b) => serde_json::from_slice::<Value>(&b).ok(),
                Err(_) => None,
            },
            _ => None,
        };
        // A failed delivery leaves `_pending_at`, and is never retried.
        let Some(answer) = answer else { return };
        marker_write(&s, &id, |n| {
            n.metadata.remove(&pending);
            if let Some(Value::String(c)) = answer.get("content") {
                n.content = c.clone();
            }
            if let Some(Value::Object(m)) = answer.get("metadata") {
                for (k, v) in m {
                    n.metadata.insert(k.clone(), v.clone());
                }
            }
            n.metadata.insert(rendered.clone(), json!(iso(now_ms())));
        });
    });
}

/// The server's own write (`skipUpdatedAt`): `updatedAt` does not move.
fn marker_write(s: &Shared, id: &str, f: impl FnOnce(&mut FakeNote)) {
    let mut st = s.store.lock().unwrap();
    if let Some(i) = st.resolve(id)
        && let Some(n) = st.notes.get_mut(i)
    {
        f(n);
    }
}
