//! `command`: runs `command: [argv…]`, the prompt on stdin, the reply on
//! stdout. A non-zero exit fails the turn with the tail of stderr.

use tokio_util::sync::CancellationToken;

use super::{
    Backend, BoxFuture, EventSink, TurnError, TurnEvent, TurnOutput, TurnRequest, process,
};
use crate::agent::Definition;

pub struct CommandBackend {
    argv: Vec<String>,
    header: bool,
}

impl CommandBackend {
    pub fn new(def: &Definition) -> Result<Self, TurnError> {
        // Checked when the definition was read; a definition built some
        // other way still gets an error, not a panic.
        let argv = def
            .command
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                TurnError::Failed(format!(
                    "{}.md: field `command` is missing or invalid",
                    def.path
                ))
            })?;
        Ok(CommandBackend {
            argv,
            header: def.context_header,
        })
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
            let done = process::run(&spec, cancel).await?;
            match done.code {
                Some(0) => {
                    let reply = done.stdout.trim_end_matches(['\n', '\r']).to_string();
                    if !reply.is_empty() {
                        events.emit(TurnEvent::Text {
                            text: reply.clone(),
                        });
                    }
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
