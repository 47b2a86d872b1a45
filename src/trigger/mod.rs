//! Triggers: producers of inbound notes and change signals for the engine.
//! The watcher turns file-system events into [`Engine::note_changed`]
//! calls; cron and HTTP (later) write inbound notes and do the same.
//!
//! [`Engine::note_changed`]: crate::engine::Engine::note_changed

pub mod cron;
pub mod http;
pub mod page;
pub mod watch;
