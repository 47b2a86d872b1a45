//! The storage seam: one [`Vault`] trait for every place notes live, and
//! the plain types that cross it. Nothing above this module knows a path on
//! disk, a file's `mtime` or an `io::ErrorKind`: a note is a vault path
//! (`Inbox/hi`, no `.md`), its [`Version`] is opaque but for the time it was
//! last modified, and a [`VaultError`] says whether trying again can help.
//!
//! - [`local`]: a folder on disk (atomic durable write batches, group
//!   commit, the single-instance file lock, a `notify` change feed).
//! - [`remote`]: a Parachute Vault server over its HTTP API (compare-and-set
//!   updates, idempotent creates, a lease note, a polling change feed).
//!
//! [`open`] picks one from what the user typed (a folder or an `http(s)://`
//! URL).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub mod gitsync;
pub mod local;
pub mod remote;
mod watcher;

pub use local::{Flusher, LocalVault};
pub use remote::{RemoteOptions, RemoteVault};

/// The storage seam. Every method is blocking (call it from a blocking
/// thread, as the turns and the engine do); implementations are shared
/// between threads.
pub trait Vault: Send + Sync + fmt::Debug {
    /// How a user names this vault: the folder, or the URL. Turns get it
    /// as `VAULTRUNNER_VAULT` (and `send` inside a turn accepts it).
    fn location(&self) -> String;

    /// How a turn names a note (`VAULTRUNNER_MESSAGE`): a file path for a
    /// folder, the vault path for a server.
    fn note_location(&self, path: &str) -> String;

    /// The folder where vaultrunner keeps its own state for this vault
    /// (the HTTP address file, a lease id), created on first use.
    fn state_dir(&self) -> Result<PathBuf, VaultError>;

    /// Where a turn of `agent` runs when its definition names no
    /// `workspace`, and what a relative `workspace` is resolved against.
    fn workspace(&self, agent: &str) -> PathBuf;

    /// Every note (recursively), passing over what is not a note; what
    /// could not be listed is in [`Listing::incomplete`].
    fn list(&self) -> Listing;

    /// [`Vault::list`], handing the entries to `each` a part at a time (a
    /// folder's, or a page's), maybe from several threads at once, instead
    /// of collecting them: a big vault's listing then needs no memory of
    /// its own. The [`Listing`] returned has no entries, only what was
    /// passed over and what could not be listed. In no particular order.
    fn list_each(&self, each: &(dyn Fn(Vec<Entry>) + Sync)) -> Listing {
        let mut listing = self.list();
        each(std::mem::take(&mut listing.entries));
        listing
    }

    /// The notes under one folder (`prefix`, no slash at either end).
    fn list_under(&self, prefix: &str) -> Listing;

    /// The version of a note, `None` when it is not there (or not a note).
    fn stat(&self, path: &str) -> Option<Version>;

    /// A note's text (front-matter and body) and its version.
    fn read(&self, path: &str) -> Result<(String, Version), VaultError>;

    /// Writes a batch durably, in order: when it fails, a prefix of the
    /// batch is in place ([`PartialWrite::landed`]). Each write says what
    /// it expects to find ([`Base`]): an update whose note changed since it
    /// was read fails with [`VaultError::Changed`] and changes nothing of
    /// that note (re-read, re-decide).
    fn write_in_order(
        &self,
        writes: &[NoteWrite],
        plan: Plan,
    ) -> Result<Vec<Version>, PartialWrite>;

    /// Creates a note only if nothing is at its path yet; `false` if
    /// something was.
    fn create_new(&self, path: &str, content: &str) -> Result<bool, VaultError>;

    /// Takes this vault's single-runner lock (a file lock, a lease note),
    /// held until the guard is dropped; [`VaultError::Locked`] names the
    /// holder.
    fn lock(&self) -> Result<VaultLock, VaultError>;

    /// Does another runner hold the lock right now?
    fn is_locked(&self) -> bool;

    /// Clears what an earlier crash left behind (temp files); returns how
    /// many things were removed.
    fn recover(&self) -> usize;

    /// Starts the change feed: paths of notes that may have changed, and
    /// requests for a full scan, sent to `sink` until the returned guard
    /// is dropped. Needs a tokio runtime.
    fn watch(&self, sink: ChangeSink) -> Result<Watching, VaultError>;

    /// How often a full scan is the safety net of the change feed.
    fn rescan_every(&self) -> Duration;

