//! The `vaultrunner` binary: parses arguments, calls the library, prints.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use vaultrunner::cli::{self, SendOptions};

/// `println!` that ignores a closed stdout (`vaultrunner … | head -1`)
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
use vaultrunner::engine::Config;
use vaultrunner::server::{self, Listen, ServeOptions};
use vaultrunner::trigger::http::HttpOptions;
use vaultrunner::trigger::watch::WatchOptions;

#[derive(Parser)]
#[command(
    name = "vaultrunner",
    version,
    about = "Run LLM agents from Markdown notes in a vault"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the vault and run agents as messages arrive, until SIGINT/SIGTERM.
    Serve {
        /// The vault directory.
        vault: PathBuf,
        /// Quiet time (ms) before a note someone else wrote is read.
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
        /// Agents run at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// Seconds between safety-net full rescans of the vault.
        #[arg(long, default_value_t = 300)]
        rescan_secs: u64,
        /// HTTP address (`none` for no HTTP). Beyond loopback it needs
        /// VAULTRUNNER_TOKEN.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Run every pending message to completion (including messages turns
    /// create), then exit.
    Process {
        vault: PathBuf,
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Write a message to an agent (MESSAGE `-` reads standard input).
    Send {
        vault: PathBuf,
        agent: String,
        message: String,
        #[arg(long)]
        subject: Option<String>,
        /// Agent to notify with a callback when this message is answered.
        #[arg(long)]
        reply_to: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        /// Wait up to SECS for the reply and print it.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Create a ready-to-run vault (example agents, a message template, a job).
    Init { dir: PathBuf },
    /// Validate definitions, jobs and messages; non-zero exit on errors.
    Check { vault: PathBuf },
    /// Show agents, their queues and last turns.
    Status { vault: PathBuf },
    /// Start an agent's conversation afresh (blanks the thread's session).
    Reset { vault: PathBuf, agent: String },
    /// List each job's next fire times.
    Schedule {
        vault: PathBuf,
        /// Start from this time (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// How many fire times per job.
        #[arg(long, default_value_t = 5)]
        count: usize,
        /// Print JSON: [{"job","agent","next":[…]}].
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr must not turn every log line into a panic (which
        // would kill the turn that logged it).
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// Cancels the token on SIGINT or SIGTERM.
fn shutdown_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
}

/// Depth for a `send` run inside a turn on the same vault: the turn's + 1.
fn inherited_depth(vault: &std::path::Path) -> Option<u64> {
    let turn_vault = std::env::var("VAULTRUNNER_VAULT").ok()?;
    let here = std::fs::canonicalize(vault).ok()?;
    if std::fs::canonicalize(turn_vault).ok()? != here {
        return None;
    }
    let d: u64 = std::env::var("VAULTRUNNER_DELEGATION_DEPTH")
        .ok()?
        .parse()
        .ok()?;
    Some(d + 1)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            vault,
            settle_ms,
            jobs,
            rescan_secs,
            listen,
        } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let opts = ServeOptions {
                config: Config { jobs },
                watch: WatchOptions {
                    settle: Duration::from_millis(settle_ms),
                    rescan: Duration::from_secs(rescan_secs.max(1)),
                },
                listen: match listen.as_deref() {
                    None => Listen::Default,
                    Some("none" | "off") => Listen::Off,
                    Some(a) => Listen::Addr(a.to_string()),
                },
                http: HttpOptions::from_env(),
            };
            server::serve(&vault, opts, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Process { vault, jobs } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let r = server::process(&vault, Config { jobs }, cancel).await?;
            out!(
                "processed {} message(s): {} ok, {} error{}",
                r.ok + r.error,
                r.ok,
                r.error,
                if r.waiting > 0 {
                    format!(
                        "; {} waiting for an agent (see `vaultrunner check`)",
                        r.waiting
                    )
                } else {
                    String::new()
                }
            );
            if let Some(left) = r.interrupted {
                err!(
                    "vaultrunner: interrupted; {left} message(s) still queued (a later run answers them)"
                );
                return Ok(ExitCode::from(130));
            }
            if r.stuck > 0 {
                err!(
                    "vaultrunner: {} message(s) could not be recorded (write failures, see the log); they are retried on the next run",
                    r.stuck
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            vault,
            agent,
            message,
            subject,
            reply_to,
            correlation_id,
            wait,
        } => {
            let message = if message == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the message from standard input")?;
                s
            } else {
                message
            };
            let depth = inherited_depth(&vault);
            let sender = match (depth, std::env::var("VAULTRUNNER_AGENT")) {
                (Some(_), Ok(a)) if !a.is_empty() => format!("agent:{a}"),
                _ => "cli".to_string(),
            };
            let opts = SendOptions {
                subject,
                reply_to,
                correlation_id,
                sender: Some(sender),
                delegation_depth: depth,
            };
            let (path, known) = cli::send(&vault, &agent, &message, &opts)?;
            if !known {
                err!(
                    "note: no definition for agent {agent:?} under Agents/ yet; the message waits until there is one"
                );
            }
            match wait {
                None => {
                    out!("{path}");
                    Ok(ExitCode::SUCCESS)
                }
                Some(secs) => {
                    match cli::wait_reply(&vault, &path, Duration::from_secs(secs)).await? {
                        Some(r) => {
                            out!("{}", r.text);
                            Ok(if r.status == "ok" {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::from(1)
                            })
                        }
                        None => {
                            err!(
                                "no reply within {secs}s; the message is kept at {path}.md and will still be answered"
                            );
                            Ok(ExitCode::from(2))
                        }
                    }
                }
            }
        }
        Command::Init { dir } => {
            let written = cli::init(&dir)?;
            for f in &written {
                out!("created {}", dir.join(f).display());
            }
            if written.is_empty() {
                out!("nothing to do: every example file already exists");
            }
            out!("next: vaultrunner process {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { vault } => {
            let findings = cli::check(&vault)?;
            let errors = findings.iter().filter(|f| f.is_error).count();
            for f in &findings {
                out!(
                    "{}: {}: {}",
                    if f.is_error { "error" } else { "warning" },
                    f.file,
                    f.reason
                );
            }
            out!(
                "{} error(s), {} warning(s)",
                errors,
                findings.len() - errors
            );
            Ok(if errors > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status { vault } => {
            let s = cli::status(&vault)?;
            out!(
                "vault {}: {}",
                vault.display(),
                if s.served {
                    "served by a running vaultrunner"
                } else {
                    "not served"
                }
            );
            for a in &s.agents {
                out!(
                    "  {:<20} {:<10} {:<9} queued {:<4} turns {:<5} last {} {}",
                    a.name,
                    a.backend,
                    if a.enabled { "enabled" } else { "disabled" },
                    a.queued,
                    a.turns,
                    a.last_turn_at.as_deref().unwrap_or("-"),
                    a.last_status.as_deref().unwrap_or("")
                );
            }
            for (p, a, why) in &s.waiting {
                out!("  waiting: {p}.md for {a:?}: {why}");
            }
            if s.errors > 0 {
                out!("  {} problem(s): run `vaultrunner check`", s.errors);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule {
            vault,
            from,
            count,
            json,
        } => {
            let from = match from {
                None => chrono::Utc::now(),
                Some(f) => chrono::DateTime::parse_from_rfc3339(&f)
                    .with_context(|| {
                        format!("--from {f:?} is not an RFC 3339 time like 2026-11-21T09:00:00Z")
                    })?
                    .with_timezone(&chrono::Utc),
            };
            let (jobs, invalid) = cli::schedule(&vault, from, count.min(1000))?;
            for f in &invalid {
                err!("error: {}: {}", f.file, f.reason);
            }
            if json {
                out!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                for j in &jobs {
                    out!(
                        "{} → {} ({}, {}){}",
                        j.job,
                        j.agent,
                        j.cron,
                        j.tz,
                        if j.enabled { "" } else { " disabled" }
                    );
                    for t in &j.next {
                        out!("  {t}");
                    }
                }
                if jobs.is_empty() && invalid.is_empty() {
                    out!("no job notes (tag agent/job) in this vault");
                }
            }
            Ok(if invalid.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Reset { vault, agent } => {
            let changed = cli::reset(&vault, &agent)?;
            out!("reset {agent}: {} thread(s) start afresh", changed.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            err!("vaultrunner: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            err!("vaultrunner: {e:#}");
            ExitCode::from(1)
        }
    }
}
