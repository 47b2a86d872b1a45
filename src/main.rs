//! The `vaultrunner` binary: parses arguments, calls the library, prints.

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
use vaultrunner::vault::gitsync::SyncConfig;

/// The exit codes, for `--help` (README's paragraph, kept in step).
const EXIT_CODES: &str = "\
Exit codes:
  0    done (a failed turn is an `error` reply, not a failed run)
  1    vaultrunner could not do its work: the vault is unreadable, another
       instance holds its lock, `check` or `schedule` found errors, an
       unknown agent for `reset`, a message too large for `send`, `send
       --wait` got an error reply, `process` could not record a reply
  2    the command line is wrong (the message names the argument), or
       `send --wait` timed out (the message is kept and will be answered)
  130  `process` was interrupted by SIGINT/SIGTERM (a later run answers
       the rest)";

/// The longest duration any flag takes: one year (SPEC §5a), in the
/// flag's unit.
const MAX_SECS: u64 = vaultrunner::time::MAX_DURATION.as_secs();
const MAX_MILLIS: u64 = MAX_SECS * 1000;
/// The most agents that can run at once.
const MAX_JOBS: u64 = 1024;
/// The most fire times `schedule` lists per job.
const MAX_COUNT: u64 = 1000;

fn jobs_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_JOBS)
}

#[derive(Parser)]
#[command(
    name = "vaultrunner",
    version,
    about = "Run LLM agents from Markdown notes in a vault",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the vault and run agents as messages arrive, until SIGINT/SIGTERM.
    Serve {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
        /// Quiet time (ms) before a note someone else wrote is read (at
        /// most a year; default 2000 for a folder, 0 for a remote vault,
        /// whose notes arrive whole).
        #[arg(long, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(0..=MAX_MILLIS))]
        settle_ms: Option<u64>,
        /// How many agents run at once (1 to 1024).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = jobs_parser())]
        jobs: usize,
        /// Seconds between safety-net full rescans of the vault (1 up to a
        /// year; default 300 for a folder, 60 for a remote vault).
        #[arg(long, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
        rescan_secs: Option<u64>,
        /// Milliseconds between polls of a remote vault for changes (50 up
        /// to a year; default 2000).
        #[arg(long, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(50..=MAX_MILLIS))]
        poll_ms: Option<u64>,
        /// HTTP address (`none` for no HTTP). Beyond loopback it needs
        /// VAULTRUNNER_TOKEN.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Keep the folder, a Git clone, in sync with its upstream: pull
        /// other devices' edits, commit and push vaultrunner's own writes
        /// (docs/git-sync.md).
        #[arg(long)]
        git_sync: bool,
        /// Seconds between pulls with --git-sync (1 up to a year; default
        /// 60). A push webhook (`POST /hooks/git`) pulls within a second.
        #[arg(long, value_name = "SECS", requires = "git_sync",
              value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
        git_pull_secs: Option<u64>,
    },
    /// Run every pending message to completion (including messages turns
    /// create), then exit.
    Process {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
        /// How many agents run at once (1 to 1024).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = jobs_parser())]
        jobs: usize,
        /// The folder is a Git clone: pull first, then process, commit
        /// vaultrunner's writes and push them (docs/git-sync.md).
        #[arg(long)]
        git_sync: bool,
    },
    /// Write a message to an agent (MESSAGE `-` reads standard input).
    Send {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
        /// The agent to send to (its definition's `name`).
        agent: String,
        /// The message text, or `-` to read it from standard input (at most
        /// 1 MiB).
        message: String,
        /// Subject: selects a named thread of the agent.
        #[arg(long)]
        subject: Option<String>,
        /// Agent to notify with a callback when this message is answered.
        #[arg(long, value_name = "AGENT")]
        reply_to: Option<String>,
        /// Copied into the callback, to match it to this message.
        #[arg(long, value_name = "ID")]
        correlation_id: Option<String>,
        /// Wait up to SECS (at most a year) for the reply and print it.
        #[arg(long, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(0..=MAX_SECS))]
        wait: Option<u64>,
    },
    /// Create a ready-to-run vault (example agents, a message template, a job).
    Init {
        /// The directory to create the vault in (existing files are kept).
        dir: PathBuf,
    },
    /// Validate definitions, jobs and messages; non-zero exit on errors.
    Check {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
    },
    /// Show agents, their queues and last turns.
    Status {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
    },
    /// Start an agent's conversation afresh (blanks the thread's session).
    Reset {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
        /// The agent whose threads start afresh.
        agent: String,
    },
    /// List each job's next fire times.
    Schedule {
        /// The vault: a folder, or a Parachute Vault URL
        /// (http(s)://HOST/vault/NAME; token in VAULTRUNNER_VAULT_TOKEN).
        vault: String,
        /// Start from this time (RFC 3339) instead of now.
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// How many fire times per job (1 to 1000).
        #[arg(long, value_name = "N", default_value_t = 5,
              value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
        count: u64,
        /// Print JSON: [{"job","agent","next":[…]}].
        #[arg(long)]
        json: bool,
    },
}

