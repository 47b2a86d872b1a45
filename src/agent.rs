//! Agent definitions (`agent/definition` notes), parsed and validated.
//!
//! The keys every definition has (name, backend, mode, model, timeouts, …)
//! are read here; each backend's own keys are read by its file under
//! `src/backend/`. This module sits below the backends and names none of
//! them: it defines what a backend registers ([`Kind`]: its name, its
//! checks, how it is built) and what the definition keeps of the built one
//! ([`Runner`]), and [`parse_definition`] is handed the list of kinds by
//! its caller (the registry is `KINDS` in `src/backend/mod.rs`). [`keys`]
//! has the readers both use.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use serde_yaml::Mapping;

use crate::note::{FieldError, Note, get_str};

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
/// and value when the note was read (SPEC §5a). The keys of every
/// definition are the typed fields below; the backend's own keys were read
/// by the backend into `runner`, ready to run.
#[derive(Debug, Clone)]
pub struct Definition {
    pub name: String,
    /// The definition note's path.
    pub path: String,
    /// The backend's name: the [`Kind::name`] of one of the kinds the
    /// definition was read with.
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
    /// `history_budget`: characters of earlier exchanges sent to an HTTP
    /// backend.
    pub history_budget: Option<usize>,
    /// `delegation_prompt` (default true): the `claude` backend's system
    /// prompt gets the section on delegating to other agents.
    pub delegation_prompt: bool,
    /// The backend, built from its own keys when the definition was read
    /// (`command`, `program`, `base_url`, …: see its file under
    /// `src/backend/`); the backend layer takes it out for each turn.
    pub runner: Runner,
    /// All front-matter, as written.
    pub meta: Mapping,
}

/// A backend a definition can name, as its file registers it: its name,
/// what it needs, how its own keys are checked and how it is built. The
/// list of them is the caller's (the backends' registry, a layer above),
/// passed to [`parse_definition`]; plain data and function pointers, so
/// this module needs no backend type.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The `backend:` value (lower case).
    pub name: &'static str,
    /// Does a definition naming this backend need `model`?
    pub needs_model: bool,
    /// Reads and checks this backend's own keys, all of them optional.
    /// Run on every definition, whatever backend it names, so a wrong
    /// value is an error naming its field even where it is not used.
    pub check: fn(&Mapping) -> Result<(), FieldError>,
    /// The ready-to-run backend of a definition that names this one, from
    /// its keys and the definition's [`Settings`]; a key it needs that is
    /// missing is an error naming the field.
    pub build: fn(&Settings<'_>) -> Result<Runner, FieldError>,
}

/// What a backend is built from: the definition's front-matter, for its
/// own keys, and the keys of every definition it uses.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub meta: &'a Mapping,
    /// `model`, trimmed, `None` when absent or blank.
    pub model: Option<&'a str>,
    pub system_prompt_mode: SystemPromptMode,
}

impl Settings<'_> {
    /// `model`, which the `backend` named needs: an error naming the field
    /// when it is missing.
    pub fn required_model(&self, backend: &str) -> Result<String, FieldError> {
        self.model.map(str::to_string).ok_or_else(|| {
            FieldError::new(
                "model",
                format!(
                    "the {backend} backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"
                ),
            )
        })
    }
}

/// The backend a definition names, built from its keys when the definition
/// was read ([`Kind::build`]) and shared by its turns. Opaque here: the
/// backend layer puts its value in ([`Runner::new`]) and takes it out
/// ([`Runner::get`]) as its own type.
#[derive(Clone)]
pub struct Runner(Arc<dyn Opaque>);

/// What a [`Runner`] can hold: anything that can be shown and shared.
trait Opaque: Any + Debug + Send + Sync {}
impl<T: Any + Debug + Send + Sync> Opaque for T {}

impl Runner {
    pub fn new<T: Any + Debug + Send + Sync>(value: T) -> Runner {
        Runner(Arc::new(value))
    }

    /// The value, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref()
    }
}

