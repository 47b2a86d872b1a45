//! Backends: one trait, one file per backend (SPEC §4).
//!
//! A backend turns a [`TurnRequest`] into a [`TurnOutput`], emitting live
//! [`TurnEvent`]s (`text`, `tool`, `tool_result`) as it goes. The turn
//! pipeline adds the one final `done` or `error` event itself, so every
//! backend ends every turn the same way. Backends honour the request's
//! deadline and the cancellation token (shutdown), killing whatever they
//! started.
//!
//! Each backend's file also owns its configuration: the keys only it reads
//! (`command`, `program`, `base_url`, …), read and checked into a typed
//! value, and a [`Kind`] that names the backend and builds it from those
//! keys. [`KINDS`] is the one list of backends. [`Kind`] and [`Settings`]
//! are defined in `agent` (re-exported here), the layer below that reads
//! definitions: whoever reads one (the engine's index, `check`) passes
//! [`KINDS`] to `agent::parse_definition`, which checks every kind's keys
//! and keeps the backend it built ([`runner`]); [`for_definition`] takes it
//! out for a turn.

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::Definition;
pub use crate::agent::{Kind, Runner, Settings};

pub mod anthropic;
pub mod claude;
pub mod codex;
pub mod command;
pub mod echo;
pub mod gemini;
pub mod http;
pub mod openai;
pub mod process;
pub mod sse;

/// Every backend a definition can name, in the order `check` lists them.
/// Adding a backend: its file (with its `KIND`), its `pub mod` line above,
/// and its line here.
pub const KINDS: &[Kind] = &[
    echo::KIND,
    command::KIND,
    claude::KIND,
    codex::KIND,
    gemini::KIND,
    openai::KIND,
    anthropic::KIND,
];

/// What a [`Kind::build`] returns: the backend, as its definition keeps it.
pub fn runner(backend: impl Backend) -> Runner {
    let shared: Arc<dyn Backend> = Arc::new(backend);
    Runner::new(shared)
}

/// The backend a definition keeps, when it was read with [`KINDS`] (only
/// a definition read with another registry, in a test, has none).
pub fn built(def: &Definition) -> Option<&Arc<dyn Backend>> {
    def.runner.get::<Arc<dyn Backend>>()
}

/// Everything a backend needs to run one turn.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub definition: Arc<Definition>,
    /// The prompt: run-context header (if any) + the message.
    pub prompt: String,
    /// The message alone (the inbound body).
    pub message: String,
    /// Definition body + thread body.
    pub system_prompt: String,
    /// A session to resume, as reported by the backend earlier.
    pub session: Option<String>,
    /// Working directory of the turn.
    pub workspace: PathBuf,
    /// Extra environment (`VAULTRUNNER_*`).
    pub env: Vec<(String, String)>,
    /// The configured timeout (named in errors).
    pub timeout: Duration,
    /// When the whole turn — every attempt — must be over.
    pub deadline: tokio::time::Instant,
    /// Longest time without output before the turn is stopped.
    pub stall: Duration,
    /// Earlier exchanges of this thread, oldest first (for backends that
    /// rebuild the conversation from the vault: `openai`, `anthropic`).
    pub history: Vec<Exchange>,
    /// The vault's own MCP endpoint, as a `--mcp-config` file (a remote
    /// vault; `claude` passes it unless `vault_mcp: false`).
    pub mcp_config: Option<PathBuf>,
    /// The files the message embeds or links (SPEC §9), for this message
    /// only (never re-sent with the history). The prompt already names
    /// them (and those left out) in its "Attachments:" section; a backend
    /// that [takes blocks](Takes::Blocks) sends their bytes.
    pub attachments: Vec<Attachment>,
}

/// A file handed to a turn with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its path in the vault (`Files/photo.png`).
    pub name: String,
    /// Its absolute path on this machine (a folder vault).
    pub path: Option<PathBuf>,
    /// Its bytes and their type, for a backend that [takes
    /// blocks](Takes::Blocks).
    pub content: Option<AttachmentContent>,
}

/// The bytes of an attachment and their media type (`image/png`,
/// `application/pdf`), told from the bytes themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentContent {
    pub media_type: &'static str,
    pub data: Arc<[u8]>,
}

