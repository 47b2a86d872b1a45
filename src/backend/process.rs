//! Running a child program for a turn: its own process group, stdin fed,
//! stdout/stderr read, and on timeout or shutdown the whole group gets
//! TERM, then KILL after a grace period — tool grandchildren included.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::TurnError;

/// How long a process group gets between TERM and KILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

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

/// Runs `argv` with `stdin` as input, in `cwd`, with `env`, until it exits,
/// the timeout passes, or `cancel` fires.
pub async fn run(
    argv: &[String],
    stdin: &str,
    cwd: &std::path::Path,
    env: &[(String, String)],
    remove_env: &[&str],
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Finished, TurnError> {
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
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TurnError::Failed(format!("{prog} not found on PATH (or not executable)"))
        } else {
            TurnError::Failed(format!("could not start {prog}: {e}"))
        }
    })?;
    let mut child_in = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let input = stdin.to_string();
    let feed = async move {
        if let Some(mut w) = child_in.take() {
            // A child that does not read stdin closes it: not an error.
            let _ = w.write_all(input.as_bytes()).await;
            let _ = w.shutdown().await;
        }
    };
    let read_out = async move {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut s).await;
        }
        s
    };
    let read_err = async move {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut s).await;
        }
        s
    };
    let io = async { tokio::join!(feed, read_out, read_err) };
    tokio::pin!(io);
    let outcome = tokio::select! {
        (_, o, e) = &mut io => Ok((o, e)),
        _ = tokio::time::sleep(timeout) => Err(TurnError::Timeout(timeout)),
        _ = cancel.cancelled() => Err(TurnError::Cancelled),
    };
    match outcome {
        Ok((o, e)) => {
            // Output closed; the child may still be running (it closed its
            // streams early) — give it the rest of the time to exit.
            let status = tokio::select! {
                s = child.wait() => s.map_err(|e| TurnError::Failed(format!("waiting for {prog}: {e}")))?,
                _ = tokio::time::sleep(timeout) => {
                    terminate_group(&mut child).await;
                    return Err(TurnError::Timeout(timeout));
                }
                _ = cancel.cancelled() => {
                    terminate_group(&mut child).await;
                    return Err(TurnError::Cancelled);
                }
            };
            // Grandchildren left in the group do not outlive the turn.
            #[cfg(unix)]
            if let Some(pid) = child.id() {
                signal_group(pid, libc::SIGKILL);
            }
            Ok(Finished {
                stdout: String::from_utf8_lossy(&o).into_owned(),
                stderr: String::from_utf8_lossy(&e).into_owned(),
                code: status.code(),
            })
        }
        Err(e) => {
            terminate_group(&mut child).await;
            Err(e)
        }
    }
}