impl Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
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
    if name.eq_ignore_ascii_case("git") {
        return Err(format!(
            "{} is not a valid agent name: `POST /hooks/git` is the Git push webhook (SPEC §7), so no agent can be called `git`",
            shown()
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

/// Readers of front-matter keys, for the keys of every definition (here)
/// and for each backend's own (`src/backend/*`): each returns the value,
/// `None` when the key is absent, or a [`FieldError`] naming the key and
/// saying what was expected.
pub mod keys {
    use serde_yaml::{Mapping, Value};

    use crate::note::{FieldError, get_text, value_kind};

    /// A key as text, trimmed: absent, null or blank is `None`; a list or
    /// a mapping is an error naming the key.
    pub fn text(meta: &Mapping, key: &str) -> Result<Option<String>, FieldError> {
        Ok(get_text(meta, key)?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()))
    }

    /// A yes/no key: `true`/`false`, or the text `true`, `yes`, `on`,
    /// `false`, `no`, `off` (any case).
    pub fn flag(meta: &Mapping, key: &str) -> Result<Option<bool>, FieldError> {
        bool_of(meta, key).map_err(|r| FieldError::new(key, r))
    }

    pub(super) fn bool_of(meta: &Mapping, key: &str) -> Result<Option<bool>, String> {
        match meta.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => Ok(Some(true)),
                "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(format!("expected true or false, got {s:?}")),
            },
            Some(other) => Err(format!("expected true or false, got {}", value_kind(other))),
        }
    }

    /// A whole number of 0 or more.
    pub fn whole(meta: &Mapping, key: &str) -> Result<Option<u64>, FieldError> {
        match text(meta, key)? {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| FieldError::new(key, format!("{v:?} is not a whole number"))),
        }
    }

    /// A key that is a list of single values or one text (`command`,
    /// `args`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ListOrText {
        List(Vec<String>),
        Text(String),
    }

    /// Reads a [`ListOrText`] key; `None` when absent or empty. A list item
    /// or the value itself of the wrong type is an error saying what was
    /// expected (`hint`).
    pub fn list_or_text(
        meta: &Mapping,
        key: &str,
        hint: &str,
    ) -> Result<Option<ListOrText>, FieldError> {
        let reason = match meta.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Sequence(seq)) => match seq
                .iter()
                .enumerate()
                .map(|(i, v)| list_item(i, v))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(items) => return Ok(Some(ListOrText::List(items))),
                Err(reason) => reason,
            },
            Some(v) => match scalar(v) {
                Some(s) => return Ok(Some(ListOrText::Text(s))),
                None => format!("expected {hint}, got {}", value_kind(v)),
            },
        };
        Err(FieldError::new(key, reason))
    }

    /// An item of a `command` or `args` list as text: a list or a mapping
    /// inside is an error (1-based item number in the reason).
    fn list_item(i: usize, v: &Value) -> Result<String, String> {
        scalar(v).ok_or_else(|| {
            format!(
                "item {} is {}; each item must be a single value",
                i.saturating_add(1),
                value_kind(v)
            )
        })
    }

    fn scalar(v: &Value) -> Option<String> {
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
}

