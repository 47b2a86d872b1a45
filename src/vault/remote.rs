//! A remote vault: a Parachute Vault server over its HTTP API (SPEC §6),
//! through the typed client in [`crate::parachute`].
//!
//! - **Notes.** A note's path is the server note's `path` (or `_id/<id>`
//!   when it has none); its text is rendered from the note
//!   ([`mapping::text_of`]): front-matter from `metadata` and `tags`, body
//!   from `content`; a write is taken apart again ([`mapping::parts_of`]).
//! - **Versions.** A [`Version`] is made from `updatedAt` (its hash and its
//!   time); the `updatedAt` itself, which a compare-and-set sends back as
//!   `if_updated_at`, is kept per path in `known`.
//! - **Writes.** An update is a `PATCH` with `if_updated_at` (a `409` is
//!   [`VaultError::Changed`]: the other edit is kept); a write over
//!   whatever is there creates (`POST`) and, on `409 path_conflict` (a
//!   re-run), updates that note. A batch is written request by request in
//!   its order, so a failure leaves a prefix in place.
//! - **Changes.** A poll of the notes vaultrunner reads (definitions,
//!   inbound messages, jobs), without their content, every `poll`; a full
//!   scan every minute is the safety net ([`Vault::rescan_every`]). The
//!   trigger webhook (in the HTTP server) wakes the engine at once.
//! - **The lease.** `_vaultrunner/lease` stands in for the file lock:
//!   renewed by compare-and-set every 10 s, it expires 30 s after the last
//!   renewal; a clean stop releases it; the lease id kept in the state
//!   folder lets the same runner take it back at once after a crash.
//! - **Failures.** A server that is down or answers `5xx` is transient
//!   (the engine retries; [`Vault::health`] says `vault unreachable`); a
//!   refused token is not, and its error names `VAULTRUNNER_VAULT_TOKEN`.
//!   The token is never in a note, a log line or an error.
//!
//! Every method blocks its caller; the requests run on a small runtime of
//! the vault's own, so a call from any thread (a blocking task, a runtime
//! worker, a plain thread) cannot deadlock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    Base, Bridge, Change, ChangeSink, Entry, Listing, NoteWrite, PartialWrite, Plan, Skipped,
    Vault, VaultError, VaultLock, Version, Watching, check_rel_path,
};
use crate::parachute::{self, Client, Conflict, ErrorKind, NewNote, NoteRef, Patch, Query};

pub mod mapping;

/// The environment variable with the token.
pub const TOKEN_ENV: &str = parachute::TOKEN_ENV;

/// The path of the lease note.
pub const LEASE_PATH: &str = "_vaultrunner/lease";

/// How long a lease lasts after its last renewal.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// How long taking the lease waits for a server that is down or answers
/// `5xx` before it gives up.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// How often a held lease is renewed.
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// The tags of the notes the poll watches (with and without `#`: the
/// Parachute Agent writes bare tags, people type `#`).
const POLLED_TAGS: &[&str] = &[
    "agent/definition",
    "agent/message/inbound",
    "agent/job",
    "#agent/definition",
    "#agent/message/inbound",
    "#agent/job",
];

/// The longest pause between polls while the server is unreachable.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(30);

/// How a remote vault is opened.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The token (from `VAULTRUNNER_VAULT_TOKEN`).
    pub token: Option<String>,
    /// The interval of the change poll.
    pub poll: Duration,
    /// Where vaultrunner keeps its state for this vault; `None`: under
    /// `$VAULTRUNNER_STATE_DIR`, `$XDG_STATE_HOME` or `~/.local/state`.
    pub state_dir: Option<PathBuf>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            token: None,
            poll: Duration::from_secs(2),
            state_dir: None,
        }
    }
}

/// What the vault last saw of a note: what an update needs.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    updated_at: String,
    version: Version,
    tags: Vec<String>,
    metadata: serde_json::Map<String, Value>,
    /// The note's text at this version, when its content was read.
    text: Option<String>,
    /// When the server last said the note is at this version.
    seen: std::time::Instant,
}

/// How long what the server last said of a note stands in for asking
/// again: a `stat` or a `read` within this time of a read, a listing or a
/// write of the note is answered from it. Never a risk to a note: every
/// update is a compare-and-set on the version, and a refused one forgets
/// what was kept.
const FRESH: Duration = Duration::from_secs(1);

/// Notes per poll: the newest tagged notes, one page.
const POLL_PAGE: u32 = 500;

