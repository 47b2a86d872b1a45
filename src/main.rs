//! The `vaultrunner` binary: parses arguments, calls the library, prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use vaultrunner::cli::{self, SendOptions};
use vaultrunner::tail::{self, TailOptions};

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

/// The exit codes, for `--help` (README's paragraph and docs/cli.md, kept
/// in step).
const EXIT_CODES: &str = "\
Exit codes:
  0    done (a failed turn is an `error` reply, not a failed run; `tail`
       stopped with Ctrl-C)
  1    vaultrunner could not do its work: the vault is unreadable, another
       instance holds its lock, `check` or `schedule` found errors, an
       unknown agent for `reset` or `tail`, a message too large for `send`,
       `send --wait` got an error reply, `process` could not record a
       reply, nothing serves the vault or the token was refused (`tail`,
       `health`), the server went away (`tail`) or is not ok (`health`)
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
    /// How log lines on standard error look: `text` for people, `json`
    /// for log collectors (one object a line: time, level, message,
    /// target, the event's fields and the turn's span).
    #[arg(long, global = true, value_enum, value_name = "FORMAT",
          default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Lines for people (colours on a terminal).
    Text,
    /// One JSON object a line.
    Json,
}

/// The shells `completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Shell {
    /// Bash (bash-completion).
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
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
        /// How many agents run at once (1 to 1024; default 4). With
        /// --cluster: the turns in flight cluster-wide (default: the sum
        /// of the live workers' --jobs).
        #[arg(long, value_name = "N", value_parser = jobs_parser())]
        jobs: Option<usize>,
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
        /// Run turns on workers over NATS JetStream (nats://HOST:PORT or
        /// tls://…; credentials from NATS_CREDS, NATS_NKEY, NATS_TOKEN or
        /// NATS_USER + NATS_PASSWORD; docs/cluster.md). This serve stays
        /// the vault's one writer and runs no turn itself.
        #[arg(long, value_name = "URL")]
        cluster: Option<String>,
        /// The HTTP URL workers' turns reach this serve at (for `send`
        /// inside a turn); default http:// + the --listen address.
        #[arg(long, value_name = "URL", requires = "cluster")]
        advertise: Option<String>,
    },
    /// Run turns for a cluster's vault node (`serve --cluster`), pulled
    /// from NATS JetStream, until SIGINT/SIGTERM.
    Worker {
        /// The NATS server (nats://HOST:PORT or tls://…; credentials from
        /// the environment as for `serve --cluster`).
        #[arg(long, value_name = "URL")]
        cluster: String,
        /// How many turns run here at once (1 to 1024).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = jobs_parser())]
        jobs: usize,
        /// This worker's name (letters, digits, - and _; default
        /// HOST-PID). Turns see it as VAULTRUNNER_WORKER.
        #[arg(long, value_name = "NAME")]
        id: Option<String>,
        /// Where agents without a workspace on this machine run (default
        /// $XDG_STATE_HOME/vaultrunner/worker).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
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
    /// Print live turns of a running `serve` (its HTTP API): message,
    /// streamed text, tool calls, outcome and duration. Ctrl-C stops.
    Tail {
        /// The vault: a folder (its serve is found through
        /// .vaultrunner/http.addr), or a Parachute Vault URL (then give
        /// --server).
        vault: String,
        /// Only this agent's turns (default: every agent, and agents
        /// defined later).
        agent: Option<String>,
        /// The serve's HTTP address (http://HOST:PORT or HOST:PORT),
        /// instead of the one in .vaultrunner/http.addr. The token, if the
        /// serve has one, is read from VAULTRUNNER_TOKEN.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Ask a running `serve` for its health (GET /health); exit 0 when it
    /// is ok, 1 when it is degraded or nothing answers.
    Health {
        /// The vault: a folder (its serve is found through
        /// .vaultrunner/http.addr), or a Parachute Vault URL (then give
        /// --server).
        vault: String,
        /// The serve's HTTP address (http://HOST:PORT or HOST:PORT),
        /// instead of the one in .vaultrunner/http.addr. The token, if the
        /// serve has one, is read from VAULTRUNNER_TOKEN.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
    /// Print a shell completion script on standard output.
    Completions {
        /// The shell: bash, zsh or fish.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff) on standard output, or write every
    /// page to a folder.
    Man {
        /// A command's own page (`vaultrunner man serve`), instead of the
        /// main page.
        command: Option<String>,
        /// Write vaultrunner.1 and a page per command into DIR instead.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        out_dir: Option<PathBuf>,
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
            c if tail::drives_terminal(c) => tail::push_escaped(&mut out, c),
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

/// Escapes what a JSON log line's strings may still hold raw (serde_json
/// escapes only `\0`–`\x1f`, `"` and `\`): DEL, the C1 controls, the
/// Unicode line separators and bidirectional overrides become `\u00XX`
/// escapes, which a JSON reader turns back into the same text. The line's
/// final newline is kept.
fn escape_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && tail::drives_terminal(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// How log events are escaped before they are written.
#[derive(Clone, Copy, Debug)]
enum Escape {
    /// Text lines ([`escape_event`]); `ansi`: colours on a terminal.
    Text { ansi: bool },
    /// JSON lines ([`escape_json`]).
    Json,
}

/// The progress bar of `process`, while it is shown: log lines are
/// written around it (`suspend`), not through it.
static BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// Where log events go: standard error, one event per write, escaped.
struct LogWriter {
    escape: Escape,
}

/// One event's bytes, written (escaped) when the formatter is done with it.
struct EventBuf {
    escape: Escape,
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
        let raw = String::from_utf8_lossy(&self.buf);
        let text = match self.escape {
            Escape::Text { ansi } => escape_event(&raw, ansi),
            // tracing-subscriber names the time `timestamp`; the line
            // names it `time` (SPEC §9: time, level, message, fields).
            Escape::Json => match raw.strip_prefix("{\"timestamp\":") {
                Some(rest) => escape_json(&format!("{{\"time\":{rest}")),
                None => escape_json(&raw),
            },
        };
        // A closed stderr must not turn a log line into a panic.
        let write = || {
            let mut err = std::io::stderr().lock();
            let _ = std::io::Write::write_all(&mut err, text.as_bytes());
            let _ = std::io::Write::flush(&mut err);
        };
        match BAR.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EventBuf;

    fn make_writer(&'a self) -> EventBuf {
        EventBuf {
            escape: self.escape,
            buf: Vec::new(),
        }
    }
}

/// The text log line: `TIME LEVEL span{fields}: message fields`, as
/// tracing-subscriber's own format, but a span's fields are all named —
/// the turn's `message` field shows as `turn{agent=… message=…}` (the
/// stock formatter leaves out the name of any field called `message`).
struct TextFormat;

/// SGR codes of the text log.
const SGR_DIM: &str = "2";
const SGR_BOLD: &str = "1";
const SGR_ITALIC: &str = "3";

fn sgr(ansi: bool, code: &str, text: &str) -> String {
    if ansi {
        format!("\u{1b}[{code}m{text}\u{1b}[0m")
    } else {
        text.to_string()
    }
}

/// An event's fields: the message as it is, the others `name=value`.
struct EventFields<'a> {
    out: String,
    rest: String,
    ansi: bool,
    _w: std::marker::PhantomData<&'a ()>,
}

impl tracing::field::Visit for EventFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.out, "{value:?}");
        } else {
            let _ = write!(
                self.rest,
                " {}{}{value:?}",
                sgr(self.ansi, SGR_ITALIC, field.name()),
                sgr(self.ansi, SGR_DIM, "=")
            );
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for TextFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ansi = w.has_ansi_escapes();
        let meta = event.metadata();
        let time = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let level = *meta.level();
        let colour = match level {
            tracing::Level::TRACE => "35",
            tracing::Level::DEBUG => "34",
            tracing::Level::INFO => "32",
            tracing::Level::WARN => "33",
            tracing::Level::ERROR => "31",
        };
        write!(
            w,
            "{} {} ",
            sgr(ansi, SGR_DIM, &time),
            sgr(ansi, colour, &format!("{:>5}", level.as_str()))
        )?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                write!(w, "{}", sgr(ansi, SGR_BOLD, span.metadata().name()))?;
                let ext = span.extensions();
                if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(
                        w,
                        "{}{fields}{}",
                        sgr(ansi, SGR_BOLD, "{"),
                        sgr(ansi, SGR_BOLD, "}")
                    )?;
                }
                write!(w, "{}", sgr(ansi, SGR_DIM, ":"))?;
                seen = true;
            }
            if seen {
                w.write_char(' ')?;
            }
        }
        let mut v = EventFields {
            out: String::new(),
            rest: String::new(),
            ansi,
            _w: std::marker::PhantomData,
        };
        event.record(&mut v);
        writeln!(
            w,
            "{}{}",
            v.out,
            v.rest.trim_start_matches(|c| c == ' ' && v.out.is_empty())
        )
    }
}

