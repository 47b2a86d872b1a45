//! Shared pieces of the HTTP model backends: the client, error bodies,
//! `retry-after`, and reading a streamed body with a stall bound.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::Value;
use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use super::TurnError;
use super::sse::{Frame, Parser};
use crate::agent::keys;
use crate::note::FieldError;

/// `max_tokens`, `base_url` and `api_key_env`: the keys the HTTP backends
/// (`openai`, `anthropic`) read, each into its own `Config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpKeys {
    /// `max_tokens` (at least 1).
    pub max_tokens: Option<u64>,
    /// `base_url` (`http://` or `https://`).
    pub base_url: Option<String>,
    /// `api_key_env`: the environment variable holding the API key.
    pub api_key_env: Option<String>,
}

impl HttpKeys {
    pub fn read(meta: &Mapping) -> Result<HttpKeys, FieldError> {
        let max_tokens = keys::whole(meta, "max_tokens")?;
        if max_tokens == Some(0) {
            return Err(FieldError::new("max_tokens", "must be at least 1"));
        }
        let base_url = keys::text(meta, "base_url")?;
        if let Some(u) = &base_url {
            let l = u.to_ascii_lowercase();
            if !(l.starts_with("http://") || l.starts_with("https://")) {
                return Err(FieldError::new(
                    "base_url",
                    format!("{u:?} is not an http:// or https:// address"),
                ));
            }
        }
        let api_key_env = keys::text(meta, "api_key_env")?;
        if let Some(k) = &api_key_env
            && !env_name_ok(k)
        {
            return Err(FieldError::new(
                "api_key_env",
                format!(
                    "{k:?} is not an environment variable name (letters, digits and `_`, like OPENAI_API_KEY)"
                ),
            ));
        }
        Ok(HttpKeys {
            max_tokens,
            base_url,
            api_key_env,
        })
    }

    /// `base_url` without a trailing `/`, else `default`.
    pub fn base_url_or(&self, default: &str) -> String {
        self.base_url
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    }
}

/// Is this a usable environment variable name (`OPENAI_API_KEY`)?
fn env_name_ok(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One client for the process: connection pooling across turns.
pub fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default()
        })
        .clone()
}

/// The API key from the env var a definition names (`api_key_env`).
pub fn api_key(
    env_name: Option<&str>,
    default_env: Option<&str>,
) -> Result<Option<String>, TurnError> {
    match (env_name, default_env) {
        (Some(name), _) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(TurnError::Failed(format!(
                "the API key is missing: the environment variable {name} is not set (choose another with `api_key_env`)"
            ))),
        },
        (None, Some(name)) => Ok(std::env::var(name).ok().filter(|v| !v.is_empty())),
        (None, None) => Ok(None),
    }
}

/// `retry-after-ms` or `retry-after` (seconds) of a response.
pub fn retry_after(resp: &Response) -> Option<Duration> {
    let h = resp.headers();
    retry_after_of(
        h.get("retry-after-ms").and_then(|v| v.to_str().ok()),
        h.get("retry-after").and_then(|v| v.to_str().ok()),
    )
}

/// The wait a server asks for, from the values of `retry-after-ms` and
/// `retry-after` (seconds, fractions allowed). A value that is not a
/// number of 0 or more (`inf`, `NaN`, `-1`, an HTTP date) is ignored, a
/// huge one (`1e400`) is capped at [`crate::time::MAX_DURATION`] — the
/// retry policy caps it much lower still. Never panics.
pub fn retry_after_of(ms: Option<&str>, secs: Option<&str>) -> Option<Duration> {
    let num = |s: &str| s.trim().parse::<f64>().ok();
    if let Some(d) = ms
        .and_then(num)
        .and_then(|ms| crate::time::secs_f64(ms / 1000.0))
    {
        return Some(d);
    }
    secs.and_then(num).and_then(crate::time::secs_f64)
}

/// Is an HTTP status worth retrying?
pub fn transient_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 408 | 409 | 429 | 500..=599)
}

/// The message of an error body (`{"error": {"message", "type"}}` or text).
pub fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let e = v.get("error").unwrap_or(&v);
        let msg = e.get("message").and_then(Value::as_str);
        let ty = e.get("type").and_then(Value::as_str);
        match (ty, msg) {
            (Some(t), Some(m)) => return format!("{t}: {m}"),
            (None, Some(m)) => return m.to_string(),
            _ => {}
        }
    }
    super::tail(body, 500).to_string()
}

