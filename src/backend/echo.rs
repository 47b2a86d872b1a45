//! `echo`: built in, no network. Replies `echo: <message>`.
//!
//! The smallest backend, and the shape of every other: the keys it reads
//! ([`Config`], none here), its [`KIND`] in `super::KINDS`, the backend.

use serde_yaml::Mapping;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BoxFuture, EventSink, Kind, Runner, Settings, TurnError, TurnEvent, TurnOutput,
    TurnRequest,
};
use crate::note::FieldError;

/// `echo` in the registry.
pub const KIND: Kind = Kind {
    name: "echo",
    needs_model: false,
    check: |meta| Config::read(meta).map(drop),
    build,
};

/// The keys only `echo` reads: none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config;

impl Config {
    pub fn read(_meta: &Mapping) -> Result<Config, FieldError> {
        Ok(Config)
    }
}

fn build(s: &Settings<'_>) -> Result<Runner, FieldError> {
    let Config = Config::read(s.meta)?;
    Ok(super::runner(Echo))
}

#[derive(Debug)]
pub struct Echo;

impl Backend for Echo {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        _cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>> {
        Box::pin(async move {
            let reply = format!("echo: {}", req.message);
            events.emit(TurnEvent::Text {
                text: reply.clone(),
            });
            Ok(TurnOutput {
                reply,
                session: None,
                usage: Default::default(),
            })
        })
    }

    fn runs_external_programs(&self) -> bool {
        false
    }

    fn wants_context_header(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testing::{backend_of, definition, meta};

    #[test]
    fn echo_reads_no_keys() {
        // Other backends' keys are theirs to check; echo reads nothing.
        assert_eq!(Config::read(&meta("program: [x]\nfoo: {a: 1}")), Ok(Config));
        let d = definition("").unwrap();
        assert_eq!(d.backend, "echo");
        assert!(backend_of(&d).downcast_ref::<Echo>().is_some());
        assert!(!backend_of(&d).wants_context_header() && !backend_of(&d).runs_external_programs());
    }
}
