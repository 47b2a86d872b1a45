//! End-to-end scenarios of a remote vault (SPEC §6): the real `vaultrunner`
//! binary on a Parachute Vault server. Each scenario is one function of a
//! [`Target`], run against the fake of `parachute_fake.rs` (always) and
//! against the real server when `VR_PARACHUTE_URL` (its `…/vault/default`
//! base) and `VR_PARACHUTE_TOKEN` are set; unset, the real half prints that
//! it was skipped (docs/remote-vault.md, "Tests").
//!
//! The real server keeps its notes and there is one lease per vault, so the
//! real halves run one at a time (a lock in this binary), each under its
//! own paths (`vrr/<run>/…`) and agent names (`<name>-<run>`, so its
//! threads are its own too), and each stops its runners cleanly (which
//! releases the lease for the next). The trigger webhook needs a server
//! whose trigger points at the `serve` under test, and the real server
//! reads its trigger config once at start: that half starts a server of
//! its own through `VR_PARACHUTE_SCRIPT` (the path of
//! `../shared/parachute-vault/run-vault.sh`), and is skipped without it.
//! Scenarios that need the fake's knobs (a server that goes away, injected
//! failures) run against the fake only.
//!
//! Every scenario ends by checking that no token is in any note it can
//! see, in any output of the binary or in any log of its runners.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{OWNED, Out, Run, Serve, alive, poll_until, vr};
use crate::parachute_fake::FakeVault;

const TOKEN_ENV: &str = "VAULTRUNNER_VAULT_TOKEN";
const SECRET: &str = "vr-remote-test-webhook-secret";
const INBOUND: &[&str] = &["agent/message", "agent/message/inbound"];

/// The real halves run one at a time: one lease per vault.
static REAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A real server started by `VR_PARACHUTE_SCRIPT` for one test.
struct ScriptServer {
    pid: i32,
    data: PathBuf,
    script: String,
    port: u16,
    webhook: String,
}

