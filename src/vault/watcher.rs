//! The change feed of a folder vault: a `notify` watcher of directories,
//! not files (editors replace files on save), each non-dot directory on its
//! own so `.git` and `.obsidian` churn costs nothing. A new directory gets
//! its watch and asks for a scan (files may have landed before the watch
//! did); an overflow or a watcher error asks for a scan too. With nothing
//! happening it sleeps.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::local::{LocalVault, walk_dir_ok};
use super::{Change, ChangeSink, VaultError, Watching, io_err};

/// How often watches are checked again (folders renamed or deleted).
const REWATCH: Duration = Duration::from_secs(300);

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
fn watch_all(watcher: &mut RecommendedWatcher, watched: &mut HashSet<PathBuf>, root: &Path) {
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

/// Starts the feed of `vault` into `sink`, on the current tokio runtime.
pub(super) fn start(vault: LocalVault, sink: ChangeSink) -> Result<Watching, VaultError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })
    .map_err(|e| io_err(vault.root(), std::io::Error::other(explain(&e))))?;
    let root = vault.root().to_path_buf();
    let mut watched = HashSet::new();
    watch_all(&mut watcher, &mut watched, &root);
    let stop = CancellationToken::new();
    let guard = stop.clone().drop_guard();
    tokio::spawn(async move {
        let mut rewatch = tokio::time::interval_at(crate::time::after(REWATCH), REWATCH);
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                _ = sink.closed() => break,
                _ = rewatch.tick() => {
                    watched.retain(|d| d.is_dir());
                    watch_all(&mut watcher, &mut watched, &root);
                    continue;
                }
                ev = rx.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
            };
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut rescan = None;
            for ev in batch {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!("watcher: {}", explain(&e));
                        rescan = Some("a watcher error".into());
                        continue;
                    }
                };
                if ev.need_rescan() {
                    tracing::warn!("watcher: event queue overflowed; rescanning the vault");
                    rescan = Some("an overflow of the event queue".into());
                    continue;
                }
                // Opening a file changes nothing, and reacting to opens
                // would wake us on our own reads forever.
                if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write))
                {
                    continue;
                }
                for p in &ev.paths {
                    if matches!(
                        ev.kind,
                        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                    {
                        // A directory created, moved in or renamed: files
                        // may have landed before the watch did.
                        let name_ok = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.'));
                        if name_ok && p.starts_with(&root) {
                            watch_all(&mut watcher, &mut watched, p);
                            rescan.get_or_insert_with(|| "a new folder".into());
                        }
                        continue;
                    }
                    if let Some(rel) = vault.rel_of(p) {
                        let _ = sink.send(Change::Note(rel));
                    }
                }
            }
            if let Some(why) = rescan {
                watched.retain(|d| d.is_dir());
                watch_all(&mut watcher, &mut watched, &root);
                let _ = sink.send(Change::Rescan(why));
            }
        }
        drop(watcher);
    });
    Ok(Watching::new(guard))
}

/// The set of directories under the root that a watcher should cover.
fn watch_dirs(root: &Path) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        out.insert(dir.clone());
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for ent in rd.flatten() {
            let name = ent.file_name();
            if let Ok(ft) = ent.file_type()
                && ft.is_dir()
                && walk_dir_ok(&name.to_string_lossy())
            {
                stack.push(ent.path());
            }
        }
    }
    out
}
