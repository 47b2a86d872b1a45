//! Integration tests of the HTTP trigger (SPEC §5, issue 4 items 1–3, 7):
//! the API, webhooks, auth, the live event stream, metrics, shutdown and
//! path safety. Most tests run the library's router in-process on a
//! loopback port with a real engine and dispatcher; the ones about the
//! process (environment, refusing to listen, SIGTERM) run the binary.
//!
//! Notes are read back with `common`'s front-matter parser, not the
//! crate's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use vaultrunner::engine::Engine;
use vaultrunner::trigger::http::{self, HttpOptions};

use crate::common::{
    TestVault, assert_dated_message_path, parse_note, read_note, scalar, tags, wait_until_async,
};

const TOKEN: &str = "t0ken-for-tests";
const SECRET: &str = "webhook-secret-for-tests";

// ---------------------------------------------------------------- vaults

/// A vault with the usual agents: `echo`, `slow` (a command that sleeps
/// 3 s, then echoes stdin), `failing` (a command that exits 3).
fn agents() -> TestVault {
    let v = TestVault::new();
    for (name, extra) in [
        ("echo", "backend: echo\n"),
        (
            "slow",
            "backend: command\ncommand: [sh, -c, \"sleep 3; cat\"]\ntimeout: 30s\n",
        ),
        (
            "failing",
            "backend: command\ncommand: [sh, -c, \"echo boom >&2; exit 3\"]\ntimeout: 30s\n",
        ),
    ] {
        v.agent(name, extra, &format!("You are {name}.\n"));
    }
    v
}

/// Every file in and next to the vault (the whole temp directory), except
/// vaultrunner's own state folder: what a request could have written.
fn files(v: &TestVault) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = crate::common::walk(&v.parent)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    out.retain(|p| !p.components().any(|c| c.as_os_str() == ".vaultrunner"));
    out
}

/// Outbound notes (under the vault) answering `inbound`.
fn replies_to(v: &TestVault, inbound: &str) -> Vec<PathBuf> {
    let link = format!("[[{inbound}]]");
    files(v)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            if !text.starts_with("---\n") {
                return false;
            }
            let (m, _) = parse_note(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            tags(&m).iter().any(|t| t == "agent/message/outbound")
                && scalar(&m, "in_reply_to").as_deref() == Some(link.as_str())
        })
        .collect()
}

// ---------------------------------------------------------------- server

/// A router served in-process on a loopback port, with the dispatcher.
struct Server {
    vault: TestVault,
    base: String,
    cancel: CancellationToken,
    engine: Arc<Engine>,
    http: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(vault: TestVault, opts: HttpOptions) -> Server {
        let engine = vault.engine();
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = {
            let (e, c) = (engine.clone(), cancel.clone());
            tokio::spawn(async move {
                http::run(listener, e, opts, c).await.unwrap();
            })
        };
        let dispatcher = {
            let (e, c) = (engine.clone(), cancel.clone());
            tokio::spawn(async move { e.run_dispatcher(c).await })
        };
        Server {
            vault,
            base: format!("http://{addr}"),
            cancel,
            engine,
            http,
            dispatcher,
        }
    }

    async fn open() -> Server {
        Self::start(agents(), HttpOptions::default()).await
    }

    async fn secured() -> Server {
        Self::start(
            agents(),
            HttpOptions {
                token: Some(TOKEN.into()),
                webhook_secret: Some(SECRET.into()),
                ..HttpOptions::default()
            },
        )
        .await
    }

    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.http)
            .await
            .expect("HTTP server stops")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.dispatcher)
            .await
            .expect("dispatcher stops")
            .unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Status and JSON body of a response (panics on a non-JSON body).
async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text:?}"));
    assert!(
        ct.starts_with("application/json"),
        "{status}: content-type {ct:?}"
    );
    (status, v)
}

