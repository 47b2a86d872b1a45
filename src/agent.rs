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

/// A valid agent definition: every key it has was checked for its type
/// and value when the note was read (SPEC §5a), so the backends read the
/// typed fields below rather than the raw front-matter.
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
    /// At most [`crate::time::MAX_DURATION`], never zero.
    pub timeout: Duration,
    /// Longest time a turn may go without output (`stall_timeout`); at most
    /// [`crate::time::MAX_DURATION`], never zero.
    pub stall_timeout: Duration,
    pub enabled: bool,
    /// The body: the system prompt.
    pub system_prompt: String,
    /// `retry_base`: the first back-off of transient-failure retries
    /// (`None`: the retry policy's default).
    pub retry_base: Option<Duration>,
    /// `command` as argv: a list as given, a string run through `sh -c`.
    /// Always `Some` for the `command` backend.
    pub command: Option<Vec<String>>,
    /// `context_header` (default false): the `command` backend puts the
    /// run-context header before the message.
    pub context_header: bool,
    /// `program`: the executable of a CLI backend, instead of its default.
    pub program: Option<String>,
    /// `args`: extra arguments of a CLI backend.
    pub args: Vec<String>,
    /// `base_url` of an HTTP backend (`http://` or `https://`).
    pub base_url: Option<String>,
    /// `api_key_env`: the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// `max_tokens` (at least 1).
    pub max_tokens: Option<u64>,
    /// `temperature` (finite, not negative).
    pub temperature: Option<f64>,
    /// `history_budget`: characters of earlier exchanges sent to an HTTP
    /// backend.
    pub history_budget: Option<usize>,
    /// `delegation_prompt` (default true): the `claude` backend's system
    /// prompt gets the section on delegating to other agents.
    pub delegation_prompt: bool,
    /// All front-matter, as written.
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

/// The longest agent name.
pub const MAX_NAME_LEN: usize = 64;

/// Why `name` is not a valid agent name, or `Ok`: `^[A-Za-z0-9_-]+$`, at
/// most 64 characters, and not a name Windows refuses for a file (`con`,
/// `aux`, …), since an agent's name becomes a folder and a file name under
/// `Threads/`. The reason names the name (escaped, and cut when long).
pub fn check_name(name: &str) -> Result<(), String> {
    let shown = || {
        let cut: String = name.chars().take(MAX_NAME_LEN).collect();
        if cut.len() < name.len() {
            format!("{cut:?}…")
        } else {
            format!("{name:?}")
        }
    };
    if name.is_empty() {
        return Err("\"\" is not a valid agent name: it is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{} is not a valid agent name: {c:?} is not allowed (letters, digits, `_` and `-` only)",
            shown()
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{} is not a valid agent name: it is {} characters long, at most {MAX_NAME_LEN} are allowed",
            shown(),
            name.len()
        ));
    }
    if crate::vault::is_windows_reserved(name) {
        return Err(format!(
            "{} is not a valid agent name: Windows reserves it for a device (con, prn, aux, nul, com1–com9, lpt1–lpt9), and an agent's name becomes a file name",
            shown()
        ));
    }
    Ok(())
}

/// Is `name` a valid agent name? The yes/no form of [`check_name`], which
/// says why not.
pub fn valid_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// Parses durations like `90`, `30s`, `10m`, `1h30m`, `2d`, `500ms`, at
/// most one year; `None` when it is not one. [`crate::time::parse_duration`]
/// says why.
pub fn parse_duration(s: &str) -> Option<Duration> {
    crate::time::parse_duration(s).ok()
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
        Some(other) => Err(format!(
            "expected true or false, got {}",
            crate::note::value_kind(other)
        )),
    }
}

/// An item of a `command` or `args` list as text: a list or a mapping
/// inside is an error (1-based item number in the reason).
fn list_item(i: usize, v: &Value) -> Result<String, String> {
    get_scalar(v).ok_or_else(|| {
        format!(
            "item {} is {}; each item must be a single value",
            i.saturating_add(1),
            crate::note::value_kind(v)
        )
    })
}

/// A key that is a list of single values or one text (`command`, `args`).
enum ListOrText {
    List(Vec<String>),
    Text(String),
}

/// Reads a [`ListOrText`] key; `None` when absent or empty. A list item
/// or the value itself of the wrong type is an error saying what was
/// expected (`hint`).
fn list_or_text(meta: &Mapping, key: &str, hint: &str) -> Result<Option<ListOrText>, String> {
    match meta.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Sequence(seq)) => seq
            .iter()
            .enumerate()
            .map(|(i, v)| list_item(i, v))
            .collect::<Result<Vec<_>, _>>()
            .map(|items| Some(ListOrText::List(items))),
        Some(v) => match get_scalar(v) {
            Some(s) => Ok(Some(ListOrText::Text(s))),
            None => Err(format!(
                "expected {hint}, got {}",
                crate::note::value_kind(v)
            )),
        },
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

