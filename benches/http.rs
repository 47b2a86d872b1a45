//! HTTP load benchmark (issue 4 item 4): a bounded load test on loopback
//! that stops by itself.
//!
//! It starts the release `vaultrunner serve` on a temp vault with N echo
//! agents, has C concurrent clients (tokio tasks sharing one keep-alive
//! reqwest client) post messages for S seconds, then waits until every
//! accepted message is handled with exactly one reply (checked on disk) and
//! prints a Markdown table.
//!
//! ```text
//! cargo bench --bench http                  # 30 s of load
//! VR_HTTP_SECS=5 cargo bench --bench http   # a quick run
//! ```
//!
//! Settings (defaults in brackets): `VR_HTTP_SECS` [30], `VR_HTTP_CLIENTS`
//! [200], `VR_HTTP_AGENTS` [10], `VR_HTTP_JOBS` [the binary's default],
//! `VR_HTTP_DRAIN_SECS` [600, the most the drain may take],
//! `VR_HTTP_TMPDIR` (where the temp vault goes), `VR_HTTP_KEEP=1` (keep it).
//! Target: ≥ 2,000 accepted messages/s and no 5xx.

// A benchmark may unwrap and panic: it stops on the first thing that
// goes wrong. The crate's lints deny these outside tests (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unchecked_time_subtraction,
    clippy::disallowed_methods
)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vaultrunner");
const TARGET_RPS: f64 = 2000.0;

