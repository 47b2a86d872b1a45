//! `tail` and `health`: clients of a running `serve`'s HTTP API (SPEC §9).
//!
//! The server is found through the vault's `.vaultrunner/http.addr` (what
//! `serve` writes once it listens, and removes when it stops), or named
//! with `--server URL` (a remote vault has no folder to look in). The
//! token, when the server has one, comes from `VAULTRUNNER_TOKEN` and goes
//! in a bearer header.
//!
//! `tail` lists the agents (`GET /api/agents`), subscribes to each one's
//! live events (`GET /api/agents/{name}/events`, Server-Sent Events) and
//! prints every turn as it happens: the message, the streamed text, tool
//! calls and results, the outcome and the duration. It lists the agents
//! again every few seconds, so an agent defined later is followed too.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::sse;

/// How often `tail` lists the agents again (new definitions; a server
/// that went away).
pub const RELIST_EVERY: Duration = Duration::from_secs(3);

/// How long a connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an event stream may stay silent before it is taken for dead
/// (serve sends a keep-alive every 15 s).
const STREAM_SILENCE: Duration = Duration::from_secs(60);

/// How long a plain request (not a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest tool input or result line `tail` prints (characters).
const CLIP: usize = 200;

/// Messages whose turn `tail` keeps track of at once (a turn whose end it
/// never saw — a lagged stream — must not grow the map for ever).
const MAX_OPEN_TURNS: usize = 1024;

/// Why `tail` or `health` could not do their work. Every message names
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("no vault at {vault}: no such folder")]
    NoVault { vault: String },
    #[error("nothing is serving {vault} ({why}); start `vaultrunner serve {vault}`")]
    NotServed { vault: String, why: String },
    #[error(
        "{vault} is being served without HTTP (`--listen none`, or its port was taken; see its log); tail needs the HTTP API: restart serve with `--listen 127.0.0.1:7421`"
    )]
    NoHttp { vault: String },
    #[error(
        "{vault} is a remote vault: there is no folder to find its serve in; give --server URL (the address its `vaultrunner serve` listens on)"
    )]
    RemoteNeedsServer { vault: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("no agent named {agent:?} at {url} (agents: {known})")]
    UnknownAgent {
        agent: String,
        url: String,
        known: String,
    },
    #[error("the server at {url} went away")]
    Gone { url: String },
    #[error("--server {0:?} is not an http(s):// URL or HOST:PORT")]
    BadServer(String),
    #[error("{0}")]
    Http(String),
}

/// What `tail` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// The vault as the user named it (a folder or a URL).
    pub vault: String,
    /// Only this agent (else every agent, and agents defined later).
    pub agent: Option<String>,
    /// `--server URL`: the server to ask, instead of `http.addr`.
    pub server: Option<String>,
    /// The bearer token (`VAULTRUNNER_TOKEN`).
    pub token: Option<String>,
    /// ANSI colours (stdout is a terminal and `NO_COLOR` is not set).
    pub colour: bool,
}

/// The base URL (`http://HOST:PORT`, no trailing slash) of the server
/// for `vault`: `server` when given, else the address in the vault's
/// `.vaultrunner/http.addr`.
pub fn server_url(vault: &str, server: Option<&str>) -> Result<String, TailError> {
    if let Some(s) = server {
        return normalise_server(s);
    }
    if crate::vault::is_remote(vault) {
        return Err(TailError::RemoteNeedsServer {
            vault: vault.to_string(),
        });
    }
    let root = Path::new(vault);
    if !root.is_dir() {
        return Err(TailError::NoVault {
            vault: vault.to_string(),
        });
    }
    let file = root.join(".vaultrunner").join("http.addr");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A serve with no HTTP still holds the vault's lock.
            let served = crate::vault::LocalVault::open(root)
                .map(|v| crate::vault::Vault::is_locked(&v))
                .unwrap_or(false);
            return Err(if served {
                TailError::NoHttp {
                    vault: vault.to_string(),
                }
            } else {
                TailError::NotServed {
                    vault: vault.to_string(),
                    why: "no .vaultrunner/http.addr".into(),
                }
            });
        }
        Err(e) => {
            return Err(TailError::Http(format!(
                "cannot read {}: {e}",
                file.display()
            )));
        }
    };
    let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
        TailError::Http(format!(
            "{} holds {:?}, not an address like 127.0.0.1:7420; is it from another program?",
            file.display(),
            text.trim()
        ))
    })?;
    Ok(format!("http://{}", reachable(addr)))
}