impl AttachmentContent {
    pub fn is_image(&self) -> bool {
        self.media_type.starts_with("image/")
    }

    /// The bytes as base64 (the encoding the model APIs take).
    pub fn base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.data)
    }
}

/// How a backend takes the files a message comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// Their absolute paths, in the prompt and in
    /// `VAULTRUNNER_ATTACHMENTS`: the program reads them itself (the CLI
    /// backends, `command`).
    Paths,
    /// Their bytes, as content blocks of the message: images (PNG, JPEG,
    /// GIF, WebP), and PDFs when `pdf` (the HTTP model APIs).
    Blocks { pdf: bool },
}

/// One earlier message and its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub user: String,
    pub assistant: String,
}

/// Token and cost figures of one turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_cost_usd: f64,
}

/// What a turn produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnOutput {
    pub reply: String,
    /// Only an id the backend actually reported.
    pub session: Option<String>,
    pub usage: Usage,
}

/// Why a turn failed. The message is what the reply note says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("{0}")]
    Failed(String),
    #[error("the turn timed out after {0:?}")]
    Timeout(Duration),
    #[error("the turn was cut short by shutdown")]
    Cancelled,
    /// A failure worth retrying (429, 5xx, overloaded, connection reset),
    /// returned only while the turn has produced no assistant content.
    #[error("{message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl TurnError {
    /// The one rule for retries: a failure that looks transient is retried
    /// only while the turn has produced no assistant content (text or a
    /// tool call) — a retried turn must not run tools twice.
    pub fn classify(message: String, transient: bool, produced: bool) -> TurnError {
        if transient && !produced {
            TurnError::Transient {
                message,
                retry_after: None,
            }
        } else {
            TurnError::Failed(message)
        }
    }
}

/// How transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    /// First backoff; doubled each time, with ±25 % jitter.
    pub base: Duration,
    /// Longest wait, whatever `retry-after` asks for.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The default policy, with a definition's `retry_base` as the first
    /// back-off when it has one.
    pub fn for_definition(def: &Definition) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(base) = def.retry_base {
            policy.base = base;
        }
        policy
    }

    /// The wait before attempt `n + 1` (n ≥ 1). Saturating: no base, `n`
    /// or `retry-after` can overflow it; never more than `max`.
    pub fn backoff(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max);
        }
        // Capped at twice `max` (jitter cannot bring that under `max`), so
        // the jitter below cannot overflow either.
        let exp = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max.saturating_mul(2));
        // Jitter from a random UUID: 75 % to 125 %, in thousandths.
        let r = u32::try_from(uuid::Uuid::new_v4().as_u128() % 501).unwrap_or(250);
        exp.saturating_mul(750 + r)
            .checked_div(1000)
            .unwrap_or(exp)
            .min(self.max)
    }
}

/// Runs a backend, retrying transient failures per `policy`. A transient
/// failure on the last attempt becomes a plain failure naming the attempts.
pub async fn run_with_retries(
    backend: &dyn Backend,
    req: &TurnRequest,
    events: &EventSink,
    cancel: &CancellationToken,
    policy: RetryPolicy,
) -> Result<TurnOutput, TurnError> {
    let mut n = 1;
    loop {
        match backend.run(req, events, cancel).await {
            Err(TurnError::Transient {
                message,
                retry_after,
            }) => {
                if n >= policy.attempts {
                    return Err(TurnError::Failed(format!(
                        "{message} (gave up after {n} attempts)"
                    )));
                }
                let wait = policy.backoff(n, retry_after);
                if crate::time::after(wait) >= req.deadline {
                    return Err(TurnError::Failed(format!(
                        "{message} (no time left for another attempt within the turn's timeout)"
                    )));
                }
                tracing::warn!(
                    "{}: transient failure (attempt {n} of {}): {message}; retrying in {wait:?}",
                    req.definition.name,
                    policy.attempts
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(TurnError::Cancelled),
                }
                n = n.saturating_add(1);
            }
            other => return other,
        }
    }
}

