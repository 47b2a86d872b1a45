//! Running a child program for a turn: its own process group, stdin fed,
//! stdout/stderr read, and on timeout or shutdown the whole group gets
//! TERM, then KILL after a grace period — tool grandchildren included.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use serde_yaml::Mapping;

use super::TurnError;
use crate::agent::keys::{self, ListOrText};
use crate::note::FieldError;

/// `program` and `args`: the keys the CLI backends (`claude`, `codex`,
/// `gemini`) read, each into its own `Config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CliKeys {
    /// `program`: the executable instead of the backend's default.
    pub program: Option<String>,
    /// `args`: extra arguments, a list as given or a text split at spaces.
    pub args: Vec<String>,
}

impl CliKeys {
    pub fn read(meta: &Mapping) -> Result<CliKeys, FieldError> {
        let program = keys::text(meta, "program")?;
        let args = match keys::list_or_text(meta, "args", "a list like [--verbose] or text")? {
            None => Vec::new(),
            Some(ListOrText::List(items)) => items,
            Some(ListOrText::Text(s)) => s.split_whitespace().map(str::to_string).collect(),
        };
        Ok(CliKeys { program, args })
    }

    /// The program to run: `program`, else `default`.
    pub fn program_or(&self, default: &str) -> String {
        self.program.clone().unwrap_or_else(|| default.to_string())
    }
}

/// How long a process group gets between TERM and KILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// Why a child could not start, in words that point at the fix: a missing
/// working directory is not a missing program.
fn spawn_error(prog: &str, cwd: &std::path::Path, e: &std::io::Error) -> TurnError {
    let name = prog.rsplit('/').next().unwrap_or(prog);
    if !cwd.is_dir() {
        return TurnError::Failed(format!(
            "the workspace {} does not exist (field `workspace`)",
            cwd.display()
        ));
    }
    if e.kind() == std::io::ErrorKind::NotFound {
        TurnError::Failed(format!(
            "{name} not found on PATH; install it (or set `program:` in the definition)"
        ))
    } else {
        TurnError::Failed(format!("could not start {prog}: {e}"))
    }
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    /// Exit code, or `None` if killed by a signal.
    pub code: Option<i32>,
}

/// Sends `sig` to a whole process group.
#[cfg(unix)]
pub fn signal_group(pgid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pgid)
        && pid > 0
    {
        // SAFETY: plain syscall; a stale pgid only yields ESRCH.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// Terminates a process group: TERM, wait up to the grace, then KILL.
pub async fn terminate_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            signal_group(pid, libc::SIGKILL);
        } else {
            // The leader is gone; grandchildren may linger in the group.
            signal_group(pid, libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
}

/// Runs a child with `spec.stdin` as input until it exits, the deadline
/// passes, or `cancel` fires; returns all of its output. With `live`,
/// each line of stdout is also sent as a `text` event as it arrives (a
/// `command` turn's live output).
pub async fn run(
    spec: &Spawn<'_>,
    cancel: &CancellationToken,
    live: Option<&super::EventSink>,
) -> Result<Finished, TurnError> {
    let Spawn {
        argv,
        stdin,
        cwd,
        env,
        remove_env,
        deadline,
        timeout,
        ..
    } = *spec;
    let stdin = stdin.unwrap_or("");
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| TurnError::Failed("empty command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove_env {
        cmd.env_remove(k);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(prog, cwd, &e))?;
    // The group id, kept: `child.id()` is `None` once the child is reaped.
    let pgid = child.id();
    if let Some(mut w) = child.stdin.take() {
        let input = stdin.to_string();
        tokio::spawn(async move {
            // A child that does not read stdin closes it: not an error.
            let _ = w.write_all(input.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
    // Readers run on their own, so the child's exit can be noticed even
    // while a grandchild still holds its output open.
    let reader = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s).await;
            }
            s
        })
    };
    let out_task = match (live.cloned(), child.stdout.take()) {
        (Some(events), Some(pipe)) => tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut s = Vec::new();
            let mut r = tokio::io::BufReader::new(pipe);
            loop {
                let start = s.len();
                match r.read_until(b'\n', &mut s).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => events.emit(super::TurnEvent::Text {
                        text: String::from_utf8_lossy(s.get(start..).unwrap_or_default())
                            .into_owned(),
                    }),
                }
            }
            s
        }),
        (_, pipe) => reader(pipe.map(|p| Box::new(p) as _)),
    };
    let err_task = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| TurnError::Failed(format!("waiting for {prog}: {e}")))?,
        _ = tokio::time::sleep_until(deadline) => {
            terminate_group(&mut child).await;
            return Err(TurnError::Timeout(timeout));
        }
        _ = cancel.cancelled() => {
            terminate_group(&mut child).await;
            return Err(TurnError::Cancelled);
        }
    };
    // The program has exited: collect what it wrote. Output still held open
    // by a grandchild gets a short grace, then the group is killed (which
    // closes the pipes) — a finished command is never turned into a timeout.
    let collect = async {
        let out = out_task.await.unwrap_or_default();
        let err = err_task.await.unwrap_or_default();
        (out, err)
    };
    tokio::pin!(collect);
    let grace_end = deadline.min(crate::time::after(KILL_GRACE));
    let (o, e) = tokio::select! {
        r = &mut collect => r,
        _ = tokio::time::sleep_until(grace_end) => {
            #[cfg(unix)]
            if let Some(pid) = pgid {
                signal_group(pid, libc::SIGKILL);
            }
            collect.await
        }
    };
    // Grandchildren left in the group do not outlive the turn.
    #[cfg(unix)]
    if let Some(pid) = pgid {
        signal_group(pid, libc::SIGKILL);
    }
    Ok(Finished {
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
        code: status.code(),
    })
}