/// Escapes the control characters inside one log event, so that text from
/// a note (an agent name with a newline, a message path) can never forge
/// a log line or drive the terminal: `\n` and `\r` become `\\n` and
/// `\\r`, other control characters (C0, DEL, C1) and the Unicode line
/// separators and bidirectional overrides become `\\x1b` / `\\u{2028}`.
/// Tabs stay. The event's final newline is kept. With `ansi` (a
/// terminal), colour sequences (`ESC [ … m`, what the formatter writes)
/// pass; every other escape sequence is escaped too.
fn escape_event(text: &str, ansi: bool) -> String {
    let (body, end) = match text.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (text, ""),
    };
    let mut out = String::with_capacity(body.len().saturating_add(end.len()));
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            '\u{1b}' if ansi => match body.get(i..).and_then(sgr_len) {
                Some(n) => {
                    out.push_str(body.get(i..i.saturating_add(n)).unwrap_or(""));
                    // The rest of the sequence is ASCII: one char a byte.
                    for _ in 1..n {
                        chars.next();
                    }
                }
                None => out.push_str("\\x1b"),
            },
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                if c.is_ascii() {
                    out.push_str(&format!("\\x{:02x}", u32::from(c)));
                } else {
                    out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
                }
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

/// The length of a colour sequence (`ESC [ digits;… m`) at the start of
/// `s`, if there is one.
fn sgr_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("\u{1b}[")?;
    let params = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (rest.as_bytes().get(params) == Some(&b'm')).then(|| params.saturating_add(3))
}

/// Where log events go: standard error, one event per write, escaped by
/// [`escape_event`].
struct LogWriter {
    ansi: bool,
}

/// One event's bytes, written (escaped) when the formatter is done with it.
struct EventBuf {
    ansi: bool,
    buf: Vec<u8>,
}

