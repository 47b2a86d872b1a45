//! A folder vault that is (in) a Git work tree, kept in sync with its
//! upstream (SPEC §7): [`GitVault`] wraps the folder's [`LocalVault`],
//! journals every write vaultrunner makes ([`journal`]) and runs the sync
//! cycle ([`cycle`]) on a small runtime of its own: commit vaultrunner's
//! own writes (rebuilt onto the committed version of each note, in a
//! commit built along the changed folders), fetch, take in upstream's
//! changes (the changed paths only), push fast-forward.
//!
//! Writes and updates of the work tree are serialized by one lock, so an
//! update from upstream never lands between a write's compare and its
//! rename. A user's uncommitted edit is never committed: only what the
//! journal says vaultrunner wrote, and only where the note on disk still
//! shows it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{
    Bridge, Change, ChangeSink, Entry, Listing, LocalVault, NoteWrite, PartialWrite, Plan,
    SyncStatus, SyncStep, Vault, VaultError, VaultLock, Version, Watching,
};

mod checkout;
mod cycle;
pub mod journal;
pub mod ops;
pub mod peers;
mod tree;

use journal::{Journal, Record};

/// The state file `serve --git-sync` keeps current (for `status`).
pub const STATUS_FILE: &str = "git-sync.json";

/// How a Git-synced folder is synced.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Between pulls (`--git-pull-secs`, default 60 s).
    pub pull_every: Duration,
    /// A pull updates the work tree only when no note changed within it.
    pub settle: Duration,
    /// The `git` program and variables for it (tests isolate themselves).
    pub git: crate::git::Settings,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            pull_every: Duration::from_secs(60),
            settle: Duration::from_secs(2),
            git: crate::git::Settings::default(),
        }
    }
}

/// A commit follows vaultrunner's writes by this much quiet…
const BATCH_QUIET: Duration = Duration::from_secs(1);
/// …or this long after the first write of a batch, at most.
const BATCH_MAX: Duration = Duration::from_secs(5);

/// What the vault and its sync loop share.
#[derive(Debug)]
struct Shared {
    local: LocalVault,
    journal: Journal,
    state_dir: PathBuf,
    /// Writes vs. updates of the work tree.
    tree: TreeLock,
    status: Mutex<SyncStatus>,
    /// The sync loop's, when this vault syncs (not one beside a serve).
    sync: Option<Syncing>,
}

#[derive(Debug)]
struct Syncing {
    cfg: SyncConfig,
    repo: cycle::Repo,
    rt: Bridge,
    /// vaultrunner wrote something (a commit is due).
    wrote: tokio::sync::Notify,
    /// A pull is asked for (the push webhook).
    hook: tokio::sync::Notify,
    /// When a note last changed that vaultrunner did not write.
    last_external: Mutex<Option<Instant>>,
    /// Notes vaultrunner wrote last, with the version it left (the change
    /// feed reports them too; they are not someone's typing).
    own: Mutex<std::collections::HashMap<String, Version>>,
    /// Notes a pull renamed (old vault path → new), for a turn whose
    /// message moved under it.
    moved: Mutex<std::collections::HashMap<String, String>>,
    /// The change feed's sink: a pull reports the notes it changed (git
    /// may remove and make folders faster than their watches follow).
    feed: Mutex<Option<ChangeSink>>,
}

/// Stops the sync loop when dropped, and waits (a bounded while) for the
/// cycle under way to end: a git killed mid-call would leave its lock.
struct LoopGuard {
    stop: tokio_util::sync::CancellationToken,
    done: std::sync::mpsc::Receiver<()>,
}

/// The longest a stop waits for a cycle under way (git calls time out
/// after a minute; most cycles take milliseconds).
const STOP_WAIT: Duration = Duration::from_secs(70);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = self.done.recv_timeout(STOP_WAIT);
    }
}

/// The lock of the work tree: held by a write (from its journal line to
/// its rename) and by an update from upstream (across its git call, so
/// it is a flag and a condition variable, not a guard tied to a thread).
#[derive(Debug, Default)]
struct TreeLock {
    busy: Mutex<bool>,
    free: Condvar,
}

