//! The integration tests: one binary (as jj does), one `TestVault` and one
//! set of helpers in [`common`], a module per area. They drive the real
//! `vaultrunner` binary (and, for cron and a few engine paths, the library)
//! on temporary vaults, with fakes of the CLIs and model servers that speak
//! the real protocols.

// Test code may unwrap, index and panic: a failing test should say so
// loudly. The crate's lints deny these outside tests (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unchecked_time_subtraction,
    clippy::disallowed_methods
)]

// Each area uses only part of the helpers.
#[allow(dead_code)]
mod common;

mod attachments;
mod backends;
mod cli;
mod cluster;
mod crash;
mod delegation;
mod git_sync;
mod history;
mod http;
mod http_guard;
mod interface;
mod jobs;
mod notes;
mod page;
mod parachute;
mod parachute_fake;
mod props;
mod remote;
mod robust;
mod serve;
mod values;
