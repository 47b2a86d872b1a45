//! `serve` and `process`: lock the vault, recover, run the engine with its
//! triggers until shutdown (serve) or until quiet (process).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::{Config, Engine};
use crate::trigger::http::{self, HttpError, HttpOptions, check_listen};
use crate::trigger::watch::{self, WatchOptions};
use crate::vault::gitsync::SyncConfig;
use crate::vault::{SyncStep, Vault, VaultError};

/// How long `serve` waits for running turns after a shutdown signal (they
/// are being killed: TERM, grace, KILL), before it exits regardless.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}")]
    Cluster(String),
}

/// The default HTTP address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// Where `serve` listens for HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// The default address; if it is taken, serve without HTTP (warned).
    Default,
    /// An address the user asked for: failing to bind is an error.
    Addr(String),
    /// No HTTP.
    Off,
}

/// Options of `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: Config,
    pub watch: WatchOptions,
    pub listen: Listen,
    pub http: HttpOptions,
    /// `--git-sync`: keep the folder in sync with its Git upstream.
    pub git_sync: Option<SyncConfig>,
    /// `--cluster`: turns run on workers over NATS (SPEC §8).
    pub cluster: Option<ClusterOptions>,
}

/// `serve --cluster URL [--advertise URL]`.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub url: String,
    /// The vault node's HTTP API as workers' turns reach it; default
    /// `http://` + the address it listens on.
    pub advertise: Option<String>,
    /// `--jobs` as given: the cluster-wide bound; `None`: the sum of the
    /// live workers' `--jobs`.
    pub jobs: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            config: Config::default(),
            watch: WatchOptions::default(),
            listen: Listen::Off,
            http: HttpOptions::default(),
            git_sync: None,
            cluster: None,
        }
    }
}

/// What `process` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessReport {
    pub ok: u64,
    pub error: u64,
    pub skipped: u64,
    /// Messages whose turn could not be recorded (I/O failures).
    pub stuck: u64,
    /// The messages left unanswered because their notes could not be
    /// written (a full or failing disk), with why: a later run answers them.
    pub unanswered: Vec<(String, String)>,
    /// Notes that could not be read (for a reason that may pass): a later
    /// run reads them.
    pub unread: Vec<String>,
    /// Messages left waiting for an agent that has no (enabled) definition.
    pub waiting: usize,
    /// Stopped by SIGINT/SIGTERM before every message was answered: how
    /// many were still queued for runnable agents.
    pub interrupted: Option<usize>,
    /// `--git-sync`: why a pull or the push could not be done (the local
    /// work is done and committed; a later run sends it).
    pub sync_errors: Vec<String>,
}

/// Opens a vault and takes its lock, cleaning up a crashed run's temp files.
fn open_locked(
    location: &str,
    poll: Option<Duration>,
    git_sync: Option<SyncConfig>,
) -> Result<(Arc<dyn Vault>, crate::vault::VaultLock), VaultError> {
    let syncing = git_sync.is_some();
    let opts = crate::vault::OpenOptions {
        group_commit: true,
        poll,
        git_sync,
    };
    let vault = crate::vault::open(location, &opts)?;
    let lock = vault.lock()?;
    // Sync is off for this run: a `status` must not show an old state.
    if !syncing && let Ok(dir) = vault.state_dir() {
        let _ = std::fs::remove_file(dir.join(crate::vault::gitsync::STATUS_FILE));
    }
    let n = vault.recover();
    if n > 0 {
        tracing::info!("removed {n} temp file(s) left by an interrupted write");
    }
    Ok((vault, lock))
}

/// `process`: run every eligible inbound note to completion, then return.
pub async fn process(
    location: &str,
    config: Config,
    git_sync: Option<SyncConfig>,
    cancel: CancellationToken,
) -> Result<ProcessReport, VaultError> {
    process_watched(location, config, git_sync, cancel, |_| {}).await
}