/// How to start a streaming child.
#[derive(Debug, Clone)]
pub struct Spawn<'a> {
    pub argv: &'a [String],
    /// Text for stdin, or `None` to give the child a closed stdin.
    pub stdin: Option<&'a str>,
    pub cwd: &'a std::path::Path,
    pub env: &'a [(String, String)],
    pub remove_env: &'a [&'a str],
    /// When the turn must be over (all attempts together).
    pub deadline: tokio::time::Instant,
    /// The configured timeout (named in the error).
    pub timeout: Duration,
    /// Longest time without a line on stdout.
    pub stall: Duration,
}

/// What a streaming child left besides its stdout lines.
#[derive(Debug)]
pub struct Streamed {
    /// The last 64 KiB of stderr.
    pub stderr: String,
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
}

const STDERR_KEEP: usize = 64 * 1024;

/// Runs a child and hands each stdout line (without its newline) to
/// `on_line` as it arrives; `on_line` returns `false` once the stream said
/// its last word (a `result` line), and then the child gets a short grace
/// to exit before its group is killed — a grandchild holding stdout open
/// cannot stall a finished turn. Lines may be any length. On timeout,
/// stall or cancel the whole process group is terminated.
pub async fn run_lines(
    spec: &Spawn<'_>,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(&[u8]) -> bool,
) -> Result<Streamed, TurnError> {
    use tokio::io::AsyncBufReadExt;
    let (prog, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| TurnError::Failed("empty command".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(spec.cwd)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    for k in spec.remove_env {
        cmd.env_remove(k);
    }
    #[cfg(unix)]
    cmd.process_group(0);
    let name = prog.rsplit('/').next().unwrap_or(prog);
    let mut child = cmd.spawn().map_err(|e| spawn_error(prog, spec.cwd, &e))?;
    // The group id, kept: `child.id()` is `None` once the child is reaped.
    let pgid = child.id();
    if let (Some(mut w), Some(input)) = (child.stdin.take(), spec.stdin) {
        let input = input.to_string();
        tokio::spawn(async move {
            let _ = w.write_all(input.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
    let stderr_task = child.stderr.take().map(|mut e| {
        tokio::spawn(async move {
            let mut keep: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match e.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        keep.extend_from_slice(buf.get(..n).unwrap_or(&buf));
                        if keep.len() > 2 * STDERR_KEEP {
                            keep.drain(..keep.len() - STDERR_KEEP);
                        }
                    }
                }
            }
            String::from_utf8_lossy(&keep).into_owned()
        })
    });
    let Some(stdout) = child.stdout.take() else {
        terminate_group(&mut child).await;
        return Err(TurnError::Failed("no stdout from child".into()));
    };
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
    let deadline = spec.deadline;
    let mut buf = Vec::new();
    let mut finished = false;
    let mut stall_at = crate::time::after(spec.stall);
    let failure = loop {
        tokio::select! {
            r = reader.read_until(b'\n', &mut buf) => match r {
                Ok(0) => break None,
                Ok(_) => {
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let more = on_line(line);
                    buf.clear();
                    stall_at = crate::time::after(spec.stall);
                    if !more {
                        finished = true;
                        break None;
                    }
                }
                Err(_) => break None,
            },
            _ = tokio::time::sleep_until(deadline) => break Some(TurnError::Timeout(spec.timeout)),
            _ = tokio::time::sleep_until(stall_at) => break Some(TurnError::Failed(format!(
                "{name} produced no output for {:?} (stall_timeout); stopped it", spec.stall
            ))),
            _ = cancel.cancelled() => break Some(TurnError::Cancelled),
        }
    };
    if let Some(err) = failure {
        terminate_group(&mut child).await;
        return Err(err);
    }
    if !buf.is_empty() {
        on_line(&buf);
    }
    // The stream is complete: the child should exit now; don't wait for
    // anything that holds its stdout open.
    let wait_until = if finished {
        deadline.min(crate::time::after(KILL_GRACE))
    } else {
        deadline
    };
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| TurnError::Failed(format!("waiting for {name}: {e}")))?,
        _ = tokio::time::sleep_until(wait_until), if finished => {
            terminate_group(&mut child).await;
            child.wait().await.map_err(|e| TurnError::Failed(format!("waiting for {name}: {e}")))?
        }
        _ = tokio::time::sleep_until(deadline), if !finished => {
            terminate_group(&mut child).await;
            return Err(TurnError::Timeout(spec.timeout));
        }
        _ = cancel.cancelled() => {
            terminate_group(&mut child).await;
            return Err(TurnError::Cancelled);
        }
    };
    // Grandchildren left in the group do not outlive the turn.
    #[cfg(unix)]
    if let Some(pid) = pgid {
        signal_group(pid, libc::SIGKILL);
    }
    let stderr = match stderr_task {
        Some(t) => tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => String::new(),
    };
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    Ok(Streamed {
        stderr,
        code: status.code(),
        signal,
    })
}

/// The stdout stream of one run of a headless CLI (claude, codex, gemini).
pub trait CliStream: Default {
    /// Takes one stdout line; returns `false` once the stream has said its
    /// last word (so a grandchild holding stdout open cannot stall it).
    fn feed(&mut self, line: &[u8], events: &super::EventSink) -> bool;
    /// How the run ended; `None` for a resumed session the CLI no longer
    /// has.
    fn outcome(
        self,
        done: &Streamed,
        resumed: bool,
    ) -> Option<Result<super::TurnOutput, TurnError>>;
}

/// Runs a headless CLI for a turn. `argv_for(session)` builds the command
/// line that resumes `session`, or starts fresh for `None`. A resumed
/// session the CLI no longer has is retried once with a fresh one.
pub async fn run_cli<S: CliStream>(
    req: &super::TurnRequest,
    events: &super::EventSink,
    cancel: &CancellationToken,
    stdin: Option<&str>,
    remove_env: &[&str],
    argv_for: impl Fn(Option<&str>) -> Vec<String>,
) -> Result<super::TurnOutput, TurnError> {
    let mut resume = req.session.clone();
    loop {
        let argv = argv_for(resume.as_deref());
        let spec = Spawn {
            argv: &argv,
            stdin,
            cwd: &req.workspace,
            env: &req.env,
            remove_env,
            deadline: req.deadline,
            timeout: req.timeout,
            stall: req.stall,
        };
        let mut stream = S::default();
        let done = run_lines(&spec, cancel, |l| stream.feed(l, events)).await?;
        match stream.outcome(&done, resume.is_some()) {
            Some(r) => return r,
            None => {
                tracing::warn!(
                    "{}: the stored session is gone from {}; starting a fresh one",
                    req.definition.name,
                    argv.first().map_or("the CLI", String::as_str)
                );
                resume = None;
            }
        }
    }
}
