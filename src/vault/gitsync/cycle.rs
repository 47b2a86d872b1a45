//! The sync cycle of a Git-synced folder: check the repository is in a
//! state vaultrunner may touch, commit its own writes, fetch, take in
//! upstream's changes, push fast-forward (SPEC §7).
//!
//! Every ref update is the last step and a compare-and-set (`update-ref
//! <ref> <new> <old>`): objects first, so a crash at any point leaves a
//! consistent repository. vaultrunner's commits are built along the
//! changed folders with `mktree` ([`super::tree`]); the work tree and the
//! user's index move for the changed paths only, by git's own rules
//! ([`super::checkout`]): what they staged is kept, and an uncommitted
//! edit stops the move rather than being overwritten.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::git::{Git, GitError, Head, RunOpts, Settings, Upstream};
use crate::note;
use crate::vault::{SyncState, SyncStep, Vault as _, VaultError};

use super::journal::Record;
use super::ops::{self, OwnChange, Replayed};
use super::{BATCH_MAX, BATCH_QUIET, GitVault, sync_err};

/// Push rounds (rejected as not a fast-forward: fetch, rebuild, again).
const PUSH_ROUNDS: usize = 5;
/// The longest wait between tries of an unreachable remote.
const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// Several push webhooks within this make one pull.
const HOOK_DEBOUNCE: Duration = Duration::from_secs(1);
/// An own record whose note is not (yet) on disk is kept this long (a
/// `send` beside serve journals before its rename).
const KEEP_UNSEEN: i64 = 120;
/// Names listed in a commit's first line.
const NAMES_IN_TITLE: usize = 5;

pub(super) const ZERO_OID: &str = "0000000000000000000000000000000000000000";

/// The repository a synced vault lives in.
#[derive(Debug)]
pub(super) struct Repo {
    pub git: Git,
    /// The vault's folder relative to the top of the work tree, `""` or
    /// ending in `/`.
    prefix: String,
    /// Bytes in an object name (20 for SHA-1, 32 for SHA-256).
    pub(super) oid_len: usize,
    /// vaultrunner's identity in commits.
    email: String,
}

/// Why a cycle stopped short.
#[derive(Debug)]
pub(super) enum Halt {
    /// A person must act (`reason` says what); turns go on.
    Pause(String),
    /// The remote cannot be reached; try again later.
    Backoff(String),
    /// Someone is typing: the work tree is updated a little later.
    Busy,
    /// Something failed that the next cycle may not meet (logged).
    Fail(String),
}

impl From<GitError> for Halt {
    fn from(e: GitError) -> Halt {
        Halt::Fail(e.to_string())
    }
}

pub(super) type Step<T> = Result<T, Halt>;

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = if r == 0 {
        String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
    } else {
        String::new()
    };
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

fn lines(out: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(out)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

pub(super) fn first_line(out: &[u8]) -> String {
    lines(out).next().unwrap_or_default().to_string()
}

impl Repo {
    pub(super) async fn open(root: &Path, settings: Settings) -> Result<Repo, GitError> {
        let git = Git::open_with(root, settings).await?;
        let top = std::fs::canonicalize(git.top()).unwrap_or_else(|_| git.top().to_path_buf());
        let rel = root.strip_prefix(&top).unwrap_or(Path::new(""));
        let mut prefix = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if !prefix.is_empty() {
            prefix.push('/');
        }
        // A repository git cannot read (a broken HEAD, a corrupt object
        // store) is refused now, not found out mid-sync.
        git.run(["rev-parse", "--git-path", "HEAD"], RunOpts::read())
            .await?;
        git.head().await?;
        let format = git
            .run(["rev-parse", "--show-object-format"], RunOpts::read())
            .await?;
        let oid_len = if first_line(&format.stdout) == "sha256" {
            32
        } else {
            20
        };
        Ok(Repo {
            git,
            prefix,
            oid_len,
            email: format!("vaultrunner@{}.invalid", host_name()),
        })
    }

    /// The path in the repository of a vault path.
    fn git_path(&self, vault_path: &str) -> String {
        format!("{}{vault_path}.md", self.prefix)
    }

    /// The vault path of a path in the repository, if it is a note of the
    /// vault.
    fn vault_path<'a>(&self, git_path: &'a str) -> Option<&'a str> {
        git_path.strip_prefix(&self.prefix)?.strip_suffix(".md")
    }

    fn ident(&self) -> RunOpts {
        RunOpts::default()
            .var("GIT_AUTHOR_NAME", "vaultrunner")
            .var("GIT_AUTHOR_EMAIL", self.email.as_str())
            .var("GIT_COMMITTER_NAME", "vaultrunner")
            .var("GIT_COMMITTER_EMAIL", self.email.as_str())
    }

    async fn rev(&self, rev: &str) -> Result<Option<String>, GitError> {
        self.git.rev_parse(rev).await
    }

    async fn is_ancestor(&self, a: &str, b: &str) -> Result<bool, GitError> {
        let out = self
            .git
            .run(
                ["merge-base", "--is-ancestor", a, b],
                RunOpts::read().ok_code(1),
            )
            .await?;
        Ok(out.code == 0)
    }

    /// The blobs `specs` name (`<rev>:<path>` or object names), `None` for
    /// each that names nothing (or not a blob) — one `cat-file --batch`.
    pub(super) async fn blobs(&self, specs: &[String]) -> Result<Vec<Option<Vec<u8>>>, GitError> {
        Ok(self
            .objects(specs)
            .await?
            .into_iter()
            .map(|o| o.and_then(|(kind, body)| (kind == "blob").then_some(body)))
            .collect())
    }

    /// The objects `specs` name, with their kinds (`blob`, `tree`, …),
    /// `None` for each that names nothing — one `cat-file --batch` for all.
    pub(super) async fn objects(
        &self,
        specs: &[String],
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, GitError> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let mut input = Vec::new();
        for s in specs {
            input.extend_from_slice(s.as_bytes());
            input.push(b'\n');
        }
        let out = self
            .git
            .run(["cat-file", "--batch"], RunOpts::read().input(input))
            .await?;
        let mut rest = out.stdout.as_slice();
        let mut found = Vec::with_capacity(specs.len());
        for spec in specs {
            let nl = memchr::memchr(b'\n', rest).ok_or_else(|| GitError::Parse {
                command: "git cat-file --batch".into(),
                what: format!("no answer for {spec}"),
            })?;
            let head = String::from_utf8_lossy(rest.get(..nl).unwrap_or_default()).into_owned();
            rest = rest.get(nl + 1..).unwrap_or_default();
            let mut f = head.split(' ');
            let (_oid, kind, size) = (f.next(), f.next(), f.next());
            match (kind, size.and_then(|s| s.parse::<usize>().ok())) {
                (Some(kind), Some(size)) => {
                    let body = rest.get(..size).unwrap_or_default().to_vec();
                    rest = rest.get(size + 1..).unwrap_or_default();
                    found.push(Some((kind.to_string(), body)));
                }
                // `<spec> missing`, `<spec> ambiguous`.
                _ => found.push(None),
            }
        }
        Ok(found)
    }

    /// Writes blobs into the object store, returning their names (one
    /// `hash-object` for all, through files in `tmp`).
    pub(super) async fn write_blobs(&self, tmp: &Path, texts: &[&str]) -> Step<Vec<String>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let dir = tempfile::Builder::new()
            .prefix("git-blobs")
            .tempdir_in(tmp)
            .map_err(|e| Halt::Fail(format!("{}: {e}", tmp.display())))?;
        let mut list = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let p = dir.path().join(i.to_string());
            std::fs::write(&p, t.as_bytes())
                .map_err(|e| Halt::Fail(format!("{}: {e}", p.display())))?;
            list.extend_from_slice(p.as_os_str().as_encoded_bytes());
            list.push(b'\n');
        }
        let out = self
            .git
            .run(
                ["hash-object", "-w", "--no-filters", "--stdin-paths"],
                RunOpts::default().input(list),
            )
            .await?;
        let oids: Vec<String> = lines(&out.stdout).map(str::to_string).collect();
        if oids.len() != texts.len() {
            return Err(Halt::Fail(
                "git hash-object named fewer blobs than given".into(),
            ));
        }
        Ok(oids)
    }

    async fn upstream(&self) -> Step<Upstream> {
        match self.git.upstream().await? {
            Some(u) if u.remote != "." => Ok(u),
            Some(_) => Err(Halt::Pause(
                "the branch tracks a local branch, not a remote; set its upstream with `git branch --set-upstream-to=origin/<branch>`".into(),
            )),
            None => Err(Halt::Pause(
                "the branch has no upstream: set one with `git push -u origin <branch>` or `git branch --set-upstream-to=origin/<branch>`".into(),
            )),
        }
    }
}

