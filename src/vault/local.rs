//! The local vault: a directory of notes. Listing, reading, safe paths,
//! atomic durable writes (in batches), the single-instance lock, and the
//! change feed (a `notify` watcher of every non-dot folder).
//!
//! Everything that touches the disk for notes goes through here, and no path
//! that leaves the vault root is ever written.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{
    Base, ChangeSink, Entry, Faults, FileInfo, Listing, MAX_NOTE_BYTES, NoteWrite, PartialWrite,
    Plan, Skipped, Vault, VaultError, VaultLock, Version, Watching, check_rel_path, ignore_reason,
    io_err,
};

/// Is this directory entry name one the walker descends into?
pub(super) fn walk_dir_ok(name: &str) -> bool {
    !name.starts_with('.')
}

/// A file's version: its size and modification time.
pub(crate) fn version_of(meta: &fs::Metadata) -> Version {
    let modified_ns = meta
        .modified()
        .ok()
        .map(|t| match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        })
        .unwrap_or(0);
    Version {
        tag: meta.len(),
        modified_ns,
    }
}

/// How many entries [`Vault::list_each`] hands over at most at once.
const LIST_PART: usize = 4096;

/// A big folder's notes go to the other walkers to stat in parts this big
/// as the folder is read (a smaller folder's are statted by its walker).
const STAT_PART: usize = 1024;

/// How many such parts may wait for a walker before the folder's walker
/// stats the next one itself.
const STAT_WAITING: usize = 2;

/// A folder to walk: its path and its vault-relative prefix.
pub(super) type Folder = (PathBuf, String);

/// Where a walk's jobs wait, shared by its walkers.
pub(super) struct Jobs<J> {
    work: std::sync::Mutex<Work<J>>,
    more: std::sync::Condvar,
}

struct Work<J> {
    todo: Vec<J>,
    busy: usize,
}

impl<J> Jobs<J> {
    /// Adds a job for any walker to take (a subfolder, a part of a big
    /// folder's notes to stat).
    pub(super) fn push(&self, job: J) {
        self.lock().todo.push(job);
        self.more.notify_one();
    }

    /// Adds `more` jobs at once (a folder's subfolders).
    pub(super) fn push_all(&self, more: &mut Vec<J>) {
        if more.is_empty() {
            return;
        }
        let one = more.len() == 1;
        self.lock().todo.append(more);
        if one {
            self.more.notify_one();
        } else {
            self.more.notify_all();
        }
    }

    /// How many jobs wait for a walker.
    pub(super) fn waiting(&self) -> usize {
        self.lock().todo.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Work<J>> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Does jobs from `start` on a few threads: `visit` does one job into its
/// thread's `T` and pushes the jobs it finds (the subfolders to walk).
/// Returns each thread's `T`, and whether every thread finished (a walker
/// that panicked loses its part). Listing a big vault is mostly system
/// calls (a read of each folder, a stat of each note), which spread over
/// the cores.
pub(super) fn walk_parallel<J, T, F>(start: J, visit: &F) -> (Vec<T>, bool)
where
    J: Send,
    T: Default + Send,
    F: Fn(&mut T, J, &Jobs<J>) + Sync,
{
    let jobs = Jobs {
        work: std::sync::Mutex::new(Work {
            todo: vec![start],
            busy: 0,
        }),
        more: std::sync::Condvar::new(),
    };
    struct Done<'a, J>(&'a Jobs<J>);
    impl<J> Drop for Done<'_, J> {
        fn drop(&mut self) {
            let mut w = self.0.lock();
            w.busy = w.busy.saturating_sub(1);
            let last = w.busy == 0 && w.todo.is_empty();
            drop(w);
            if last {
                self.0.more.notify_all();
            }
        }
    }
    let walker = || {
        let mut mine = T::default();
        loop {
            let next = {
                let mut w = jobs.lock();
                loop {
                    if let Some(job) = w.todo.pop() {
                        w.busy += 1;
                        break Some(job);
                    }
                    if w.busy == 0 {
                        break None;
                    }
                    w = jobs.more.wait(w).unwrap_or_else(|p| p.into_inner());
                }
            };
            let Some(job) = next else {
                jobs.more.notify_all();
                return mine;
            };
            // Done with this job even if `visit` panics: the others must
            // not wait for it for ever.
            let done = Done(&jobs);
            visit(&mut mine, job, &jobs);
            drop(done);
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, walker).ok())
            .collect();
        let mut parts = vec![walker()];
        let spawned = handles.len();
        parts.extend(handles.into_iter().filter_map(|h| h.join().ok()));
        let whole = parts.len() == spawned + 1;
        (parts, whole)
    })
}

/// A job of a listing's walk.
enum ListJob {
    /// A folder to list, and its vault-relative prefix.
    Folder(PathBuf, String),
    /// Notes of a big folder to stat: each one's entry in its folder and
    /// its vault-relative path.
    Stat(Vec<(fs::DirEntry, String)>),
}

/// Stats the notes `names` (each one's folder entry and vault-relative
/// path) into `out`, handing the entries to `each` in parts.
fn stat_into(
    out: &mut Listing,
    names: Vec<(fs::DirEntry, String)>,
    each: Option<&(dyn Fn(Vec<Entry>) + Sync)>,
) {
    for (ent, rel) in names {
        take_file(out, rel, ent.metadata());
        if let Some(each) = each
            && out.entries.len() >= LIST_PART
        {
            each(std::mem::take(&mut out.entries));
        }
    }
}

/// Takes the note file `rel` (its stat `meta`) into `out`: its entry, or
/// why it is left out.
fn take_file(out: &mut Listing, rel: String, meta: io::Result<fs::Metadata>) {
    let meta = match meta {
        Ok(m) => m,
        // Deleted since the folder was read: gone indeed.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(_) => {
            out.incomplete
                .extend(rel.strip_suffix(".md").map(str::to_string));
            return;
        }
    };
    if meta.len() > MAX_NOTE_BYTES {
        out.skipped.push(Skipped {
            rel,
            reason: format!(
                "note is {} bytes, over the {} byte limit (ignored)",
                meta.len(),
                MAX_NOTE_BYTES
            ),
        });
        return;
    }
    if let Some(n) = rel.len().checked_sub(".md".len())
        && rel.is_char_boundary(n)
    {
        let mut path = rel;
        path.truncate(n);
        out.entries.push(Entry {
            path,
            version: version_of(&meta),
        });
    }
}

