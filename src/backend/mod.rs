//! Backends: one trait, one file per backend (SPEC §4).
//!
//! A backend turns a [`TurnRequest`] into a [`TurnOutput`], emitting live
//! [`TurnEvent`]s (`text`, `tool`, `tool_result`) as it goes. The turn
//! pipeline adds the one final `done` or `error` event itself, so every
//! backend ends every turn the same way. Backends honour the request's
//! deadline and the cancellation token (shutdown), killing whatever they
//! started.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::Definition;

pub mod command;
pub mod echo;
pub mod process;

/// Everything a backend needs to run one turn.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub definition: Arc<Definition>,
    /// The prompt: run-context header (if any) + the message.
    pub prompt: String,
    /// The message alone (the inbound body).
    pub message: String,
    /// Definition body + thread body.
    pub system_prompt: String,
    /// A session to resume, as reported by the backend earlier.
    pub session: Option<String>,
    /// Working directory of the turn.
    pub workspace: PathBuf,
    /// Extra environment (`VAULTRUNNER_*`).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// Token and cost figures of one turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_cost_usd: f64,
}

/// What a turn produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnOutput {
    pub reply: String,
    /// Only an id the backend actually reported.
    pub session: Option<String>,
    pub usage: Usage,
}

/// Why a turn failed. The message is what the reply note says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("{0}")]
    Failed(String),
    #[error("the turn timed out after {0:?}")]
    Timeout(Duration),
    #[error("the turn was cut short by shutdown")]
    Cancelled,
}

/// A live event of a turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnEvent {
    Text {
        text: String,
    },
    Tool {
        name: String,
        input: serde_json::Value,
    },
    ToolResult {
        output: String,
        is_error: bool,
    },
    Done {
        reply: String,
    },
    Error {
        message: String,
    },
}

/// An event with where it belongs.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEvent {
    pub agent: String,
    pub thread: String,
    pub message: String,
    #[serde(flatten)]
    pub event: TurnEvent,
}

/// Where a backend sends its live events. Sending never blocks and never
/// fails the turn (nobody listening is fine).
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: tokio::sync::broadcast::Sender<AgentEvent>,
    agent: String,
    thread: String,
    message: String,
}

impl EventSink {
    pub fn new(
        tx: tokio::sync::broadcast::Sender<AgentEvent>,
        agent: &str,
        thread: &str,
        message: &str,
    ) -> Self {
        EventSink {
            tx,
            agent: agent.to_string(),
            thread: thread.to_string(),
            message: message.to_string(),
        }
    }

    pub fn emit(&self, event: TurnEvent) {
        let _ = self.tx.send(AgentEvent {
            agent: self.agent.clone(),
            thread: self.thread.clone(),
            message: self.message.clone(),
            event,
        });
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one backend trait.
pub trait Backend: Send + Sync {
    fn run<'a>(
        &'a self,
        req: &'a TurnRequest,
        events: &'a EventSink,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<TurnOutput, TurnError>>;

    /// Does a turn of this backend run programs that may write to the vault
    /// (so `process` must look for new notes afterwards)?
    fn runs_external_programs(&self) -> bool {
        true
    }

    /// Should the prompt carry the run-context header?
    fn wants_context_header(&self) -> bool {
        true
    }
}

/// The backend a definition names.
pub fn for_definition(def: &Definition) -> Result<Box<dyn Backend>, TurnError> {
    match def.backend.as_str() {
        "echo" => Ok(Box::new(echo::Echo)),
        "command" => Ok(Box::new(command::CommandBackend::new(def)?)),
        other => Err(TurnError::Failed(format!(
            "the {other} backend is not available in this build of vaultrunner yet"
        ))),
    }
}