/// The address to connect to for a listening address: a server on every
/// interface (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

/// `--server`: a URL (`http://host:7420`, `https://vr.example.org/`) or a
/// bare `HOST:PORT`.
fn normalise_server(s: &str) -> Result<String, TailError> {
    let s = s.trim();
    let with_scheme = if crate::vault::is_remote(s) {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|_| TailError::BadServer(s.into()))?;
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() {
        return Err(TailError::BadServer(s.into()));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// A client for `base`: proxies are not used for a server on this machine.
fn client(base: &str, streaming: bool) -> Result<reqwest::Client, TailError> {
    let local = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .is_some_and(|h| {
            h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    let mut b = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if !streaming {
        b = b.timeout(REQUEST_TIMEOUT);
    }
    if local {
        b = b.no_proxy();
    }
    b.build()
        .map_err(|e| TailError::Http(format!("cannot make an HTTP client: {e}")))
}

/// A GET with the bearer token, its failures named for a person.
async fn get(
    client: &reqwest::Client,
    vault: &str,
    url: &str,
    token: Option<&str>,
) -> Result<reqwest::Response, TailError> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        // Refused, timed out, or closed before it answered (a serve that
        // is stopping): nothing serves there.
        if e.is_connect() || e.is_timeout() || e.is_request() {
            TailError::NotServed {
                vault: vault.to_string(),
                why: format!("nothing answers at {}: {}", origin(url), root_cause(&e)),
            }
        } else {
            TailError::Http(format!("GET {url}: {}", root_cause(&e)))
        }
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(TailError::Unauthorized(match token {
            None => format!(
                "the server at {} needs a token: set VAULTRUNNER_TOKEN to the token serve was started with",
                origin(url)
            ),
            Some(_) => format!(
                "the server at {} refused the token in VAULTRUNNER_TOKEN: it is not the one serve was started with",
                origin(url)
            ),
        }));
    }
    if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
        let why = error_text(resp).await;
        return Err(TailError::Http(format!("GET {url}: {status}: {why}")));
    }
    Ok(resp)
}

/// `scheme://host:port` of a URL, for messages.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| url.to_string())
}

/// The innermost cause of a client error ("Connection refused (os error
/// 111)"), which is what a person needs.
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The `error` of a JSON error body, or the body.
async fn error_text(resp: reqwest::Response) -> String {
    let body = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<Value>(&body) {
        Ok(v) => v
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| clean(&body), clean),
        Err(_) => clean(body.trim()),
    }
}

/// The names of the agents the server knows.
async fn list_agents(
    client: &reqwest::Client,
    vault: &str,
    base: &str,
    token: Option<&str>,
) -> Result<Vec<String>, TailError> {
    let url = format!("{base}/api/agents");
    let resp = get(client, vault, &url, token).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(TailError::Http(format!(
            "{url} is not found: is {base} a vaultrunner serve?"
        )));
    }
    #[derive(Deserialize)]
    struct Agents {
        agents: Vec<Agent>,
    }
    #[derive(Deserialize)]
    struct Agent {
        name: String,
    }
    let body = resp
        .text()
        .await
        .map_err(|e| TailError::Http(format!("GET {url}: {}", root_cause(&e))))?;
    let agents: Agents = serde_json::from_str(&body).map_err(|e| {
        TailError::Http(format!(
            "GET {url}: not the agent list ({e}): is {base} a vaultrunner serve?"
        ))
    })?;
    Ok(agents.agents.into_iter().map(|a| a.name).collect())
}

/// What the subscriptions tell the printer.
enum Feed {
    /// The agent's stream is open: its events will arrive.
    Subscribed(String),
    /// One event of an agent's stream.
    Frame(String, sse::Frame),
    /// The agent's stream ended (the server stopped, or refused it).
    Ended(String, Option<TailError>),
}

