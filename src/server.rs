//! `serve` and `process`: lock the vault, recover, run the engine with its
//! triggers until shutdown (serve) or until quiet (process).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::{Config, Engine};
use crate::trigger::watch::{self, WatchOptions};
use crate::vault::{Vault, VaultError};

/// How long `serve` waits for running turns after a shutdown signal (they
/// are being killed: TERM, grace, KILL), before it exits regardless.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("file watcher: {0}")]
    Watch(#[from] notify::Error),
}

/// Options of `serve`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub config: Config,
    pub watch: WatchOptions,
}

/// What `process` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessReport {
    pub ok: u64,
    pub error: u64,
    pub skipped: u64,
    /// Messages whose turn could not be recorded (I/O failures).
    pub stuck: u64,
    /// Messages left waiting for an agent that has no (enabled) definition.
    pub waiting: usize,
}

/// Opens a vault and takes its lock, cleaning up a crashed run's temp files.
fn open_locked(path: &Path) -> Result<(Vault, crate::vault::VaultLock), VaultError> {
    let vault = Vault::open(path)?.with_group_commit();
    let lock = vault.lock()?;
    let n = vault.clean_temp_files();
    if n > 0 {
        tracing::info!("removed {n} temp file(s) left by an interrupted write");
    }
    Ok((vault, lock))
}

/// `process`: run every eligible inbound note to completion, then return.
pub async fn process(
    path: &Path,
    config: Config,
    cancel: CancellationToken,
) -> Result<ProcessReport, VaultError> {
    let (vault, _lock) = open_locked(path)?;
    let engine = Engine::new(vault, config);
    engine.process(cancel).await;
    Ok(ProcessReport {
        ok: engine.stats.turns_ok.load(Ordering::Relaxed),
        error: engine.stats.turns_error.load(Ordering::Relaxed),
        skipped: engine.stats.skipped.load(Ordering::Relaxed),
        stuck: engine.stats.stuck.load(Ordering::Relaxed),
        waiting: engine.with_index(|ix| ix.waiting().len()),
    })
}

/// `serve`: watch, run, until `cancel`. Returns once running turns have
/// stopped (bounded by [`SHUTDOWN_BOUND`]).
pub async fn serve(
    path: &Path,
    opts: ServeOptions,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let (vault, _lock) = open_locked(path)?;
    let engine = Engine::new(vault, opts.config.clone());
    let report = engine.scan(true);
    tracing::info!(
        "serving {} ({} notes); settle {:?}",
        engine.vault().root().display(),
        report.notes,
        opts.watch.settle
    );
    serve_engine(engine, opts.watch, cancel).await
}

/// Runs an engine's dispatcher and watcher until `cancel`.
pub async fn serve_engine(
    engine: Arc<Engine>,
    watch_opts: WatchOptions,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let dispatcher = {
        let engine = engine.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { engine.run_dispatcher(cancel).await })
    };
    let watched = watch::run(engine.clone(), watch_opts, cancel.clone()).await;
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_BOUND, dispatcher)
        .await
        .is_err()
    {
        tracing::warn!(
            "turns still running after {SHUTDOWN_BOUND:?}; exiting anyway (they are recovered on the next start)"
        );
    }
    watched?;
    Ok(())
}