/// Sends a request, bounded by the turn's deadline and the shutdown token;
/// a non-2xx answer becomes a turn error (transient or not).
pub async fn send(
    name: &str,
    rb: reqwest::RequestBuilder,
    deadline: tokio::time::Instant,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Response, TurnError> {
    let resp = tokio::select! {
        r = rb.send() => r.map_err(|e| request_error(name, &e, false))?,
        _ = tokio::time::sleep_until(deadline) => return Err(TurnError::Timeout(timeout)),
        _ = cancel.cancelled() => return Err(TurnError::Cancelled),
    };
    if !resp.status().is_success() {
        return Err(status_error(name, resp).await);
    }
    Ok(resp)
}

/// Turns a non-2xx response into a turn error (transient or not).
pub async fn status_error(name: &str, resp: Response) -> TurnError {
    let status = resp.status();
    let ra = retry_after(&resp);
    let body = resp.text().await.unwrap_or_default();
    let message = format!("{name}: HTTP {}: {}", status.as_u16(), error_message(&body));
    if transient_status(status) {
        TurnError::Transient {
            message,
            retry_after: ra,
        }
    } else {
        TurnError::Failed(message)
    }
}

/// A request error (connect, reset, timeout) as a turn error.
pub fn request_error(name: &str, e: &reqwest::Error, produced: bool) -> TurnError {
    TurnError::classify(format!("{name}: connection error: {e}"), true, produced)
}

/// Time bounds of a streamed response.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub deadline: tokio::time::Instant,
    /// The turn's timeout (named in the error).
    pub timeout: Duration,
    /// Longest wait for the next chunk.
    pub stall: Duration,
}

/// Reads an SSE body, handing each frame to `on_frame` (which returns
/// `false` to stop). Bounded by the deadline, the stall time and `cancel`.
/// `produced` tells whether content was seen, to classify a dropped
/// connection.
pub async fn read_sse(
    name: &str,
    mut resp: Response,
    bounds: Bounds,
    cancel: &CancellationToken,
    produced: impl Fn() -> bool,
    mut on_frame: impl FnMut(Frame) -> Result<bool, TurnError>,
) -> Result<(), TurnError> {
    let Bounds {
        deadline,
        timeout,
        stall,
    } = bounds;
    let mut parser = Parser::default();
    loop {
        let chunk = tokio::select! {
            c = tokio::time::timeout(stall, resp.chunk()) => match c {
                Err(_) => return Err(TurnError::Failed(format!("{name}: no data for {stall:?} (stall_timeout)"))),
                Ok(Err(e)) => return Err(request_error(name, &e, produced())),
                Ok(Ok(c)) => c,
            },
            _ = tokio::time::sleep_until(deadline) => return Err(TurnError::Timeout(timeout)),
            _ = cancel.cancelled() => return Err(TurnError::Cancelled),
        };
        let (frames, end) = match chunk {
            Some(bytes) => (parser.feed(&bytes), false),
            None => (parser.finish(), true),
        };
        for f in frames {
            if !on_frame(f)? {
                return Ok(());
            }
        }
        if end {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MAX_DURATION;

    #[test]
    fn retry_after_values() {
        let ra = |ms: Option<&str>, s: Option<&str>| retry_after_of(ms, s);
        assert_eq!(ra(None, Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(ra(None, Some(" 1.5 ")), Some(Duration::from_millis(1500)));
        assert_eq!(ra(Some("250"), Some("9")), Some(Duration::from_millis(250)));
        assert_eq!(ra(None, None), None);
        // Values that used to panic in `Duration::from_secs_f64`, or meant
        // nothing: ignored (the policy's own back-off), or capped.
        for bad in [
            "inf",
            "-inf",
            "NaN",
            "-1",
            "-0.5",
            "soon",
            "",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(ra(None, Some(bad)), None, "retry-after: {bad}");
            assert_eq!(ra(Some(bad), None), None, "retry-after-ms: {bad}");
        }
        assert_eq!(ra(None, Some("1e400")), None); // parses as infinity
        assert_eq!(ra(None, Some("1e300")), Some(MAX_DURATION));
        assert_eq!(ra(Some("1e300"), None), Some(MAX_DURATION));
        assert_eq!(ra(None, Some("18446744073709551616")), Some(MAX_DURATION));
        // A bad `retry-after-ms` falls back to `retry-after`.
        assert_eq!(ra(Some("NaN"), Some("3")), Some(Duration::from_secs(3)));
    }
}