/// Reads a definition from a parsed note at `path`, with `kinds` the
/// backends it may name (the backends' registry). Every key is checked for
/// its type (a list where text belongs is an error, never a silent
/// default) and its value: first the keys of every definition, then every
/// kind's own keys in `kinds` order (a wrong value is an error even for a
/// backend that would not use it), then `model` when the named backend
/// needs it, then the named backend is built from its keys. The first
/// problem is returned, naming its field.
pub fn parse_definition(
    path: &str,
    note: &Note,
    kinds: &[Kind],
) -> Result<Definition, DefinitionError> {
    let err = |field: &str, reason: String| DefinitionError {
        path: path.to_string(),
        field: field.to_string(),
        reason,
    };
    let field_err = |e: FieldError| err(&e.field, e.reason);
    let text = |key: &str| keys::text(&note.meta, key).map_err(field_err);
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
        Ok(keys::flag(&note.meta, key)
            .map_err(field_err)?
            .unwrap_or(default))
    };

    let stem = path.rsplit('/').next().unwrap_or(path);
    let name = match note.text("name").map_err(field_err)? {
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
    let kind = kinds.iter().find(|k| k.name == backend).ok_or_else(|| {
        let names: Vec<&str> = kinds.iter().map(|k| k.name).collect();
        err(
            "backend",
            format!("unknown backend {backend:?} (one of: {})", names.join(", ")),
        )
    })?;
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
        .map_err(field_err)?
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
    let delegation_prompt = flag("delegation_prompt", true)?;
    let history_budget = match keys::whole(&note.meta, "history_budget").map_err(field_err)? {
        None => None,
        Some(n) => Some(
            usize::try_from(n).map_err(|_| err("history_budget", format!("{n} is too large")))?,
        ),
    };
    for k in kinds {
        (k.check)(&note.meta).map_err(field_err)?;
    }
    let settings = Settings {
        meta: &note.meta,
        model: model.as_deref(),
        system_prompt_mode,
    };
    if kind.needs_model {
        settings.required_model(kind.name).map_err(field_err)?;
    }
    let runner = (kind.build)(&settings).map_err(field_err)?;
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
        history_budget,
        delegation_prompt,
        runner,
        meta: note.meta.clone(),
    })
}

impl Definition {
    /// A boolean key with a default, read from the raw front-matter. The
    /// keys vaultrunner knows are validated fields (`delegation_prompt`,
    /// `enabled`) or the backend's configuration: prefer those.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        keys::bool_of(&self.meta, key)
            .ok()
            .flatten()
            .unwrap_or(default)
    }

    /// A string key, read from the raw front-matter. The keys vaultrunner
    /// knows are validated fields (`retry_base`, `history_budget`, …) or
    /// the backend's configuration: prefer those.
    pub fn str(&self, key: &str) -> Option<String> {
        get_str(&self.meta, key)
    }
}

/// A registry for the tests of this layer and the ones below the backends
/// (`queue`), which cannot use the real one.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Kind, Runner, keys};
    use crate::note::FieldError;

    /// What the `strict` kind builds.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Level(pub u64);

    /// `echo`, which reads no keys; `strict`, whose key `level` must be a
    /// whole number and is needed to build it; `modelled`, which needs
    /// `model`.
    pub const KINDS: &[Kind] = &[
        Kind {
            name: "echo",
            needs_model: false,
            check: |_| Ok(()),
            build: |_| Ok(Runner::new("echo")),
        },
        Kind {
            name: "strict",
            needs_model: false,
            check: |meta| keys::whole(meta, "level").map(drop),
            build: |s| match keys::whole(s.meta, "level")? {
                Some(n) => Ok(Runner::new(Level(n))),
                None => Err(FieldError::new("level", "the strict backend needs `level`")),
            },
        },
        Kind {
            name: "modelled",
            needs_model: true,
            check: |_| Ok(()),
            build: |s| Ok(Runner::new(s.model.map(str::to_string))),
        },
    ];
}

#[cfg(test)]
mod tests {
    use super::testing::{KINDS, Level};
    use super::*;

