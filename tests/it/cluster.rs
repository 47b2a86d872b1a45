//! The cluster (SPEC §8, docs/cluster.md) with a real `nats-server`
//! (JetStream, a temp store, a free loopback port), one vault node and
//! three workers: hundreds of messages over several `command` agents that
//! sleep, while a worker is SIGKILLed mid-turn, the vault node is SIGKILLed
//! and restarted, nats-server is restarted on the same store, and for a
//! while no worker is up at all. Every message ends with exactly one reply,
//! per agent in order and one at a time, nothing runs after its `handled`
//! stamp, and no process exits on its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Serve, TestVault, alive, parse_note, poll_until, scalar, wait_until};

/// A `nats-server -js` of the test's own.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
    /// More arguments (`--auth TOKEN`).
    extra: Vec<String>,
}

/// A free loopback port (bound and let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Nats {
    /// Starts one with its store under `dir`.
    pub fn start(dir: &Path) -> Nats {
        Nats::start_with(dir, &[])
    }

    /// [`start`](Self::start) with more arguments for nats-server.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            store: dir.join("nats-store"),
            log: dir.join("nats.log"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let bin = which("nats-server").unwrap_or_else(|| {
            panic!("nats-server is not installed: `apt-get install nats-server` (.ci/run does)")
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        wait_until(Duration::from_secs(20), "nats-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM, as a service manager does) and starts it again
    /// on the same port and store after `down`.
    pub fn restart(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// The requests' ack wait in these tests: a dead worker's turn is
/// redelivered within seconds.
const ACK_WAIT_MS: &str = "3000";

/// `vaultrunner worker` with id `id`.
pub fn worker(v: &TestVault, nats: &Nats, id: &str, jobs: &str) -> Serve {
    worker_run(v, nats, id, jobs).spawn(v.next_log(&format!("worker-{id}")))
}

/// The command line of [`worker`], for more environment before it starts.
pub fn worker_run(v: &TestVault, nats: &Nats, id: &str, jobs: &str) -> crate::common::Run {
    v.vr(&[
        "worker",
        "--cluster",
        &nats.url(),
        "--jobs",
        jobs,
        "--id",
        id,
        "--state",
        &v.parent.join(format!("state-{id}")).display().to_string(),
    ])
    .env("VAULTRUNNER_CLUSTER_ACK_WAIT_MS", ACK_WAIT_MS)
    .env("VAULTRUNNER_LOG", "info")
}

/// `vaultrunner serve --cluster` on `port`.
pub fn vault_node(v: &TestVault, nats: &Nats, port: u16) -> Serve {
    let url = nats.url();
    let listen = format!("127.0.0.1:{port}");
    v.serve_run(&["--cluster", &url, "--listen", &listen])
        .env("VAULTRUNNER_CLUSTER_ACK_WAIT_MS", ACK_WAIT_MS)
        .spawn(v.next_log("vault-node"))
}

/// The vault node's `/health`, when it answers.
pub fn health(port: u16) -> Option<serde_json::Value> {
    let body = crate::common::http_get(&format!("http://127.0.0.1:{port}/health"))?;
    serde_json::from_str(&body).ok()
}

/// The live workers `/health` lists, and which of them run turns now.
fn live_workers(port: u16) -> Vec<(String, usize)> {
    let Some(h) = health(port) else {
        return Vec::new();
    };
    h["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["live"] == true)
                .map(|w| {
                    (
                        w["id"].as_str().unwrap_or_default().to_string(),
                        w["running"].as_array().map_or(0, Vec::len),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const AGENTS: usize = 6;
const TOTAL: usize = 240;

fn message_path(i: usize) -> String {
    format!("Inbox/c{}/m{i:03}.md", i % AGENTS)
}

/// The note's vault path as turns see it (`VAULTRUNNER_MESSAGE` on a
/// worker: no `.md`).
fn turn_path(i: usize) -> String {
    message_path(i).trim_end_matches(".md").to_string()
}

/// The agents: each run appends `start`/`end` lines (ms, agent, message,
/// worker) to `runs`, sleeps 250 ms, and answers with the message.
fn agents(v: &TestVault, runs: &Path) {
    let runs = runs.display();
    for a in 0..AGENTS {
        v.command_agent(
            &format!("c{a}"),
            "",
            &format!(
                "echo \"start $(date +%s%3N) $VAULTRUNNER_AGENT $VAULTRUNNER_MESSAGE $VAULTRUNNER_WORKER\" >> {runs}\n\
                 sleep 0.25\n\
                 cat\n\
                 echo \"end $(date +%s%3N) $VAULTRUNNER_AGENT $VAULTRUNNER_MESSAGE $VAULTRUNNER_WORKER\" >> {runs}"
            ),
        );
    }
}

fn handled(v: &TestVault, rel: &str) -> bool {
    std::fs::read_to_string(v.path(rel)).is_ok_and(|t| {
        parse_note(&t).is_ok_and(|(m, _)| scalar(&m, "status").as_deref() == Some("handled"))
    })
}

fn answered(v: &TestVault) -> usize {
    (0..TOTAL).filter(|i| handled(v, &message_path(*i))).count()
}

/// One line of the runs log.
#[derive(Debug, Clone)]
struct RunLine {
    start: bool,
    ms: i64,
    agent: String,
    message: String,
    worker: String,
}

fn read_runs(runs: &Path) -> Vec<RunLine> {
    std::fs::read_to_string(runs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some(RunLine {
                start: *f.first()? == "start",
                ms: f.get(1)?.parse().ok()?,
                agent: f.get(2)?.to_string(),
                message: f.get(3)?.to_string(),
                worker: f.get(4).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn rfc3339_ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|e| panic!("handled_at {s:?}: {e}"))
}

/// Everything the SPEC promises after the run, whatever was killed.
fn assert_all_well(v: &TestVault, runs: &Path, killed_workers: &[String]) {
    let lines = read_runs(runs);
    let mut starts_per_message: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.start) {
        *starts_per_message.entry(l.message.clone()).or_default() += 1;
    }
    for i in 0..TOTAL {
        let rel = message_path(i);
        assert!(handled(v, &rel), "{rel} is not handled:\n{}", v.read(&rel));
        let stem = rel.trim_end_matches(".md");
        let reply = format!("{stem}.reply.md");
        assert!(v.exists(&reply), "{rel} has no reply");
        let body = v.body(&reply);
        assert!(
            body.contains(&format!("message {i}")),
            "{rel}'s reply is not its own: {body}"
        );
        // Nothing ran after the stamp.
        let at = rfc3339_ms(&v.get(&rel, "handled_at").unwrap());
        let tp = turn_path(i);
        for l in lines.iter().filter(|l| l.start && l.message == tp) {
            assert!(
                l.ms <= at + 5,
                "{rel} started at {} on {}, after its handled_at {at}",
                l.ms,
                l.worker
            );
        }
        assert!(
            starts_per_message.get(&tp).copied().unwrap_or(0) >= 1,
            "{rel} never ran"
        );
    }
    // The threads counted every turn. A vault node killed between a
    // thread's end record and the stamp (the end batch's renames) runs
    // that message again after recovery, as SPEC §3 does without a
    // cluster: one more count at most, for the one node kill.
    for a in 0..AGENTS {
        let t = format!("Threads/c{a}/c{a}.md");
        let count: usize = v
            .get(&t, "turn_count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let want = TOTAL / AGENTS;
        assert!(
            (want..=want + 1).contains(&count),
            "{t}: turn_count {count} for {want} messages"
        );
    }
    // Per agent: FIFO, and one turn at a time (a run cut short by a kill
    // has no end; its worker's orphaned program may still end later).
    for a in 0..AGENTS {
        let agent = format!("c{a}");
        let mine: Vec<&RunLine> = lines.iter().filter(|l| l.agent == agent).collect();
        let order: Vec<usize> = mine
            .iter()
            .filter(|l| l.start)
            .map(|l| {
                l.message
                    .trim_start_matches(&format!("Inbox/{agent}/m"))
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{agent}: messages started out of order: {order:?}"
        );
        let mut open: Option<&RunLine> = None;
        for l in &mine {
            if l.start {
                if let Some(o) = open
                    && !killed_workers.contains(&o.worker)
                {
                    panic!(
                        "{agent}: {} started on {} while {} ran on {}",
                        l.message, l.worker, o.message, o.worker
                    );
                }
                open = Some(l);
            } else if open.is_some_and(|o| o.message == l.message && o.worker == l.worker) {
                open = None;
            }
        }
    }
}

#[test]
fn a_cluster_answers_everything_exactly_once_through_kills_and_restarts() {
    let v = TestVault::new();
    let runs = v.parent.join("runs.log");
    agents(&v, &runs);
    // The agents' folders exist before serve starts: a folder created
    // while it runs is found by a scan that may come after a later note's
    // event (docs/DECISIONS.md, "Cluster"), which this test is not about.
    for a in 0..AGENTS {
        std::fs::create_dir_all(v.path(&format!("Inbox/c{a}"))).unwrap();
    }
    let mut nats = Nats::start(&v.parent);
    let port = free_port();
    // The vault node starts first, with no worker at all.
    let mut node = vault_node(&v, &nats, port);
    node.started();
    let write = |range: std::ops::Range<usize>| {
        for i in range {
            v.message(
                &message_path(i),
                &format!("c{}", i % AGENTS),
                "",
                &format!("message {i}\n"),
            );
        }
    };
    // Each disruption comes with work still waiting, checked when it comes.
    let pending = |written: usize, what: &str| {
        let a = answered(&v);
        assert!(
            a + 20 <= written,
            "{what}: only {} of {written} left to answer",
            written - a
        );
    };
    write(0..160);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(answered(&v), 0, "answered with no worker up");
    assert!(read_runs(&runs).is_empty(), "a turn ran with no worker up");

    let mut workers: BTreeMap<String, Serve> = BTreeMap::new();
    for id in ["w1", "w2", "w3"] {
        workers.insert(id.into(), worker(&v, &nats, id, "2"));
    }
    let t0 = Instant::now();
    node.wait_for(Duration::from_secs(60), "20 answered", || {
        answered(&v) >= 20
    });

    // 1. A worker SIGKILLed mid-turn.
    // A run that started under 100 ms ago: its 250 ms sleep is still on.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    };
    node.wait_for(Duration::from_secs(30), "w2 running a turn", || {
        let lines = read_runs(&runs);
        let now = now_ms();
        lines.iter().any(|s| {
            s.start
                && s.worker == "w2"
                && now - s.ms < 100
                && !lines
                    .iter()
                    .any(|e| !e.start && e.message == s.message && e.worker == "w2")
        })
    });
    pending(160, "the worker's kill");
    workers.get_mut("w2").unwrap().child.kill().unwrap();
    let _ = workers.get_mut("w2").unwrap().child.wait();
    let killed = vec!["w2".to_string()];
    let at = answered(&v);
    node.wait_for(
        Duration::from_secs(30),
        "progress after the worker's kill",
        || answered(&v) >= at + 15,
    );

    // 2. The vault node SIGKILLed mid-run; messages arrive while it is
    // down; it starts again.
    pending(160, "the vault node's kill");
    node.child.kill().unwrap();
    let _ = node.child.wait();
    write(160..200);
    node = vault_node(&v, &nats, port);
    node.started();
    node.wait_for(Duration::from_secs(60), "110 answered", || {
        answered(&v) >= 110
    });

    // 3. nats-server restarted on the same store, mid-run.
    write(200..TOTAL);
    pending(TOTAL, "the NATS restart");
    nats.restart(Duration::from_secs(1));

    node.wait_for(Duration::from_secs(120), "everything answered", || {
        answered(&v) == TOTAL
    });
    let took = t0.elapsed();
    // Nobody exited on its own.
    assert!(
        alive(node.pid()),
        "the vault node exited:\n{}",
        node.log_text()
    );
    for (id, w) in &workers {
        if id != "w2" {
            assert!(alive(w.pid()), "worker {id} exited:\n{}", w.log_text());
        }
    }
    // w2's turns cut short were delivered again to another worker.
    let again = workers
        .values()
        .filter(|w| w.log_text().contains("delivered again"))
        .count();
    assert!(again >= 1, "no request was delivered again after w2's kill");
    // A moment for late (duplicate) results to come in and be ignored.
    std::thread::sleep(Duration::from_secs(1));
    assert_all_well(&v, &runs, &killed);
    let metrics = crate::common::http_get(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
    assert!(
        metrics.contains("vaultrunner_cluster_published_total"),
        "{metrics}"
    );
    eprintln!(
        "cluster: {TOTAL} messages in {took:?} through a worker kill, a vault node kill and a NATS restart"
    );
}

#[test]
fn send_inside_a_workers_turn_delegates_through_the_vault_node() {
    let v = TestVault::new();
    v.command_agent(
        "boss",
        "",
        "$VAULTRUNNER_BIN send \"$VAULTRUNNER_VAULT\" helper \"please help\" >/dev/null\necho \"asked on $VAULTRUNNER_WORKER with ${WORKER_ONLY_KEY:-no key}\"",
    );
    v.agent("helper", "backend: echo\n", "");
    let nats = Nats::start(&v.parent);
    let port = free_port();
    let node = vault_node(&v, &nats, port);
    node.started();
    // The turn's environment is the worker's: its keys never travel.
    let _w = worker_run(&v, &nats, "solo", "4")
        .env("WORKER_ONLY_KEY", "k-123")
        .spawn(v.next_log("worker-solo"));
    v.message("Inbox/boss/go.md", "boss", "", "go\n");
    node.answered_within(&v, "Inbox/boss/go.md", Duration::from_secs(30));
    assert_eq!(
        v.body("Inbox/boss/go.reply.md").trim(),
        "asked on solo with k-123"
    );
    let mut delegated = Vec::new();
    node.wait_for(
        Duration::from_secs(20),
        "the helper's message answered",
        || {
            delegated = v
                .notes_under("Inbox/helper")
                .into_iter()
                .filter(|p| !p.ends_with(".reply.md"))
                .collect();
            delegated.len() == 1 && handled(&v, &delegated[0])
        },
    );
    let m = &delegated[0];
    assert_eq!(v.get(m, "sender").as_deref(), Some("agent:boss"));
    assert_eq!(v.get(m, "delegation_depth").as_deref(), Some("1"));
    let reply = m.trim_end_matches(".md").to_string() + ".reply.md";
    assert_eq!(v.body(&reply).trim(), "echo: please help");
    // A token no turn holds is refused.
    let out = crate::common::http_post_json(
        &format!("http://127.0.0.1:{port}/api/cluster/send"),
        r#"{"token":"made-up","agent":"helper","content":"x"}"#,
    );
    assert_eq!(out.0, 401, "{}", out.1);
    assert!(out.1.contains("token"), "{}", out.1);
}

#[test]
fn health_lists_the_workers_and_a_foreign_or_malformed_message_harms_nothing() {
    let v = TestVault::new();
    v.agent("e", "backend: echo\n", "");
    let nats = Nats::start(&v.parent);
    let port = free_port();
    // Either side may start first: here the worker.
    let w = worker(&v, &nats, "box-1", "3");
    std::thread::sleep(Duration::from_millis(500));
    let node = vault_node(&v, &nats, port);
    node.started();
    node.wait_for(Duration::from_secs(20), "box-1 live in /health", || {
        live_workers(port).iter().any(|(id, _)| id == "box-1")
    });
    let h = health(port).unwrap();
    let wk = &h["workers"][0];
    assert_eq!(wk["jobs"], 3, "{h}");
    assert_eq!(wk["version"], env!("CARGO_PKG_VERSION"), "{h}");
    assert!(wk["host"].as_str().is_some_and(|s| !s.is_empty()), "{h}");
    assert_eq!(h["cluster"]["bound"], 3, "{h}");
    let st = v.vr(&["status", v.root_str()]).run().success();
    assert!(st.stdout.contains("cluster: nats://127.0.0.1:"), "{st}");
    assert!(
        st.stdout
            .lines()
            .any(|l| l.contains("worker box-1") && l.contains("jobs 3") && l.contains("live")),
        "{st}"
    );

    // Garbage on every subject, and a result for a turn nobody knows.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(c.clone());
        for subject in ["vaultrunner.turns.any", "vaultrunner.results"] {
            for body in [&b"\xff\xfe not json"[..], b"{\"v\":99}", b"{\"v\":1,\"path\":7}"] {
                js.publish(subject, body.to_vec().into()).await.unwrap().await.unwrap();
            }
        }
        let unknown = serde_json::json!({"v":1,"path":"Inbox/nobody.md","attempt":1,"worker":"x",
            "outcome":{"ok":{"reply":"hi","session":null,"usage":{"input_tokens":0,"output_tokens":0,"total_cost_usd":0.0}}}});
        js.publish("vaultrunner.results", unknown.to_string().into()).await.unwrap().await.unwrap();
        for body in [&b"nonsense"[..], b"{\"v\":1}"] {
            let _ = c.request("vaultrunner.start", body.to_vec().into()).await;
            c.publish("vaultrunner.events", body.to_vec().into()).await.unwrap();
        }
        c.flush().await.unwrap();
    });
    // Still answering, both of them.
    v.message("Inbox/e/after.md", "e", "", "still here\n");
    node.answered_within(&v, "Inbox/e/after.md", Duration::from_secs(30));
    assert_eq!(v.body("Inbox/e/after.reply.md").trim(), "echo: still here");
    assert!(alive(node.pid()) && alive(w.pid()));
    assert!(poll_until(Duration::from_secs(5), || w
        .log_text()
        .contains("not a vaultrunner turn request")));
    let wl = w.log_text();
    assert!(wl.contains("protocol 99"), "{wl}");
    let nl = node.log_text();
    assert!(nl.contains("not a vaultrunner result"), "{nl}");
    assert!(!v.exists("Inbox/nobody.reply.md"));
}

#[test]
fn a_url_with_credentials_is_refused_before_anything_starts() {
    let v = TestVault::new();
    let out = v
        .vr(&["worker", "--cluster", "nats://me:hunter2@127.0.0.1:4222"])
        .run()
        .failure();
    assert!(out.stderr.contains("NATS_TOKEN"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
    let out = v
        .vr(&[
            "worker",
            "--cluster",
            "nats://127.0.0.1:4222",
            "--id",
            "a.b",
        ])
        .run()
        .failure();
    assert!(out.stderr.contains("--id"), "{out}");
}

#[test]
fn a_cli_agents_turns_stick_to_its_worker_and_move_when_it_is_gone() {
    let v = TestVault::new();
    v.agent(
        "cc",
        &format!(
            "backend: claude\nprogram: {}\nretry_base: 20ms\n",
            crate::common::fake("claude")
        ),
        "",
    );
    let nats = Nats::start(&v.parent);
    let port = free_port();
    let node = vault_node(&v, &nats, port);
    node.started();
    let mut ws: BTreeMap<String, Serve> = BTreeMap::new();
    for id in ["s1", "s2", "s3"] {
        ws.insert(id.into(), worker(&v, &nats, id, "2"));
    }
    node.wait_for(Duration::from_secs(20), "three workers live", || {
        live_workers(port).len() == 3
    });
    let worker_of = |run: &serde_json::Value| {
        run["env"]["VAULTRUNNER_WORKER"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for i in 1..=4 {
        let rel = format!("Inbox/cc/m{i}.md");
        v.message(&rel, "cc", "", &format!("turn {i}\n"));
        node.answered_within(&v, &rel, Duration::from_secs(30));
        assert_eq!(
            v.get(&rel, "status").as_deref(),
            Some("handled"),
            "{}",
            v.read(&rel)
        );
    }
    let runs = v.fake_runs("claude");
    assert_eq!(runs.len(), 4, "{runs:?}");
    let first = worker_of(&runs[0]);
    assert!(ws.contains_key(&first), "{runs:?}");
    for r in &runs {
        assert_eq!(
            worker_of(r),
            first,
            "a turn left its sticky worker: {runs:?}"
        );
    }
    assert!(
        runs[3]["argv"].to_string().contains("--resume"),
        "the session was not resumed: {}",
        runs[3]["argv"]
    );
    // Its worker dies: the next turn goes to another one.
    let sticky = ws.get_mut(&first).unwrap();
    sticky.child.kill().unwrap();
    let _ = sticky.child.wait();
    v.message("Inbox/cc/m5.md", "cc", "", "turn 5\n");
    node.answered_within(&v, "Inbox/cc/m5.md", Duration::from_secs(60));
    let runs = v.fake_runs("claude");
    let last = worker_of(runs.last().unwrap());
    assert!(last != first && ws.contains_key(&last), "{runs:?}");
    assert!(!v.body("Inbox/cc/m5.reply.md").is_empty());
}

#[test]
fn a_turn_that_kills_every_worker_it_reaches_ends_after_three_deliveries() {
    let v = TestVault::new();
    // Each run SIGKILLs the worker that runs it: no result ever comes.
    v.command_agent("poison", "", "kill -9 $PPID\nsleep 5");
    let nats = Nats::start(&v.parent);
    let port = free_port();
    let node = vault_node(&v, &nats, port);
    node.started();
    let ws: Vec<Serve> = ["p1", "p2", "p3"]
        .iter()
        .map(|id| worker(&v, &nats, id, "1"))
        .collect();
    node.wait_for(Duration::from_secs(20), "three workers live", || {
        live_workers(port).len() == 3
    });
    v.message("Inbox/poison/m.md", "poison", "", "boom\n");
    node.wait_for(Duration::from_secs(60), "every worker killed", || {
        ws.iter().all(|w| !alive(w.pid()))
    });
    assert!(!v.exists("Inbox/poison/m.reply.md"));
    // The next worker to get it runs nothing and gives it up.
    let last = worker(&v, &nats, "p4", "1");
    node.answered_within(&v, "Inbox/poison/m.md", Duration::from_secs(60));
    assert!(alive(last.pid()), "{}", last.log_text());
    assert_eq!(
        v.get("Inbox/poison/m.md", "status").as_deref(),
        Some("error")
    );
    let reply = v.body("Inbox/poison/m.reply.md");
    assert!(reply.contains("3 times"), "{reply}");
    assert!(
        alive(node.pid()),
        "the vault node exited:\n{}",
        node.log_text()
    );
}

#[test]
fn credentials_come_from_the_environment() {
    let v = TestVault::new();
    v.agent("e", "backend: echo\n", "");
    let nats = Nats::start_with(&v.parent, &["--auth", "s3cret-token"]);
    let port = free_port();
    let url = nats.url();
    let listen = format!("127.0.0.1:{port}");
    let node = v
        .serve_run(&["--cluster", &url, "--listen", &listen])
        .env("NATS_TOKEN", "s3cret-token")
        .spawn(v.next_log("vault-node"));
    node.started();
    // A worker without the token is refused by the server, and says so.
    let refused = v
        .vr(&["worker", "--cluster", &url, "--id", "nokey"])
        .env("VAULTRUNNER_LOG", "info")
        .spawn(v.next_log("worker-nokey"));
    let good = worker_run(&v, &nats, "withkey", "4")
        .env("NATS_TOKEN", "s3cret-token")
        .spawn(v.next_log("worker-withkey"));
    v.message("Inbox/e/m.md", "e", "", "with a token\n");
    node.answered_within(&v, "Inbox/e/m.md", Duration::from_secs(30));
    assert_eq!(v.body("Inbox/e/m.reply.md").trim(), "echo: with a token");
    let ids: Vec<String> = live_workers(port).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["withkey"], "{}", refused.log_text());
    refused.wait_for(
        Duration::from_secs(10),
        "the refused worker names why",
        || refused.log_text().to_lowercase().contains("authorization"),
    );
    assert!(!refused.log_text().contains("s3cret"));
    assert!(alive(good.pid()));
}

#[test]
fn a_workers_live_text_reaches_the_vault_nodes_event_stream() {
    use std::io::{Read, Write};
    let v = TestVault::new();
    v.command_agent("talker", "", "echo first-line\nsleep 1\necho second-line");
    let nats = Nats::start(&v.parent);
    let port = free_port();
    let node = vault_node(&v, &nats, port);
    node.started();
    let _w = worker(&v, &nats, "tw", "1");
    node.wait_for(Duration::from_secs(20), "tw live", || {
        !live_workers(port).is_empty()
    });
    let mut sse = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sse.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        sse,
        "GET /api/agents/talker/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    v.message("Inbox/talker/m.md", "talker", "", "talk\n");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    // The first line arrives while the turn still runs (before its reply).
    let mut live_before_reply = false;
    while start.elapsed() < Duration::from_secs(30) && !seen.contains("\"done\"") {
        if let Ok(n) = sse.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        if seen.contains("first-line") && !v.exists("Inbox/talker/m.reply.md") {
            live_before_reply = true;
        }
    }
    assert!(
        seen.contains("\"text\"") && seen.contains("first-line"),
        "{seen}"
    );
    assert!(
        live_before_reply,
        "the text came only with the reply: {seen}"
    );
    assert!(seen.contains("\"done\""), "{seen}");
    node.answered(&v, "Inbox/talker/m.md");
}