/// A local vault directory.
#[derive(Debug, Clone)]
pub struct LocalVault {
    root: PathBuf,
    /// When set, the data of concurrent write batches is flushed by one
    /// `syncfs` shared by all of them (group commit).
    flusher: Option<std::sync::Arc<Flusher>>,
    /// Injected failures (tests).
    faults: Option<std::sync::Arc<dyn Faults>>,
    /// Directories already created and found to lie inside the vault.
    checked_dirs: std::sync::Arc<std::sync::Mutex<HashSet<PathBuf>>>,
}

/// A file written to its temp file, waiting to be flushed and renamed.
struct Staged {
    tmp: tempfile::NamedTempFile,
    file: PathBuf,
    dir: PathBuf,
    /// The note path (for injected faults).
    path: String,
    /// What the rename may replace.
    base: Base,
    version: Version,
    /// The version the rename replaces, held open (`O_PATH`) so that
    /// freeing it happens when the reaper closes it, not inside the rename.
    old: Option<File>,
}

/// Group commit of the files' data: one `syncfs` for every writer waiting
/// at that moment. A writer takes a ticket (the number of the next flush to
/// start) once its temp files are written, and waits until that flush has
/// finished: it started after the data was written, so it covers it. The
/// first writer to find no flush running runs it itself (leader and
/// followers: no thread to hand over to); writers that arrive meanwhile
/// share the next one.
#[derive(Debug)]
pub struct Flusher {
    /// A handle on the vault's file system, for `syncfs`.
    fs: File,
    state: std::sync::Mutex<FlushState>,
    /// Wakes the writers when a flush finished.
    done: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Flushes started / finished.
    started: u64,
    finished: u64,
    /// A writer is running a flush now.
    running: bool,
    /// Recent failed flushes (number, error), newest last.
    failed: std::collections::VecDeque<(u64, io::ErrorKind, String)>,
}

/// Replaced versions of notes wait here to be closed (and so freed) off
/// the writers' path, a batch's at a time. Bounded, so at most this many
/// batches are held open.
const REAPER_QUEUE: usize = 64;