impl TreeLock {
    /// Waits for the lock and takes it (blocking).
    fn take(&self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = self.free.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
    }

    fn give(&self) {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.free.notify_all();
    }

    /// Takes the lock until the guard goes.
    fn hold(&self) -> TreeGuard<'_> {
        self.take();
        TreeGuard(self)
    }
}

struct TreeGuard<'a>(&'a TreeLock);

impl Drop for TreeGuard<'_> {
    fn drop(&mut self) {
        self.0.give();
    }
}

/// A Git-synced folder vault.
#[derive(Debug, Clone)]
pub struct GitVault {
    sh: Arc<Shared>,
}

fn sync_err(what: impl std::fmt::Display) -> VaultError {
    VaultError::Sync(what.to_string())
}

impl GitVault {
    /// Opens `local` for syncing: it must be inside a Git work tree whose
    /// `HEAD` is on a branch with an upstream, with no other syncer
    /// configured on it. Refusals name the folder and the reason.
    pub fn open(local: LocalVault, cfg: SyncConfig) -> Result<GitVault, VaultError> {
        let root = local.root().to_path_buf();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vaultrunner-git")
            .enable_all()
            .build()
            .map_err(|e| sync_err(format!("the git runtime could not start: {e}")))?;
        // Shut down in the background however `open` ends (a runtime
        // dropped inside another one panics).
        let bridge = Bridge(Some(rt));
        let Some(rt) = bridge.0.as_ref() else {
            return Err(sync_err("the git runtime could not start"));
        };
        // Run on the vault's runtime and waited for from here (the caller
        // may be inside a runtime of its own, where `block_on` panics).
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (r, settings) = (root.clone(), cfg.git.clone());
        rt.spawn(async move {
            let _ = tx.send(cycle::Repo::open(&r, settings).await);
        });
        let repo = rx
            .recv()
            .map_err(|_| sync_err("the git runtime stopped"))?
            .map_err(|e| sync_err(format!("{}: cannot sync with Git: {e}", root.display())))?;
        // Settings committed by another device (the phone's `.obsidian/`
        // synced here) say nothing of this clone: a warning, not a refusal.
        let tracked = {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let git = repo.git.clone();
            rt.spawn(async move {
                let out = git
                    .run(
                        ["ls-files", "--", ":(glob)*/plugins/obsidian-git/data.json"],
                        crate::git::RunOpts::read(),
                    )
                    .await;
                let _ = tx.send(out.map(|o| !o.stdout.is_empty()).unwrap_or(false));
            });
            rx.recv().unwrap_or(false)
        };
        let found = peers::other_syncer(repo.git.top()).or_else(|| peers::other_syncer(&root));
        if let Some(why) = &found
            && tracked
        {
            tracing::warn!(
                "{}: the obsidian-git settings in this clone are committed (another device's?) and say: {why}. If Obsidian with obsidian-git also runs on this machine, turn its automatic sync off here",
                root.display()
            );
        } else if let Some(why) = found {
            return Err(sync_err(format!(
                "{}: another syncer is set up on this clone: {why}. Two syncers on one clone fight over the index and each other's commits; turn it off here (keep it on the phone) and start again",
                root.display()
            )));
        }
        let state_dir = local.state_dir()?;
        let sh = Shared {
            journal: Journal::new(&state_dir),
            state_dir,
            tree: TreeLock::default(),
            status: Mutex::new(SyncStatus::default()),
            local,
            sync: Some(Syncing {
                cfg,
                repo,
                rt: bridge,
                wrote: Default::default(),
                hook: Default::default(),
                last_external: Mutex::new(None),
                own: Default::default(),
                moved: Default::default(),
                feed: Mutex::new(None),
            }),
        };
        let v = GitVault { sh: Arc::new(sh) };
        v.save_status();
        Ok(v)
    }