    /// The settle window a feed's changes need by default (a folder's
    /// notes are saved part by part by editors; a server's are whole).
    fn settle(&self) -> Duration;

    /// Can the vault be reached now? `Err` says why not (for `status` and
    /// `/health`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Where syncing with another copy stands (a Git-synced folder);
    /// `None` when the vault does not sync.
    fn sync_status(&self) -> Option<SyncStatus> {
        None
    }

    /// Asks for a sync soon (a push webhook said the other copy changed);
    /// `false` when this vault does not sync.
    fn sync_soon(&self) -> bool {
        false
    }

    /// Where a note went that a sync from the other copy renamed (a phone
    /// moved a message while its turn ran): its new path, so the stamp
    /// lands there. `None` when it was not renamed so.
    fn moved_to(&self, _path: &str) -> Option<String> {
        None
    }

    /// Runs one step of syncing now, to its end (`process --git-sync`);
    /// `Ok` at once when the vault does not sync.
    fn sync(&self, _step: SyncStep) -> Result<(), VaultError> {
        Ok(())
    }

    /// A file with the vault's own MCP endpoint for turns that can use one
    /// (`claude --mcp-config`), readable only by this user; `None` when the
    /// vault has none (a folder).
    fn mcp_config(&self) -> Result<Option<PathBuf>, VaultError> {
        Ok(None)
    }

    /// A file of the vault that is not a note (an attachment, SPEC §9)
    /// at its vault path (`Files/a.pdf`, with its extension): its size and,
    /// where the vault is a folder on this machine, its absolute path. Not
    /// read. Refused ([`VaultError::UnsafePath`]) when the path, or a
    /// symlink on its way, leads outside the vault or into a dot-folder;
    /// not found ([`VaultError::is_not_found`]) when nothing is there; a
    /// vault without files says so ([`VaultError::NoFiles`]).
    fn file(&self, _path: &str) -> Result<FileInfo, VaultError> {
        Err(VaultError::NoFiles(NO_FILES.into()))
    }

    /// The vault paths of the files (not notes) whose file name is one of
    /// `names`, compared case-insensitively, anywhere in the vault outside
    /// dot-folders (one walk for all the names). Sorted.
    fn find_files(&self, _names: &[String]) -> Result<Vec<String>, VaultError> {
        Err(VaultError::NoFiles(NO_FILES.into()))
    }

    /// The bytes of the file at `path` (as [`Vault::file`] finds it), if
    /// it holds at most `max` bytes: a larger one is refused
    /// ([`VaultError::FileTooLarge`]) before it is read.
    fn read_file(&self, _path: &str, _max: u64) -> Result<Vec<u8>, VaultError> {
        Err(VaultError::NoFiles(NO_FILES.into()))
    }

    /// Writes one note durably (over whatever is there); returns its
    /// version.
    fn write(&self, path: &str, content: &str) -> Result<Version, VaultError> {
        let fps = self.write_batch(&[NoteWrite::any(path, content)])?;
        Ok(fps.first().copied().unwrap_or_default())
    }

    /// Several notes, each durable, in order ([`Plan::DURABLE`]).
    fn write_batch(&self, writes: &[NoteWrite]) -> Result<Vec<Version>, VaultError> {
        self.write_planned(writes, Plan::DURABLE)
    }

    /// [`Vault::write_in_order`] without the prefix that landed.
    fn write_planned(&self, writes: &[NoteWrite], plan: Plan) -> Result<Vec<Version>, VaultError> {
        self.write_in_order(writes, plan).map_err(|p| p.error)
    }
}

/// What a vault without files of its own says when asked for one.
const NO_FILES: &str = "this vault keeps no files beside its notes";

/// A file of the vault that is not a note (see [`Vault::file`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Its vault path, with its extension (`Files/a.pdf`); for a symlink
    /// inside the vault, the path of the file it leads to.
    pub path: String,
    pub size: u64,
    /// Its absolute path on this machine (a folder), for programs that
    /// read it themselves; `None` where the vault is not a folder here.
    pub local: Option<PathBuf>,
}

/// A step of syncing a vault with another copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// Take in the other copy's changes.
    Pull,
    /// Record vaultrunner's own writes and send them (after a pull).
    Push,
}

/// Where syncing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// In step, or about to be.
    #[default]
    Ok,
    /// Stopped until a person fixes what `reason` says; turns go on and
    /// their writes are sent once it is fixed.
    Paused,
    /// The other copy cannot be reached; tried again later (`reason`).
    Backoff,
}

