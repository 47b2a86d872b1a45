//! `claude`: Claude Code headless, `claude -p --output-format stream-json
//! --verbose` (stream-json refuses to run without `--verbose`).
//!
//! The prompt goes on stdin (no argv length limit). A thread's first turn
//! creates its session with `--session-id <uuid>`; later turns of a
//! single-threaded or subject thread `--resume <id>`. Only an id the CLI
//! echoed (`system/init` or `result`) is stored. "No conversation found
//! with session ID" on a resume retries once with a fresh session.
//!
//! The `result` line decides the outcome: `subtype` and `is_error` (an auth
//! failure arrives as `subtype: "success"` with `is_error: true`).
//! Shapes: ../../shared/PROTOCOLS.md, from public captures of Claude Code
//! 2.1.x stream-json output.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::process;
use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, TurnError, TurnEvent, TurnOutput,
    TurnRequest, Usage, is_transient_text, tail,
};
use crate::agent::SystemPromptMode;
use crate::note::FieldError;

/// System prompts longer than this go through a file, not argv.
const ARGV_PROMPT_LIMIT: usize = 100_000;

#[derive(Debug)]
pub struct Claude {
    config: Config,
    model: Option<String>,
    mode: SystemPromptMode,
}

impl Claude {
    /// The keys it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// `claude` in the registry.
pub const KIND: Kind = Kind {
    name: "claude",
    needs_model: false,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys `claude` reads: those of the CLI backends, `program` (default
/// `claude`) and `args`, and `vault_mcp` (default true: a turn of a remote
/// vault gets the vault's MCP endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub cli: process::CliKeys,
    pub vault_mcp: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cli: process::CliKeys::default(),
            vault_mcp: true,
        }
    }
}

impl Config {
    pub fn read(meta: &serde_yaml::Mapping) -> Result<Config, FieldError> {
        Ok(Config {
            cli: process::CliKeys::read(meta)?,
            vault_mcp: crate::agent::keys::flag(meta, "vault_mcp")?.unwrap_or(true),
        })
    }
}

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(super::runner(Claude {
        config: c,
        model: s.model.map(str::to_string),
        mode: s.system_prompt_mode,
    }))
}

/// What the stream said, line by line.
#[derive(Debug, Default)]
pub struct ClaudeStream {
    pub init_session: Option<String>,
    pub texts: Vec<String>,
    /// Assistant text or a tool call was seen: never retry after this.
    pub produced: bool,
    /// The synthetic assistant line's top-level `error` kind.
    pub api_error: Option<String>,
    pub result: Option<Value>,
    /// Non-JSON lines (Claude prints some runtime errors on stdout).
    pub other: Vec<String>,
}

fn tool_result_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl ClaudeStream {
    /// Takes one stdout line.
    pub fn feed(&mut self, line: &[u8], events: &EventSink) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            let s = String::from_utf8_lossy(line).trim().to_string();
            if !s.is_empty() && self.other.len() < 50 {
                self.other.push(s);
            }
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("system") => {
                if v.get("subtype").and_then(Value::as_str) == Some("init")
                    && let Some(id) = v.get("session_id").and_then(Value::as_str)
                {
                    self.init_session = Some(id.to_string());
                }
            }
            Some("assistant") => {
                if let Some(kind) = v.get("error").and_then(Value::as_str) {
                    self.api_error = Some(kind.to_string());
                    return;
                }
                let blocks = v
                    .pointer("/message/content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for b in blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            let t = b.get("text").and_then(Value::as_str).unwrap_or_default();
                            self.produced = true;
                            self.texts.push(t.to_string());
                            events.emit(TurnEvent::Text {
                                text: t.to_string(),
                            });
                        }
                        Some("tool_use") => {
                            self.produced = true;
                            events.emit(TurnEvent::Tool {
                                name: b
                                    .get("name")
                                    .and_then(Value::as_str)
                                    .unwrap_or("tool")
                                    .to_string(),
                                input: b.get("input").cloned().unwrap_or(Value::Null),
                            });
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                let blocks = v
                    .pointer("/message/content")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for b in blocks {
                    if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                        events.emit(TurnEvent::ToolResult {
                            output: tool_result_text(b.get("content").unwrap_or(&Value::Null)),
                            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                        });
                    }
                }
            }
            Some("result") => self.result = Some(v),
            _ => {}
        }
    }
}

/// How one run of the CLI ended.
#[derive(Debug)]
pub enum Ended {
    Ok(TurnOutput),
    Err(TurnError),
    /// The resumed session does not exist (any more).
    StaleSession,
}

fn usage_of(result: &Value) -> Usage {
    let n = |p: &str| result.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: n("/usage/input_tokens")
            + n("/usage/cache_creation_input_tokens")
            + n("/usage/cache_read_input_tokens"),
        output_tokens: n("/usage/output_tokens"),
        total_cost_usd: result
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
    }
}