/// Runs the script: a server on `port` with `data` (kept across a stop
/// and a start, so the same vault comes back); returns what it printed.
fn run_script(script: &str, port: u16, webhook: &str, data: &Path) -> BTreeMap<String, String> {
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(port.to_string())
        .env("TRIGGER_WEBHOOK", webhook)
        .env("VAULT_DATA", data)
        .env_remove("VAULT_TOKEN")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl ScriptServer {
    fn start(
        script: &str,
        port: u16,
        webhook: &str,
        data: PathBuf,
    ) -> (ScriptServer, BTreeMap<String, String>) {
        let vars = run_script(script, port, webhook, &data);
        let server = ScriptServer {
            pid: vars["VAULT_PID"].parse().unwrap(),
            data,
            script: script.to_string(),
            port,
            webhook: webhook.to_string(),
        };
        (server, vars)
    }

    /// Stops the server (SIGTERM, then SIGKILL): connections are refused.
    fn stop(&mut self) {
        // SAFETY: the server this test started (its pid from the script).
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        if !poll_until(Duration::from_secs(5), || !alive(self.pid)) {
            // SAFETY: as above.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }

    /// Starts it again on the same port with the same data.
    fn restart(&mut self) {
        let vars = run_script(&self.script, self.port, &self.webhook, &self.data);
        self.pid = vars["VAULT_PID"].parse().unwrap();
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Where a scenario runs, and what it saw (outputs and logs, checked for
/// the token at the end).
struct Target {
    kind: &'static str,
    base: String,
    token: String,
    read_only: Option<String>,
    fake: Option<FakeVault>,
    run: String,
    tmp: tempfile::TempDir,
    http: reqwest::Client,
    seen: Mutex<Vec<String>>,
    logs: Mutex<Vec<PathBuf>>,
    /// Agents named and notes created (for the clean-up of a real run).
    agents: Mutex<Vec<String>>,
    created: Mutex<Vec<String>>,
    n: AtomicU32,
    // Dropped after every runner of the scenario is stopped (fields drop in
    // order, the scenario's `Serve`s are locals of the scenario).
    _server: Mutex<Option<ScriptServer>>,
    _real: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Target {
    fn new(kind: &'static str, base: String, token: String) -> Target {
        Target {
            kind,
            base: base.trim_end_matches('/').to_string(),
            token,
            read_only: None,
            fake: None,
            run: uuid::Uuid::new_v4().simple().to_string()[..10].to_string(),
            tmp: tempfile::tempdir().unwrap(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            seen: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            agents: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            n: AtomicU32::new(0),
            _server: Mutex::new(None),
            _real: None,
        }
    }

    async fn fake() -> Target {
        let fake = FakeVault::start().await;
        let mut t = Target::new("fake", fake.base(), fake.token().to_string());
        t.read_only = Some(fake.read_only_token().to_string());
        t.fake = Some(fake);
        t
    }

    /// The real server named by the environment, or `None` (with a note).
    async fn real(test: &str) -> Option<Target> {
        let (Ok(base), Ok(token)) = (
            std::env::var("VR_PARACHUTE_URL"),
            std::env::var("VR_PARACHUTE_TOKEN"),
        ) else {
            eprintln!(
                "{test}: real-server half skipped (set VR_PARACHUTE_URL and VR_PARACHUTE_TOKEN; see docs/remote-vault.md)"
            );
            return None;
        };
        let guard = REAL.lock().await;
        let mut t = Target::new("real", base, token);
        t._real = Some(guard);
        t.mint_read_only(test).await;
        Some(t)
    }

    /// A real server of this test's own, started by `VR_PARACHUTE_SCRIPT`
    /// with its trigger posting to `webhook`; `None` (with a note) without
    /// the script.
    async fn real_own(test: &str, webhook: &str) -> Option<Target> {
        let Ok(script) = std::env::var("VR_PARACHUTE_SCRIPT") else {
            eprintln!(
                "{test}: real-server half skipped (it starts a server with its own trigger: set VR_PARACHUTE_SCRIPT to ../shared/parachute-vault/run-vault.sh)"
            );
            return None;
        };
        let guard = REAL.lock().await;
        let data = tempfile::tempdir().unwrap().keep();
        let (server, vars) = ScriptServer::start(&script, free_port(), webhook, data);
        let mut t = Target::new(
            "real",
            vars["VAULT_BASE"].clone(),
            vars["VAULT_TOKEN"].clone(),
        );
        t._server = Mutex::new(Some(server));
        t._real = Some(guard);
        t.mint_read_only(test).await;
        Some(t)
    }

    /// The server goes away: the fake stops, a script's server is killed.
    async fn server_down(&self) {
        if let Some(f) = &self.fake {
            f.stop().await;
        } else if let Some(s) = self._server.lock().unwrap().as_mut() {
            s.stop();
        } else {
            panic!("{}: no server of this test's own to stop", self.kind);
        }
    }

    /// It comes back on the same port with the same notes.
    async fn server_up(&self) {
        if let Some(f) = &self.fake {
            f.restart().await;
        } else if let Some(s) = self._server.lock().unwrap().as_mut() {
            s.restart();
        }
    }

    async fn mint_read_only(&mut self, test: &str) {
        self.read_only = crate::common::mint_read_only(
            &self.http,
            &self.base,
            &self.token,
            "vr-remote-read-only",
            test,
        )
        .await;
    }

    // ------------------------------------------------------------ names

    /// A note path of this run.
    fn p(&self, leaf: &str) -> String {
        format!("vrr/{}/{leaf}", self.run)
    }

    /// An agent name of this run (its threads are `Threads/<name>/…`).
    fn agent(&self, name: &str) -> String {
        let a = format!("{name}-{}", self.run);
        self.agents.lock().unwrap().push(a.clone());
        a
    }

    /// Deletes what this run wrote on a real server (after a scenario that
    /// passed: a failed one leaves its notes to look at), so that later
    /// scenarios' `check` and listings do not meet them.
    async fn clean_up(&self) {
        let agents = self.agents.lock().unwrap().clone();
        let mut ids: Vec<String> = self.created.lock().unwrap().clone();
        let mut prefixes = vec![self.p("")];
        for a in &agents {
            prefixes.push(format!("Threads/{a}/"));
            prefixes.push(format!("Inbox/{a}/"));
        }
        for p in &prefixes {
            ids.extend(
                self.list(p)
                    .await
                    .iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_string)),
            );
        }
        // Replies to notes without a path.
        let created = self.created.lock().unwrap().clone();
        for id in created {
            if let Some(n) = self.get(&format!("_id/{id}.reply")).await {
                ids.extend(n["id"].as_str().map(str::to_string));
            }
        }
        ids.sort();
        ids.dedup();
        for id in ids {
            let _ = self
                .raw("DELETE", &format!("{}/api/notes/{id}", self.base), None)
                .await;
        }
    }

    /// A state folder of this run (`VAULTRUNNER_STATE_DIR`).
    fn state(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(format!("state-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The folder vaultrunner keeps for this vault inside `state`.
    fn vault_state(&self, state: &Path) -> PathBuf {
        let rest = self.base.split_once("://").unwrap().1;
        let name: String = rest
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        state.join(name)
    }

    // ------------------------------------------------------------ the binary

    /// `vaultrunner <args…>` with the token and the state folder `main`.
    fn cmd(&self, args: &[&str]) -> Run {
        self.cmd_in(args, &self.state("main"))
    }

    fn cmd_in(&self, args: &[&str], state: &Path) -> Run {
        vr(args)
            .env(TOKEN_ENV, &self.token)
            .env("VAULTRUNNER_STATE_DIR", state.to_str().unwrap())
            .env_remove("VAULTRUNNER_VAULT_WEBHOOK_SECRET")
    }

    /// Runs it to completion and keeps its output for the token check.
    fn out(&self, run: Run) -> Out {
        let out = run.run();
        self.seen.lock().unwrap().push(out.all());
        out
    }

    /// `vaultrunner <command> VAULT [rest…]` with the token, to completion.
    fn vr(&self, command: &str, rest: &[&str]) -> Out {
        let mut args = vec![command, self.base.as_str()];
        args.extend_from_slice(rest);
        self.out(self.cmd(&args))
    }

    /// `serve VAULT --listen 127.0.0.1:0 --poll-ms 200 [extra…]` in the
    /// background with the state folder `state`, waited for until it serves.
    fn serve_in(&self, state: &Path, extra: &[&str]) -> Serve {
        let s = self.spawn_serve_in(state, extra);
        s.started();
        s
    }

    fn serve(&self, extra: &[&str]) -> Serve {
        self.serve_in(&self.state("main"), extra)
    }

    /// `serve` started, not waited for.
    fn spawn_serve_in(&self, state: &Path, extra: &[&str]) -> Serve {
        let mut args = vec!["serve", self.base.as_str()];
        if !extra.contains(&"--listen") {
            args.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--poll-ms") {
            args.extend_from_slice(&["--poll-ms", "200"]);
        }
        args.extend_from_slice(extra);
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let log = self.tmp.path().join(format!("serve-{n}.log"));
        self.logs.lock().unwrap().push(log.clone());
        self.cmd_in(&args, state)
            .env("VAULTRUNNER_VAULT_WEBHOOK_SECRET", SECRET)
            .spawn(log)
    }

    /// The address `serve` listens on, from its `http.addr`.
    fn http_addr(&self, s: &mut Serve, state: &Path) -> String {
        let f = self.vault_state(state).join("http.addr");
        let mut addr = String::new();
        let ok = poll_until(Duration::from_secs(20), || {
            if let Ok(a) = std::fs::read_to_string(&f)
                && !a.trim().is_empty()
            {
                addr = a.trim().to_string();
                return true;
            }
            !s.still_running()
        });
        assert!(ok && !addr.is_empty(), "no http.addr:\n{}", s.log_text());
        addr
    }

    // ------------------------------------------------------------ the API

    async fn raw(&self, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        self.raw_as(&self.token, method, url, body).await
    }

    async fn raw_as(
        &self,
        token: &str,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        crate::common::vault_api(&self.http, token, method, url, body).await
    }

    /// Creates a note through the API; its JSON.
    async fn create(&self, path: Option<&str>, content: &str, tags: &[&str], meta: Value) -> Value {
        let mut body = json!({"content": content, "tags": tags, "metadata": meta});
        if let Some(p) = path {
            body["path"] = json!(p);
        }
        let (status, v) = self
            .raw("POST", &format!("{}/api/notes", self.base), Some(body))
            .await;
        assert_eq!(status, 201, "{}: create {path:?}: {v}", self.kind);
        if let Some(id) = v["id"].as_str() {
            self.created.lock().unwrap().push(id.to_string());
        }
        v
    }

    /// An agent definition at `vrr/<run>/Agents/<name>`.
    async fn definition(&self, name: &str, meta: Value) {
        let mut m = meta;
        m["name"] = json!(name);
        self.create(
            Some(&self.p(&format!("Agents/{name}"))),
            "You are a test agent.",
            &["agent/definition"],
            m,
        )
        .await;
    }

    /// An inbound message at `vrr/<run>/<leaf>`; its path.
    async fn inbound(&self, leaf: &str, agent: &str, content: &str) -> String {
        let path = self.p(leaf);
        self.create(Some(&path), content, INBOUND, json!({"agent": agent}))
            .await;
        path
    }

    /// Every note under `prefix` (exactly), with content.
    async fn list(&self, prefix: &str) -> Vec<Value> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/notes", self.base),
            &[
                ("path_prefix", prefix),
                ("include_content", "true"),
                ("limit", "-1"),
                ("sort", "asc"),
            ],
        )
        .unwrap();
        // The test's own reads ride out the failures a scenario injects.
        let mut tries = 0;
        let v: Value = loop {
            let r = self
                .http
                .get(url.clone())
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap();
            let status = r.status();
            match r.json::<Value>().await {
                Ok(v) if status.is_success() && v.is_array() => break v,
                other if tries < 50 => {
                    let _ = other;
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{}: list {prefix}: {status} {other:?}", self.kind),
            }
        };
        v.as_array()
            .unwrap()
            .iter()
            .filter(|n| n["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
            .cloned()
            .collect()
    }

    /// This run's notes: its paths, and the threads of `agents`.
    async fn mine(&self, agents: &[&str]) -> Vec<Value> {
        let mut all = self.list(&self.p("")).await;
        for a in agents {
            all.extend(self.list(&format!("Threads/{a}/")).await);
        }
        all
    }

    /// The note at exactly `path`.
    async fn get(&self, path: &str) -> Option<Value> {
        let found: Vec<Value> = self
            .list(path)
            .await
            .into_iter()
            .filter(|n| n["path"] == json!(path))
            .collect();
        assert!(
            found.len() <= 1,
            "{}: two notes at {path}: {found:?}",
            self.kind
        );
        found.into_iter().next()
    }

    /// The note with `id`.
    async fn by_id(&self, id: &str) -> Option<Value> {
        let (status, v) = self
            .raw("GET", &format!("{}/api/notes/{id}", self.base), None)
            .await;
        (status == 200).then_some(v)
    }

    /// A user's edit through the API: read, PATCH with `if_updated_at`,
    /// again on a 409 (someone else, vaultrunner, wrote in between).
    async fn user_edit(&self, path: &str, patch: Value) -> Value {
        for _ in 0..20 {
            let n = self.get(path).await.unwrap();
            let mut body = patch.clone();
            body["if_updated_at"] = n["updatedAt"].clone();
            let (status, v) = self
                .raw(
                    "PATCH",
                    &format!("{}/api/notes/{}", self.base, n["id"].as_str().unwrap()),
                    Some(body),
                )
                .await;
            match status {
                200 => return v,
                409 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => panic!("{}: user edit of {path}: {status} {v}", self.kind),
            }
        }
        panic!("{}: the user's edit of {path} kept conflicting", self.kind)
    }

    // ------------------------------------------------------------ waits

    /// Waits until `path` is stamped `handled` (or `error`) and its reply
    /// exists; the inbound as it stands then.
    async fn answered(&self, path: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            if let Some(n) = self.get(path).await
                && matches!(meta(&n, "status").as_deref(), Some("handled" | "error"))
                && self.get(&format!("{path}.reply")).await.is_some()
            {
                return n;
            }
            assert!(
                started.elapsed() < within,
                "{}: {path} not answered within {within:?}: {:?}\n{}",
                self.kind,
                self.get(path).await,
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `f` of the note at `path` holds.
    async fn until(
        &self,
        path: &str,
        within: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            if let Some(n) = self.get(path).await
                && f(&n)
            {
                return n;
            }
            assert!(
                started.elapsed() < within,
                "{}: timed out after {within:?} waiting for {what} ({path}: {:?})\n{}",
                self.kind,
                self.get(path).await,
                self.logs_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logs_text(&self) -> String {
        let mut s = String::new();
        for l in self.logs.lock().unwrap().iter() {
            s.push_str(&format!("--- {} ---\n", l.display()));
            s.push_str(&std::fs::read_to_string(l).unwrap_or_default());
        }
        s
    }

    // ------------------------------------------------------------ checks

    /// Each path among `notes` at most once.
    fn assert_no_duplicates(&self, notes: &[Value]) {
        let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
        for n in notes {
            if let Some(p) = n["path"].as_str() {
                *by_path.entry(p.to_string()).or_default() += 1;
            }
        }
        let dups: Vec<_> = by_path.iter().filter(|(_, c)| **c > 1).collect();
        assert!(dups.is_empty(), "{}: duplicate notes: {dups:?}", self.kind);
    }

    /// The token (either) is in no note it can see (every note of the
    /// fake; this run's notes and threads on the real server), in no output
    /// of the binary and in no log of its runners.
    async fn assert_no_token(&self, agents: &[&str]) {
        let notes = match &self.fake {
            Some(f) => f.notes(),
            None => self.mine(agents).await,
        };
        let mut tokens = vec![self.token.clone()];
        tokens.extend(self.read_only.clone());
        for tok in &tokens {
            for n in &notes {
                let text = n.to_string();
                assert!(
                    !text.contains(tok.as_str()),
                    "{}: the token is in a note: {text}",
                    self.kind
                );
            }
            for o in self.seen.lock().unwrap().iter() {
                assert!(
                    !o.contains(tok.as_str()),
                    "{}: the token is in an output: {o}",
                    self.kind
                );
            }
            let logs = self.logs_text();
            assert!(
                !logs.contains(tok.as_str()),
                "{}: the token is in a log: {logs}",
                self.kind
            );
        }
    }
}

/// A metadata value as a string (`None` when absent or not a string).
fn meta(n: &Value, key: &str) -> Option<String> {
    n["metadata"][key].as_str().map(str::to_string)
}

fn tags(n: &Value) -> Vec<String> {
    n["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Every metadata value of `n` is a string (vaultrunner writes strings).
#[track_caller]
fn assert_all_strings(kind: &str, n: &Value, keys: Option<&[&str]>) {
    let m = n["metadata"].as_object().unwrap();
    for (k, v) in m {
        if keys.is_none_or(|ks| ks.contains(&k.as_str())) {
            assert!(
                v.is_string(),
                "{kind}: {} metadata {k} = {v} is not a string",
                n["path"]
            );
        }
    }
}

/// The checks of a round trip on `path` (an inbound for `agent`, with
/// `content`, answered by an echo agent).
async fn assert_round_trip(t: &Target, path: &str, agent: &str, content: &str) {
    let k = t.kind;
    let inbound = t.get(path).await.unwrap();
    let reply_path = format!("{path}.reply");
    let thread_path = format!("Threads/{agent}/{agent}");
    assert_eq!(
        meta(&inbound, "status").as_deref(),
        Some("handled"),
        "{k}: {inbound}"
    );
    assert_eq!(
        meta(&inbound, "attempts").as_deref(),
        Some("1"),
        "{k}: {inbound}"
    );
    assert_eq!(
        meta(&inbound, "reply"),
        Some(format!("[[{reply_path}]]")),
        "{k}: {inbound}"
    );
    assert_eq!(
        meta(&inbound, "thread"),
        Some(format!("[[{thread_path}]]")),
        "{k}: {inbound}"
    );
    assert!(meta(&inbound, "handled_at").is_some(), "{k}: {inbound}");
    assert_eq!(
        inbound["content"],
        json!(content),
        "{k}: the message's body is kept"
    );
    assert_all_strings(k, &inbound, Some(OWNED));

    let reply = t.get(&reply_path).await.unwrap();
    let rt = tags(&reply);
    assert!(
        rt.contains(&"agent/message/outbound".to_string()),
        "{k}: {reply}"
    );
    assert!(rt.contains(&"agent/message".to_string()), "{k}: {reply}");
    assert!(
        rt.iter().all(|t| !t.starts_with('#')),
        "{k}: bare tags: {reply}"
    );
    assert_eq!(
        meta(&reply, "in_reply_to"),
        Some(format!("[[{path}]]")),
        "{k}: {reply}"
    );
    assert_eq!(
        meta(&reply, "thread"),
        Some(format!("[[{thread_path}]]")),
        "{k}: {reply}"
    );
    assert_eq!(
        meta(&reply, "direction").as_deref(),
        Some("outbound"),
        "{k}: {reply}"
    );
    assert_eq!(
        meta(&reply, "status").as_deref(),
        Some("ok"),
        "{k}: {reply}"
    );
    assert_eq!(
        meta(&reply, "agent").as_deref(),
        Some(agent),
        "{k}: {reply}"
    );
    assert_eq!(
        reply["content"].as_str().unwrap().trim(),
        format!("echo: {}", content.trim()),
        "{k}: {reply}"
    );
    assert_all_strings(k, &reply, None);

    let thread = t.get(&thread_path).await.unwrap();
    assert_eq!(
        tags(&thread),
        vec!["agent/thread".to_string()],
        "{k}: {thread}"
    );
    assert_eq!(
        meta(&thread, "agent").as_deref(),
        Some(agent),
        "{k}: {thread}"
    );
    assert_eq!(
        meta(&thread, "status").as_deref(),
        Some("ok"),
        "{k}: {thread}"
    );
    assert!(meta(&thread, "turn_count").is_some(), "{k}: {thread}");
    assert_all_strings(k, &thread, None);
}

/// Two tests per scenario: `<scenario>::fake` and `<scenario>::real`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fake() {
                super::$name(&super::Target::fake().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                if let Some(t) = super::Target::real(concat!("remote::", stringify!($name))).await {
                    super::$name(&t).await;
                    t.clean_up().await;
                }
            }
        }
    )*};
}

/// Scenarios that stop and start the server: the fake, and a real server
/// of the test's own (`VR_PARACHUTE_SCRIPT`; its trigger points nowhere).
macro_rules! own_server {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fake() {
                super::$name(&super::Target::fake().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                let test = concat!("remote::", stringify!($name));
                if let Some(t) = super::Target::real_own(test, "http://127.0.0.1:9/nowhere").await {
                    super::$name(&t).await;
                }
            }
        }
    )*};
}

own_server!(the_server_going_away_loses_nothing);

/// Scenarios that need the fake's knobs.
macro_rules! fake_only {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fake() {
                super::$name(&super::Target::fake().await).await
            }
        }
    )*};
}

both!(
    round_trip_with_process,
    round_trip_with_serve_polling,
    a_rerun_never_duplicates,
    a_users_edit_mid_turn_is_kept,
    sigkill_twice_mid_run_answers_each_once,
    a_wrong_or_missing_token_is_named_never_shown,
    a_read_only_token_names_the_scope,
    two_runners_refuse_then_hand_over,
    parachute_agent_notes_interoperate,
    pending_again_subjects_and_callbacks,
    odd_paths_and_definition_changes,
    a_job_catches_up_once,
    a_crashed_runners_lease_expires_for_another,
    a_message_deleted_mid_turn_stops_nothing,
    a_turn_that_prints_the_token_does_not_put_it_in_a_note,
    attachments_are_named_unavailable,
    round_trip_with_a_cluster,
);

fake_only!(
    a_runner_that_lost_its_lease_stops,
    bad_server_answers_are_retried_or_named,
    an_oversized_note_is_named_and_others_run,
    the_webhook_and_the_poll_together_run_each_once,
    down_longer_than_the_lease_then_back,
);

// ------------------------------------------------------------------ 0. the token in turns

/// A turn has `VAULTRUNNER_VAULT_TOKEN` in its environment (so `send`
/// inside it reaches the vault); an agent that prints it does not put the
/// token into its reply note: vaultrunner redacts it from whatever it
/// writes to the vault.
async fn a_turn_that_prints_the_token_does_not_put_it_in_a_note(t: &Target) {
    let a = t.agent("leaky");
    t.definition(
        &a,
        json!({"backend": "command", "command": ["sh", "-c", "cat >/dev/null; printenv VAULTRUNNER_VAULT_TOKEN"]}),
    )
    .await;
    let m = t.inbound("Inbox/leak", &a, "print it").await;
    t.vr("process", &[]).success();
    let reply = t.get(&format!("{m}.reply")).await.unwrap();
    let content = reply["content"].as_str().unwrap_or_default().to_string();
    assert!(
        content.contains("<redacted: VAULTRUNNER_VAULT_TOKEN>"),
        "{}: {content}",
        t.kind
    );
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 1. round trip

async fn round_trip_with_process(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let m = t.inbound("Inbox/hello", &a, "Hello there!").await;
    let out = t.vr("process", &[]).success();
    assert!(out.stdout.contains("1 ok"), "{}: {out}", t.kind);
    assert_round_trip(t, &m, &a, "Hello there!").await;
    let thread = t.get(&format!("Threads/{a}/{a}")).await.unwrap();
    assert_eq!(
        meta(&thread, "turn_count").as_deref(),
        Some("1"),
        "{thread}"
    );
    let notes = t.mine(&[&a]).await;
    // The definition, the message, its reply, the thread: nothing else.
    assert_eq!(notes.len(), 4, "{}: {notes:#?}", t.kind);
    t.assert_no_duplicates(&notes);
    t.assert_no_token(&[&a]).await;
}

/// A remote vault gives no attachments (SPEC §9, docs/DECISIONS.md): the
/// turn runs without them and its reply says so; a note link is no
/// attachment.
async fn attachments_are_named_unavailable(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let m = t
        .inbound("Inbox/files", &a, "See ![[photo.png]] and [[Some note]].")
        .await;
    t.vr("process", &[]).success();
    let reply = t.get(&format!("{m}.reply")).await.unwrap();
    let body = reply["content"].as_str().unwrap_or_default();
    assert!(
        body.starts_with("echo: See ![[photo.png]]"),
        "{}: {body}",
        t.kind
    );
    assert!(
        body.contains("- `photo.png`: attachments are not available on a remote vault"),
        "{}: {body}",
        t.kind
    );
    assert!(!body.contains("Some note`"), "{}: {body}", t.kind);
    assert_eq!(meta(&reply, "status").as_deref(), Some("ok"));
}

/// `serve --cluster` on a remote vault: the vault node is the server's
/// one writer, a worker runs the turn (SPEC §8).
async fn round_trip_with_a_cluster(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let nats = crate::cluster::Nats::start(t.tmp.path());
    let before = t.inbound("Inbox/clustered", &a, "run by a worker").await;
    let mut s = t.serve(&["--cluster", &nats.url()]);
    let _w = crate::common::vr(&[
        "worker",
        "--cluster",
        &nats.url(),
        "--id",
        "remote-w",
        "--state",
        &t.tmp.path().join("worker-state").display().to_string(),
    ])
    .env("VAULTRUNNER_LOG", "info")
    .spawn(t.tmp.path().join("worker.log"));
    t.answered(&before, Duration::from_secs(60)).await;
    assert_round_trip(t, &before, &a, "run by a worker").await;
    assert!(
        s.log_text().contains("cluster: worker remote-w"),
        "{}",
        s.log_text()
    );
    assert_eq!(
        s.stop().map(|st| st.success()),
        Some(true),
        "{}",
        s.log_text()
    );
    t.assert_no_duplicates(&t.mine(&[&a]).await);
}

async fn round_trip_with_serve_polling(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let before = t.inbound("Inbox/before", &a, "written before serve").await;
    let mut s = t.serve(&["--poll-ms", "200"]);
    t.answered(&before, Duration::from_secs(30)).await;
    let after = t.inbound("Inbox/after", &a, "written while serving").await;
    t.answered(&after, Duration::from_secs(30)).await;
    // `send --wait` writes through the API and prints the reply.
    let sent = t
        .vr("send", &[&a, "sent by the CLI", "--wait", "30"])
        .success();
    assert!(
        sent.stdout.contains("echo: sent by the CLI"),
        "{}: {sent}",
        t.kind
    );
    assert_eq!(
        s.stop().map(|st| st.success()),
        Some(true),
        "{}",
        s.log_text()
    );
    assert_round_trip(t, &before, &a, "written before serve").await;
    assert_round_trip(t, &after, &a, "written while serving").await;
    let thread = t.get(&format!("Threads/{a}/{a}")).await.unwrap();
    assert_eq!(
        meta(&thread, "turn_count").as_deref(),
        Some("3"),
        "{thread}"
    );
    t.assert_no_duplicates(&t.mine(&[&a]).await);
    t.assert_no_token(&[&a]).await;
}

mod round_trip_with_the_trigger_webhook {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fake() {
        let t = super::Target::fake().await;
        let port = super::free_port();
        let url = super::webhook_url(port);
        t.fake
            .as_ref()
            .unwrap()
            .with_trigger(&url, &["agent/message/inbound"]);
        super::round_trip_with_the_trigger_webhook(&t, port).await;
        assert!(t.fake.as_ref().unwrap().trigger_deliveries() >= 1);
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real() {
        let port = super::free_port();
        let url = super::webhook_url(port);
        if let Some(t) =
            super::Target::real_own("remote::round_trip_with_the_trigger_webhook", &url).await
        {
            super::round_trip_with_the_trigger_webhook(&t, port).await
        }
    }
}

fn webhook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/api/vault/inbound?secret={SECRET}")
}

/// With a poll of 10 minutes and a rescan of an hour, only the webhook can
/// explain a reply within seconds.
async fn round_trip_with_the_trigger_webhook(t: &Target, port: u16) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let listen = format!("127.0.0.1:{port}");
    let mut s = t.serve(&[
        "--listen",
        &listen,
        "--poll-ms",
        "600000",
        "--rescan-secs",
        "3600",
    ]);
    t.http_addr(&mut s, &t.state("main"));
    let started = Instant::now();
    let m = t.inbound("Inbox/hook", &a, "woken by the trigger").await;
    t.answered(&m, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_round_trip(t, &m, &a, "woken by the trigger").await;
    assert!(took < Duration::from_secs(10), "{}: {took:?}", t.kind);
    eprintln!("{}: note → reply through the webhook in {took:?}", t.kind);
    // A wrong secret is refused and reads nothing.
    let r = t
        .http
        .post(format!("http://{listen}/api/vault/inbound?secret=nope"))
        .json(&json!({"note": {"id": "x", "path": m}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.stop();
    t.assert_no_duplicates(&t.mine(&[&a]).await);
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 2. re-run

async fn a_rerun_never_duplicates(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let m1 = t.inbound("Inbox/one", &a, "one").await;
    let m2 = t.inbound("Inbox/two", &a, "two").await;
    t.vr("process", &[]).success();
    let first = t.mine(&[&a]).await;
    let out = t.vr("process", &[]).success();
    assert!(
        out.stdout.contains("0 message") || out.stdout.contains("processed 0"),
        "{}: {out}",
        t.kind
    );
    let second = t.mine(&[&a]).await;
    assert_eq!(
        first, second,
        "{}: a second process changed nothing",
        t.kind
    );

    // serve, stopped, started again, with one more message in between.
    let mut s = t.serve(&[]);
    let m3 = t.inbound("Inbox/three", &a, "three").await;
    t.answered(&m3, Duration::from_secs(30)).await;
    s.stop();
    let mut s = t.serve(&[]);
    let m4 = t.inbound("Inbox/four", &a, "four").await;
    t.answered(&m4, Duration::from_secs(30)).await;
    // Another poll or two over everything that is handled.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.stop();
    t.vr("process", &[]).success();

    let notes = t.mine(&[&a]).await;
    t.assert_no_duplicates(&notes);
    // definition + 4 messages + 4 replies + 1 thread.
    assert_eq!(notes.len(), 10, "{}: {notes:#?}", t.kind);
    for m in [&m1, &m2, &m3, &m4] {
        let n = t.get(m).await.unwrap();
        assert_eq!(
            meta(&n, "attempts").as_deref(),
            Some("1"),
            "{}: {n}",
            t.kind
        );
        assert_eq!(
            meta(&n, "status").as_deref(),
            Some("handled"),
            "{}: {n}",
            t.kind
        );
    }
    let thread = t.get(&format!("Threads/{a}/{a}")).await.unwrap();
    assert_eq!(
        meta(&thread, "turn_count").as_deref(),
        Some("4"),
        "{thread}"
    );
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 3. concurrent edit

async fn a_users_edit_mid_turn_is_kept(t: &Target) {
    let k = t.kind;
    let a = t.agent("slow");
    t.definition(&a, json!({"backend": "command", "command": "sleep 2; cat"}))
        .await;
    let m = t.inbound("Inbox/edited", &a, "the first words").await;
    // No poll to speak of: the runner does not hear of the edits; its end
    // writes must read the notes again (and compare-and-set) to keep them.
    let mut s = t.serve(&["--poll-ms", "600000", "--rescan-secs", "3600"]);
    t.until(&m, Duration::from_secs(30), "the turn to start", |n| {
        meta(n, "status").as_deref() == Some("working")
    })
    .await;
    let thread_path = format!("Threads/{a}/{a}");
    t.until(
        &thread_path,
        Duration::from_secs(10),
        "the thread's start record",
        |n| meta(n, "status").as_deref() == Some("working"),
    )
    .await;
    // While the turn runs: the user edits the message and the thread's body.
    t.user_edit(
        &m,
        json!({"content": "the first words, edited by the user", "metadata": {"user_note": "mine"}}),
    )
    .await;
    t.user_edit(
        &thread_path,
        json!({"content": "Context the user wrote mid-turn."}),
    )
    .await;
    let n = t.answered(&m, Duration::from_secs(30)).await;
    t.until(
        &thread_path,
        Duration::from_secs(10),
        "the thread's end record",
        |n| meta(n, "status").as_deref() == Some("ok"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stop();

    let n2 = t.get(&m).await.unwrap();
    assert_eq!(n, n2, "{k}: nothing wrote the message after its stamp");
    assert_eq!(meta(&n, "status").as_deref(), Some("handled"), "{k}: {n}");
    assert_eq!(meta(&n, "user_note").as_deref(), Some("mine"), "{k}: {n}");
    assert_eq!(
        n["content"],
        json!("the first words, edited by the user"),
        "{k}: {n}"
    );
    assert_eq!(meta(&n, "attempts").as_deref(), Some("1"), "{k}: {n}");
    let thread = t.get(&thread_path).await.unwrap();
    assert_eq!(
        thread["content"],
        json!("Context the user wrote mid-turn."),
        "{k}: {thread}"
    );
    assert_eq!(
        meta(&thread, "turn_count").as_deref(),
        Some("1"),
        "{k}: {thread}"
    );
    let reply = t.get(&format!("{m}.reply")).await.unwrap();
    assert_eq!(
        meta(&reply, "status").as_deref(),
        Some("ok"),
        "{k}: {reply}"
    );
    let notes = t.mine(&[&a]).await;
    t.assert_no_duplicates(&notes);
    assert_eq!(notes.len(), 4, "{k}: {notes:#?}");
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 4. crash

async fn sigkill_twice_mid_run_answers_each_once(t: &Target) {
    let k = t.kind;
    let a = t.agent("slow");
    let b = t.agent("slow2");
    for x in [&a, &b] {
        t.definition(x, json!({"backend": "command", "command": "sleep 1; cat"}))
            .await;
    }
    let mut msgs = Vec::new();
    for i in 0..4 {
        msgs.push(
            t.inbound(&format!("Inbox/a{i}"), &a, &format!("to a #{i}"))
                .await,
        );
        msgs.push(
            t.inbound(&format!("Inbox/b{i}"), &b, &format!("to b #{i}"))
                .await,
        );
    }
    let state = t.state("main");
    for round in 0..2 {
        let mut s = t.serve_in(&state, &[]);
        // Kill it while a turn runs.
        let started = Instant::now();
        loop {
            let mut working = false;
            for m in &msgs {
                if t.get(m)
                    .await
                    .is_some_and(|n| meta(&n, "status").as_deref() == Some("working"))
                {
                    working = true;
                    break;
                }
            }
            if working {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{k}: no turn started\n{}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300 + 400 * round)).await;
        s.kill();
    }
    let mut s = t.serve_in(&state, &[]);
    for m in &msgs {
        t.answered(m, Duration::from_secs(60)).await;
    }
    s.stop();
    // The kills interrupted turns (a turn that ran again counted once more).
    let mut interrupted = 0;
    for m in &msgs {
        let n = t.get(m).await.unwrap();
        if meta(&n, "attempts").is_some_and(|a| a != "1") {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 1,
        "{k}: no turn was interrupted\n{}",
        t.logs_text()
    );
    eprintln!("{k}: {interrupted} message(s) ran again after a SIGKILL");
    let notes = t.mine(&[&a, &b]).await;
    t.assert_no_duplicates(&notes);
    // 2 definitions, 8 messages, 8 replies, 2 threads.
    assert_eq!(notes.len(), 20, "{k}: {notes:#?}");
    for m in &msgs {
        let n = t.get(m).await.unwrap();
        let reply = t.get(&format!("{m}.reply")).await.unwrap();
        let attempts: u32 = meta(&n, "attempts").unwrap().parse().unwrap();
        assert!((1..=3).contains(&attempts), "{k}: {n}");
        if meta(&n, "status").as_deref() == Some("handled") {
            assert_eq!(
                reply["content"].as_str().unwrap().trim(),
                n["content"].as_str().unwrap().trim(),
                "{k}"
            );
        }
        assert_eq!(meta(&reply, "in_reply_to"), Some(format!("[[{m}]]")), "{k}");
    }
    t.assert_no_token(&[&a, &b]).await;
}

// ------------------------------------------------------------------ 5. server down

async fn the_server_going_away_loses_nothing(t: &Target) {
    let a = t.agent("echo");
    let slow = t.agent("slow");
    t.definition(&a, json!({"backend": "echo"})).await;
    t.definition(
        &slow,
        json!({"backend": "command", "command": "sleep 1; cat"}),
    )
    .await;
    let state = t.state("main");
    let mut s = t.serve_in(&state, &[]);
    let addr = t.http_addr(&mut s, &state);
    let m0 = t.inbound("Inbox/m0", &a, "before").await;
    t.answered(&m0, Duration::from_secs(30)).await;
    // A turn runs while the server goes away: its end is written later.
    let m1 = t.inbound("Inbox/m1", &slow, "mid-turn").await;
    let n1 = t
        .until(
            &m1,
            Duration::from_secs(30),
            "the slow turn to start",
            |n| meta(n, "status").as_deref() == Some("working"),
        )
        .await;
    // The claim is two writes, the message then its thread: the turn runs
    // once both have landed (taking the server away between them fails
    // the claim, which is tried again with attempts 2).
    let thread = meta(&n1, "thread").unwrap();
    let thread = thread.trim_start_matches("[[").trim_end_matches("]]");
    t.until(
        thread,
        Duration::from_secs(30),
        "the slow turn's thread to be claimed",
        |n| meta(n, "status").as_deref() == Some("working"),
    )
    .await;
    t.server_down().await;
    let health = async || -> Value {
        t.http
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let started = Instant::now();
    let h = loop {
        let h = health().await;
        if h["status"] == json!("degraded") || started.elapsed() > Duration::from_secs(20) {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["status"], json!("degraded"), "{h}\n{}", s.log_text());
    assert!(
        h["vault"]
            .as_str()
            .is_some_and(|v| v.contains("vault unreachable")),
        "{h}"
    );
    let st = t
        .out(t.cmd_in(&["status", &t.base], &t.state("other")))
        .failure();
    assert_eq!(st.code(), Some(1), "{st}");
    assert!(st.all().contains("vault unreachable"), "{st}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.server_up().await;
    // Messages written once it is back, and (the fake) one while it
    // answers 503.
    let m2 = t.inbound("Inbox/m2", &a, "after").await;
    t.answered(&m1, Duration::from_secs(60)).await;
    if let Some(fake) = &t.fake {
        fake.set_down(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let h = health().await;
        assert_eq!(h["status"], json!("degraded"), "{h}");
        fake.set_down(false);
    }
    let m3 = t.inbound("Inbox/m3", &a, "after 503").await;
    for m in [&m0, &m1, &m2, &m3] {
        t.answered(m, Duration::from_secs(60)).await;
    }
    let started = Instant::now();
    while health().await["status"] != json!("ok") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop();
    let notes = t.mine(&[&a, &slow]).await;
    t.assert_no_duplicates(&notes);
    // 2 definitions, 4 messages, 4 replies, 2 threads.
    assert_eq!(notes.len(), 12, "{notes:#?}");
    for m in [&m0, &m1, &m2, &m3] {
        let n = t.get(m).await.unwrap();
        assert_eq!(meta(&n, "status").as_deref(), Some("handled"), "{n}");
        assert_eq!(meta(&n, "attempts").as_deref(), Some("1"), "{n}");
    }
    t.assert_no_token(&[&a, &slow]).await;
}

// ------------------------------------------------------------------ 6. tokens

/// Every command, as `(args after VAULT, writes?)`.
fn commands(agent: &str) -> Vec<(Vec<String>, bool)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (s(&["process"]), true),
        (s(&["serve", "--listen", "none"]), true),
        (s(&["send", agent, "hi"]), true),
        (s(&["reset", agent]), true),
        (s(&["check"]), false),
        (s(&["status"]), false),
        (s(&["schedule"]), false),
    ]
}

fn run_command(t: &Target, args: &[String], token: Option<&str>) -> Out {
    let mut full: Vec<&str> = vec![args[0].as_str(), t.base.as_str()];
    full.extend(args[1..].iter().map(String::as_str));
    let run = t.cmd(&full);
    let run = match token {
        Some(tok) => run.env(TOKEN_ENV, tok),
        None => run.env_remove(TOKEN_ENV),
    };
    t.out(run)
}

async fn a_wrong_or_missing_token_is_named_never_shown(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let m = t
        .inbound("Inbox/untouched", &a, "not for a wrong token")
        .await;
    let wrong = format!("pvt_wrong_{}_secret", t.run);
    for (args, _) in commands(&a) {
        for token in [Some(wrong.as_str()), None] {
            let out = run_command(t, &args, token);
            assert!(
                !out.status.success(),
                "{}: {args:?} with {token:?}: {out}",
                t.kind
            );
            assert!(out.all().contains(TOKEN_ENV), "{}: {args:?}: {out}", t.kind);
            assert!(
                !out.all().contains(&wrong),
                "{}: the token leaked: {out}",
                t.kind
            );
        }
    }
    let n = t.get(&m).await.unwrap();
    assert_eq!(meta(&n, "status"), None, "{}: {n}", t.kind);
    assert!(t.get(&format!("{m}.reply")).await.is_none());
    t.assert_no_token(&[&a]).await;
    let seen = t.seen.lock().unwrap().join("\n");
    assert!(!seen.contains(&wrong));
}

async fn a_read_only_token_names_the_scope(t: &Target) {
    let Some(ro) = t.read_only.clone() else {
        eprintln!("{}: no read-only token; skipped", t.kind);
        return;
    };
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    // A thread, so that `reset` has something to write.
    let first = t.inbound("Inbox/first", &a, "with the full token").await;
    t.vr("process", &[]).success();
    t.answered(&first, Duration::from_secs(5)).await;
    let m = t
        .inbound("Inbox/untouched", &a, "not for a read-only token")
        .await;
    for (args, writes) in commands(&a) {
        let out = run_command(t, &args, Some(&ro));
        assert!(
            !out.all().contains(&ro),
            "{}: the token leaked: {out}",
            t.kind
        );
        if writes {
            assert!(!out.status.success(), "{}: {args:?}: {out}", t.kind);
            assert!(out.all().contains(TOKEN_ENV), "{}: {args:?}: {out}", t.kind);
            assert!(
                out.all().contains("vault:write"),
                "{}: {args:?}: {out}",
                t.kind
            );
        } else {
            // Reading needs only vault:read: never refused for its scope.
            assert!(
                !out.all().contains("vault:write") && !out.all().contains("insufficient"),
                "{}: {args:?}: {out}",
                t.kind
            );
        }
    }
    let n = t.get(&m).await.unwrap();
    assert_eq!(meta(&n, "status"), None, "{}: {n}", t.kind);
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 7. two runners

async fn two_runners_refuse_then_hand_over(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let main = t.state("main");
    let other = t.state("other");
    let mut first = t.serve_in(&main, &[]);
    let m1 = t.inbound("Inbox/first", &a, "first").await;
    t.answered(&m1, Duration::from_secs(30)).await;

    // The same state folder: its file lock.
    let mut same = t.spawn_serve_in(&main, &[]);
    let st = same.wait_exit(Duration::from_secs(20));
    assert!(st.is_some_and(|s| !s.success()), "{k}: {}", same.log_text());
    let log = same.log_text();
    assert!(
        log.to_lowercase().contains("lock") || log.contains("already"),
        "{k}: {log}"
    );
    // Another state folder: the lease, naming its holder.
    let mut second = t.spawn_serve_in(&other, &[]);
    let st = second.wait_exit(Duration::from_secs(20));
    assert!(
        st.is_some_and(|s| !s.success()),
        "{k}: {}",
        second.log_text()
    );
    let log = second.log_text();
    assert!(log.contains("_vaultrunner/lease"), "{k}: {log}");
    assert!(
        log.contains(&format!("pid {}", first.pid())),
        "{k}: names the holder: {log}"
    );
    // `process` from elsewhere refuses too.
    let out = t.out(t.cmd_in(&["process", &t.base], &other)).failure();
    assert!(out.all().contains("_vaultrunner/lease"), "{k}: {out}");
    assert!(first.still_running());

    // A clean stop releases the lease: another runner starts at once.
    assert_eq!(
        first.stop().map(|s| s.success()),
        Some(true),
        "{}",
        first.log_text()
    );
    let started = Instant::now();
    let mut third = t.serve_in(&other, &[]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{k}: {:?}",
        started.elapsed()
    );
    let m2 = t.inbound("Inbox/second", &a, "second").await;
    t.answered(&m2, Duration::from_secs(30)).await;
    third.stop();
    t.assert_no_duplicates(&t.mine(&[&a]).await);
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 8. interop

async fn parachute_agent_notes_interoperate(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    // The `#` form, `ts` a string, a number in the metadata.
    let hashed = t.p("Inbox/hashed");
    t.create(
        Some(&hashed),
        "tagged with hashes",
        &["#agent/message", "#agent/message/inbound"],
        json!({"agent": a, "direction": "inbound", "sender": "parachute", "ts": "2026-01-02T03:04:05.000Z", "priority": 3, "ratio": 1.5}),
    )
    .await;
    // No path: its reply derives from `_id/<id>`.
    let pathless = t
        .create(None, "a note without a path", INBOUND, json!({"agent": a}))
        .await;
    let id = pathless["id"].as_str().unwrap().to_string();
    // Paths vaultrunner refuses: reported by check, never run, never a crash.
    let hidden = t.p(".hidden/x");
    t.create(
        Some(&hidden),
        "in a dot-folder",
        INBOUND,
        json!({"agent": a}),
    )
    .await;
    let dotdot = t.p("a/../b");
    t.create(Some(&dotdot), "climbing out", INBOUND, json!({"agent": a}))
        .await;
    let check = t.vr("check", &[]);
    eprintln!("{k}: check said: {check}");
    assert!(check.all().contains(&dotdot), "{k}: {check}");
    assert!(
        check.all().contains(".hidden"),
        "{k}: check names the refused path: {check}"
    );
    assert!(check.code().is_some(), "{k}: check did not crash: {check}");

    let out = t.vr("process", &[]);
    eprintln!("{k}: process said: {out}");
    assert!(out.code().is_some(), "{k}: {out}");
    assert_round_trip(t, &hashed, &a, "tagged with hashes").await;
    let h = t.get(&hashed).await.unwrap();
    assert_eq!(
        h["metadata"]["priority"],
        json!(3),
        "{k}: a number it does not own is kept: {h}"
    );
    assert_eq!(h["metadata"]["ratio"], json!(1.5), "{k}: {h}");
    let mut ht = tags(&h);
    ht.sort();
    assert_eq!(
        ht,
        ["#agent/message", "#agent/message/inbound"],
        "{k}: the user's tags are kept as written: {h}"
    );
    let note = t.by_id(&id).await.unwrap();
    assert_eq!(
        meta(&note, "status").as_deref(),
        Some("handled"),
        "{k}: {note}"
    );
    assert!(
        note.get("path").is_none_or(Value::is_null),
        "{k}: still without a path: {note}"
    );
    let reply_path = format!("_id/{id}.reply");
    let reply = t
        .get(&reply_path)
        .await
        .unwrap_or_else(|| panic!("{k}: no {reply_path}"));
    assert_eq!(
        meta(&reply, "in_reply_to"),
        Some(format!("[[_id/{id}]]")),
        "{k}: {reply}"
    );
    assert_eq!(
        reply["content"].as_str().unwrap().trim(),
        "echo: a note without a path"
    );
    let dd = t.get(&dotdot).await.unwrap();
    assert_eq!(
        meta(&dd, "status"),
        None,
        "{k}: a refused path is never run: {dd}"
    );
    let hid = t.get(&hidden).await.unwrap();
    assert_eq!(
        meta(&hid, "status"),
        None,
        "{k}: a refused path is never run: {hid}"
    );
    assert!(t.get(&format!("{hidden}.reply")).await.is_none());
    // serve does not crash over it either, and answers the next message.
    let mut s = t.serve(&[]);
    let m = t.inbound("Inbox/after", &a, "after the odd ones").await;
    t.answered(&m, Duration::from_secs(30)).await;
    assert!(s.still_running(), "{}", s.log_text());
    s.stop();
    // Clean up the pathless note's reply so reruns see their own.
    let mut notes = t.mine(&[&a]).await;
    notes.push(reply);
    t.assert_no_duplicates(&notes);
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ 9. bad answers

async fn bad_server_answers_are_retried_or_named(t: &Target) {
    let fake = t.fake.as_ref().unwrap();
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    // A few 500s: retried, nothing lost.
    let m1 = t.inbound("Inbox/after-500s", &a, "through the 500s").await;
    fake.fail_next(3, 500);
    let out = t.vr("process", &[]);
    eprintln!("after 500s: {out}");
    out.success();
    assert_round_trip(t, &m1, &a, "through the 500s").await;
    // A 2xx that is not JSON: the run names the request, or retries; a
    // second run finishes the work either way.
    let m2 = t
        .inbound("Inbox/after-html", &a, "through an HTML page")
        .await;
    fake.fail_next(1, 200);
    let out = t.vr("process", &[]);
    eprintln!("after a 2xx non-JSON: {out}");
    if !out.status.success() {
        assert!(out.all().contains("Parachute Vault"), "{out}");
    }
    t.vr("process", &[]).success();
    t.answered(&m2, Duration::from_secs(5)).await;
    // A server that keeps failing: process gives up with the request named.
    let m3 = t.inbound("Inbox/given-up", &a, "never through").await;
    fake.fail_next(100_000, 500);
    let started = Instant::now();
    let out = t.vr("process", &[]).failure();
    eprintln!("giving up took {:?}: {out}", started.elapsed());
    assert!(out.all().contains("500"), "{out}");
    assert!(out.all().contains("Parachute Vault"), "{out}");
    fake.fail_next(0, 500);
    t.vr("process", &[]).success();
    t.answered(&m3, Duration::from_secs(5)).await;
    // Under serve, while a turn runs: 500s, then HTML pages with a 200.
    let slow = t.agent("slow");
    t.definition(
        &slow,
        json!({"backend": "command", "command": "sleep 1; cat"}),
    )
    .await;
    let mut s = t.serve(&[]);
    for (i, status) in [500u16, 200].into_iter().enumerate() {
        let m = t
            .inbound(&format!("Inbox/mid-turn-{i}"), &slow, "mid-turn")
            .await;
        t.until(&m, Duration::from_secs(30), "the turn to start", |n| {
            meta(n, "status").as_deref() == Some("working")
        })
        .await;
        fake.fail_next(3, status);
        // vaultrunner's requests meet them, not the test's.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        t.answered(&m, Duration::from_secs(60)).await;
        let n = t.get(&m).await.unwrap();
        assert_eq!(meta(&n, "status").as_deref(), Some("handled"), "{n}");
    }
    // One HTML page to a poll does not make the runner deaf for long: a
    // message written after it is answered within seconds.
    let before = fake.total_requests();
    fake.fail_next(1, 200);
    let started = Instant::now();
    while fake.total_requests() == before {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = t.inbound("Inbox/after-a-bad-poll", &a, "heard").await;
    t.answered(&m, Duration::from_secs(5)).await;
    assert!(s.still_running(), "{}", s.log_text());
    s.stop();
    let notes = t.mine(&[&a, &slow]).await;
    t.assert_no_duplicates(&notes);
    t.assert_no_token(&[&a, &slow]).await;
}

async fn an_oversized_note_is_named_and_others_run(t: &Target) {
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let big = t.p("Inbox/huge");
    let content = "x".repeat(8 * 1024 * 1024 + 10);
    t.create(Some(&big), &content, INBOUND, json!({"agent": a}))
        .await;
    let m = t.inbound("Inbox/small", &a, "a small one").await;
    let out = t.vr("process", &[]);
    assert!(out.code().is_some(), "{out}");
    assert!(
        out.all().contains(&big),
        "the oversized note is named: {out}"
    );
    eprintln!("oversized: {out}");
    assert_round_trip(t, &m, &a, "a small one").await;
    let check = t.vr("check", &[]);
    assert!(check.all().contains(&big), "{check}");
    let n = t.get(&big).await.unwrap();
    assert_eq!(meta(&n, "status"), None);
    assert_eq!(
        n["content"].as_str().map(str::len),
        Some(content.len()),
        "never written over"
    );
    // serve reads past it too.
    let mut s = t.serve(&[]);
    let m2 = t.inbound("Inbox/small2", &a, "another").await;
    t.answered(&m2, Duration::from_secs(30)).await;
    s.stop();
    t.assert_no_token(&[&a]).await;
}

// ------------------------------------------------------------------ more of §2, §3

/// A person sets a handled message back to `pending`: it runs again, its
/// reply rewritten in place (a create that meets `path_conflict`, then an
/// update); a subject picks its thread; a `reply_to` writes the callback
/// at `<stem>.callback`, which the other agent answers.
async fn pending_again_subjects_and_callbacks(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    let b = t.agent("boss");
    t.definition(&a, json!({"backend": "echo"})).await;
    t.definition(&b, json!({"backend": "echo"})).await;
    let m = t.inbound("Inbox/again", &a, "say it twice").await;
    let sub = t.p("Inbox/subject");
    t.create(
        Some(&sub),
        "about plans",
        INBOUND,
        json!({"agent": a, "subject": "Big Plans!"}),
    )
    .await;
    let cb = t.p("Inbox/delegated");
    t.create(
        Some(&cb),
        "work for the boss",
        INBOUND,
        json!({"agent": a, "reply_to": b, "correlation_id": "c-1"}),
    )
    .await;
    t.vr("process", &[]).success();
    let n = t.answered(&m, Duration::from_secs(5)).await;
    let first_reply = t.get(&format!("{m}.reply")).await.unwrap();

    let thread = format!("Threads/{a}/{a}--big-plans");
    let s = t.answered(&sub, Duration::from_secs(5)).await;
    assert_eq!(
        meta(&s, "thread"),
        Some(format!("[[{thread}]]")),
        "{k}: {s}"
    );
    assert!(t.get(&thread).await.is_some(), "{k}: no {thread}");

    let callback = format!("{cb}.callback");
    let c = t.answered(&callback, Duration::from_secs(5)).await;
    assert_eq!(meta(&c, "agent").as_deref(), Some(b.as_str()), "{k}: {c}");
    assert_eq!(meta(&c, "callback").as_deref(), Some("true"), "{k}: {c}");
    assert_eq!(meta(&c, "source_status").as_deref(), Some("ok"), "{k}: {c}");
    assert_eq!(
        meta(&c, "correlation_id").as_deref(),
        Some("c-1"),
        "{k}: {c}"
    );
    assert_eq!(
        meta(&c, "delegation_depth").as_deref(),
        Some("1"),
        "{k}: {c}"
    );
    assert!(
        tags(&c).contains(&"agent/message/inbound".to_string()),
        "{k}: {c}"
    );
    assert_all_strings(k, &c, None);
    assert!(t.get(&format!("{callback}.reply")).await.is_some());

    // Set back to pending by a person: runs again, same reply path.
    t.user_edit(
        &m,
        json!({"metadata": {"status": "pending"}, "content": "say it again"}),
    )
    .await;
    t.vr("process", &[]).success();
    let again = t
        .until(&m, Duration::from_secs(5), "the second run", |x| {
            meta(x, "status").as_deref() == Some("handled") && x["updatedAt"] != n["updatedAt"]
        })
        .await;
    assert_eq!(
        meta(&again, "attempts").as_deref(),
        Some("1"),
        "{k}: {again}"
    );
    let reply = t.get(&format!("{m}.reply")).await.unwrap();
    assert_eq!(reply["id"], first_reply["id"], "{k}: the same reply note");
    assert_eq!(
        reply["content"].as_str().unwrap().trim(),
        "echo: say it again",
        "{k}: {reply}"
    );
    let notes = t.mine(&[&a, &b]).await;
    t.assert_no_duplicates(&notes);
    t.assert_no_token(&[&a, &b]).await;
}

/// The trigger and a fast poll both see every new message: each runs once.
async fn the_webhook_and_the_poll_together_run_each_once(t: &Target) {
    let fake = t.fake.as_ref().unwrap();
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    fake.with_trigger(&webhook_url(port), &["agent/message/inbound"]);
    let mut s = t.serve(&["--listen", &listen, "--poll-ms", "50"]);
    t.http_addr(&mut s, &t.state("main"));
    let mut msgs = Vec::new();
    for i in 0..10 {
        msgs.push(
            t.inbound(&format!("Inbox/race-{i}"), &a, &format!("race {i}"))
                .await,
        );
    }
    for m in &msgs {
        let n = t.answered(m, Duration::from_secs(30)).await;
        assert_eq!(meta(&n, "attempts").as_deref(), Some("1"), "{n}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stop();
    assert!(fake.trigger_deliveries() >= 10);
    let notes = t.mine(&[&a]).await;
    t.assert_no_duplicates(&notes);
    // definition + 10 messages + 10 replies + 1 thread
    assert_eq!(notes.len(), 22, "{notes:#?}");
    let thread = t.get(&format!("Threads/{a}/{a}")).await.unwrap();
    assert_eq!(
        meta(&thread, "turn_count").as_deref(),
        Some("10"),
        "{thread}"
    );
    t.assert_no_token(&[&a]).await;
}

/// Paths with spaces, non-ASCII letters and URL metacharacters (`%`, `?`,
/// `#`, `_`, `+`, `&`) are read, answered and written at their derived
/// paths; a definition changed while serving is used for the next message;
/// a broken one is reported naming the note and field, and the others run.
async fn odd_paths_and_definition_changes(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let mut msgs = Vec::new();
    for leaf in [
        "Inbox/Hello World ü",
        "Inbox/50% off?",
        "Inbox/#hash & plus+",
        "Inbox/under_score",
        "Inbox/ünïcødé/深い",
    ] {
        msgs.push(t.inbound(leaf, &a, &format!("from {leaf}")).await);
    }
    let broken = t.agent("broken");
    t.definition(&broken, json!({"backend": ["echo"]})).await;
    let check = t.vr("check", &[]);
    assert!(!check.status.success(), "{k}: {check}");
    assert!(
        check.all().contains(&format!("Agents/{broken}")),
        "{k}: {check}"
    );
    assert!(check.all().contains("backend"), "{k}: {check}");
    let mut s = t.serve(&[]);
    for m in &msgs {
        t.answered(m, Duration::from_secs(30)).await;
    }
    for (m, leaf) in msgs.iter().zip([
        "Hello World ü",
        "50% off?",
        "#hash & plus+",
        "under_score",
        "深い",
    ]) {
        let reply = t.get(&format!("{m}.reply")).await.unwrap();
        assert_eq!(
            meta(&reply, "in_reply_to"),
            Some(format!("[[{m}]]")),
            "{k}: {reply}"
        );
        assert!(
            reply["content"].as_str().unwrap().contains(leaf),
            "{k}: {reply}"
        );
    }
    // The definition becomes a command agent while serving.
    let def = t.p(&format!("Agents/{a}"));
    t.user_edit(
        &def,
        json!({"metadata": {"backend": "command", "command": "tr a-z A-Z"}}),
    )
    .await;
    let mut answered_by_new = false;
    for i in 0..20 {
        let m = t
            .inbound(&format!("Inbox/after-edit-{i}"), &a, "shout")
            .await;
        t.answered(&m, Duration::from_secs(30)).await;
        let r = t.get(&format!("{m}.reply")).await.unwrap();
        if r["content"].as_str().unwrap().trim() == "SHOUT" {
            answered_by_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answered_by_new,
        "{k}: the changed definition was not used\n{}",
        s.log_text()
    );
    assert!(s.still_running());
    s.stop();
    t.assert_no_duplicates(&t.mine(&[&a]).await);
    t.assert_no_token(&[&a]).await;
}

/// A job that missed its hourly runs fires once on start (catch-up), at
/// the derived path under `Inbox/<agent>/`, is answered, and records
/// `last_run_at`; a restart fires nothing more; `schedule --json` lists it.
async fn a_job_catches_up_once(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let three_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(3))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let job = t.p("Jobs/hourly");
    t.create(
        Some(&job),
        "Good morning.",
        &["agent/job"],
        json!({"agent": a, "cron": "0 * * * *", "tz": "UTC", "last_run_at": three_hours_ago}),
    )
    .await;
    let sched = t.vr("schedule", &["--json", "--count", "2"]).success();
    let v: Value = serde_json::from_str(&sched.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().any(|j| j["agent"] == json!(a)),
        "{k}: {sched}"
    );
    let mut s = t.serve(&[]);
    let fired = t
        .until(&job, Duration::from_secs(30), "the catch-up fire", |n| {
            meta(n, "last_run_at").is_some_and(|x| x != three_hours_ago)
        })
        .await;
    assert_all_strings(k, &fired, Some(&["last_run_at", "last_status"]));
    let inbox = t.list(&format!("Inbox/{a}/")).await;
    let msgs: Vec<&Value> = inbox
        .iter()
        .filter(|n| tags(n).contains(&"agent/message/inbound".to_string()))
        .collect();
    assert_eq!(msgs.len(), 1, "{k}: one fire: {inbox:#?}");
    let m = msgs[0]["path"].as_str().unwrap().to_string();
    assert!(m.contains("job--"), "{k}: {m}");
    t.answered(&m, Duration::from_secs(30)).await;
    s.stop();
    let mut s = t.serve(&[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.stop();
    let inbox = t.list(&format!("Inbox/{a}/")).await;
    // the fire and its reply, nothing more
    assert_eq!(inbox.len(), 2, "{k}: {inbox:#?}");
    t.assert_no_token(&[&a]).await;
}

/// A runner killed with SIGKILL cannot release its lease: another runner
/// (another state folder) is refused, naming the holder, until the lease
/// expires 30 s after its last renewal, and then takes it and answers.
async fn a_crashed_runners_lease_expires_for_another(t: &Target) {
    let k = t.kind;
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let mut first = t.serve_in(&t.state("main"), &[]);
    let pid = first.pid();
    first.kill();
    let killed = Instant::now();
    let other = t.state("other");
    let out = t.out(t.cmd_in(&["process", &t.base], &other)).failure();
    assert!(
        out.all().contains(&format!("pid {pid}")),
        "{k}: names the holder: {out}"
    );
    let m = t
        .inbound("Inbox/after-expiry", &a, "once the lease expired")
        .await;
    let mut second = loop {
        let mut s = t.spawn_serve_in(&other, &[]);
        if s.wait_exit(Duration::from_secs(3)).is_none() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(45),
            "{k}: the lease never expired: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let took = killed.elapsed();
    assert!(
        took > Duration::from_secs(15),
        "{k}: taken too early: {took:?}"
    );
    eprintln!("{k}: the lease of a killed runner was taken by another after {took:?}");
    second.started();
    t.answered(&m, Duration::from_secs(30)).await;
    second.stop();
    t.assert_no_token(&[&a]).await;
}

/// The server gone for longer than the lease lasts: the runner keeps its
/// lease when it is back (nobody else took it) and answers what is new.
async fn down_longer_than_the_lease_then_back(t: &Target) {
    let fake = t.fake.as_ref().unwrap();
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let mut s = t.serve(&[]);
    let m0 = t.inbound("Inbox/before", &a, "before").await;
    t.answered(&m0, Duration::from_secs(30)).await;
    let lease = t.get("_vaultrunner/lease").await.unwrap();
    fake.stop().await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    fake.restart().await;
    let m1 = t.inbound("Inbox/after", &a, "after a long outage").await;
    t.answered(&m1, Duration::from_secs(60)).await;
    assert!(s.still_running(), "{}", s.log_text());
    // Renewed by the same runner.
    let started = Instant::now();
    loop {
        let now = t.get("_vaultrunner/lease").await.unwrap();
        if now["updatedAt"] != lease["updatedAt"] {
            assert_eq!(
                now["metadata"]["lease_id"], lease["metadata"]["lease_id"],
                "{now}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A second runner is still refused.
    let out = t
        .out(t.cmd_in(&["process", &t.base], &t.state("other")))
        .failure();
    assert!(out.all().contains("_vaultrunner/lease"), "{out}");
    s.stop();
    t.assert_no_duplicates(&t.mine(&[&a]).await);
    t.assert_no_token(&[&a]).await;
}

/// Another runner took the lease (as after an outage longer than the
/// lease): at its next renewal this runner sees it, stops, and says why
/// (exit 1); the lease is left to its new holder.
async fn a_runner_that_lost_its_lease_stops(t: &Target) {
    let fake = t.fake.as_ref().unwrap();
    let a = t.agent("echo");
    t.definition(&a, json!({"backend": "echo"})).await;
    let mut s = t.serve(&[]);
    let m0 = t.inbound("Inbox/before", &a, "before").await;
    t.answered(&m0, Duration::from_secs(30)).await;
    let until = (chrono::Utc::now() + chrono::Duration::seconds(60))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    fake.edit(
        "_vaultrunner/lease",
        json!({"metadata": {"lease_id": "someone-else", "holder": "vaultrunner pid 1 on elsewhere", "expires_at": until}}),
    )
    .unwrap();
    // Renewed every 10 s: stopped within that (and the shutdown bound).
    let status = s.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|st| st.code()), Some(1), "{}", s.log_text());
    assert!(
        s.log_text().contains("this runner stops"),
        "{}",
        s.log_text()
    );
    let lease = t.get("_vaultrunner/lease").await.unwrap();
    assert_eq!(
        lease["metadata"]["lease_id"],
        json!("someone-else"),
        "{lease}"
    );
    t.assert_no_token(&[&a]).await;
}

/// A user deletes a message while its turn runs: the runner neither
/// crashes nor loops, and the next messages are answered.
async fn a_message_deleted_mid_turn_stops_nothing(t: &Target) {
    let k = t.kind;
    let slow = t.agent("slow");
    t.definition(
        &slow,
        json!({"backend": "command", "command": "sleep 1; cat"}),
    )
    .await;
    let gone = t.agent("gone");
    t.definition(&gone, json!({"backend": "echo"})).await;
    let mut s = t.serve(&[]);
    // A definition deleted at once, before the first poll: gone too.
    let def = t.get(&t.p(&format!("Agents/{gone}"))).await.unwrap();
    let (status, v) = t
        .raw(
            "DELETE",
            &format!("{}/api/notes/{}", t.base, def["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let unheard = t.inbound("Inbox/unheard", &gone, "nobody to answer").await;
    let m = t.inbound("Inbox/deleted", &slow, "soon gone").await;
    let n = t
        .until(&m, Duration::from_secs(30), "the turn to start", |n| {
            meta(n, "status").as_deref() == Some("working")
        })
        .await;
    let (status, v) = t
        .raw(
            "DELETE",
            &format!("{}/api/notes/{}", t.base, n["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let next = t.inbound("Inbox/next", &slow, "still heard").await;
    t.answered(&next, Duration::from_secs(30)).await;
    assert!(
        t.get(&m).await.is_none(),
        "{k}: the deleted message came back"
    );
    // The definition deleted: the agent is gone, its next message waits.
    let def = t.get(&t.p(&format!("Agents/{slow}"))).await.unwrap();
    let (status, v) = t
        .raw(
            "DELETE",
            &format!("{}/api/notes/{}", t.base, def["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waits = t.inbound("Inbox/waits", &slow, "nobody to answer").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w = t.get(&waits).await.unwrap();
    assert_eq!(
        meta(&w, "status"),
        None,
        "{k}: run by a deleted agent: {w}\n{}",
        s.log_text()
    );
    assert!(t.get(&format!("{waits}.reply")).await.is_none(), "{k}");
    let u = t.get(&unheard).await.unwrap();
    assert_eq!(
        meta(&u, "status"),
        None,
        "{k}: run by an agent deleted at start: {u}"
    );
    assert!(s.still_running(), "{}", s.log_text());
    let log = s.log_text();
    s.stop();
    assert!(log.lines().count() < 200, "{k}: a loop in the log:\n{log}");
    eprintln!("{k}: deleted mid-turn:\n{log}");
    t.assert_no_token(&[&slow]).await;
}