/// Commits `tree` on `parent` as vaultrunner, returning the commit.
async fn commit_tree(repo: &Repo, tree: &str, parent: Option<&str>, msg: &str) -> Step<String> {
    let mut args = vec!["commit-tree".to_string(), tree.to_string()];
    if let Some(p) = parent {
        args.push("-p".into());
        args.push(p.into());
    }
    args.push("-F".into());
    args.push("-".into());
    let out = repo
        .git
        .run(&args, repo.ident().input(msg.as_bytes().to_vec()))
        .await?;
    Ok(first_line(&out.stdout))
}

/// Moves `branch` from `old` (`None`: unborn) to `new`, only if it is
/// still at `old`.
async fn move_branch(
    repo: &Repo,
    branch: &str,
    new: &str,
    old: Option<&str>,
    why: &str,
) -> Step<()> {
    let r = format!("refs/heads/{branch}");
    repo.git
        .run(
            ["update-ref", "-m", why, &r, new, old.unwrap_or(ZERO_OID)],
            RunOpts::default(),
        )
        .await
        .map_err(|e| match e {
            GitError::Failed { stderr, .. } if stderr.contains(".lock") => Halt::Pause(format!(
                "{branch} is locked by another git ({stderr}); sync goes on once that git is done"
            )),
            e => Halt::Fail(e.to_string()),
        })?;
    Ok(())
}

/// Moves the user's index to vaultrunner's commit for the notes it
/// committed, where the index still had the old commit's version (what
/// the user staged stays staged). The entries get the committed blobs
/// (an edit on disk on top shows as unstaged; the stat data is refreshed
/// by the next `git status`).
async fn move_index(repo: &Repo, old: &str, committed: &BTreeMap<String, String>) -> Step<()> {
    let paths: Vec<&str> = committed.keys().map(String::as_str).collect();
    let before = super::checkout::tree_entries(repo, old, &paths).await?;
    let staged = super::checkout::index_entries(repo, &paths).await?;
    let mut info = Vec::new();
    for (path, oid) in committed {
        if staged.get(path) != before.get(path) {
            tracing::info!("git sync: {path} has staged changes; the index keeps them");
            continue;
        }
        info.extend_from_slice(format!("100644 {oid}\t{path}").as_bytes());
        info.push(0);
    }
    if info.is_empty() {
        return Ok(());
    }
    // The committed blob, never the file hashed now: a turn may have
    // written it again since it was read for the commit.
    let started = std::time::SystemTime::now();
    match repo
        .git
        .run(
            ["update-index", "-z", "--index-info"],
            RunOpts::default().input(info),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(index_failure(repo, e, started)),
    }
}

/// What a failed call that held the user's index means: a lock of its
/// own (left by a call vaultrunner killed) is removed; another is a pause.
fn index_failure(repo: &Repo, e: GitError, started: std::time::SystemTime) -> Halt {
    if let GitError::Timeout { .. } = &e
        && let Ok(Some(lock)) = repo.git.index_lock()
        && std::fs::symlink_metadata(&lock.path)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= started)
    {
        // Ours: the call that made it was killed with its process group.
        let _ = std::fs::remove_file(&lock.path);
        return Halt::Fail(format!("{e}; removed the index.lock it left"));
    }
    match e {
        GitError::Failed { stderr, .. } if stderr.contains("index.lock") => {
            Halt::Pause(stale_lock_reason(repo))
        }
        e => Halt::Fail(e.to_string()),
    }
}

fn stale_lock_reason(repo: &Repo) -> String {
    let path = repo.git.git_dir().join("index.lock");
    format!(
        "{} exists: another git is running in this clone, or one crashed and left it. vaultrunner never removes it; if no git is running, remove it yourself",
        path.display()
    )
}

/// Is the repository in a state sync may touch? The branch and its
/// upstream when it is.
async fn check_safe(repo: &Repo) -> Step<(String, Upstream)> {
    let branch = match repo.git.head().await? {
        Head::Detached(oid) => {
            return Err(Halt::Pause(format!(
                "HEAD is detached (at {}); check out the branch to sync (`git switch main`)",
                oid.get(..12).unwrap_or(&oid)
            )));
        }
        Head::Branch(b) => b,
    };
    if let Some(op) = repo.git.in_progress().first() {
        return Err(Halt::Pause(format!(
            "{op} is in progress in {}; finish or abort it and sync goes on",
            repo.git.top().display()
        )));
    }
    if repo.git.index_lock()?.is_some() {
        return Err(Halt::Pause(stale_lock_reason(repo)));
    }
    let ref_lock = repo.git.git_dir().join(format!("refs/heads/{branch}.lock"));
    if ref_lock.exists() {
        return Err(Halt::Pause(format!(
            "{} exists (a git updating {branch}, or one that crashed); remove it if no git is running",
            ref_lock.display()
        )));
    }
    let up = repo.upstream().await?;
    Ok((branch, up))
}

/// The value `rendered` (one line of YAML) stands for.
fn value_of(rendered: &str) -> Option<serde_yaml::Value> {
    serde_yaml::from_str(rendered).ok()
}