    /// The folder as a command beside a syncing serve sees it: its writes
    /// are journaled for that serve to commit, and its sync status is the
    /// serve's.
    pub fn beside(local: LocalVault) -> GitVault {
        let state_dir = local.root().join(".vaultrunner");
        GitVault {
            sh: Arc::new(Shared {
                journal: Journal::new(&state_dir),
                status: Mutex::new(read_status(&state_dir).unwrap_or_default()),
                state_dir,
                tree: TreeLock::default(),
                local,
                sync: None,
            }),
        }
    }

    /// Does a serve with `--git-sync` run on this folder now?
    pub fn synced_by_serve(local: &LocalVault) -> bool {
        local.root().join(".vaultrunner").join(STATUS_FILE).exists() && local.is_locked()
    }

    fn set_status(&self, f: impl FnOnce(&mut SyncStatus)) {
        let changed = {
            let mut s = self.sh.status.lock().unwrap_or_else(|e| e.into_inner());
            let before = s.clone();
            f(&mut s);
            *s != before
        };
        if changed {
            self.save_status();
        }
    }

    fn save_status(&self) {
        let s = self.status();
        if let Ok(bytes) = serde_json::to_vec_pretty(&s) {
            let _ = journal::write_durably(&self.sh.state_dir.join(STATUS_FILE), &bytes);
        }
    }

    fn status(&self) -> SyncStatus {
        self.sh
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Journals what `writes` change (each against the note as it is now),
    /// then writes them, under the work tree's lock.
    fn journaled<T>(
        &self,
        writes: &[NoteWrite],
        write: impl FnOnce() -> Result<T, PartialWrite>,
    ) -> Result<T, PartialWrite> {
        let _tree = self.sh.tree.hold();
        let mut records = Vec::with_capacity(writes.len());
        for w in writes {
            let before = match self.sh.local.read(&w.path) {
                Ok((text, _)) => Some(text),
                Err(_) => None,
            };
            if before.as_deref() == Some(w.content.as_str()) {
                continue;
            }
            records.push(Record {
                path: w.path.clone(),
                change: ops::own_change(before.as_deref(), &w.content),
                at: chrono::Utc::now().timestamp(),
            });
        }
        self.sh.journal.append(&records).map_err(|e| PartialWrite {
            landed: Vec::new(),
            error: super::io_err(&self.sh.state_dir.join(journal::FILE), e),
        })?;
        let r = write();
        if let Some(s) = &self.sh.sync {
            if let Ok(mut own) = s.own.lock() {
                for w in writes {
                    if let Some(v) = self.sh.local.stat(&w.path) {
                        own.insert(w.path.clone(), v);
                    }
                }
                if own.len() > 4096 {
                    own.clear();
                }
            }
            s.wrote.notify_one();
        }
        r
    }

    /// Runs `fut` on the sync runtime and waits for it.
    fn call<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let s = self.sh.sync.as_ref()?;
        let rt = s.rt.0.as_ref()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().ok()
    }
}

