//! The change feed of a folder vault: a `notify` watcher of directories,
//! not files (editors replace files on save), each non-dot directory on its
//! own so `.git` and `.obsidian` churn costs nothing. A new directory (made,
//! or moved in) gets its watch, and the notes already in it are reported
//! (files may have landed before the watch did): a look at that folder, not
//! a scan of the vault. A watched directory moved away, an overflow or a
//! watcher error asks for a scan. With nothing happening it sleeps.

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

/// Takes in a directory that appeared (made, or moved in): watches it and
/// every directory under it, each before it is read, so a file lands either
/// before the read (which finds it) or after the watch (which reports it).
/// Returns the notes already there, or `None` when a directory could not
/// be read (then only a scan can find what it holds).
///
/// Watches remembered under `dir` are set again: a folder deleted and made
/// again under its old name is a new directory whose old watch is gone.
fn take_in(
    watcher: &mut RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
    vault: &LocalVault,
    dir: &Path,
) -> Option<Vec<String>> {
    watched.retain(|d| !d.starts_with(dir));
    let mut notes = Vec::new();
    let mut complete = true;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        match watcher.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(d.clone());
            }
            // Not fatal: the periodic scan finds what lands here later.
            Err(e) => tracing::warn!("cannot watch {}: {}", d.display(), explain(&e)),
        }
        let rd = match fs::read_dir(&d) {
            Ok(rd) => rd,
            // Gone again: nothing to find.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("watcher: cannot read {}: {e}", d.display());
                complete = false;
                continue;
            }
        };
        for ent in rd {
            let Ok(ent) = ent else {
                complete = false;
                break;
            };
            let Ok(ft) = ent.file_type() else {
                complete = false;
                continue;
            };
            if ft.is_dir() {
                if walk_dir_ok(&ent.file_name().to_string_lossy()) {
                    stack.push(ent.path());
                }
            } else if ft.is_file()
                && let Some(rel) = vault.rel_of(&ent.path())
            {
                notes.push(rel);
            }
        }
    }
    complete.then_some(notes)
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
            // Directories taken in during this batch: every event of the
            // batch came before their walk, which saw what is under them.
            let mut taken: Vec<PathBuf> = Vec::new();
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
                    if matches!(ev.kind, EventKind::Modify(ModifyKind::Name(_)))
                        && watched.contains(p)
                        && !fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                    {
                        // A watched directory moved away (renamed, or out
                        // of the vault): its notes are gone from their
                        // paths, and only a scan knows which they were.
                        rescan.get_or_insert_with(|| "a folder moved away".into());
                        continue;
                    }
                    if matches!(
                        ev.kind,
                        EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(_))
                    ) && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                    {
                        // A directory created, moved in or renamed: watch
                        // it, and report the notes that landed before the
                        // watch did.
                        let name_ok = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.'));
                        let fresh = !taken.iter().any(|t| p.starts_with(t));
                        if name_ok && p.starts_with(&root) && fresh {
                            match take_in(&mut watcher, &mut watched, &vault, p) {
                                Some(notes) => {
                                    for rel in notes {
                                        let _ = sink.send(Change::Note(rel));
                                    }
                                }
                                None => {
                                    rescan.get_or_insert_with(|| {
                                        "a new folder that could not be read".into()
                                    });
                                }
                            }
                            taken.push(p.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A vault with an `Inbox/` folder and the notes `before` (made before
    /// the feed starts, so their folders are watched from the start), and
    /// its feed.
    fn feed(
        before: &[&str],
    ) -> (
        tempfile::TempDir,
        PathBuf,
        Watching,
        tokio::sync::mpsc::UnboundedReceiver<Change>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("vault/Inbox")).unwrap();
        for rel in before {
            let f = dir.path().join("vault").join(rel);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, "hi\n").unwrap();
        }
        let vault = LocalVault::open(&dir.path().join("vault")).unwrap();
        let root = vault.root().to_path_buf();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let w = start(vault, tx).unwrap();
        (dir, root, w, rx)
    }

    /// What the feed says until `done` holds (at most 10 s), and for
    /// 300 ms more.
    async fn collect(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>,
        mut done: impl FnMut(&[Change]) -> bool,
    ) -> Vec<Change> {
        let mut got = Vec::new();
        let deadline = crate::time::after(Duration::from_secs(10));
        while !done(&got) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(c)) => got.push(c),
                _ => break,
            }
        }
        let more = crate::time::after(Duration::from_millis(300));
        while let Ok(Some(c)) = tokio::time::timeout_at(more, rx.recv()).await {
            got.push(c);
        }
        got
    }

    fn notes(got: &[Change]) -> BTreeSet<String> {
        got.iter()
            .filter_map(|c| match c {
                Change::Note(p) => Some(p.clone()),
                Change::Rescan(_) => None,
            })
            .collect()
    }

    fn rescans(got: &[Change]) -> Vec<&str> {
        got.iter()
            .filter_map(|c| match c {
                Change::Rescan(why) => Some(why.as_str()),
                Change::Note(_) => None,
            })
            .collect()
    }

    /// Notes written into folders made at once (`mkdir -p`) land before
    /// the watches of those folders: each is reported by the look at the
    /// new folder, and the vault is not scanned.
    #[tokio::test]
    async fn a_new_nested_folder_reports_its_notes_without_a_rescan() {
        let (_dir, root, _w, mut rx) = feed(&[]);
        // All of it before the feed's task runs at all (this runtime has
        // one thread): no watch can be in place yet.
        let day = root.join("Inbox/echo/2026/03/07");
        fs::create_dir_all(&day).unwrap();
        for i in 0..5 {
            fs::write(day.join(format!("m{i}.md")), "hi\n").unwrap();
        }
        fs::write(root.join("Inbox/echo/2026/early.md"), "hi\n").unwrap();
        fs::write(day.join("photo.png"), "not a note").unwrap();
        fs::create_dir_all(day.join(".hidden")).unwrap();
        fs::write(day.join(".hidden/secret.md"), "hi\n").unwrap();
        let mut want: BTreeSet<String> = (0..5)
            .map(|i| format!("Inbox/echo/2026/03/07/m{i}"))
            .collect();
        want.insert("Inbox/echo/2026/early".into());
        let got = collect(&mut rx, |g| notes(g).is_superset(&want)).await;
        assert_eq!(notes(&got), want, "{got:?}");
        assert!(rescans(&got).is_empty(), "{got:?}");

        // The new folders are watched: a later note is reported too.
        fs::write(day.join("later.md"), "hi\n").unwrap();
        let got = collect(&mut rx, |g| {
            notes(g).contains("Inbox/echo/2026/03/07/later")
        })
        .await;
        assert!(
            notes(&got).contains("Inbox/echo/2026/03/07/later"),
            "{got:?}"
        );
        assert!(rescans(&got).is_empty(), "{got:?}");
    }

    /// A folder deleted and made again under its old name is a new
    /// directory: it is watched again, and notes written into it later
    /// are reported.
    #[tokio::test]
    async fn a_folder_made_again_is_watched_again() {
        let (_dir, root, _w, mut rx) = feed(&["Inbox/echo/a.md"]);
        let d = root.join("Inbox/echo");
        fs::remove_dir_all(&d).unwrap();
        // The deletion is reported (and its watch is gone).
        let got = collect(&mut rx, |g| notes(g).contains("Inbox/echo/a")).await;
        assert!(notes(&got).contains("Inbox/echo/a"), "{got:?}");
        fs::create_dir_all(&d).unwrap();
        // Time for the feed to take the folder in (it holds no note yet).
        let _ = collect(&mut rx, |_| true).await;
        fs::write(d.join("b.md"), "hi\n").unwrap();
        let got = collect(&mut rx, |g| notes(g).contains("Inbox/echo/b")).await;
        assert!(notes(&got).contains("Inbox/echo/b"), "{got:?}");
    }

    /// A watched folder moved out of the vault takes its notes with it;
    /// only a scan knows which they were.
    #[tokio::test]
    async fn a_folder_moved_away_asks_for_a_rescan() {
        let (dir, root, _w, mut rx) = feed(&["Inbox/old/a.md"]);
        fs::rename(root.join("Inbox/old"), dir.path().join("elsewhere")).unwrap();
        let got = collect(&mut rx, |g| !rescans(g).is_empty()).await;
        assert_eq!(rescans(&got), ["a folder moved away"], "{got:?}");
    }
}