/// Follows one agent's events until the stream ends, after `delay`.
async fn subscribe(
    client: reqwest::Client,
    vault: String,
    base: String,
    token: Option<String>,
    agent: String,
    delay: Duration,
    tx: mpsc::Sender<Feed>,
) {
    tokio::time::sleep(delay).await;
    let url = format!(
        "{base}/api/agents/{}/events",
        crate::note::percent_encode(&agent)
    );
    let mut resp = match get(&client, &vault, &url, token.as_deref()).await {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            // The definition went away between the list and now.
            let _ = tx.send(Feed::Ended(agent, None)).await;
            return;
        }
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Feed::Ended(agent, Some(e))).await;
            return;
        }
    };
    if tx.send(Feed::Subscribed(agent.clone())).await.is_err() {
        return;
    }
    let mut parser = sse::Parser::default();
    loop {
        // serve sends a keep-alive comment every 15 s: a stream silent for
        // longer is dead (a dropped connection nobody closed) and is
        // opened again.
        let frames = match tokio::time::timeout(STREAM_SILENCE, resp.chunk()).await {
            Ok(Ok(Some(bytes))) => parser.feed(&bytes),
            Ok(Ok(None) | Err(_)) | Err(_) => break,
        };
        for f in frames {
            if tx.send(Feed::Frame(agent.clone(), f)).await.is_err() {
                return;
            }
        }
    }
    for f in parser.finish() {
        let _ = tx.send(Feed::Frame(agent.clone(), f)).await;
    }
    let _ = tx.send(Feed::Ended(agent, None)).await;
}