fn read_status(state_dir: &Path) -> Option<SyncStatus> {
    let bytes = std::fs::read(state_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Vault for GitVault {
    fn location(&self) -> String {
        self.sh.local.location()
    }
    fn note_location(&self, path: &str) -> String {
        self.sh.local.note_location(path)
    }
    fn state_dir(&self) -> Result<PathBuf, VaultError> {
        self.sh.local.state_dir()
    }
    fn workspace(&self, agent: &str) -> PathBuf {
        self.sh.local.workspace(agent)
    }
    fn list(&self) -> Listing {
        self.sh.local.list()
    }
    fn list_each(&self, each: &(dyn Fn(Vec<Entry>) + Sync)) -> Listing {
        self.sh.local.list_each(each)
    }
    fn list_under(&self, prefix: &str) -> Listing {
        self.sh.local.list_under(prefix)
    }
    fn stat(&self, path: &str) -> Option<Version> {
        self.sh.local.stat(path)
    }
    fn read(&self, path: &str) -> Result<(String, Version), VaultError> {
        self.sh.local.read(path)
    }
    fn file(&self, path: &str) -> Result<super::FileInfo, VaultError> {
        self.sh.local.file(path)
    }
    fn find_files(&self, names: &[String]) -> Result<Vec<String>, VaultError> {
        self.sh.local.find_files(names)
    }
    fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, VaultError> {
        self.sh.local.read_file(path, max)
    }

    fn write_in_order(
        &self,
        writes: &[NoteWrite],
        plan: Plan,
    ) -> Result<Vec<Version>, PartialWrite> {
        self.journaled(writes, || self.sh.local.write_in_order(writes, plan))
    }

    fn create_new(&self, path: &str, content: &str) -> Result<bool, VaultError> {
        let w = [NoteWrite::any(path, content)];
        self.journaled(&w, || {
            self.sh
                .local
                .create_new(path, content)
                .map_err(|error| PartialWrite {
                    landed: Vec::new(),
                    error,
                })
        })
        .map_err(|p| p.error)
    }

    fn lock(&self) -> Result<VaultLock, VaultError> {
        self.sh.local.lock()
    }
    fn is_locked(&self) -> bool {
        self.sh.local.is_locked()
    }
    fn recover(&self) -> usize {
        self.sh.local.recover()
    }

    /// The folder's change feed, and the sync loop beside it (both stop
    /// when the guard is dropped).
    fn watch(&self, sink: ChangeSink) -> Result<Watching, VaultError> {
        let Some(s) = &self.sh.sync else {
            return self.sh.local.watch(sink);
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
        if let Ok(mut f) = s.feed.lock() {
            *f = Some(sink.clone());
        }
        let feed = self.sh.local.watch(tx)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let me = self.clone();
        // The feed goes on to the engine; a note vaultrunner did not just
        // write is someone's typing, which holds back work-tree updates.
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if let Change::Note(p) = &c {
                    me.note_external(p);
                } else if let Some(s) = &me.sh.sync
                    && let Ok(mut t) = s.last_external.lock()
                {
                    *t = Some(Instant::now());
                }
                if sink.send(c).is_err() {
                    break;
                }
            }
        });
        let me = self.clone();
        let st = stop.clone();
        let (done_tx, done) = std::sync::mpsc::sync_channel::<()>(0);
        if let Some(rt) = s.rt.0.as_ref() {
            rt.spawn(async move {
                cycle::run(me, st).await;
                drop(done_tx);
            });
        }
        Ok(Watching::new((feed, LoopGuard { stop, done })))
    }

    fn rescan_every(&self) -> Duration {
        self.sh.local.rescan_every()
    }
    fn settle(&self) -> Duration {
        self.sh.local.settle()
    }

    fn sync_status(&self) -> Option<SyncStatus> {
        if self.sh.sync.is_none() {
            return read_status(&self.sh.state_dir).or_else(|| Some(self.status()));
        }
        Some(self.status())
    }

    fn moved_to(&self, path: &str) -> Option<String> {
        let s = self.sh.sync.as_ref()?;
        let moved = s.moved.lock().ok()?;
        moved.get(path).cloned()
    }

    fn sync_soon(&self) -> bool {
        match &self.sh.sync {
            Some(s) => {
                s.hook.notify_one();
                true
            }
            None => false,
        }
    }

    fn sync(&self, step: SyncStep) -> Result<(), VaultError> {
        if self.sh.sync.is_none() {
            return Ok(());
        }
        let me = self.clone();
        self.call(async move { cycle::once(&me, step).await })
            .unwrap_or_else(|| Err(sync_err("the git runtime stopped")))
    }
}

impl GitVault {
    fn note_external(&self, path: &str) {
        let Some(s) = &self.sh.sync else { return };
        let now = self.sh.local.stat(path);
        let own = s
            .own
            .lock()
            .map(|own| own.get(path).is_some_and(|v| Some(*v) == now))
            .unwrap_or(false);
        if !own && let Ok(mut t) = s.last_external.lock() {
            *t = Some(Instant::now());
        }
    }
}