/// Is this failure text one of the transient kinds (rate limits, overload,
/// server errors, dropped connections)? Permanent kinds (auth, billing,
/// invalid request, unknown model) are checked first and never transient.
pub fn is_transient_text(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    let permanent = [
        "not logged in",
        "authentication",
        "invalid api key",
        "invalid x-api-key",
        "billing",
        "credit balance",
        "permission",
        "model_not_found",
        "not_found_error",
        "invalid_request",
        "unauthorized",
    ];
    if permanent.iter().any(|p| l.contains(p)) {
        return false;
    }
    let transient = [
        "overloaded",
        "529",
        "(429)",
        " 429",
        "rate limit",
        "rate_limit",
        "api error: 500",
        "api error: 502",
        "api error: 503",
        "api error: 504",
        "internal server error",
        "api_error",
        "server_error",
        "service unavailable",
        "bad gateway",
        "connection reset",
        "econnreset",
        "connection error",
        "connection refused",
        "socket hang up",
        "stream disconnected",
        "temporarily unavailable",
    ];
    transient.iter().any(|t| l.contains(t))
}

/// A live event of a turn.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnEvent {
    Text {
        text: String,
    },
    Tool {
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        output: String,
        is_error: bool,
    },
    Done {
        reply: String,
    },
    /// `{"error": "…"}` on the wire: the event's `message` is the note's
    /// path (`AgentEvent`).
    Error {
        #[serde(rename = "error")]
        message: String,
    },
}

/// An event with where it belongs.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEvent {
    pub agent: String,
    pub thread: String,
    pub message: String,
    #[serde(flatten)]
    pub event: TurnEvent,
    /// On the turn's last event (`done`, `error`): how long the turn ran,
    /// in milliseconds, from the start of its backend run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

/// Where a backend sends its live events. Sending never blocks and never
/// fails the turn (nobody listening is fine).
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: tokio::sync::broadcast::Sender<AgentEvent>,
    agent: String,
    thread: String,
    message: String,
    /// When the sink was made: the start of the turn's backend run.
    started: std::time::Instant,
}

impl EventSink {
    pub fn new(
        tx: tokio::sync::broadcast::Sender<AgentEvent>,
        agent: &str,
        thread: &str,
        message: &str,
    ) -> Self {
        EventSink {
            tx,
            agent: agent.to_string(),
            thread: thread.to_string(),
            message: message.to_string(),
            started: std::time::Instant::now(),
        }
    }

