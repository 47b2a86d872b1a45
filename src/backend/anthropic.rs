//! `anthropic`: the Messages API, streamed (`x-api-key`,
//! `anthropic-version`). The conversation is rebuilt from the thread's
//! notes in the vault each turn, within `history_budget` characters.
//!
//! Stream shape: `message_start` (usage.input_tokens) → per block
//! `content_block_start` / `content_block_delta` (`text_delta`,
//! `input_json_delta`, …) / `content_block_stop` → `message_delta`
//! (stop_reason, cumulative usage.output_tokens) → `message_stop`; `ping`
//! anywhere; an `error` event can arrive mid-stream on an HTTP 200.
//! Source: ../../shared/PROTOCOLS.md and Anthropic's streaming docs.

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::http::{self, HttpKeys, client};
use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, Takes, TurnError, TurnEvent, TurnOutput,
    TurnRequest, Usage,
};
use crate::note::FieldError;

pub const API_VERSION: &str = "2023-06-01";

/// `anthropic` in the registry.
pub const KIND: Kind = Kind {
    name: "anthropic",
    needs_model: true,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys only the HTTP backends read: `max_tokens` (default 8192),
/// `base_url` (default `https://api.anthropic.com`), `api_key_env`
/// (default `ANTHROPIC_API_KEY`).
pub type Config = HttpKeys;

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    Ok(super::runner(Anthropic {
        base_url: c.base_url_or("https://api.anthropic.com"),
        model: s.required_model("anthropic")?,
        api_key_env: c
            .api_key_env
            .clone()
            .unwrap_or_else(|| "ANTHROPIC_API_KEY".into()),
        max_tokens: c.max_tokens.unwrap_or(8192),
        config: c,
    }))
}

#[derive(Debug)]
pub struct Anthropic {
    /// `base_url` or the default, without a trailing `/`.
    base_url: String,
    model: String,
    /// `api_key_env` or `ANTHROPIC_API_KEY`.
    api_key_env: String,
    /// `max_tokens` or 8192.
    max_tokens: u64,
    config: Config,
}

impl Anthropic {
    /// The keys it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn body(&self, req: &TurnRequest) -> Value {
        let mut messages = Vec::new();
        for ex in &req.history {
            messages.push(json!({"role": "user", "content": ex.user}));
            messages.push(json!({"role": "assistant", "content": ex.assistant}));
        }
        messages.push(json!({"role": "user", "content": user_content(req)}));
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": messages,
            "stream": true,
        });
        if !req.system_prompt.trim().is_empty()
            && let Some(o) = body.as_object_mut()
        {
            o.insert("system".into(), json!(req.system_prompt.trim()));
        }
        body
    }
}

/// The current message: its text, or with attachments a list of content
/// blocks — each image as an `image` block and each PDF as a `document`
/// block (base64 sources), then the text (Anthropic's vision guide puts
/// images before the text). Earlier messages of the history are text
/// only.
fn user_content(req: &TurnRequest) -> Value {
    let mut blocks: Vec<Value> = req
        .attachments
        .iter()
        .filter_map(|a| {
            let c = a.content.as_ref()?;
            let source = json!({"type": "base64", "media_type": c.media_type, "data": c.base64()});
            Some(if c.is_image() {
                json!({"type": "image", "source": source})
            } else {
                let title = a.name.rsplit('/').next().unwrap_or(&a.name);
                json!({"type": "document", "source": source, "title": title})
            })
        })
        .collect();
    if blocks.is_empty() {
        return json!(req.prompt);
    }
    blocks.push(json!({"type": "text", "text": req.prompt}));
    Value::Array(blocks)
}

fn transient_error_type(t: &str) -> bool {
    matches!(
        t,
        "overloaded_error" | "api_error" | "rate_limit_error" | "timeout_error"
    )
}