/// Decides the outcome of a run from its stream, exit and stderr.
pub fn outcome(s: ClaudeStream, done: &process::Streamed, resumed: bool) -> Ended {
    let stale = |t: &str| t.contains("No conversation found with session ID");
    if let Some(r) = &s.result {
        let subtype = r.get("subtype").and_then(Value::as_str).unwrap_or("");
        let is_error = r.get("is_error").and_then(Value::as_bool).unwrap_or(false);
        let text = r.get("result").and_then(Value::as_str).unwrap_or("");
        let session = r
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or(s.init_session.clone());
        if subtype == "success" && !is_error {
            let reply = if text.is_empty() && r.get("result").is_none() {
                s.texts.join("\n\n")
            } else {
                text.to_string()
            };
            return Ended::Ok(TurnOutput {
                reply,
                session,
                usage: usage_of(r),
            });
        }
        if resumed && stale(text) {
            return Ended::StaleSession;
        }
        let errors: Vec<&str> = r
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let reason = if !text.is_empty() {
            text.to_string()
        } else if !errors.is_empty() {
            format!("{subtype}: {}", errors.join("; "))
        } else {
            match subtype {
                "error_max_turns" => {
                    "claude stopped: the maximum number of turns was reached (error_max_turns)"
                        .into()
                }
                "error_max_budget_usd" => {
                    "claude stopped: the budget was used up (error_max_budget_usd)".into()
                }
                "" => "claude reported an error".into(),
                other => format!("claude stopped: {other}"),
            }
        };
        let transient_kind = matches!(
            s.api_error.as_deref(),
            Some("rate_limit" | "overloaded" | "server_error")
        );
        let transient = transient_kind || is_transient_text(&reason);
        return Ended::Err(TurnError::classify(
            format!("claude: {reason}"),
            transient,
            s.produced,
        ));
    }
    let out_text = s.other.join("\n");
    if resumed && (stale(&done.stderr) || stale(&out_text)) {
        return Ended::StaleSession;
    }
    let how = match (done.code, done.signal) {
        (Some(143), _) | (_, Some(15)) => "was terminated (SIGTERM) before it finished".to_string(),
        (_, Some(sig)) => format!("was killed by signal {sig} before it finished"),
        (Some(c), _) => format!("exited with status {c} without a result"),
        (None, None) => "ended without a result".to_string(),
    };
    let detail = [tail(&done.stderr, 1500), tail(&out_text, 1500)]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let msg = if detail.is_empty() {
        format!("claude {how}")
    } else {
        format!("claude {how}: {detail}")
    };
    Ended::Err(TurnError::classify(
        msg,
        is_transient_text(&detail),
        s.produced,
    ))
}

impl Claude {
    fn argv(
        &self,
        req: &TurnRequest,
        session: &SessionArg,
        prompt_file: Option<&str>,
    ) -> Vec<String> {
        let mut a = vec![
            self.config.cli.program_or("claude"),
            "-p".into(),
            "--output-format".into(),
            "stream-json".into(),
            "--verbose".into(),
        ];
        match session {
            SessionArg::Create(id) => a.extend(["--session-id".into(), id.clone()]),
            SessionArg::Resume(id) => a.extend(["--resume".into(), id.clone()]),
        }
        if let Some(m) = &self.model {
            a.extend(["--model".into(), m.clone()]);
        }
        let sp = req.system_prompt.trim();
        if !sp.is_empty() {
            let flag = match (self.mode, prompt_file.is_some()) {
                (SystemPromptMode::Append, false) => "--append-system-prompt",
                (SystemPromptMode::Replace, false) => "--system-prompt",
                (SystemPromptMode::Append, true) => "--append-system-prompt-file",
                (SystemPromptMode::Replace, true) => "--system-prompt-file",
            };
            a.push(flag.into());
            a.push(prompt_file.map_or_else(|| sp.to_string(), str::to_string));
        }
        // The vault's own MCP endpoint: a file only this user can read
        // (it holds the token), never the token itself on the command line.
        if self.config.vault_mcp
            && let Some(file) = &req.mcp_config
        {
            a.extend(["--mcp-config".into(), file.display().to_string()]);
        }
        a.extend(self.config.cli.args.iter().cloned());
        a
    }
}

enum SessionArg {
    Create(String),
    Resume(String),
}

impl process::CliStream for ClaudeStream {
    fn feed(&mut self, line: &[u8], events: &EventSink) -> bool {
        ClaudeStream::feed(self, line, events);
        self.result.is_none()
    }

    fn outcome(
        self,
        done: &process::Streamed,
        resumed: bool,
    ) -> Option<Result<TurnOutput, TurnError>> {
        match outcome(self, done, resumed) {
            Ended::Ok(out) => Some(Ok(out)),
            Ended::Err(e) => Some(Err(e)),
            Ended::StaleSession => None,
        }
    }
}