struct Inner {
    client: Client,
    bridge: Bridge,
    location: String,
    state_dir: PathBuf,
    poll: Duration,
    known: Mutex<HashMap<String, Known>>,
    /// A full listing was made (the first brings content).
    listed: std::sync::atomic::AtomicBool,
    /// Notes remembered so far (every 1,024th prunes stale texts).
    remembered: std::sync::atomic::AtomicU64,
    /// Why the server could not be reached, while it cannot.
    down: Mutex<Option<String>>,
}

/// A Parachute Vault server as a [`Vault`]. Clones share everything.
#[derive(Clone)]
pub struct RemoteVault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteVault")
            .field("location", &self.inner.location)
            .finish()
    }
}

/// A client error as a vault error: transient or not, the token never in
/// it (the client scrubs it), `note` named when known.
fn vault_err(note: Option<&str>, e: parachute::Error) -> VaultError {
    let transient = e.is_transient();
    match e.kind() {
        ErrorKind::Unauthorized { .. } => VaultError::Unauthorized(e.to_string()),
        _ => VaultError::Remote {
            what: match note {
                Some(n) => format!("{n}.md: {e}"),
                None => e.to_string(),
            },
            transient,
        },
    }
}

/// "The note is not there", as every vault says it
/// ([`VaultError::is_not_found`]): the engine and the turn then drop the
/// note (a message deleted mid-turn closes its thread and answers nobody)
/// instead of retrying a write that can never land.
fn not_found(path: &str) -> VaultError {
    VaultError::Io {
        path: PathBuf::from(format!("{path}.md")),
        error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such note in the vault"),
    }
}