/// Colours for a stream that is a terminal, unless `NO_COLOR` is set
/// (to anything but the empty string: no-color.org).
fn colours_on(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULTRUNNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match format {
        LogFormat::Text => {
            let ansi = colours_on(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            // A span's fields, every one named (`message=…` too).
            let span_fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                write!(w, "{field}={value:?}")
            });
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                // A closed stderr must not turn every log line into a panic
                // (which would kill the turn that logged it).
                .log_internal_errors(false)
                .with_ansi(ansi)
                .event_format(TextFormat)
                .fmt_fields(tracing_subscriber::field::MakeExt::delimited(
                    span_fields,
                    " ",
                ))
                .with_writer(LogWriter {
                    escape: Escape::Text { ansi },
                })
                .init();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_writer(LogWriter {
                    escape: Escape::Json,
                })
                .log_internal_errors(false)
                .with_ansi(false)
                .with_target(true)
                .init();
        }
    }
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

/// Cancels the token on SIGINT or SIGTERM, without a log line (`tail`:
/// Ctrl-C is how it ends).
fn stop_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        cancel.cancel();
    });
}

/// Writes to stdout; a closed stdout (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(()),
    }
}

/// The messages `process` must have pending for a progress bar: more than
/// a screenful (the terminal's rows), or more than 20 when its size is
/// unknown.
fn wants_bar(is_terminal: bool, pending: u64, rows: Option<u16>) -> bool {
    let screenful = rows.filter(|r| *r > 0).map_or(20, u64::from);
    is_terminal && pending > screenful
}

