//! The HTTP message bodies: `trigger::http::message_from_body` (JSON or
//! text, chosen by the first byte) and `trigger::http::webhook_message`.
//!
//! Invariants: a text body is the message as it is; an accepted JSON
//! body's `reply_to` is a valid agent name and its `sender` a short single
//! line that is not one of vaultrunner's own; a webhook's JSON is shown
//! pretty-printed in a code block and reads back as the same JSON (floats
//! to within a few units in the last place: serde_json's default float
//! reading is not exact, see docs/TESTING.md), a text body as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vaultrunner::agent;
use vaultrunner::queue;
use vaultrunner::trigger::http;

/// JSON equality, with floats equal to within a few ulps.
fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 8.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let json = first & 1 == 1;
    match http::message_from_body(json, rest) {
        Ok((content, opts)) => {
            if !json {
                assert_eq!(Ok(content.as_str()), std::str::from_utf8(rest));
                assert!(opts.sender.is_none() && opts.reply_to.is_none());
            }
            if let Some(r) = &opts.reply_to {
                assert!(agent::valid_name(r), "{r:?}");
            }
            if let Some(s) = &opts.sender {
                assert!(!s.trim().is_empty() && s.len() <= 200, "{s:?}");
                assert!(!s.chars().any(char::is_control), "{s:?}");
            }
            assert!(!queue::written_by_vaultrunner(opts.sender.as_deref()));
        }
        Err(e) => assert!(!e.is_empty()),
    }
    match http::webhook_message(data) {
        Ok(m) => match serde_json::from_slice::<Value>(data) {
            Ok(v) => {
                let inner = m
                    .strip_prefix("```json\n")
                    .and_then(|r| r.strip_suffix("\n```\n"));
                let Some(inner) = inner else {
                    panic!("JSON not in a code block: {m:?}");
                };
                let back: Value = match serde_json::from_str(inner) {
                    Ok(b) => b,
                    Err(e) => panic!("the pretty JSON does not read back: {e}\n{inner}"),
                };
                assert!(close(&back, &v), "{back:?}\n{v:?}");
            }
            Err(_) => assert_eq!(Ok(m.as_str()), std::str::from_utf8(data)),
        },
        Err(e) => {
            assert!(std::str::from_utf8(data).is_err(), "text refused: {e}");
        }
    }
});