/// Where syncing stands, for `status` and `/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncStatus {
    pub state: SyncState,
    pub reason: Option<String>,
    /// When the other copy's changes were last taken in (RFC 3339).
    pub last_pull: Option<String>,
    /// When vaultrunner's commits were last sent (RFC 3339).
    pub last_push: Option<String>,
    /// vaultrunner's commits not yet sent.
    pub unpushed: usize,
    /// Notes kept out of the sync, each with why (a secret in it).
    pub held: Vec<String>,
}

/// A vault's own runtime (its requests, its git calls), shut down in the
/// background when the vault goes, so a vault dropped inside another
/// runtime never panics.
#[derive(Debug)]
pub(crate) struct Bridge(pub(crate) Option<tokio::runtime::Runtime>);

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A change the feed reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This note may have changed (written, edited, deleted, renamed).
    Note(String),
    /// Changes may have been missed: scan everything (`reason` is logged).
    Rescan(String),
}

/// Where a change feed sends its changes.
pub type ChangeSink = tokio::sync::mpsc::UnboundedSender<Change>;

/// A running change feed; dropping it stops the feed.
pub struct Watching(#[allow(dead_code)] Box<dyn Send>);

impl Watching {
    pub fn new(guard: impl Send + 'static) -> Watching {
        Watching(Box::new(guard))
    }
}

impl fmt::Debug for Watching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Watching")
    }
}

/// Held while this runner owns the vault; dropping it releases the vault.
pub struct VaultLock {
    _guard: Box<dyn Send + Sync>,
    lost: Option<tokio_util::sync::CancellationToken>,
}

impl VaultLock {
    pub fn new(guard: impl Send + Sync + 'static) -> VaultLock {
        VaultLock {
            _guard: Box::new(guard),
            lost: None,
        }
    }

    /// A lock that can be lost (a lease another runner took while this
    /// one could not renew it): `lost` is cancelled then.
    pub fn with_lost(mut self, lost: tokio_util::sync::CancellationToken) -> VaultLock {
        self.lost = Some(lost);
        self
    }

    /// Cancelled if the lock is lost (never for a file lock).
    pub fn lost(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.lost.clone()
    }
}

impl fmt::Debug for VaultLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultLock")
    }
}

/// How to open a vault: the settings only some kinds read.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Group commit of concurrent write batches (a folder; `serve`).
    pub group_commit: bool,
    /// The change poll of a remote vault (`--poll-ms`; default 2 s).
    pub poll: Option<Duration>,
    /// Keep a folder that is a Git work tree in sync with its upstream
    /// (`--git-sync`).
    pub git_sync: Option<gitsync::SyncConfig>,
}

/// Does `location` name a remote vault (an `http://` or `https://` URL)?
pub fn is_remote(location: &str) -> bool {
    let l = location.trim_start().to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// Opens the vault a user named: a folder, or (an `http(s)://` URL) a
/// Parachute Vault server, with the token from `VAULTRUNNER_VAULT_TOKEN`.
pub fn open(location: &str, opts: &OpenOptions) -> Result<Arc<dyn Vault>, VaultError> {
    if is_remote(location) {
        if opts.git_sync.is_some() {
            return Err(VaultError::Sync(format!(
                "{location} is a remote vault; --git-sync is for a folder that is a Git clone"
            )));
        }
        let ropts = RemoteOptions {
            token: std::env::var(remote::TOKEN_ENV).ok(),
            poll: opts.poll.unwrap_or(RemoteOptions::default().poll),
            state_dir: None,
        };
        return Ok(Arc::new(RemoteVault::open(location.trim(), &ropts)?));
    }
    let mut v = LocalVault::open(Path::new(location))?;
    if opts.group_commit {
        v = v.with_group_commit();
    }
    if let Some(cfg) = &opts.git_sync {
        return Ok(Arc::new(gitsync::GitVault::open(v, cfg.clone())?));
    }
    // A serve that syncs this folder runs beside: what is written here is
    // journaled for it to commit.
    if gitsync::GitVault::synced_by_serve(&v) {
        return Ok(Arc::new(gitsync::GitVault::beside(v)));
    }
    Ok(Arc::new(v))
}

/// Largest note vaultrunner reads; larger `.md` files are reported and
/// skipped so a stray dump cannot exhaust memory.
pub const MAX_NOTE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The OS error is part of the message and not also a `source`, so a
    /// chain of causes prints it once.
    #[error("vault {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("refusing unsafe note path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// Another runner holds the vault (`holder` says who, and how).
    #[error("another vaultrunner is already running on this vault ({holder}); stop it first")]
    Locked { holder: String },
    /// An update found the note changed since it was read (someone else's
    /// edit, which is kept): read it again and decide again.
    #[error("{path}.md changed while vaultrunner was updating it (the other edit is kept)")]
    Changed { path: String },
    /// A remote vault failed; `what` names the request and the note and
    /// never holds the token.
    #[error("{what}")]
    Remote { what: String, transient: bool },
    /// A remote vault refused the token; the text names the variable and
    /// the scope needed.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{path}.md: front-matter could not be edited: {reason}")]
    Edit { path: String, reason: String },
    /// Syncing with another copy failed or cannot start; the text names
    /// the folder, the remote or the note.
    #[error("{0}")]
    Sync(String),
    /// This vault gives no files beside its notes (attachments); the text
    /// says why.
    #[error("{0}")]
    NoFiles(String),
    /// A file over the size a caller accepts, refused before it was read.
    #[error("{path} is {size} bytes, over the limit of {limit} bytes")]
    FileTooLarge { path: String, size: u64, limit: u64 },
}