    pub fn emit(&self, event: TurnEvent) {
        let last = matches!(event, TurnEvent::Done { .. } | TurnEvent::Error { .. });
        let ms =
            last.then(|| u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let _ = self.tx.send(AgentEvent {
            agent: self.agent.clone(),
            thread: self.thread.clone(),
            message: self.message.clone(),
            event,
            ms,
        });
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one backend trait. A backend is built once, when its definition is
/// read (see [`Kind`]), and runs every turn of that definition.
pub trait Backend: Any + Debug + Send + Sync {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>>;

    /// Does a turn of this backend run programs that may write to the vault
    /// (so `process` must look for new notes afterwards)?
    fn runs_external_programs(&self) -> bool {
        true
    }

    /// Should the prompt carry the run-context header?
    fn wants_context_header(&self) -> bool {
        true
    }

    /// Does this backend need the thread's earlier exchanges (it keeps no
    /// session of its own)?
    fn wants_history(&self) -> bool {
        false
    }

    /// How it takes a message's attachments.
    fn takes(&self) -> Takes {
        Takes::Paths
    }
}

impl dyn Backend {
    /// The backend as its own type, to read its configuration
    /// (`built(&def)?.downcast_ref::<command::CommandBackend>()`).
    pub fn downcast_ref<T: Backend>(&self) -> Option<&T> {
        let any: &dyn Any = self;
        any.downcast_ref()
    }
}

/// The backend a definition names, built when the definition was read
/// (`Definition::runner`): nothing is read again here. It fails only for a
/// definition read with a registry other than [`KINDS`].
pub fn for_definition(def: &Definition) -> Result<Box<dyn Backend>, TurnError> {
    match built(def) {
        Some(b) => Ok(Box::new(Shared(b.clone()))),
        None => Err(TurnError::Failed(format!(
            "the {} backend of {}.md was not built by this program's backends ({:?})",
            def.backend, def.path, def.runner
        ))),
    }
}

/// A definition's backend, shared by its turns.
#[derive(Debug)]
struct Shared(Arc<dyn Backend>);

impl Backend for Shared {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        self.0.run(req, events, cancel)
    }

    fn runs_external_programs(&self) -> bool {
        self.0.runs_external_programs()
    }

    fn wants_context_header(&self) -> bool {
        self.0.wants_context_header()
    }

    fn wants_history(&self) -> bool {
        self.0.wants_history()
    }

    fn takes(&self) -> Takes {
        self.0.takes()
    }
}

/// The system prompt folded into the prompt, for CLIs without a flag for
/// it (codex, gemini).
pub fn with_system_prompt(system: &str, prompt: &str) -> String {
    if system.trim().is_empty() {
        prompt.to_string()
    } else {
        format!("<system>\n{}\n</system>\n\n{prompt}", system.trim())
    }
}

/// Text of the last characters of a string (error messages).
pub fn tail(s: &str, n: usize) -> &str {
    command::tail(s, n)
}

/// Helpers for the backends' configuration tests.
#[cfg(test)]
pub(crate) mod testing {
    use serde_yaml::Mapping;

    use super::{Backend, KINDS, built};
    use crate::agent::{Definition, DefinitionError, parse_definition};
    use crate::note::{FieldError, Note};

    /// Front-matter from YAML.
    pub fn meta(yaml: &str) -> Mapping {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// A definition `Agents/helper` with this front-matter.
    pub fn definition(front: &str) -> Result<Definition, DefinitionError> {
        parse_definition(
            "Agents/helper",
            &Note::parse(&format!("---\n{front}---\nYou help.\n")).unwrap(),
            KINDS,
        )
    }

    /// The backend a definition read with [`KINDS`] keeps.
    pub fn backend_of(d: &Definition) -> &dyn Backend {
        built(d).unwrap().as_ref()
    }

    /// The error a `Config::read` gives, as (field, reason).
    pub fn error<T: std::fmt::Debug>(r: Result<T, FieldError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.field, e.reason)
    }
}

#[cfg(test)]
mod tests {
    use serde_yaml::Mapping;

    use super::*;

    #[test]
    fn the_registry_is_well_formed() {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(
            names,
            [
                "echo",
                "command",
                "claude",
                "codex",
                "gemini",
                "openai",
                "anthropic"
            ]
        );
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.name, k.name.to_ascii_lowercase());
            assert!(
                KINDS.iter().skip(i + 1).all(|o| o.name != k.name),
                "{} is registered twice",
                k.name
            );
            assert_eq!(k.needs_model, matches!(k.name, "openai" | "anthropic"));
            (k.check)(&Mapping::new()).unwrap();
        }
    }

