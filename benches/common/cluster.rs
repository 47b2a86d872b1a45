//! The `cluster` scenario of benches/engine.rs (issue 13; docs/cluster.md):
//! turns on workers over NATS JetStream, measured against a real
//! `nats-server` the scenario starts on a free loopback port with a temp
//! store (and stops at the end).
//!
//! 1. **throughput**: agents whose `command` sleeps 300 ms, with 1, 2 and 3
//!    workers (`--jobs 2` each; the vault node without `--jobs`, so its
//!    bound is the live workers' jobs): turns/s, against n × the 1-worker
//!    figure and against the ideal 2n / 0.3 s.
//! 2. **dispatch overhead**: note → reply latency of an `echo` agent through
//!    the cluster (1 worker) beside plain `serve`, both `--settle-ms 0`, the
//!    probes of the `latency` scenario ([`super::probe_latency`]).
//! 3. **memory**: VmRSS / VmHWM of the vault node, a worker and
//!    nats-server with 1,000 turns queued: at the vault node (10 slow
//!    agents × 100 messages) and in the stream (1,000 agents × 1 message,
//!    `--jobs 1000`, so that every request is published).
//!
//! A child module of `linux` in benches/engine.rs: it uses that file's
//! helpers (`Server`, `base_command`, `probe_latency`, …) as they are.
//!
//! Sizes: `VR_BENCH_CLUSTER_MESSAGES` [240 / 60] (throughput, per run),
//! `VR_BENCH_CLUSTER_QUEUED` [1000 / 200] (memory), `VR_BENCH_LATENCY_N`
//! (probes, as for `latency`). `VR_BENCH_CLUSTER_ONLY` picks parts
//! (`throughput,latency,memory`). `VR_BENCH_NATS_SERVER` names the
//! `nats-server` binary (default: `nats-server` on PATH, else
//! /usr/sbin/nats-server).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Results, Server, Settings, base_command, env_num, inbound_note, mib, ms, percentile,
    probe_latency, probe_ts, proc_ticks, syncfs, tail, write_agents,
};

const SC: &str = "cluster";
/// The slow agents' turn: 300 ms of `sleep` (the message read first, so the
/// backend's write to stdin never meets a closed pipe).
const SLEEP_SECS: f64 = 0.3;
const JOBS_PER_WORKER: usize = 2;

pub fn run(s: &Settings, res: &mut Results) {
    let Some(bin) = nats_server() else {
        res.info(
            SC,
            "skipped",
            "no nats-server (install the Debian package `nats-server`, or set VR_BENCH_NATS_SERVER)"
                .into(),
        );
        return;
    };
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!("[cluster] {} ({version})", bin.display());
    // `VR_BENCH_CLUSTER_ONLY=throughput,latency,memory` picks parts.
    let only = std::env::var("VR_BENCH_CLUSTER_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p.trim() == name);
    if part("throughput") {
        throughput(s, &bin, res);
    }
    if part("latency") {
        overhead(s, &bin, res);
    }
    if part("memory") {
        memory(s, &bin, res);
    }
}

// ----------------------------------------------------------------------
// The processes

/// `VR_BENCH_NATS_SERVER`, else `nats-server` on PATH, else the Debian
/// package's /usr/sbin/nats-server.
fn nats_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VR_BENCH_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .iter()
            .map(PathBuf::from)
            .find(|f| f.is_file())
    })
}