fn reaper() -> Option<&'static std::sync::mpsc::SyncSender<Vec<File>>> {
    static REAPER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Vec<File>>>> =
        std::sync::OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<File>>(REAPER_QUEUE);
            std::thread::Builder::new()
                .name("vaultrunner-reap".into())
                .spawn(move || {
                    while let Ok(files) = rx.recv() {
                        drop(files);
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

impl LocalVault {
    /// Opens a vault at `root` (canonicalized).
    pub fn open(root: &Path) -> Result<LocalVault, VaultError> {
        let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
        if !root.is_dir() {
            return Err(VaultError::NotADirectory(root));
        }
        Ok(LocalVault {
            root,
            flusher: None,
            faults: None,
            checked_dirs: Default::default(),
        })
    }

    /// Injects failures into this vault's I/O (see [`Faults`]).
    pub fn with_faults(mut self, faults: std::sync::Arc<dyn Faults>) -> LocalVault {
        self.faults = Some(faults);
        self
    }

    /// Asks the injected faults, if any, about an operation.
    fn fault(
        &self,
        abs: &Path,
        f: impl FnOnce(&dyn Faults) -> io::Result<()>,
    ) -> Result<(), VaultError> {
        match &self.faults {
            Some(faults) => f(faults.as_ref()).map_err(|e| io_err(abs, e)),
            None => Ok(()),
        }
    }

    /// Turns on group commit: the data of concurrent write batches is
    /// flushed by one `syncfs` (on Linux; elsewhere each writer fsyncs its
    /// own files). Each caller still returns only once its own files are
    /// durable, and each batch keeps its order: renames and directory
    /// flushes happen in the caller's thread, in parallel with the others.
    pub fn with_group_commit(mut self) -> LocalVault {
        if !cfg!(target_os = "linux") {
            return self;
        }
        if let Ok(fs) = File::open(&self.root) {
            self.flusher = Some(std::sync::Arc::new(Flusher {
                fs,
                state: Default::default(),
                done: Default::default(),
            }));
        }
        self
    }

    /// Writes a batch's files to temp files next to their targets (not yet
    /// flushed or renamed), in the caller's thread.
    fn stage(&self, writes: &[NoteWrite]) -> Result<Vec<Staged>, VaultError> {
        let mut staged = Vec::with_capacity(writes.len());
        for w in writes {
            let file = self.file_path(&w.path)?;
            self.fault(&file, |f| f.write(&w.path))?;
            let dir = self.ensure_dir(&file)?;
            let old = open_old(&file);
            let mode = old
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| file_mode(&m));
            let mut tmp = temp_file(&dir, mode)?;
            tmp.write_all(w.content.as_bytes())
                .map_err(|e| io_err(tmp.path(), e))?;
            let mut meta = tmp.as_file().metadata().map_err(|e| io_err(&file, e))?;
            // The umask may have taken bits the note had: give them back.
            if let Some(m) = mode
                && file_mode(&meta) != m
            {
                set_mode(tmp.as_file(), m).map_err(|e| io_err(&file, e))?;
                meta = tmp.as_file().metadata().map_err(|e| io_err(&file, e))?;
            }
            staged.push(Staged {
                old,
                tmp,
                file,
                dir,
                path: w.path.clone(),
                base: w.base,
                version: version_of(&meta),
            });
        }
        Ok(staged)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute file path of a note path (checked).
    pub fn file_path(&self, path: &str) -> Result<PathBuf, VaultError> {
        check_rel_path(path)?;
        Ok(self.root.join(format!("{path}.md")))
    }

    /// The absolute file path of a note path, without safety checks (for
    /// reading notes found by a scan).
    pub fn abs(&self, path: &str) -> PathBuf {
        self.root.join(format!("{path}.md"))
    }

    /// Vault-relative note path of an absolute file path, if it is a note
    /// inside the vault that is not ignored.
    pub fn rel_of(&self, abs: &Path) -> Option<String> {
        let rel = abs.strip_prefix(&self.root).ok()?;
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => parts.push(s.to_str()?.to_string()),
                _ => return None,
            }
        }
        let rel = parts.join("/");
        if ignore_reason(&rel).is_some() {
            return None;
        }
        Some(rel.strip_suffix(".md")?.to_string())
    }

    fn list_from(&self, dir: PathBuf, prefix: String) -> Listing {
        self.list_from_each(dir, prefix, None)
    }

    /// Lists the notes from `dir`; with `each`, hands them to it in parts
    /// instead of collecting them (unsorted then).
    fn list_from_each(
        &self,
        dir: PathBuf,
        prefix: String,
        each: Option<&(dyn Fn(Vec<Entry>) + Sync)>,
    ) -> Listing {
        let root_prefix = prefix.clone();
        let visit = |out: &mut Listing, job, jobs: &Jobs<ListJob>| match job {
            ListJob::Folder(dir, prefix) => self.list_dir(out, dir, prefix, jobs, each),
            ListJob::Stat(names) => stat_into(out, names, each),
        };
        let (mut parts, whole) = walk_parallel(ListJob::Folder(dir, prefix), &visit);
        // Each walker hands its entries over [`LIST_PART`] at a time (not a
        // folder at a time: a dated folder holds a few dozen notes); here
        // what is left.
        if let Some(each) = each {
            for p in &mut parts {
                if !p.entries.is_empty() {
                    each(std::mem::take(&mut p.entries));
                }
            }
        }
        if !whole {
            // What the lost part held is unknown: nothing may be taken for
            // gone.
            parts.push(Listing {
                incomplete: vec![root_prefix],
                ..Listing::default()
            });
        }
        // Into the biggest part, so the most entries are never copied.
        parts.sort_by_key(|p| std::cmp::Reverse(p.entries.len()));
        let mut parts = parts.into_iter();
        let mut out = parts.next().unwrap_or_default();
        for p in parts {
            out.entries.extend(p.entries);
            out.skipped.extend(p.skipped);
            out.incomplete.extend(p.incomplete);
        }
        out.entries.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Lists one folder into `out`; pushes its subfolders, and the notes
    /// of a big folder in parts of [`STAT_PART`], as jobs for any walker.
    fn list_dir(
        &self,
        out: &mut Listing,
        dir: PathBuf,
        prefix: String,
        jobs: &Jobs<ListJob>,
        each: Option<&(dyn Fn(Vec<Entry>) + Sync)>,
    ) {
        let rd = match self
            .fault(&dir, |f| f.list(&prefix))
            .and_then(|()| fs::read_dir(&dir).map_err(|e| io_err(&dir, e)))
        {
            Ok(rd) => rd,
            Err(e) => {
                out.skipped.push(Skipped {
                    rel: prefix.clone(),
                    reason: format!("cannot read directory: {e}"),
                });
                out.incomplete.push(prefix);
                return;
            }
        };
        // The notes to stat: a big folder's (200,000 replies in one) go to
        // the walkers in parts as they are read; the last part is done
        // here. Each is statted through its folder's entry (`fstatat`, not
        // a walk of its whole path); its subfolders are pushed at the end.
        let mut names = Vec::new();
        let mut subdirs = Vec::new();
        for ent in rd {
            let Ok(ent) = ent else {
                // The listing of this folder broke off part-way.
                out.incomplete.push(prefix.clone());
                break;
            };
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            // Dot-files and files other than notes are passed over
            // before anything is spent on them (most of a big vault's
            // entries are read only this far).
            let Ok(ft) = ent.file_type() else {
                out.incomplete.push(if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                });
                continue;
            };
            if ft.is_file() && (name.starts_with('.') || !name.ends_with(".md")) {
                continue;
            }
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if ft.is_symlink() {
                // Worth reporting: a note, or a folder of notes.
                let target_is_dir = fs::metadata(ent.path()).is_ok_and(|m| m.is_dir());
                if name.ends_with(".md") || target_is_dir {
                    let inside = fs::canonicalize(ent.path())
                        .map(|t| t.starts_with(&self.root))
                        .unwrap_or(false);
                    if !inside {
                        out.skipped.push(Skipped {
                            rel,
                            reason: "symlink that resolves outside the vault (ignored)".into(),
                        });
                    }
                }
                continue;
            }
            if ft.is_dir() {
                if walk_dir_ok(&name) {
                    subdirs.push(ListJob::Folder(ent.path(), rel));
                }
                continue;
            }
            if !ft.is_file() || ignore_reason(&rel).is_some() {
                continue;
            }
            names.push((ent, rel));
            if names.len() >= STAT_PART {
                let names = std::mem::take(&mut names);
                // Handed on while the others keep up (the names waiting
                // are memory), done here otherwise.
                if jobs.waiting() < STAT_WAITING {
                    jobs.push(ListJob::Stat(names));
                } else {
                    stat_into(out, names, each);
                }
            }
        }
        jobs.push_all(&mut subdirs);
        stat_into(out, names, each);
    }

    /// Makes sure the directory of a note exists and really lies inside the
    /// vault (no symlinked directory leading out).
    /// A directory checked once is remembered; later writes only confirm
    /// with one `lstat` that it is still a real directory (not replaced by
    /// a symlink), instead of creating and resolving the whole path again.
    fn ensure_dir(&self, file: &Path) -> Result<PathBuf, VaultError> {
        let dir = file
            .parent()
            .ok_or_else(|| io_err(file, io::Error::other("no parent directory")))?;
        let known = self
            .checked_dirs
            .lock()
            .map(|k| k.contains(dir))
            .unwrap_or(false);
        if known && fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            return Ok(dir.to_path_buf());
        }
        // The directories this write makes (a message's dated folders).
        let mut made = Vec::new();
        let mut d = dir;
        while d.starts_with(&self.root) && d != self.root && fs::symlink_metadata(d).is_err() {
            made.push(d);
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let real = fs::canonicalize(dir).map_err(|e| io_err(dir, e))?;
        if !real.starts_with(&self.root) {
            return Err(VaultError::UnsafePath {
                path: dir.display().to_string(),
                reason: "directory resolves outside the vault",
            });
        }
        // Each new directory's entry in its parent is flushed too, so a
        // note in a new folder is as durable as one in an old folder once
        // its own directory is flushed, on any file system.
        for m in made.iter().rev() {
            if let Some(parent) = m.parent() {
                sync_dir(parent).map_err(|e| io_err(parent, e))?;
            }
        }
        if let Ok(mut k) = self.checked_dirs.lock() {
            k.insert(dir.to_path_buf());
        }
        Ok(dir.to_path_buf())
    }

    /// Renames a batch's flushed temp files into place, in order, stopping
    /// at the first failure; returns the versions of those renamed, the
    /// directories to flush, and the failure. The versions they replace go
    /// to the reaper.
    fn rename_all(&self, staged: Vec<Staged>) -> (Vec<Version>, Vec<PathBuf>, Option<VaultError>) {
        let mut fps = Vec::with_capacity(staged.len());
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut replaced = Vec::with_capacity(staged.len());
        let mut failed = None;
        for s in staged {
            if let Err(e) = self.fault(&s.file, |f| f.rename(&s.path)) {
                failed = Some(e);
                break;
            }
            // The compare of the compare-and-set, as close to the rename as
            // it can be: a note someone changed since it was read is kept.
            if let Base::Read(v) = s.base
                && self.stat(&s.path) != Some(v)
            {
                failed = Some(VaultError::Changed { path: s.path });
                break;
            }
            if let Err(e) = s.tmp.persist(&s.file) {
                failed = Some(io_err(&s.file, e.error));
                break;
            }
            fps.push(s.version);
            replaced.extend(s.old);
            if !dirs.contains(&s.dir) {
                dirs.push(s.dir);
            }
        }
        // A full queue waits for the reaper rather than holding more files open.
        if !replaced.is_empty()
            && let Some(r) = reaper()
        {
            let _ = r.send(replaced);
        }
        (fps, dirs, failed)
    }
}

impl LocalVault {
    /// The non-note file at a vault path, checked: the path is safe, the
    /// file it names (symlinks resolved) lies inside the vault and outside
    /// dot-folders, and it is a regular file. Returns its real path, its
    /// vault path, and its metadata.
    fn checked_file(&self, path: &str) -> Result<(PathBuf, String, fs::Metadata), VaultError> {
        check_rel_path(path)?;
        let abs = self.root.join(path);
        // A dangling symlink, like a missing file, is not found.
        let real = fs::canonicalize(&abs).map_err(|e| io_err(&abs, e))?;
        let refuse = |reason| VaultError::UnsafePath {
            path: path.to_string(),
            reason,
        };
        let Ok(inside) = real.strip_prefix(&self.root) else {
            return Err(refuse("a symlink on the way leads outside the vault"));
        };
        let mut parts = Vec::new();
        for c in inside.components() {
            match c {
                Component::Normal(s) => match s.to_str() {
                    Some(s) if s.starts_with('.') => {
                        return Err(refuse("a symlink on the way leads into a dot-folder"));
                    }
                    Some(s) => parts.push(s.to_string()),
                    None => return Err(refuse("the file's name is not UTF-8")),
                },
                _ => return Err(refuse("a symlink on the way leads outside the vault")),
            }
        }
        let meta = fs::metadata(&real).map_err(|e| io_err(&abs, e))?;
        if !meta.is_file() {
            return Err(io_err(
                &abs,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        Ok((real, parts.join("/"), meta))
    }
}

impl Vault for LocalVault {
    /// Lists every note in the vault (recursively), passing over ignored
    /// files, symlinks and unreadable directories (reported in `skipped`).
    fn list(&self) -> Listing {
        self.list_from(self.root.clone(), String::new())
    }

    fn list_each(&self, each: &(dyn Fn(Vec<Entry>) + Sync)) -> Listing {
        self.list_from_each(self.root.clone(), String::new(), Some(each))
    }

    /// Lists the notes under one folder of the vault (`prefix`, no slash at
    /// either end).
    fn list_under(&self, prefix: &str) -> Listing {
        if check_rel_path(prefix).is_err() {
            return Listing::default();
        }
        self.list_from(self.root.join(prefix), prefix.to_string())
    }

    /// Stats a note (no symlink following: a symlink is not a note).
    fn stat(&self, path: &str) -> Option<Version> {
        let meta = fs::symlink_metadata(self.abs(path)).ok()?;
        meta.is_file().then(|| version_of(&meta))
    }

    /// Reads a note as text. Invalid UTF-8 (a binary file named `.md`) is an
    /// error naming the file.
    fn read(&self, path: &str) -> Result<(String, Version), VaultError> {
        use std::io::Read as _;
        let abs = self.abs(path);
        self.fault(&abs, |f| f.read(path))?;
        // One open (never through a symlink) and one stat of the open file.
        let mut opts = OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
        let mut f = opts.open(&abs).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io_err(
                    &abs,
                    io::Error::new(io::ErrorKind::InvalidInput, "a symlink, not a note"),
                )
            } else {
                io_err(&abs, e)
            }
        })?;
        let meta = f.metadata().map_err(|e| io_err(&abs, e))?;
        if !meta.is_file() {
            return Err(io_err(
                &abs,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        if meta.len() > MAX_NOTE_BYTES {
            return Err(io_err(
                &abs,
                io::Error::new(io::ErrorKind::InvalidData, "note is over the size limit"),
            ));
        }
        // Read to the end into a buffer sized from the stat (`read_to_end`
        // would stat and seek again), never past the size limit.
        let mut bytes = vec![0u8; meta.len() as usize + 1];
        let mut n = 0;
        loop {
            if n == bytes.len() {
                if n as u64 > MAX_NOTE_BYTES {
                    return Err(io_err(
                        &abs,
                        io::Error::new(io::ErrorKind::InvalidData, "note is over the size limit"),
                    ));
                }
                bytes.resize(n * 2, 0);
            }
            let Some(buf) = bytes.get_mut(n..) else { break };
            match f.read(buf) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(&abs, e)),
            }
        }
        bytes.truncate(n);
        let fp = version_of(&meta);
        match String::from_utf8(bytes) {
            Ok(s) => Ok((s, fp)),
            Err(_) => Err(io_err(
                &abs,
                io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text (binary file?)"),
            )),
        }
    }

    /// [`Vault::write_planned`] that says, when it fails, which notes of the
    /// batch are already in place: always a prefix of `writes`, since the
    /// renames happen in order and stop at the first failure (and at a
    /// barrier whose earlier renames could not be made durable).
    fn write_in_order(
        &self,
        writes: &[NoteWrite],
        plan: Plan,
    ) -> Result<Vec<Version>, PartialWrite> {
        let none = |error| PartialWrite {
            landed: Vec::new(),
            error,
        };
        let mut staged = self.stage(writes).map_err(none)?;
        // 1. Every file's data, before any rename.
        match &self.flusher {
            Some(f) => f.flush().map_err(|e| none(io_err(&self.root, e)))?,
            None => sync_files(staged.iter().map(|s| s.tmp.as_file()))
                .map_err(|e| none(io_err(&self.root, e)))?,
        }
        let rest = match plan.barrier {
            Some(b) if b < staged.len() => staged.split_off(b),
            _ => Vec::new(),
        };
        let partial = |landed, error| Err(PartialWrite { landed, error });
        // 2. The renames before the barrier (all of them, without one).
        let (mut fps, dirs, failed) = self.rename_all(staged);
        if let Some(e) = failed {
            return partial(fps, e);
        }
        if rest.is_empty() {
            if plan.sync_dirs
                && let Err(e) = sync_dirs(&dirs)
            {
                return partial(fps, e);
            }
            return Ok(fps);
        }
        // 3. Those renames durable, then the ones after the barrier.
        if let Err(e) = sync_dirs(&dirs) {
            return partial(fps, e);
        }
        let (more, dirs, failed) = self.rename_all(rest);
        fps.extend(more);
        if let Some(e) = failed {
            return partial(fps, e);
        }
        if plan.sync_dirs
            && let Err(e) = sync_dirs(&dirs)
        {
            return partial(fps, e);
        }
        Ok(fps)
    }

    /// Creates a note only if nothing is at its path yet (atomic: link the
    /// finished temp file into place). Returns `false` if it existed.
    fn create_new(&self, path: &str, content: &str) -> Result<bool, VaultError> {
        let file = self.file_path(path)?;
        self.fault(&file, |f| f.write(path))?;
        let dir = self.ensure_dir(&file)?;
        let mut tmp = temp_file(&dir, None)?;
        tmp.write_all(content.as_bytes())
            .map_err(|e| io_err(tmp.path(), e))?;
        tmp.as_file().sync_all().map_err(|e| io_err(&file, e))?;
        match tmp.persist_noclobber(&file) {
            Ok(_) => {
                sync_dir(&dir).map_err(|e| io_err(&dir, e))?;
                Ok(true)
            }
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&file, e.error)),
        }
    }

    /// Is the vault's lock held by another process right now? (A probe:
    /// it takes and drops the lock if it is free.)
    fn is_locked(&self) -> bool {
        file_is_locked(&self.root.join(".vaultrunner").join("lock"))
    }

    /// Takes the single-instance lock of this vault. Held until the returned
    /// guard is dropped (or the process dies: the OS releases it).
    fn lock(&self) -> Result<VaultLock, VaultError> {
        Ok(VaultLock::new(lock_file(&self.root.join(".vaultrunner"))?))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn file(&self, path: &str) -> Result<FileInfo, VaultError> {
        let (real, rel, meta) = self.checked_file(path)?;
        Ok(FileInfo {
            path: rel,
            size: meta.len(),
            local: Some(real),
        })
    }

    /// One walk of the vault, as a listing walks it: dot-folders and
    /// symlinked folders are not entered; a symlinked file is found (and
    /// checked by [`Vault::file`] when it is used).
    fn find_files(&self, names: &[String]) -> Result<Vec<String>, VaultError> {
        let wanted: HashSet<String> = names.iter().map(|n| n.to_lowercase()).collect();
        let mut out = Vec::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                // The root unreadable is an error; a folder below it is
                // passed over, as a listing does.
                Err(e) if prefix.is_empty() => return Err(io_err(&dir, e)),
                Err(_) => continue,
            };
            for ent in rd.flatten() {
                let Ok(name) = ent.file_name().into_string() else {
                    continue;
                };
                let Ok(ft) = ent.file_type() else { continue };
                let rel = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if ft.is_dir() {
                    if walk_dir_ok(&name) {
                        stack.push((ent.path(), rel));
                    }
                } else if !name.starts_with('.')
                    && !name.ends_with(".md")
                    && wanted.contains(&name.to_lowercase())
                {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Stats first: a file over `max` is refused without being opened.
    /// Opened without following a symlink (its real path is opened) and
    /// without blocking (a FIFO), and read to `max` bytes at most, so a
    /// file that grows meanwhile is refused too.
    fn read_file(&self, path: &str, max: u64) -> Result<Vec<u8>, VaultError> {
        use std::io::Read as _;
        let (real, rel, meta) = self.checked_file(path)?;
        let too_large = |size| VaultError::FileTooLarge {
            path: rel.clone(),
            size,
            limit: max,
        };
        if meta.len() > max {
            return Err(too_large(meta.len()));
        }
        self.fault(&real, |f| f.read(&rel))?;
        let mut opts = OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            &mut opts,
            libc::O_NOFOLLOW | libc::O_NONBLOCK,
        );
        let f = opts.open(&real).map_err(|e| io_err(&real, e))?;
        let meta = f.metadata().map_err(|e| io_err(&real, e))?;
        if !meta.is_file() {
            return Err(io_err(
                &real,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        // The file may have grown since it was checked: never more than
        // `max` set aside.
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(max)).unwrap_or(0));
        f.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| io_err(&real, e))?;
        if bytes.len() as u64 > max {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    fn note_location(&self, path: &str) -> String {
        self.abs(path).display().to_string()
    }

    fn state_dir(&self) -> Result<PathBuf, VaultError> {
        let dir = self.root.join(".vaultrunner");
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(dir)
    }

    fn workspace(&self, _agent: &str) -> PathBuf {
        self.root.clone()
    }

    fn rescan_every(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn settle(&self) -> Duration {
        Duration::from_secs(2)
    }

    fn watch(&self, sink: ChangeSink) -> Result<Watching, VaultError> {
        super::watcher::start(self.clone(), sink)
    }

    /// Removes temp files an earlier crash left behind.
    fn recover(&self) -> usize {
        let (parts, _) = walk_parallel(
            (self.root.clone(), String::new()),
            &|removed: &mut usize, (dir, _): Folder, jobs: &Jobs<Folder>| {
                let Ok(rd) = fs::read_dir(&dir) else { return };
                let mut subdirs = Vec::new();
                for ent in rd.flatten() {
                    let name = ent.file_name();
                    let name = name.to_string_lossy();
                    let Ok(ft) = ent.file_type() else { continue };
                    if ft.is_dir() && walk_dir_ok(&name) {
                        subdirs.push((ent.path(), String::new()));
                    } else if ft.is_file()
                        && name.starts_with(".vaultrunner-")
                        && name.ends_with(".tmp")
                        && fs::remove_file(ent.path()).is_ok()
                    {
                        *removed += 1;
                    }
                }
                jobs.push_all(&mut subdirs);
            },
        );
        parts.into_iter().sum()
    }
}

/// Is the lock file at `path` held by another process right now? (A
/// probe: it takes and drops the lock if it is free.)
pub(super) fn file_is_locked(path: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    matches!(file.try_lock(), Err(fs::TryLockError::WouldBlock))
}

/// Takes the lock file `lock` in `dir` (created): held while the file is
/// open, released by the OS when the process dies.
pub(super) fn lock_file(dir: &Path) -> Result<File, VaultError> {
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // A few quick tries: `status` probes the lock for a moment, and a
    // start that collides with that probe must not fail.
    for attempt in 0..5 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if attempt < 4 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => return Err(locked(&path)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
    }
    Err(locked(&path))
}

fn locked(path: &Path) -> VaultError {
    VaultError::Locked {
        holder: format!("lock {} is held", path.display()),
    }
}

/// A temp file in `dir` for a note's next version, with the permissions the
/// note has (`mode`) or, for a new note, those of any new file (0666 less
/// the umask) — not a temp file's usual 0600.
fn temp_file(dir: &Path, mode: Option<u32>) -> Result<tempfile::NamedTempFile, VaultError> {
    let mut b = tempfile::Builder::new();
    b.prefix(".vaultrunner-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(fs::Permissions::from_mode(mode.unwrap_or(0o666)));
    }
    #[cfg(not(unix))]
    let _ = mode;
    b.tempfile_in(dir).map_err(|e| io_err(dir, e))
}

/// A file's permission bits (`rwx` for user, group and others).
fn file_mode(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o666
    }
}

fn set_mode(f: &File, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (f, mode);
        Ok(())
    }
}

/// The file a write is about to replace, held open without reading it
/// (`O_PATH`: no permission needed, never blocks on a FIFO, a symlink is
/// not followed). On file systems that free and discard blocks inside the
/// rename that replaces a file, this moves that cost to the reaper.
fn open_old(file: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        let mut opts = OpenOptions::new();
        opts.read(true);
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_PATH | libc::O_NOFOLLOW);
        opts.open(file).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Flushes each directory once.
fn sync_dirs(dirs: &[PathBuf]) -> Result<(), VaultError> {
    for d in dirs {
        sync_dir(d).map_err(|e| io_err(d, e))?;
    }
    Ok(())
}

impl Flusher {
    /// Returns once a flush that started after this call has finished (it
    /// covers every write this thread made before the call).
    fn flush(&self) -> io::Result<()> {
        let poisoned = || io::Error::other("a writer panicked while flushing");
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let ticket = st.started + 1;
        while st.finished < ticket {
            if st.running {
                st = self.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead: run the next flush for everyone waiting.
            st.running = true;
            st.started += 1;
            let n = st.started;
            drop(st);
            let r = syncfs(&self.fs);
            st = self.state.lock().map_err(|_| poisoned())?;
            st.running = false;
            st.finished = n;
            if let Err(e) = r {
                st.failed.push_back((n, e.kind(), e.to_string()));
                if st.failed.len() > 64 {
                    st.failed.pop_front();
                }
            }
            self.done.notify_all();
        }
        match st.failed.iter().find(|(n, _, _)| *n == ticket) {
            Some((_, kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }
}

/// Flushes several files' data to disk: on Linux, more than one with a
/// single `syncfs` of their file system; otherwise each file is fsynced.
fn sync_files<'a>(files: impl Iterator<Item = &'a File>) -> io::Result<()> {
    let files: Vec<&File> = files.collect();
    #[cfg(target_os = "linux")]
    if files.len() > 1
        && let Some(first) = files.first()
        && syncfs(first).is_ok()
    {
        return Ok(());
    }
    for f in files {
        f.sync_all()?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn syncfs(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the fd is valid for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn syncfs(f: &File) -> io::Result<()> {
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::is_windows_reserved;

    #[test]
    fn unsafe_paths_are_refused() {
        for p in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            "",
            "a//b",
            ".hidden/x",
            "a/.",
            "a\nb",
        ] {
            assert!(check_rel_path(p).is_err(), "{p:?} should be refused");
        }
        // Existing files may have names Windows refuses; they are not
        // refused here (agent names are, in `valid_name`).
        assert!(check_rel_path("Inbox/aux.reply").is_ok());
        assert!(is_windows_reserved("CON"));
        assert!(is_windows_reserved("aux.txt"));
        assert!(!is_windows_reserved("console"));
        let long = "a".repeat(256);
        assert!(check_rel_path(&long).is_err());
        for p in [
            "Inbox/echo/2026-11-21 hello",
            "Threads/a/b--c",
            "ünïcode/ok",
        ] {
            assert!(check_rel_path(p).is_ok(), "{p:?} should pass");
        }
    }

    #[test]
    fn ignore_rules() {
        for p in [
            ".obsidian/workspace.md",
            ".trash/old.md",
            "a/.git/x.md",
            "note.md~",
            "~$note.md",
            "#note.md#",
            "note.md.tmp",
            ".#note.md",
            "note.sync-conflict-20261121-120000-ABCDEF.md",
            "note (conflicted copy 2026-11-21).md",
            "note.txt",
            "note.md.swp",
            "note.md___jb_tmp___",
            ".syncthing.note.md.tmp",
            "4913",
        ] {
            assert!(ignore_reason(p).is_some(), "{p} should be ignored");
        }
        assert!(ignore_reason("Inbox/hello.md").is_none());
        assert!(ignore_reason("Conflict resolution notes.md").is_none());
        assert!(ignore_reason("#ideas.md").is_none());
        assert!(ignore_reason("~draft.md").is_none());
    }

    #[test]
    fn write_batch_read_list_and_escape_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVault::open(dir.path()).unwrap();
        v.write_batch(&[
            NoteWrite {
                path: "a/one".into(),
                content: "1".into(),
                base: Base::Any,
            },
            NoteWrite {
                path: "b/two".into(),
                content: "2".into(),
                base: Base::Any,
            },
        ])
        .unwrap();
        assert_eq!(v.read("a/one").unwrap().0, "1");
        let l = v.list();
        let paths: Vec<_> = l.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["a/one", "b/two"]);
        assert!(v.write("../escape", "x").is_err());
        assert!(!dir.path().parent().unwrap().join("escape.md").exists());
        // No temp files left behind.
        assert_eq!(v.recover(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_dir_out_of_vault_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.md"), dir.path().join("file.md"))
            .unwrap();
        fs::write(outside.path().join("x.md"), "secret").unwrap();
        let v = LocalVault::open(dir.path()).unwrap();
        assert!(v.write("link/evil", "x").is_err());
        assert!(!outside.path().join("evil.md").exists());
        let l = v.list();
        assert!(l.entries.is_empty());
        assert!(l.skipped.iter().any(|s| s.rel == "file.md"));
    }

    #[test]
    fn group_commit_merges_concurrent_batches() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVault::open(dir.path()).unwrap().with_group_commit();
        std::thread::scope(|s| {
            for t in 0..8 {
                let v = &v;
                s.spawn(move || {
                    for i in 0..20 {
                        let fps = v
                            .write_batch(&[
                                NoteWrite {
                                    path: format!("t{t}/a{i}"),
                                    content: format!("a {t} {i}"),
                                    base: Base::Any,
                                },
                                NoteWrite {
                                    path: format!("t{t}/b{i}"),
                                    content: format!("bb {t} {i}"),
                                    base: Base::Any,
                                },
                            ])
                            .unwrap();
                        // Each caller gets its own files' versions back.
                        assert_eq!(fps.len(), 2);
                        assert_eq!(fps[0].tag, format!("a {t} {i}").len() as u64);
                        assert_eq!(fps[1].tag, format!("bb {t} {i}").len() as u64);
                    }
                });
            }
        });
        assert_eq!(v.list().entries.len(), 8 * 20 * 2);
        // A refused path fails only its own batch.
        assert!(v.write("../x", "no").is_err());
        assert!(v.write("fine", "yes").is_ok());
    }

    #[test]
    fn planned_batches_mix_in_one_group() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVault::open(dir.path()).unwrap().with_group_commit();
        let plans = [
            Plan::DURABLE,
            Plan {
                barrier: Some(2),
                sync_dirs: true,
            },
            Plan {
                barrier: None,
                sync_dirs: false,
            },
            Plan {
                barrier: Some(0),
                sync_dirs: false,
            },
        ];
        std::thread::scope(|s| {
            for (t, plan) in plans.iter().enumerate() {
                let v = &v;
                s.spawn(move || {
                    for i in 0..25 {
                        let writes: Vec<NoteWrite> = (0..3)
                            .map(|k| NoteWrite {
                                path: format!("p{t}/d{k}/n{i}"),
                                content: format!("{t} {k} {i}"),
                                base: Base::Any,
                            })
                            .collect();
                        let fps = v.write_planned(&writes, *plan).unwrap();
                        assert_eq!(fps.len(), 3);
                        for (k, w) in writes.iter().enumerate() {
                            assert_eq!(v.read(&w.path).unwrap().0, w.content);
                            assert_eq!(fps[k].tag, w.content.len() as u64);
                        }
                    }
                });
            }
        });
        assert_eq!(v.list().entries.len(), 4 * 25 * 3);
        assert_eq!(v.recover(), 0);
    }

    /// The version a write replaces is held open without reading it: a
    /// FIFO (or a file we may not read) in the way must not block or fail
    /// the write, and a replaced symlink's target is left alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn replacing_a_fifo_or_symlink_does_not_block_or_follow() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.md");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let target = dir.path().join("target.txt");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("link.md")).unwrap();
        let v = LocalVault::open(dir.path()).unwrap().with_group_commit();
        v.write_batch(&[
            NoteWrite {
                path: "pipe".into(),
                content: "now a note".into(),
                base: Base::Any,
            },
            NoteWrite {
                path: "link".into(),
                content: "also a note".into(),
                base: Base::Any,
            },
        ])
        .unwrap();
        assert_eq!(v.read("pipe").unwrap().0, "now a note");
        assert_eq!(v.read("link").unwrap().0, "also a note");
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }

    /// A rewritten note keeps its permissions (a temp file's 0600 would
    /// hide it from other users and sync tools); a new note gets what any
    /// new file gets.
    #[cfg(unix)]
    #[test]
    fn writes_keep_a_notes_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |rel: &str| {
            fs::metadata(dir.path().join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        fs::write(dir.path().join("shared.md"), "old").unwrap();
        fs::set_permissions(
            dir.path().join("shared.md"),
            fs::Permissions::from_mode(0o664),
        )
        .unwrap();
        fs::write(dir.path().join("private.md"), "old").unwrap();
        fs::set_permissions(
            dir.path().join("private.md"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let v = LocalVault::open(dir.path()).unwrap().with_group_commit();
        for p in ["shared", "private", "new"] {
            v.write(p, "new text").unwrap();
        }
        assert!(v.create_new("fired", "x").unwrap());
        assert_eq!(mode("shared.md"), 0o664);
        assert_eq!(mode("private.md"), 0o600);
        // 0666 less the umask, as for any file a program creates.
        // (The umask is read, not set: setting it would race other tests.)
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(umask) = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        {
            assert_eq!(mode("new.md"), 0o666 & !umask);
            assert_eq!(mode("fired.md"), 0o666 & !umask);
        }
        assert_eq!(v.read("shared").unwrap().0, "new text");
    }

    /// A file over the limit is refused from its size alone: the read
    /// (here failing, as an injected fault) is never reached. Files are
    /// checked inside the vault, out of dot-folders, regular.
    #[cfg(unix)]
    #[test]
    fn files_are_checked_and_a_large_one_is_never_read() {
        #[derive(Debug)]
        struct NoReads;
        impl Faults for NoReads {
            fn read(&self, path: &str) -> io::Result<()> {
                Err(io::Error::other(format!("read of {path}")))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let big = File::create(dir.path().join("big.png")).unwrap();
        big.set_len(2 << 30).unwrap();
        fs::write(dir.path().join("small.png"), "png").unwrap();
        fs::write(outside.path().join("secret.png"), "secret").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            dir.path().join("out.png"),
        )
        .unwrap();
        std::os::unix::fs::symlink("small.png", dir.path().join("alias.png")).unwrap();
        fs::create_dir_all(dir.path().join(".obsidian")).unwrap();
        fs::write(dir.path().join(".obsidian/x.png"), "x").unwrap();
        std::os::unix::fs::symlink(".obsidian/x.png", dir.path().join("hidden.png")).unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/Small.PNG"), "deep").unwrap();

        let v = LocalVault::open(dir.path())
            .unwrap()
            .with_faults(std::sync::Arc::new(NoReads));
        let e = v.read_file("big.png", 1024).unwrap_err();
        assert!(
            matches!(e, VaultError::FileTooLarge { size, limit: 1024, .. } if size == 2 << 30),
            "{e}"
        );
        assert!(
            v.read_file("small.png", 1024)
                .unwrap_err()
                .to_string()
                .contains("read of small.png")
        );
        let plain = LocalVault::open(dir.path()).unwrap();
        assert_eq!(plain.read_file("small.png", 3).unwrap(), b"png");
        assert!(matches!(
            plain.read_file("small.png", 2),
            Err(VaultError::FileTooLarge { size: 3, .. })
        ));
        let info = plain.file("alias.png").unwrap();
        assert_eq!(info.path, "small.png");
        assert_eq!(info.size, 3);
        assert_eq!(
            info.local,
            Some(dir.path().canonicalize().unwrap().join("small.png"))
        );
        for (p, why) in [
            ("out.png", "outside the vault"),
            ("hidden.png", "dot-folder"),
            ("../x.png", "component"),
            (".obsidian/x.png", "hidden"),
        ] {
            let e = plain.file(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
        assert!(plain.file("nope.png").unwrap_err().is_not_found());
        assert!(plain.file("a").is_err());
        let found = plain
            .find_files(&["small.png".into(), "x.png".into()])
            .unwrap();
        assert_eq!(found, vec!["a/b/Small.PNG", "small.png"]);
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVault::open(dir.path()).unwrap();
        let g = v.lock().unwrap();
        assert!(matches!(v.lock(), Err(VaultError::Locked { .. })));
        drop(g);
        assert!(v.lock().is_ok());
    }

    #[test]
    fn a_big_folder_is_listed_whole_when_its_notes_are_statted_in_parts() {
        // More notes in one folder than one walker stats itself, beside a
        // subfolder, a note over the size limit and files that are not
        // notes: every note is listed once, by `list` and by `list_each`.
        let dir = tempfile::tempdir().unwrap();
        let n = STAT_PART * (STAT_WAITING + 3) + 7;
        let inbox = dir.path().join("Inbox");
        fs::create_dir_all(inbox.join("sub")).unwrap();
        let mut want: Vec<String> = (0..n).map(|i| format!("Inbox/{i:06}")).collect();
        for p in &want {
            fs::write(dir.path().join(format!("{p}.md")), "x").unwrap();
        }
        fs::write(inbox.join("sub/deep.md"), "y").unwrap();
        want.push("Inbox/sub/deep".into());
        want.sort();
        fs::write(inbox.join("picture.png"), "z").unwrap();
        fs::write(inbox.join(".hidden.md"), "z").unwrap();
        let huge = File::create(inbox.join("huge.md")).unwrap();
        huge.set_len(MAX_NOTE_BYTES + 1).unwrap();
        let v = LocalVault::open(dir.path()).unwrap();
        let listed = v.list();
        let paths: Vec<&str> = listed.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, want);
        assert!(listed.incomplete.is_empty(), "{:?}", listed.incomplete);
        assert_eq!(listed.skipped.len(), 1, "{:?}", listed.skipped);
        assert_eq!(listed.skipped[0].rel, "Inbox/huge.md");
        let parts = std::sync::Mutex::new(Vec::new());
        let each = v.list_each(&|part: Vec<Entry>| {
            assert!(part.len() <= LIST_PART);
            parts
                .lock()
                .unwrap()
                .extend(part.into_iter().map(|e| e.path));
        });
        let mut got = parts.into_inner().unwrap();
        got.sort();
        assert_eq!(got, want);
        assert!(each.entries.is_empty());
        assert_eq!(each.skipped.len(), 1);
    }

    #[test]
    fn create_new_does_not_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let v = LocalVault::open(dir.path()).unwrap();
        assert!(v.create_new("x", "1").unwrap());
        assert!(!v.create_new("x", "2").unwrap());
        assert_eq!(v.read("x").unwrap().0, "1");
    }
}
