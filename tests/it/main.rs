//! The integration tests: one binary (as jj does), one `TestVault` and one
//! set of helpers in [`common`], a module per area. They drive the real
//! `vaultrunner` binary (and, for cron and a few engine paths, the library)
//! on temporary vaults, with fakes of the CLIs and model servers that speak
//! the real protocols.

// Each area uses only part of the helpers.
#[allow(dead_code)]
mod common;

mod backends;
mod cli;
mod crash;
mod delegation;
mod http;
mod jobs;
mod notes;
mod props;
mod serve;