/// Reads a definition from a parsed note at `path`. Every key is checked
/// for its type (a list where text belongs is an error, never a silent
/// default) and its value; the first problem is returned, naming its field.
pub fn parse_definition(path: &str, note: &Note) -> Result<Definition, DefinitionError> {
    let err = |field: &str, reason: String| DefinitionError {
        path: path.to_string(),
        field: field.to_string(),
        reason,
    };
    // A key as text: absent or null is `None`, so is blank text; a list
    // or a mapping is an error naming the key.
    let text = |key: &str| -> Result<Option<String>, DefinitionError> {
        Ok(note
            .text(key)
            .map_err(|e| err(&e.field, e.reason))?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    };
    let duration = |key: &str, allow_zero: bool| -> Result<Option<Duration>, DefinitionError> {
        match text(key)? {
            None => Ok(None),
            Some(t) => match crate::time::parse_duration(&t) {
                Ok(d) if d.is_zero() && !allow_zero => Err(err(
                    key,
                    format!("{t:?} is zero; give {}", crate::time::DURATION_HINT),
                )),
                Ok(d) => Ok(Some(d)),
                Err(reason) => Err(err(key, reason)),
            },
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool, DefinitionError> {
        Ok(bool_of(&note.meta, key)
            .map_err(|r| err(key, r))?
            .unwrap_or(default))
    };

    let stem = path.rsplit('/').next().unwrap_or(path);
    let name = match note.text("name").map_err(|e| err(&e.field, e.reason))? {
        Some(n) => {
            check_name(&n).map_err(|r| err("name", r))?;
            n
        }
        None => {
            check_name(stem)
                .map_err(|r| err("name", format!("{r} (it is the file's name; set `name:`)")))?;
            stem.to_string()
        }
    };
    let backend = text("backend")?
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
    let mode = match text("mode")?.as_deref() {
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
        .text_any(&["system_prompt_mode", "systemPromptMode"])
        .map_err(|e| err(&e.field, e.reason))?
        .map(|s| s.trim().to_ascii_lowercase());
    let system_prompt_mode = match spm.as_deref() {
        None | Some("") | Some("append") => SystemPromptMode::Append,
        Some("replace") => SystemPromptMode::Replace,
        Some(other) => {
            return Err(err(
                "system_prompt_mode",
                format!("{other:?} is not append or replace"),
            ));
        }
    };
    let model = text("model")?;
    let workspace = text("workspace")?;
    let timeout = duration("timeout", false)?.unwrap_or(DEFAULT_TIMEOUT);
    let stall_timeout = duration("stall_timeout", false)?.unwrap_or(DEFAULT_STALL_TIMEOUT);
    let retry_base = duration("retry_base", true)?;
    let enabled = flag("enabled", true)?;
    let context_header = flag("context_header", false)?;
    let delegation_prompt = flag("delegation_prompt", true)?;

    let whole = |key: &str| -> Result<Option<u64>, DefinitionError> {
        match text(key)? {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| err(key, format!("{v:?} is not a whole number"))),
        }
    };
    let max_tokens = whole("max_tokens")?;
    if max_tokens == Some(0) {
        return Err(err("max_tokens", "must be at least 1".into()));
    }
    let history_budget = match whole("history_budget")? {
        None => None,
        Some(n) => Some(
            usize::try_from(n).map_err(|_| err("history_budget", format!("{n} is too large")))?,
        ),
    };
    let temperature = match text("temperature")? {
        None => None,
        Some(v) => match v.parse::<f64>() {
            Ok(t) if t.is_finite() && t >= 0.0 => Some(t),
            Ok(_) => {
                return Err(err(
                    "temperature",
                    format!("{v:?} is not a number of 0 or more"),
                ));
            }
            Err(_) => return Err(err("temperature", format!("{v:?} is not a number"))),
        },
    };
    let base_url = text("base_url")?;
    if let Some(u) = &base_url {
        let l = u.to_ascii_lowercase();
        if !(l.starts_with("http://") || l.starts_with("https://")) {
            return Err(err(
                "base_url",
                format!("{u:?} is not an http:// or https:// address"),
            ));
        }
    }
    let api_key_env = text("api_key_env")?;
    if let Some(k) = &api_key_env
        && !env_name_ok(k)
    {
        return Err(err(
            "api_key_env",
            format!(
                "{k:?} is not an environment variable name (letters, digits and `_`, like OPENAI_API_KEY)"
            ),
        ));
    }
    let program = text("program")?;
    let args = match list_or_text(&note.meta, "args", "a list like [--verbose] or text")
        .map_err(|r| err("args", r))?
    {
        None => Vec::new(),
        Some(ListOrText::List(items)) => items,
        Some(ListOrText::Text(s)) => s.split_whitespace().map(str::to_string).collect(),
    };
    let command_hint = "a list like [python3, script.py] or a shell string";
    let command =
        match list_or_text(&note.meta, "command", command_hint).map_err(|r| err("command", r))? {
            None => None,
            Some(ListOrText::List(argv)) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(err(
                        "command",
                        format!("the program (first item) is missing; give {command_hint}"),
                    ));
                }
                Some(argv)
            }
            Some(ListOrText::Text(s)) if s.trim().is_empty() => None,
            Some(ListOrText::Text(s)) => Some(vec!["sh".into(), "-c".into(), s]),
        };
    if backend == "command" && command.is_none() {
        return Err(err(
            "command",
            format!("the command backend needs `command`: {command_hint}"),
        ));
    }
    if matches!(backend.as_str(), "openai" | "anthropic") && model.is_none() {
        return Err(err(
            "model",
            format!("the {backend} backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"),
        ));
    }
    Ok(Definition {
        name,
        path: path.to_string(),
        backend,
        mode,
        model,
        system_prompt_mode,
        workspace,
        timeout,
        stall_timeout,
        enabled,
        system_prompt: note.body.trim().to_string(),
        retry_base,
        command,
        context_header,
        program,
        args,
        base_url,
        api_key_env,
        max_tokens,
        temperature,
        history_budget,
        delegation_prompt,
        meta: note.meta.clone(),
    })
}

fn get_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => match &t.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl Definition {
    /// The `command` of a command agent as argv: a list as given, a string
    /// run through `sh -c`.
    pub fn command_argv(&self) -> Option<Vec<String>> {
        self.command.clone()
    }

    /// A boolean key with a default, read from the raw front-matter. The
    /// keys vaultrunner knows are validated fields (`context_header`,
    /// `delegation_prompt`, `enabled`): prefer those.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        bool_of(&self.meta, key).ok().flatten().unwrap_or(default)
    }

    /// A string key, read from the raw front-matter. The keys vaultrunner
    /// knows are validated fields (`retry_base`, `history_budget`, …):
    /// prefer those.
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
    fn durations_are_bounded() {
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("10x"), None);
        // Values that used to panic (`Duration::from_secs_f64`) or overflow
        // `Instant + Duration` on every turn are errors naming the field.
        for key in ["timeout", "stall_timeout", "retry_base"] {
            for v in [
                "99999999999999999999d",
                "18446744073709551615",
                "366d",
                "1e400s",
                "inf",
                "NaN",
                "-1s",
            ] {
                let e = def(&format!("---\n{key}: {v}\n---\n")).unwrap_err();
                assert_eq!(e.field, key, "{key}: {v}");
                assert!(
                    e.reason.contains("over the one-year limit")
                        || e.reason.contains("is not a duration like 90s, 10m or 1h"),
                    "{key}: {v}: {e}"
                );
            }
        }
        let e = def("---\ntimeout: 18446744073709551615\n---\n").unwrap_err();
        assert!(e.reason.contains("over the one-year limit"), "{e}");
        let d = def("---\ntimeout: 365d\nstall_timeout: 1h 30m\nretry_base: 0\n---\n").unwrap();
        assert_eq!(d.timeout, crate::time::MAX_DURATION);
        assert_eq!(d.stall_timeout, Duration::from_secs(5400));
        assert_eq!(d.retry_base, Some(Duration::ZERO));
        assert_eq!(def("---\ntimeout: 0s\n---\n").unwrap_err().field, "timeout");
    }

    /// A list or a mapping where a single value belongs is an error naming
    /// the key, never read as "absent" (which gave `echo`, 30 minutes, the
    /// file's stem, …).
    #[test]
    fn wrong_typed_keys_are_errors() {
        let cases = [
            ("backend", "[claude]"),
            ("timeout", "{a: 1}"),
            ("name", "[a, b]"),
            ("mode", "[multi]"),
            ("model", "[a, b]"),
            ("workspace", "{dir: x}"),
            ("system_prompt_mode", "[replace]"),
            ("systemPromptMode", "{a: 1}"),
            ("stall_timeout", "[1m]"),
            ("retry_base", "{a: 1}"),
            ("enabled", "[true]"),
            ("context_header", "{a: 1}"),
            ("delegation_prompt", "[false]"),
            ("max_tokens", "[10]"),
            ("history_budget", "{a: 1}"),
            ("temperature", "[0.2]"),
            ("base_url", "[http://x]"),
            ("api_key_env", "{a: 1}"),
            ("program", "[claude]"),
            ("args", "{a: 1}"),
            ("args", "[--x, [nested]]"),
            ("command", "{a: 1}"),
            ("command", "[python3, {a: 1}]"),
        ];
        for (key, value) in cases {
            // A claude agent, unless `backend` itself is the key under test.
            let backend = if key == "backend" {
                ""
            } else {
                "backend: claude\n"
            };
            let e = def(&format!("---\n{backend}{key}: {value}\n---\n")).unwrap_err();
            assert_eq!(e.field, key, "{key}: {value}: {e}");
            assert!(
                e.to_string().starts_with("Agents/helper.md: field `"),
                "{e}"
            );
        }
        let e = def("---\nbackend: [claude]\n---\n").unwrap_err();
        assert_eq!(e.reason, "expected a single value, got a list");
        let e = def("---\ncommand: [python3, [x]]\nbackend: command\n---\n").unwrap_err();
        assert_eq!(
            e.reason,
            "item 2 is a list; each item must be a single value"
        );
    }

    #[test]
    fn backend_keys_are_typed() {
        let d = def(
            "---\nbackend: openai\nmodel: m\nbase_url: http://127.0.0.1:1/v1\napi_key_env: MY_KEY\nmax_tokens: 10\ntemperature: 0.2\nhistory_budget: 1000\nretry_base: 50ms\nprogram: x\nargs: [--a, 1, true]\ncontext_header: yes\ndelegation_prompt: off\n---\n",
        )
        .unwrap();
        assert_eq!(d.base_url.as_deref(), Some("http://127.0.0.1:1/v1"));
        assert_eq!(d.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(d.max_tokens, Some(10));
        assert_eq!(d.temperature, Some(0.2));
        assert_eq!(d.history_budget, Some(1000));
        assert_eq!(d.retry_base, Some(Duration::from_millis(50)));
        assert_eq!(d.program.as_deref(), Some("x"));
        assert_eq!(d.args, vec!["--a", "1", "true"]);
        assert!(d.context_header);
        assert!(!d.delegation_prompt);
        let d = def("---\nargs: --a  --b\n---\n").unwrap();
        assert_eq!(d.args, vec!["--a", "--b"]);
        let d = def("---\n---\n").unwrap();
        assert!(d.args.is_empty() && !d.context_header && d.delegation_prompt);
        assert_eq!((d.max_tokens, d.retry_base, d.command), (None, None, None));

        let field = |t: &str| def(t).unwrap_err().field;
        assert_eq!(field("---\nmax_tokens: 0\n---\n"), "max_tokens");
        assert_eq!(field("---\nmax_tokens: 1e3\n---\n"), "max_tokens");
        assert_eq!(
            field("---\nhistory_budget: \"99999999999999999999\"\n---\n"),
            "history_budget"
        );
        for t in ["nan", "inf", "-1", "1e400"] {
            assert_eq!(
                field(&format!("---\ntemperature: {t}\n---\n")),
                "temperature",
                "{t}"
            );
        }
        assert_eq!(field("---\nbase_url: localhost:11434\n---\n"), "base_url");
        assert_eq!(field("---\napi_key_env: MY=KEY\n---\n"), "api_key_env");
        assert_eq!(
            field("---\napi_key_env: \"\"\nbackend: nope\n---\n"),
            "backend"
        );
        assert_eq!(
            field("---\nbackend: command\ncommand: []\n---\n"),
            "command"
        );
        assert_eq!(
            field("---\nbackend: command\ncommand: \"  \"\n---\n"),
            "command"
        );
        assert_eq!(field("---\nbackend: openai\nmodel: \" \"\n---\n"), "model");
    }

    #[test]
    fn name_reasons() {
        let reason = |n: &str| check_name(n).unwrap_err();
        assert_eq!(reason(""), "\"\" is not a valid agent name: it is empty");
        assert!(
            reason("CON").contains("Windows reserves it"),
            "{}",
            reason("CON")
        );
        assert!(reason("lpt9").contains("Windows reserves it"));
        let long = "x".repeat(65);
        let r = reason(&long);
        assert!(r.contains("65 characters long, at most 64"), "{r}");
        assert!(r.len() < 200, "{r}");
        let r = reason("a b");
        assert!(r.contains("' ' is not allowed"), "{r}");
        let r = reason("x\nFAKE");
        assert!(r.contains("\"x\\nFAKE\""), "{r}");
        assert!(check_name("Console").is_ok());
        assert!(check_name(&"x".repeat(64)).is_ok());
        // The definition's error says the same, and points at the file name
        // when the name came from it.
        let e = parse_definition("Agents/con", &Note::parse("---\n---\n").unwrap()).unwrap_err();
        assert_eq!(e.field, "name");
        assert!(
            e.reason.contains("Windows reserves it") && e.reason.contains("set `name:`"),
            "{e}"
        );
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