pub(crate) fn io_err(path: &Path, error: io::Error) -> VaultError {
    VaultError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl VaultError {
    /// Is this "the note is not there" (deleted, or never was)?
    pub fn is_not_found(&self) -> bool {
        matches!(self, VaultError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound)
    }

    /// What went wrong, without the file's absolute path (for messages
    /// that name the note themselves).
    pub fn reason(&self) -> String {
        match self {
            VaultError::Io { error, .. } => error.to_string(),
            other => other.to_string(),
        }
    }

    /// Could trying again later succeed? Out of descriptors, memory or
    /// space, an I/O error, a permission the user may fix: yes. A note
    /// that is gone, a refused path, a binary file or a note over the size
    /// limit: no, not until the note itself changes.
    ///
    /// A note that changed under an update: yes (the retry reads it again).
    /// A server that is down or answers `5xx`: yes. A refused token: no.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Io { error, .. } => !matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            ),
            VaultError::Changed { .. } => true,
            VaultError::Remote { transient, .. } => *transient,
            _ => false,
        }
    }

    /// A failure of the join of a blocking task (a panic in it).
    pub fn join(e: tokio::task::JoinError) -> VaultError {
        VaultError::Io {
            path: PathBuf::new(),
            error: io::Error::other(e.to_string()),
        }
    }
}

/// Failures injected into a vault's I/O: the tests of what a full or
/// failing disk does use it, since such a disk cannot be had on demand
/// everywhere. Each hook is asked before the operation it names; an error
/// fails that operation as the OS would.
pub trait Faults: Send + Sync + std::fmt::Debug {
    /// Before a note of a write batch (or `create_new`) is written to its
    /// temp file: nothing of the batch is in place yet.
    fn write(&self, _path: &str) -> io::Result<()> {
        Ok(())
    }
    /// Before a flushed temp file is renamed into place: the batch's
    /// earlier notes are in place, this one and the later ones are not.
    fn rename(&self, _path: &str) -> io::Result<()> {
        Ok(())
    }
    /// Before a note is read.
    fn read(&self, _path: &str) -> io::Result<()> {
        Ok(())
    }
    /// Before a folder is listed (`""` is the vault root).
    fn list(&self, _prefix: &str) -> io::Result<()> {
        Ok(())
    }
}