impl Backend for Anthropic {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            let deadline = req.deadline;
            let key = http::api_key(Some(&self.api_key_env), None)?.unwrap_or_default();
            let rb = client()
                .post(format!("{}/v1/messages", self.base_url))
                .header("x-api-key", key)
                .header("anthropic-version", API_VERSION)
                .json(&self.body(req));
            let resp = http::send("anthropic", rb, deadline, req.timeout, cancel).await?;
            let produced = std::sync::atomic::AtomicBool::new(false);
            let mut reply = String::new();
            let mut usage = Usage::default();
            let mut stopped = false;
            http::read_sse(
                "anthropic",
                resp,
                http::Bounds {
                    deadline,
                    timeout: req.timeout,
                    stall: req.stall,
                },
                cancel,
                || produced.load(std::sync::atomic::Ordering::Relaxed),
                |f| {
                    let Ok(v) = serde_json::from_str::<Value>(&f.data) else {
                        return Ok(true);
                    };
                    let kind = v
                        .get("type")
                        .and_then(Value::as_str)
                        .or(f.event.as_deref())
                        .unwrap_or("");
                    match kind {
                        "message_start" => {
                            let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
                            usage.input_tokens = n("/message/usage/input_tokens")
                                + n("/message/usage/cache_creation_input_tokens")
                                + n("/message/usage/cache_read_input_tokens");
                            usage.output_tokens = n("/message/usage/output_tokens");
                        }
                        "content_block_start"
                            if v.pointer("/content_block/type").and_then(Value::as_str)
                                == Some("tool_use") =>
                        {
                            produced.store(true, std::sync::atomic::Ordering::Relaxed);
                            events.emit(TurnEvent::Tool {
                                name: v
                                    .pointer("/content_block/name")
                                    .and_then(Value::as_str)
                                    .unwrap_or("tool")
                                    .to_string(),
                                input: v
                                    .pointer("/content_block/input")
                                    .cloned()
                                    .unwrap_or(Value::Null),
                            });
                        }
                        "content_block_delta"
                            if v.pointer("/delta/type").and_then(Value::as_str)
                                == Some("text_delta") =>
                        {
                            let t = v
                                .pointer("/delta/text")
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            produced.store(true, std::sync::atomic::Ordering::Relaxed);
                            reply.push_str(t);
                            events.emit(TurnEvent::Text {
                                text: t.to_string(),
                            });
                        }
                        "message_delta" => {
                            if let Some(o) =
                                v.pointer("/usage/output_tokens").and_then(Value::as_u64)
                            {
                                usage.output_tokens = o;
                            }
                        }
                        "message_stop" => {
                            stopped = true;
                            return Ok(false);
                        }
                        "error" => {
                            let ty = v
                                .pointer("/error/type")
                                .and_then(Value::as_str)
                                .unwrap_or("error");
                            let msg = v
                                .pointer("/error/message")
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            let message = format!("anthropic: {ty}: {msg}");
                            return Err(TurnError::classify(
                                message,
                                transient_error_type(ty),
                                produced.load(std::sync::atomic::Ordering::Relaxed),
                            ));
                        }
                        _ => {}
                    }
                    Ok(true)
                },
            )
            .await?;
            if !stopped {
                let message = "anthropic: the stream ended before message_stop".to_string();
                return Err(TurnError::classify(
                    message,
                    true,
                    produced.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
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
    fn keys_and_defaults() {
        let d = definition("backend: anthropic\nmodel: claude-x\n").unwrap();
        let a = backend_of(&d).downcast_ref::<Anthropic>().unwrap();
        assert_eq!(a.config(), &Config::default());
        assert_eq!(
            (a.base_url.as_str(), a.api_key_env.as_str(), a.max_tokens),
            ("https://api.anthropic.com", "ANTHROPIC_API_KEY", 8192)
        );
        let d = definition(
            "backend: anthropic\nmodel: claude-x\nbase_url: https://proxy/\napi_key_env: MY_KEY\nmax_tokens: 256\n",
        )
        .unwrap();
        let a = backend_of(&d).downcast_ref::<Anthropic>().unwrap();
        assert_eq!(
            (a.base_url.as_str(), a.api_key_env.as_str(), a.max_tokens),
            ("https://proxy", "MY_KEY", 256)
        );
        assert_eq!(a.model, "claude-x");
        assert_eq!(a.config().max_tokens, Some(256));
    }

    #[test]
    fn config_errors_name_the_field() {
        assert_eq!(
            error(Config::read(&meta("max_tokens: lots"))),
            ("max_tokens".into(), "\"lots\" is not a whole number".into())
        );
        assert_eq!(
            error(Config::read(&meta("base_url: [http://x]"))).0,
            "base_url"
        );
        let e = definition("backend: anthropic\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            (
                "model",
                "the anthropic backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"
            )
        );
    }
}
