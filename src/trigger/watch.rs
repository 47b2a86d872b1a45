//! The file-system watcher of `serve`.
//!
//! Watches directories, not files (editors replace files on save), each
//! non-dot directory on its own so `.git` and `.obsidian` churn costs
//! nothing. A note changed by someone else is read once it has been quiet
//! for the settle window, so a half-typed note is never sent; an inbound
//! note vaultrunner wrote itself (it carries a vaultrunner `sender`) is read
//! at once. Overflow (`Rescan`), a new directory, and a periodic timer all
//! lead to a scan, the safety net for anything an event missed. With nothing
//! to do the watcher sleeps: no polling.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::vault::watch_dirs;

/// Watcher settings.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time before an externally written note is read.
    pub settle: Duration,
    /// Interval of the safety-net full scan.
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            settle: Duration::from_secs(2),
            rescan: Duration::from_secs(300),
        }
    }
}

enum Signal {
    Event(Event),
    Error(notify::Error),
}

fn explain(e: &notify::Error) -> String {
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => "the system limit of inotify watches is reached \
            (fs.inotify.max_user_watches); raise it, e.g. `sysctl fs.inotify.max_user_watches=524288`. \
            Until then changes are found by the periodic rescan"
            .to_string(),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(24) => "too many open files \
            (ulimit -n); changes are found by the periodic rescan"
            .to_string(),
        _ => e.to_string(),
    }
}

/// Adds a watch on each directory (non-recursive), skipping known ones.
fn watch_all(
    watcher: &mut RecommendedWatcher,
    watched: &mut std::collections::HashSet<PathBuf>,
    root: &Path,
) {
    for dir in watch_dirs(root) {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            Err(e) => tracing::warn!("cannot watch {}: {}", dir.display(), explain(&e)),
        }
    }
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

/// Runs the watcher until `cancel`.
pub async fn run(
    engine: Arc<Engine>,
    opts: WatchOptions,
    cancel: CancellationToken,
) -> Result<(), notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let _ = tx.send(match res {
            Ok(ev) => Signal::Event(ev),
            Err(e) => Signal::Error(e),
        });
    })?;
    let root = engine.vault().root().to_path_buf();
    let mut watched = std::collections::HashSet::new();
    watch_all(&mut watcher, &mut watched, &root);
    let mut pending: HashMap<String, Instant> = HashMap::new();
    // Catch anything written between the start-up scan and the watches.
    scan(&engine, opts.settle, &mut pending);

    let mut next_rescan = crate::time::after(opts.rescan);
    loop {
        let next_due = pending.values().min().copied();
        let wake_at = next_due.map_or(next_rescan, |d| d.min(next_rescan));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(wake_at) => {}
            sig = rx.recv() => {
                let Some(sig) = sig else { break };
                let mut rescan = false;
                let mut batch = vec![sig];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                for sig in batch {
                    match sig {
                        Signal::Error(e) => {
                            tracing::warn!("watcher: {}", explain(&e));
                            rescan = true;
                        }
                        Signal::Event(ev) => {
                            if ev.need_rescan() {
                                tracing::warn!("watcher: event queue overflowed; rescanning the vault");
                                rescan = true;
                                continue;
                            }
                            // Opening a file changes nothing, and reacting to
                            // opens would wake us on our own reads forever.
                            if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) {
                                continue;
                            }
                            for p in &ev.paths {
                                if matches!(ev.kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))) && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                                    // A directory created, moved in or renamed:
                                    // files may have landed before the watch did.
                                    let name_ok = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
                                    if name_ok && p.starts_with(&root) {
                                        watch_all(&mut watcher, &mut watched, p);
                                        rescan = true;
                                    }
                                    continue;
                                }
                                if let Some(rel) = engine.vault().rel_of(p) {
                                    route(&engine, opts.settle, &mut pending, rel);
                                }
                            }
                        }
                    }
                }
                if rescan {
                    watched.retain(|d| d.is_dir());
                    watch_all(&mut watcher, &mut watched, &root);
                    scan(&engine, opts.settle, &mut pending);
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
            watched.retain(|d| d.is_dir());
            watch_all(&mut watcher, &mut watched, &root);
            scan(&engine, opts.settle, &mut pending);
            next_rescan = crate::time::later(now, opts.rescan);
        }
    }
    Ok(())
}
