//! A small typed runner of the real `git` CLI (SPEC §7, issue 11 point 1).
//!
//! Git is driven through the `git` program on `PATH`, never a library: the
//! user's SSH agent and `~/.ssh/config`, credential helpers, hooks and LFS
//! keep working. Every call is non-interactive (no terminal prompt, no
//! askpass dialog, no editor, no pager, no signing), runs in its own process
//! group with a timeout after which the whole group is killed, has its
//! output bounded, and fails with a [`GitError`] that names the command —
//! never a credential. Read-only calls take no optional locks, so a
//! `status` never races a user's `git` for `index.lock`.
//!
//! This module knows nothing of notes or vaults; it sits just above
//! [`crate::time`].

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// The oldest `git` vaultrunner drives (`--end-of-options`, porcelain v2,
/// `for-each-ref` atoms and the `merge-tree --write-tree` the sync uses).
pub const MIN_VERSION: (u32, u32) = (2, 38);

/// How long one call may take unless [`RunOpts::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The most stdout one call may produce unless [`RunOpts::max_output`]
/// says otherwise.
pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024 * 1024;

/// How long a process group gets between TERM and KILL, and how long the
/// pipes may stay open (held by a grandchild) after git itself exited.
const GRACE: Duration = Duration::from_millis(1500);

/// How much of stderr is kept (its end).
const STDERR_KEEP: usize = 64 * 1024;

/// How many lines of stderr an error quotes.
const STDERR_LINES: usize = 8;

/// Options set on every call, before the caller's arguments: paths are
/// printed as they are (not octal-quoted), and nothing is ever signed,
/// whatever the repository's config says (a GPG or SSH signing prompt
/// would hang, and vaultrunner's commits are never signed — SPEC §7).
const CONFIG_ARGS: [&str; 8] = [
    "-c",
    "core.quotepath=off",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "tag.gpgSign=false",
    "-c",
    "push.gpgSign=false",
];

/// Variables inherited from a parent git (vaultrunner started from a hook)
/// that would point every call at another repository or index.
pub const REMOVED_ENV: [&str; 8] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// The identity variables a parent git may set: the tests and benches
/// clear them too, so their own commits are the phone's.
pub const IDENTITY_ENV: [&str; 4] = [
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
];

/// The ssh command used when the user has configured none: `BatchMode`
/// makes ssh fail instead of asking for a passphrase, a password or a host
/// key confirmation.
const BATCH_SSH: &str = "ssh -o BatchMode=yes";

/// What went wrong with git. Commands and stderr quoted here have the
/// userinfo of every URL (`https://user:token@host`) scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("could not run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} is version {found}; vaultrunner needs git {needed} or newer")]
    TooOld {
        program: String,
        found: String,
        needed: String,
    },
    #[error("{path} is not inside a Git work tree: {reason}")]
    NotARepository { path: PathBuf, reason: String },
    #[error("`{command}` timed out after {after:?}; its processes were stopped")]
    Timeout { command: String, after: Duration },
    #[error("`{command}` wrote more than {limit} bytes of output; stopped it")]
    OutputTooLarge { command: String, limit: usize },
    #[error("`{command}` failed ({}){}", exit_text(*.code), stderr_text(.stderr))]
    Failed {
        command: String,
        /// The exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// The last lines of stderr.
        stderr: String,
    },
    #[error("`{command}`: unexpected output: {what}")]
    Parse { command: String, what: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".to_string(),
    }
}

fn stderr_text(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// How the runner is set up: which program, the default timeout, and
/// variables added to every call (after vaultrunner's own, so they win —
/// tests use it to isolate themselves from the machine's config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub program: PathBuf,
    pub timeout: Duration,
    pub env: Vec<(OsString, OsString)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            program: PathBuf::from("git"),
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct RunOpts {
    /// The call only reads: `GIT_OPTIONAL_LOCKS=0`, so it never takes
    /// `index.lock` to refresh the index on the side.
    pub read_only: bool,
    /// Instead of the runner's default timeout.
    pub timeout: Option<Duration>,
    /// Instead of [`DEFAULT_MAX_OUTPUT`].
    pub max_output: Option<usize>,
    /// Exit codes besides 0 that are answers, not failures (`rev-parse
    /// --verify -q` says "no such revision" with 1).
    pub ok_codes: Vec<i32>,
    /// Variables for this call only (a private `GIT_INDEX_FILE`, …).
    pub env: Vec<(OsString, OsString)>,
    /// Bytes fed to the call's standard input (none: it reads nothing).
    pub stdin: Option<Vec<u8>>,
}

impl RunOpts {
    /// A read-only call.
    pub fn read() -> RunOpts {
        RunOpts {
            read_only: true,
            ..RunOpts::default()
        }
    }

    /// This call also accepts exit code `code`.
    pub fn ok_code(mut self, code: i32) -> RunOpts {
        self.ok_codes.push(code);
        self
    }

    /// This call reads `input` on its standard input.
    pub fn input(mut self, input: Vec<u8>) -> RunOpts {
        self.stdin = Some(input);
        self
    }

    /// This call also gets `key=value`.
    pub fn var(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> RunOpts {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// What a finished call left.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// The end of stderr, lossily decoded.
    pub stderr: String,
    pub code: i32,
}

/// Where `HEAD` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// On a branch (its short name; maybe unborn, with no commit yet).
    Branch(String),
    /// Detached at this commit.
    Detached(String),
}

/// An operation the user (or obsidian-git) left half done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InProgress {
    Merge,
    Rebase,
    /// `git am` (which shares `rebase-apply/` with the old rebase).
    Am,
    CherryPick,
    Revert,
    Bisect,
}

impl std::fmt::Display for InProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InProgress::Merge => "a merge",
            InProgress::Rebase => "a rebase",
            InProgress::Am => "a `git am`",
            InProgress::CherryPick => "a cherry-pick",
            InProgress::Revert => "a revert",
            InProgress::Bisect => "a bisect",
        })
    }
}