/// Asserts an error answer: `status` and a body of exactly
/// `{"error": "<non-empty>"}` (504 also carries the kept message's `path`).
async fn expect_error(r: reqwest::Response, status: u16) -> String {
    let (got, v) = json_of(r).await;
    assert_eq!(got, status, "{v}");
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let msg = obj
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no error string: {v}"));
    assert!(!msg.is_empty());
    for k in obj.keys() {
        assert!(k == "error" || k == "path", "unexpected key {k} in {v}");
    }
    msg.to_string()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(body);
    let bytes = m.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Reads SSE events (`event:` name, `data:` JSON) from a streaming
/// response until `stop` says so, or the stream ends, or `secs` pass.
async fn read_events(
    r: &mut reqwest::Response,
    secs: u64,
    mut stop: impl FnMut(&[(String, Value)]) -> bool,
) -> (Vec<(String, Value)>, bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, r.chunk()).await {
            Err(_) => return (events, false),
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) | Ok(Err(_)) => return (events, true),
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if data.is_empty() {
                continue; // keep-alive comment
            }
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push((name, v));
            if stop(&events) {
                return (events, false);
            }
        }
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_agents() {
    let srv = Server::open().await;
    let c = client();
    let (st, v) = json_of(c.get(srv.url("/health")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "{v}");
    assert_eq!(v["status"], "ok");
    let agents = v["agents"].as_array().unwrap();
    let mut names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["echo", "failing", "slow"]);
    for a in agents {
        let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "{a}");
        assert_eq!(a["state"], "idle", "{a}");
        assert_eq!(a["queued"], 0, "{a}");
    }

    // A busy agent shows as working, with its queue.
    for i in 0..2 {
        let r = c
            .post(srv.url("/api/agents/slow/messages"))
            .header("content-type", "text/plain")
            .body(format!("job {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let mut seen = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (_, v) = json_of(c.get(srv.url("/health")).send().await.unwrap()).await;
        let slow = v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "slow")
            .unwrap()
            .clone();
        if slow["state"] == "working" && slow["queued"] == 1 {
            seen = slow;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen["state"], "working",
        "slow never showed working + 1 queued"
    );

    let (st, v) = json_of(c.get(srv.url("/api/agents")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    let list = v["agents"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let echo = list.iter().find(|a| a["name"] == "echo").unwrap();
    assert_eq!(echo["backend"], "echo");
    assert_eq!(echo["path"], "Agents/echo");
    assert_eq!(echo["enabled"], true);
    assert_eq!(echo["mode"], "single-threaded");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_json_and_text_is_durable_before_202() {
    let srv = Server::open().await;
    let c = client();

    // The note must be on disk and complete the moment the 202 arrives
    // (`slow` takes 3 s, so it is still pending or being worked on).
    let r = c
        .post(srv.url("/api/agents/slow/messages"))
        .json(&json!({
            "content": "hello there",
            "subject": "Weekly Report",
            "sender": "alice",
            "reply_to": "echo",
            "correlation_id": "c-42",
        }))
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    assert!(path.starts_with("Inbox/slow/"), "{path}");
    let (m, body) = srv.vault.note(&path);
    assert_eq!(body.trim(), "hello there");
    assert_eq!(scalar(&m, "agent").as_deref(), Some("slow"));
    assert_eq!(scalar(&m, "subject").as_deref(), Some("Weekly Report"));
    assert_eq!(scalar(&m, "sender").as_deref(), Some("alice"));
    assert_eq!(scalar(&m, "reply_to").as_deref(), Some("echo"));
    assert_eq!(scalar(&m, "correlation_id").as_deref(), Some("c-42"));
    assert!(tags(&m).contains(&"agent/message/inbound".to_string()));
    assert!(m["tags"].is_sequence(), "tags are a list: {m:?}");
    assert!(m.get("ts").and_then(serde_yaml::Value::as_str).is_some());

    // text/plain: the body is the message, sender defaults to http.
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("content-type", "text/plain; charset=utf-8")
        .body("plain words\nsecond line")
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 202, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    let (m, body) = srv.vault.note(&path);
    assert_eq!(body.trim_end(), "plain words\nsecond line");
    assert_eq!(scalar(&m, "agent").as_deref(), Some("echo"));
    assert_eq!(scalar(&m, "sender").as_deref(), Some("http"));
    srv.stop().await;
}

/// A message from HTTP lands in its agent's folder of the UTC day,
/// `Inbox/<agent>/YYYY/MM/DD/`, and its reply beside it (issue 14): with
/// `?wait`, and answered later without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_land_in_the_folder_of_their_day_with_the_reply_beside_them() {
    let srv = Server::open().await;
    let c = client();
    let before = chrono::Utc::now();
    let r = c
        .post(srv.url("/api/agents/echo/messages?wait=10"))
        .json(&json!({"content": "dated"}))
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    let after = chrono::Utc::now();
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");
    let path = v["path"].as_str().unwrap();
    assert_dated_message_path(path, "echo", before, after);
    assert_eq!(v["reply_path"], format!("{path}.reply"), "{v}");
    assert_eq!(
        srv.vault.body(&format!("{path}.reply.md")).trim(),
        "echo: dated"
    );
    assert_eq!(
        srv.vault.get(&format!("{path}.md"), "status").as_deref(),
        Some("handled")
    );

    let before = chrono::Utc::now();
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("content-type", "text/plain")
        .body("later")
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    let after = chrono::Utc::now();
    assert_eq!(st, 202, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    assert_dated_message_path(&path, "echo", before, after);
    wait_until_async(Duration::from_secs(10), "the 202 message answered", || {
        srv.vault.exists(&format!("{path}.reply.md"))
            && srv.vault.get(&format!("{path}.md"), "status").as_deref() == Some("handled")
    })
    .await;
    assert_eq!(
        srv.vault.body(&format!("{path}.reply.md")).trim(),
        "echo: later"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_reply() {
    let srv = Server::open().await;
    let c = client();
    let r = c
        .post(srv.url("/api/agents/echo/messages?wait=10"))
        .json(&json!({"content": "ping"}))
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 200, "{v}");
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["path", "reply", "reply_path", "status"]);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["reply"], "echo: ping");
    let path = v["path"].as_str().unwrap();
    let reply_path = v["reply_path"].as_str().unwrap();
    assert_eq!(reply_path, format!("{path}.reply"));
    let (m, body) = srv.vault.note(reply_path);
    assert_eq!(body.trim(), "echo: ping");
    assert_eq!(scalar(&m, "status").as_deref(), Some("ok"));
    let (m, _) = srv.vault.note(path);
    assert_eq!(scalar(&m, "status").as_deref(), Some("handled"));

    // A failing agent: 200 with the reply's status `error`.
    let r = c
        .post(srv.url("/api/agents/failing/messages?wait=10"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["reply"].as_str().unwrap().contains("boom"), "{v}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_504_and_the_message_is_still_answered_once() {
    let srv = Server::open().await;
    let c = client();
    let t0 = Instant::now();
    let r = c
        .post(srv.url("/api/agents/slow/messages?wait=1"))
        .header("content-type", "text/plain")
        .body("take your time")
        .send()
        .await
        .unwrap();
    let elapsed = t0.elapsed();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 504, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    let path = v["path"]
        .as_str()
        .expect("504 names the kept message")
        .to_string();
    assert!(srv.vault.root.join(format!("{path}.md")).exists());

    wait_until_async(Duration::from_secs(15), "the slow reply", || {
        let (m, _) = srv.vault.note(&path);
        scalar(&m, "status").as_deref() == Some("handled")
    })
    .await;
    // A little longer (an observation window): nothing else may appear.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replies = replies_to(&srv.vault, &path);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (m, body) = read_note(&replies[0]);
    assert_eq!(scalar(&m, "status").as_deref(), Some("ok"));
    assert_eq!(body.trim(), "take your time");
    let (thread, _) = srv.vault.note("Threads/slow/slow");
    assert_eq!(thread.get("turn_count").and_then(|v| v.as_u64()), Some(1));
    assert_eq!(
        srv.engine
            .stats
            .turns_ok
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    srv.stop().await;
}

/// A message to an agent whose definition is broken: the 404 says what is
/// wrong with the definition, not that the agent does not exist.
#[tokio::test]
async fn an_agent_with_a_broken_definition_is_named_as_such() {
    let v = agents();
    v.agent("broken", "backend: echo\ntimeout: soon\n", "");
    let srv = Server::start(v, HttpOptions::default()).await;
    let r = client()
        .post(srv.url("/api/agents/broken/messages"))
        .body("hi")
        .send()
        .await
        .unwrap();
    let e = expect_error(r, 404).await;
    assert!(
        e.contains("is disabled: its definition is broken") && e.contains("field `timeout`"),
        "{e}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_and_write_nothing() {
    let srv = Server::open().await;
    let c = client();
    let before = files(&srv.vault);

    // Unknown agent: 404, nothing written (JSON and text).
    let r = c
        .post(srv.url("/api/agents/nobody/messages"))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    expect_error(r, 404).await;
    let r = c
        .post(srv.url("/api/agents/nobody/messages?wait=2"))
        .body("hi")
        .send()
        .await
        .unwrap();
    expect_error(r, 404).await;
    let r = c
        .post(srv.url("/hooks/nobody"))
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(r, 404).await;
    let r = c
        .post(srv.url("/api/agents/nobody/reset"))
        .send()
        .await
        .unwrap();
    expect_error(r, 404).await;

    // Bad requests.
    let bad_json = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("content-type", "application/json")
        .body("{\"content\": ")
        .send()
        .await
        .unwrap();
    expect_error(bad_json, 400).await;
    let no_content = c
        .post(srv.url("/api/agents/echo/messages"))
        .json(&json!({"subject": "s"}))
        .send()
        .await
        .unwrap();
    let msg = expect_error(no_content, 400).await;
    assert!(msg.contains("content"), "{msg}");
    for bad in ["../x", "a b", "", "x/y"] {
        let r = c
            .post(srv.url("/api/agents/echo/messages"))
            .json(&json!({"content": "hi", "reply_to": bad}))
            .send()
            .await
            .unwrap();
        let msg = expect_error(r, 400).await;
        assert!(msg.contains("reply_to"), "{bad:?}: {msg}");
    }
    let wrong_type = c
        .post(srv.url("/api/agents/echo/messages"))
        .json(&json!({"content": 5}))
        .send()
        .await
        .unwrap();
    expect_error(wrong_type, 400).await;

    // Too large: 1 MiB + 1 byte.
    let big = vec![b'a'; 1024 * 1024 + 1];
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("content-type", "text/plain")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 413).await;
    let r = c
        .post(srv.url("/hooks/echo"))
        .body(big)
        .send()
        .await
        .unwrap();
    expect_error(r, 413).await;

    // Unknown routes and methods.
    expect_error(c.get(srv.url("/nope")).send().await.unwrap(), 404).await;
    expect_error(c.get(srv.url("/api/nope")).send().await.unwrap(), 404).await;
    expect_error(
        c.get(srv.url("/api/agents/echo/messages"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;

    assert_eq!(files(&srv.vault), before, "an error answer wrote a file");

    // Exactly 1 MiB is accepted.
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("content-type", "text/plain")
        .body(vec![b'a'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_api_and_hooks() {
    let srv = Server::secured().await;
    let c = client();
    let before = files(&srv.vault);

    for auth in [None, Some(bearer("wrong")), Some(TOKEN.to_string())] {
        let with = |rb: reqwest::RequestBuilder| match &auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        let r = with(c.get(srv.url("/api/agents"))).send().await.unwrap();
        expect_error(r, 401).await;
        let r = with(c.post(srv.url("/api/agents/echo/messages")))
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
        let r = with(c.post(srv.url("/api/agents/echo/reset")))
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
        let r = with(c.post(srv.url("/api/agents/echo/events/ticket")))
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
        let r = with(c.get(srv.url("/api/agents/echo/events")))
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
        let r = with(c.post(srv.url("/hooks/echo")))
            .body("{\"a\":1}")
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
        // Unknown agents are not revealed to the unauthenticated.
        let r = with(c.post(srv.url("/api/agents/nobody/messages")))
            .body("x")
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
    }
    assert_eq!(files(&srv.vault), before, "a 401 wrote a file");

    // /health is open (and names no agent); /metrics names the agents in
    // its labels, so it needs the token.
    assert_eq!(
        c.get(srv.url("/health")).send().await.unwrap().status(),
        200
    );
    let r = c.get(srv.url("/metrics")).send().await.unwrap();
    expect_error(r, 401).await;
    let r = c
        .get(srv.url("/metrics"))
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The right token.
    let ok = bearer(TOKEN);
    let r = c
        .get(srv.url("/api/agents"))
        .header("authorization", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("authorization", &ok)
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(srv.url("/hooks/echo"))
        .header("authorization", &ok)
        .body("plain hook")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .post(srv.url("/api/agents/echo/reset"))
        .header("authorization", &ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_signature_pretty_json_and_event_subject() {
    let srv = Server::secured().await;
    let c = client();
    let before = files(&srv.vault);
    let body = br#"{"action":"opened","number":7,"pull_request":{"title":"Fix it"}}"#;

    // Wrong signature, signature with the wrong secret, malformed: 401.
    for sig in [
        sign("not-the-secret", body),
        "sha256=00".to_string(),
        "sha1=abcd".to_string(),
        sign(SECRET, b"another body"),
    ] {
        let r = c
            .post(srv.url("/hooks/echo"))
            .header("x-hub-signature-256", sig)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        expect_error(r, 401).await;
    }
    assert_eq!(files(&srv.vault), before);

    // A valid signature suffices although a token is set and none is sent.
    let r = c
        .post(srv.url("/hooks/echo"))
        .header("x-hub-signature-256", sign(SECRET, body))
        .header("x-github-event", "pull_request")
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 202, "{v}");
    let path = v["path"].as_str().unwrap().to_string();
    let (m, note_body) = srv.vault.note(&path);
    assert_eq!(scalar(&m, "sender").as_deref(), Some("webhook:echo"));
    let subject = scalar(&m, "subject").unwrap_or_default();
    assert!(subject.contains("pull_request"), "subject {subject:?}");
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_slice::<Value>(body).unwrap()).unwrap();
    assert!(
        note_body.contains(&format!("```json\n{pretty}\n```")),
        "{note_body}"
    );
    // The subject selects a named thread under Threads/echo/.
    wait_until_async(Duration::from_secs(10), "the webhook reply", || {
        let (m, _) = srv.vault.note(&path);
        scalar(&m, "status").as_deref() == Some("handled")
    })
    .await;
    let (m, _) = srv.vault.note(&path);
    let thread = scalar(&m, "thread").unwrap();
    assert!(
        thread.starts_with("[[Threads/echo/echo--") && thread.contains("pull-request"),
        "{thread}"
    );

    // A text body stays as it is; ?wait works for hooks too.
    let text = b"deploy finished";
    let r = c
        .post(srv.url("/hooks/echo?wait=10"))
        .header("x-hub-signature-256", sign(SECRET, text))
        .body(text.to_vec())
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["reply"], "echo: deploy finished");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_without_any_credentials_configured_is_open() {
    // No token and no secret: loopback use, like the rest of the API.
    let srv = Server::open().await;
    let r = client()
        .post(srv.url("/hooks/echo"))
        .body("{\"k\": [1, 2]}")
        .send()
        .await
        .unwrap();
    let (st, v) = json_of(r).await;
    assert_eq!(st, 202, "{v}");
    let (_, body) = srv.vault.note(v["path"].as_str().unwrap());
    assert!(
        body.contains("```json\n{\n  \"k\": [\n    1,\n    2\n  ]\n}\n```"),
        "{body}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_text_done_and_error() {
    let srv = Server::secured().await;
    let c = client();
    let auth = bearer(TOKEN);

    let mut stream = c
        .get(srv.url("/api/agents/echo/events"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let ct = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");

    // Another agent's turn is not on this stream.
    let r = c
        .post(srv.url("/api/agents/failing/messages?wait=10"))
        .header("authorization", &auth)
        .body("not for echo")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("authorization", &auth)
        .body("streamed")
        .send()
        .await
        .unwrap();
    let (_, v) = json_of(r).await;
    let path = v["path"].as_str().unwrap().to_string();
    let (events, ended) =
        read_events(&mut stream, 10, |evs| evs.iter().any(|(n, _)| n == "done")).await;
    assert!(!ended, "stream ended early: {events:?}");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["text", "done"], "{events:?}");
    for (_, data) in &events {
        assert_eq!(data["agent"], "echo");
        assert_eq!(data["message"], path.as_str());
        assert_eq!(data["thread"], "Threads/echo/echo");
    }
    assert_eq!(events[0].1["text"], "echo: streamed");
    assert_eq!(events[1].1["reply"], "echo: streamed");
    drop(stream);

    // A failing agent: an `error` event.
    let mut stream = c
        .get(srv.url("/api/agents/failing/events"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let r = c
        .post(srv.url("/api/agents/failing/messages"))
        .header("authorization", &auth)
        .body("fail please")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (events, _) = read_events(&mut stream, 10, |evs| {
        evs.iter().any(|(n, _)| n == "error" || n == "done")
    })
    .await;
    let last = events.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(last.0, "error", "{events:?}");
    assert!(
        last.1["error"].as_str().unwrap_or("").contains("boom"),
        "{events:?}"
    );
    assert!(
        last.1["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Inbox/"),
        "the event names the message's note: {events:?}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ticket_is_single_use_and_per_agent() {
    let srv = Server::secured().await;
    let c = client();
    let auth = bearer(TOKEN);
    let ticket = |agent: &'static str| {
        let c = c.clone();
        let url = srv.url(&format!("/api/agents/{agent}/events/ticket"));
        let auth = auth.clone();
        async move {
            let r = c
                .post(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            let (st, v) = json_of(r).await;
            assert_eq!(st, 200, "{v}");
            v["ticket"].as_str().unwrap().to_string()
        }
    };

    let t = ticket("echo").await;
    assert!(t.len() >= 16, "{t}");
    let mut stream = c
        .get(srv.url(&format!("/api/agents/echo/events?ticket={t}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let r = c
        .post(srv.url("/api/agents/echo/messages"))
        .header("authorization", &auth)
        .body("via ticket")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (events, _) =
        read_events(&mut stream, 10, |evs| evs.iter().any(|(n, _)| n == "done")).await;
    assert!(events.iter().any(|(n, _)| n == "text"), "{events:?}");
    drop(stream);

    // Second use of the same ticket.
    let r = c
        .get(srv.url(&format!("/api/agents/echo/events?ticket={t}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    // A ticket for another agent, and a made-up one.
    let other = ticket("slow").await;
    let r = c
        .get(srv.url(&format!("/api/agents/echo/events?ticket={other}")))
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    let r = c
        .get(srv.url("/api/agents/echo/events?ticket=00000000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    // A ticket is not a credential for anything else.
    let t = ticket("echo").await;
    let r = c
        .post(srv.url(&format!("/api/agents/echo/messages?ticket={t}")))
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(r, 401).await;
    srv.stop().await;
}

/// The value of a sample line `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_and_count_turns() {
    let srv = Server::open().await;
    let c = client();
    let get = || async {
        let r = c.get(srv.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain"), "{ct}");
        r.text().await.unwrap()
    };
    let m0 = get().await;
    for t in [
        "# TYPE vaultrunner_turns_total counter",
        "# TYPE vaultrunner_turn_duration_seconds histogram",
        "# TYPE vaultrunner_queue_depth gauge",
        "# TYPE vaultrunner_notes_indexed gauge",
    ] {
        assert!(m0.contains(t), "missing {t:?} in\n{m0}");
    }
    assert_eq!(
        sample(&m0, "vaultrunner_queue_depth{agent=\"echo\"}"),
        Some(0.0)
    );
    let notes0 = sample(&m0, "vaultrunner_notes_indexed").unwrap();
    assert_eq!(notes0, 3.0, "{m0}");
    let ok_series = "vaultrunner_turns_total{agent=\"echo\",status=\"ok\"}";
    let before = sample(&m0, ok_series).unwrap_or(0.0);

    for i in 0..3 {
        let r = c
            .post(srv.url("/api/agents/echo/messages?wait=10"))
            .body(format!("m{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(srv.url("/api/agents/failing/messages?wait=10"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let m1 = get().await;
    assert_eq!(sample(&m1, ok_series), Some(before + 3.0), "{m1}");
    assert_eq!(
        sample(
            &m1,
            "vaultrunner_turns_total{agent=\"failing\",status=\"error\"}"
        ),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        sample(
            &m1,
            "vaultrunner_turn_duration_seconds_count{agent=\"echo\"}"
        ),
        Some(3.0),
        "{m1}"
    );
    assert_eq!(
        sample(
            &m1,
            "vaultrunner_turn_duration_seconds_bucket{agent=\"echo\",le=\"+Inf\"}"
        ),
        Some(3.0),
        "{m1}"
    );
    assert!(sample(&m1, "vaultrunner_turn_duration_seconds_sum{agent=\"echo\"}").unwrap() >= 0.0);
    // Buckets are cumulative (non-decreasing in `le`).
    let buckets: Vec<f64> = m1
        .lines()
        .filter(|l| l.starts_with("vaultrunner_turn_duration_seconds_bucket{agent=\"echo\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() >= 2, "{m1}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // Four inbound notes, four replies, three threads (the index counts
    // every note it has seen).
    let notes1 = sample(&m1, "vaultrunner_notes_indexed").unwrap();
    assert!(notes1 >= notes0 + 8.0, "{notes0} → {notes1}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_subjects_never_leave_the_vault() {
    let srv = Server::open().await;
    let c = client();
    let before = files(&srv.vault);
    for name in [
        "..%2F..%2Fx",
        "..%2F..%2Fecho",
        "..",
        "%2E%2E",
        "echo%2F..%2F..%2Fx",
    ] {
        let r = c
            .post(srv.url(&format!("/api/agents/{name}/messages")))
            .body("escape")
            .send()
            .await
            .unwrap();
        expect_error(r, 404).await;
        let r = c
            .post(srv.url(&format!("/hooks/{name}")))
            .body("escape")
            .send()
            .await
            .unwrap();
        // `/hooks/..` is `/` once the client resolves the dot segment:
        // the status page's route, which takes only GET.
        let resolved_to_root = matches!(name, ".." | "%2E%2E");
        expect_error(r, if resolved_to_root { 405 } else { 404 }).await;
    }
    assert_eq!(files(&srv.vault), before);

    // Raw request lines with dot segments, unnormalised by any client.
    let addr = srv.base.trim_start_matches("http://").to_string();
    for target in [
        "/api/agents/../../x/messages",
        "/hooks/../../../tmp/x",
        "/api/agents/..%2f..%2fx/messages",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nescape"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        sock.read_to_string(&mut resp).await.unwrap();
        let status: u16 = resp.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            status == 404 || status == 400,
            "{target}: {}",
            resp.lines().next().unwrap()
        );
    }
    assert_eq!(files(&srv.vault), before);

    // A subject with dot segments stays under Threads/<agent>/.
    for subject in ["../../etc", "../../../../tmp/evil", "/etc/passwd", ".."] {
        let r = c
            .post(srv.url("/api/agents/echo/messages?wait=10"))
            .json(&json!({"content": "hi", "subject": subject}))
            .send()
            .await
            .unwrap();
        let (st, v) = json_of(r).await;
        assert_eq!(st, 200, "{subject}: {v}");
    }
    let r = c
        .post(srv.url("/hooks/echo?wait=10&subject=..%2F..%2Fetc"))
        .body("hook")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for f in files(&srv.vault) {
        assert!(
            f.starts_with(&srv.vault.root),
            "written outside: {}",
            f.display()
        );
        let rel = f.strip_prefix(&srv.vault.root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert!(
            ["Agents", "Inbox", "Threads"].contains(&top.as_ref()),
            "unexpected {}",
            rel.display()
        );
        if top == "Threads" {
            assert!(rel.starts_with("Threads/echo"), "{}", rel.display());
        }
    }
    assert!(srv.vault.root.join("Threads/echo/echo--etc.md").exists());
    srv.stop().await;
}

// ------------------------------------------------------ the real binary

#[test]
fn refuses_to_listen_beyond_loopback_without_a_token() {
    let v = agents();
    let t0 = Instant::now();
    let mut serve = v.spawn_serve(&["--listen", "0.0.0.0:0"]);
    let status = serve.wait_exit(Duration::from_secs(10));
    let err = serve.log_text();
    let status = status.unwrap_or_else(|| panic!("still running; stderr: {err}"));
    assert!(!status.success(), "{status:?}; stderr: {err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(err.contains("VAULTRUNNER_TOKEN"), "{err}");
    assert!(!v.root.join(".vaultrunner/http.addr").exists());
    // An empty token counts as none.
    let mut serve = v
        .serve_run(&["--listen", "0.0.0.0:0"])
        .env("VAULTRUNNER_TOKEN", "")
        .spawn(v.next_log("serve"));
    let status = serve.wait_exit(Duration::from_secs(10)).expect("exits");
    let err = serve.log_text();
    assert!(!status.success());
    assert!(err.contains("VAULTRUNNER_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_env_auth_and_sigterm_ends_streams_and_exits() {
    let v = agents();
    let mut serve = v
        .serve_run(&["--listen", "127.0.0.1:0"])
        .env("VAULTRUNNER_TOKEN", TOKEN)
        .env("VAULTRUNNER_WEBHOOK_SECRET", SECRET)
        .spawn(v.next_log("serve"));
    let addr = serve.http_addr(&v);
    let base = format!("http://{addr}");
    let c = client();
    let auth = bearer(TOKEN);

    // The environment configures auth.
    let r = c.get(format!("{base}/api/agents")).send().await.unwrap();
    expect_error(r, 401).await;
    let r = c
        .get(format!("{base}/api/agents"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let body = b"{\"zen\":\"Keep it logically awesome.\"}";
    let r = c
        .post(format!("{base}/hooks/echo?wait=10"))
        .header("x-hub-signature-256", sign(SECRET, body))
        .header("x-github-event", "ping")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let (st, v2) = json_of(r).await;
    assert_eq!(st, 200, "{v2}");

    // An open event stream and a waiting request for a 3 s turn.
    let mut stream = c
        .get(format!("{base}/api/agents/slow/events"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let waiting = {
        let c = c.clone();
        let (url, auth) = (
            format!("{base}/api/agents/slow/messages?wait=60"),
            auth.clone(),
        );
        tokio::spawn(async move {
            c.post(url)
                .header("authorization", auth)
                .body("long job")
                .send()
                .await
        })
    };
    // Until the turn is running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = c
            .get(format!("{base}/health"))
            .header("authorization", &auth);
        let (_, h) = json_of(health.send().await.unwrap()).await;
        let slow = h["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "slow")
            .cloned()
            .unwrap();
        if slow["state"] == "working" {
            break;
        }
        assert!(Instant::now() < deadline, "slow never started: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let t0 = Instant::now();
    serve.signal(libc::SIGTERM);
    let (_, ended) = read_events(&mut stream, 10, |_| false).await;
    assert!(
        ended,
        "event stream still open {:?} after SIGTERM",
        t0.elapsed()
    );
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the ?wait request ends")
        .unwrap();
    // Answered, not cut off: 503 (shutting down; the message is kept).
    let r = waited.expect("the ?wait request gets an answer");
    let (st, body) = json_of(r).await;
    assert_eq!(st, 503, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
    let (st, err, _serve) = tokio::task::spawn_blocking(move || {
        let st = serve.wait_exit(Duration::from_secs(10));
        (st, serve.log_text(), serve)
    })
    .await
    .unwrap();
    let st = st.unwrap_or_else(|| panic!("still running 10 s after SIGTERM; stderr:\n{err}"));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(st.success(), "{st:?}\n{err}");
    assert!(!v.root.join(".vaultrunner/http.addr").exists());

    // The cut-short message is kept, pending, and runs on the next start
    // with exactly one reply.
    let msgs: Vec<PathBuf> = v
        .notes_under("Inbox/slow")
        .iter()
        .map(|rel| v.root.join(rel))
        .collect();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let (m, _) = read_note(&msgs[0]);
    assert_eq!(
        scalar(&m, "status").as_deref().unwrap_or("pending"),
        "pending",
        "{m:?}"
    );
    v.process(&[]);
    let (m, _) = read_note(&msgs[0]);
    assert_eq!(scalar(&m, "status").as_deref(), Some("handled"));
    let rel = msgs[0]
        .strip_prefix(&v.root)
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".md")
        .to_string();
    assert_eq!(replies_to(&v, &rel).len(), 1);
}