/// Names Windows refuses (with or without an extension).
const WINDOWS_RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Checks a vault-relative note path (without `.md`, `/`-separated) for
/// anything that could escape the vault or that the file system refuses:
/// `..`, absolute paths, backslashes, NUL and control characters, empty or
/// overlong components, dot-components (never read back: ignored).
pub fn check_rel_path(path: &str) -> Result<(), VaultError> {
    let bad = |reason| {
        Err(VaultError::UnsafePath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty path");
    }
    if path.len() > 1024 {
        return bad("path longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.contains('\\') {
        return bad("backslash in path");
    }
    if path.chars().any(|c| c.is_control()) {
        return bad("control character in path");
    }
    for comp in path.split('/') {
        if comp.is_empty() {
            return bad("empty path component");
        }
        if comp == "." || comp == ".." {
            return bad("`.` or `..` component");
        }
        if comp.starts_with('.') {
            return bad("hidden (dot) component");
        }
        if comp.len() > 255 {
            return bad("path component longer than 255 bytes");
        }
        if comp.contains(':') && cfg!(windows) {
            return bad("`:` in path");
        }
    }
    Ok(())
}

/// Is this a name Windows refuses for a file (`con`, `aux`, `nul`, `com1`,
/// … with or without an extension)? Names vaultrunner makes from what
/// notes say (agent names) are refused when they are, so a vault synced to
/// Windows keeps working. Paths derived from files that already exist are
/// not checked: they exist.
pub fn is_windows_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    WINDOWS_RESERVED.contains(&stem.as_str())
}

/// Why a file in the vault is passed over. `None` = a note to read.
pub fn ignore_reason(rel: &str) -> Option<&'static str> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    for comp in rel.split('/') {
        if comp.starts_with('.') {
            return Some("dot-folder or hidden file");
        }
    }
    if !name.ends_with(".md") {
        return Some("not a .md file");
    }
    let lower = name.to_ascii_lowercase();
    // Editor temp files mostly do not end in `.md` (`x.md~`, `#x.md#`,
    // `x.md.swp`, `4913`) and are passed over above; these do.
    if lower.starts_with("~$") || lower.contains("___jb_tmp___") || lower.contains("___jb_old___") {
        return Some("editor temporary file");
    }
    if lower.contains(".sync-conflict-")
        || lower.contains("conflicted copy")
        || lower.contains("(conflict")
        || lower.contains("case conflict")
    {
        return Some("sync conflict copy");
    }
    None
}

/// A note found by a listing: its vault-relative path and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Vault-relative path without `.md`.
    pub path: String,
    pub version: Version,
}

/// What tells whether a note changed since it was last seen: opaque but
/// for `modified_ns`, the time the note was last changed (ns since the
/// epoch), which orders messages without `ts` and decides the settle
/// window. A folder's notes have their size as `tag`; a remote vault's
/// have a hash of what the server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Version {
    pub tag: u64,
    pub modified_ns: i128,
}

/// Something a scan passed over that a user should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub rel: String,
    pub reason: String,
}

/// The result of listing the vault.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
    /// Folders (`""` is the root) and notes that could not be listed or
    /// stated: what the listing says of them is unknown, so a note under
    /// one that is missing from `entries` is not gone.
    pub incomplete: Vec<String>,
}

impl Listing {
    /// Is the note at `path` covered by an incomplete folder or entry (so
    /// its absence from `entries` proves nothing)?
    pub fn unknown(&self, path: &str) -> bool {
        self.incomplete.iter().any(|p| {
            p.is_empty()
                || path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
        })
    }
}

/// How a write batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The index of the first write that may be renamed into place only
    /// once every earlier one is durable (renamed and its directory
    /// flushed). Without it, a crash can leave any subset of the renames
    /// on a file system that does not keep metadata operations in order.
    pub barrier: Option<usize>,
    /// Flush the directories after the renames (the new names are durable
    /// when the call returns). Without it only the files' data is flushed:
    /// each file is still old or new after a crash, never torn, but a
    /// power loss may undo the renames.
    pub sync_dirs: bool,
}

impl Plan {
    /// Every file durable, in no particular order.
    pub const DURABLE: Plan = Plan {
        barrier: None,
        sync_dirs: true,
    };
}

/// A write batch that failed part-way.
#[derive(Debug)]
pub struct PartialWrite {
    /// The versions of the batch's first notes, which are in place.
    pub landed: Vec<Version>,
    pub error: VaultError,
}

/// One note of a write batch.
#[derive(Debug, Clone)]
pub struct NoteWrite {
    pub path: String,
    pub content: String,
    /// What the write expects to find at `path`.
    pub base: Base,
}

/// What a write expects to find: the compare of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// Anything or nothing: the note is written over (a reply or a
    /// callback at its derived path, a new message at a fresh path).
    Any,
    /// The note as it was read: if it changed since, the write fails with
    /// [`VaultError::Changed`] and the note keeps the other edit.
    Read(Version),
}

impl NoteWrite {
    /// A write over whatever is at `path`.
    pub fn any(path: &str, content: &str) -> NoteWrite {
        NoteWrite {
            path: path.to_string(),
            content: content.to_string(),
            base: Base::Any,
        }
    }

    /// An update of the note read at `version`.
    pub fn update(path: &str, content: String, version: Version) -> NoteWrite {
        NoteWrite {
            path: path.to_string(),
            content,
            base: Base::Read(version),
        }
    }
}