/// `tail`: prints live turns to `out` until `cancel` (Ctrl-C: `Ok`), or
/// until the server goes away (`Err(Gone)`). Notes for the person
/// (which agents are followed) go to `notes`. A closed `out` (`| head`)
/// ends it quietly.
pub async fn run(
    opts: &TailOptions,
    out: &mut dyn Write,
    notes: &mut dyn Write,
    cancel: CancellationToken,
) -> Result<(), TailError> {
    let base = server_url(&opts.vault, opts.server.as_deref())?;
    let token = opts.token.clone().filter(|t| !t.is_empty());
    let plain = client(&base, false)?;
    let streams = client(&base, true)?;
    let vault = opts.vault.clone();
    let mut agents = list_agents(&plain, &vault, &base, token.as_deref()).await?;
    if let Some(a) = &opts.agent {
        if !agents.contains(a) {
            return Err(TailError::UnknownAgent {
                agent: a.clone(),
                url: base,
                known: if agents.is_empty() {
                    "none".into()
                } else {
                    agents.join(", ")
                },
            });
        }
        agents = vec![a.clone()];
    }
    let (tx, mut rx) = mpsc::channel::<Feed>(256);
    let spawn = |agent: &str, delay: Duration| {
        tokio::spawn(subscribe(
            streams.clone(),
            vault.clone(),
            base.clone(),
            token.clone(),
            agent.to_string(),
            delay,
            tx.clone(),
        ));
    };
    let mut followed: HashSet<String> = HashSet::new();
    for a in &agents {
        spawn(a, Duration::ZERO);
        followed.insert(a.clone());
    }
    // Announced once every first stream is open: from then on no turn is
    // missed.
    let mut opening: HashSet<String> = followed.clone();
    if opening.is_empty() {
        let _ = writeln!(
            notes,
            "no agents at {base} yet; waiting for one (Ctrl-C to stop)"
        );
    }
    let mut printer = Printer::new(opts.colour);
    let mut relist = tokio::time::interval(RELIST_EVERY);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relist.tick().await;
    loop {
        let feed = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            f = rx.recv() => f,
            _ = relist.tick(), if opts.agent.is_none() => {
                let now = match list_agents(&plain, &vault, &base, token.as_deref()).await {
                    Ok(a) => a,
                    Err(TailError::NotServed { .. }) => return Err(TailError::Gone { url: base }),
                    Err(e) => return Err(e),
                };
                for a in now {
                    if followed.insert(a.clone()) {
                        spawn(&a, Duration::ZERO);
                        let _ = writeln!(notes, "following agent {} too", clean(&a));
                    }
                }
                continue;
            }
        };
        let Some(feed) = feed else {
            return Ok(());
        };
        match feed {
            Feed::Subscribed(agent) => {
                printer.know(&agent);
                if opening.remove(&agent) && opening.is_empty() {
                    let mut names: Vec<&String> = followed.iter().collect();
                    names.sort();
                    let names: Vec<String> = names.iter().map(|n| clean(n)).collect();
                    let _ = writeln!(
                        notes,
                        "tailing {} at {base} (Ctrl-C to stop)",
                        names.join(", ")
                    );
                }
            }
            Feed::Frame(agent, frame) => {
                if printer.frame(&agent, &frame, out).is_err() {
                    // stdout closed: nobody is reading any more.
                    return Ok(());
                }
            }
            Feed::Ended(_, Some(e)) => {
                return Err(match e {
                    TailError::NotServed { .. } => TailError::Gone { url: base },
                    e => e,
                });
            }
            Feed::Ended(agent, None) => {
                opening.remove(&agent);
                // The stream ended: the server stopped, or the agent is
                // gone. Whoever is still there is followed again.
                match list_agents(&plain, &vault, &base, token.as_deref()).await {
                    Ok(now) if now.contains(&agent) => spawn(&agent, Duration::from_secs(1)),
                    Ok(_) if opts.agent.as_deref() == Some(agent.as_str()) => {
                        return Err(TailError::UnknownAgent {
                            agent: agent.clone(),
                            url: base,
                            known: "it is no longer defined".into(),
                        });
                    }
                    Ok(_) => {
                        followed.remove(&agent);
                    }
                    Err(TailError::NotServed { .. }) => {
                        let _ = printer.close_line(out);
                        return Err(TailError::Gone { url: base });
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// `health`: the server's `GET /health`, as JSON text, and whether its
/// `status` is `ok`.
pub async fn health(
    vault: &str,
    server: Option<&str>,
    token: Option<&str>,
) -> Result<(bool, String), TailError> {
    let base = server_url(vault, server)?;
    let c = client(&base, false)?;
    let url = format!("{base}/health");
    let resp = get(&c, vault, &url, token.filter(|t| !t.is_empty())).await?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| TailError::Http(format!("GET {url}: {}", root_cause(&e))))?;
    if !status.is_success() {
        return Err(TailError::Http(format!(
            "GET {url}: {status}: is {base} a vaultrunner serve?"
        )));
    }
    let v: Value = serde_json::from_str(&body)
        .map_err(|_| TailError::Http(format!("GET {url}: not JSON: {}", clean(&body))))?;
    let ok = v.get("status").and_then(Value::as_str) == Some("ok");
    Ok((ok, v.to_string()))
}

/// `send` from inside a cluster worker's turn: the message goes to the
/// vault node's `POST /api/cluster/send` with the turn's token
/// (`VAULTRUNNER_TURN_TOKEN`), which names the sending agent and depth.
/// Returns the new message's path.
pub async fn cluster_send(
    base: &str,
    token: &str,
    agent: &str,
    content: &str,
    opts: &crate::message::SendOptions,
) -> Result<String, TailError> {
    let base = base.trim_end_matches('/');
    let c = client(base, false)?;
    let url = format!("{base}/api/cluster/send");
    let body = serde_json::json!({
        "token": token,
        "agent": agent,
        "content": content,
        "subject": opts.subject,
        "reply_to": opts.reply_to,
        "correlation_id": opts.correlation_id,
    });
    let resp = c
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| TailError::Http(format!("POST {url}: {}", root_cause(&e))))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| TailError::Http(format!("POST {url}: {}", root_cause(&e))))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !status.is_success() {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .map(clean)
            .unwrap_or_else(|| clean(&text));
        return Err(TailError::Http(format!("POST {url}: {status}: {why}")));
    }
    v.get("path")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| TailError::Http(format!("POST {url}: no `path` in {}", clean(&text))))
}

/// A JSON object's keys and values in order, duplicates kept.
#[derive(Debug, Default)]
struct Pairs(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Pairs {
    /// The `n`th value of `key` (0 = the first).
    fn nth(&self, key: &str, n: usize) -> Option<&Value> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .nth(n)
            .map(|(_, v)| v)
    }

    fn text(&self, key: &str, n: usize) -> Option<&str> {
        self.nth(key, n).and_then(Value::as_str)
    }
}

/// One turn as `tail` follows it.
#[derive(Debug, Default)]
struct Turn {
    /// Some text of it was printed (else `done` prints the reply).
    streamed: bool,
}

/// Prints events as lines: `TIME AGENT  what`. Streamed text is printed as
/// it arrives, a line at a time per turn; when another turn's event comes
/// in the middle of a line, the line is ended first.
pub struct Printer {
    colour: bool,
    /// The width agent names are padded to (the longest seen, at most 20).
    width: usize,
    /// The message whose text line is open (no newline yet).
    open: Option<String>,
    turns: HashMap<String, Turn>,
}

/// ANSI SGR codes used.
const DIM: &str = "2";
const AGENT: &str = "1;36";
const GREEN: &str = "32";
const RED: &str = "31";
const YELLOW: &str = "33";

impl Printer {
    pub fn new(colour: bool) -> Printer {
        Printer {
            colour,
            width: 0,
            open: None,
            turns: HashMap::new(),
        }
    }

    /// An agent name to pad the others to.
    fn know(&mut self, agent: &str) {
        self.width = self.width.max(agent.chars().count().min(20));
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_string()
        }
    }

    /// `TIME AGENT  ` at the start of a line.
    fn prefix(&self, agent: &str) -> String {
        let time = chrono::Local::now().format("%H:%M:%S").to_string();
        let name = clean(agent);
        let pad = self.width.saturating_sub(name.chars().count());
        format!(
            "{} {}{}  ",
            self.paint(DIM, &time),
            self.paint(AGENT, &name),
            " ".repeat(pad)
        )
    }

    /// Ends an open text line.
    fn close_line(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.open.take().is_some() {
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Prints one line (closing an open text line first).
    fn line(&mut self, out: &mut dyn Write, agent: &str, text: &str) -> std::io::Result<()> {
        self.close_line(out)?;
        writeln!(out, "{}{text}", self.prefix(agent))
    }

    /// Prints one event of `agent`'s stream.
    pub fn frame(
        &mut self,
        agent: &str,
        frame: &sse::Frame,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.know(agent);
        let kind = frame.event.as_deref().unwrap_or("message");
        if kind == "lagged" {
            let missed = serde_json::from_str::<Value>(&frame.data)
                .ok()
                .and_then(|v| v.get("missed").and_then(Value::as_u64))
                .unwrap_or(0);
            let text = format!("(missed {missed} event(s): tail fell behind)");
            self.line(out, agent, &self.paint(YELLOW, &text))?;
            return out.flush();
        }
        let Ok(data) = serde_json::from_str::<Pairs>(&frame.data) else {
            return Ok(());
        };
        let message = data.text("message", 0).unwrap_or("").to_string();
        if !self.turns.contains_key(&message) {
            if self.turns.len() >= MAX_OPEN_TURNS {
                self.turns.clear();
            }
            self.turns.insert(message.clone(), Turn::default());
            let thread = data.text("thread", 0).unwrap_or("");
            let mut head = format!("message {}", clean(&message));
            if !thread.is_empty() {
                head.push_str(&self.paint(DIM, &format!(" (thread {})", clean(thread))));
            }
            self.line(out, agent, &head)?;
        }
        match kind {
            "text" => {
                let text = data.text("text", 0).unwrap_or("");
                self.text(out, agent, &message, text)?;
            }
            "tool" => {
                let name = data.text("name", 0).unwrap_or("?");
                let input = data
                    .nth("input", 0)
                    .map(|v| match v {
                        Value::Null => String::new(),
                        v => v.to_string(),
                    })
                    .unwrap_or_default();
                let text = format!(
                    "{} {}",
                    self.paint(YELLOW, &format!("tool {}", clean(name))),
                    clip(&clean(&input))
                );
                self.line(out, agent, text.trim_end())?;
            }
            "tool_result" => {
                let output = data.text("output", 0).unwrap_or("");
                let is_error = data
                    .nth("is_error", 0)
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let lines = output.lines().count();
                let first = output.lines().next().unwrap_or("");
                let more = if lines > 1 {
                    format!(" (+{} line(s))", lines.saturating_sub(1))
                } else {
                    String::new()
                };
                let label = if is_error {
                    self.paint(RED, "tool error:")
                } else {
                    self.paint(YELLOW, "tool result:")
                };
                self.line(
                    out,
                    agent,
                    &format!("{label} {}{more}", clip(&clean(first.trim_end()))),
                )?;
            }
            "done" | "error" => {
                let turn = self.turns.remove(&message).unwrap_or_default();
                let took = data
                    .nth("ms", 0)
                    .and_then(Value::as_u64)
                    .map(|ms| format!(" in {ms} ms"))
                    .unwrap_or_default();
                if kind == "done" {
                    if !turn.streamed {
                        // Nothing streamed: the reply is the text.
                        let reply = data.text("reply", 0).unwrap_or("").to_string();
                        self.text(out, agent, &message, &reply)?;
                    }
                    let text = format!("{} {}{took}", self.paint(GREEN, "ok"), clean(&message));
                    self.line(out, agent, &text)?;
                } else {
                    let why = data.text("error", 0).unwrap_or("");
                    let text = format!(
                        "{} {}{took}: {}",
                        self.paint(RED, "error"),
                        clean(&message),
                        clean(why)
                    );
                    self.line(out, agent, &text)?;
                }
            }
            _ => {}
        }
        out.flush()
    }

    /// Streamed text: printed as it comes, each line of it prefixed.
    fn text(
        &mut self,
        out: &mut dyn Write,
        agent: &str,
        message: &str,
        text: &str,
    ) -> std::io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if let Some(t) = self.turns.get_mut(message) {
            t.streamed = true;
        }
        let mut rest = text;
        while !rest.is_empty() {
            if self.open.as_deref() != Some(message) {
                self.close_line(out)?;
                let bar = self.paint(DIM, "|");
                write!(out, "{}{bar} ", self.prefix(agent))?;
                self.open = Some(message.to_string());
            }
            match rest.split_once('\n') {
                Some((line, tail)) => {
                    writeln!(out, "{}", clean(line))?;
                    self.open = None;
                    rest = tail;
                }
                None => {
                    write!(out, "{}", clean(rest))?;
                    rest = "";
                }
            }
        }
        Ok(())
    }
}

/// Text from the server made safe for a terminal: control characters
/// (but tabs), escape sequences, the Unicode line separators and
/// bidirectional overrides are shown escaped (`\x1b`, `\u{202e}`), so an
/// agent's output can never drive the terminal. Newlines too: callers
/// split lines first.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\t' && drives_terminal(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Does a terminal act on `c` rather than show it: a control character
/// (C0 with tab and newline, DEL, C1), a Unicode line separator or a
/// bidirectional override?
pub fn drives_terminal(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Pushes `c` as text that shows what it is: `\x1b`, `\u{202e}`.
pub fn push_escaped(out: &mut String, c: char) {
    if c.is_ascii() {
        out.push_str(&format!("\\x{:02x}", u32::from(c)));
    } else {
        out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
    }
}

/// At most [`CLIP`] characters, with `…` when cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, data: &str) -> sse::Frame {
        sse::Frame {
            event: Some(event.into()),
            data: data.into(),
        }
    }

    fn render(colour: bool, frames: &[(&str, sse::Frame)]) -> String {
        let mut p = Printer::new(colour);
        let mut out = Vec::new();
        for (agent, f) in frames {
            p.frame(agent, f, &mut out).unwrap();
        }
        // Times vary: drop them.
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, r)| r).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn a_turn_is_printed_with_its_text_tools_outcome_and_duration() {
        let m = r#""agent":"a","thread":"Threads/a","message":"Inbox/a/1""#;
        let got = render(
            false,
            &[
                (
                    "a",
                    frame(
                        "text",
                        &format!(r#"{{{m},"type":"text","text":"one\ntw"}}"#),
                    ),
                ),
                (
                    "a",
                    frame("text", &format!(r#"{{{m},"type":"text","text":"o\n"}}"#)),
                ),
                (
                    "a",
                    frame(
                        "tool",
                        &format!(
                            r#"{{{m},"type":"tool","name":"Bash","input":{{"command":"ls"}}}}"#
                        ),
                    ),
                ),
                (
                    "a",
                    frame(
                        "tool_result",
                        &format!(
                            r#"{{{m},"type":"tool_result","output":"x\ny\nz","is_error":false}}"#
                        ),
                    ),
                ),
                (
                    "a",
                    frame(
                        "done",
                        &format!(r#"{{{m},"type":"done","reply":"one\ntwo","ms":1234}}"#),
                    ),
                ),
            ],
        );
        assert_eq!(
            got,
            "a  message Inbox/a/1 (thread Threads/a)\n\
             a  | one\n\
             a  | two\n\
             a  tool Bash {\"command\":\"ls\"}\n\
             a  tool result: x (+2 line(s))\n\
             a  ok Inbox/a/1 in 1234 ms"
        );
    }

    #[test]
    fn an_error_names_the_reason_and_a_silent_turn_shows_its_reply() {
        let got = render(
            false,
            &[
                (
                    "b",
                    frame(
                        "error",
                        r#"{"agent":"b","thread":"","message":"Inbox/b/1","type":"error","error":"boom","ms":5}"#,
                    ),
                ),
                (
                    "b",
                    frame(
                        "done",
                        r#"{"agent":"b","thread":"T","message":"Inbox/b/2","type":"done","reply":"hi"}"#,
                    ),
                ),
            ],
        );
        assert_eq!(
            got,
            "b  message Inbox/b/1\n\
             b  error Inbox/b/1 in 5 ms: boom\n\
             b  message Inbox/b/2 (thread T)\n\
             b  | hi\n\
             b  ok Inbox/b/2"
        );
    }

    #[test]
    fn interleaved_turns_end_the_open_line_first() {
        let a = r#""agent":"a","thread":"","message":"m1""#;
        let b = r#""agent":"bb","thread":"","message":"m2""#;
        let got = render(
            false,
            &[
                (
                    "a",
                    frame("text", &format!(r#"{{{a},"type":"text","text":"par"}}"#)),
                ),
                (
                    "bb",
                    frame(
                        "text",
                        &format!(r#"{{{b},"type":"text","text":"other\n"}}"#),
                    ),
                ),
                (
                    "a",
                    frame("text", &format!(r#"{{{a},"type":"text","text":"tial"}}"#)),
                ),
            ],
        );
        assert_eq!(
            got,
            "a  message m1\na  | par\nbb  message m2\nbb  | other\na   | tial"
        );
    }

    #[test]
    fn colour_only_when_asked_and_text_cannot_drive_the_terminal() {
        let d =
            r#"{"agent":"a","thread":"","message":"m","type":"text","text":"\u001b[2Jhi\u202e"}"#;
        let plain = render(false, &[("a", frame("text", d))]);
        assert!(!plain.contains('\u{1b}'), "{plain:?}");
        assert!(plain.contains("\\x1b[2Jhi\\u{202e}"), "{plain:?}");
        let coloured = render(true, &[("a", frame("text", d))]);
        assert!(coloured.contains("\u{1b}[1;36ma\u{1b}[0m"), "{coloured:?}");
        assert!(coloured.contains("\\x1b[2Jhi"), "{coloured:?}");
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            normalise_server("127.0.0.1:7420").unwrap(),
            "http://127.0.0.1:7420"
        );
        assert_eq!(
            normalise_server("https://vr.example.org/").unwrap(),
            "https://vr.example.org"
        );
        assert!(normalise_server("http://").is_err());
        assert!(normalise_server("a b").is_err());
        assert_eq!(
            reachable("0.0.0.0:7420".parse().unwrap()).to_string(),
            "127.0.0.1:7420"
        );
        assert_eq!(reachable("[::]:1".parse().unwrap()).to_string(), "[::1]:1");
        assert!(matches!(
            server_url("https://vault.example/vault/x", None),
            Err(TailError::RemoteNeedsServer { .. })
        ));
        assert_eq!(crate::note::percent_encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(clip(&"x".repeat(300)).chars().count(), CLIP + 1);
    }
}