/// The vault path of a server note (`_id/<id>` without a path), or why it
/// is passed over.
fn path_of(note: &parachute::Note) -> Result<String, String> {
    match note.path.as_deref() {
        None | Some("") => Ok(format!("_id/{}", note.id)),
        Some(p) => match check_rel_path(p) {
            Ok(()) => Ok(p.to_string()),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// A server version as a [`Version`]: a hash of `updatedAt` and its time.
fn version_of(updated_at: &str) -> Version {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    updated_at.hash(&mut h);
    let modified_ns = chrono::DateTime::parse_from_rfc3339(updated_at)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map_or(0, i128::from);
    Version {
        tag: h.finish(),
        modified_ns,
    }
}

fn known_of(note: &parachute::Note) -> Known {
    Known {
        id: note.id.clone(),
        updated_at: note.updated_at.clone(),
        version: version_of(&note.updated_at),
        tags: note.tags.clone(),
        metadata: note.metadata.clone(),
        text: match &note.content {
            parachute::Content::Text(body) => Some(mapping::text_of(note, body)),
            _ => None,
        },
        seen: std::time::Instant::now(),
    }
}

/// The state folder of vaultrunner for a vault at `base`.
fn default_state_dir(base: &parachute::BaseUrl) -> PathBuf {
    let root = std::env::var_os("VAULTRUNNER_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("vaultrunner"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/vaultrunner"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("vaultrunner"));
    let name: String = base
        .as_str()
        .split_once("://")
        .map_or(base.as_str(), |(_, rest)| rest)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    root.join(name)
}

impl RemoteVault {
    /// Opens the vault at `location` (`http(s)://HOST/vault/NAME`). A
    /// missing or refused token is an error naming `VAULTRUNNER_VAULT_TOKEN`;
    /// a server that cannot be reached now is not (it is tried again).
    pub fn open(location: &str, opts: &RemoteOptions) -> Result<RemoteVault, VaultError> {
        let bad = |what: String| VaultError::Remote {
            what,
            transient: false,
        };
        let base = parachute::BaseUrl::parse(location).map_err(bad)?;
        let token = match opts.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => parachute::Token::new(t).map_err(bad)?,
            _ => {
                return Err(VaultError::Unauthorized(format!(
                    "{location} is a remote vault: set {TOKEN_ENV} to a token of it (with the vault:read and vault:write scopes)"
                )));
            }
        };
        let client = Client::new(base.clone(), token, parachute::Config::default())
            .map_err(|e| vault_err(None, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vaultrunner-remote")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("the HTTP runtime could not start: {e}")))?;
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&base));
        let v = RemoteVault {
            inner: Arc::new(Inner {
                client,
                bridge: Bridge(Some(rt)),
                location: base.as_str().to_string(),
                state_dir,
                poll: opts.poll.max(Duration::from_millis(50)),
                known: Mutex::new(HashMap::new()),
                listed: std::sync::atomic::AtomicBool::new(false),
                remembered: std::sync::atomic::AtomicU64::new(0),
                down: Mutex::new(None),
            }),
        };
        let c = v.inner.client.clone();
        match v.call(async move { c.health().await }) {
            Ok(_) => {}
            // Logged by `call` ("vault unreachable"); tried again.
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(vault_err(None, e)),
        }
        Ok(v)
    }

    /// Runs a request on the vault's runtime and waits for it; notes
    /// whether the server could be reached.
    fn call<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, parachute::Error>> + Send + 'static,
    ) -> Result<T, parachute::Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(rt) = self.inner.bridge.0.as_ref() else {
            return Err(parachute::Error::stopped());
        };
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let r = rx
            .recv()
            .unwrap_or_else(|_| Err(parachute::Error::stopped()));
        self.note_health(&r);
        r
    }

    fn note_health<T>(&self, r: &Result<T, parachute::Error>) {
        let mut down = self.inner.down.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Err(e) if e.is_transient() => {
                if down.is_none() {
                    tracing::warn!("vault unreachable: {e}");
                }
                *down = Some(e.to_string());
            }
            _ => {
                if down.take().is_some() {
                    tracing::info!("the vault is reachable again");
                }
            }
        }
    }

    fn remember(&self, path: &str, note: &parachute::Note) -> Version {
        let mut k = known_of(note);
        let v = k.version;
        if let Ok(mut known) = self.inner.known.lock() {
            // A listing without content confirms the text kept for the
            // same version.
            if k.text.is_none()
                && let Some(old) = known.get_mut(path)
                && old.version == v
            {
                k.text = old.text.take();
            }
            known.insert(path.to_string(), k);
            // Texts are kept for FRESH only: every so often the stale ones
            // go, so a big vault's start-up listing is not held in memory.
            let n = self
                .inner
                .remembered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n % 1024 == 1023 {
                for k in known.values_mut() {
                    if k.text.is_some() && k.seen.elapsed() >= FRESH {
                        k.text = None;
                    }
                }
            }
        }
        v
    }

    /// What the server said of the note within [`FRESH`].
    fn fresh(&self, path: &str) -> Option<Known> {
        self.cached(path).filter(|k| k.seen.elapsed() < FRESH)
    }

    fn forget(&self, path: &str) {
        if let Ok(mut known) = self.inner.known.lock() {
            known.remove(path);
        }
    }

    fn cached(&self, path: &str) -> Option<Known> {
        self.inner.known.lock().ok()?.get(path).cloned()
    }

    /// Reads the server note at a vault path: for `_id/<id>` the note with
    /// that id, else (a path derived from such a name, `_id/<id>.reply`)
    /// the note at that path.
    fn fetch(&self, path: &str) -> Result<parachute::Note, parachute::Error> {
        let c = self.inner.client.clone();
        let p = path.to_string();
        self.call(async move {
            if let Some(id) = p.strip_prefix("_id/")
                && !id.contains('/')
            {
                match c.get(NoteRef::Id(id)).await {
                    Err(e) if e.is_not_found() => {}
                    other => return other,
                }
            }
            c.get(NoteRef::Path(&p)).await
        })
    }

    /// The server's view of the note at `path` when it is at `version`
    /// (from what the vault last saw, or read again).
    fn known_at(&self, path: &str, version: Version) -> Result<Known, VaultError> {
        if let Some(k) = self.cached(path)
            && k.version == version
        {
            return Ok(k);
        }
        match self.fetch(path) {
            Ok(n) => {
                self.remember(path, &n);
                let k = known_of(&n);
                if k.version == version {
                    Ok(k)
                } else {
                    Err(VaultError::Changed {
                        path: path.to_string(),
                    })
                }
            }
            Err(e) if e.is_not_found() => {
                self.forget(path);
                Err(VaultError::Changed {
                    path: path.to_string(),
                })
            }
            Err(e) => Err(vault_err(Some(path), e)),
        }
    }

    /// Updates the note `k` (as read) to `content`: a compare-and-set.
    fn update(&self, path: &str, k: &Known, content: &str) -> Result<Version, VaultError> {
        let parts = mapping::parts_of(content).map_err(|why| VaultError::Remote {
            what: format!("{path}.md: {why}"),
            transient: false,
        })?;
        // Only what changed: the server merges metadata shallowly, and
        // its own writes (trigger markers) do not move the version, so
        // sending every key would put back what it removed.
        let mut metadata = serde_json::Map::new();
        for (key, value) in &parts.metadata {
            if !k
                .metadata
                .get(key)
                .is_some_and(|old| mapping::unchanged(old, value))
            {
                metadata.insert(key.clone(), value.clone());
            }
        }
        for (key, old) in &k.metadata {
            if !old.is_null() && key != "tags" && !parts.metadata.contains_key(key) {
                metadata.insert(key.clone(), Value::Null);
            }
        }
        // A tag the note has in the `#` form is the same tag: kept as the
        // user wrote it.
        let bare = |t: &str| t.strip_prefix('#').unwrap_or(t).to_string();
        let want: HashSet<String> = parts.tags.iter().map(|t| bare(t)).collect();
        let have: HashSet<String> = k.tags.iter().map(|t| bare(t)).collect();
        let patch = Patch {
            content: Some(parts.content),
            metadata,
            add_tags: parts
                .tags
                .iter()
                .filter(|t| !have.contains(&bare(t)))
                .cloned()
                .collect(),
            remove_tags: k
                .tags
                .iter()
                .filter(|t| !want.contains(&bare(t)))
                .cloned()
                .collect(),
        };
        let c = self.inner.client.clone();
        let id = k.id.clone();
        let version = parachute::Version::new(k.updated_at.clone());
        match self.call(async move { c.update(&id, &version, &patch).await }) {
            Ok(n) => Ok(self.remember(path, &n)),
            Err(e) if matches!(e.conflict(), Some(Conflict::Stale { .. })) || e.is_not_found() => {
                self.forget(path);
                Err(VaultError::Changed {
                    path: path.to_string(),
                })
            }
            Err(e) => Err(vault_err(Some(path), e)),
        }
    }

    /// Creates the note at `path`; `Ok(None)` when a note has that path.
    fn create(&self, path: &str, content: &str) -> Result<Option<Version>, VaultError> {
        if let Some(id) = path.strip_prefix("_id/")
            && !id.contains('/')
        {
            // The name of a note without a path is never a path to create;
            // one derived from it (`_id/<id>.reply`) is.
            let c = self.inner.client.clone();
            let id = id.to_string();
            match self.call(async move { c.get(NoteRef::Id(&id)).await }) {
                Ok(_) => return Ok(None),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(vault_err(Some(path), e)),
            }
        }
        let parts = mapping::parts_of(content).map_err(|why| VaultError::Remote {
            what: format!("{path}.md: {why}"),
            transient: false,
        })?;
        let new = NewNote {
            path: Some(path.to_string()),
            content: parts.content,
            metadata: parts.metadata,
            tags: parts.tags,
        };
        let c = self.inner.client.clone();
        match self.call(async move { c.create(&new).await }) {
            Ok(n) => Ok(Some(self.remember(path, &n))),
            Err(e) if matches!(e.conflict(), Some(Conflict::Path { .. })) => Ok(None),
            Err(e) => Err(vault_err(Some(path), e)),
        }
    }

    /// Writes `content` over whatever is at `path`: a create, or (a re-run
    /// found the note there) an update of it as it is now.
    fn put(&self, path: &str, content: &str) -> Result<Version, VaultError> {
        for _ in 0..5 {
            if let Some(v) = self.create(path, content)? {
                return Ok(v);
            }
            let n = match self.fetch(path) {
                Ok(n) => n,
                // Deleted between the two: create it again.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(vault_err(Some(path), e)),
            };
            self.remember(path, &n);
            match self.update(path, &known_of(&n), content) {
                Err(VaultError::Changed { .. }) => continue,
                other => return other,
            }
        }
        Err(VaultError::Changed {
            path: path.to_string(),
        })
    }

    fn write_one(&self, w: &NoteWrite) -> Result<Version, VaultError> {
        check_rel_path(&w.path)?;
        // A turn has the token in its environment (for `send`); a reply
        // that printed it does not carry it into the vault.
        let content = self.inner.client.redact(&w.content);
        match w.base {
            Base::Any => self.put(&w.path, &content),
            Base::Read(version) => {
                let k = self.known_at(&w.path, version)?;
                self.update(&w.path, &k, &content)
            }
        }
    }

    fn list_query(&self, query: Query) -> Result<Vec<parachute::Note>, parachute::Error> {
        let c = self.inner.client.clone();
        self.call(async move { c.list(&query).await })
    }

    fn listing(&self, query: Query, prefix: &str) -> Listing {
        let mut out = Listing::default();
        let notes = match self.list_query(query) {
            Ok(n) => n,
            Err(e) => {
                out.skipped.push(Skipped {
                    rel: prefix.to_string(),
                    reason: format!("cannot list the vault: {}", vault_err(None, e)),
                });
                out.incomplete.push(prefix.to_string());
                return out;
            }
        };
        for n in notes {
            match path_of(&n) {
                Ok(path) => {
                    let version = self.remember(&path, &n);
                    if let parachute::Content::TooLarge { byte_size } = n.content {
                        out.skipped.push(Skipped {
                            rel: format!("{path}.md"),
                            reason: format!(
                                "note is {byte_size} bytes, over the {} byte limit (ignored)",
                                super::MAX_NOTE_BYTES
                            ),
                        });
                        continue;
                    }
                    out.entries.push(Entry { path, version });
                }
                Err(why) => out.skipped.push(Skipped {
                    rel: n.name(),
                    reason: format!("a path vaultrunner refuses ({why}); ignored"),
                }),
            }
        }
        out.entries.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The lease note's metadata as it stands.
    fn lease_state(&self) -> Result<Option<parachute::Note>, VaultError> {
        match self.fetch(LEASE_PATH) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(vault_err(Some(LEASE_PATH), e)),
        }
    }

    /// This runner's lease id (kept in the state folder across crashes).
    fn lease_id(&self) -> Result<String, VaultError> {
        let dir = self.state_dir()?;
        let file = dir.join("lease-id");
        if let Ok(id) = std::fs::read_to_string(&file)
            && !id.trim().is_empty()
        {
            return Ok(id.trim().to_string());
        }
        let id = uuid::Uuid::new_v4().to_string();
        std::fs::write(&file, &id).map_err(|e| super::io_err(&file, e))?;
        Ok(id)
    }

    /// One try at the lease: `true` when taken, `false` when it changed
    /// under us (try again), an error naming the holder when another
    /// runner's is current.
    fn take_lease(&self, lease_id: &str, text: &str) -> Result<bool, VaultError> {
        match self.lease_state()? {
            None => Ok(self.create(LEASE_PATH, text)?.is_some()),
            Some(n) => {
                let ours = meta_text(&n, "lease_id").as_deref() == Some(lease_id);
                if !ours && lease_current(&n) {
                    let who = meta_text(&n, "holder").unwrap_or_else(|| "another runner".into());
                    let until = meta_text(&n, "expires_at").unwrap_or_default();
                    return Err(VaultError::Locked {
                        holder: format!(
                            "the lease note {LEASE_PATH} is held by {who} until {until}; it expires 30 s after its holder stops renewing it"
                        ),
                    });
                }
                match self.update(LEASE_PATH, &known_of(&n), text) {
                    Ok(_) => Ok(true),
                    Err(VaultError::Changed { .. }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// The lease's text: who holds it, until when.
fn lease_text(lease_id: &str, holder: &str, until: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "---\nlease_id: {lease_id}\nholder: {holder:?}\nexpires_at: {}\n---\nThis note is vaultrunner's lease on this vault: while it is current, a second runner refuses to start. Do not edit it.\n",
        until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

fn meta_text(n: &parachute::Note, key: &str) -> Option<String> {
    match n.metadata.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// When a lease taken or renewed now expires.
fn lease_until() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::Duration::from_std(LEASE_TTL)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

/// Is a lease note current (not expired)?
fn lease_current(n: &parachute::Note) -> bool {
    meta_text(n, "expires_at")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .is_some_and(|t| t > chrono::Utc::now())
}

/// Who this process is, for the lease.
fn holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this machine".into());
    format!("vaultrunner pid {} on {host}", std::process::id())
}

/// Held while this runner has the lease; renews it, and releases it when
/// dropped.
struct Lease {
    vault: RemoteVault,
    lease_id: String,
    stop: CancellationToken,
    /// The state folder's file lock, released after the lease.
    _local: std::fs::File,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
        // Released at once: expired now.
        if let Ok(Some(n)) = self.vault.lease_state()
            && meta_text(&n, "lease_id").as_deref() == Some(self.lease_id.as_str())
        {
            let k = known_of(&n);
            let text = lease_text(&self.lease_id, &holder(), chrono::Utc::now());
            if let Err(e) = self.vault.update(LEASE_PATH, &k, &text) {
                tracing::warn!("the lease could not be released ({e}); it expires by itself");
            }
        }
    }
}

/// Renews the lease until `stop`; when another runner has taken it (the
/// server was out of reach for longer than the lease), `lost` is
/// cancelled: one runner per vault, so this one stops.
fn renew(vault: RemoteVault, lease_id: String, stop: CancellationToken, lost: CancellationToken) {
    let Some(rt) = vault.inner.bridge.0.as_ref() else {
        return;
    };
    let v = vault.clone();
    rt.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
            let (v2, id) = (v.clone(), lease_id.clone());
            let r = tokio::task::spawn_blocking(move || {
                // A compare-and-set on the version of the last renewal;
                // only when that is refused is the lease read again.
                let text = lease_text(&id, &holder(), lease_until());
                if let Some(k) = v2.cached(LEASE_PATH) {
                    match v2.update(LEASE_PATH, &k, &text) {
                        Err(VaultError::Changed { .. }) => {}
                        other => return other,
                    }
                }
                let n = v2.lease_state()?.ok_or_else(|| not_found(LEASE_PATH))?;
                if meta_text(&n, "lease_id").as_deref() != Some(id.as_str()) {
                    return Err(VaultError::Locked {
                        holder: meta_text(&n, "holder").unwrap_or_else(|| "another runner".into()),
                    });
                }
                let until = lease_until();
                v2.update(LEASE_PATH, &known_of(&n), &lease_text(&id, &holder(), until))
            })
            .await;
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(VaultError::Locked { holder })) => {
                    tracing::error!(
                        "the lease on this vault was taken by {holder} (this runner could not reach the vault for longer than the lease); this runner stops"
                    );
                    lost.cancel();
                    break;
                }
                Ok(Err(e)) => tracing::warn!("the lease could not be renewed: {e}"),
                Err(e) => tracing::warn!("the lease could not be renewed: {e}"),
            }
        }
    });
}

