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
use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use super::http::{self, HttpKeys, client};
use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, Takes, TurnError, TurnEvent, TurnOutput,
    TurnRequest, Usage,
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

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(super::runner(OpenAi {
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
        messages.push(json!({"role": "user", "content": user_content(req)}));
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

/// The current message: its text, or with attachments a list of content
/// parts — the text, then each image as an `image_url` part with a
/// `data:` URL, each PDF as a `file` part with `file_data` (the chat
/// completions API takes PDFs so; OpenAI's file-inputs guide). Earlier
/// messages of the history are text only.
fn user_content(req: &TurnRequest) -> Value {
    let blocks: Vec<Value> = req
        .attachments
        .iter()
        .filter_map(|a| {
            let c = a.content.as_ref()?;
            let url = format!("data:{};base64,{}", c.media_type, c.base64());
            Some(if c.is_image() {
                json!({"type": "image_url", "image_url": {"url": url}})
            } else {
                let filename = a.name.rsplit('/').next().unwrap_or(&a.name);
                json!({"type": "file", "file": {"filename": filename, "file_data": url}})
            })
        })
        .collect();
    if blocks.is_empty() {
        return json!(req.prompt);
    }
    let mut parts = vec![json!({"type": "text", "text": req.prompt})];
    parts.extend(blocks);
    Value::Array(parts)
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

    fn takes(&self) -> Takes {
        Takes::Blocks { pdf: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{backend_of, definition, error, meta};

    #[test]
    fn keys_are_typed() {
        let d = definition(
            "backend: openai\nmodel: m\nbase_url: http://127.0.0.1:1/v1/\napi_key_env: MY_KEY\nmax_tokens: 10\ntemperature: 0.2\n",
        )
        .unwrap();
        let o = backend_of(&d).downcast_ref::<OpenAi>().unwrap();
        let c = o.config();
        assert_eq!(c.http.base_url.as_deref(), Some("http://127.0.0.1:1/v1/"));
        assert_eq!(o.base_url, "http://127.0.0.1:1/v1");
        assert_eq!(c.http.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(c.http.max_tokens, Some(10));
        assert_eq!(c.temperature, Some(0.2));
        assert_eq!(o.model, "m");
        let d = definition("backend: openai\nmodel: m\n").unwrap();
        let o = backend_of(&d).downcast_ref::<OpenAi>().unwrap();
        assert_eq!(o.config(), &Config::default());
        assert_eq!(o.base_url, "https://api.openai.com/v1");
        assert!(backend_of(&d).wants_history());
    }

    #[test]
    fn config_errors_name_the_field() {
        let read = |y: &str| error(Config::read(&meta(y)));
        let pair = |f: &str, r: &str| (f.to_string(), r.to_string());
        assert_eq!(
            read("max_tokens: 0"),
            pair("max_tokens", "must be at least 1")
        );
        assert_eq!(
            read("max_tokens: 1e3"),
            pair("max_tokens", "\"1000.0\" is not a whole number")
        );
        assert_eq!(
            read("max_tokens: -1"),
            pair("max_tokens", "\"-1\" is not a whole number")
        );
        assert_eq!(
            read("max_tokens: [10]"),
            pair("max_tokens", "expected a single value, got a list")
        );
        for t in ["nan", ".nan", "inf", ".inf", "-1", "1e400"] {
            assert_eq!(read(&format!("temperature: {t}")).0, "temperature", "{t}");
        }
        assert_eq!(
            read("temperature: -1"),
            pair("temperature", "\"-1\" is not a number of 0 or more")
        );
        assert_eq!(
            read("temperature: warm"),
            pair("temperature", "\"warm\" is not a number")
        );
        assert_eq!(
            read("base_url: localhost:11434"),
            pair(
                "base_url",
                "\"localhost:11434\" is not an http:// or https:// address"
            )
        );
        assert_eq!(
            read("api_key_env: MY=KEY"),
            pair(
                "api_key_env",
                "\"MY=KEY\" is not an environment variable name (letters, digits and `_`, like OPENAI_API_KEY)"
            )
        );
        assert_eq!(read("api_key_env: 1KEY").0, "api_key_env");
        assert_eq!(
            Config::read(&meta("api_key_env: \"\"")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn model_is_required() {
        for front in ["backend: openai\n", "backend: openai\nmodel: \" \"\n"] {
            let e = definition(front).unwrap_err();
            assert_eq!(
                e.to_string(),
                "Agents/helper.md: field `model`: the openai backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"
            );
        }
    }
}
