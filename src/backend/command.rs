//! `command`: runs `command: [argv…]`, the prompt on stdin, the reply on
//! stdout (each line also a live `text` event as it is printed). A
//! non-zero exit fails the turn with the tail of stderr.

use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, TurnError, TurnOutput, TurnRequest,
    process,
};
use crate::agent::keys::{self, ListOrText};
use crate::note::FieldError;

/// `command` in the registry.
pub const KIND: Kind = Kind {
    name: "command",
    needs_model: false,
    check: |meta| Config::read(meta).map(drop),
    build,
};

const COMMAND_HINT: &str = "a list like [python3, script.py] or a shell string";

/// The keys only `command` reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `command` as argv: a list as given (its first item not blank), a
    /// string run through `sh -c`; `None` when absent or blank.
    pub command: Option<Vec<String>>,
    /// `context_header` (default false): put the run-context header before
    /// the message.
    pub context_header: bool,
}

impl Config {
    pub fn read(meta: &Mapping) -> Result<Config, FieldError> {
        let context_header = keys::flag(meta, "context_header")?.unwrap_or(false);
        let command = match keys::list_or_text(meta, "command", COMMAND_HINT)? {
            None => None,
            Some(ListOrText::List(argv)) => {
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(FieldError::new(
                        "command",
                        format!("the program (first item) is missing; give {COMMAND_HINT}"),
                    ));
                }
                Some(argv)
            }
            Some(ListOrText::Text(s)) if s.trim().is_empty() => None,
            Some(ListOrText::Text(s)) => Some(vec!["sh".into(), "-c".into(), s]),
        };
        Ok(Config {
            command,
            context_header,
        })
    }
}

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let c = Config::read(s.meta)?;
    let argv = c.command.ok_or_else(|| {
        FieldError::new(
            "command",
            format!("the command backend needs `command`: {COMMAND_HINT}"),
        )
    })?;
    Ok(super::runner(CommandBackend {
        argv,
        header: c.context_header,
    }))
}

#[derive(Debug)]
pub struct CommandBackend {
    argv: Vec<String>,
    header: bool,
}

impl CommandBackend {
    /// The argv run each turn (never empty).
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Does the message on stdin carry the run-context header?
    pub fn context_header(&self) -> bool {
        self.header
    }
}

/// The last `n` characters of a text, for error messages.
pub fn tail(s: &str, n: usize) -> &str {
    let s = s.trim();
    if s.len() <= n {
        return s;
    }
    let mut cut = s.len() - n;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    s.get(cut..).unwrap_or(s)
}

impl Backend for CommandBackend {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            // Programs get the system prompt (definition body + thread body)
            // in the environment; stdin carries the message.
            let mut env = req.env.clone();
            env.push((
                "VAULTRUNNER_SYSTEM_PROMPT".into(),
                req.system_prompt.clone(),
            ));
            let spec = process::Spawn {
                argv: &self.argv,
                stdin: Some(&req.prompt),
                cwd: &req.workspace,
                env: &env,
                remove_env: &[],
                deadline: req.deadline,
                timeout: req.timeout,
                stall: req.stall,
            };
            // Its stdout streams line by line as the turn's live text.
            let done = process::run(&spec, cancel, Some(events)).await?;
            match done.code {
                Some(0) => {
                    let reply = done.stdout.trim_end_matches(['\n', '\r']).to_string();
                    Ok(TurnOutput {
                        reply,
                        session: None,
                        usage: Default::default(),
                    })
                }
                code => {
                    let how = match code {
                        Some(c) => format!("exited with status {c}"),
                        None => "was killed by a signal".to_string(),
                    };
                    let err = tail(&done.stderr, 2000);
                    let prog = self.argv.first().map_or("the command", String::as_str);
                    Err(TurnError::Failed(if err.is_empty() {
                        format!("{prog} {how}")
                    } else {
                        format!("{prog} {how}: {err}")
                    }))
                }
            }
        })
    }

    fn wants_context_header(&self) -> bool {
        self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{backend_of, definition, error, meta};

    fn backend(front: &str) -> (Vec<String>, bool) {
        let d = definition(&format!("backend: command\n{front}")).unwrap();
        let c = backend_of(&d).downcast_ref::<CommandBackend>().unwrap();
        (c.argv().to_vec(), c.context_header())
    }

    #[test]
    fn command_forms() {
        assert_eq!(
            backend("command: [python3, x.py, 3]\n").0,
            ["python3", "x.py", "3"]
        );
        assert_eq!(
            backend("command: tr a-z A-Z\n").0,
            ["sh", "-c", "tr a-z A-Z"]
        );
        assert_eq!(
            Config::read(&meta("command: [a, true, 1.5]"))
                .unwrap()
                .command,
            Some(vec!["a".into(), "true".into(), "1.5".into()])
        );
        assert_eq!(
            Config::read(&meta("command: \"  \"")).unwrap().command,
            None
        );
        assert_eq!(Config::read(&meta("{}")).unwrap(), Config::default());
    }

    #[test]
    fn context_header() {
        assert!(!backend("command: cat\n").1);
        assert!(backend("command: cat\ncontext_header: yes\n").1);
        assert!(backend("command: cat\ncontext_header: true\n").1);
        assert!(!backend("command: cat\ncontext_header: Off\n").1);
        let d = definition("backend: command\ncommand: cat\ncontext_header: on\n").unwrap();
        assert!(backend_of(&d).wants_context_header());
    }

    #[test]
    fn config_errors_name_the_field() {
        let read = |y: &str| error(Config::read(&meta(y)));
        let hint = "a list like [python3, script.py] or a shell string";
        assert_eq!(
            read("command: {a: 1}"),
            ("command".into(), format!("expected {hint}, got a mapping"))
        );
        assert_eq!(
            read("command: [python3, [x]]"),
            (
                "command".into(),
                "item 2 is a list; each item must be a single value".into()
            )
        );
        assert_eq!(
            read("command: [python3, {a: 1}]"),
            (
                "command".into(),
                "item 2 is a mapping; each item must be a single value".into()
            )
        );
        for empty in ["command: []", "command: [\" \", x]"] {
            assert_eq!(
                read(empty),
                (
                    "command".into(),
                    format!("the program (first item) is missing; give {hint}")
                ),
                "{empty}"
            );
        }
        assert_eq!(
            read("context_header: {a: 1}"),
            (
                "context_header".into(),
                "expected true or false, got a mapping".into()
            )
        );
        assert_eq!(
            read("context_header: maybe"),
            (
                "context_header".into(),
                "expected true or false, got \"maybe\"".into()
            )
        );
    }

    /// The backend needs `command`; other backends leave it optional.
    #[test]
    fn command_is_required_by_its_backend() {
        for front in ["backend: command\n", "backend: command\ncommand: \"  \"\n"] {
            let e = definition(front).unwrap_err();
            assert_eq!(e.field, "command", "{front}");
            assert_eq!(
                e.reason,
                "the command backend needs `command`: a list like [python3, script.py] or a shell string"
            );
        }
        assert!(definition("backend: claude\n").is_ok());
        // A wrong `command` is an error for any backend.
        assert_eq!(
            definition("backend: claude\ncommand: []\n")
                .unwrap_err()
                .field,
            "command"
        );
    }
}