impl Backend for Claude {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            // A very long system prompt goes through a file (argv limits).
            let sp_file = if req.system_prompt.len() > ARGV_PROMPT_LIMIT {
                let f = tempfile::Builder::new()
                    .prefix("vaultrunner-system-")
                    .suffix(".md")
                    .tempfile()
                    .map_err(|e| {
                        TurnError::Failed(format!("temp file for the system prompt: {e}"))
                    })?;
                std::fs::write(f.path(), req.system_prompt.trim()).map_err(|e| {
                    TurnError::Failed(format!("temp file for the system prompt: {e}"))
                })?;
                Some(f)
            } else {
                None
            };
            let sp_path = sp_file.as_ref().map(|f| f.path().display().to_string());
            // The prompt goes on stdin (no argv length limit); a fresh
            // session gets a new UUID for `--session-id`.
            process::run_cli::<ClaudeStream>(
                req,
                events,
                cancel,
                Some(&req.prompt),
                &["CLAUDECODE"],
                |resume| {
                    let session = match resume {
                        Some(id) => SessionArg::Resume(id.to_string()),
                        None => SessionArg::Create(uuid::Uuid::new_v4().to_string()),
                    };
                    self.argv(req, &session, sp_path.as_deref())
                },
            )
            .await
        })
    }
}

#[cfg(test)]
mod config_tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::testing::{definition, error, meta};

    fn claude(front: &str) -> Arc<dyn Backend> {
        let d = definition(&format!("backend: claude\n{front}")).unwrap();
        crate::backend::built(&d).unwrap().clone()
    }

    #[test]
    fn program_and_args() {
        let b = claude("");
        let c = b.downcast_ref::<Claude>().unwrap();
        assert_eq!(c.config(), &Config::default());
        assert_eq!(c.config().cli.program_or("claude"), "claude");
        let b = claude(
            "program: /opt/claude\nargs: [--a, 1, true]\nmodel: opus\nsystem_prompt_mode: replace\n",
        );
        let c = b.downcast_ref::<Claude>().unwrap();
        assert_eq!(c.config().cli.program.as_deref(), Some("/opt/claude"));
        assert_eq!(c.config().cli.args, ["--a", "1", "true"]);
        assert_eq!(c.model.as_deref(), Some("opus"));
        assert_eq!(c.mode, SystemPromptMode::Replace);
        assert_eq!(
            Config::read(&meta("args: --a  --b\nprogram: \"  \"")).unwrap(),
            Config {
                cli: process::CliKeys {
                    program: None,
                    args: vec!["--a".into(), "--b".into()]
                },
                vault_mcp: true,
            }
        );
    }

    fn request(d: &Arc<crate::agent::Definition>, mcp: Option<&str>) -> TurnRequest {
        TurnRequest {
            definition: d.clone(),
            prompt: "hi".into(),
            message: "hi".into(),
            system_prompt: String::new(),
            session: None,
            workspace: std::env::temp_dir(),
            env: Vec::new(),
            timeout: std::time::Duration::from_secs(1),
            deadline: crate::time::after(std::time::Duration::from_secs(1)),
            stall: std::time::Duration::from_secs(1),
            history: Vec::new(),
            mcp_config: mcp.map(std::path::PathBuf::from),
            attachments: Vec::new(),
        }
    }

    /// A turn of a remote vault gets `--mcp-config <file>` (the file holds
    /// the token; the command line never does), unless `vault_mcp: false`.
    #[test]
    fn the_vaults_mcp_endpoint_goes_in_by_file_unless_turned_off() {
        for (front, mcp, want) in [
            ("", Some("/state/mcp.json"), true),
            ("vault_mcp: false\n", Some("/state/mcp.json"), false),
            ("", None, false),
        ] {
            let d = Arc::new(definition(&format!("backend: claude\n{front}")).unwrap());
            let b = crate::backend::built(&d).unwrap().clone();
            let c = b.downcast_ref::<Claude>().unwrap();
            let argv = c.argv(&request(&d, mcp), &SessionArg::Create("s".into()), None);
            let at = argv.iter().position(|a| a == "--mcp-config");
            assert_eq!(at.is_some(), want, "{front:?} {mcp:?}: {argv:?}");
            if let Some(i) = at {
                assert_eq!(argv.get(i + 1).map(String::as_str), Some("/state/mcp.json"));
            }
        }
        assert_eq!(
            error(Config::read(&meta("vault_mcp: sometimes"))).0,
            "vault_mcp"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let read = |y: &str| error(Config::read(&meta(y)));
        assert_eq!(
            read("program: [claude]"),
            (
                "program".into(),
                "expected a single value, got a list".into()
            )
        );
        assert_eq!(
            read("args: {a: 1}"),
            (
                "args".into(),
                "expected a list like [--verbose] or text, got a mapping".into()
            )
        );
        assert_eq!(
            read("args: [--x, [nested]]"),
            (
                "args".into(),
                "item 2 is a list; each item must be a single value".into()
            )
        );
        // Through the definition too, naming its file.
        let e = definition("backend: claude\nargs: {a: 1}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Agents/helper.md: field `args`: expected a list like [--verbose] or text, got a mapping"
        );
    }
}
