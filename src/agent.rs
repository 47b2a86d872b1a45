//! Agent definitions (`agent/definition` notes), parsed and validated.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::note::{Note, get_str};

/// Backends a definition can name (SPEC §4).
pub const BACKENDS: &[&str] = &[
    "echo",
    "command",
    "claude",
    "codex",
    "gemini",
    "openai",
    "anthropic",
];

/// Default turn timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default stall timeout (no output for this long stops the turn).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    SingleThreaded,
    MultiThreaded,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SingleThreaded => "single-threaded",
            Mode::MultiThreaded => "multi-threaded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemPromptMode {
    Append,
    Replace,
}

/// A valid agent definition.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    /// The definition note's path.
    pub path: String,
    pub backend: String,
    pub mode: Mode,
    pub model: Option<String>,
    pub system_prompt_mode: SystemPromptMode,
    pub workspace: Option<String>,
    pub timeout: Duration,
    /// Longest time a turn may go without output (`stall_timeout`).
    pub stall_timeout: Duration,
    pub enabled: bool,
    /// The body: the system prompt.
    pub system_prompt: String,
    /// All front-matter, for backend-specific keys (`command`, `base_url`, …).
    pub meta: Mapping,
}

/// A definition that failed validation: the agent is disabled with this
/// reason, and the other agents are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}.md: field `{field}`: {reason}")]
pub struct DefinitionError {
    pub path: String,
    pub field: String,
    pub reason: String,
}

/// Is `name` a valid agent name (`^[A-Za-z0-9_-]+$`, at most 64 chars)?
/// Names Windows refuses (`con`, `aux`, …) are not valid either: an agent's
/// name becomes a folder and a file name under `Threads/`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !crate::vault::is_windows_reserved(name)
}

/// Parses durations like `90`, `30s`, `10m`, `1h30m`, `2d`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().ok()?;
        num.clear();
        let secs = match unit.as_str() {
            "ms" => v / 1000.0,
            "s" | "sec" | "secs" => v,
            "m" | "min" | "mins" => v * 60.0,
            "h" | "hr" | "hrs" => v * 3600.0,
            "d" => v * 86400.0,
            _ => return None,
        };
        // A value too large for a Duration is not a duration (it panicked).
        total = total.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(total)
}

fn bool_of(meta: &Mapping, key: &str) -> Result<Option<bool>, String> {
    match meta.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(Some(true)),
            "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("expected true or false, got {s:?}")),
        },
        Some(other) => Err(format!("expected true or false, got {other:?}")),
    }
}

/// Reads a definition from a parsed note at `path`.
pub fn parse_definition(path: &str, note: &Note) -> Result<Definition, DefinitionError> {
    let err = |field: &str, reason: String| DefinitionError {
        path: path.to_string(),
        field: field.to_string(),
        reason,
    };
    let stem = path.rsplit('/').next().unwrap_or(path);
    let name = note.str("name").unwrap_or_else(|| stem.to_string());
    if !valid_name(&name) {
        return Err(err(
            "name",
            format!(
                "{name:?} is not a valid agent name (letters, digits, `_` and `-` only, at most 64)"
            ),
        ));
    }
    let backend = note
        .str("backend")
        .unwrap_or_else(|| "echo".to_string())
        .to_ascii_lowercase();
    if !BACKENDS.contains(&backend.as_str()) {
        return Err(err(
            "backend",
            format!(
                "unknown backend {backend:?} (one of: {})",
                BACKENDS.join(", ")
            ),
        ));
    }
    let mode = match note.str("mode").as_deref().map(str::trim) {
        None | Some("single-threaded") | Some("single") => Mode::SingleThreaded,
        Some("multi-threaded") | Some("multi") => Mode::MultiThreaded,
        Some(other) => {
            return Err(err(
                "mode",
                format!("{other:?} is not single-threaded or multi-threaded"),
            ));
        }
    };
    let spm = note
        .str_any(&["system_prompt_mode", "systemPromptMode"])
        .map(|s| s.to_ascii_lowercase());
    let system_prompt_mode = match spm.as_deref() {
        None | Some("append") => SystemPromptMode::Append,
        Some("replace") => SystemPromptMode::Replace,
        Some(other) => {
            return Err(err(
                "system_prompt_mode",
                format!("{other:?} is not append or replace"),
            ));
        }
    };
    let timeout = match note.str("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => match parse_duration(&t) {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(err(
                    "timeout",
                    format!("{t:?} is not a duration like 90s, 10m or 1h"),
                ));
            }
        },
    };
    let stall_timeout = match note.str("stall_timeout") {
        None => DEFAULT_STALL_TIMEOUT,
        Some(t) => match parse_duration(&t) {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(err(
                    "stall_timeout",
                    format!("{t:?} is not a duration like 90s, 10m or 1h"),
                ));
            }
        },
    };
    // Optional keys of some backends: a bad value is an error naming the
    // field, never silently ignored.
    if let Some(v) = note.str("retry_base")
        && parse_duration(&v).is_none()
    {
        return Err(err(
            "retry_base",
            format!("{v:?} is not a duration like 2s or 500ms"),
        ));
    }
    for key in ["history_budget", "max_tokens"] {
        if let Some(v) = note.str(key)
            && v.trim().parse::<u64>().is_err()
        {
            return Err(err(key, format!("{v:?} is not a whole number")));
        }
    }
    if let Some(v) = note.str("temperature")
        && v.trim().parse::<f64>().is_err()
    {
        return Err(err("temperature", format!("{v:?} is not a number")));
    }
    for key in ["model", "base_url", "api_key_env", "program", "workspace"] {
        if let Some(v) = note.meta.get(key)
            && !matches!(v, Value::String(_) | Value::Null)
        {
            return Err(err(key, "expected a text value".into()));
        }
    }
    if matches!(backend.as_str(), "openai" | "anthropic")
        && note.str("model").is_none_or(|m| m.trim().is_empty())
    {
        return Err(err(
            "model",
            format!("the {backend} backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"),
        ));
    }
    let enabled = bool_of(&note.meta, "enabled")
        .map_err(|r| err("enabled", r))?
        .unwrap_or(true);
    if backend == "command" {
        match note.meta.get("command") {
            Some(Value::Sequence(seq))
                if !seq.is_empty() && seq.iter().all(|v| get_scalar(v).is_some()) => {}
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            _ => {
                return Err(err(
                    "command",
                    "the command backend needs `command`: a list like [python3, script.py] or a shell string".into(),
                ));
            }
        }
    }
    Ok(Definition {
        name,
        path: path.to_string(),
        backend,
        mode,
        model: note.str("model"),
        system_prompt_mode,
        workspace: note.str("workspace"),
        timeout,
        stall_timeout,
        enabled,
        system_prompt: note.body.trim().to_string(),
        meta: note.meta.clone(),
    })
}