/// `index.lock`, present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLock {
    pub path: PathBuf,
    /// Since its last modification (zero if the clock says it is from the
    /// future).
    pub age: Duration,
}

/// What `status` says of one path (relative to the top of the work tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Changed in the index and/or the work tree; `xy` as git prints it
    /// (`.M`, `A.`, `D.`, …).
    Changed {
        path: PathBuf,
        xy: String,
    },
    /// Renamed or copied (`xy` starts with `R` or `C`) from `from`.
    Renamed {
        path: PathBuf,
        from: PathBuf,
        xy: String,
    },
    /// Unmerged (a conflict).
    Unmerged {
        path: PathBuf,
        xy: String,
    },
    Untracked {
        path: PathBuf,
    },
    Ignored {
        path: PathBuf,
    },
}

impl Status {
    pub fn path(&self) -> &Path {
        match self {
            Status::Changed { path, .. }
            | Status::Renamed { path, .. }
            | Status::Unmerged { path, .. }
            | Status::Untracked { path }
            | Status::Ignored { path } => path,
        }
    }
}

/// The branch `HEAD`'s branch tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The remote's name (`origin`), or `.` for a local branch.
    pub remote: String,
    /// The branch on the remote (`refs/heads/main`).
    pub merge: String,
    /// The local ref that follows it (`refs/remotes/origin/main`).
    pub tracking: String,
}

/// A repository's work tree, driven through `git`.
#[derive(Debug, Clone)]
pub struct Git {
    settings: Settings,
    top: PathBuf,
    git_dir: PathBuf,
    version: String,
    /// `GIT_SSH_COMMAND` to set, when the user has configured no ssh
    /// command of their own.
    batch_ssh: bool,
}

impl Git {
    /// The repository whose work tree holds `worktree`, with the `git` on
    /// `PATH`.
    pub async fn open(worktree: &Path) -> Result<Git, GitError> {
        Git::open_with(worktree, Settings::default()).await
    }

