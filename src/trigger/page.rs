//! The status page at `GET /` (SPEC §9, issue 12): one hand-written HTML
//! page, its stylesheet and its script, embedded in the binary
//! (`include_str!`): no CDN, no build step, nothing fetched from anywhere
//! but this server. The page polls `GET /api/status` (built here from the
//! engine's fixed-size record, [`crate::engine::activity`]) and follows
//! running turns through the per-agent event streams. `docs/status-page.md`
//! says what it shows.
//!
//! The HTML names no agent: a request without the token learns only
//! whether a token is needed. Every answer here forbids framing and any
//! script, style or connection that is not this server's own (CSP).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::backend::{AgentEvent, TurnEvent};
use crate::engine::Engine;
use crate::note::percent_encode;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Where the page's script and stylesheet are served.
pub const JS_PATH: &str = "/assets/app.js";
pub const CSS_PATH: &str = "/assets/app.css";

/// The most problems `/api/status` lists (it says how many there are).
pub const MAX_PROBLEMS: usize = 200;
/// The end of a running turn's text kept for a page opened mid-turn.
const LIVE_TEXT: usize = 16 * 1024;
/// Tool calls kept per running turn (the last ones).
const LIVE_TOOLS: usize = 20;
/// A tool call's input or output is cut to this many characters.
const TOOL_CHARS: usize = 300;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`: the page. `token` says whether the API needs the token, so
/// the page asks for it at once; nothing else about the server is in it.
pub fn index(token: bool) -> Response {
    let html = INDEX_HTML.replace(
        "data-token=\"unknown\"",
        if token {
            "data-token=\"required\""
        } else {
            "data-token=\"none\""
        },
    );
    with_headers("text/html; charset=utf-8", html)
}

/// `GET /assets/app.js`.
pub fn script() -> Response {
    with_headers("text/javascript; charset=utf-8", APP_JS.to_string())
}

/// `GET /assets/app.css`.
pub fn stylesheet() -> Response {
    with_headers("text/css; charset=utf-8", APP_CSS.to_string())
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
        None => s.to_string(),
    }
}

/// The name Obsidian knows a folder vault by (the folder's name), or
/// `None` for a vault that is no folder (a URL).
pub fn obsidian_vault_name(location: &str) -> Option<String> {
    if location.contains("://") {
        return None;
    }
    std::path::Path::new(location)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// `obsidian://open?vault=…&file=…` for a note (a vault path, no `.md`).
pub fn obsidian_link(vault_name: &str, note: &str) -> String {
    format!(
        "obsidian://open?vault={}&file={}",
        percent_encode(vault_name),
        percent_encode(&format!("{note}.md"))
    )
}

/// A tool call of a running turn.
#[derive(Debug, Clone)]
struct Tool {
    name: String,
    input: String,
    output: Option<(String, bool)>,
}

/// What a running turn has streamed so far (its end only).
#[derive(Debug, Clone)]
struct LiveTurn {
    message: String,
    thread: String,
    text: String,
    tools: VecDeque<Tool>,
}

/// The running turns' text and tool calls, from the engine's live events,
/// for a page opened in the middle of a turn. One entry per agent with a
/// turn running, each of bounded size, dropped when the turn ends.
#[derive(Debug, Default)]
pub struct Live {
    turns: Mutex<HashMap<String, LiveTurn>>,
}

