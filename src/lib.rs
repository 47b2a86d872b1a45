//! vaultrunner: run LLM agents from Markdown notes in a vault.
//!
//! The layers, lowest first (a lower layer never imports a higher one):
//! [`note`] (parse/render/tags, no I/O) → [`vault`] (the directory: list,
//! read, atomic writes, lock) → [`agent`] (definitions) → [`queue`] (the
//! index and per-agent FIFO queues) → [`backend`] (one trait, one file per
//! backend) → [`turn`] (the pipeline of SPEC §3) → [`engine`] (dispatch) →
//! [`trigger`] (watcher) → [`server`] / [`cli`] / [`tail`] (the commands).
//! `docs/ARCHITECTURE.md` is the map.

pub mod agent;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod git;
pub mod job;
pub mod message;
pub mod note;
pub mod parachute;
pub mod queue;
pub mod server;
mod simple_yaml;
pub mod tail;
pub mod time;
pub mod trigger;
pub mod turn;
pub mod vault;