    /// Every backend's keys are checked whatever backend the definition
    /// names; `model` only for the backends that need it; then the named
    /// backend is built (and only its own requirements count).
    #[test]
    fn every_backend_checks_its_keys_then_one_is_built() {
        let field = |front: &str| testing::definition(front).unwrap_err().field;
        for (yaml, key) in [
            ("temperature: warm", "temperature"),
            ("command: {a: 1}", "command"),
            ("args: {a: 1}", "args"),
            ("max_tokens: 0", "max_tokens"),
            ("context_header: maybe", "context_header"),
        ] {
            assert_eq!(field(&format!("{yaml}\n")), key, "{yaml}");
        }
        let e = testing::definition("backend: openai\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            (
                "model",
                "the openai backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"
            )
        );
        assert!(testing::definition("backend: openai\nmodel: m\n").is_ok());
        // `command` is required by the command backend only.
        assert!(testing::definition("").is_ok());
        assert_eq!(field("backend: command\n"), "command");
    }

    /// A backend's key of the wrong type is an error naming it, on a
    /// definition of another backend too (here `claude`).
    #[test]
    fn wrong_typed_backend_keys_are_errors() {
        for (key, value) in [
            ("context_header", "{a: 1}"),
            ("max_tokens", "[10]"),
            ("temperature", "[0.2]"),
            ("base_url", "[http://x]"),
            ("api_key_env", "{a: 1}"),
            ("program", "[claude]"),
            ("args", "{a: 1}"),
            ("args", "[--x, [nested]]"),
            ("command", "{a: 1}"),
            ("command", "[python3, {a: 1}]"),
        ] {
            let e = testing::definition(&format!("backend: claude\n{key}: {value}\n")).unwrap_err();
            assert_eq!(e.field, key, "{key}: {value}: {e}");
            assert!(
                e.to_string().starts_with("Agents/helper.md: field `"),
                "{e}"
            );
        }
        let e = testing::definition("command: [python3, [x]]\nbackend: command\n").unwrap_err();
        assert_eq!(
            e.reason,
            "item 2 is a list; each item must be a single value"
        );
    }

    /// The backend is built when the definition is read, from the keys its
    /// file reads, and handed out as it is.
    #[test]
    fn the_definition_keeps_its_backend() {
        let d = testing::definition("backend: command\ncommand: [tr, a-z, A-Z]\n").unwrap();
        let c = testing::backend_of(&d)
            .downcast_ref::<command::CommandBackend>()
            .unwrap();
        assert_eq!(c.argv(), ["tr", "a-z", "A-Z"]);
        assert!(for_definition(&d).is_ok());
        for (name, model) in [("echo", ""), ("claude", ""), ("openai", "model: m\n")] {
            let d = testing::definition(&format!("backend: {name}\n{model}")).unwrap();
            assert_eq!(d.backend, name);
            let shown = format!("{:?}", d.runner);
            assert!(
                shown.to_ascii_lowercase().starts_with(name),
                "{name}: {shown}"
            );
        }
    }

    /// A definition read with another registry has no backend a turn can
    /// run: the turn fails with a reason instead of running something else.
    #[test]
    fn a_definition_of_another_registry_is_not_run() {
        let kinds = [Kind {
            name: "echo",
            needs_model: false,
            check: |_| Ok(()),
            build: |_| Ok(Runner::new("not a backend")),
        }];
        let note = crate::note::Note::parse("---\n---\n").unwrap();
        let d = crate::agent::parse_definition("Agents/x", &note, &kinds).unwrap();
        assert!(built(&d).is_none());
        let Err(e) = for_definition(&d) else {
            panic!("ran a backend it was not given")
        };
        assert!(e.to_string().contains("Agents/x.md"), "{e}");
    }

    /// The unknown-backend error lists the registry, so a backend added to
    /// [`KINDS`] is named without another list to keep.
    #[test]
    fn unknown_backend_names_every_registered_backend() {
        let e = testing::definition("backend: gpt\n").unwrap_err();
        assert_eq!(e.field, "backend");
        assert_eq!(
            e.reason,
            "unknown backend \"gpt\" (one of: echo, command, claude, codex, gemini, openai, anthropic)"
        );
        for k in KINDS {
            assert!(e.reason.contains(k.name), "{}: {e}", k.name);
            let d = testing::definition(&format!("backend: {}\nmodel: m\ncommand: x\n", k.name));
            assert_eq!(d.map(|d| d.backend).as_deref(), Ok(k.name));
        }
    }

    #[test]
    fn transient_texts() {
        for t in [
            "API Error: Repeated 529 Overloaded errors. The API is at capacity",
            "API Error: Request rejected (429) · this may be a temporary capacity issue",
            "API Error: 500 {\"type\":\"error\",\"error\":{\"type\":\"api_error\"}}",
            "stream error: connection reset by peer",
        ] {
            assert!(is_transient_text(t), "{t}");
        }
        for t in [
            "Not logged in · Please run /login",
            "authentication_error: invalid x-api-key",
            "model_not_found: no such model",
            "some other failure",
        ] {
            assert!(!is_transient_text(t), "{t}");
        }
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 3,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        let b1 = p.backoff(1, None);
        let b2 = p.backoff(2, None);
        assert!(b1 >= Duration::from_millis(75) && b1 <= Duration::from_millis(125));
        assert!(b2 >= Duration::from_millis(150) && b2 <= Duration::from_millis(250));
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(100))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn backoff_never_overflows() {
        let p = RetryPolicy {
            attempts: u32::MAX,
            base: Duration::MAX,
            max: Duration::MAX,
        };
        for n in [0, 1, 2, 17, u32::MAX] {
            assert!(p.backoff(n, None) >= Duration::from_secs(1), "{n}");
            assert_eq!(p.backoff(n, Some(Duration::MAX)), Duration::MAX);
        }
        let p = RetryPolicy {
            base: crate::time::MAX_DURATION,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(3, None), p.max);
    }
}