    fn def(text: &str) -> Result<Definition, DefinitionError> {
        parse_definition("Agents/helper", &Note::parse(text).unwrap(), KINDS)
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
            def("---\nbackend: strict\n---\n").unwrap_err().field,
            "level"
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
        assert_eq!(field("---\nlevel: -1\n---\n"), "level");
        assert_eq!(field("---\nstall_timeout: never\n---\n"), "stall_timeout");
        assert_eq!(field("---\nmodel: [a, b]\n---\n"), "model");
        let d =
            def("---\nretry_base: 50ms\nhistory_budget: 1000\nlevel: 10\nstall_timeout: 2m\n---\n")
                .unwrap();
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
            ("delegation_prompt", "[false]"),
            ("history_budget", "{a: 1}"),
            ("level", "[10]"),
        ];
        for (key, value) in cases {
            // A strict agent, unless `backend` itself is the key under test.
            let backend = match key {
                "backend" => "",
                "level" => "backend: strict\n",
                _ => "backend: strict\nlevel: 1\n",
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
    }

    #[test]
    fn common_keys_are_typed() {
        let d = def(
            "---\nbackend: modelled\nmodel: m\nhistory_budget: 1000\nretry_base: 50ms\ndelegation_prompt: off\n---\n",
        )
        .unwrap();
        assert_eq!(d.history_budget, Some(1000));
        assert_eq!(d.retry_base, Some(Duration::from_millis(50)));
        assert!(!d.delegation_prompt);
        assert_eq!(d.model.as_deref(), Some("m"));
        let d = def("---\n---\n").unwrap();
        assert!(d.delegation_prompt);
        assert_eq!((d.history_budget, d.retry_base), (None, None));

        let field = |t: &str| def(t).unwrap_err().field;
        assert_eq!(
            field("---\nhistory_budget: \"99999999999999999999\"\n---\n"),
            "history_budget"
        );
        assert_eq!(field("---\nlevel: x\nbackend: nope\n---\n"), "backend");
        assert_eq!(
            field("---\nbackend: modelled\nmodel: \" \"\n---\n"),
            "model"
        );
    }

    /// The backend is built when the definition is read, from the keys its
    /// kind reads, and kept as it was built.
    #[test]
    fn the_definition_keeps_its_backend() {
        let d = def("---\nbackend: strict\nlevel: 3\n---\n").unwrap();
        assert_eq!(d.backend, "strict");
        assert_eq!(d.runner.get::<Level>(), Some(&Level(3)));
        assert_eq!(d.runner.get::<&str>(), None);
        assert_eq!(format!("{:?}", d.runner), "Level(3)");
        let d = def("---\nbackend: modelled\nmodel: m\n---\n").unwrap();
        assert_eq!(d.runner.get::<Option<String>>(), Some(&Some("m".into())));
        let d = def("---\n---\n").unwrap();
        assert_eq!(d.runner.get::<&str>(), Some(&"echo"));
    }

    /// Every kind's keys are checked whatever backend the definition names,
    /// in the order of the list; `model` only for a kind that needs it;
    /// then the named kind is built (and only its own requirements count).
    #[test]
    fn every_kind_checks_its_keys_and_the_named_one_is_built() {
        let e = def("---\nlevel: lots\n---\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("level", "\"lots\" is not a whole number")
        );
        let e = def("---\nbackend: modelled\nlevel: [1]\n---\n").unwrap_err();
        assert_eq!(e.field, "level", "the keys before `model`: {e}");
        let e = def("---\nbackend: modelled\n---\n").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            (
                "model",
                "the modelled backend needs `model` (e.g. gpt-4o-mini, claude-sonnet-4-5)"
            )
        );
        assert!(def("---\n---\n").is_ok(), "`level` is strict's need only");
        let e = def("---\nbackend: strict\n---\n").unwrap_err();
        assert_eq!(e.reason, "the strict backend needs `level`");
        // A check that fails stops the definition before anything is built,
        // whichever kind it belongs to.
        let kinds = [
            KINDS[0],
            Kind {
                name: "picky",
                needs_model: false,
                check: |_| Err(FieldError::new("picky", "never")),
                build: |_| Ok(Runner::new(())),
            },
        ];
        let note = Note::parse("---\n---\n").unwrap();
        let e = parse_definition("Agents/helper", &note, &kinds).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("picky", "never"));
    }

    /// The unknown-backend error lists the kinds it was given, so a backend
    /// added to the registry is named without another list to keep.
    #[test]
    fn unknown_backend_names_every_kind_given() {
        let e = def("---\nbackend: gpt\n---\n").unwrap_err();
        assert_eq!(e.field, "backend");
        assert_eq!(
            e.reason,
            "unknown backend \"gpt\" (one of: echo, strict, modelled)"
        );
        let e = def("---\nbackend: Strict\nlevel: 1\n---\n").unwrap();
        assert_eq!(e.backend, "strict", "names are matched lower case");
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
        let e =
            parse_definition("Agents/con", &Note::parse("---\n---\n").unwrap(), KINDS).unwrap_err();
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