/// The keys `changes` set, each at the value the note on disk shows when
/// that is one of the values vaultrunner wrote for it — not always the
/// last: a write a crash cut short never landed, and the next one was
/// computed against the disk without it — in the order the disk has them
/// (a removed key last). A key the disk shows at none of vaultrunner's
/// values is someone else's, or never landed: left out.
fn landed_keys<'a>(
    changes: impl Iterator<Item = &'a OwnChange>,
    disk: &str,
) -> Vec<(String, Option<String>)> {
    let Ok(meta) = note::parse_yaml(note::split(disk).yaml) else {
        return Vec::new();
    };
    let mut written: Vec<(&str, Vec<Option<&str>>)> = Vec::new();
    for change in changes {
        let OwnChange::Keys(ks) = change else {
            continue;
        };
        for (k, val) in ks {
            match written.iter_mut().find(|(x, _)| x == k) {
                Some((_, vals)) => vals.push(val.as_deref()),
                None => written.push((k.as_str(), vec![val.as_deref()])),
            }
        }
    }
    let mut out: Vec<(usize, String, Option<String>)> = Vec::new();
    for (key, vals) in written {
        match meta.get(key) {
            None if vals.contains(&None) => out.push((usize::MAX, key.to_string(), None)),
            None => {}
            Some(now) => {
                let shown = vals
                    .iter()
                    .flatten()
                    .find(|r| value_of(r).as_ref() == Some(now));
                if let Some(r) = shown {
                    let at = meta
                        .keys()
                        .position(|k| k.as_str() == Some(key))
                        .unwrap_or(usize::MAX);
                    out.push((at, key.to_string(), Some((*r).to_string())));
                }
            }
        }
    }
    out.sort_by_key(|(at, _, _)| *at);
    out.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// Are `a` and `b` the same note with its keys in another order: the same
/// body, the same front-matter lines (no comment, spelling or line of
/// anyone's added), and the same keys and values?
fn same_note(a: &str, b: &str) -> bool {
    let (x, y) = (note::split(a), note::split(b));
    fn lines(t: &str) -> Vec<&str> {
        let mut l: Vec<&str> = t.lines().collect();
        l.sort_unstable();
        l
    }
    x.body == y.body
        && lines(x.yaml) == lines(y.yaml)
        && matches!(
            (note::parse_yaml(x.yaml), note::parse_yaml(y.yaml)),
            (Ok(m), Ok(n)) if m == n
        )
}

/// Forces `keys` onto `text`.
fn set_keys(text: &str, keys: &[(String, Option<String>)]) -> Option<String> {
    let change = OwnChange::Keys(keys.to_vec());
    match ops::replay(&change, Some(text), Some(text)) {
        Replayed::Write(t) => Some(t),
        Replayed::Unchanged => Some(text.to_string()),
        _ => None,
    }
}

/// An inbound note set to handled or error by these keys.
fn answers(keys: &[(String, Option<String>)]) -> bool {
    keys.iter().any(|(k, v)| {
        k == "status"
            && v.as_deref()
                .is_some_and(|v| matches!(v.trim_matches('"'), "handled" | "error"))
    })
}

fn title(answered: &[String], wrote: usize) -> String {
    if answered.is_empty() {
        return format!(
            "vaultrunner: wrote {wrote} note{}",
            if wrote == 1 { "" } else { "s" }
        );
    }
    let mut t = format!(
        "vaultrunner: answered {}",
        answered
            .iter()
            .take(NAMES_IN_TITLE)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if answered.len() > NAMES_IN_TITLE {
        t.push_str(&format!(
            " and {} more",
            answered.len().saturating_sub(NAMES_IN_TITLE)
        ));
    }
    t
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Did vaultrunner make the last commit that touched `path`?
async fn last_author_is_vaultrunner(repo: &Repo, path: &str) -> Step<bool> {
    let out = repo
        .git
        .run(
            ["log", "-1", "--format=%ae", "HEAD", "--", path],
            RunOpts::read().var("GIT_LITERAL_PATHSPECS", "1"),
        )
        .await?;
    let email = first_line(&out.stdout);
    Ok(email.starts_with("vaultrunner@") && email.ends_with(".invalid"))
}

/// Commits what the journal says vaultrunner wrote, where the notes on
/// disk still show it, rebuilt onto the committed version of each note.
async fn commit_own(v: &GitVault, repo: &Repo, branch: &str) -> Step<()> {
    if v.sh.journal.is_empty() {
        return Ok(());
    }
    // Under the work tree's lock, so the notes read are exactly what the
    // taken records wrote (a write records, then renames, under it).
    let (records, texts) = {
        let sh = v.sh.clone();
        tokio::task::spawn_blocking(move || {
            let _tree = sh.tree.hold();
            let (records, bad) = sh.journal.take()?;
            if bad > 0 {
                tracing::warn!("git sync: {bad} torn line(s) in the journal passed over");
            }
            let mut texts: HashMap<String, Option<String>> = HashMap::new();
            for r in &records {
                texts
                    .entry(r.path.clone())
                    .or_insert_with(|| sh.local.read(&r.path).ok().map(|(t, _)| t));
            }
            Ok::<_, std::io::Error>((records, texts))
        })
        .await
        .map_err(|e| Halt::Fail(e.to_string()))?
        .map_err(|e| Halt::Fail(format!("the git journal: {e}")))?
    };
    let head = repo.rev("HEAD").await?;
    let mut by_path: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_path.entry(r.path.clone()).or_default().push(r);
    }
    let specs: Vec<String> = by_path
        .keys()
        .map(|p| {
            format!(
                "{}:{}",
                head.as_deref().unwrap_or(ZERO_OID),
                repo.git_path(p)
            )
        })
        .collect();
    let committed = if head.is_some() {
        repo.blobs(&specs).await?
    } else {
        vec![None; specs.len()]
    };
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut answered = Vec::new();
    let mut unseen = Vec::new();
    let mut held = Vec::new();
    let mut new_paths = Vec::new();
    for ((path, recs), old) in by_path.iter().zip(committed) {
        let disk = texts.get(path).cloned().flatten();
        let old = old.map(|b| String::from_utf8_lossy(&b).into_owned());
        let Some(disk) = disk else {
            unseen.extend(
                recs.iter()
                    .filter(|r| now_secs() - r.at < KEEP_UNSEEN)
                    .cloned(),
            );
            continue;
        };
        let whole = recs
            .iter()
            .rposition(|r| matches!(r.change, OwnChange::Whole(_)));
        // A note vaultrunner wrote whole, with its later keys: committed
        // only if it is what is on disk. The last such version the disk
        // is: a later one a crash cut short (its line written, never
        // renamed) or a compare-and-set refused is not the note.
        let as_written = whole.and_then(|last| {
            let found = recs.iter().enumerate().rev().find_map(|(i, r)| {
                let OwnChange::Whole(c) = &r.change else {
                    return None;
                };
                let later = landed_keys(recs.iter().skip(i + 1).map(|r| &r.change), &disk);
                let cur = set_keys(c, &later).unwrap_or_else(|| c.clone());
                (cur == disk).then_some(cur)
            });
            if found.is_none() {
                if now_secs() - recs.last().map_or(0, |r| r.at) < KEEP_UNSEEN {
                    unseen.extend(recs.iter().skip(last).cloned());
                }
                tracing::debug!(
                    "git sync: {path}.md is not as vaultrunner wrote it whole; only its keys on disk are committed"
                );
            }
            found
        });
        let text = match as_written {
            Some(cur) => {
                if let Some(kind) = ops::find_secret(&cur) {
                    held.push(format!("{path}.md: looks like it holds {kind}"));
                    continue;
                }
                // A note vaultrunner rewrote whole (a re-run's reply) over a
                // version someone else committed (the phone edited the
                // reply): theirs is kept beside it.
                if let Some(old) = old.as_deref()
                    && old != cur
                    && !last_author_is_vaultrunner(repo, &repo.git_path(path)).await?
                {
                    let copy = ops::conflict_copy_path(path, chrono::Utc::now());
                    if v.sh.local.create_new(&copy, old).unwrap_or(false) {
                        tracing::warn!(
                            "git sync: {path}.md was edited by someone else and rewritten by vaultrunner; their version is kept as {copy}.md"
                        );
                        files.insert(repo.git_path(&copy), old.to_string());
                    }
                }
                cur
            }
            None => {
                // Only keys, onto the committed note; a note never
                // committed is the user's to commit.
                let Some(old) = old.as_deref() else { continue };
                let mut replayed = old.to_string();
                for r in recs {
                    if let OwnChange::Keys(ks) = &r.change {
                        replayed = set_keys(&replayed, ks).unwrap_or(replayed);
                    }
                }
                let keys = landed_keys(recs.iter().map(|r| &r.change), &disk);
                if keys.is_empty() {
                    continue;
                }
                let values: String = keys
                    .iter()
                    .filter_map(|(_, val)| val.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n");
                if let Some(kind) = ops::find_secret(&values) {
                    held.push(format!("{path}.md: looks like it holds {kind}"));
                    continue;
                }
                if answers(&keys) {
                    answered.push(path.clone());
                }
                // Every write replayed onto the committed note gives the
                // note on disk when nobody else edited it: that text,
                // byte for byte. Else only the keys the disk shows — and
                // the disk's own bytes when that is the same note (the
                // same keys and values, the same body), so a note whose
                // committed keys stand in another order comes back in step.
                if replayed == disk {
                    replayed
                } else {
                    match set_keys(old, &keys) {
                        Some(t) if same_note(&t, &disk) => disk,
                        Some(t) if t != old => t,
                        _ => continue,
                    }
                }
            }
        };
        if old.is_none() {
            new_paths.push(repo.git_path(path));
        }
        files.insert(repo.git_path(path), text);
    }
    // Never an ignored path (a file git tracks is not ignored: only new
    // ones are asked, without reading the index).
    if !new_paths.is_empty() {
        let mut input = Vec::new();
        for p in &new_paths {
            input.extend_from_slice(p.as_bytes());
            input.push(0);
        }
        let out = repo
            .git
            .run(
                ["check-ignore", "-z", "--no-index", "--stdin"],
                RunOpts::read().ok_code(1).input(input),
            )
            .await?;
        for p in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            let p = String::from_utf8_lossy(p).into_owned();
            tracing::info!("git sync: {p} is ignored by .gitignore; not committed");
            files.remove(&p);
        }
    }
    if !held.is_empty() {
        for h in &held {
            tracing::warn!("git sync: kept out of the commit: {h}");
        }
        v.set_status(|s| {
            for h in held {
                if !s.held.contains(&h) {
                    s.held.push(h);
                }
            }
        });
    }
    if !files.is_empty() {
        let built = super::tree::build_tree(repo, &v.sh.state_dir, head.as_deref(), &files).await?;
        let old_tree = match &head {
            Some(h) => repo.rev(&format!("{h}^{{tree}}")).await?,
            None => None,
        };
        if old_tree.as_deref() != Some(built.tree.as_str()) {
            answered.retain(|p| files.contains_key(&repo.git_path(p)));
            let mut msg = title(&answered, files.len());
            msg.push_str("\n\n");
            for p in files.keys() {
                msg.push_str(&format!("- {p}\n"));
            }
            let new = commit_tree(repo, &built.tree, head.as_deref(), &msg).await?;
            // The index follows the branch; a crash between the two leaves
            // this intent, and the next cycle moves the index then.
            let intent = head.as_ref().map(|h| IndexMove {
                old: h.clone(),
                new: new.clone(),
                blobs: built.blobs.clone(),
            });
            if let Some(i) = &intent {
                i.write(&v.sh.state_dir)?;
            }
            move_branch(repo, branch, &new, head.as_deref(), "vaultrunner: commit").await?;
            tracing::info!(
                "git: committed {} ({})",
                short(&new),
                msg.lines().next().unwrap_or_default()
            );
            if let Some(i) = &intent {
                match move_index(repo, &i.old, &i.blobs).await {
                    Ok(()) => IndexMove::done(&v.sh.state_dir),
                    // Kept: the next cycle tries again.
                    Err(h) => tracing::warn!(
                        "git sync: the index was not moved to vaultrunner's commit: {h:?}"
                    ),
                }
            }
        }
    }
    v.sh.journal
        .done()
        .map_err(|e| Halt::Fail(format!("the git journal: {e}")))?;
    if !unseen.is_empty() {
        let _ = v.sh.journal.append(&unseen);
    }
    Ok(())
}

fn short(oid: &str) -> &str {
    oid.get(..10).unwrap_or(oid)
}

/// Fetches the upstream branch into its tracking ref.
async fn fetch(repo: &Repo, up: &Upstream) -> Step<Option<String>> {
    let spec = format!("+{}:{}", up.merge, up.tracking);
    let r = repo
        .git
        .run(
            [
                "-c",
                "gc.auto=0",
                "-c",
                "maintenance.auto=false",
                "fetch",
                "--no-tags",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--quiet",
                up.remote.as_str(),
                spec.as_str(),
            ],
            RunOpts::default(),
        )
        .await;
    match r {
        Ok(_) => Ok(repo.rev(&up.tracking).await?),
        Err(GitError::Failed { stderr, .. }) if stderr.contains("couldn't find remote ref") => {
            // The branch is not on the remote yet: the push makes it.
            Ok(None)
        }
        Err(e) => Err(Halt::Backoff(format!(
            "fetching from {}: {}",
            up.remote,
            remote_why(&e)
        ))),
    }
}

/// What git said when it could not reach a remote: its own words (the
/// command is known from the context).
fn remote_why(e: &GitError) -> String {
    match e {
        GitError::Failed { stderr, .. } if !stderr.trim().is_empty() => stderr
            .lines()
            .map(|l| l.trim().trim_start_matches("fatal: "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        e => e.to_string(),
    }
}

/// The commits `range` lists, with their authors' addresses.
async fn commits(repo: &Repo, range: &str) -> Step<Vec<(String, String, String)>> {
    let out = repo
        .git
        .run(
            ["log", "--format=%H%x00%ae%x00%B%x01", range, "--"],
            RunOpts::read(),
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .split('\u{1}')
        .filter_map(|c| {
            let mut f = c.trim_start_matches('\n').splitn(3, '\0');
            let (oid, email, msg) = (f.next()?, f.next()?, f.next().unwrap_or_default());
            (!oid.is_empty()).then(|| (oid.to_string(), email.to_string(), msg.trim().to_string()))
        })
        .collect())
}

/// vaultrunner's own commits `mb..head`, replayed onto `upstream`: the
/// new commit (parent `upstream`).
async fn rebuild(v: &GitVault, repo: &Repo, mb: &str, head: &str, upstream: &str) -> Step<String> {
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    let mine: Vec<_> = super::checkout::changes(repo, mb, head, false)
        .await?
        .into_iter()
        .filter_map(|c| Some((c.path, c.old.map(|(_, o)| o), c.new?.1)))
        .collect();
    // Every blob in one call: upstream's version, the base and ours.
    let mut specs = Vec::with_capacity(mine.len() * 3);
    for (path, base, ours) in &mine {
        specs.push(format!("{upstream}:{path}"));
        specs.push(base.clone().unwrap_or_else(|| ZERO_OID.to_string()));
        specs.push(ours.clone());
    }
    let mut got = repo.blobs(&specs).await?.into_iter();
    let mut notes = Vec::with_capacity(mine.len());
    for (path, base, _) in &mine {
        let (target, b, ours) = (
            got.next().flatten(),
            got.next().flatten(),
            got.next().flatten(),
        );
        notes.push((
            path.clone(),
            base.is_some(),
            text(target),
            text(b),
            text(ours).unwrap_or_default(),
        ));
    }
    // Notes gone upstream that vaultrunner changed: renamed? The stamp
    // goes to the new path.
    let mut moved: HashMap<String, String> = HashMap::new();
    if notes
        .iter()
        .any(|(_, had, target, _, _)| *had && target.is_none())
    {
        for c in super::checkout::changes(repo, mb, upstream, true).await? {
            if let Some(to) = c.to {
                moved.insert(c.path, to);
            }
        }
    }
    let renamed: Vec<String> = notes
        .iter()
        .filter(|(p, had, target, _, _)| *had && target.is_none() && moved.contains_key(p))
        .filter_map(|(p, _, _, _, _)| moved.get(p).map(|to| format!("{upstream}:{to}")))
        .collect();
    let mut renamed_got = repo.blobs(&renamed).await?.into_iter();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let stamp = chrono::Utc::now();
    for (path, had, mut target, base, ours) in notes {
        let mut target_path = path.clone();
        if had
            && target.is_none()
            && let Some(to) = moved.get(&path)
        {
            target_path = to.clone();
            target = text(renamed_got.next().flatten());
        }
        let change = ops::own_change(base.as_deref(), &ours);
        match ops::replay(&change, base.as_deref(), target.as_deref()) {
            Replayed::Unchanged => {}
            Replayed::Write(t) => {
                files.insert(target_path, t);
            }
            Replayed::Conflict { ours, theirs } => {
                let copy = match repo.vault_path(&target_path) {
                    Some(vp) => repo.git_path(&ops::conflict_copy_path(vp, stamp)),
                    None => format!(
                        "{target_path} (conflict {})",
                        stamp.format("%Y-%m-%d %H%M%S")
                    ),
                };
                tracing::warn!(
                    "git sync: {target_path} was edited upstream and rewritten by vaultrunner; the upstream version is kept as {copy}"
                );
                files.insert(copy, theirs);
                files.insert(target_path, ours);
            }
            Replayed::Skipped { reason } => {
                tracing::warn!(
                    "git sync: vaultrunner's change to {target_path} not replayed: {reason}"
                );
            }
        }
    }
    let mine = commits(repo, &format!("{upstream}..{head}")).await?;
    let mut answered: Vec<String> = Vec::new();
    let mut body = String::new();
    for (_, _, msg) in mine.iter().rev() {
        let first = msg.lines().next().unwrap_or_default();
        if let Some(names) = first.strip_prefix("vaultrunner: answered ") {
            let names = names.split(" and ").next().unwrap_or(names);
            answered.extend(names.split(", ").map(str::to_string));
        }
        for l in msg.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            body.push_str(l);
            body.push('\n');
        }
    }
    let msg = format!("{}\n\n{body}", title(&answered, files.len().max(1)));
    let built = super::tree::build_tree(repo, &v.sh.state_dir, Some(upstream), &files).await?;
    commit_tree(repo, &built.tree, Some(upstream), &msg).await
}

/// Takes in `upstream` (fetched): fast-forward, or vaultrunner's own
/// commits rebuilt on it; then the work tree and index follow.
async fn integrate(v: &GitVault, repo: &Repo, branch: &str, upstream: &str) -> Step<bool> {
    let Some(head) = repo.rev("HEAD").await? else {
        return Ok(false);
    };
    if head == upstream || repo.is_ancestor(upstream, &head).await? {
        return Ok(false);
    }
    let target = if repo.is_ancestor(&head, upstream).await? {
        upstream.to_string()
    } else {
        let mine = commits(repo, &format!("{upstream}..{head}")).await?;
        let foreign: Vec<&str> = mine
            .iter()
            // Any host's vaultrunner (a rebuilt container has a new name).
            .filter(|(_, email, _)| {
                !(email.starts_with("vaultrunner@") && email.ends_with(".invalid"))
            })
            .map(|(oid, _, _)| short(oid))
            .collect();
        if !foreign.is_empty() {
            return Err(Halt::Pause(format!(
                "{branch} has {} commit(s) not on its upstream that vaultrunner did not make ({}); push or rebase them yourself and sync goes on",
                foreign.len(),
                foreign.join(", ")
            )));
        }
        let out = repo
            .git
            .run(
                ["merge-base", head.as_str(), upstream],
                RunOpts::read().ok_code(1),
            )
            .await?;
        let mb = first_line(&out.stdout);
        if mb.is_empty() {
            return Err(Halt::Pause(format!(
                "{branch} and its upstream share no history; sync them by hand"
            )));
        }
        rebuild(v, repo, &mb, &head, upstream).await?
    };
    update_worktree(v, repo, branch, &head, &target).await?;
    Ok(true)
}

/// Moves the work tree, the index and then the branch from `head` to
/// `target`, unless someone typed within the settle window; git refuses
/// (and nothing changes) where an uncommitted edit would be overwritten.
async fn update_worktree(
    v: &GitVault,
    repo: &Repo,
    branch: &str,
    head: &str,
    target: &str,
) -> Step<()> {
    let Some(s) = &v.sh.sync else { return Ok(()) };
    let settle = s.cfg.settle;
    let typing = s
        .last_external
        .lock()
        .map(|t| t.is_some_and(|t| t.elapsed() < settle))
        .unwrap_or(false);
    if typing {
        return Err(Halt::Busy);
    }
    let paths = super::checkout::changes(repo, head, target, false).await?;
    for c in &paths {
        let full = repo.git.top().join(&c.path);
        if std::fs::symlink_metadata(&full)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m.elapsed().is_ok_and(|e| e < settle))
        {
            return Err(Halt::Busy);
        }
    }
    let moving = v.sh.state_dir.join("git-moving");
    let _ = super::journal::write_durably(&moving, format!("{head} {target}\n").as_bytes());
    let guard = {
        let sh = v.sh.clone();
        tokio::task::spawn_blocking(move || TreeHold::take(sh))
            .await
            .map_err(|e| Halt::Fail(e.to_string()))?
    };
    // A turn wrote one of these notes since the commit (during the
    // fetch): committed first, next cycle, rather than taken for
    // someone's edit.
    let pending = v.sh.journal.paths();
    if paths.iter().any(|c| {
        repo.vault_path(&c.path)
            .is_some_and(|p| pending.contains(p))
    }) {
        drop(guard);
        let _ = std::fs::remove_file(&moving);
        return Err(Halt::Busy);
    }
    let started = std::time::SystemTime::now();
    // The changed paths only, where git would not filter them; else git
    // itself (stat data first: entries vaultrunner set from a blob have
    // none, so only a real edit counts as one).
    let r = match super::checkout::move_paths(repo, &paths).await {
        Ok(super::checkout::Fast::Done) => Ok(()),
        Err(h) => {
            drop(guard);
            let _ = std::fs::remove_file(&moving);
            return Err(h);
        }
        Ok(super::checkout::Fast::No) => {
            match repo
                .git
                .run(
                    ["update-index", "-q", "--refresh"],
                    RunOpts::default().ok_code(1),
                )
                .await
            {
                Ok(_) => repo
                    .git
                    .run(["read-tree", "-m", "-u", head, target], RunOpts::default())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = r {
        drop(guard);
        let _ = std::fs::remove_file(&moving);
        return Err(match e {
            GitError::Failed { stderr, .. }
                if stderr.contains("would be overwritten") || stderr.contains("not uptodate") =>
            {
                Halt::Pause(format!(
                    "notes changed upstream have uncommitted edits here, which are kept: {}. Commit or undo those edits and sync goes on",
                    stderr.replace('\n', " ")
                ))
            }
            e => index_failure(repo, e, started),
        });
    }
    let r = move_branch(repo, branch, target, Some(head), "vaultrunner: pull").await;
    drop(guard);
    let _ = std::fs::remove_file(&moving);
    r?;
    // What moved, for a turn whose message moved under it; what changed,
    // to the change feed.
    let may_have_moved =
        paths.iter().any(|c| c.old.is_none()) && paths.iter().any(|c| c.new.is_none());
    if may_have_moved
        && let Ok(renames) = super::checkout::changes(repo, head, target, true).await
        && let Ok(mut m) = s.moved.lock()
    {
        for c in renames {
            if let (Some(f), Some(t)) = (
                repo.vault_path(&c.path),
                c.to.as_deref().and_then(|t| repo.vault_path(t)),
            ) {
                m.insert(f.to_string(), t.to_string());
            }
        }
        if m.len() > 4096 {
            m.clear();
        }
    }
    if let Ok(f) = s.feed.lock()
        && let Some(sink) = f.as_ref()
    {
        if paths.len() > 1000 {
            let _ = sink.send(crate::vault::Change::Rescan(format!(
                "a git pull changed {} files",
                paths.len()
            )));
        } else {
            for c in &paths {
                if let Some(vp) = repo.vault_path(&c.path) {
                    let _ = sink.send(crate::vault::Change::Note(vp.to_string()));
                }
            }
        }
    }
    tracing::info!(
        "git: pulled {}..{} ({} file(s))",
        short(head),
        short(target),
        paths.len()
    );
    Ok(())
}

/// Finishes a work-tree update a crash cut short: the index and files
/// already at the target, the branch not yet.
/// A commit's move of the user's index to it, kept from before the branch
/// moves until the index has moved (`.vaultrunner/git-index-move.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct IndexMove {
    /// The commit the index was at.
    old: String,
    /// vaultrunner's commit.
    new: String,
    /// What it committed: git path → blob.
    blobs: BTreeMap<String, String>,
}

impl IndexMove {
    const FILE: &str = "git-index-move.json";

    fn write(&self, state_dir: &Path) -> Step<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Halt::Fail(e.to_string()))?;
        super::journal::write_durably(&state_dir.join(Self::FILE), &bytes)
            .map_err(|e| Halt::Fail(format!("{}: {e}", state_dir.join(Self::FILE).display())))
    }

    fn done(state_dir: &Path) {
        let _ = std::fs::remove_file(state_dir.join(Self::FILE));
    }
}

/// Moves the index to vaultrunner's commit where a crash cut that short
/// (the branch moved, the index not yet): else `git status` shows the
/// commit's notes as staged deletions and untracked files.
async fn finish_index_move(v: &GitVault, repo: &Repo) -> Step<()> {
    let Ok(bytes) = std::fs::read(v.sh.state_dir.join(IndexMove::FILE)) else {
        return Ok(());
    };
    if let Ok(m) = serde_json::from_slice::<IndexMove>(&bytes)
        && repo.rev("HEAD").await?.as_deref() == Some(m.new.as_str())
    {
        // A pause (someone's index.lock) keeps the intent for later.
        move_index(repo, &m.old, &m.blobs).await?;
        tracing::info!("git sync: moved the index to a commit a crash cut short");
    }
    IndexMove::done(&v.sh.state_dir);
    Ok(())
}

async fn finish_move(v: &GitVault, repo: &Repo, branch: &str) -> Step<()> {
    let moving = v.sh.state_dir.join("git-moving");
    let Ok(text) = std::fs::read_to_string(&moving) else {
        return Ok(());
    };
    let mut f = text.split_whitespace();
    if let (Some(from), Some(to)) = (f.next(), f.next())
        && repo.rev("HEAD").await?.as_deref() == Some(from)
    {
        let out = repo
            .git
            .run(
                ["diff-index", "--cached", "--quiet", to, "--"],
                RunOpts::read().ok_code(1),
            )
            .await?;
        if out.code == 0 {
            move_branch(
                repo,
                branch,
                to,
                Some(from),
                "vaultrunner: pull (finished after a crash)",
            )
            .await?;
            tracing::info!("git sync: finished a pull a crash cut short");
        }
    }
    let _ = std::fs::remove_file(&moving);
    Ok(())
}

enum Pushed {
    Done,
    Rejected,
}

async fn push(repo: &Repo, branch: &str, up: &Upstream) -> Step<Pushed> {
    let spec = format!("refs/heads/{branch}:{}", up.merge);
    let r = repo
        .git
        .run(
            ["push", "--porcelain", up.remote.as_str(), spec.as_str()],
            RunOpts::default().ok_code(1),
        )
        .await;
    let out = match r {
        Ok(o) => o,
        Err(e) => {
            return Err(Halt::Backoff(format!(
                "pushing to {}: {}",
                up.remote,
                remote_why(&e)
            )));
        }
    };
    if out.code == 0 {
        return Ok(Pushed::Done);
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let remote_says: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("remote:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for line in stdout.lines() {
        if !line.starts_with('!') {
            continue;
        }
        if line.contains("[remote rejected]") {
            return Err(Halt::Pause(format!(
                "{} refused the push: {}{}",
                up.remote,
                line.rsplit('\t').next().unwrap_or(line).trim(),
                if remote_says.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", remote_says.join(" "))
                }
            )));
        }
        if line.contains("[rejected]") {
            return Ok(Pushed::Rejected);
        }
    }
    if stdout.contains("Done") || out.stderr.contains("hook") {
        return Err(Halt::Pause(format!(
            "the push was refused: {}",
            crate::git::scrub(out.stderr.trim())
        )));
    }
    Err(Halt::Backoff(format!(
        "pushing to {}: {}",
        up.remote,
        crate::git::scrub(out.stderr.trim())
    )))
}

/// One cycle: `fetch` says whether the remote may be asked (not while
/// backing off), `send` whether to push.
async fn cycle(v: &GitVault, fetch_ok: bool, send: bool) -> Step<()> {
    let Some(s) = &v.sh.sync else { return Ok(()) };
    let repo = &s.repo;
    let (branch, up) = check_safe(repo).await?;
    finish_move(v, repo, &branch).await?;
    finish_index_move(v, repo).await?;
    commit_own(v, repo, &branch).await?;
    // What waits to be sent, whether or not the remote answers now.
    let (_, unpushed) = ahead_behind(repo, &up).await?;
    v.set_status(|st| st.unpushed = unpushed);
    if !fetch_ok {
        return Ok(());
    }
    for _round in 0..PUSH_ROUNDS {
        if let Some(u) = fetch(repo, &up).await? {
            integrate(v, repo, &branch, &u).await?;
        }
        v.set_status(|st| st.last_pull = Some(chrono::Utc::now().to_rfc3339()));
        let (behind, unpushed) = ahead_behind(repo, &up).await?;
        let ahead = behind == 0 && unpushed > 0;
        v.set_status(|st| st.unpushed = unpushed);
        if !ahead || !send {
            return Ok(());
        }
        match push(repo, &branch, &up).await? {
            Pushed::Done => {
                tracing::info!(
                    "git: pushed {unpushed} commit(s) to {}/{}",
                    up.remote,
                    up.merge.trim_start_matches("refs/heads/")
                );
                v.set_status(|st| {
                    st.last_push = Some(chrono::Utc::now().to_rfc3339());
                    st.unpushed = 0;
                });
                return Ok(());
            }
            Pushed::Rejected => {
                tracing::info!("git: push rejected (upstream moved); fetching again");
            }
        }
    }
    Err(Halt::Backoff(format!(
        "the push was rejected {PUSH_ROUNDS} times in a row (upstream keeps moving)"
    )))
}

/// How many commits upstream has that `HEAD` lacks, and how many `HEAD`
/// has that upstream lacks (all of them when upstream has no branch yet;
/// none on an unborn branch) — one call.
async fn ahead_behind(repo: &Repo, up: &Upstream) -> Step<(usize, usize)> {
    if repo.rev(&up.tracking).await?.is_none() {
        return Ok((0, count(repo, "HEAD").await.unwrap_or(0)));
    }
    let range = format!("{}...HEAD", up.tracking);
    let out = repo
        .git
        .run(
            ["rev-list", "--left-right", "--count", range.as_str(), "--"],
            RunOpts::read(),
        )
        .await?;
    let line = first_line(&out.stdout);
    let mut f = line
        .split_whitespace()
        .map(|n| n.parse::<usize>().unwrap_or(0));
    Ok((f.next().unwrap_or(0), f.next().unwrap_or(0)))
}

async fn count(repo: &Repo, range: &str) -> Step<usize> {
    let out = repo
        .git
        .run(["rev-list", "--count", range, "--"], RunOpts::read())
        .await?;
    Ok(first_line(&out.stdout).parse().unwrap_or(0))
}

/// Records how a cycle ended; returns the wait before the next pull.
fn settle_state(
    v: &GitVault,
    r: &Step<()>,
    backoff: &mut Option<Duration>,
    every: Duration,
) -> Duration {
    let log_state = |state: SyncState, reason: Option<String>| {
        let was = v.status();
        if was.state != state || was.reason != reason {
            match (&state, &reason) {
                (SyncState::Ok, _) if was.state != SyncState::Ok => {
                    tracing::info!("git sync resumed");
                }
                (SyncState::Paused, Some(r)) => tracing::warn!("git sync paused: {r}"),
                (_, Some(r)) => tracing::warn!("git sync backing off: {r}"),
                _ => {}
            }
        }
        v.set_status(|s| {
            s.state = state;
            s.reason = reason;
        });
    };
    match r {
        Ok(()) => {
            *backoff = None;
            log_state(SyncState::Ok, None);
            every
        }
        Err(Halt::Pause(why)) => {
            log_state(SyncState::Paused, Some(why.clone()));
            every
        }
        Err(Halt::Backoff(why)) => {
            let next = match *backoff {
                None => every,
                Some(d) => d.saturating_mul(2).min(MAX_BACKOFF),
            };
            *backoff = Some(next);
            log_state(
                SyncState::Backoff,
                Some(format!("{why} (next try in {}s)", next.as_secs())),
            );
            next
        }
        Err(Halt::Busy) => Duration::from_millis(500).min(every),
        Err(Halt::Fail(why)) => {
            // Tried again soon; visible meanwhile.
            let next = every.min(Duration::from_secs(10));
            log_state(
                SyncState::Backoff,
                Some(format!("{why} (next try in {}s)", next.as_secs())),
            );
            next
        }
    }
}

/// The sync loop of `serve --git-sync`: a cycle at start, every pull
/// interval (or backoff), on the push webhook, and a batch after
/// vaultrunner's writes.
pub(super) async fn run(v: GitVault, stop: CancellationToken) {
    let Some(s) = v.sh.sync.as_ref() else { return };
    let every = s.cfg.pull_every;
    let mut backoff: Option<Duration> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        let mut pull = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => pull = true,
            _ = s.hook.notified() => {
                tokio::time::sleep(HOOK_DEBOUNCE).await;
                pull = true;
            }
            _ = s.wrote.notified() => {
                let first = Instant::now();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(BATCH_QUIET) => break,
                        _ = s.wrote.notified() => {
                            if first.elapsed() >= BATCH_MAX { break; }
                        }
                    }
                }
            }
        }
        // While backing off, writes are committed locally; the remote is
        // tried again when the backoff ends (or a webhook says it is back).
        let fetch_ok = backoff.is_none() || pull;
        let r = cycle(&v, fetch_ok, true).await;
        // A local-only cycle says nothing of the remote: the backoff and
        // its state stay.
        if !fetch_ok && r.is_ok() {
            continue;
        }
        let wait = settle_state(&v, &r, &mut backoff, every);
        if fetch_ok || matches!(r, Err(Halt::Busy)) {
            next = crate::time::after(wait);
        }
    }
}