/// A `nats-server -js` of our own on a free loopback port; stopped on drop.
struct Nats {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Nats {
    fn start(bin: &Path, store: &Path, logs: &Path) -> Nats {
        let log = logs.join("nats-server.txt");
        let t0 = Instant::now();
        // A port another process takes between our probe and the server's
        // bind makes the server exit: try another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let child = Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .expect("cannot start nats-server");
            let mut n = Nats {
                child,
                port,
                log: log.clone(),
            };
            while t0.elapsed() < Duration::from_secs(20) {
                if fs::read_to_string(&n.log)
                    .unwrap_or_default()
                    .contains("Server is ready")
                {
                    return n;
                }
                if let Ok(Some(_)) = n.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!(
                "  nats-server on port {port} did not start:\n{}",
                tail(&fs::read_to_string(&n.log).unwrap_or_default(), 10)
            );
            n.stop();
        }
        panic!("nats-server did not start; its log: {}", log.display());
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) of our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `vaultrunner worker --cluster URL --jobs N --id ID --state DIR`, as a
/// [`Server`] (stopped with SIGTERM on drop), once it logs that it is ready.
fn start_worker(url: &str, id: &str, jobs: usize, state: &Path, logs: &Path) -> Server {
    let err_path = logs.join(format!("worker-{id}.txt"));
    let jobs = jobs.to_string();
    let args: Vec<&OsStr> = [
        OsStr::new("worker"),
        "--cluster".as_ref(),
        url.as_ref(),
        "--jobs".as_ref(),
        jobs.as_ref(),
        "--id".as_ref(),
        id.as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
    ]
    .to_vec();
    let mut cmd = base_command(&args);
    cmd.stdout(Stdio::null())
        .stderr(File::create(&err_path).expect("stderr file"));
    let child = cmd.spawn().expect("cannot start vaultrunner worker");
    let w = Server { child, err_path };
    w.wait_for_log("ready on", Duration::from_secs(30));
    w
}

/// One vault node with its NATS server and workers; all stopped on drop
/// (workers first, then the vault node, then NATS).
struct Cluster {
    workers: Vec<Server>,
    node: Server,
    /// The vault node's HTTP API, `127.0.0.1:PORT`.
    addr: String,
    nats: Nats,
}

impl Cluster {
    /// Starts NATS, `serve VAULT --settle-ms 0 --cluster URL [extra]`, and
    /// `workers` workers with `--jobs 2`; returns once they all are live in
    /// the vault node's `/health` (and the bound counts their jobs).
    fn start(bin: &Path, root: &Path, vault: &Path, extra: &[&str], workers: usize) -> Cluster {
        let logs = root.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let store = root.join("nats");
        fs::create_dir_all(&store).unwrap();
        let nats = Nats::start(bin, &store, &logs);
        let url = nats.url();
        let mut args = vec!["--settle-ms", "0", "--cluster", &url];
        args.extend_from_slice(extra);
        let node = Server::start(vault, &args, &logs);
        let addr = http_addr(vault, &node);
        let workers = (1..=workers)
            .map(|k| {
                let id = format!("w{k}");
                start_worker(
                    &url,
                    &id,
                    JOBS_PER_WORKER,
                    &root.join(format!("state-{id}")),
                    &logs,
                )
            })
            .collect();
        let c = Cluster {
            workers,
            node,
            addr,
            nats,
        };
        c.wait_live(Duration::from_secs(30));
        c
    }

    fn wait_live(&self, limit: Duration) {
        let want = self.workers.len();
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < limit {
            if let Some(h) = self.health() {
                let live = h["workers"]
                    .as_array()
                    .map_or(0, |w| w.iter().filter(|w| w["live"] == true).count());
                let bound = h["cluster"]["bound"].as_u64().unwrap_or(0) as usize;
                if live == want && bound >= want * JOBS_PER_WORKER {
                    return;
                }
                last = Some(h);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{want} worker(s) not live within {limit:?}; /health: {last:?}\nvault node:\n{}",
            tail(&self.node.log(), 20)
        );
    }

    fn health(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&self.addr, "/health")?).ok()
    }