fn get_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Definition {
    /// The `command` of a command agent as argv: a list as given, a string
    /// run through `sh -c`.
    pub fn command_argv(&self) -> Option<Vec<String>> {
        match self.meta.get("command")? {
            Value::Sequence(seq) => seq.iter().map(get_scalar).collect(),
            Value::String(s) => Some(vec!["sh".into(), "-c".into(), s.clone()]),
            _ => None,
        }
    }

    /// A boolean key with a default.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        bool_of(&self.meta, key).ok().flatten().unwrap_or(default)
    }

    /// A string key.
    pub fn str(&self, key: &str) -> Option<String> {
        get_str(&self.meta, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(text: &str) -> Result<Definition, DefinitionError> {
        parse_definition("Agents/helper", &Note::parse(text).unwrap())
    }

    #[test]
    fn defaults() {
        let d = def("---\ntags: [agent/definition]\n---\nYou help.\n").unwrap();
        assert_eq!(d.name, "helper");
        assert_eq!(d.backend, "echo");
        assert_eq!(d.mode, Mode::SingleThreaded);
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert!(d.enabled);
        assert_eq!(d.system_prompt, "You help.");
    }

    #[test]
    fn errors_name_the_field() {
        let e = def("---\nbackend: gpt\n---\n").unwrap_err();
        assert_eq!(e.field, "backend");
        assert!(e.to_string().contains("Agents/helper.md"));
        assert_eq!(def("---\nname: ../x\n---\n").unwrap_err().field, "name");
        assert_eq!(def("---\nmode: parallel\n---\n").unwrap_err().field, "mode");
        assert_eq!(
            def("---\ntimeout: soon\n---\n").unwrap_err().field,
            "timeout"
        );
        assert_eq!(
            def("---\nenabled: maybe\n---\n").unwrap_err().field,
            "enabled"
        );
        assert_eq!(
            def("---\nbackend: command\n---\n").unwrap_err().field,
            "command"
        );
        assert_eq!(
            def("---\nsystemPromptMode: sideways\n---\n")
                .unwrap_err()
                .field,
            "system_prompt_mode"
        );
    }

    #[test]
    fn backend_keys_are_validated() {
        let field = |t: &str| def(t).unwrap_err().field;
        assert_eq!(field("---\nretry_base: soon\n---\n"), "retry_base");
        assert_eq!(field("---\nhistory_budget: lots\n---\n"), "history_budget");
        assert_eq!(field("---\nmax_tokens: -1\n---\n"), "max_tokens");
        assert_eq!(field("---\ntemperature: warm\n---\n"), "temperature");
        assert_eq!(field("---\nstall_timeout: never\n---\n"), "stall_timeout");
        assert_eq!(field("---\nmodel: [a, b]\n---\n"), "model");
        let d = def("---\nretry_base: 50ms\nhistory_budget: 1000\nmax_tokens: 10\ntemperature: 0.2\nstall_timeout: 2m\n---\n").unwrap();
        assert_eq!(d.stall_timeout, Duration::from_secs(120));
    }

    #[test]
    fn names() {
        for ok in ["echo", "my-agent_2", "Console", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "a b",
            "../x",
            "con",
            "AUX",
            "nul",
            "com1",
            "lpt9",
            long.as_str(),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn command_forms() {
        let d = def("---\nbackend: command\ncommand: [python3, x.py, 3]\n---\n").unwrap();
        assert_eq!(d.command_argv().unwrap(), vec!["python3", "x.py", "3"]);
        let d = def("---\nbackend: command\ncommand: tr a-z A-Z\n---\n").unwrap();
        assert_eq!(d.command_argv().unwrap(), vec!["sh", "-c", "tr a-z A-Z"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5 m"), Some(Duration::from_secs(300)));
    }

    /// Found by the `definition` fuzz target: these panicked.
    #[test]
    fn durations_too_large_are_not_durations() {
        assert_eq!(parse_duration("99999999999999999999d"), None);
        assert_eq!(parse_duration(&format!("1{}s", "0".repeat(400))), None);
        assert_eq!(
            parse_duration("10000000000000000000s10000000000000000000s"),
            None
        );
    }
}