/// One step to its end (`process --git-sync`).
pub(super) async fn once(v: &GitVault, step: SyncStep) -> Result<(), VaultError> {
    let r = match step {
        SyncStep::Pull => cycle(v, true, false).await,
        SyncStep::Push => cycle(v, true, true).await,
    };
    // Someone typing does not hold up a one-shot run: `process` treats
    // every note as complete.
    let r = match r {
        Err(Halt::Busy) => {
            tokio::time::sleep(Duration::from_millis(600)).await;
            cycle(v, true, step == SyncStep::Push).await
        }
        r => r,
    };
    let mut backoff = None;
    let every =
        v.sh.sync
            .as_ref()
            .map_or(Duration::from_secs(60), |s| s.cfg.pull_every);
    settle_state(v, &r, &mut backoff, every);
    match r {
        Ok(()) => Ok(()),
        Err(Halt::Pause(why) | Halt::Backoff(why) | Halt::Fail(why)) => Err(sync_err(why)),
        Err(Halt::Busy) => Err(sync_err("notes kept changing; not synced this time")),
    }
}

/// The work tree's lock, held from a blocking thread for an async step.
struct TreeHold {
    sh: Arc<super::Shared>,
}

impl TreeHold {
    fn take(sh: Arc<super::Shared>) -> TreeHold {
        sh.tree.take();
        TreeHold { sh }
    }
}

