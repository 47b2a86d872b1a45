//! `gemini`: `gemini --output-format stream-json [--model M] [--resume ID]
//! -p <prompt>`. The system prompt is folded into the prompt.
//!
//! Events (JSON lines): `init` (session_id), `message` (assistant content,
//! `delta: true` appends), `tool_use`, `tool_result`, `error`, and a final
//! `result` with `status` and `stats`. Exit codes: 0 ok, 1 error, 41 auth,
//! 42 input, 52 config, 53 turn limit, 54 fatal tool error, 130 SIGINT.
//! Shapes: ../../shared/PROTOCOLS.md, from public captures of Gemini CLI
//! stream-json output.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::process;
use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, TurnError, TurnEvent, TurnOutput,
    TurnRequest, Usage, is_transient_text, tail, with_system_prompt,
};
use crate::note::FieldError;

#[derive(Debug)]
pub struct Gemini {
    config: Config,
    model: Option<String>,
}

impl Gemini {
    /// The keys it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// `gemini` in the registry.
pub const KIND: Kind = Kind {
    name: "gemini",
    needs_model: false,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys only the CLI backends read: `program` (default `gemini`) and
/// `args`.
pub type Config = process::CliKeys;

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(super::runner(Gemini {
        config: c,
        model: s.model.map(str::to_string),
    }))
}

#[derive(Debug, Default)]
pub struct GeminiStream {
    pub session: Option<String>,
    pub reply: String,
    pub produced: bool,
    pub result: Option<Value>,
    pub last_error: Option<String>,
}

impl GeminiStream {
    pub fn feed(&mut self, line: &[u8], events: &EventSink) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("init") => {
                self.session = v
                    .get("session_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            Some("message") => {
                if v.get("role").and_then(Value::as_str) != Some("assistant") {
                    return;
                }
                let c = v.get("content").and_then(Value::as_str).unwrap_or("");
                if v.get("delta").and_then(Value::as_bool).unwrap_or(false) {
                    self.reply.push_str(c);
                } else {
                    self.reply = c.to_string();
                }
                self.produced = true;
                events.emit(TurnEvent::Text {
                    text: c.to_string(),
                });
            }
            Some("tool_use") => {
                self.produced = true;
                events.emit(TurnEvent::Tool {
                    name: v
                        .get("tool_name")
                        .and_then(Value::as_str)
                        .unwrap_or("tool")
                        .to_string(),
                    input: v.get("parameters").cloned().unwrap_or(Value::Null),
                });
            }
            Some("tool_result") => {
                let output = match v.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                events.emit(TurnEvent::ToolResult {
                    output,
                    is_error: v.get("status").and_then(Value::as_str) != Some("success"),
                });
            }
            Some("error") => {
                self.last_error = v.get("message").and_then(Value::as_str).map(str::to_string);
            }
            Some("result") => self.result = Some(v),
            _ => {}
        }
    }
}

/// What a Gemini CLI exit code means.
pub fn exit_reason(code: i32) -> &'static str {
    match code {
        41 => "authentication failed (exit 41): run `gemini` once to log in, or set GEMINI_API_KEY",
        42 => "the input was rejected (exit 42)",
        52 => "its configuration is invalid (exit 52)",
        53 => "the turn limit was reached (exit 53)",
        54 => "a tool failed fatally (exit 54)",
        130 => "was interrupted (exit 130)",
        _ => "failed",
    }
}

fn looks_stale(t: &str) -> bool {
    let l = t.to_ascii_lowercase();
    l.contains("session")
        && (l.contains("not found") || l.contains("invalid") || l.contains("no previous"))
}

pub fn outcome(
    s: GeminiStream,
    done: &process::Streamed,
    resumed: bool,
) -> Option<Result<TurnOutput, TurnError>> {
    if let Some(r) = &s.result {
        let status = r.get("status").and_then(Value::as_str).unwrap_or("");
        if status == "success" {
            let n = |p: &str| r.pointer(p).and_then(Value::as_u64).unwrap_or(0);
            return Some(Ok(TurnOutput {
                reply: s.reply,
                session: s.session,
                usage: Usage {
                    input_tokens: n("/stats/input_tokens"),
                    output_tokens: n("/stats/output_tokens"),
                    total_cost_usd: 0.0,
                },
            }));
        }
    }
    let detail = s
        .last_error
        .clone()
        .or_else(|| {
            s.result.as_ref().and_then(|r| {
                r.pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| tail(&done.stderr, 1500).to_string());
    if resumed && (looks_stale(&detail) || looks_stale(&done.stderr)) {
        return None;
    }
    let how = match (done.code, done.signal) {
        (Some(0), _) => "ended without a successful result".to_string(),
        (Some(c), _) => {
            exit_reason(c).to_string()
                + if exit_reason(c) == "failed" {
                    format!(" (exit {c})")
                } else {
                    String::new()
                }
                .as_str()
        }
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".to_string(),
    };
    let message = if detail.is_empty() {
        format!("gemini {how}")
    } else {
        format!("gemini {how}: {detail}")
    };
    // Exit 41 is an authentication failure, whatever its text says.
    let transient = done.code != Some(41) && is_transient_text(&detail);
    Some(Err(TurnError::classify(message, transient, s.produced)))
}

impl process::CliStream for GeminiStream {
    fn feed(&mut self, line: &[u8], events: &EventSink) -> bool {
        GeminiStream::feed(self, line, events);
        self.result.is_none()
    }

    fn outcome(
        self,
        done: &process::Streamed,
        resumed: bool,
    ) -> Option<Result<TurnOutput, TurnError>> {
        outcome(self, done, resumed)
    }
}

impl Backend for Gemini {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            let prompt = with_system_prompt(&req.system_prompt, &req.prompt);
            process::run_cli::<GeminiStream>(req, events, cancel, None, &[], |resume| {
                let mut argv = vec![
                    self.config.program_or("gemini"),
                    "--output-format".into(),
                    "stream-json".into(),
                ];
                if let Some(m) = &self.model {
                    argv.extend(["--model".into(), m.clone()]);
                }
                if let Some(id) = resume {
                    argv.extend(["--resume".into(), id.to_string()]);
                }
                argv.extend(self.config.args.iter().cloned());
                argv.extend(["-p".into(), prompt.clone()]);
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
        let d = definition("backend: gemini\nmodel: m1\n").unwrap();
        let c = backend_of(&d).downcast_ref::<Gemini>().unwrap();
        assert_eq!(c.config().program_or("gemini"), "gemini");
        assert_eq!(c.model.as_deref(), Some("m1"));
        let d = definition("backend: gemini\nprogram: ./bin/gemini\nargs: -x  -y\n").unwrap();
        let c = backend_of(&d).downcast_ref::<Gemini>().unwrap();
        assert_eq!(c.config().program_or("gemini"), "./bin/gemini");
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
        let e = definition("backend: gemini\nargs: [[x]]\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("args", "item 1 is a list; each item must be a single value")
        );
    }
}
