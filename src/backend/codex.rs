//! `codex`: `codex exec --json [--model M] <prompt>` to start,
//! `codex exec --json resume <id> <prompt>` to continue a thread. Stdin is
//! closed (codex reads it even with a prompt on argv). The system prompt is
//! folded into the prompt (codex exec has no flag for it).
//!
//! Events (JSON lines): `thread.started` gives the session; `item.*` with
//! `agent_message`, `command_execution`, `mcp_tool_call`, …;
//! `turn.completed` gives usage; `error` lines may be retries
//! ("Reconnecting... 4/5"); `turn.failed` fails the turn. Shapes:
//! ../../shared/PROTOCOLS.md, from public captures of `codex exec --json`.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::process;
use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, TurnError, TurnEvent, TurnOutput,
    TurnRequest, Usage, is_transient_text, tail, with_system_prompt,
};
use crate::note::FieldError;

#[derive(Debug)]
pub struct Codex {
    config: Config,
    model: Option<String>,
}

impl Codex {
    /// The keys it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// `codex` in the registry.
pub const KIND: Kind = Kind {
    name: "codex",
    needs_model: false,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys only the CLI backends read: `program` (default `codex`) and
/// `args`.
pub type Config = process::CliKeys;

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(super::runner(Codex {
        config: c,
        model: s.model.map(str::to_string),
    }))
}

#[derive(Debug, Default)]
pub struct CodexStream {
    pub session: Option<String>,
    pub last_message: Option<String>,
    pub produced: bool,
    pub completed: bool,
    pub failed: Option<String>,
    pub last_error: Option<String>,
    pub usage: Usage,
}

impl CodexStream {
    pub fn feed(&mut self, line: &[u8], events: &EventSink) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let item = v.get("item");
        let item_type = item
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        match v.get("type").and_then(Value::as_str) {
            Some("thread.started") => {
                self.session = v
                    .get("thread_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            Some("item.started") => {
                if let Some(i) = item
                    && matches!(
                        item_type,
                        "command_execution" | "mcp_tool_call" | "web_search" | "file_change"
                    )
                {
                    self.produced = true;
                    events.emit(TurnEvent::Tool {
                        name: item_type.to_string(),
                        input: i.clone(),
                    });
                }
            }
            Some("item.completed") => {
                let Some(i) = item else { return };
                match item_type {
                    "agent_message" => {
                        let t = i.get("text").and_then(Value::as_str).unwrap_or("");
                        self.produced = true;
                        self.last_message = Some(t.to_string());
                        events.emit(TurnEvent::Text {
                            text: t.to_string(),
                        });
                    }
                    "command_execution" | "mcp_tool_call" | "web_search" | "file_change" => {
                        self.produced = true;
                        let output = i
                            .get("aggregated_output")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .unwrap_or_else(|| i.to_string());
                        let is_error = i
                            .get("exit_code")
                            .and_then(Value::as_i64)
                            .is_some_and(|c| c != 0)
                            || i.get("status").and_then(Value::as_str) == Some("failed");
                        events.emit(TurnEvent::ToolResult { output, is_error });
                    }
                    "error" => {
                        self.last_error =
                            i.get("message").and_then(Value::as_str).map(str::to_string);
                    }
                    _ => {}
                }
            }
            Some("turn.completed") => {
                self.completed = true;
                let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                self.usage.input_tokens += n("/usage/input_tokens");
                self.usage.output_tokens += n("/usage/output_tokens");
            }
            Some("turn.failed") => {
                self.failed = Some(
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("codex reported turn.failed")
                        .to_string(),
                );
            }
            Some("error") => {
                self.last_error = v.get("message").and_then(Value::as_str).map(str::to_string);
            }
            _ => {}
        }
    }
}

fn looks_stale(t: &str) -> bool {
    let l = t.to_ascii_lowercase();
    (l.contains("session") || l.contains("thread") || l.contains("conversation"))
        && (l.contains("not found") || l.contains("no such") || l.contains("does not exist"))
}

/// How a codex run ended: Ok, Err, or `None` for a stale resumed session.
pub fn outcome(
    s: CodexStream,
    done: &process::Streamed,
    resumed: bool,
) -> Option<Result<TurnOutput, TurnError>> {
    if let Some(msg) = &s.failed {
        if resumed && looks_stale(msg) {
            return None;
        }
        let message = format!("codex: {msg}");
        return Some(Err(TurnError::classify(
            message,
            is_transient_text(msg),
            s.produced,
        )));
    }
    if s.completed && done.code == Some(0) {
        return Some(Ok(TurnOutput {
            reply: s.last_message.unwrap_or_default(),
            session: s.session,
            usage: s.usage,
        }));
    }
    let detail = s
        .last_error
        .clone()
        .unwrap_or_else(|| tail(&done.stderr, 1500).to_string());
    if resumed && (looks_stale(&detail) || looks_stale(&done.stderr)) {
        return None;
    }
    let how = match (done.code, done.signal) {
        (Some(2), _) => "rejected its arguments (exit 2)".to_string(),
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended without finishing the turn".to_string(),
    };
    let message = if detail.is_empty() {
        format!("codex {how}")
    } else {
        format!("codex {how}: {detail}")
    };
    Some(Err(TurnError::classify(
        message,
        is_transient_text(&detail),
        s.produced,
    )))
}

impl process::CliStream for CodexStream {
    fn feed(&mut self, line: &[u8], events: &EventSink) -> bool {
        CodexStream::feed(self, line, events);
        !self.completed && self.failed.is_none()
    }

    fn outcome(
        self,
        done: &process::Streamed,
        resumed: bool,
    ) -> Option<Result<TurnOutput, TurnError>> {
        outcome(self, done, resumed)
    }
}

impl Backend for Codex {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            let prompt = with_system_prompt(&req.system_prompt, &req.prompt);
            // Codex reads stdin even with a prompt on argv: it gets a closed one.
            process::run_cli::<CodexStream>(req, events, cancel, None, &[], |resume| {
                let mut argv = vec![
                    self.config.program_or("codex"),
                    "exec".into(),
                    "--json".into(),
                    "--skip-git-repo-check".into(),
                ];
                if let Some(m) = &self.model {
                    argv.extend(["--model".into(), m.clone()]);
                }
                argv.extend(self.config.args.iter().cloned());
                if let Some(id) = resume {
                    argv.extend(["resume".into(), id.to_string()]);
                }
                argv.push(prompt.clone());
                argv
            })
            .await
        })
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::backend::testing::{backend_of, definition, error, meta};

    #[test]
    fn program_and_args() {
        let d = definition("backend: codex\nmodel: m1\n").unwrap();
        let c = backend_of(&d).downcast_ref::<Codex>().unwrap();
        assert_eq!(c.config().program_or("codex"), "codex");
        assert_eq!(c.model.as_deref(), Some("m1"));
        let d = definition("backend: codex\nprogram: ./bin/codex\nargs: -x  -y\n").unwrap();
        let c = backend_of(&d).downcast_ref::<Codex>().unwrap();
        assert_eq!(c.config().program_or("codex"), "./bin/codex");
        assert_eq!(c.config().args, ["-x", "-y"]);
        assert_eq!(c.model, None);
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(
            error(Config::read(&meta("program: {a: 1}"))),
            (
                "program".into(),
                "expected a single value, got a mapping".into()
            )
        );
        let e = definition("backend: codex\nargs: [[x]]\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("args", "item 1 is a list; each item must be a single value")
        );
    }
}