impl Drop for TreeHold {
    fn drop(&mut self) {
        self.sh.tree.give();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::vault::{LocalVault, NoteWrite, Vault};
    use std::ffi::OsString;
    use std::process::Command;

    #[test]
    fn titles_name_the_messages_answered() {
        assert_eq!(title(&[], 1), "vaultrunner: wrote 1 note");
        assert_eq!(title(&[], 3), "vaultrunner: wrote 3 notes");
        let names: Vec<String> = (0..7).map(|i| format!("Inbox/m{i}")).collect();
        assert_eq!(
            title(&names, 9),
            "vaultrunner: answered Inbox/m0, Inbox/m1, Inbox/m2, Inbox/m3, Inbox/m4 and 2 more"
        );
        assert!(answers(&[("status".into(), Some("handled".into()))]));
        assert!(answers(&[("status".into(), Some("\"error\"".into()))]));
        assert!(!answers(&[("status".into(), Some("working".into()))]));
        assert!(!answers(&[("state".into(), Some("handled".into()))]));
    }

    use super::super::ops::tests::keys;

    #[test]
    fn the_same_note_is_its_keys_reordered_and_nothing_else() {
        let a = "---\nagent: echo\nattempts: 1\nstatus: working\ntags:\n  - a\n  - b\n---\nbody\n";
        let b = "---\nstatus: working\ntags:\n  - a\n  - b\nagent: echo\nattempts: 1\n---\nbody\n";
        assert!(same_note(a, b));
        // A comment, a respelling, a list reordered, a body edited: not.
        assert!(!same_note(
            a,
            &b.replace("agent: echo\n", "agent: echo # mine\n")
        ));
        assert!(!same_note(
            a,
            &b.replace("status: working", "status: \"working\"")
        ));
        assert!(!same_note(a, &b.replace("  - a\n  - b", "  - b\n  - a")));
        assert!(!same_note(a, &b.replace("body", "body!")));
    }

    #[test]
    fn landed_keys_compare_values_not_spellings() {
        let t = "---\nstatus: handled\nattempts: 2\n---\nbody\n";
        let own = [keys(&[
            ("status", Some("\"handled\"")),
            ("attempts", Some("\"2\"")),
            ("error", None),
            ("reply", None),
        ])];
        assert_eq!(
            landed_keys(own.iter(), t),
            vec![
                ("status".to_string(), Some("\"handled\"".to_string())),
                ("error".to_string(), None),
                ("reply".to_string(), None),
            ]
        );
        assert!(landed_keys(own.iter(), "---\n: [\n---\n").is_empty());
    }

    #[test]
    fn landed_keys_take_the_value_on_disk_when_a_later_write_never_landed() {
        // The claim landed; the end batch (handled) was cut short by a
        // crash; the re-claim after the restart changed only `attempts`
        // (computed against the disk, still `working`).
        let own = [
            keys(&[
                ("status", Some("working")),
                ("attempts", Some("1")),
                ("thread", Some("\"[[T]]\"")),
            ]),
            keys(&[
                ("status", Some("handled")),
                ("handled_at", Some("x")),
                ("reply", Some("\"[[R]]\"")),
            ]),
            keys(&[("attempts", Some("2"))]),
        ];
        let disk = "---\nagent: echo\nstatus: working\nattempts: 2\nthread: \"[[T]]\"\n---\nm\n";
        assert_eq!(
            landed_keys(own.iter(), disk),
            vec![
                ("status".to_string(), Some("working".to_string())),
                ("attempts".to_string(), Some("2".to_string())),
                ("thread".to_string(), Some("\"[[T]]\"".to_string())),
            ]
        );
        // In the disk's order, whatever order they were first written in.
        let disk = "---\nthread: \"[[T]]\"\nagent: echo\nattempts: 2\nstatus: working\n---\nm\n";
        let got: Vec<String> = landed_keys(own.iter(), disk)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, ["thread", "attempts", "status"]);
    }

