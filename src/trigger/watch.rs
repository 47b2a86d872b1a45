//! The change loop of `serve`: reads what the vault's change feed
//! ([`crate::vault::Vault::watch`]) reports.
//!
//! A note changed by someone else is read once it has been quiet for the
//! settle window (by the `modified` time the vault gives), so a half-typed
//! note is never sent; an inbound note vaultrunner wrote itself (it carries
//! a vaultrunner `sender`) is read at once. A feed's request for a scan and
//! a periodic timer lead to a full scan, the safety net for anything the
//! feed missed. With nothing to do the loop sleeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::vault::{Change, VaultError};

/// Watcher settings; `None` is the vault's own default
/// ([`crate::vault::Vault::settle`], [`crate::vault::Vault::rescan_every`]).
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Quiet time before an externally written note is read.
    pub settle: Option<Duration>,
    /// Interval of the safety-net full scan.
    pub rescan: Option<Duration>,
    /// The change poll of a remote vault.
    pub poll: Option<Duration>,
}

/// Reads a changed note now, or once it has been quiet for the settle
/// window (a note vaultrunner wrote itself needs no settling).
fn route(engine: &Engine, settle: Duration, pending: &mut HashMap<String, Instant>, rel: String) {
    // Our own writes (and events that changed nothing) end here, before
    // the note is read at all.
    if engine.unchanged(&rel) {
        pending.remove(&rel);
        return;
    }
    if settle.is_zero() || engine.skip_settle(&rel) {
        pending.remove(&rel);
        read(engine, pending, rel);
    } else {
        pending.insert(rel, crate::time::after(settle));
    }
}

/// Reads a changed note now; a read that failed for a passing reason (out
/// of descriptors, an I/O error) is tried again on its own, later.
fn read(engine: &Engine, pending: &mut HashMap<String, Instant>, rel: String) {
    if !engine.note_changed(&rel) {
        let again = crate::time::after(engine.read_retry_delay(&rel));
        pending.insert(rel, again);
    }
}

/// A full scan that leaves notes changed within the settle window to it,
/// and reads again later the notes it could not read.
fn scan(engine: &Engine, settle: Duration, pending: &mut HashMap<String, Instant>) {
    let report = engine.scan_settled(settle);
    for rel in report.deferred {
        if !pending.contains_key(&rel) {
            route(engine, settle, pending, rel);
        }
    }
    for rel in report.failed {
        let again = crate::time::after(engine.read_retry_delay(&rel));
        pending.entry(rel).or_insert(again);
    }
}

/// Runs the change loop until `cancel`.
pub async fn run(
    engine: Arc<Engine>,
    opts: WatchOptions,
    cancel: CancellationToken,
) -> Result<(), VaultError> {
    let settle = opts.settle.unwrap_or_else(|| engine.vault().settle());
    let rescan_every = opts.rescan.unwrap_or_else(|| engine.vault().rescan_every());
    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let _feed = engine.vault().watch(tx)?;
    let mut pending: HashMap<String, Instant> = HashMap::new();
    // Catch anything written between the start-up scan and the feed.
    scan(&engine, settle, &mut pending);

    let mut next_rescan = crate::time::after(rescan_every);
    loop {
        let next_due = pending.values().min().copied();
        let wake_at = next_due.map_or(next_rescan, |d| d.min(next_rescan));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(wake_at) => {}
            change = rx.recv() => {
                let Some(change) = change else { break };
                let mut rescan = None;
                let mut batch = vec![change];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for change in batch {
                    match change {
                        Change::Note(path) => route(&engine, settle, &mut pending, path),
                        Change::Rescan(why) => rescan = Some(why),
                    }
                }
                if let Some(why) = rescan {
                    tracing::debug!("scanning the vault: {why}");
                    scan(&engine, settle, &mut pending);
                }
                continue;
            }
        }
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            pending.remove(&p);
            read(&engine, &mut pending, p);
        }
        if now >= next_rescan {
            scan(&engine, settle, &mut pending);
            next_rescan = crate::time::later(now, rescan_every);
        }
    }
    Ok(())
}
