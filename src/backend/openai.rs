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

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::http::{self, client};
use super::{Backend, BoxFuture, EventSink, TurnError, TurnEvent, TurnOutput, TurnRequest, Usage};
use crate::agent::Definition;

pub struct OpenAi {
    base_url: String,
    model: String,
    api_key_env: Option<String>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
}

impl OpenAi {
    pub fn new(def: &Definition) -> Result<Self, TurnError> {
        let model = def.model.clone().ok_or_else(|| {
            TurnError::Failed(format!(
                "{}.md: field `model` is required for the openai backend",
                def.path
            ))
        })?;
        Ok(OpenAi {
            base_url: def
                .base_url
                .as_deref()
                .unwrap_or("https://api.openai.com/v1")
                .trim_end_matches('/')
                .to_string(),
            model,
            api_key_env: def.api_key_env.clone(),
            max_tokens: def.max_tokens,
            temperature: def.temperature,
        })
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
            if let Some(m) = self.max_tokens {
                o.insert("max_tokens".into(), json!(m));
            }
            if let Some(t) = self.temperature {
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
            let key = http::api_key(self.api_key_env.as_deref(), Some("OPENAI_API_KEY"))?;
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