    /// A bare origin and a clone of it holding `Inbox/m.md`, with git
    /// isolated from the machine's config.
    struct Repos {
        dir: tempfile::TempDir,
        env: Vec<(OsString, OsString)>,
    }

    impl Repos {
        fn new() -> Repos {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("gitconfig");
            std::fs::write(
                &cfg,
                "[user]\n\tname = phone\n\temail = phone@example.com\n[init]\n\tdefaultBranch = main\n",
            )
            .unwrap();
            let env = vec![
                ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
                ("GIT_CONFIG_GLOBAL".into(), cfg.into_os_string()),
            ];
            let r = Repos { dir, env };
            r.git(r.dir.path(), &["init", "-q", "--bare", "origin.git"]);
            r.git(r.dir.path(), &["clone", "-q", "origin.git", "clone"]);
            let c = r.clone_dir();
            std::fs::create_dir_all(c.join("Inbox")).unwrap();
            std::fs::write(c.join(".gitignore"), ".vaultrunner/\n").unwrap();
            std::fs::write(
                c.join("Inbox/m.md"),
                "---\ntags: [agent/message/inbound]\nagent: echo\n---\nthe message\n",
            )
            .unwrap();
            r.git(&c, &["add", "-A"]);
            r.git(&c, &["commit", "-qm", "init"]);
            r.git(&c, &["push", "-q", "origin", "main"]);
            r
        }

