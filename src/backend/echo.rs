//! `echo`: built in, no network. Replies `echo: <message>`.

use tokio_util::sync::CancellationToken;

use super::{Backend, BoxFuture, EventSink, TurnError, TurnEvent, TurnOutput, TurnRequest};

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