/// The rows of the terminal on standard error, if it is one.
fn terminal_rows() -> Option<u16> {
    #[cfg(unix)]
    {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass.
        let rc = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0).then_some(ws.ws_row)
    }
    #[cfg(not(unix))]
    None
}

/// The progress bar of `process` on a terminal: shown once more messages
/// are pending than fit on a screen ([`wants_bar`]); done/total, rate and
/// ETA, updated every 100 ms from [`Engine::progress`] until `stop`.
async fn show_progress(
    engine: std::sync::Arc<vaultrunner::engine::Engine>,
    stop: CancellationToken,
) {
    let rows = terminal_rows();
    let mut bar: Option<indicatif::ProgressBar> = None;
    loop {
        let stopping = stop.is_cancelled();
        let (done, left) = engine.progress();
        if bar.is_none() && !stopping && wants_bar(true, left, rows) {
            let style = indicatif::ProgressStyle::with_template(
                "{wide_bar} {pos}/{len} messages · {per_sec:1} · ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let b = indicatif::ProgressBar::new(done.saturating_add(left)).with_style(style);
            let _ = BAR.set(b.clone());
            bar = Some(b);
        }
        if let Some(b) = &bar {
            b.set_length(done.saturating_add(left));
            b.set_position(done);
        }
        if stopping {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => {}
        }
    }
    if let Some(b) = bar {
        b.finish();
        // The bar's line stays; what comes next starts below it.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n");
    }
}

/// `status`: the cluster of a running `serve --cluster` and its workers,
/// as its `/health` says (nothing when it runs no cluster or cannot be
/// asked).
async fn print_cluster(vault: &str) {
    let token = std::env::var("VAULTRUNNER_TOKEN").ok();
    let Ok((_, body)) = vaultrunner::tail::health(vault, None, token.as_deref()).await else {
        return;
    };
    let Ok(h) = serde_json::from_str::<serde_json::Value>(&body) else {
        return;
    };
    let Some(c) = h.get("cluster") else {
        return;
    };
    let num =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    out!(
        "cluster: {} ({} in flight, bound {})",
        c.get("url").and_then(|u| u.as_str()).unwrap_or("?"),
        num(c, "in_flight"),
        num(c, "bound")
    );
    let workers = h
        .get("workers")
        .and_then(|w| w.as_array())
        .cloned()
        .unwrap_or_default();
    if workers.is_empty() {
        out!("  no worker: messages wait until one starts (`vaultrunner worker --cluster …`)");
    }
    for w in workers {
        let text = |k: &str| w.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let live = w
            .get("live")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let compatible = w
            .get("compatible")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true);
        let running = w
            .get("running")
            .and_then(|r| r.as_array())
            .map_or(0, Vec::len);
        out!(
            "  worker {:<20} {:<16} jobs {:<3} running {:<3} heartbeat {}s ago  {}{}",
            text("id"),
            text("host"),
            num(&w, "jobs"),
            running,
            num(&w, "last_heartbeat_secs"),
            if live { "live" } else { "gone" },
            if compatible {
                String::new()
            } else {
                format!(" (release {}: another protocol, not used)", text("version"))
            }
        );
    }
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
            cluster,
            advertise,
        } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let opts = ServeOptions {
                config: Config {
                    jobs: jobs.unwrap_or(4),
                },
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
                cluster: cluster.map(|url| server::ClusterOptions {
                    url,
                    advertise,
                    jobs,
                }),
            };
            server::serve(&vault, opts, cancel).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker {
            cluster,
            jobs,
            id,
            state,
        } => {
            let cancel = CancellationToken::new();
            shutdown_on_signals(cancel.clone());
            let opts = vaultrunner::cluster::worker::WorkerOptions {
                url: cluster,
                jobs,
                id: id.unwrap_or_else(vaultrunner::cluster::worker::WorkerOptions::default_id),
                state_dir: state
                    .unwrap_or_else(vaultrunner::cluster::worker::WorkerOptions::default_state_dir),
            };
            vaultrunner::cluster::worker::run(opts, cancel).await?;
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
            // The progress bar, on a terminal only.
            let stop = CancellationToken::new();
            let mut bar = None;
            let watch = |engine| {
                if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    bar = Some(tokio::spawn(show_progress(engine, stop.clone())));
                }
            };
            let r = server::process_watched(&vault, Config { jobs }, sync, cancel, watch).await;
            stop.cancel();
            if let Some(b) = bar {
                let _ = b.await;
            }
            let r = r?;
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
            // Inside a cluster worker's turn: through the vault node.
            let in_cluster_turn = std::env::var("VAULTRUNNER_TURN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .filter(|_| {
                    std::env::var("VAULTRUNNER_VAULT")
                        .is_ok_and(|v| v.trim_end_matches('/') == vault.trim_end_matches('/'))
                });
            if let Some(token) = in_cluster_turn {
                let path = vaultrunner::tail::cluster_send(&vault, &token, &agent, &message, &opts)
                    .await?;
                out!("{path}");
                return Ok(ExitCode::SUCCESS);
            }
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
            if s.served {
                print_cluster(&vault).await;
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
        Command::Tail {
            vault,
            agent,
            server,
        } => {
            let cancel = CancellationToken::new();
            stop_on_signals(cancel.clone());
            let opts = TailOptions {
                vault,
                agent,
                server,
                token: std::env::var("VAULTRUNNER_TOKEN").ok(),
                colour: colours_on(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            };
            tail::run(
                &opts,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                cancel,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { vault, server } => {
            let token = std::env::var("VAULTRUNNER_TOKEN").ok();
            let (ok, body) = tail::health(&vault, server.as_deref(), token.as_deref()).await?;
            out!("{body}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            let name = cmd.get_name().to_string();
            match shell {
                Shell::Bash => {
                    clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut buf)
                }
                Shell::Zsh => {
                    clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut buf)
                }
                Shell::Fish => {
                    clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut buf)
                }
            }
            write_stdout(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command, out_dir } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command().disable_help_subcommand(true);
            if let Some(dir) = out_dir {
                std::fs::create_dir_all(&dir)
                    .and_then(|()| clap_mangen::generate_to(cmd, &dir))
                    .with_context(|| {
                        format!("cannot write the manual pages into {}", dir.display())
                    })?;
                out!("wrote the manual pages into {}", dir.display());
                return Ok(ExitCode::SUCCESS);
            }
            cmd.build();
            let page = match &command {
                None => cmd,
                Some(name) => match cmd.find_subcommand(name) {
                    Some(sub) => sub.clone(),
                    None => {
                        let names: Vec<&str> =
                            cmd.get_subcommands().map(|c| c.get_name()).collect();
                        err!(
                            "vaultrunner: no command {name:?} (commands: {})",
                            names.join(", ")
                        );
                        return Ok(ExitCode::from(2));
                    }
                },
            };
            let mut buf = Vec::new();
            clap_mangen::Man::new(page)
                .source(format!("vaultrunner {}", env!("CARGO_PKG_VERSION")))
                .render(&mut buf)?;
            write_stdout(&buf)?;
            Ok(ExitCode::SUCCESS)
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
    init_tracing(cli.log_format);
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

    /// What has no description in `cmd`, at every level.
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("`{path}` argument {}", arg.get_id()));
            }
            if !arg.is_hide_possible_values_set() {
                for v in arg.get_possible_values() {
                    if v.get_help().is_none() && arg.get_action().takes_values() {
                        missing.push(format!("`{path} {}` value {}", arg.get_id(), v.get_name()));
                    }
                }
            }
        }
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("`{name}` has no description"));
            }
            walk(sub, &name, missing);
        }
    }

    /// Every command and every argument, at every level (the global
    /// `--log-format`, each command's, each possible value of an enum),
    /// has a description: `--help`, the man page and the completions show
    /// it.
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "vaultrunner", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        assert!(
            cmd.get_after_help()
                .is_some_and(|h| h.to_string().contains("Exit codes:"))
        );
        Cli::command().debug_assert();
    }

    #[test]
    fn the_help_walk_finds_what_has_no_description() {
        // The walk above must be able to fail.
        use clap::CommandFactory;
        let cmd = Cli::command().subcommand(
            clap::Command::new("bare").arg(clap::Arg::new("undescribed").long("undescribed")),
        );
        let mut missing = Vec::new();
        walk(&cmd, "vaultrunner", &mut missing);
        assert_eq!(
            missing,
            [
                "`vaultrunner bare` has no description",
                "`vaultrunner bare` argument undescribed"
            ]
        );
    }

    #[test]
    fn a_progress_bar_only_on_a_terminal_with_more_than_a_screenful() {
        assert!(!wants_bar(false, 10_000, Some(40)));
        assert!(!wants_bar(true, 40, Some(40)));
        assert!(wants_bar(true, 41, Some(40)));
        // Size unknown (or zero): a screenful is 20.
        assert!(!wants_bar(true, 20, None));
        assert!(wants_bar(true, 21, None));
        assert!(wants_bar(true, 21, Some(0)));
        assert!(!wants_bar(true, 0, Some(1)));
    }

    #[test]
    fn json_log_lines_escape_what_serde_leaves_raw() {
        let line = "{\"message\":\"a\u{7f}b\u{9b}2J\u{2028}\u{202e}é\\n\"}\n";
        let escaped = escape_json(line);
        assert_eq!(
            escaped,
            "{\"message\":\"a\\u007fb\\u009b2J\\u2028\\u202eé\\n\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(escaped.trim_end()).unwrap();
        assert_eq!(v["message"], "a\u{7f}b\u{9b}2J\u{2028}\u{202e}é\n");
    }
}
