//! `openai`: any OpenAI-compatible chat-completions server (OpenAI, Ollama,
//! vLLM, llama.cpp, OpenRouter), streamed. The conversation is rebuilt from
//! the thread's notes in the vault each turn (the vault is the session
//! store), within `history_budget` characters.
//!
//! Stream shape: SSE `data:` chunks with `choices[0].delta.content`, a last
//! chunk with `finish_reason`, with `stream_options.include_usage` one more
//! chunk with `usage` and empty `choices`, then `data: [DONE]`; a `data`
//! object with an `error` key is an error. Source:
//! ../../shared/PROTOCOLS.md and the OpenAI API reference captures.

use std::sync::Arc;

use serde_json::{Value, json};
use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use super::http::{self, HttpKeys, client};
use super::{
    Backend, BoxFuture, EventSink, Kind, Settings, TurnError, TurnEvent, TurnOutput, TurnRequest,
    Usage,
};
use crate::agent::keys;
use crate::note::FieldError;

/// `openai` in the registry.
pub const KIND: Kind = Kind {
    name: "openai",
    needs_model: true,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys only `openai` reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `max_tokens`, `base_url` (default `https://api.openai.com/v1`),
    /// `api_key_env` (default: `OPENAI_API_KEY` if set, else no key).
    pub http: HttpKeys,
    /// `temperature` (finite, not negative).
    pub temperature: Option<f64>,
}

impl Config {
    pub fn read(meta: &Mapping) -> Result<Config, FieldError> {
        let http = HttpKeys::read(meta)?;
        let temperature = match keys::text(meta, "temperature")? {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(t) if t.is_finite() && t >= 0.0 => Some(t),
                Ok(_) => {
                    return Err(FieldError::new(
                        "temperature",
                        format!("{v:?} is not a number of 0 or more"),
                    ));
                }
                Err(_) => {
                    return Err(FieldError::new(
                        "temperature",
                        format!("{v:?} is not a number"),
                    ));
                }
            },
        };
        Ok(Config { http, temperature })
    }
}

fn build(s: &Settings<'_>) -> Result<Arc<dyn Backend>, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(Arc::new(OpenAi {
        base_url: c.http.base_url_or("https://api.openai.com/v1"),
        model: s.required_model("openai")?,
        config: c,
    }))
}

#[derive(Debug)]
pub struct OpenAi {
    /// `base_url` or the default, without a trailing `/`.
    base_url: String,
    model: String,
    config: Config,
}

impl OpenAi {
    /// The keys it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn body(&self, req: &TurnRequest) -> Value {
        let mut messages = Vec::new();
        if !req.system_prompt.trim().is_empty() {
            messages.push(json!({"role": "system", "content": req.system_prompt.trim()}));
        }
        for ex in &req.history {
            messages.push(json!({"role": "user", "content": ex.user}));
            messages.push(json!({"role": "assistant", "content": ex.assistant}));
        }
        messages.push(json!({"role": "user", "content": req.prompt}));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(o) = body.as_object_mut() {
            if let Some(m) = self.config.http.max_tokens {
                o.insert("max_tokens".into(), json!(m));
            }
            if let Some(t) = self.config.temperature {
                o.insert("temperature".into(), json!(t));
            }
        }
        body
    }
}

impl Backend for OpenAi {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            let deadline = req.deadline;
            let key = http::api_key(
                self.config.http.api_key_env.as_deref(),
                Some("OPENAI_API_KEY"),
            )?;
            let mut rb = client()
                .post(format!("{}/chat/completions", self.base_url))
                .json(&self.body(req));
            if let Some(k) = key {
                rb = rb.bearer_auth(k);
            }
            let resp = http::send("openai", rb, deadline, req.timeout, cancel).await?;
            let produced = std::sync::atomic::AtomicBool::new(false);
            let mut reply = String::new();
            let mut usage = Usage::default();
            http::read_sse(
                "openai",
                resp,
                http::Bounds {
                    deadline,
                    timeout: req.timeout,
                    stall: req.stall,
                },
                cancel,
                || produced.load(std::sync::atomic::Ordering::Relaxed),
                |f| {
                    let data = f.data.trim();
                    if data == "[DONE]" {
                        return Ok(false);
                    }
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        return Ok(true);
                    };
                    if let Some(e) = v.get("error") {
                        let msg = format!(
                            "openai: {}",
                            http::error_message(&json!({"error": e}).to_string())
                        );
                        let transient = super::is_transient_text(&msg);
                        return Err(TurnError::classify(
                            msg,
                            transient,
                            produced.load(std::sync::atomic::Ordering::Relaxed),
                        ));
                    }
                    if let Some(c) = v
                        .pointer("/choices/0/delta/content")
                        .and_then(Value::as_str)
                        && !c.is_empty()
                    {
                        produced.store(true, std::sync::atomic::Ordering::Relaxed);
                        reply.push_str(c);
                        events.emit(TurnEvent::Text {
                            text: c.to_string(),
                        });
                    }
                    if let Some(calls) = v
                        .pointer("/choices/0/delta/tool_calls")
                        .and_then(Value::as_array)
                    {
                        for c in calls {
                            if let Some(name) = c.pointer("/function/name").and_then(Value::as_str)
                            {
                                produced.store(true, std::sync::atomic::Ordering::Relaxed);
                                events.emit(TurnEvent::Tool {
                                    name: name.to_string(),
                                    input: c
                                        .pointer("/function/arguments")
                                        .cloned()
                                        .unwrap_or(Value::Null),
                                });
                            }
                        }
                    }
                    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                        usage.input_tokens =
                            u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
                        usage.output_tokens = u
                            .get("completion_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                    }
                    Ok(true)
                },
            )
            .await?;
            Ok(TurnOutput {
                reply,
                session: None,
                usage,
            })
        })
    }

    fn wants_history(&self) -> bool {
        true
    }
}