impl Live {
    /// Follows the engine's events until `cancel` (when there is a runtime
    /// to follow them on; otherwise it stays empty).
    pub fn follow(engine: &Engine, cancel: CancellationToken) -> Arc<Live> {
        let live = Arc::new(Live::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut rx = engine.subscribe();
            let l = live.clone();
            rt.spawn(async move {
                loop {
                    let got = tokio::select! {
                        r = rx.recv() => r,
                        () = cancel.cancelled() => return,
                    };
                    match got {
                        Ok(ev) => l.apply(&ev),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        live
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveTurn>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, ev: &AgentEvent) {
        let mut turns = self.lock();
        if matches!(ev.event, TurnEvent::Done { .. } | TurnEvent::Error { .. }) {
            turns.remove(&ev.agent);
            return;
        }
        if turns.len() >= crate::engine::activity::MAX_AGENTS && !turns.contains_key(&ev.agent) {
            return;
        }
        let t = turns.entry(ev.agent.clone()).or_insert_with(|| LiveTurn {
            message: ev.message.clone(),
            thread: ev.thread.clone(),
            text: String::new(),
            tools: VecDeque::new(),
        });
        if t.message != ev.message {
            *t = LiveTurn {
                message: ev.message.clone(),
                thread: ev.thread.clone(),
                text: String::new(),
                tools: VecDeque::new(),
            };
        }
        match &ev.event {
            TurnEvent::Text { text } => {
                t.text.push_str(text);
                if t.text.len() > 2 * LIVE_TEXT {
                    let mut from = t.text.len() - LIVE_TEXT;
                    while !t.text.is_char_boundary(from) {
                        from += 1;
                    }
                    t.text.drain(..from);
                }
            }
            TurnEvent::Tool { name, input } => {
                if t.tools.len() >= LIVE_TOOLS {
                    t.tools.pop_front();
                }
                t.tools.push_back(Tool {
                    name: cut(name, TOOL_CHARS),
                    input: cut(&input.to_string(), TOOL_CHARS),
                    output: None,
                });
            }
            TurnEvent::ToolResult { output, is_error } => {
                if let Some(tool) = t.tools.iter_mut().rev().find(|x| x.output.is_none()) {
                    tool.output = Some((cut(output, TOOL_CHARS), *is_error));
                }
            }
            TurnEvent::Done { .. } | TurnEvent::Error { .. } => {}
        }
    }

    /// Forgets the turns of agents that are not working any more (a turn
    /// whose end event was missed).
    fn keep_only(&self, working: &HashSet<&str>) {
        self.lock()
            .retain(|agent, _| working.contains(agent.as_str()));
    }

    fn of(&self, agent: &str) -> Option<LiveTurn> {
        self.lock().get(agent).cloned()
    }
}

fn outcome(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

/// `GET /api/status`: everything the page shows (docs/status-page.md).
pub fn status(engine: &Engine, live: &Live) -> Value {
    let snap = engine.activity_snapshot();
    let mut states = engine.agent_states();
    states.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
    let working: HashSet<&str> = states
        .iter()
        .filter(|a| a.state == "working")
        .map(|a| a.definition.name.as_str())
        .collect();
    live.keep_only(&working);
    let location = engine.vault().location();
    let obsidian = obsidian_vault_name(&location);
    let link = |note: Option<&str>| -> Value {
        match (&obsidian, note) {
            (Some(v), Some(n)) => json!(obsidian_link(v, n)),
            _ => Value::Null,
        }
    };
    let turn = |t: &crate::engine::activity::TurnRecord| -> Value {
        json!({
            "agent": t.agent,
            "message": t.message,
            "reply": t.reply,
            "thread": t.thread,
            "at": t.at,
            "ms": t.ms,
            "outcome": outcome(t.ok),
            "error": t.error,
            "tokens": {"input": t.usage.input_tokens, "output": t.usage.output_tokens},
            "cost_usd": t.usage.total_cost_usd,
            "links": {
                "message": link(Some(&t.message)),
                "reply": link(Some(&t.reply)),
                "thread": link(t.thread.as_deref()),
            },
        })
    };
    let mut series = serde_json::Map::new();
    let agents: Vec<Value> = states
        .iter()
        .map(|a| {
            let d = &a.definition;
            let act = snap.agents.get(&d.name);
            if let Some(act) = act {
                let minutes: Vec<Value> = act
                    .series
                    .iter()
                    .map(|m| {
                        let at = chrono::DateTime::from_timestamp(m.minute.saturating_mul(60), 0)
                            .map(|t| t.format("%Y-%m-%dT%H:%M:00Z").to_string());
                        json!({"minute": at, "turns": m.turns, "queued": m.queued})
                    })
                    .collect();
                series.insert(d.name.clone(), Value::Array(minutes));
            }
            let running = (a.state == "working").then(|| {
                let started = act.and_then(|x| x.running.as_ref());
                let lt = live.of(&d.name);
                let message = lt
                    .as_ref()
                    .map(|l| l.message.clone())
                    .or_else(|| started.map(|s| s.message.clone()));
                json!({
                    "message": message,
                    "since": started.map(|s| s.since.clone()),
                    "thread": lt.as_ref().map(|l| l.thread.clone()).filter(|t| !t.is_empty()),
                    "text": lt.as_ref().map(|l| l.text.clone()).unwrap_or_default(),
                    "tools": lt.as_ref().map(|l| l.tools.iter().map(|t| json!({
                        "name": t.name,
                        "input": t.input,
                        "output": t.output.as_ref().map(|o| o.0.clone()),
                        "is_error": t.output.as_ref().is_some_and(|o| o.1),
                    })).collect::<Vec<_>>()).unwrap_or_default(),
                })
            });
            let usage = act.map(|x| x.usage).unwrap_or_default();
            json!({
                "name": d.name,
                "state": a.state,
                "queued": a.queued,
                "backend": d.backend,
                "model": d.model,
                "enabled": d.enabled,
                "last_turn": act.and_then(|x| x.last.as_ref()).map(|l| json!({
                    "at": l.at,
                    "ms": l.ms,
                    "outcome": outcome(l.ok),
                    "message": l.message,
                    "error": l.error,
                })),
                "turns": act.map_or(0, |x| x.turns),
                "errors": act.map_or(0, |x| x.errors),
                "tokens": {"input": usage.input_tokens, "output": usage.output_tokens},
                "cost_usd": usage.total_cost_usd,
                "running": running,
            })
        })
        .collect();
    let (problems, total) = engine.with_index(|ix| {
        let mut all: Vec<(String, String, bool)> = ix
            .problems()
            .map(|p| (format!("{}.md", p.path), p.reason.clone(), p.is_error))
            .collect();
        all.extend(ix.waiting().into_iter().map(|(path, agent, why)| {
            (
                format!("{path}.md"),
                format!("waiting for agent {agent:?}: {why}"),
                false,
            )
        }));
        let total = all.len();
        all.sort();
        all.truncate(MAX_PROBLEMS);
        (all, total)
    });
    let problems: Vec<Value> = problems
        .into_iter()
        .map(|(path, reason, error)| json!({"path": path, "reason": reason, "error": error}))
        .collect();
    json!({
        "now": crate::turn::now_rfc3339(),
        "agents": agents,
        "recent": snap.recent.iter().map(turn).collect::<Vec<_>>(),
        "series": series,
        "problems": problems,
        "problems_total": total,
        "vault": {"location": location, "obsidian_name": obsidian},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obsidian_links_are_encoded_and_only_for_folders() {
        assert_eq!(
            obsidian_vault_name("/home/me/My Vault").as_deref(),
            Some("My Vault")
        );
        assert_eq!(obsidian_vault_name("https://vault.example/v"), None);
        assert_eq!(obsidian_vault_name("/"), None);
        assert_eq!(
            obsidian_link("My Vault", "Inbox/echo/a b&c=d#é"),
            "obsidian://open?vault=My%20Vault&file=Inbox%2Fecho%2Fa%20b%26c%3Dd%23%C3%A9.md"
        );
    }

    #[test]
    fn the_html_names_nothing_but_whether_a_token_is_needed() {
        let body = |r: Response| {
            let csp = r.headers().get(header::CONTENT_SECURITY_POLICY).cloned();
            assert!(csp.is_some_and(|c| c.to_str().unwrap().contains("frame-ancestors 'none'")));
            r
        };
        body(index(true));
        assert!(INDEX_HTML.contains("data-token=\"unknown\""));
        assert!(
            !APP_JS.contains("innerHTML"),
            "the page builds its DOM from text only"
        );
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(!APP_CSS.contains("url(http"));
    }

    fn ev(agent: &str, message: &str, event: TurnEvent) -> AgentEvent {
        AgentEvent {
            agent: agent.into(),
            thread: format!("Threads/{agent}/t"),
            message: message.into(),
            event,
            ms: None,
        }
    }

    #[test]
    fn a_running_turn_keeps_the_end_of_its_text_and_its_last_tools() {
        let live = Live::default();
        let chunk = "é".repeat(1000); // 2000 bytes
        for _ in 0..100 {
            live.apply(&ev(
                "a",
                "m1",
                TurnEvent::Text {
                    text: chunk.clone(),
                },
            ));
        }
        let t = live.of("a").unwrap();
        assert!(t.text.len() <= 2 * LIVE_TEXT && t.text.len() >= LIVE_TEXT);
        for i in 0..50 {
            live.apply(&ev(
                "a",
                "m1",
                TurnEvent::Tool {
                    name: format!("t{i}"),
                    input: json!({"x": "y".repeat(1000)}),
                },
            ));
        }
        live.apply(&ev(
            "a",
            "m1",
            TurnEvent::ToolResult {
                output: "done".into(),
                is_error: false,
            },
        ));
        let t = live.of("a").unwrap();
        assert_eq!(t.tools.len(), LIVE_TOOLS);
        assert_eq!(t.tools.back().unwrap().name, "t49");
        assert_eq!(t.tools.back().unwrap().output.as_ref().unwrap().0, "done");
        assert!(t.tools.back().unwrap().input.chars().count() <= TOOL_CHARS + 1);
        // The next message starts afresh; the end forgets it.
        live.apply(&ev("a", "m2", TurnEvent::Text { text: "hi".into() }));
        assert_eq!(live.of("a").unwrap().text, "hi");
        live.apply(&ev("a", "m2", TurnEvent::Done { reply: "hi".into() }));
        assert!(live.of("a").is_none());
        live.apply(&ev("b", "m3", TurnEvent::Text { text: "x".into() }));
        live.keep_only(&HashSet::new());
        assert!(live.of("b").is_none());
    }
}