    /// As [`Git::open`], set up by `settings`.
    pub async fn open_with(worktree: &Path, settings: Settings) -> Result<Git, GitError> {
        let mut git = Git {
            settings,
            top: worktree.to_path_buf(),
            git_dir: PathBuf::new(),
            version: String::new(),
            batch_ssh: false,
        };
        let program = git.settings.program.display().to_string();
        if !worktree.is_dir() {
            return Err(GitError::NotARepository {
                path: worktree.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        let out = git.run(["--version"], RunOpts::read()).await?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let found = parse_version(&text).ok_or_else(|| GitError::Parse {
            command: format!("{program} --version"),
            what: format!("no version in {text:?}"),
        })?;
        if (found.0, found.1) < MIN_VERSION {
            return Err(GitError::TooOld {
                program,
                found: format!("{}.{}.{}", found.0, found.1, found.2),
                needed: format!("{}.{}", MIN_VERSION.0, MIN_VERSION.1),
            });
        }
        git.version = format!("{}.{}.{}", found.0, found.1, found.2);
        let out = git
            .run(
                ["rev-parse", "--show-toplevel", "--absolute-git-dir"],
                RunOpts::read(),
            )
            .await
            .map_err(|e| match e {
                GitError::Failed { stderr, .. } => GitError::NotARepository {
                    path: worktree.to_path_buf(),
                    reason: stderr,
                },
                e => e,
            })?;
        let mut lines = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(bytes_to_path);
        let (Some(top), Some(git_dir)) = (lines.next(), lines.next()) else {
            return Err(GitError::NotARepository {
                path: worktree.to_path_buf(),
                reason: "git names no work tree here (a bare repository?)".into(),
            });
        };
        git.top = top;
        git.git_dir = git_dir;
        // The user's own ssh command (environment or config) is theirs;
        // only the default `ssh` gets BatchMode.
        let ssh_configured = ["GIT_SSH_COMMAND", "GIT_SSH"]
            .iter()
            .any(|k| git.env_var(k).is_some_and(|v| !v.is_empty()));
        let config = git
            .run(
                ["config", "--get", "core.sshCommand"],
                RunOpts::read().ok_code(1),
            )
            .await?;
        git.batch_ssh = !ssh_configured && config.code != 0;
        Ok(git)
    }

    /// The top of the work tree.
    pub fn top(&self) -> &Path {
        &self.top
    }

    /// The git directory (per work tree: a linked work tree has its own).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The version of `git` found, as `2.47.3`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// A variable as a call will inherit it (the runner's settings, then
    /// the process environment).
    fn env_var(&self, key: &str) -> Option<OsString> {
        self.settings
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(key))
    }

    /// The variables every call gets, in order (later ones win).
    fn child_env(&self, opts: &RunOpts) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = [
            // No username/password prompt on the terminal…
            ("GIT_TERMINAL_PROMPT", "0"),
            // …nor through an askpass program (a GUI dialog nobody sees
            // would wait forever): `false` fails, so git says "terminal
            // prompts disabled". Credential helpers still run first.
            ("GIT_ASKPASS", "false"),
            ("SSH_ASKPASS_REQUIRE", "never"),
            // Git Credential Manager: fail instead of opening a dialog.
            ("GCM_INTERACTIVE", "never"),
            ("GIT_EDITOR", "true"),
            ("GIT_SEQUENCE_EDITOR", "true"),
            ("GIT_MERGE_AUTOEDIT", "no"),
            ("GIT_PAGER", "cat"),
            ("PAGER", "cat"),
            // Messages vaultrunner parses are the untranslated ones.
            ("LC_ALL", "C"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        if self.batch_ssh {
            env.push(("GIT_SSH_COMMAND".into(), BATCH_SSH.into()));
        }
        if opts.read_only {
            env.push(("GIT_OPTIONAL_LOCKS".into(), "0".into()));
        }
        env.extend(self.settings.env.iter().cloned());
        env.extend(opts.env.iter().cloned());
        env
    }

    /// Runs `git <args>` in the top of the work tree (see the module's
    /// comment for what every call gets). A non-zero exit code not in
    /// `opts.ok_codes` is an error.
    pub async fn run<I, S>(&self, args: I, opts: RunOpts) -> Result<Output, GitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let command = describe(&args);
        let timeout = opts.timeout.unwrap_or(self.settings.timeout);
        let max = opts.max_output.unwrap_or(DEFAULT_MAX_OUTPUT);
        let mut cmd = Command::new(&self.settings.program);
        cmd.args(CONFIG_ARGS)
            .args(&args)
            .current_dir(&self.top)
            .stdin(if opts.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for k in REMOVED_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in self.child_env(&opts) {
            cmd.env(k, v);
        }
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = cmd.spawn().map_err(|e| GitError::Spawn {
            program: self.settings.program.display().to_string(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "not found on PATH; install git 2.38 or newer".to_string()
            } else {
                e.to_string()
            },
        })?;
        // Kept: `child.id()` is `None` once the child is reaped.
        let pgid = child.id();
        let deadline = crate::time::after(timeout);
        // Fed beside the reading, so input bigger than a pipe never stalls
        // a git that writes as it reads (`cat-file --batch`).
        if let (Some(input), Some(mut pipe)) = (opts.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        let mut out_task = tokio::spawn(read_limited(child.stdout.take(), max));
        let mut err_task = tokio::spawn(read_tail(child.stderr.take()));
        let mut stdout: Option<Vec<u8>> = None;
        let timed_out = || GitError::Timeout {
            command: command.clone(),
            after: timeout,
        };
        let too_large = || GitError::OutputTooLarge {
            command: command.clone(),
            limit: max,
        };
        // Reading runs beside the wait, so output bigger than a pipe never
        // stalls git, and too much of it stops git at once.
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                r = &mut out_task, if stdout.is_none() => match r {
                    Ok(Some(o)) => stdout = Some(o),
                    _ => {
                        terminate(&mut child, pgid).await;
                        err_task.abort();
                        return Err(too_large());
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    terminate(&mut child, pgid).await;
                    out_task.abort();
                    err_task.abort();
                    return Err(timed_out());
                }
            }
        };
        let status = status.map_err(|e| GitError::Spawn {
            program: self.settings.program.display().to_string(),
            reason: format!("waiting for `{command}`: {e}"),
        })?;
        // Git has exited. A grandchild still holding the pipes open gets a
        // short grace, then the group is killed (which closes them).
        let grace_end = deadline.min(crate::time::after(GRACE));
        let have_out = stdout.is_some();
        let collect = async {
            let out = if have_out {
                None
            } else {
                (&mut out_task).await.ok().flatten()
            };
            let err = (&mut err_task).await.unwrap_or_default();
            (out, err)
        };
        tokio::pin!(collect);
        // The same future goes on after the kill: a finished task is never
        // polled again.
        let (out, err) = tokio::select! {
            r = &mut collect => r,
            _ = tokio::time::sleep_until(grace_end) => {
                kill_group(pgid, KILL);
                collect.await
            }
        };
        let out = stdout.or(out);
        let out = out.ok_or_else(too_large)?;
        let stderr = scrub(&String::from_utf8_lossy(&err));
        match status.code() {
            Some(code) if code == 0 || opts.ok_codes.contains(&code) => Ok(Output {
                stdout: out,
                stderr,
                code,
            }),
            code => Err(GitError::Failed {
                command,
                code,
                stderr: last_lines(&stderr, STDERR_LINES),
            }),
        }
    }

    /// Where `HEAD` points: a branch (maybe unborn), or a detached commit.
    pub async fn head(&self) -> Result<Head, GitError> {
        let out = self
            .run(["symbolic-ref", "-q", "HEAD"], RunOpts::read().ok_code(1))
            .await?;
        if out.code == 0 {
            let full = text_line(&out.stdout);
            let name = full.strip_prefix("refs/heads/").unwrap_or(&full);
            return Ok(Head::Branch(name.to_string()));
        }
        let oid = self
            .rev_parse("HEAD")
            .await?
            .ok_or_else(|| GitError::Parse {
                command: "git rev-parse HEAD".into(),
                what: "HEAD is neither a branch nor a commit".into(),
            })?;
        Ok(Head::Detached(oid))
    }

    /// `git status` of `paths` (all of the work tree when empty; paths are
    /// literal, never globs): changed, renamed, unmerged, untracked (each
    /// file, not its folder) and ignored paths.
    pub async fn status_porcelain(&self, paths: &[&Path]) -> Result<Vec<Status>, GitError> {
        let mut args: Vec<OsString> = [
            "--literal-pathspecs",
            "status",
            "--porcelain=v2",
            "-z",
            "--untracked-files=all",
            "--",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
        let out = self.run(&args, RunOpts::read()).await?;
        parse_porcelain_v2(&out.stdout).map_err(|what| GitError::Parse {
            command: describe(&args),
            what,
        })
    }

    /// The operations left half done in this work tree (none is the safe
    /// state), read from the git directory's marker files.
    pub fn in_progress(&self) -> Vec<InProgress> {
        let d = &self.git_dir;
        let mut ops = Vec::new();
        if d.join("MERGE_HEAD").exists() {
            ops.push(InProgress::Merge);
        }
        if d.join("rebase-merge").exists() {
            ops.push(InProgress::Rebase);
        }
        if d.join("rebase-apply").exists() {
            ops.push(if d.join("rebase-apply/applying").exists() {
                InProgress::Am
            } else {
                InProgress::Rebase
            });
        }
        if d.join("CHERRY_PICK_HEAD").exists() || d.join("sequencer/todo").exists() {
            // The sequencer also runs multi-commit reverts; REVERT_HEAD
            // says which.
            if d.join("REVERT_HEAD").exists() {
                ops.push(InProgress::Revert);
            } else {
                ops.push(InProgress::CherryPick);
            }
        } else if d.join("REVERT_HEAD").exists() {
            ops.push(InProgress::Revert);
        }
        if d.join("BISECT_LOG").exists() {
            ops.push(InProgress::Bisect);
        }
        ops
    }

    /// `index.lock`, if present, and how old it is. Never removed here.
    pub fn index_lock(&self) -> Result<Option<IndexLock>, GitError> {
        let path = self.git_dir.join("index.lock");
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok())
                    .unwrap_or_default();
                Ok(Some(IndexLock { path, age }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GitError::Io {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// The object name `rev` names, `None` when it names nothing.
    pub async fn rev_parse(&self, rev: &str) -> Result<Option<String>, GitError> {
        let out = self
            .run(
                ["rev-parse", "--verify", "-q", "--end-of-options", rev],
                RunOpts::read().ok_code(1),
            )
            .await?;
        if out.code != 0 {
            return Ok(None);
        }
        Ok(Some(text_line(&out.stdout)))
    }

    /// The bytes of the file `path` (relative to the top of the work tree)
    /// in commit `rev`, `None` when it has no such file (absent, or a
    /// folder or submodule there). A `rev` that names nothing is an error.
    pub async fn show_blob(&self, rev: &str, path: &Path) -> Result<Option<Vec<u8>>, GitError> {
        let mut args: Vec<OsString> = [
            "--literal-pathspecs",
            "ls-tree",
            "-z",
            "--full-tree",
            "--end-of-options",
            rev,
            "--",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(path.as_os_str().to_owned());
        let out = self.run(&args, RunOpts::read()).await?;
        // `<mode> SP <type> SP <object> TAB <path> NUL`, for exactly this
        // path (a path inside a folder that is absent lists nothing).
        let want = path_bytes(path);
        let mut oid = None;
        for entry in out.stdout.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let Some(tab) = memchr::memchr(b'\t', entry) else {
                continue;
            };
            let (head, name) = entry.split_at(tab);
            if name.get(1..) != Some(want.as_slice()) {
                continue;
            }
            let mut fields = head.split(|b| *b == b' ');
            let (_mode, kind, id) = (fields.next(), fields.next(), fields.next());
            if kind == Some(b"blob".as_slice()) {
                oid = id.map(|i| String::from_utf8_lossy(i).into_owned());
            }
        }
        let Some(oid) = oid else {
            return Ok(None);
        };
        let out = self
            .run(["cat-file", "blob", oid.as_str()], RunOpts::read())
            .await?;
        Ok(Some(out.stdout))
    }

    /// The branch `HEAD`'s branch tracks, `None` when it tracks none or
    /// `HEAD` is detached.
    pub async fn upstream(&self) -> Result<Option<Upstream>, GitError> {
        let Head::Branch(branch) = self.head().await? else {
            return Ok(None);
        };
        let out = self
            .run(
                [
                    "for-each-ref",
                    "--format=%(upstream)%00%(upstream:remotename)%00%(upstream:remoteref)",
                    &format!("refs/heads/{branch}"),
                ],
                RunOpts::read(),
            )
            .await?;
        let line = text_line(&out.stdout);
        let mut parts = line.split('\0');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(tracking), Some(remote), Some(merge))
                if !tracking.is_empty() && !remote.is_empty() && !merge.is_empty() =>
            {
                Ok(Some(Upstream {
                    remote: remote.to_string(),
                    merge: merge.to_string(),
                    tracking: tracking.to_string(),
                }))
            }
            _ => Ok(None),
        }
    }
}

/// `git version 2.47.3`, `git version 2.39.3 (Apple Git-146)`, `git version
/// 2.45.1.windows.1` → (major, minor, patch).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.trim().strip_prefix("git version ")?;
    let word = rest.split_whitespace().next()?;
    let mut nums = word.split('.').map(|n| {
        let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = nums.next().flatten()?;
    let minor = nums.next().flatten()?;
    let patch = nums.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Parses `git status --porcelain=v2 -z` output.
pub fn parse_porcelain_v2(out: &[u8]) -> Result<Vec<Status>, String> {
    let mut entries = Vec::new();
    let mut records = out.split(|b| *b == 0);
    while let Some(rec) = records.next() {
        if rec.is_empty() {
            continue;
        }
        let kind = rec.first().copied();
        // The fixed fields before the path of each kind of record.
        let path_after = |fields: usize| -> Result<(String, PathBuf), String> {
            let mut it = rec.splitn(fields + 1, |b| *b == b' ');
            let xy = it.nth(1).map(|x| String::from_utf8_lossy(x).into_owned());
            let path = it.nth(fields.saturating_sub(2));
            match (xy, path) {
                (Some(xy), Some(p)) if !p.is_empty() => Ok((xy, bytes_to_path(p))),
                _ => Err(format!("a short record {:?}", String::from_utf8_lossy(rec))),
            }
        };
        match kind {
            Some(b'1') => {
                let (xy, path) = path_after(8)?;
                entries.push(Status::Changed { path, xy });
            }
            Some(b'2') => {
                let (xy, path) = path_after(9)?;
                let from = records
                    .next()
                    .filter(|f| !f.is_empty())
                    .map(bytes_to_path)
                    .ok_or_else(|| format!("a rename of {} without its origin", path.display()))?;
                entries.push(Status::Renamed { path, from, xy });
            }
            Some(b'u') => {
                let (xy, path) = path_after(10)?;
                entries.push(Status::Unmerged { path, xy });
            }
            Some(b'?') | Some(b'!') => {
                let path = rec
                    .get(2..)
                    .filter(|p| !p.is_empty())
                    .map(bytes_to_path)
                    .ok_or_else(|| "an untracked record without a path".to_string())?;
                entries.push(if kind == Some(b'?') {
                    Status::Untracked { path }
                } else {
                    Status::Ignored { path }
                });
            }
            Some(b'#') => {}
            _ => {
                return Err(format!(
                    "an unknown record {:?}",
                    String::from_utf8_lossy(rec)
                ));
            }
        }
    }
    Ok(entries)
}

/// `text` with the userinfo of every URL replaced: `https://user:token@host`
/// → `https://***@host`. Nothing git quotes can show a credential.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i.saturating_add(3));
        out.push_str(before);
        // The authority ends at the first `/`, `?`, `#`, space or quote.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '\'' | '"' | '`') || c.is_whitespace())
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(authority.get(at..).unwrap_or(""));
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `git <args>`, scrubbed, cut to a readable length.
fn describe(args: &[OsString]) -> String {
    let mut s = String::from("git");
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    let s = scrub(&s);
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s;
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut = cut.saturating_sub(1);
    }
    format!("{}…", s.get(..cut).unwrap_or(""))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(n);
    lines.get(skip..).unwrap_or(&[]).join("\n")
}

fn text_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out)
        .trim_end_matches('\n')
        .to_string()
}

#[cfg(unix)]
fn bytes_to_path(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(OsStr::from_bytes(b))
}

#[cfg(not(unix))]
fn bytes_to_path(b: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(b).into_owned())
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().replace('\\', "/").into_bytes()
}

/// Reads all of a pipe, `None` once it passes `max` bytes.
async fn read_limited(pipe: Option<tokio::process::ChildStdout>, max: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let Some(p) = pipe else {
        return Some(buf);
    };
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut p = p.take(limit);
    if p.read_to_end(&mut buf).await.is_err() {
        return Some(buf);
    }
    if buf.len() > max { None } else { Some(buf) }
}

/// Reads all of a pipe, keeping its last [`STDERR_KEEP`] bytes.
async fn read_tail(pipe: Option<tokio::process::ChildStderr>) -> Vec<u8> {
    let mut keep = Vec::new();
    let Some(mut p) = pipe else {
        return keep;
    };
    let mut buf = [0u8; 8192];
    loop {
        match p.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                keep.extend_from_slice(buf.get(..n).unwrap_or(&[]));
                if keep.len() > 2 * STDERR_KEEP {
                    keep.drain(..keep.len().saturating_sub(STDERR_KEEP));
                }
            }
        }
    }
    keep
}

#[cfg(unix)]
const TERM: i32 = libc::SIGTERM;
#[cfg(unix)]
const KILL: i32 = libc::SIGKILL;
#[cfg(not(unix))]
const TERM: i32 = 15;
#[cfg(not(unix))]
const KILL: i32 = 9;

/// Sends `sig` to the process group `pgid` (the child's own, from
/// `process_group(0)`).
fn kill_group(pgid: Option<u32>, sig: i32) {
    #[cfg(unix)]
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok())
        && pid > 0
    {
        // SAFETY: a plain syscall; a group already gone yields ESRCH.
        unsafe {
            libc::killpg(pid, sig);
        }
    }
    #[cfg(not(unix))]
    let _ = (pgid, sig);
}