/// [`process`], handing the engine to `watch` before it starts (the CLI's
/// progress bar polls [`Engine::progress`]).
pub async fn process_watched(
    location: &str,
    config: Config,
    git_sync: Option<SyncConfig>,
    cancel: CancellationToken,
    watch: impl FnOnce(Arc<Engine>),
) -> Result<ProcessReport, VaultError> {
    let (vault, _lock) = open_locked(location, None, git_sync)?;
    let mut sync_errors = Vec::new();
    let step = |vault: Arc<dyn Vault>, step: SyncStep| async move {
        tokio::task::spawn_blocking(move || vault.sync(step))
            .await
            .map_err(VaultError::join)
            .and_then(|r| r)
    };
    // Pull → process → commit → push: a pull that cannot be done leaves
    // the local work to do (and to send next time).
    if let Err(e) = step(vault.clone(), SyncStep::Pull).await {
        tracing::warn!("git sync: the pull was not done: {e}");
        sync_errors.push(format!("pull: {e}"));
    }
    let engine = Engine::new(vault.clone(), config);
    watch(engine.clone());
    engine.process(cancel.clone()).await;
    if let Err(e) = step(vault, SyncStep::Push).await {
        tracing::warn!("git sync: the push was not done: {e}");
        sync_errors.push(format!("push: {e}"));
    }
    let interrupted = cancel.is_cancelled().then(|| {
        engine.with_index(|ix| {
            ix.queued_agents()
                .filter(|(a, _)| ix.runnable(a))
                .map(|(_, n)| n)
                .sum()
        })
    });
    Ok(ProcessReport {
        ok: engine.stats.turns_ok.load(Ordering::Relaxed),
        error: engine.stats.turns_error.load(Ordering::Relaxed),
        skipped: engine.stats.skipped.load(Ordering::Relaxed),
        stuck: engine.stats.stuck.load(Ordering::Relaxed),
        unanswered: engine.unanswered(),
        unread: engine.unread(),
        waiting: engine.with_index(|ix| ix.waiting().len()),
        interrupted,
        sync_errors,
    })
}

/// `serve`: watch, run, until `cancel`. Returns once running turns have
/// stopped (bounded by [`SHUTDOWN_BOUND`]).
pub async fn serve(
    location: &str,
    opts: ServeOptions,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let (vault, lock) = open_locked(location, opts.watch.poll, opts.git_sync.clone())?;
    // An address left by a serve that was killed is nobody's now (this one
    // holds the lock): gone before the start-up scan, so `tail` and the
    // like never find a dead address beside a live serve.
    if let Ok(dir) = vault.state_dir() {
        let _ = std::fs::remove_file(dir.join("http.addr"));
    }
    // A lease another runner took (this one could not reach the vault for
    // longer than the lease) stops this runner: one runner per vault.
    let lost = lock.lost();
    if let Some(l) = lost.clone() {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = l.cancelled() => cancel.cancel(),
                _ = cancel.cancelled() => {}
            }
        });
    }
    let listener = bind(&opts).await?;
    let mut opts = opts;
    let mut config = opts.config.clone();
    let node = match &opts.cluster {
        None => None,
        Some(c) => {
            crate::cluster::check_url(&c.url).map_err(|e| ServeError::Cluster(e.to_string()))?;
            let vault_url = match (
                &c.advertise,
                listener.as_ref().and_then(|l| l.local_addr().ok()),
            ) {
                (Some(u), _) => u.trim_end_matches('/').to_string(),
                (None, Some(a)) => format!("http://{a}"),
                (None, None) => {
                    tracing::warn!(
                        "cluster: the HTTP API is off and no --advertise is given: `send` inside workers' turns cannot reach this vault"
                    );
                    String::new()
                }
            };
            // The vault node runs no turn itself: the cluster's bound is
            // the node's (given, or the live workers' jobs).
            config.jobs = c.jobs.unwrap_or(crate::cluster::node::UNBOUNDED_JOBS);
            let node = crate::cluster::node::Node::start(
                crate::cluster::node::NodeOptions {
                    url: c.url.clone(),
                    vault_url,
                    jobs: c.jobs,
                },
                cancel.clone(),
            )
            .await
            .map_err(|e| ServeError::Cluster(e.to_string()))?;
            opts.http.cluster = Some(node.clone());
            Some(node)
        }
    };
    let engine = Engine::new(vault, config);
    if let Some(node) = node {
        engine.set_remote(Arc::new(node));
    }
    // A note still being typed as we start waits for the settle window too.
    let settle = opts.watch.settle.unwrap_or_else(|| engine.vault().settle());
    engine.load_cache();
    let report = engine.scan_startup(settle);
    tracing::info!(
        "serving {} ({} notes); settle {settle:?}",
        engine.vault().location(),
        report.notes,
    );
    let http_task = listener.map(|l| {
        let addr = l.local_addr().ok();
        if let Some(a) = addr {
            tracing::info!("HTTP API on http://{a}");
            if let Ok(dir) = engine.vault().state_dir() {
                let _ = std::fs::write(dir.join("http.addr"), a.to_string());
            }
        }
        let (engine, http_opts, cancel) = (engine.clone(), opts.http.clone(), cancel.clone());
        tokio::spawn(async move {
            if let Err(e) = http::run(l, engine, http_opts, cancel).await {
                tracing::error!("HTTP server: {e}");
            }
        })
    });
    let cron_task = {
        let (engine, cancel) = (engine.clone(), cancel.clone());
        tokio::spawn(crate::trigger::cron::run(engine, cancel))
    };
    let cache_task = tokio::spawn(save_cache_every(engine.clone(), cancel.clone()));
    let result = serve_engine(engine.clone(), opts.watch, cancel.clone()).await;
    cancel.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_BOUND, cron_task).await;
    if let Some(t) = http_task
        && tokio::time::timeout(SHUTDOWN_BOUND, t).await.is_err()
    {
        tracing::warn!("HTTP connections still open after {SHUTDOWN_BOUND:?}; closing");
    }
    if let Ok(dir) = engine.vault().state_dir() {
        let _ = std::fs::remove_file(dir.join("http.addr"));
    }
    let _ = cache_task.await;
    if engine.cache_stale() {
        let e = engine.clone();
        let _ = tokio::task::spawn_blocking(move || e.save_cache()).await;
    }
    drop(lock);
    if lost.is_some_and(|l| l.is_cancelled()) {
        return Err(ServeError::Vault(VaultError::Locked {
            holder: "another runner took this vault's lease while this one could not reach the vault; this one stopped"
                .into(),
        }));
    }
    result
}