        fn clone_dir(&self) -> PathBuf {
            self.dir.path().join("clone")
        }

        fn git(&self, cwd: &Path, args: &[&str]) -> String {
            let out = Command::new("git")
                .args(args)
                .current_dir(cwd)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// The clone's `git status --porcelain`, trimmed.
        fn status(&self) -> String {
            self.git(&self.clone_dir(), &["status", "--porcelain"])
                .trim()
                .to_string()
        }

        fn origin(&self, path: &str) -> String {
            let dir = self.dir.path().join("origin.git");
            self.git(&dir, &["show", &format!("main:{path}")])
        }

        fn vault(&self) -> GitVault {
            let cfg = super::super::SyncConfig {
                git: Settings {
                    env: self.env.clone(),
                    ..Settings::default()
                },
                settle: Duration::ZERO,
                ..Default::default()
            };
            GitVault::open(LocalVault::open(&self.clone_dir()).unwrap(), cfg).unwrap()
        }
    }

    use std::path::PathBuf;

    /// vaultrunner rewrites `Inbox/m` (read, `edit`, written against what
    /// it read); the text written.
    fn rewrite(v: &GitVault, edit: impl Fn(&str) -> String) -> String {
        let (text, ver) = v.read("Inbox/m").unwrap();
        let new = edit(&text);
        v.write_batch(&[NoteWrite::update("Inbox/m", new.clone(), ver)])
            .unwrap();
        new
    }

    #[test]
    fn a_users_uncommitted_edit_is_never_committed_with_vaultrunners_keys() {
        let r = Repos::new();
        let v = r.vault();
        // The user edits the body on this machine and does not commit.
        let note = r.clone_dir().join("Inbox/m.md");
        std::fs::write(
            &note,
            "---\ntags: [agent/message/inbound]\nagent: echo\n---\nthe message, edited here\n",
        )
        .unwrap();
        // vaultrunner stamps its keys on the note as it is now.
        let (text, ver) = v.read("Inbox/m").unwrap();
        let stamped = text.replace("agent: echo\n", "agent: echo\nstatus: handled\n");
        v.write_batch(&[
            NoteWrite::update("Inbox/m", stamped, ver),
            NoteWrite::any(
                "Inbox/m.reply",
                "---\ndirection: outbound\n---\nthe reply\n",
            ),
        ])
        .unwrap();
        v.sync(SyncStep::Push).unwrap();
        let pushed = r.origin("Inbox/m.md");
        assert!(pushed.contains("status: handled"), "{pushed}");
        assert!(pushed.contains("the message\n"), "{pushed}");
        assert!(!pushed.contains("edited here"), "{pushed}");
        assert_eq!(
            r.origin("Inbox/m.reply.md"),
            "---\ndirection: outbound\n---\nthe reply\n"
        );
        // The edit is still on disk, and shows as the user's own change.
        assert!(
            std::fs::read_to_string(&note)
                .unwrap()
                .contains("edited here")
        );
        assert_eq!(r.status(), "M Inbox/m.md");
        let log = r.git(&r.clone_dir(), &["log", "-1", "--format=%an <%ae>|%s"]);
        assert!(log.starts_with("vaultrunner <vaultrunner@"), "{log}");
        assert!(
            log.contains(".invalid>|vaultrunner: answered Inbox/m"),
            "{log}"
        );
    }

    #[test]
    fn a_write_whose_rename_never_happened_is_not_committed() {
        let r = Repos::new();
        let v = r.vault();
        // The journal says a reply was written; the disk has none (a crash
        // between the line and the rename).
        v.sh.journal
            .append(&[Record {
                path: "Inbox/ghost".into(),
                change: OwnChange::Whole("---\n---\nboo\n".into()),
                at: 0,
            }])
            .unwrap();
        v.sync(SyncStep::Push).unwrap();
        let files = r.git(
            &r.dir.path().join("origin.git"),
            &["ls-tree", "-r", "--name-only", "main"],
        );
        assert!(!files.contains("ghost"), "{files}");
        assert!(v.sh.journal.is_empty());
    }