/// Stops a call: TERM to its group, a short grace, then KILL to whatever
/// of the group is left (ssh, a credential helper, a hook's children).
async fn terminate(child: &mut tokio::process::Child, pgid: Option<u32>) {
    kill_group(pgid, TERM);
    let _ = tokio::time::timeout(GRACE, child.wait()).await;
    kill_group(pgid, KILL);
    let _ = child.kill().await;
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// Every call isolated from the machine's git config.
    fn iso_env() -> Vec<(OsString, OsString)> {
        [
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_AUTHOR_NAME", "t"),
            ("GIT_AUTHOR_EMAIL", "t@example.invalid"),
            ("GIT_COMMITTER_NAME", "t"),
            ("GIT_COMMITTER_EMAIL", "t@example.invalid"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
    }

    fn settings() -> Settings {
        Settings {
            env: iso_env(),
            ..Settings::default()
        }
    }

    /// Plain git, as a user would run it, for setting up a test.
    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .envs(iso_env())
            .env("GIT_EDITOR", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Like `sh`, but may fail.
    fn sh_status(dir: &Path, args: &[&str]) -> bool {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .envs(iso_env())
            .env("GIT_EDITOR", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    }

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A repository on `main` with one commit.
    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        sh(d.path(), &["init", "-q", "-b", "main"]);
        write(d.path(), "first.md", "one\n");
        sh(d.path(), &["add", "first.md"]);
        sh(d.path(), &["commit", "-q", "-m", "first"]);
        d
    }

    async fn open(d: &Path) -> Git {
        Git::open_with(d, settings()).await.unwrap()
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn alive(pid: i32) -> bool {
        // A zombie waiting for its reaper is gone for our purposes.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("git version 2.47.3\n"), Some((2, 47, 3)));
        assert_eq!(
            parse_version("git version 2.39.3 (Apple Git-146)"),
            Some((2, 39, 3))
        );
        assert_eq!(
            parse_version("git version 2.45.1.windows.1"),
            Some((2, 45, 1))
        );
        assert_eq!(parse_version("git version 2.38"), Some((2, 38, 0)));
        assert_eq!(parse_version("git version 3.0.0-rc1"), Some((3, 0, 0)));
        assert_eq!(parse_version("hub version 2.14"), None);
        assert_eq!(parse_version("git version x"), None);
    }

    #[tokio::test]
    async fn an_old_git_is_refused_naming_both_versions() {
        let d = repo();
        let bin = tempfile::tempdir().unwrap();
        let fake = script(bin.path(), "git", "echo 'git version 2.37.9'");
        let s = Settings {
            program: fake,
            ..settings()
        };
        let err = Git::open_with(d.path(), s).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GitError::TooOld { .. }), "{msg}");
        assert!(msg.contains("2.37.9") && msg.contains("2.38"), "{msg}");
        // The real one passes.
        let git = open(d.path()).await;
        assert!(parse_version(&format!("git version {}", git.version())).unwrap() >= (2, 38, 0));
    }

    #[tokio::test]
    async fn opens_from_a_subfolder_and_refuses_a_plain_folder() {
        let d = repo();
        write(d.path(), "sub/x.md", "x");
        let git = open(&d.path().join("sub")).await;
        assert_eq!(git.top(), d.path().canonicalize().unwrap());
        assert!(git.git_dir().ends_with(".git"));
        let plain = tempfile::tempdir().unwrap();
        let err = Git::open_with(plain.path(), settings()).await.unwrap_err();
        assert!(matches!(err, GitError::NotARepository { .. }), "{err}");
        assert!(err.to_string().contains("not a git repository"), "{err}");
    }

    /// An HTTP server that asks for credentials on every request.
    async fn asks_for_credentials() -> u16 {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_credential_prompt_fails_at_once() {
        let d = repo();
        let git = open(d.path()).await;
        let port = asks_for_credentials().await;
        // An askpass that waits for a user who is not there (a GUI dialog).
        let bin = tempfile::tempdir().unwrap();
        let askpass = script(bin.path(), "askpass", "sleep 30");
        let started = Instant::now();
        let err = git
            .run(
                [
                    "-c".to_string(),
                    format!("core.askPass={}", askpass.display()),
                    "ls-remote".to_string(),
                    format!("http://127.0.0.1:{port}/x"),
                ],
                RunOpts {
                    timeout: Some(Duration::from_secs(20)),
                    ..RunOpts::read()
                },
            )
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let msg = err.to_string();
        assert!(matches!(err, GitError::Failed { .. }), "{msg}");
        assert!(msg.contains("terminal prompts disabled"), "{msg}");
    }

    #[tokio::test]
    async fn the_default_ssh_never_prompts_and_a_users_own_is_kept() {
        let d = repo();
        let git = open(d.path()).await;
        let env = git.child_env(&RunOpts::default());
        assert!(
            env.iter()
                .any(|(k, v)| k == "GIT_SSH_COMMAND" && v == BATCH_SSH),
            "{env:?}"
        );
        // Their own ssh command, in the environment or the config, wins.
        let mut s = settings();
        s.env.push(("GIT_SSH_COMMAND".into(), "my-ssh".into()));
        let git = Git::open_with(d.path(), s).await.unwrap();
        let env = git.child_env(&RunOpts::default());
        let ssh: Vec<_> = env.iter().filter(|(k, _)| k == "GIT_SSH_COMMAND").collect();
        assert_eq!(ssh.len(), 1, "{env:?}");
        assert_eq!(ssh[0].1, "my-ssh");
        sh(d.path(), &["config", "core.sshCommand", "ssh -i key"]);
        let git = open(d.path()).await;
        let env = git.child_env(&RunOpts::default());
        assert!(!env.iter().any(|(k, _)| k == "GIT_SSH_COMMAND"), "{env:?}");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let d = repo();
        let bin = tempfile::tempdir().unwrap();
        let pidfile = bin.path().join("pid");
        let ssh = script(
            bin.path(),
            "ssh",
            &format!("sleep 30 &\necho $! > {}\nwait", pidfile.display()),
        );
        let mut s = settings();
        s.env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
        let git = Git::open_with(d.path(), s).await.unwrap();
        let started = Instant::now();
        let err = git
            .run(
                ["ls-remote", "ssh://127.0.0.1:9/x"],
                RunOpts {
                    timeout: Some(Duration::from_secs(1)),
                    ..RunOpts::read()
                },
            )
            .await
            .unwrap_err();
        let took = started.elapsed();
        let msg = err.to_string();
        assert!(matches!(err, GitError::Timeout { .. }), "{msg}");
        assert!(
            msg.contains("git ls-remote ssh://127.0.0.1:9/x") && msg.contains("1s"),
            "{msg}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = Instant::now();
        while alive(pid) && gone.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the ssh's sleep {pid} outlived the timeout");
    }

    #[tokio::test]
    async fn a_grandchild_holding_stderr_open_does_not_stall_a_finished_call() {
        let d = repo();
        let bin = tempfile::tempdir().unwrap();
        let pidfile = bin.path().join("pid");
        let ssh = script(
            bin.path(),
            "ssh",
            &format!(
                "sleep 30 >/dev/null &\necho $! > {}\nexit 1",
                pidfile.display()
            ),
        );
        let mut s = settings();
        s.env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
        let git = Git::open_with(d.path(), s).await.unwrap();
        let started = Instant::now();
        let err = git
            .run(["ls-remote", "ssh://127.0.0.1:9/x"], RunOpts::read())
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Failed { .. }), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = Instant::now();
        while alive(pid) && gone.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "the ssh's sleep {pid} outlived the call");
    }

    #[tokio::test]
    async fn a_failure_names_the_command_its_code_and_stderr_never_a_credential() {
        let d = repo();
        let git = open(d.path()).await;
        let err = git
            .run(["rev-parse", "--verify", "nope"], RunOpts::read())
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                GitError::Failed {
                    code: Some(128),
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("`git rev-parse --verify nope`"), "{msg}");
        assert!(msg.contains("exit code 128"), "{msg}");
        assert!(msg.contains("fatal: Needed a single revision"), "{msg}");
        // A URL with a token in it.
        let err = git
            .run(
                ["ls-remote", "https://me:s3cret-token@127.0.0.1:9/x"],
                RunOpts::read(),
            )
            .await
            .unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains("s3cret") && !msg.contains("me:"), "{msg}");
        assert!(msg.contains("https://***@127.0.0.1:9/x"), "{msg}");
    }

    #[test]
    fn userinfo_is_scrubbed() {
        assert_eq!(
            scrub("fatal: 'https://u:p@h.example/r.git' and ssh://git@h:22/r x://y"),
            "fatal: 'https://***@h.example/r.git' and ssh://***@h:22/r x://y"
        );
        assert_eq!(scrub("https://tok@host"), "https://***@host");
        assert_eq!(scrub("no url here @ all"), "no url here @ all");
        assert_eq!(scrub("https://h/a@b"), "https://h/a@b");
        assert_eq!(scrub("ends with ://"), "ends with ://");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let d = repo();
        write(d.path(), "big.md", &"x".repeat(10_000));
        sh(d.path(), &["add", "big.md"]);
        sh(d.path(), &["commit", "-q", "-m", "big"]);
        let git = open(d.path()).await;
        let err = git
            .run(
                ["cat-file", "blob", "HEAD:big.md"],
                RunOpts {
                    max_output: Some(1000),
                    ..RunOpts::read()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, GitError::OutputTooLarge { limit: 1000, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("git cat-file blob HEAD:big.md"),
            "{err}"
        );
        let ok = git
            .run(["cat-file", "blob", "HEAD:big.md"], RunOpts::read())
            .await
            .unwrap();
        assert_eq!(ok.stdout.len(), 10_000);
    }

    #[tokio::test]
    async fn head_on_a_branch_and_detached() {
        let d = repo();
        let git = open(d.path()).await;
        assert_eq!(git.head().await.unwrap(), Head::Branch("main".into()));
        write(d.path(), "first.md", "two\n");
        sh(d.path(), &["commit", "-q", "-am", "second"]);
        let first = sh(d.path(), &["rev-parse", "HEAD~1"]);
        sh(d.path(), &["checkout", "-q", "--detach", "HEAD~1"]);
        assert_eq!(git.head().await.unwrap(), Head::Detached(first.clone()));
        assert_eq!(git.upstream().await.unwrap(), None);
        // An unborn branch is still a branch.
        let e = tempfile::tempdir().unwrap();
        sh(e.path(), &["init", "-q", "-b", "trunk"]);
        let git = open(e.path()).await;
        assert_eq!(git.head().await.unwrap(), Head::Branch("trunk".into()));
        assert_eq!(git.rev_parse("HEAD").await.unwrap(), None);
    }

    #[tokio::test]
    async fn rev_parse_names_a_commit_or_nothing() {
        let d = repo();
        let git = open(d.path()).await;
        let head = git.rev_parse("HEAD").await.unwrap().unwrap();
        assert_eq!(head, sh(d.path(), &["rev-parse", "HEAD"]));
        assert_eq!(git.rev_parse("no-such-branch").await.unwrap(), None);
        // Never taken for an option.
        assert_eq!(git.rev_parse("--all").await.unwrap(), None);
    }

    #[tokio::test]
    async fn status_with_spaces_non_ascii_and_renames() {
        let d = repo();
        write(d.path(), "a b.md", "a\n");
        write(d.path(), "Ñotes/été 1.md", "é\n");
        write(d.path(), "old name.md", "some text that stays the same\n");
        write(d.path(), "glob[1].md", "g\n");
        sh(d.path(), &["add", "."]);
        sh(d.path(), &["commit", "-q", "-m", "more"]);
        write(d.path(), "a b.md", "changed\n");
        write(d.path(), "Ñotes/été 1.md", "changed\n");
        sh(d.path(), &["mv", "old name.md", "new näme.md"]);
        write(d.path(), "Ñotes/sub dir/ü new.md", "new\n");
        write(d.path(), "glob1.md", "other\n");
        let git = open(d.path()).await;
        let mut all = git.status_porcelain(&[]).await.unwrap();
        all.sort_by(|a, b| a.path().cmp(b.path()));
        assert_eq!(
            all,
            vec![
                Status::Changed {
                    path: "a b.md".into(),
                    xy: ".M".into()
                },
                Status::Untracked {
                    path: "glob1.md".into()
                },
                Status::Renamed {
                    path: "new näme.md".into(),
                    from: "old name.md".into(),
                    xy: "R.".into()
                },
                Status::Untracked {
                    path: "Ñotes/sub dir/ü new.md".into()
                },
                Status::Changed {
                    path: "Ñotes/été 1.md".into(),
                    xy: ".M".into()
                },
            ]
        );
        // Scoped to paths, taken literally (not as globs).
        let some = git
            .status_porcelain(&[Path::new("a b.md"), Path::new("glob[1].md")])
            .await
            .unwrap();
        assert_eq!(
            some,
            vec![Status::Changed {
                path: "a b.md".into(),
                xy: ".M".into()
            }]
        );
    }

    #[test]
    fn porcelain_records_parse() {
        let out = b"# branch.oid abc\0\
1 .M N... 100644 100644 100644 1111 1111 a b.md\0\
2 R. N... 100644 100644 100644 2222 2222 R100 to  x.md\0from x.md\0\
u UU N... 100644 100644 100644 100644 3 4 5 c.md\0\
? new file.md\0\
! ignored dir/f.md\0";
        assert_eq!(
            parse_porcelain_v2(out).unwrap(),
            vec![
                Status::Changed {
                    path: "a b.md".into(),
                    xy: ".M".into()
                },
                Status::Renamed {
                    path: "to  x.md".into(),
                    from: "from x.md".into(),
                    xy: "R.".into()
                },
                Status::Unmerged {
                    path: "c.md".into(),
                    xy: "UU".into()
                },
                Status::Untracked {
                    path: "new file.md".into()
                },
                Status::Ignored {
                    path: "ignored dir/f.md".into()
                },
            ]
        );
        assert!(parse_porcelain_v2(b"1 .M N...\0").is_err());
        assert!(parse_porcelain_v2(b"2 R. N... 1 1 1 1 1 R100 a.md").is_err());
        assert!(parse_porcelain_v2(b"z what\0").is_err());
        assert_eq!(parse_porcelain_v2(b"").unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_read_only_status_leaves_the_index_alone() {
        let d = repo();
        let git = open(d.path()).await;
        let index = git.git_dir().join("index");
        // Make the index stale: same content, new mtime, so a status that
        // may take optional locks would refresh and rewrite it.
        let f = std::fs::File::options()
            .write(true)
            .open(d.path().join("first.md"))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        let before = std::fs::read(&index).unwrap();
        assert_eq!(git.status_porcelain(&[]).await.unwrap(), vec![]);
        assert_eq!(
            std::fs::read(&index).unwrap(),
            before,
            "status rewrote the index"
        );
    }

    #[tokio::test]
    async fn a_merge_in_progress_is_seen() {
        let d = repo();
        let git = open(d.path()).await;
        assert_eq!(git.in_progress(), vec![]);
        sh(d.path(), &["checkout", "-q", "-b", "other"]);
        write(d.path(), "first.md", "theirs\n");
        sh(d.path(), &["commit", "-q", "-am", "theirs"]);
        sh(d.path(), &["checkout", "-q", "main"]);
        write(d.path(), "first.md", "ours\n");
        sh(d.path(), &["commit", "-q", "-am", "ours"]);
        assert!(!sh_status(d.path(), &["merge", "-q", "other"]));
        assert_eq!(git.in_progress(), vec![InProgress::Merge]);
        let st = git.status_porcelain(&[]).await.unwrap();
        assert_eq!(
            st,
            vec![Status::Unmerged {
                path: "first.md".into(),
                xy: "UU".into()
            }]
        );
        sh(d.path(), &["merge", "--abort"]);
        assert_eq!(git.in_progress(), vec![]);
        // A rebase that stops on the same conflict.
        sh(d.path(), &["checkout", "-q", "other"]);
        assert!(!sh_status(d.path(), &["rebase", "-q", "main"]));
        assert_eq!(git.in_progress(), vec![InProgress::Rebase]);
        sh(d.path(), &["rebase", "--abort"]);
        assert!(!sh_status(d.path(), &["cherry-pick", "main"]));
        assert_eq!(git.in_progress(), vec![InProgress::CherryPick]);
    }

    #[tokio::test]
    async fn a_stale_index_lock_is_seen_and_left() {
        let d = repo();
        let git = open(d.path()).await;
        assert_eq!(git.index_lock().unwrap(), None);
        let lock = git.git_dir().join("index.lock");
        let f = std::fs::File::create(&lock).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let seen = git.index_lock().unwrap().unwrap();
        assert_eq!(seen.path, lock);
        assert!(seen.age >= Duration::from_secs(3599), "{:?}", seen.age);
        // Read-only calls still work beside it; nothing removes it.
        assert_eq!(git.status_porcelain(&[]).await.unwrap(), vec![]);
        assert!(git.head().await.is_ok());
        assert!(lock.exists());
    }

    #[tokio::test]
    async fn show_blob_gives_committed_bytes_or_none() {
        let d = repo();
        write(d.path(), "dir/ñ a.md", "committed\n");
        sh(d.path(), &["add", "."]);
        sh(d.path(), &["commit", "-q", "-m", "dir"]);
        write(d.path(), "dir/ñ a.md", "uncommitted\n");
        let git = open(d.path()).await;
        assert_eq!(
            git.show_blob("HEAD", Path::new("dir/ñ a.md"))
                .await
                .unwrap(),
            Some(b"committed\n".to_vec())
        );
        assert_eq!(
            git.show_blob("HEAD~1", Path::new("dir/ñ a.md"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            git.show_blob("HEAD", Path::new("absent.md")).await.unwrap(),
            None
        );
        assert_eq!(git.show_blob("HEAD", Path::new("dir")).await.unwrap(), None);
        assert_eq!(
            git.show_blob("HEAD", Path::new("dir/*")).await.unwrap(),
            None
        );
        assert_eq!(
            git.show_blob("HEAD", Path::new("nodir/x.md"))
                .await
                .unwrap(),
            None
        );
        assert!(
            git.show_blob("no-such-rev", Path::new("first.md"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn upstream_of_a_clone_and_of_a_lone_branch() {
        let origin = tempfile::tempdir().unwrap();
        sh(origin.path(), &["init", "-q", "--bare", "-b", "main"]);
        let d = repo();
        let git = open(d.path()).await;
        assert_eq!(git.upstream().await.unwrap(), None);
        sh(
            d.path(),
            &["remote", "add", "origin", origin.path().to_str().unwrap()],
        );
        sh(d.path(), &["push", "-q", "-u", "origin", "main"]);
        assert_eq!(
            git.upstream().await.unwrap(),
            Some(Upstream {
                remote: "origin".into(),
                merge: "refs/heads/main".into(),
                tracking: "refs/remotes/origin/main".into(),
            })
        );
    }
}