/// Saves the index when it changed: once the start-up scan is done, then
/// every [`crate::engine::CACHE_EVERY`] (and `serve` saves it at the end),
/// so a start after a crash too reads only what changed since.
async fn save_cache_every(engine: Arc<Engine>, cancel: CancellationToken) {
    let mut every = tokio::time::interval(crate::engine::CACHE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = cancel.cancelled() => return,
        }
        if engine.cache_stale() {
            let e = engine.clone();
            let _ = tokio::task::spawn_blocking(move || e.save_cache()).await;
        }
    }
}

/// Binds the HTTP listener per the options (before anything else starts,
/// so a refused address fails fast).
async fn bind(opts: &ServeOptions) -> Result<Option<tokio::net::TcpListener>, HttpError> {
    let text = match &opts.listen {
        Listen::Off => return Ok(None),
        Listen::Default => DEFAULT_LISTEN.to_string(),
        Listen::Addr(a) => a.clone(),
    };
    // A timeout variable `serve` cannot use is an error, not a default.
    http::check_env()?;
    let looked_up = tokio::net::lookup_host(text.as_str())
        .await
        .map(|a| a.collect::<Vec<std::net::SocketAddr>>());
    let addrs = match looked_up {
        Ok(a) => a,
        Err(e) => {
            return Err(HttpError::Bind {
                addr: text,
                source: e,
            });
        }
    };
    for a in &addrs {
        check_listen(*a, &opts.http)?;
    }
    match listen_on(&addrs) {
        Ok(l) => Ok(Some(l)),
        Err(e) if opts.listen == Listen::Default => {
            tracing::warn!(
                "HTTP API off: cannot listen on {text} ({e}); pass --listen ADDR to choose another address"
            );
            Ok(None)
        }
        Err(e) => Err(HttpError::Bind {
            addr: text,
            source: e,
        }),
    }
}

/// Connections the kernel may hold for us before we accept them. The HTTP
/// server accepts only up to its cap ([`http::max_connections`]); the
/// rest wait here, where they hold none of our descriptors, instead of
/// being dropped (std's listeners queue 128).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the first of `addrs` that can be bound, as `TcpListener::bind`
/// does, with a [`LISTEN_BACKLOG`]-deep queue.
fn listen_on(addrs: &[std::net::SocketAddr]) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "the address resolved to nothing",
    );
    for a in addrs {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            #[cfg(unix)]
            s.set_reuseaddr(true)?;
            s.bind(*a)?;
            s.listen(LISTEN_BACKLOG)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs an engine's dispatcher and watcher until `cancel`.
pub async fn serve_engine(
    engine: Arc<Engine>,
    watch_opts: WatchOptions,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let dispatcher = {
        let engine = engine.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { engine.run_dispatcher(cancel).await })
    };
    let watched = watch::run(engine.clone(), watch_opts, cancel.clone()).await;
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_BOUND, dispatcher)
        .await
        .is_err()
    {
        tracing::warn!(
            "turns still running after {SHUTDOWN_BOUND:?}; exiting anyway (they are recovered on the next start)"
        );
    }
    watched?;
    Ok(())
}