impl std::io::Write for EventBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = escape_event(&String::from_utf8_lossy(&self.buf), self.ansi);
        // A closed stderr must not turn a log line into a panic.
        let mut err = std::io::stderr().lock();
        let _ = std::io::Write::write_all(&mut err, text.as_bytes());
        let _ = std::io::Write::flush(&mut err);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventBuf;

    fn make_writer(&'a self) -> EventBuf {
        EventBuf {
            ansi: self.ansi,
            buf: Vec::new(),
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter { ansi })
        // A closed stderr must not turn every log line into a panic (which
        // would kill the turn that logged it).
        .log_internal_errors(false)
        .with_ansi(ansi)
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
/// (A folder is compared by its real path, a URL as written.)
fn inherited_depth(vault: &str) -> Option<u64> {
    let turn_vault = std::env::var("VAULTRUNNER_VAULT").ok()?;
    let same = if vaultrunner::vault::is_remote(vault) {
        turn_vault.trim_end_matches('/') == vault.trim_end_matches('/')
    } else {
        std::fs::canonicalize(vault).ok()? == std::fs::canonicalize(turn_vault).ok()?
    };
    if !same {
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
            poll_ms,
            listen,
            git_sync,
            git_pull_secs,
        } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let opts = ServeOptions {
                config: Config { jobs },
                watch: WatchOptions {
                    settle: settle_ms.map(Duration::from_millis),
                    rescan: rescan_secs.map(Duration::from_secs),
                    poll: poll_ms.map(Duration::from_millis),
                },
                listen: match listen.as_deref() {
                    None => Listen::Default,
                    Some("none" | "off") => Listen::Off,
                    Some(a) => Listen::Addr(a.to_string()),
                },
                http: HttpOptions::from_env(),
                git_sync: git_sync.then(|| SyncConfig {
                    pull_every: Duration::from_secs(git_pull_secs.unwrap_or(60)),
                    settle: settle_ms.map_or(Duration::from_secs(2), Duration::from_millis),
                    ..SyncConfig::default()
                }),
            };
            server::serve(&vault, opts, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Process {
            vault,
            jobs,
            git_sync,
        } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let sync = git_sync.then(SyncConfig::default);
            let r = server::process(&vault, Config { jobs }, sync, cancel).await?;
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
            // Named one by one: the messages whose notes could not be
            // written, the notes that could not be read.
            for (path, why) in &r.unanswered {
                err!("vaultrunner: not answered: {path}.md: {why}");
            }
            for path in &r.unread {
                err!("vaultrunner: not read: {path}.md");
            }
            for e in &r.sync_errors {
                err!("vaultrunner: git sync: {e}");
            }
            if r.stuck > 0 || !r.unread.is_empty() {
                err!(
                    "vaultrunner: {} message(s) not answered and {} note(s) not read (see above and the log); they are kept, and a later run answers them",
                    r.stuck.max(r.unanswered.len() as u64),
                    r.unread.len()
                );
                return Ok(ExitCode::from(1));
            }
            if !r.sync_errors.is_empty() {
                err!(
                    "vaultrunner: the answers are committed here; a later run (or serve --git-sync) sends them"
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
                cli::read_message(std::io::stdin().lock())?
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
            if let Some(why) = &s.unreachable {
                out!("vault {vault}: {why}; nothing is lost, a running vaultrunner keeps trying");
                return Ok(ExitCode::from(1));
            }
            out!(
                "vault {}: {}",
                vault,
                if s.served {
                    "served by a running vaultrunner"
                } else {
                    "not served"
                }
            );
            if let Some(g) = &s.sync {
                use vaultrunner::vault::SyncState;
                let why = g.reason.as_deref().unwrap_or("");
                match g.state {
                    SyncState::Ok => out!(
                        "git sync: ok ({} unpushed; last pull {}, last push {})",
                        g.unpushed,
                        g.last_pull.as_deref().unwrap_or("never"),
                        g.last_push.as_deref().unwrap_or("never")
                    ),
                    SyncState::Paused => out!("git sync: paused: {why}"),
                    SyncState::Backoff => out!("git sync: backing off: {why}"),
                }
                for h in &g.held {
                    out!("git sync: kept out of commits: {h}");
                }
            }
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
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            let (jobs, invalid) = cli::schedule(&vault, from, count)?;
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

/// An error and its causes, joined with `: `; a cause whose text the
/// message before it already holds (an OS error a library put in its own
/// message and also gave as the source) is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
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
            err!("vaultrunner: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_described_once() {
        let io = std::io::Error::from_raw_os_error(2) /* ENOENT */;
        let e = anyhow::Error::new(std::io::Error::other(format!("vault /x: {io}")))
            .context("opening the vault");
        assert_eq!(
            describe(&e),
            "opening the vault: vault /x: No such file or directory (os error 2)"
        );
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on a: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Bind {
            source: std::io::Error::from_raw_os_error(2), /* ENOENT */
        });
        assert_eq!(
            describe(&e),
            "cannot listen on a: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn log_events_are_escaped() {
        assert_eq!(
            escape_event("INFO x\nERROR FAKE line: done\n", false),
            "INFO x\\nERROR FAKE line: done\n"
        );
        assert_eq!(escape_event("a\r\nb", false), "a\\r\\nb");
        assert_eq!(escape_event("a\tb\u{7}\u{7f}\n", false), "a\tb\\x07\\x7f\n");
        assert_eq!(
            escape_event("\u{85}\u{9b}2J\u{2028}\u{202e}é\n", false),
            "\\u{85}\\u{9b}2J\\u{2028}\\u{202e}é\n"
        );
        // Only the final newline is kept; an event of blank lines is one line.
        assert_eq!(escape_event("\n\n\n", false), "\\n\\n\n");
        // Without a terminal every escape is escaped; on one, colour
        // sequences pass and anything else (clear screen, set title) does not.
        let coloured = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mx\u{1b}[0m\n";
        assert_eq!(
            escape_event(coloured, false),
            "\\x1b[32m INFO\\x1b[0m \\x1b[2mx\\x1b[0m\n"
        );
        assert_eq!(escape_event(coloured, true), coloured);
        assert_eq!(
            escape_event("\u{1b}[1;31mx\u{1b}[2J\u{1b}]0;title\u{7}\u{1b}[\n", true),
            "\u{1b}[1;31mx\\x1b[2J\\x1b]0;title\\x07\\x1b[\n"
        );
    }

    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "`{} {}` has no help text",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        cmd.debug_assert();
    }
}