    /// A number of `/metrics` (`vaultrunner_cluster_published_total`, …).
    fn metric(&self, name: &str) -> Option<f64> {
        let body = http_get(&self.addr, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Queued messages (all agents) and turns in flight, from `/health`.
    fn load(&self) -> (u64, u64) {
        let h = self.health().unwrap_or_default();
        let queued = h["agents"]
            .as_array()
            .map_or(0, |a| a.iter().filter_map(|a| a["queued"].as_u64()).sum());
        (queued, h["cluster"]["in_flight"].as_u64().unwrap_or(0))
    }

    fn logs_tail(&self) -> String {
        let mut s = format!("vault node:\n{}", tail(&self.node.log(), 15));
        for (i, w) in self.workers.iter().enumerate() {
            s.push_str(&format!("\nworker w{}:\n{}", i + 1, tail(&w.log(), 10)));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.stop();
        }
        self.node.stop();
        self.nats.stop();
    }
}

/// The address `serve` wrote to `.vaultrunner/http.addr`.
fn http_addr(vault: &Path, node: &Server) -> String {
    let f = vault.join(".vaultrunner/http.addr");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(a) = fs::read_to_string(&f)
            && !a.trim().is_empty()
        {
            return a.trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("serve wrote no {}:\n{}", f.display(), tail(&node.log(), 20));
}

/// A plain HTTP/1.1 GET on loopback; the body of a 200, else `None`.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// VmRSS and VmHWM of a process, KiB.
fn memory_kib(pid: u32) -> (i64, i64) {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn rss_hwm(pid: u32) -> String {
    let (rss, hwm) = memory_kib(pid);
    format!("{} / {}", mib(rss), mib(hwm))
}

/// CPU time of a process (all threads), ms.
fn cpu_ms(pid: u32) -> f64 {
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    proc_ticks(pid) as f64 * 1000.0 / hz
}

/// CPU time (schedstat, all threads) per second and times scheduled in per
/// second of each process over `window`.
fn idle_cost(pids: &[u32], window: Duration) -> (Duration, Vec<(f64, f64)>) {
    let sum = |pid: u32| {
        super::sample_tasks(pid)
            .into_values()
            .fold((0u64, 0u64), |(c, n), (_, t)| (c + t.cpu_ns, n + t.slices))
    };
    let a: Vec<(u64, u64)> = pids.iter().map(|p| sum(*p)).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let b: Vec<(u64, u64)> = pids.iter().map(|p| sum(*p)).collect();
    let secs = t0.elapsed().as_secs_f64();
    let per_s = a
        .iter()
        .zip(&b)
        .map(|(a, b)| {
            (
                b.0.saturating_sub(a.0) as f64 / 1e6 / secs,
                b.1.saturating_sub(a.1) as f64 / secs,
            )
        })
        .collect();
    (t0.elapsed(), per_s)
}

// ----------------------------------------------------------------------
// Vaults

fn slow_agent(name: &str) -> String {
    format!(
        "---\ntags:\n  - agent/definition\nname: {name}\nbackend: command\ncommand: \"cat >/dev/null; sleep {SLEEP_SECS}; echo ok $VAULTRUNNER_WORKER\"\nmode: single-threaded\n---\nYou are {name}, a slow benchmark agent.\n"
    )
}

/// A vault with `n` slow agents `sNNNN` and their inbox folders.
fn slow_vault(vault: &Path, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("s{i:04}")).collect();
    fs::create_dir_all(vault.join("Agents")).unwrap();
    for a in &names {
        fs::write(vault.join(format!("Agents/{a}.md")), slow_agent(a)).unwrap();
        fs::create_dir_all(vault.join("Inbox").join(a)).unwrap();
    }
    syncfs(vault);
    names
}

/// Writes `n` messages round-robin over `agents` as temp files, then
/// renames them all in at once. Returns the vault paths (without `.md`)
/// and the instant the first rename started.
fn drop_messages(vault: &Path, agents: &[String], n: usize) -> (Vec<String>, Instant) {
    let mut staged = Vec::with_capacity(n);
    for i in 0..n {
        let agent = &agents[i % agents.len()];
        let rel = format!("Inbox/{agent}/m{i:06}");
        let tmp = vault.join(format!("Inbox/{agent}/.m{i:06}.md.tmp"));
        let text = inbound_note(agent, &probe_ts(i), "you", &format!("message {i}"));
        fs::write(&tmp, text).unwrap();
        staged.push((tmp, rel));
    }
    syncfs(vault);
    let t0 = Instant::now();
    let mut paths = Vec::with_capacity(n);
    for (tmp, rel) in staged {
        fs::rename(&tmp, vault.join(format!("{rel}.md"))).unwrap();
        paths.push(rel);
    }
    (paths, t0)
}

fn handled(vault: &Path, rel: &str) -> bool {
    let t = fs::read_to_string(vault.join(format!("{rel}.md"))).unwrap_or_default();
    super::front_matter_value(&t, "status").as_deref() == Some("handled")
}

// ----------------------------------------------------------------------
// 1. Throughput

struct Run {
    turns_per_s: f64,
    /// Between the 10th and the 90th percentile reply.
    steady_per_s: f64,
    secs: f64,
    replies: usize,
    handled: usize,
    turn_sum: u64,
    node_cpu_ms: f64,
    workers_cpu_ms: f64,
    ignored: f64,
    redelivered: f64,
    /// The bound and live workers seen during the run, turns per worker.
    sampled: String,
    /// Why the run stopped before every reply came.
    stalled: Option<String>,
    /// The first reply, s after the messages came.
    first: f64,
    /// Between the first and the last agent to get its last reply, s (how
    /// evenly the slots went round the agents).
    spread: f64,
}

fn throughput(s: &Settings, bin: &Path, res: &mut Results) {
    let messages: usize = env_num("VR_BENCH_CLUSTER_MESSAGES", if s.quick { 60 } else { 240 });
    let agents = 12;
    let mut runs: Vec<(usize, Run)> = Vec::new();
    for n in 1..=3 {
        eprintln!(
            "[cluster] throughput: {n} worker(s) × --jobs {JOBS_PER_WORKER}, {messages} messages over {agents} agents (sleep {SLEEP_SECS} s)"
        );
        runs.push((n, throughput_run(s, bin, n, agents, messages)));
    }
    let local_jobs = 3 * JOBS_PER_WORKER;
    eprintln!(
        "[cluster] throughput, local path for comparison: serve --jobs {local_jobs}, the same messages"
    );
    let local = throughput_run(s, bin, 0, agents, messages);
    let one = runs[0].1.turns_per_s;
    for (n, r) in &runs {
        let n = *n;
        let ideal = (n * JOBS_PER_WORKER) as f64 / SLEEP_SECS;
        let all = r.replies == messages && r.handled == messages && r.turn_sum == messages as u64;
        res.info(
            SC,
            format!(
                "throughput, {n} worker(s) × --jobs {JOBS_PER_WORKER}: {messages} messages, {agents} `command` agents sleeping {:.0} ms",
                SLEEP_SECS * 1e3
            ),
            format!(
                "{:.2} turns/s ({:.2} s; steady 10–90 %: {:.2} turns/s; first reply {:.2} s; agents' last replies {:.2} s apart)",
                r.turns_per_s, r.secs, r.steady_per_s, r.first, r.spread
            ),
        );
        if n > 1 {
            let linear = r.turns_per_s / (n as f64 * one);
            res.check(
                SC,
                format!("throughput, {n} workers ÷ ({n} × the 1-worker figure)"),
                format!("{linear:.2}"),
                "≥ 0.85",
                linear >= 0.85 && all,
            );
        }
        let vs_ideal = r.turns_per_s / ideal;
        res.check(
            SC,
            format!(
                "throughput, {n} worker(s) ÷ ideal {}/{SLEEP_SECS} s = {ideal:.2} turns/s",
                n * JOBS_PER_WORKER
            ),
            format!("{vs_ideal:.2}"),
            "≥ 0.85",
            vs_ideal >= 0.85 && all,
        );
        res.info(
            SC,
            format!("throughput, {n} worker(s): sampled during the run"),
            r.sampled.clone(),
        );
        if let Some(why) = &r.stalled {
            res.check(
                SC,
                format!("throughput, {n} worker(s): STALLED"),
                why.clone(),
                "every reply",
                false,
            );
        }
        res.info(
            SC,
            format!("throughput, {n} worker(s): CPU per turn, vault node / workers"),
            format!(
                "{:.1} ms / {:.1} ms",
                r.node_cpu_ms / messages as f64,
                r.workers_cpu_ms / messages as f64
            ),
        );
        res.check(
            SC,
            format!(
                "throughput, {n} worker(s), verified: replies / handled / turn_count sum / results ignored / redelivered"
            ),
            format!(
                "{} · {} · {} · {} · {}",
                r.replies, r.handled, r.turn_sum, r.ignored, r.redelivered
            ),
            format!("{messages} each, 0 · 0"),
            all && r.ignored == 0.0 && r.redelivered == 0.0,
        );
    }
    let ideal = local_jobs as f64 / SLEEP_SECS;
    let all = local.replies == messages && local.handled == messages;
    res.info(
        SC,
        format!("throughput, local path for comparison (`serve --jobs {local_jobs}`, no cluster), the same messages"),
        format!(
            "{:.2} turns/s ({:.2} s; ÷ ideal {ideal:.2} = {:.2}; steady 10–90 %: {:.2} turns/s; first reply {:.2} s; agents' last replies {:.2} s apart); vault node CPU per turn {:.1} ms",
            local.turns_per_s,
            local.secs,
            local.turns_per_s / ideal,
            local.steady_per_s,
            local.first,
            local.spread,
            local.node_cpu_ms / messages as f64
        ),
    );
    if !all {
        res.check(
            SC,
            "throughput, local path, verified: replies / handled",
            format!("{} · {}", local.replies, local.handled),
            format!("{messages} each"),
            false,
        );
    }
}

/// One throughput run: `workers` workers behind a vault node, or with
/// `workers == 0` plain `serve --jobs 6` (the local path, the same turns
/// run here).
fn throughput_run(s: &Settings, bin: &Path, workers: usize, agents: usize, n: usize) -> Run {
    let root = s.tempdir(&format!("cluster-tp{workers}"));
    let vault = root.path().join("vault");
    let names = slow_vault(&vault, agents);
    let (c, local) = if workers == 0 {
        let logs = root.path().join("logs");
        fs::create_dir_all(&logs).unwrap();
        let jobs = (3 * JOBS_PER_WORKER).to_string();
        let server = Server::start(&vault, &["--settle-ms", "0", "--jobs", &jobs], &logs);
        (None, Some(server))
    } else {
        let c = Cluster::start(bin, root.path(), &vault, &[], workers);
        (Some(c), None)
    };
    let node_pid = match (&c, &local) {
        (Some(c), _) => c.node.pid(),
        (None, Some(l)) => l.pid(),
        (None, None) => unreachable!(),
    };
    let worker_pids: Vec<u32> = c
        .iter()
        .flat_map(|c| c.workers.iter().map(|w| w.pid()))
        .collect();
    let node_cpu0 = cpu_ms(node_pid);
    let workers_cpu0: f64 = worker_pids.iter().map(|p| cpu_ms(*p)).sum();
    let (paths, t0) = drop_messages(&vault, &names, n);
    // Each reply's first sight (polled every 5 ms).
    let mut seen: Vec<Option<Duration>> = vec![None; n];
    let mut left = n;
    let limit = Duration::from_secs_f64(60.0 + 2.0 * n as f64 * SLEEP_SECS);
    // The cluster's bound and live workers, sampled every 0.5 s.
    let (mut bounds, mut lives) = (Vec::new(), Vec::new());
    let mut sampled = Instant::now() - Duration::from_secs(1);
    // A run with no new reply for this long has stalled: it stops there.
    let stall_after = Duration::from_secs(20);
    let mut progress = Instant::now();
    let mut stalled = None;
    while left > 0 && t0.elapsed() < limit {
        if progress.elapsed() > stall_after {
            let health = c.as_ref().and_then(|c| c.health()).unwrap_or_default();
            stalled = Some(format!(
                "no reply for {stall_after:?} after {} of {n}, at {:.1} s; /health: cluster {} workers {}",
                n - left,
                t0.elapsed().as_secs_f64(),
                health["cluster"],
                health["workers"]
            ));
            break;
        }
        if let Some(c) = &c
            && sampled.elapsed() >= Duration::from_millis(500)
        {
            sampled = Instant::now();
            if let Some(h) = c.health() {
                bounds.push(h["cluster"]["bound"].as_u64().unwrap_or(0));
                lives.push(
                    h["workers"]
                        .as_array()
                        .map_or(0, |w| w.iter().filter(|w| w["live"] == true).count() as u64),
                );
            }
        }
        let now = t0.elapsed();
        for (i, p) in paths.iter().enumerate() {
            if seen[i].is_none() && vault.join(format!("{p}.reply.md")).exists() {
                seen[i] = Some(now);
                left -= 1;
                progress = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let node_cpu = cpu_ms(node_pid) - node_cpu0;
    let workers_cpu = worker_pids.iter().map(|p| cpu_ms(*p)).sum::<f64>() - workers_cpu0;
    // Which worker ran each turn (the reply says `ok <worker>`).
    let mut by_worker: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &paths {
        let t = fs::read_to_string(vault.join(format!("{p}.reply.md"))).unwrap_or_default();
        let w = t
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("ok"))
            .map(|w| w.trim().to_string())
            .unwrap_or_else(|| "?".into());
        *by_worker.entry(w).or_default() += 1;
    }
    let minmax = |v: &[u64]| match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "–".into(),
    };
    let sampled = format!(
        "bound {} · live workers {} ({} samples) · turns per worker: {}",
        minmax(&bounds),
        minmax(&lives),
        bounds.len(),
        by_worker
            .iter()
            .map(|(w, n)| format!("{} {n}", if w.is_empty() { "here" } else { w }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut last_of = vec![Duration::ZERO; agents];
    for (i, t) in seen.iter().enumerate() {
        if let Some(t) = t {
            last_of[i % agents] = last_of[i % agents].max(*t);
        }
    }
    let spread = last_of
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*last_of.iter().min().unwrap());
    let mut times: Vec<Duration> = seen.iter().flatten().copied().collect();
    times.sort();
    let replies = times.len();
    if left > 0 {
        eprintln!(
            "  !! {left} of {n} messages without a reply after {:.1} s ({})\n{}",
            t0.elapsed().as_secs_f64(),
            stalled.as_deref().unwrap_or("time limit"),
            match (&c, &local) {
                (Some(c), _) => c.logs_tail(),
                (None, Some(l)) => tail(&l.log(), 20),
                (None, None) => String::new(),
            }
        );
    }
    // The handled stamps land right after the replies.
    let t1 = Instant::now();
    let mut stamped = 0;
    while t1.elapsed() < Duration::from_secs(10) {
        stamped = paths.iter().filter(|p| handled(&vault, p)).count();
        if stamped == n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let turn_sum = names
        .iter()
        .map(|a| {
            let t =
                fs::read_to_string(vault.join(format!("Threads/{a}/{a}.md"))).unwrap_or_default();
            super::front_matter_value(&t, "turn_count")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let metric = |name: &str| c.as_ref().map_or(0.0, |c| c.metric(name).unwrap_or(-1.0));
    let ignored = metric("vaultrunner_cluster_results_ignored_total");
    let redelivered = metric("vaultrunner_cluster_redelivered_total");
    drop(c);
    drop(local);
    let secs = times.last().map_or(f64::NAN, |d| d.as_secs_f64());
    let steady = if replies >= 10 {
        let (a, b) = (replies / 10, replies * 9 / 10);
        (b - a) as f64 / (times[b] - times[a]).as_secs_f64()
    } else {
        f64::NAN
    };
    Run {
        turns_per_s: replies as f64 / secs,
        steady_per_s: steady,
        secs,
        replies,
        handled: stamped,
        turn_sum,
        node_cpu_ms: node_cpu,
        workers_cpu_ms: workers_cpu,
        ignored,
        redelivered,
        sampled,
        stalled,
        first: times.first().map_or(f64::NAN, |d| d.as_secs_f64()),
        spread: spread.as_secs_f64(),
    }
}

// ----------------------------------------------------------------------
// 2. Dispatch overhead

fn overhead(s: &Settings, bin: &Path, res: &mut Results) {
    let n = s.latency_n;
    let warmup = 5;
    let echo_vault = |label: &str| {
        let root = s.tempdir(label);
        let vault = root.path().join("vault");
        write_agents(&vault, &["echo".to_string()]);
        fs::create_dir_all(vault.join("Inbox/echo")).unwrap();
        syncfs(&vault);
        (root, vault)
    };

    eprintln!("[cluster] latency, local: serve --settle-ms 0; {n} probes");
    let (root, vault) = echo_vault("cluster-lat-local");
    let logs = root.path().join("logs");
    fs::create_dir_all(&logs).unwrap();
    let server = Server::start(&vault, &["--settle-ms", "0"], &logs);
    let (mut local, local_lost) = probe_latency(&vault.join("Inbox/echo"), "echo", warmup, n);
    drop(server);
    drop(root);

    eprintln!("[cluster] latency, cluster: serve --settle-ms 0 --cluster, 1 worker; {n} probes");
    let (root, vault) = echo_vault("cluster-lat-cluster");
    let c = Cluster::start(bin, root.path(), &vault, &[], 1);
    // Idle first: nothing to do, 1 worker live.
    std::thread::sleep(Duration::from_secs(2));
    let pids = [c.node.pid(), c.workers[0].pid(), c.nats.pid()];
    let idle = idle_cost(&pids, Duration::from_secs(if s.quick { 3 } else { 6 }));
    let (mut remote, remote_lost) = probe_latency(&vault.join("Inbox/echo"), "echo", warmup, n);
    if remote.is_empty() {
        eprintln!("{}", c.logs_tail());
    }
    drop(c);
    drop(root);

    let names = ["vault node", "worker", "nats-server"];
    res.info(
        SC,
        format!(
            "idle (1 worker, nothing to do, {:.0} s): CPU ms/s and wake-ups/s, {}",
            idle.0.as_secs_f64(),
            names.join(" / ")
        ),
        idle.1
            .iter()
            .map(|(cpu, wakeups)| format!("{cpu:.2} ms/s, {wakeups:.1}/s"))
            .collect::<Vec<_>>()
            .join(" · "),
    );
    local.sort();
    remote.sort();
    if local.is_empty() || remote.is_empty() {
        res.check(
            SC,
            "latency probes with a reply, local / cluster",
            format!("{} / {}", local.len(), remote.len()),
            format!("{n} / {n}"),
            false,
        );
        return;
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    let row = |v: &[Duration]| {
        format!(
            "p50 {} · p90 {} · p99 {} · mean {} · max {}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 90.0)),
            ms(percentile(v, 99.0)),
            ms(mean(v)),
            ms(*v.last().unwrap())
        )
    };
    res.info(
        SC,
        format!(
            "latency, local path (`serve --settle-ms 0`), 1 echo agent, {n} probes (+{warmup} warm-up), note renamed in → reply seen"
        ),
        row(&local),
    );
    res.info(
        SC,
        "latency, cluster path (`serve --settle-ms 0 --cluster`, 1 worker × --jobs 2), the same probes",
        row(&remote),
    );
    let diff = |p: f64| percentile(&remote, p).as_secs_f64() - percentile(&local, p).as_secs_f64();
    let d50 = diff(50.0);
    res.check(
        SC,
        "dispatch overhead per turn, cluster − local, p50",
        format!("{:.1} ms", d50 * 1e3),
        "< 5 ms",
        d50 < 0.005 && local_lost == 0 && remote_lost == 0,
    );
    res.info(
        SC,
        "dispatch overhead per turn, cluster − local, p99 / mean",
        format!(
            "{:.1} ms / {:.1} ms",
            diff(99.0) * 1e3,
            (mean(&remote).as_secs_f64() - mean(&local).as_secs_f64()) * 1e3
        ),
    );
    if local_lost + remote_lost > 0 {
        res.check(
            SC,
            "latency probes without a reply within 10 s, local / cluster",
            format!("{local_lost} / {remote_lost}"),
            "0 / 0",
            false,
        );
    }
}

// ----------------------------------------------------------------------
// 3. Memory

fn memory(s: &Settings, bin: &Path, res: &mut Results) {
    let queued: usize = env_num("VR_BENCH_CLUSTER_QUEUED", if s.quick { 200 } else { 1000 });

    // a. Queued at the vault node: 10 agents, one turn each at most in
    //    flight, 2 running.
    let agents = 10;
    eprintln!(
        "[cluster] memory: {queued} messages for {agents} slow agents, 1 worker × --jobs {JOBS_PER_WORKER}"
    );
    let root = s.tempdir("cluster-mem-node");
    let vault = root.path().join("vault");
    let names = slow_vault(&vault, agents);
    let c = Cluster::start(bin, root.path(), &vault, &[], 1);
    let before = (memory_kib(c.node.pid()).0, memory_kib(c.workers[0].pid()).0);
    let (_paths, t0) = drop_messages(&vault, &names, queued);
    // Until the vault node has them all (queued or in flight), then 3 s of
    // turns.
    while t0.elapsed() < Duration::from_secs(30) {
        let (q, f) = c.load();
        if q + f + (agents as u64) >= queued as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let (q, f) = c.load();
    mem_rows(
        res,
        &format!("{queued} queued at the vault node"),
        format!(
            "{queued} messages for {agents} slow agents, 1 worker × --jobs {JOBS_PER_WORKER}; read 3 s after the vault node had them all: {q} queued + {f} in flight"
        ),
        &c,
        before,
        queued,
    );
    drop(c);
    drop(root);

    // b. Queued in the stream: one message for each of `queued` agents,
    //    `--jobs` as many, so that every turn is claimed and published.
    eprintln!(
        "[cluster] memory: {queued} agents × 1 message, serve --jobs {queued}: every request in the stream"
    );
    let root = s.tempdir("cluster-mem-stream");
    let vault = root.path().join("vault");
    let names = slow_vault(&vault, queued);
    let jobs = queued.to_string();
    let c = Cluster::start(bin, root.path(), &vault, &["--jobs", &jobs], 1);
    let before = (memory_kib(c.node.pid()).0, memory_kib(c.workers[0].pid()).0);
    let (_paths, t0) = drop_messages(&vault, &names, queued);
    let mut published = 0.0;
    while t0.elapsed() < Duration::from_secs(90) {
        published = c
            .metric("vaultrunner_cluster_published_total")
            .unwrap_or(0.0);
        if published >= queued as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    let (_, f) = c.load();
    res.check(
        SC,
        format!("memory, {queued} requests in the stream: claimed and published"),
        format!(
            "{published:.0} in {:.2} s ({:.0}/s; {f} in flight when read)",
            took.as_secs_f64(),
            published / took.as_secs_f64()
        ),
        format!("all {queued}"),
        published >= queued as f64,
    );
    mem_rows(
        res,
        &format!("{queued} requests in the stream"),
        format!(
            "{queued} slow agents × 1 message, `serve --jobs {queued}`, 1 worker × --jobs {JOBS_PER_WORKER}; read once all were published: {f} in flight"
        ),
        &c,
        before,
        queued,
    );
    drop(c);
    drop(root);
}

/// The vault node's, the worker's and nats-server's memory now, under
/// `label`, after a row saying what is measured.
fn mem_rows(
    res: &mut Results,
    label: &str,
    what: String,
    c: &Cluster,
    before: (i64, i64),
    queued: usize,
) {
    let (node_rss, _) = memory_kib(c.node.pid());
    res.info(SC, format!("memory, {label}"), what);
    res.info(
        SC,
        format!("memory, {label}: vault node VmRSS / VmHWM"),
        format!(
            "{} ({} before the messages: {:+.1} KiB per queued turn)",
            rss_hwm(c.node.pid()),
            mib(before.0),
            (node_rss - before.0) as f64 / queued as f64
        ),
    );
    res.info(
        SC,
        format!("memory, {label}: worker VmRSS / VmHWM"),
        format!(
            "{} ({} before the messages)",
            rss_hwm(c.workers[0].pid()),
            mib(before.1)
        ),
    );
    res.info(
        SC,
        format!("memory, {label}: nats-server VmRSS / VmHWM"),
        rss_hwm(c.nats.pid()),
    );
}