fn env_num<T: std::str::FromStr>(k: &str, default: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Settings {
    secs: f64,
    clients: usize,
    agents: usize,
    jobs: Option<usize>,
    drain_secs: u64,
    tmp: Option<PathBuf>,
    keep: bool,
}

impl Settings {
    fn from_env() -> Self {
        Settings {
            secs: env_num("VR_HTTP_SECS", 30.0),
            clients: env_num("VR_HTTP_CLIENTS", 200usize).max(1),
            agents: env_num("VR_HTTP_AGENTS", 10usize).max(1),
            jobs: std::env::var("VR_HTTP_JOBS")
                .ok()
                .and_then(|v| v.parse().ok()),
            drain_secs: env_num("VR_HTTP_DRAIN_SECS", 600),
            tmp: std::env::var_os("VR_HTTP_TMPDIR").map(PathBuf::from),
            keep: std::env::var("VR_HTTP_KEEP").is_ok_and(|v| v == "1"),
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientStats {
    accepted: Vec<String>,
    latencies_us: Vec<u32>,
    server_errors: u64,
    other_status: u64,
    transport_errors: u64,
    first_problem: Option<String>,
}

/// The server under test; killed if the bench panics.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// CPU seconds this (client) process has used.
fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(f64::NAN)
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(run(&s));
    if !ok {
        std::process::exit(1);
    }
}

async fn run(s: &Settings) -> bool {
    // ---- the vault
    let tmp = match &s.tmp {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("vault");
    let agents: Vec<String> = (0..s.agents).map(|i| format!("echo{i}")).collect();
    for a in &agents {
        let p = root.join("Agents").join(format!("{a}.md"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            p,
            format!("---\ntags: [agent/definition]\nname: {a}\nbackend: echo\n---\n"),
        )
        .unwrap();
    }

    // ---- the server
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg(&root)
        .args(["--listen", "127.0.0.1:0", "--settle-ms", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(j) = s.jobs {
        cmd.args(["--jobs", &j.to_string()]);
    }
    for k in [
        "VAULTRUNNER_TOKEN",
        "VAULTRUNNER_WEBHOOK_SECRET",
        "VAULTRUNNER_VAULT",
    ] {
        cmd.env_remove(k);
    }
    let mut server = Server(cmd.spawn().expect("start vaultrunner serve"));
    let addr_file = root.join(".vaultrunner/http.addr");
    let t = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file)
            && !a.trim().is_empty()
        {
            break a.trim().to_string();
        }
        if let Some(st) = server.0.try_wait().unwrap() {
            panic!(
                "serve exited: {st}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no http.addr");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let base = format!("http://{addr}");
    let pid = server.0.id();
    eprintln!(
        "vaultrunner serve on {base}: {} agents, {} clients, {} s of load …",
        s.agents, s.clients, s.secs
    );

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(s.clients)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // ---- load
    let server_cpu0 = cpu_secs(pid).unwrap_or(f64::NAN);
    let client_cpu0 = own_cpu_secs();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(s.secs);
    let agents = Arc::new(agents);
    let mut tasks = Vec::with_capacity(s.clients);
    for c in 0..s.clients {
        let client = client.clone();
        let base = base.clone();
        let agents = agents.clone();
        tasks.push(tokio::spawn(async move {
            let mut st = ClientStats::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let agent = &agents[(c + n as usize) % agents.len()];
                let url = format!("{base}/api/agents/{agent}/messages");
                let t0 = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body(format!("client {c} message {n}"))
                    .send()
                    .await;
                n += 1;
                match r {
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        let body = resp.text().await.unwrap_or_default();
                        st.latencies_us
                            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if code == 202 {
                            let v: serde_json::Value =
                                serde_json::from_str(&body).unwrap_or_default();
                            match v["path"].as_str() {
                                Some(p) => st.accepted.push(p.to_string()),
                                None => {
                                    st.other_status += 1;
                                    st.first_problem
                                        .get_or_insert(format!("202 without path: {body}"));
                                }
                            }
                        } else if code >= 500 {
                            st.server_errors += 1;
                            st.first_problem.get_or_insert(format!("{code}: {body}"));
                        } else {
                            st.other_status += 1;
                            st.first_problem.get_or_insert(format!("{code}: {body}"));
                        }
                    }
                    Err(e) => {
                        st.transport_errors += 1;
                        st.first_problem.get_or_insert(format!("{e}"));
                    }
                }
            }
            st
        }));
    }
    let mut all = ClientStats::default();
    for t in tasks {
        let st = t.await.unwrap();
        all.accepted.extend(st.accepted);
        all.latencies_us.extend(st.latencies_us);
        all.server_errors += st.server_errors;
        all.other_status += st.other_status;
        all.transport_errors += st.transport_errors;
        if all.first_problem.is_none() {
            all.first_problem = st.first_problem;
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    let server_cpu_load = cpu_secs(pid).unwrap_or(f64::NAN) - server_cpu0;
    let client_cpu_load = own_cpu_secs() - client_cpu0;
    let accepted = all.accepted.len();
    let rps = accepted as f64 / load_secs;
    all.latencies_us.sort_unstable();

    // ---- drain: until every accepted message has its turn
    let drain_start = Instant::now();
    let mut turns = 0.0;
    let mut drained = false;
    let mut last_report = Instant::now();
    while drain_start.elapsed() < Duration::from_secs(s.drain_secs) {
        if let Ok(r) = client.get(format!("{base}/metrics")).send().await
            && let Ok(text) = r.text().await
        {
            turns = sample(&text, "vaultrunner_turns_total{");
            let queued = sample(&text, "vaultrunner_queue_depth{");
            if turns as usize >= accepted && queued == 0.0 {
                drained = true;
                break;
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!("  draining: {turns} of {accepted} turns done, {queued} queued");
                last_report = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let server_cpu_total = cpu_secs(pid).unwrap_or(f64::NAN) - server_cpu0;

    // ---- stop the server
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let t = Instant::now();
    while server.0.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = server.0.try_wait().unwrap();

    // ---- check every file: each accepted message handled, one reply
    let verify_start = Instant::now();
    let (problems, replies_total) = verify(&root, &all.accepted);
    let verify_secs = verify_start.elapsed().as_secs_f64();

    // ---- report
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## HTTP load: {} clients, {} echo agents, {:.1} s\n",
        s.clients, s.agents, load_secs
    );
    let _ = writeln!(out, "| metric | value |");
    let _ = writeln!(out, "|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "| {k} | {v} |");
    };
    row("requests sent", all.latencies_us.len().to_string());
    row("accepted (202)", accepted.to_string());
    row(
        "accepted messages/s",
        format!("{rps:.0} (target ≥ {TARGET_RPS:.0})"),
    );
    row("5xx answers", all.server_errors.to_string());
    row("other non-202 answers", all.other_status.to_string());
    row("transport errors", all.transport_errors.to_string());
    row(
        "latency p50 / p99 / max",
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            percentile(&all.latencies_us, 0.50),
            percentile(&all.latencies_us, 0.99),
            percentile(&all.latencies_us, 1.0)
        ),
    );
    row(
        "drain after load (every turn done)",
        if drained {
            format!("{drain_secs:.1} s")
        } else {
            format!("NOT drained after {drain_secs:.0} s ({turns} of {accepted} turns)")
        },
    );
    row(
        "turns/s overall (accepted / (load + drain))",
        format!("{:.0}", accepted as f64 / (load_secs + drain_secs)),
    );
    row(
        "server CPU during load / load + drain",
        format!("{server_cpu_load:.1} s / {server_cpu_total:.1} s"),
    );
    row("client CPU during load", format!("{client_cpu_load:.1} s"));
    row(
        "replies on disk",
        format!(
            "{replies_total} ({} problem(s); checked in {verify_secs:.1} s)",
            problems.len()
        ),
    );
    row(
        "server exit after SIGTERM",
        match exit {
            Some(st) => st.to_string(),
            None => "still running after 15 s".into(),
        },
    );
    println!("{out}");
    if let Some(p) = &all.first_problem {
        println!("first non-202 answer or error: {p}");
    }
    for p in problems.iter().take(10) {
        println!("problem: {p}");
    }

    if s.keep {
        let kept = tmp.keep();
        println!("vault kept at {}", kept.display());
    }
    let pass = all.server_errors == 0
        && all.transport_errors == 0
        && drained
        && problems.is_empty()
        && exit.is_some_and(|e| e.success());
    println!(
        "result: {}{}",
        if pass { "PASS" } else { "FAIL" },
        if rps < TARGET_RPS {
            format!(" (throughput {rps:.0}/s is below the {TARGET_RPS:.0}/s target)")
        } else {
            String::new()
        }
    );
    pass
}

/// Checks each accepted message: `status: handled` and exactly one reply
/// note (at `<path>.reply.md`, answering it), and that no other reply
/// exists. Returns the problems and the number of reply notes.
fn verify(root: &Path, accepted: &[String]) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let unique: HashSet<&String> = accepted.iter().collect();
    if unique.len() != accepted.len() {
        problems.push(format!(
            "{} duplicate paths among {} accepted",
            accepted.len() - unique.len(),
            accepted.len()
        ));
    }
    let mut replies = 0usize;
    let inbox = root.join("Inbox");
    if let Ok(dirs) = std::fs::read_dir(&inbox) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".reply.md") {
                        replies += 1;
                        let inbound = format!("Inbox/{}/{stem}", d.file_name().to_string_lossy());
                        if !unique.contains(&inbound) {
                            problems.push(format!("reply to an unknown message: {inbound}"));
                        }
                    }
                }
            }
        }
    }
    if replies != unique.len() {
        problems.push(format!(
            "{replies} reply notes for {} accepted messages",
            unique.len()
        ));
    }
    for p in &unique {
        let inbound = std::fs::read_to_string(root.join(format!("{p}.md"))).unwrap_or_default();
        if !front_matter_has(&inbound, "status: handled") {
            problems.push(format!("{p}: not handled"));
            continue;
        }
        let reply = std::fs::read_to_string(root.join(format!("{p}.reply.md"))).unwrap_or_default();
        if !front_matter_has(&reply, &format!("in_reply_to: \"[[{p}]]\""))
            && !front_matter_has(&reply, &format!("in_reply_to: '[[{p}]]'"))
        {
            problems.push(format!("{p}: no reply answering it"));
        } else if !front_matter_has(&reply, "status: ok") {
            problems.push(format!("{p}: reply status is not ok"));
        }
    }
    problems.sort();
    (problems, replies)
}

fn front_matter_has(text: &str, line: &str) -> bool {
    let Some(rest) = text.strip_prefix("---\n") else {
        return false;
    };
    let fm = rest.split("\n---").next().unwrap_or("");
    fm.lines().any(|l| l.trim_end() == line)
}