/// Why a remote vault gives no attachments.
const REMOTE_NO_FILES: &str = "attachments are not available on a remote vault";

impl Vault for RemoteVault {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn note_location(&self, path: &str) -> String {
        path.to_string()
    }

    fn state_dir(&self) -> Result<PathBuf, VaultError> {
        let dir = &self.inner.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
        Ok(dir.clone())
    }

    fn workspace(&self, agent: &str) -> PathBuf {
        let dir = self.inner.state_dir.join("agents").join(agent);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    fn list(&self) -> Listing {
        // The first listing (start-up) brings every note's content, so the
        // scan after it reads nothing one by one; later ones (the minute's
        // rescan) only versions, and the scan reads what changed.
        let first = !self
            .inner
            .listed
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        let query = if first {
            Query::default().with_content()
        } else {
            Query::default()
        };
        let listing = self.listing(query, "");
        if listing.entries.is_empty() && !listing.incomplete.is_empty() {
            self.inner
                .listed
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        listing
    }

    fn list_under(&self, prefix: &str) -> Listing {
        if check_rel_path(prefix).is_err() {
            return Listing::default();
        }
        self.listing(Query::default().under(&format!("{prefix}/")), prefix)
    }

    fn stat(&self, path: &str) -> Option<Version> {
        if let Some(k) = self.fresh(path) {
            return Some(k.version);
        }
        match self.fetch(path) {
            Ok(n) => Some(self.remember(path, &n)),
            Err(_) => None,
        }
    }

    fn read(&self, path: &str) -> Result<(String, Version), VaultError> {
        if let Some(Known {
            text: Some(text),
            version,
            ..
        }) = self.fresh(path)
        {
            return Ok((text, version));
        }
        let n = match self.fetch(path) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => {
                self.forget(path);
                return Err(not_found(path));
            }
            Err(e) => return Err(vault_err(Some(path), e)),
        };
        let version = self.remember(path, &n);
        match &n.content {
            parachute::Content::Text(body) => Ok((mapping::text_of(&n, body), version)),
            parachute::Content::TooLarge { byte_size } => Err(VaultError::Remote {
                what: format!(
                    "{path}.md: note is {byte_size} bytes, over the {} byte limit",
                    super::MAX_NOTE_BYTES
                ),
                transient: false,
            }),
            parachute::Content::Omitted { .. } => Ok((mapping::text_of(&n, ""), version)),
        }
    }

    fn write_in_order(
        &self,
        writes: &[NoteWrite],
        _plan: Plan,
    ) -> Result<Vec<Version>, PartialWrite> {
        let mut landed = Vec::with_capacity(writes.len());
        for w in writes {
            match self.write_one(w) {
                Ok(v) => landed.push(v),
                Err(error) => return Err(PartialWrite { landed, error }),
            }
        }
        Ok(landed)
    }

    fn create_new(&self, path: &str, content: &str) -> Result<bool, VaultError> {
        check_rel_path(path)?;
        let content = self.inner.client.redact(content);
        Ok(self.create(path, &content)?.is_some())
    }

    fn lock(&self) -> Result<VaultLock, VaultError> {
        // A second runner on this machine with the same state folder (and
        // so the same lease id) is stopped by the folder's file lock; one
        // elsewhere by the lease.
        let local = super::local::lock_file(&self.state_dir()?).map_err(|e| match e {
            VaultError::Locked { .. } => VaultError::Locked {
                holder: format!(
                    "another vaultrunner on this machine holds it, with the state folder {}",
                    self.inner.state_dir.display()
                ),
            },
            other => other,
        })?;
        let lease_id = self.lease_id()?;
        let until = lease_until();
        let text = lease_text(&lease_id, &holder(), until);
        // A server that is down or answers 5xx right now is tried again
        // with backoff for LOCK_PATIENCE; then the error says why.
        let deadline = crate::time::after(LOCK_PATIENCE);
        let mut pause = Duration::from_millis(250);
        let mut raced = 0;
        loop {
            match self.take_lease(&lease_id, &text) {
                Ok(true) => {
                    let stop = CancellationToken::new();
                    let lost = CancellationToken::new();
                    renew(self.clone(), lease_id.clone(), stop.clone(), lost.clone());
                    let lease = Lease {
                        vault: self.clone(),
                        lease_id,
                        stop,
                        _local: local,
                    };
                    return Ok(VaultLock::new(lease).with_lost(lost));
                }
                Ok(false) if raced < 4 => raced += 1,
                Ok(false) => {
                    return Err(VaultError::Locked {
                        holder: format!(
                            "the lease note {LEASE_PATH} keeps changing under another runner"
                        ),
                    });
                }
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!("taking the lease {LEASE_PATH}: {e}; trying again in {pause:?}");
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn is_locked(&self) -> bool {
        matches!(self.lease_state(), Ok(Some(n)) if lease_current(&n))
    }

    fn recover(&self) -> usize {
        0
    }

    fn watch(&self, sink: ChangeSink) -> Result<Watching, VaultError> {
        let Some(rt) = self.inner.bridge.0.as_ref() else {
            return Err(VaultError::Remote {
                what: "the vault is closed".into(),
                transient: false,
            });
        };
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        let v = self.clone();
        rt.spawn(async move { poll(v, sink, stop).await });
        Ok(Watching::new(guard))
    }

    fn rescan_every(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn settle(&self) -> Duration {
        Duration::ZERO
    }

    /// Attachments are not read from a Parachute Vault (its files are
    /// stored per note, not at vault paths a link names): a turn of a
    /// remote vault runs without them, and its reply says so.
    fn file(&self, _path: &str) -> Result<super::FileInfo, VaultError> {
        Err(VaultError::NoFiles(REMOTE_NO_FILES.into()))
    }

    fn find_files(&self, _names: &[String]) -> Result<Vec<String>, VaultError> {
        Err(VaultError::NoFiles(REMOTE_NO_FILES.into()))
    }

    fn read_file(&self, _path: &str, _max: u64) -> Result<Vec<u8>, VaultError> {
        Err(VaultError::NoFiles(REMOTE_NO_FILES.into()))
    }

    fn mcp_config(&self) -> Result<Option<PathBuf>, VaultError> {
        let dir = self.state_dir()?;
        let file = dir.join("mcp.json");
        let text = self.inner.client.mcp_config_json();
        if std::fs::read_to_string(&file).is_ok_and(|t| t == text) {
            return Ok(Some(file));
        }
        // Written to a temp file created 0600, then renamed into place:
        // the token is never readable by anyone else, not even for a moment.
        let mut b = tempfile::Builder::new();
        b.prefix(".mcp-").suffix(".tmp");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o600));
        }
        let mut tmp = b.tempfile_in(&dir).map_err(|e| super::io_err(&dir, e))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .map_err(|e| super::io_err(&file, e))?;
        tmp.persist(&file)
            .map_err(|e| super::io_err(&file, e.error))?;
        Ok(Some(file))
    }

    fn health(&self) -> Result<(), String> {
        match self
            .inner
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(why) => Err(format!("vault unreachable: {why}")),
            None => Ok(()),
        }
    }
}

/// The change poll: the notes vaultrunner reads, without content, every
/// `poll`: the newest [`POLL_PAGE`] of them, one request however long
/// the vault's history (new messages are new notes; an old note edited,
/// deleted or re-tagged is found by the minute's full scan). A note whose
/// version differs from what the vault last saw is reported. While the
/// server cannot be reached the pause doubles up to [`MAX_POLL_BACKOFF`];
/// when it is back, a scan.
async fn poll(v: RemoteVault, sink: ChangeSink, stop: CancellationToken) {
    // What the scans before the first poll saw, of the kinds it lists: a
    // note deleted before the first poll is reported gone too (not only
    // by the full listing a minute later).
    let mut seen: HashSet<String> = v
        .inner
        .known
        .lock()
        .map(|known| {
            known
                .iter()
                .filter(|(_, k)| {
                    k.tags
                        .iter()
                        .any(|t| POLLED_TAGS.iter().any(|p| p.eq_ignore_ascii_case(t)))
                })
                .map(|(path, _)| path.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut pause = v.inner.poll;
    let mut was_down = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sink.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let c = v.inner.client.clone();
        let mut query = Query::tagged(POLLED_TAGS);
        query.newest = Some(POLL_PAGE);
        let r = c.list(&query).await;
        v.note_health(&r);
        let notes = match r {
            Ok(n) => n,
            Err(e) => {
                // An answer that is not the API's (a proxy's page) or a
                // refusal backs off as a server that is down does, from
                // the poll interval: one bad answer is not 30 s of deafness.
                if !e.is_transient() && !was_down {
                    tracing::warn!("polling the vault: {e}");
                }
                was_down = true;
                pause = pause.saturating_mul(2).min(MAX_POLL_BACKOFF);
                continue;
            }
        };
        pause = v.inner.poll;
        if was_down {
            was_down = false;
            let _ = sink.send(Change::Rescan("the vault is reachable again".into()));
        }
        // A page that is not full holds every tagged note: one that was
        // there and is missing now is gone (deleted, or untagged). A full
        // page says nothing of older notes; the minute's scan does.
        let whole = notes.len() < POLL_PAGE as usize;
        let mut now_seen = HashSet::with_capacity(notes.len());
        for n in &notes {
            let Ok(path) = path_of(n) else { continue };
            let version = version_of(&n.updated_at);
            let changed = v.cached(&path).is_none_or(|k| k.version != version);
            v.remember(&path, n);
            if changed {
                let _ = sink.send(Change::Note(path.clone()));
            }
            now_seen.insert(path);
        }
        if whole {
            for gone in seen.difference(&now_seen) {
                v.forget(gone);
                let _ = sink.send(Change::Note(gone.clone()));
            }
        }
        seen = now_seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vault whose server is not there (open warns and goes on).
    fn offline(state: &std::path::Path) -> RemoteVault {
        RemoteVault::open(
            "http://127.0.0.1:9/vault/x",
            &RemoteOptions {
                token: Some("pvt_secret_token".into()),
                poll: Duration::from_secs(2),
                state_dir: Some(state.to_path_buf()),
            },
        )
        .unwrap()
    }

    #[test]
    fn the_mcp_config_is_a_file_only_its_user_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let v = offline(dir.path());
        let file = v.mcp_config().unwrap().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let server = &json["mcpServers"]["parachute-vault"];
        assert_eq!(server["url"], "http://127.0.0.1:9/vault/x/mcp");
        assert_eq!(
            server["headers"]["Authorization"],
            "Bearer pvt_secret_token"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // The token is nowhere else: not in the vault's Debug, not in its
        // health text.
        assert!(!format!("{v:?}").contains("pvt_secret_token"));
        let _ = v.list();
        assert!(v.health().unwrap_err().contains("unreachable"));
        assert!(!v.health().unwrap_err().contains("pvt_secret_token"));
    }

    #[test]
    fn a_missing_token_names_the_variable() {
        let e = RemoteVault::open("http://127.0.0.1:9/vault/x", &RemoteOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(TOKEN_ENV), "{e}");
    }

    #[test]
    fn versions_come_from_updated_at() {
        let a = version_of("2026-12-01T07:06:49.537Z");
        let b = version_of("2026-12-01T07:06:49.538Z");
        assert_ne!(a, b);
        assert_eq!(a.modified_ns, 1_796_108_809_537_000_000);
        assert_eq!(a, version_of("2026-12-01T07:06:49.537Z"));
    }
}