    #[test]
    fn a_write_a_crash_cut_short_leaves_what_landed_committed_as_on_disk() {
        let r = Repos::new();
        let v = r.vault();
        let note = r.clone_dir().join("Inbox/m.md");
        let base = std::fs::read_to_string(&note).unwrap();
        let claimed = base.replace(
            "agent: echo\n",
            "agent: echo\nstatus: working\nattempts: 1\nthread: \"[[T]]\"\n",
        );
        // The claim landed; the end batch's line was journaled, and then
        // the process was killed before its rename.
        v.sh.journal
            .append(&[
                Record {
                    path: "Inbox/m".into(),
                    change: ops::own_change(Some(&base), &claimed),
                    at: now_secs(),
                },
                Record {
                    path: "Inbox/m".into(),
                    change: ops::own_change(
                        Some(&claimed),
                        &claimed.replace("status: working", "status: handled"),
                    ),
                    at: now_secs(),
                },
            ])
            .unwrap();
        std::fs::write(&note, &claimed).unwrap();
        // After the restart: claimed again, then answered.
        let again = rewrite(&v, |t| t.replace("attempts: 1", "attempts: 2"));
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.origin("Inbox/m.md"), again);
        let done = rewrite(&v, |t| t.replace("status: working", "status: handled"));
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.origin("Inbox/m.md"), done);
        assert_eq!(r.status(), "");
    }

    #[test]
    fn a_note_committed_with_its_keys_in_another_order_comes_back_in_step() {
        let r = Repos::new();
        let c = r.clone_dir();
        let note = c.join("Inbox/m.md");
        // Committed (by an earlier version) with `status` last; on disk
        // with `status` first: the same note.
        let committed = "---\ntags: [agent/message/inbound]\nagent: echo\nattempts: 1\nstatus: working\n---\nthe message\n";
        std::fs::write(&note, committed).unwrap();
        r.git(&c, &["commit", "-qam", "earlier"]);
        r.git(&c, &["push", "-q", "origin", "main"]);
        std::fs::write(
            &note,
            "---\ntags: [agent/message/inbound]\nagent: echo\nstatus: working\nattempts: 1\n---\nthe message\n",
        )
        .unwrap();
        let v = r.vault();
        let done = rewrite(&v, |t| t.replace("status: working", "status: handled"));
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.origin("Inbox/m.md"), done);
        assert_eq!(r.status(), "");
    }

    #[test]
    fn a_reply_whose_rewrite_a_crash_cut_short_is_committed_as_it_landed() {
        let r = Repos::new();
        let v = r.vault();
        let first = "---\ndirection: outbound\n---\nthe reply\n";
        v.write_batch(&[NoteWrite::any("Inbox/m.reply", first)])
            .unwrap();
        // A re-run's reply journaled, then killed before its rename.
        v.sh.journal
            .append(&[Record {
                path: "Inbox/m.reply".into(),
                change: OwnChange::Whole("---\ndirection: outbound\n---\nagain\n".into()),
                at: now_secs(),
            }])
            .unwrap();
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.origin("Inbox/m.reply.md"), first);
        assert_eq!(r.status(), "");
    }

    #[test]
    fn a_stamp_refused_by_its_compare_and_set_does_not_hold_back_the_one_that_landed() {
        let r = Repos::new();
        let c = r.clone_dir();
        let v = r.vault();
        let (text, ver) = v.read("Inbox/m").unwrap();
        // A pull brings the phone's edit of the body between vaultrunner's
        // read and its write.
        std::fs::write(
            c.join("Inbox/m.md"),
            text.replace("the message", "the phone's edit"),
        )
        .unwrap();
        r.git(&c, &["commit", "-qam", "phone: edit"]);
        let stamped = |t: &str| t.replace("agent: echo\n", "agent: echo\nstatus: handled\n");
        assert!(
            v.write_batch(&[NoteWrite::update("Inbox/m", stamped(&text), ver)])
                .is_err()
        );
        // Read again, stamped again: this one lands.
        let landed = rewrite(&v, stamped);
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.origin("Inbox/m.md"), landed);
        assert_eq!(r.status(), "");
    }

    #[test]
    fn an_index_move_a_crash_cut_short_is_finished_by_the_next_cycle() {
        let r = Repos::new();
        let c = r.clone_dir();
        let v = r.vault();
        v.write_batch(&[NoteWrite::any(
            "Inbox/m.reply",
            "---\ndirection: outbound\n---\nthe reply\n",
        )])
        .unwrap();
        v.sync(SyncStep::Push).unwrap();
        // Killed between the branch's move and the index's: the index is
        // still the old commit's, and the intent is on disk.
        let old = r.git(&c, &["rev-parse", "HEAD~1"]).trim().to_string();
        let new = r.git(&c, &["rev-parse", "HEAD"]).trim().to_string();
        let blob = r
            .git(&c, &["rev-parse", "HEAD:Inbox/m.reply.md"])
            .trim()
            .to_string();
        r.git(&c, &["read-tree", &old]);
        assert!(!r.status().is_empty());
        IndexMove {
            old,
            new,
            blobs: [("Inbox/m.reply.md".to_string(), blob)].into(),
        }
        .write(&v.sh.state_dir)
        .unwrap();
        v.sync(SyncStep::Push).unwrap();
        assert_eq!(r.status(), "");
        assert!(!v.sh.state_dir.join(IndexMove::FILE).exists());
    }

    #[test]
    fn obsidian_git_auto_sync_here_is_refused_but_committed_settings_only_warn() {
        let r = Repos::new();
        let c = r.clone_dir();
        let plugin = c.join(".obsidian/plugins/obsidian-git");
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(
            c.join(".obsidian/community-plugins.json"),
            "[\"obsidian-git\"]",
        )
        .unwrap();
        std::fs::write(plugin.join("data.json"), "{\"autoPushInterval\": 5}").unwrap();
        let cfg = || super::super::SyncConfig {
            git: Settings {
                env: r.env.clone(),
                ..Settings::default()
            },
            ..Default::default()
        };
        let err = GitVault::open(LocalVault::open(&c).unwrap(), cfg()).unwrap_err();
        assert!(err.to_string().contains("another syncer"), "{err}");
        // The same settings, committed (the phone's `.obsidian/` synced).
        r.git(&c, &["add", "-f", ".obsidian"]);
        r.git(&c, &["commit", "-qm", "phone settings"]);
        assert!(GitVault::open(LocalVault::open(&c).unwrap(), cfg()).is_ok());
    }

    impl Repos {
        /// Another clone commits `files` and pushes them to origin.
        fn push_from_phone(&self, files: &[(&str, &str)]) {
            let phone = self.dir.path().join("phone");
            if !phone.exists() {
                self.git(self.dir.path(), &["clone", "-q", "origin.git", "phone"]);
            } else {
                self.git(&phone, &["pull", "-q"]);
            }
            for (p, text) in files {
                let f = phone.join(p);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, text).unwrap();
            }
            self.git(&phone, &["add", "-A"]);
            self.git(&phone, &["commit", "-qm", "phone"]);
            self.git(&phone, &["push", "-q"]);
        }
    }

    #[test]
    fn a_pull_moves_only_what_changed_and_keeps_an_edit_elsewhere() {
        let r = Repos::new();
        r.push_from_phone(&[("Notes/x.md", "x\n")]);
        let v = r.vault();
        v.sync(SyncStep::Pull).unwrap();
        let c = r.clone_dir();
        assert_eq!(
            std::fs::read_to_string(c.join("Notes/x.md")).unwrap(),
            "x\n"
        );
        // An uncommitted edit here, of a note upstream does not change.
        std::fs::write(c.join("Notes/x.md"), "x, edited here\n").unwrap();
        r.push_from_phone(&[
            ("Inbox/m.md", "---\ntags: [agent/message/inbound]\nagent: echo\n---\nthe message, edited on the phone\n"),
            ("Inbox/sub/n.md", "new\n"),
        ]);
        v.sync(SyncStep::Pull).unwrap();
        assert!(
            std::fs::read_to_string(c.join("Inbox/m.md"))
                .unwrap()
                .contains("edited on the phone")
        );
        assert_eq!(
            std::fs::read_to_string(c.join("Inbox/sub/n.md")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(c.join("Notes/x.md")).unwrap(),
            "x, edited here\n"
        );
        // The index follows the new commit; the edit shows as the user's.
        assert_eq!(r.status(), "M Notes/x.md");
        assert_eq!(
            r.git(&c, &["rev-parse", "HEAD"]),
            r.git(&c, &["rev-parse", "origin/main"])
        );
    }

    #[test]
    fn a_pull_over_an_uncommitted_edit_of_the_same_note_pauses_and_keeps_it() {
        let r = Repos::new();
        let v = r.vault();
        let c = r.clone_dir();
        std::fs::write(c.join("Inbox/m.md"), "mine, not committed\n").unwrap();
        r.push_from_phone(&[("Inbox/m.md", "the phone's\n"), ("Inbox/other.md", "o\n")]);
        let head = r.git(&c, &["rev-parse", "HEAD"]);
        let err = v.sync(SyncStep::Pull).unwrap_err().to_string();
        assert!(
            err.contains("uncommitted edits") && err.contains("Inbox/m.md"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(c.join("Inbox/m.md")).unwrap(),
            "mine, not committed\n"
        );
        // Nothing of the pull landed: not the other note, not the branch.
        assert!(!c.join("Inbox/other.md").exists());
        assert_eq!(r.git(&c, &["rev-parse", "HEAD"]), head);
    }

    #[test]
    fn a_path_git_filters_is_checked_out_by_git_itself() {
        let r = Repos::new();
        r.push_from_phone(&[(".gitattributes", "*.md eol=crlf\n")]);
        let v = r.vault();
        v.sync(SyncStep::Pull).unwrap();
        r.push_from_phone(&[("Inbox/m.md", "line one\nline two\n")]);
        v.sync(SyncStep::Pull).unwrap();
        // git's checkout applied the attribute; a copy of the blob would not.
        let on_disk = std::fs::read(r.clone_dir().join("Inbox/m.md")).unwrap();
        assert_eq!(on_disk, b"line one\r\nline two\r\n");
    }

    #[test]
    fn a_merge_in_progress_or_a_detached_head_pauses_and_sync_resumes_after() {
        let r = Repos::new();
        let v = r.vault();
        let c = r.clone_dir();
        r.push_from_phone(&[("Inbox/new.md", "from the phone\n")]);
        let head = r.git(&c, &["rev-parse", "HEAD"]);
        std::fs::write(c.join(".git/MERGE_HEAD"), &head).unwrap();
        let err = v.sync(SyncStep::Pull).unwrap_err().to_string();
        assert!(err.contains("a merge is in progress"), "{err}");
        assert!(!c.join("Inbox/new.md").exists());
        assert_eq!(v.sync_status().unwrap().state, SyncState::Paused);
        std::fs::remove_file(c.join(".git/MERGE_HEAD")).unwrap();
        r.git(&c, &["checkout", "-q", "--detach"]);
        let err = v.sync(SyncStep::Pull).unwrap_err().to_string();
        assert!(err.contains("HEAD is detached"), "{err}");
        r.git(&c, &["checkout", "-q", "main"]);
        v.sync(SyncStep::Pull).unwrap();
        assert!(c.join("Inbox/new.md").exists());
        assert_eq!(v.sync_status().unwrap().state, SyncState::Ok);
    }

    #[test]
    fn a_pull_never_writes_through_a_symlinked_folder() {
        let r = Repos::new();
        let v = r.vault();
        let c = r.clone_dir();
        let outside = r.dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, c.join("Drop")).unwrap();
        r.push_from_phone(&[("Drop/a.md", "through the link?\n")]);
        let _ = v.sync(SyncStep::Pull);
        assert!(!outside.join("a.md").exists(), "written outside the clone");
    }
}
