//! End-to-end tests of Git-synced vaults (SPEC §7, issue 11 point 7):
//! `serve --git-sync` and `process --git-sync` between a bare `origin.git`,
//! a "phone" clone driven by plain `git` commands, and the "server" clone
//! (the [`TestVault`]'s root) that vaultrunner runs on.
//!
//! Git is isolated from the machine: every git call — the tests' own and
//! vaultrunner's, through the environment the binary inherits — gets
//! `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=<tmp>/gitconfig` (user
//! `phone`, `init.defaultBranch=main`) and `HOME=<tmp>`. A vaultrunner that
//! took its identity from the config would therefore commit as `phone`,
//! which the tests catch.
//!
//! Everything is waited for with a deadline (30–120 s: the suite runs in
//! parallel on 2 cores); the fixed pauses are the phone's pacing, the
//! moments a crash test picks to SIGKILL, and observation windows
//! ("nothing is pushed while paused"), each saying so.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    Run, Serve, TestVault, front_matter, inbound, parse_note, reply_of, scalar, split_note,
};

/// How often the waits on git state poll (each look runs `git`).
const POLL: Duration = Duration::from_millis(250);

/// The usual deadline for something to reach origin.
const SOON: Duration = Duration::from_secs(45);

/// Variables a parent git (a hook running this) would leak into git calls.
fn git_leaks() -> impl Iterator<Item = &'static str> {
    vaultrunner::git::REMOVED_ENV
        .into_iter()
        .chain(vaultrunner::git::IDENTITY_ENV)
}

// ------------------------------------------------------------------ fixture

/// One commit of origin's history.
#[derive(Debug, Clone)]
struct Commit {
    hash: String,
    author: String,
    author_email: String,
    committer: String,
    committer_email: String,
    subject: String,
}

impl Commit {
    fn by_vaultrunner(&self) -> bool {
        self.author == "vaultrunner"
    }
}

/// The three repositories: `<tmp>/origin.git` (bare), `<tmp>/phone` and
/// the server clone at `<tmp>/vault` (the [`TestVault`]'s root).
struct Fx {
    v: TestVault,
    origin: PathBuf,
    phone: PathBuf,
    home: PathBuf,
    gitconfig: PathBuf,
    /// Every commit the phone made (its own, not its merges), in order.
    phone_commits: RefCell<Vec<String>>,
}

impl Fx {
    /// A synced vault with an `echo` agent.
    fn echo() -> Fx {
        Fx::new(|v| v.agent("echo", "backend: echo\n", ""))
    }

    /// Sets up origin, the server clone (with the agents `agents` writes
    /// into it and `.vaultrunner/` ignored, committed by "setup" and pushed
    /// with an upstream) and the phone clone.
    fn new(agents: impl FnOnce(&TestVault)) -> Fx {
        let v = TestVault::new();
        let home = v.parent.clone();
        let gitconfig = home.join("gitconfig");
        std::fs::write(
            &gitconfig,
            "[user]\n\tname = phone\n\temail = phone@example.invalid\n\
             [init]\n\tdefaultBranch = main\n\
             [pull]\n\trebase = false\n\
             [core]\n\tautocrlf = false\n",
        )
        .unwrap();
        let fx = Fx {
            origin: home.join("origin.git"),
            phone: home.join("phone"),
            home,
            gitconfig,
            v,
            phone_commits: RefCell::new(Vec::new()),
        };
        fx.git_ok(&fx.home, &["init", "-q", "--bare", "origin.git"]);
        // `git clone` into the (existing, empty) vault directory.
        fx.git_ok(&fx.home, &["clone", "-q", "origin.git", "vault"]);
        agents(&fx.v);
        fx.v.write(".gitignore", ".vaultrunner/\n");
        fx.git_ok(&fx.v.root, &["add", "-A"]);
        fx.git_ok(
            &fx.v.root,
            &[
                "-c",
                "user.name=setup",
                "-c",
                "user.email=setup@example.invalid",
                "commit",
                "-q",
                "-m",
                "setup",
            ],
        );
        fx.git_ok(&fx.v.root, &["push", "-q", "-u", "origin", "main"]);
        fx.git_ok(&fx.home, &["clone", "-q", "origin.git", "phone"]);
        fx
    }

    /// The isolating environment, for git and for vaultrunner.
    fn git_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GIT_CONFIG_NOSYSTEM", "1".to_string()),
            ("GIT_CONFIG_GLOBAL", self.gitconfig.display().to_string()),
            ("HOME", self.home.display().to_string()),
        ]
    }

    /// `run` with the isolating environment.
    fn isolated(&self, mut run: Run) -> Run {
        // The push webhook is open in these tests.
        run = run.env_remove("VAULTRUNNER_GIT_WEBHOOK_SECRET");
        for (k, val) in self.git_env() {
            run = run.env(k, &val);
        }
        run
    }

    /// `git args…` in `dir`, isolated; its output whatever the exit.
    fn git(&self, dir: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .args(args)
            .stdin(Stdio::null())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_EDITOR", "true")
            .env("GIT_MERGE_AUTOEDIT", "no");
        for k in git_leaks() {
            cmd.env_remove(k);
        }
        for (k, val) in self.git_env() {
            cmd.env(k, val);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn git {args:?}: {e}"))
    }

    /// `git args…` in `dir`, asserting success; its stdout.
    #[track_caller]
    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.git(dir, args);
        assert!(
            out.status.success(),
            "git {args:?} in {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `git --git-dir <origin> args…`, asserting success.
    #[track_caller]
    fn origin_git(&self, args: &[&str]) -> String {
        let mut all = vec!["--git-dir", self.origin.to_str().unwrap()];
        all.extend_from_slice(args);
        self.git_ok(&self.home, &all)
    }

    /// `git args…` in the server clone, asserting success.
    #[track_caller]
    fn server_git(&self, args: &[&str]) -> String {
        self.git_ok(&self.v.root, args)
    }

    // -------------------------------------------------------------- the phone

    /// Writes a file in the phone's clone (not committed).
    fn phone_write(&self, rel: &str, text: &str) {
        let p = self.phone.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }

    /// A file of the phone's clone.
    fn phone_read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.phone.join(rel)).ok()
    }

    /// Writes an inbound message for `agent` on the phone (not committed).
    /// The body is `Message:`, a blank line and `text`, so an edit of
    /// `text` and vaultrunner's keys are never adjacent lines (plain git
    /// merges them on the phone).
    fn phone_message(&self, rel: &str, agent: &str, text: &str) {
        self.phone_write(rel, &inbound(agent, "", &format!("Message:\n\n{text}\n")));
    }

    /// Commits everything on the phone (as `phone`); the commit, or `None`
    /// when there was nothing to commit.
    fn phone_commit(&self, msg: &str) -> Option<String> {
        self.git_ok(&self.phone, &["add", "-A"]);
        if self
            .git(&self.phone, &["diff", "--cached", "--quiet"])
            .status
            .success()
        {
            return None;
        }
        self.git_ok(&self.phone, &["commit", "-q", "-m", msg]);
        let hash = self
            .git_ok(&self.phone, &["rev-parse", "HEAD"])
            .trim()
            .to_string();
        self.phone_commits.borrow_mut().push(hash.clone());
        Some(hash)
    }

    /// Pushes the phone's branch; on a rejection pulls (a merge, as
    /// obsidian-git does by default) and pushes again.
    #[track_caller]
    fn phone_push(&self) {
        for _ in 0..30 {
            let out = self.git(&self.phone, &["push", "-q", "origin", "main"]);
            if out.status.success() {
                return;
            }
            self.phone_pull();
        }
        panic!("the phone could not push in 30 rounds");
    }

    /// [`phone_commit`](Self::phone_commit) then [`phone_push`](Self::phone_push).
    #[track_caller]
    fn phone_commit_push(&self, msg: &str) -> Option<String> {
        let c = self.phone_commit(msg);
        self.phone_push();
        c
    }

    /// `git pull` (a merge) on the phone; panics, naming the files, when
    /// git cannot merge vaultrunner's changes with the phone's: the keys
    /// vaultrunner sets and the lines the phone edits are never adjacent,
    /// so a conflict means vaultrunner rewrote what was not its own.
    #[track_caller]
    fn phone_pull(&self) {
        let out = self.git(&self.phone, &["pull", "-q", "--no-rebase", "--no-edit"]);
        if !out.status.success() {
            let st = self.git(&self.phone, &["status", "--porcelain"]);
            let diff = self.git(&self.phone, &["diff"]);
            panic!(
                "the phone's pull failed:\n{}{}\n--- status ---\n{}\n--- diff ---\n{}\n--- origin log ---\n{:#?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&st.stdout),
                String::from_utf8_lossy(&diff.stdout),
                self.origin_log()
            );
        }
    }

    // -------------------------------------------------------------- origin

    /// A file of origin's `main`, `None` when it is not there.
    fn origin_file(&self, rel: &str) -> Option<String> {
        self.origin_files(&[rel]).pop().unwrap()
    }

    /// Several files of origin's `main` in one `git cat-file --batch`.
    fn origin_files(&self, rels: &[&str]) -> Vec<Option<String>> {
        let mut child = Command::new("git");
        child
            .arg("--git-dir")
            .arg(&self.origin)
            .args(["cat-file", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for k in git_leaks() {
            child.env_remove(k);
        }
        for (k, val) in self.git_env() {
            child.env(k, val);
        }
        let mut child = child.spawn().unwrap();
        let mut input = String::new();
        for r in rels {
            input.push_str(&format!("main:{r}\n"));
        }
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "cat-file: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = out.stdout;
        let mut pos = 0;
        let mut res = Vec::new();
        for _ in rels {
            let nl = pos + bytes[pos..].iter().position(|&b| b == b'\n').unwrap();
            let header = String::from_utf8_lossy(&bytes[pos..nl]).to_string();
            pos = nl + 1;
            if header.ends_with(" missing") || header.ends_with(" ambiguous") {
                res.push(None);
                continue;
            }
            let size: usize = header.rsplit(' ').next().unwrap().parse().unwrap();
            res.push(Some(
                String::from_utf8_lossy(&bytes[pos..pos + size]).to_string(),
            ));
            pos += size + 1;
        }
        res
    }

    /// Every file of origin's `main`.
    fn origin_tree(&self) -> Vec<String> {
        self.origin_git(&["ls-tree", "-r", "-z", "--name-only", "main"])
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// origin's `main`, newest first.
    fn origin_log(&self) -> Vec<Commit> {
        self.origin_git(&[
            "log",
            "--format=%H%x1f%an%x1f%ae%x1f%cn%x1f%ce%x1f%s",
            "main",
        ])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\x1f').collect();
            Commit {
                hash: f[0].into(),
                author: f[1].into(),
                author_email: f[2].into(),
                committer: f[3].into(),
                committer_email: f[4].into(),
                subject: f[5].into(),
            }
        })
        .collect()
    }

    /// origin's `main` commit.
    fn origin_head(&self) -> String {
        self.origin_git(&["rev-parse", "main"]).trim().to_string()
    }

    /// The `commit:path`s of origin's history (every commit, every path)
    /// whose file holds `needle` (empty: none).
    fn origin_history_with(&self, needle: &str) -> Vec<String> {
        let revs = self.origin_git(&["rev-list", "--all"]);
        let mut args = vec!["grep", "-l", "-F", "-e", needle];
        args.extend(revs.lines());
        let mut all = vec!["--git-dir", self.origin.to_str().unwrap()];
        all.extend_from_slice(&args);
        let out = self.git(&self.home, &all);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Is `commit` in origin's `main`?
    fn origin_has_commit(&self, commit: &str) -> bool {
        let out = self.git(
            &self.home,
            &[
                "--git-dir",
                self.origin.to_str().unwrap(),
                "merge-base",
                "--is-ancestor",
                commit,
                "main",
            ],
        );
        out.status.success()
    }

    /// Is `rel` answered on origin: its reply is there and it is stamped
    /// `handled`?
    fn origin_answered(&self, rel: &str) -> bool {
        let got = self.origin_files(&[rel, &reply_of(rel)]);
        matches!(&got[..], [Some(m), Some(_)] if key(m, "status").as_deref() == Some("handled"))
    }

    /// Replies (and copies of replies) of `rel` on origin:
    /// `<stem>.reply*.md` in its folder.
    fn origin_replies_of(&self, tree: &[String], rel: &str) -> Vec<String> {
        let stem = rel.strip_suffix(".md").unwrap();
        tree.iter()
            .filter(|f| f.starts_with(&format!("{stem}.reply")) && f.ends_with(".md"))
            .cloned()
            .collect()
    }

    /// Asserts every path in `rels` has exactly one reply on origin and is
    /// `handled` there.
    #[track_caller]
    fn assert_one_reply_each(&self, rels: &[String]) {
        let tree = self.origin_tree();
        let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
        let texts = self.origin_files(&refs);
        for (rel, text) in rels.iter().zip(texts) {
            let replies = self.origin_replies_of(&tree, rel);
            assert_eq!(
                replies,
                vec![reply_of(rel)],
                "{rel}: exactly one reply on origin"
            );
            let text = text.unwrap_or_else(|| panic!("{rel} is not on origin"));
            assert_eq!(
                key(&text, "status").as_deref(),
                Some("handled"),
                "{rel} on origin:\n{text}"
            );
        }
    }

    /// Asserts no file of origin's `main`, of the phone or of the server's
    /// working tree holds a Git conflict marker, and origin holds no
    /// conflict copy.
    #[track_caller]
    fn assert_no_conflict_markers(&self) {
        self.assert_no_conflict_markers_in_notes();
        let copies: Vec<String> = self
            .origin_tree()
            .into_iter()
            .filter(|f| f.contains("(conflict"))
            .collect();
        assert!(copies.is_empty(), "conflict copies on origin: {copies:?}");
    }

    /// Asserts no file of origin's `main`, of the phone or of the server's
    /// working tree holds a Git conflict marker.
    #[track_caller]
    fn assert_no_conflict_markers_in_notes(&self) {
        let grep = self.git(
            &self.home,
            &[
                "--git-dir",
                self.origin.to_str().unwrap(),
                "grep",
                "-n",
                "-E",
                "^(<<<<<<<|>>>>>>>)( |$)",
                "main",
            ],
        );
        assert!(
            !grep.status.success(),
            "conflict markers on origin:\n{}",
            String::from_utf8_lossy(&grep.stdout)
        );
        for (who, root) in [("server", &self.v.root), ("phone", &self.phone)] {
            for (rel, abs) in crate::common::walk(root) {
                if rel.starts_with(".git/") || !rel.ends_with(".md") {
                    continue;
                }
                let text = std::fs::read_to_string(&abs).unwrap_or_default();
                assert!(
                    !text
                        .lines()
                        .any(|l| l.starts_with("<<<<<<<") || l.starts_with(">>>>>>>")),
                    "conflict markers in the {who}'s {rel}:\n{text}"
                );
            }
        }
    }

    // -------------------------------------------------------------- the server

    /// The server clone's `git status --porcelain` (ignored files left out).
    fn server_status(&self) -> String {
        // No optional locks: the test's look must not take `index.lock`
        // (a sync would rightly pause on it).
        self.server_git(&["--no-optional-locks", "status", "--porcelain"])
    }

    /// The server clone's `git diff HEAD` (its first 4000 bytes) and what
    /// its index has staged.
    fn server_diff(&self) -> String {
        let d = self.git(&self.v.root, &["--no-optional-locks", "diff", "HEAD"]);
        let staged = self.git(
            &self.v.root,
            &["--no-optional-locks", "diff", "--cached", "--stat"],
        );
        // How each modified note came to be as committed (its first one).
        let modified = self.git(
            &self.v.root,
            &["--no-optional-locks", "diff", "HEAD", "--name-only"],
        );
        let history = String::from_utf8_lossy(&modified.stdout)
            .lines()
            .next()
            .map(|f| {
                let log = self.git(
                    &self.v.root,
                    &[
                        "--no-optional-locks",
                        "log",
                        "-p",
                        "--format=%h %an %s",
                        "--",
                        f,
                    ],
                );
                String::from_utf8_lossy(&log.stdout)
                    .chars()
                    .take(6000)
                    .collect::<String>()
            })
            .unwrap_or_default();
        format!(
            "{}\n--- staged in the user's index (diff --cached --stat) ---\n{}\n--- the first modified note's history ---\n{history}",
            String::from_utf8_lossy(&d.stdout)
                .chars()
                .take(4000)
                .collect::<String>(),
            String::from_utf8_lossy(&staged.stdout)
        )
    }

    /// Has the server clone caught up with origin: is its `HEAD` origin's
    /// `main`?
    fn server_caught_up(&self) -> bool {
        let head = self.git(&self.v.root, &["rev-parse", "HEAD"]);
        String::from_utf8_lossy(&head.stdout).trim() == self.origin_head()
    }

    /// Waits until the server clone is [in step](Self::server_in_step):
    /// everything vaultrunner wrote is committed as it is on disk (a
    /// committed version that differs from the note on disk leaves the
    /// note modified, and the next pull that touches it stops on it).
    #[track_caller]
    fn wait_in_step(&self, serve: &Serve) {
        self.wait(
            serve,
            SOON,
            "the server in step: HEAD is origin's main and the work tree clean",
            || self.server_in_step(),
        );
    }

    /// Is the server clone in step with origin: its `HEAD` is origin's
    /// `main` and nothing in its working tree is uncommitted?
    fn server_in_step(&self) -> bool {
        self.server_caught_up() && self.server_status().trim().is_empty()
    }

    /// Starts `serve VAULT --git-sync --git-pull-secs 1 --listen
    /// 127.0.0.1:0 [extra…]`, isolated, and waits until it serves; the
    /// guard and its HTTP address.
    #[track_caller]
    fn serve(&self, extra: &[&str]) -> (Serve, String) {
        let mut serve = self.spawn_serve(extra);
        serve.started();
        let addr = serve.http_addr(&self.v);
        (serve, addr)
    }

    /// [`serve`](Self::serve) without waiting.
    fn spawn_serve(&self, extra: &[&str]) -> Serve {
        let mut args = vec![
            "--git-sync",
            "--git-pull-secs",
            "1",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        self.isolated(self.v.serve_run(&args))
            .spawn(self.v.next_log("serve"))
    }

    /// `vaultrunner process VAULT --git-sync`, isolated (exit not asserted).
    fn process(&self) -> crate::common::Out {
        self.isolated(
            self.v
                .vr(&["process", self.v.root_str(), "--git-sync"])
                .env("VAULTRUNNER_LOG", "info"),
        )
        .run()
    }

    /// `vaultrunner status VAULT`, isolated.
    fn status(&self) -> crate::common::Out {
        self.isolated(self.v.vr(&["status", self.v.root_str()]))
            .run()
    }

    /// Polls `cond` every 250 ms until it holds; panics after `within`
    /// with `what`, serve's log, origin's history and the server's status.
    #[track_caller]
    fn wait(&self, serve: &Serve, within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        loop {
            if cond() {
                return;
            }
            if started.elapsed() > within {
                if cond() {
                    return;
                }
                panic!(
                    "timed out after {within:?} waiting for: {what}\n--- origin log ---\n{}\n--- server status ---\n{}\n--- serve log ---\n{}\n--- server diff ---\n{}",
                    // Not `origin_log`: origin may be away.
                    String::from_utf8_lossy(
                        &self
                            .git(
                                &self.home,
                                &[
                                    "--git-dir",
                                    self.origin.to_str().unwrap(),
                                    "log",
                                    "--format=%h %an <%ae> %s",
                                    "main",
                                ],
                            )
                            .stdout
                    ),
                    self.git(
                        &self.v.root,
                        &["--no-optional-locks", "status", "--porcelain", "-b"],
                    )
                    .stdout
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
                    serve.log_text(),
                    self.server_diff()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A front-matter key of a note's text as a string (`None` when absent,
/// not a scalar, or the front-matter does not parse).
fn key(text: &str, k: &str) -> Option<String> {
    front_matter(text).ok().and_then(|m| scalar(&m, k))
}

/// A note's body.
fn body(text: &str) -> String {
    split_note(text).1.to_string()
}

/// One HTTP request to serve at `addr`: the status and the JSON answer
/// (`Null` when it is not JSON).
fn http(method: &str, addr: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut rb = c.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{addr}{path}"),
        );
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    })
}

/// `GET /health`.
fn health(addr: &str) -> Value {
    let (st, v) = http("GET", addr, "/health", None);
    assert_eq!(st, 200, "/health: {v}");
    v
}

/// `/health`'s `git.state` (`None` when there is no `git` object).
fn git_state(addr: &str) -> Option<String> {
    health(addr)["git"]["state"].as_str().map(str::to_string)
}

/// `POST /hooks/git` (open: no token, no secret set), asserting the
/// contract's answer `202 {"ok":true}`.
#[track_caller]
fn hook(addr: &str) {
    let (st, v) = http("POST", addr, "/hooks/git", Some(serde_json::json!({})));
    assert_eq!(st, 202, "POST /hooks/git: {v}");
    assert_eq!(v["ok"], true, "POST /hooks/git: {v}");
}

/// A tiny seeded PRNG (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A command agent's definition text, for the phone to add an agent
/// later (`script` runs with `sh -c`).
fn command_definition(name: &str, script: &str) -> String {
    format!(
        "---\ntags:\n  - agent/definition\nname: {name}\nbackend: command\ncommand: [sh, -c, {}]\ntimeout: 60s\n---\n",
        serde_json::to_string(script).unwrap()
    )
}

// ------------------------------------------------------------------ 1. round trip

#[test]
fn round_trip_phone_to_server_and_back() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    let before = fx.origin_head();

    fx.phone_message("Inbox/hello.md", "echo", "hello from the phone");
    let phone_c = fx.phone_commit_push("phone: hello").unwrap();
    hook(&addr);

    fx.wait(&serve, SOON, "Inbox/hello answered on origin", || {
        fx.origin_answered("Inbox/hello.md")
    });
    let reply = fx.origin_file("Inbox/hello.reply.md").unwrap();
    let (m, b) = parse_note(&reply).unwrap_or_else(|e| panic!("{e}:\n{reply}"));
    assert_eq!(scalar(&m, "direction").as_deref(), Some("outbound"));
    assert_eq!(b.trim(), "echo: Message:\n\nhello from the phone");
    let note = fx.origin_file("Inbox/hello.md").unwrap();
    assert_eq!(
        key(&note, "reply").as_deref(),
        Some("[[Inbox/hello.reply]]"),
        "{note}"
    );
    assert!(body(&note).contains("hello from the phone"), "{note}");

    // Origin: the setup and phone commits, then vaultrunner's on top.
    let log = fx.origin_log();
    assert!(fx.origin_has_commit(&before) && fx.origin_has_commit(&phone_c));
    let ours: Vec<&Commit> = log.iter().filter(|c| c.by_vaultrunner()).collect();
    assert!(!ours.is_empty(), "no commit by vaultrunner: {log:#?}");
    for c in &ours {
        for (who, email) in [
            (&c.author, &c.author_email),
            (&c.committer, &c.committer_email),
        ] {
            assert_eq!(who, "vaultrunner", "{c:?}");
            assert!(
                email.starts_with("vaultrunner@") && email.ends_with(".invalid"),
                "{c:?}"
            );
        }
    }
    // The commit that brought the reply names the message answered.
    let c = fx
        .origin_git(&[
            "log",
            "-1",
            "--format=%an%x1f%s",
            "main",
            "--",
            "Inbox/hello.reply.md",
        ])
        .trim()
        .to_string();
    let (author, subject) = c.split_once('\x1f').unwrap();
    assert_eq!(author, "vaultrunner");
    assert!(
        subject.starts_with("vaultrunner: answered ") && subject.contains("Inbox/hello"),
        "{subject}"
    );
    // Never signed.
    let raw = fx.origin_git(&["cat-file", "-p", &ours[0].hash]);
    assert!(!raw.contains("gpgsig"), "{raw}");

    // The server's clone is in step: everything vaultrunner wrote was
    // committed, nothing else is left over.
    fx.wait_in_step(&serve);
    let h = health(&addr);
    assert_eq!(h["git"]["state"], "ok", "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    assert!(h["git"]["last_pull"].is_string(), "{h}");
    assert!(h["git"]["last_push"].is_string(), "{h}");
    fx.wait(&serve, SOON, "/health: nothing unpushed", || {
        health(&addr)["git"]["unpushed"] == 0
    });
    assert!(
        serve.log_text().contains("git: pushed "),
        "{}",
        serve.log_text()
    );

    // And back on the phone.
    fx.phone_pull();
    let on_phone = fx.phone_read("Inbox/hello.reply.md").unwrap();
    assert_eq!(on_phone, reply);
    assert_eq!(
        key(&fx.phone_read("Inbox/hello.md").unwrap(), "status").as_deref(),
        Some("handled")
    );
    let out = fx.status().success();
    assert!(out.stdout.contains("git sync: ok"), "{out}");
}

// ------------------------------------------------------------------ 2. a batch

#[test]
fn a_batch_of_ten_messages_gets_ten_replies_in_few_commits() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    let rels: Vec<String> = (0..10).map(|i| format!("Inbox/batch-{i}.md")).collect();
    for (i, rel) in rels.iter().enumerate() {
        fx.phone_message(rel, "echo", &format!("message {i}"));
    }
    fx.phone_commit_push("phone: ten messages");
    hook(&addr);
    fx.wait(&serve, SOON, "all ten answered on origin", || {
        rels.iter().all(|r| fx.origin_answered(r))
    });
    fx.assert_one_reply_each(&rels);
    for (i, rel) in rels.iter().enumerate() {
        let reply = fx.origin_file(&reply_of(rel)).unwrap();
        assert!(
            body(&reply).contains(&format!("message {i}")),
            "{rel}: {reply}"
        );
    }
    let ours = fx
        .origin_log()
        .into_iter()
        .filter(Commit::by_vaultrunner)
        .count();
    assert!(
        (1..10).contains(&ours),
        "{ours} commits by vaultrunner for 10 messages: {:#?}",
        fx.origin_log()
    );
    fx.assert_no_conflict_markers();
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 3. edit during a turn

#[test]
fn the_phone_edits_a_note_while_its_turn_runs_and_both_edits_survive() {
    let fx = Fx::new(|v| {
        let flag = v.scratch().join("started");
        v.command_agent(
            "slow",
            "timeout: 60s\n",
            &format!(
                "cat > /dev/null\ntouch {}\nsleep 3\necho slow reply",
                flag.display()
            ),
        );
    });
    let flag = fx.v.scratch().join("started");
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/edit.md", "slow", "the original body");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "the slow turn started", || flag.exists());

    // While the turn sleeps: the phone edits the body (a merge on the phone
    // if vaultrunner pushed meanwhile).
    let text = fx.phone_read("Inbox/edit.md").unwrap();
    fx.phone_write(
        "Inbox/edit.md",
        &text.replace("the original body", "the phone's edited body"),
    );
    fx.phone_commit_push("phone: edit the body");
    hook(&addr);

    fx.wait(&serve, SOON, "Inbox/edit answered on origin", || {
        fx.origin_answered("Inbox/edit.md")
    });
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    let note = fx.origin_file("Inbox/edit.md").unwrap();
    assert!(body(&note).contains("the phone's edited body"), "{note}");
    assert!(!note.contains("the original body"), "{note}");
    assert_eq!(key(&note, "status").as_deref(), Some("handled"), "{note}");
    assert_eq!(
        key(&note, "reply").as_deref(),
        Some("[[Inbox/edit.reply]]"),
        "{note}"
    );
    assert!(key(&note, "handled_at").is_some(), "{note}");
    // A body edit is not a re-queue: it ran once.
    assert_eq!(key(&note, "attempts").as_deref(), Some("1"), "{note}");
    assert_eq!(
        body(&fx.origin_file("Inbox/edit.reply.md").unwrap()).trim(),
        "slow reply"
    );
    // The server's working tree has the phone's body too.
    assert!(
        fx.v.read("Inbox/edit.md")
            .contains("the phone's edited body")
    );
    fx.phone_pull();
    fx.assert_no_conflict_markers();
    fx.assert_one_reply_each(&["Inbox/edit.md".to_string()]);
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 4. re-queue

#[test]
fn the_phone_requeues_a_handled_message_and_it_runs_again_with_one_reply() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/again.md", "echo", "first run");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "the first run on origin", || {
        fx.origin_answered("Inbox/again.md")
    });
    let first = fx.origin_file("Inbox/again.md").unwrap();
    let first_at = key(&first, "handled_at").unwrap();

    fx.phone_pull();
    let text = fx.phone_read("Inbox/again.md").unwrap();
    assert!(text.contains("status: handled\n"), "{text}");
    fx.phone_write(
        "Inbox/again.md",
        &text
            .replace("status: handled\n", "status: pending\n")
            .replace("first run", "second run"),
    );
    fx.phone_commit_push("phone: run it again");
    hook(&addr);

    fx.wait(&serve, SOON, "the second run on origin", || {
        fx.origin_file("Inbox/again.reply.md")
            .is_some_and(|r| r.contains("second run"))
            && fx.origin_file("Inbox/again.md").is_some_and(|n| {
                key(&n, "status").as_deref() == Some("handled")
                    && key(&n, "handled_at").is_some_and(|t| t != first_at)
            })
    });
    let note = fx.origin_file("Inbox/again.md").unwrap();
    // SPEC §2: a re-run counts its attempts afresh (the start of the re-run
    // is attempt 1), with the same reply path.
    assert_eq!(key(&note, "attempts").as_deref(), Some("1"), "{note}");
    assert_eq!(
        key(&note, "reply").as_deref(),
        Some("[[Inbox/again.reply]]"),
        "{note}"
    );
    assert!(body(&note).contains("second run"), "{note}");
    fx.assert_one_reply_each(&["Inbox/again.md".to_string()]);
    fx.assert_no_conflict_markers();
    fx.wait_in_step(&serve);
}

#[test]
fn a_reply_the_phone_edits_while_it_is_rewritten_is_kept_as_a_conflict_copy() {
    let fx = slow_fixture();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/r.md", "slow", "a message");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "the first run on origin", || {
        fx.origin_answered("Inbox/r.md")
    });
    fx.phone_pull();
    std::fs::remove_file(fx.v.scratch().join("started-r")).unwrap();
    let text = fx.phone_read("Inbox/r.md").unwrap();
    fx.phone_write(
        "Inbox/r.md",
        &text.replace("status: handled\n", "status: pending\n"),
    );
    fx.phone_commit_push("phone: run it again");
    hook(&addr);
    fx.wait(&serve, SOON, "the re-run started", || {
        fx.v.scratch().join("started-r").exists()
    });
    // While the re-run sleeps, the phone edits the old reply.
    let reply = fx.phone_read("Inbox/r.reply.md").unwrap();
    fx.phone_write(
        "Inbox/r.reply.md",
        &format!("{reply}\nthe phone's note on the reply\n"),
    );
    fx.phone_commit_push("phone: annotate the reply");
    hook(&addr);

    fx.wait(&serve, SOON, "the re-run ended and is on origin", || {
        fx.origin_file("Inbox/r.md").is_some_and(|n| {
            key(&n, "status").as_deref() == Some("handled")
                && key(&n, "handled_at") != key(&text, "handled_at")
        })
    });
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    // No edit lost: the phone's text is on origin, at the reply's path or
    // in a conflict copy beside it; the reply at the path is whole.
    let tree = fx.origin_tree();
    let replies = fx.origin_replies_of(&tree, "Inbox/r.md");
    let refs: Vec<&str> = replies.iter().map(String::as_str).collect();
    let kept = fx
        .origin_files(&refs)
        .into_iter()
        .flatten()
        .any(|t| t.contains("the phone's note on the reply"));
    assert!(
        kept,
        "the phone's edit of the reply is lost: {replies:?}\n--- origin log ---\n{}\n--- origin's Inbox/r.md ---\n{}\n--- origin's reply ---\n{}\n--- serve log ---\n{}",
        fx.origin_git(&["log", "--stat", "--format=%h %an %s", "main"]),
        fx.origin_file("Inbox/r.md").unwrap_or_default(),
        fx.origin_file("Inbox/r.reply.md").unwrap_or_default(),
        serve.log_text()
    );
    for r in &replies {
        assert!(
            r == "Inbox/r.reply.md"
                || (r.starts_with("Inbox/r.reply (conflict ") && r.ends_with(").md")),
            "{replies:?}"
        );
    }
    let now = fx.origin_file("Inbox/r.reply.md").unwrap();
    parse_note(&now).unwrap_or_else(|e| panic!("{e}:\n{now}"));
    fx.phone_pull();
    fx.assert_no_conflict_markers_in_notes();
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 5. delete, rename

/// A vault with `slow` (signals its start in `<scratch>/started-<n>`, by
/// the message's file name, then sleeps 3 s) and `echo`.
fn slow_fixture() -> Fx {
    Fx::new(|v| {
        v.agent("echo", "backend: echo\n", "");
        let dir = v.scratch();
        v.command_agent(
            "slow",
            "timeout: 60s\n",
            &format!(
                "cat > /dev/null\ntouch {}/started-$(basename \"$VAULTRUNNER_MESSAGE\" .md)\nsleep 3\necho slow reply",
                dir.display()
            ),
        );
    })
}

#[test]
fn a_message_deleted_on_the_phone_during_its_turn_stays_deleted() {
    let fx = slow_fixture();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/gone.md", "slow", "delete me");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    let flag = fx.v.scratch().join("started-gone");
    fx.wait(&serve, SOON, "the slow turn started", || flag.exists());

    fx.git_ok(&fx.phone, &["rm", "-q", "Inbox/gone.md"]);
    fx.phone_commit_push("phone: delete the message");
    hook(&addr);

    // A message after it to the same agent (one turn at a time, FIFO):
    // once that is answered on origin, the deleted one's turn has ended
    // and what it wrote has been committed and pushed.
    fx.phone_message("Inbox/after.md", "slow", "after the delete");
    fx.phone_commit_push("phone: another message");
    hook(&addr);
    fx.wait(&serve, SOON, "Inbox/after answered on origin", || {
        fx.origin_answered("Inbox/after.md")
    });
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    assert_eq!(
        fx.origin_file("Inbox/gone.md"),
        None,
        "the deleted message is back on origin"
    );
    assert!(
        !fx.v.exists("Inbox/gone.md"),
        "the deleted message is back in the server's tree:\n{}",
        fx.v.read("Inbox/gone.md")
    );
    fx.phone_pull();
    assert_eq!(fx.phone_read("Inbox/gone.md"), None);
    fx.assert_no_conflict_markers();
    fx.wait_in_step(&serve);
}

/// Found by the test above: a pull that takes the last note out of a
/// folder and puts another in (git removes the emptied folder and makes
/// it again) must still get the new note answered.
#[test]
fn a_pull_that_empties_a_folder_and_refills_it_is_picked_up() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Solo/a.md", "echo", "the only note here");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "Solo/a answered on origin", || {
        fx.origin_answered("Solo/a.md")
    });
    fx.phone_pull();
    // One commit: the folder's notes go, a new one comes.
    fx.git_ok(&fx.phone, &["rm", "-q", "Solo/a.md", "Solo/a.reply.md"]);
    fx.phone_message("Solo/b.md", "echo", "the new note");
    fx.phone_commit_push("phone: replace the folder's notes");
    hook(&addr);
    fx.wait(&serve, SOON, "Solo/b answered on origin", || {
        fx.origin_answered("Solo/b.md")
    });
    assert_eq!(fx.origin_file("Solo/a.md"), None);
    fx.wait_in_step(&serve);
}

#[test]
fn a_note_renamed_on_the_phone_keeps_or_gets_its_stamp_at_the_new_path() {
    let fx = slow_fixture();
    let (serve, addr) = fx.serve(&[]);

    // A handled note renamed: keeps its stamp, is not run again, the old
    // path is not brought back.
    fx.phone_message("Inbox/done.md", "echo", "handled, then renamed");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "Inbox/done answered on origin", || {
        fx.origin_answered("Inbox/done.md")
    });
    let done = fx.origin_file("Inbox/done.md").unwrap();
    fx.phone_pull();
    // `git mv` needs the folder.
    std::fs::create_dir_all(fx.phone.join("Archive")).unwrap();
    fx.git_ok(&fx.phone, &["mv", "Inbox/done.md", "Archive/done.md"]);
    fx.phone_commit_push("phone: archive a note");

    // A note renamed while its turn runs: the stamp lands at the new path.
    fx.phone_message("Inbox/mv.md", "slow", "renamed during its turn");
    fx.phone_commit_push("phone: a slow message");
    hook(&addr);
    let flag = fx.v.scratch().join("started-mv");
    fx.wait(&serve, SOON, "the slow turn started", || flag.exists());
    fx.git_ok(&fx.phone, &["mv", "Inbox/mv.md", "Archive/mv.md"]);
    fx.phone_commit_push("phone: move a message");
    hook(&addr);

    fx.wait(&serve, SOON, "Archive/mv stamped handled on origin", || {
        fx.origin_file("Archive/mv.md")
            .is_some_and(|n| key(&n, "status").as_deref() == Some("handled"))
    });
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    let tree = fx.origin_tree();
    assert!(
        !tree.contains(&"Inbox/mv.md".to_string()),
        "the old path is back: {tree:?}"
    );
    assert!(
        !tree.contains(&"Inbox/done.md".to_string()),
        "the old path is back: {tree:?}"
    );
    let mv = fx.origin_file("Archive/mv.md").unwrap();
    assert!(body(&mv).contains("renamed during its turn"), "{mv}");
    assert!(key(&mv, "reply").is_some(), "{mv}");
    assert_eq!(key(&mv, "attempts").as_deref(), Some("1"), "{mv}");
    // One reply for the moved message, wherever it is.
    let replies: Vec<&String> = tree.iter().filter(|f| f.contains("mv.reply")).collect();
    assert_eq!(replies.len(), 1, "{tree:?}");

    let archived = fx.origin_file("Archive/done.md").unwrap();
    assert_eq!(
        key(&archived, "handled_at"),
        key(&done, "handled_at"),
        "the archived note was run again:\n{archived}"
    );
    assert!(
        !tree.iter().any(|f| f.starts_with("Archive/done.reply")),
        "the archived note was answered again: {tree:?}"
    );
    fx.phone_pull();
    fx.assert_no_conflict_markers();
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 6. rejected pushes

#[test]
fn pushes_rejected_while_the_phone_keeps_pushing_lose_no_phone_commit() {
    let fx = Fx::new(|v| {
        v.command_agent("paced", "timeout: 60s\n", "sleep 0.4\ncat");
    });
    let (mut serve, addr) = fx.serve(&[]);
    let rels: Vec<String> = (0..6).map(|i| format!("Inbox/p-{i}.md")).collect();
    for (i, rel) in rels.iter().enumerate() {
        fx.phone_message(rel, "paced", &format!("paced {i}"));
    }
    fx.phone_commit_push("phone: six messages");
    hook(&addr);

    // The phone pushes a note every ~300 ms while the turns run (pacing,
    // not an assertion), so vaultrunner's pushes meet a moved upstream.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(40) {
        n += 1;
        fx.phone_write(&format!("Phone/note-{n}.md"), &format!("phone note {n}\n"));
        fx.phone_commit_push(&format!("phone: note {n}"));
        std::thread::sleep(Duration::from_millis(300));
        if n >= 20 && rels.iter().all(|r| fx.origin_answered(r)) {
            break;
        }
    }
    hook(&addr);
    fx.wait(
        &serve,
        Duration::from_secs(60),
        "every message answered on origin",
        || rels.iter().all(|r| fx.origin_answered(r)),
    );
    fx.wait(
        &serve,
        Duration::from_secs(60),
        "the server caught up with origin",
        || fx.server_caught_up(),
    );
    for c in fx.phone_commits.borrow().iter() {
        assert!(fx.origin_has_commit(c), "phone commit {c} lost from origin");
    }
    let phone_notes: Vec<String> = (1..=n).map(|i| format!("Phone/note-{i}.md")).collect();
    let refs: Vec<&str> = phone_notes.iter().map(String::as_str).collect();
    for (i, t) in fx.origin_files(&refs).into_iter().enumerate() {
        assert_eq!(
            t.as_deref(),
            Some(format!("phone note {}\n", i + 1).as_str())
        );
    }
    fx.assert_one_reply_each(&rels);
    fx.phone_pull();
    fx.assert_no_conflict_markers();
    assert!(serve.still_running(), "{}", serve.log_text());
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 7. uncommitted edits

#[test]
fn a_users_uncommitted_edit_on_the_server_is_never_committed() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_write("Notes/diary.md", "committed diary text\n");
    // `later` has no definition yet: the message waits, untouched.
    fx.phone_message("Inbox/local.md", "later", "the committed body");
    fx.phone_commit_push("phone: a diary and a message");
    hook(&addr);
    fx.wait(&serve, SOON, "the server pulled the phone's notes", || {
        fx.v.exists("Notes/diary.md") && fx.v.exists("Inbox/local.md")
    });

    // A person on the server edits two notes and commits neither.
    fx.v.write("Notes/diary.md", "SERVER-UNCOMMITTED diary\n");
    let local = fx.v.read("Inbox/local.md");
    fx.v.write(
        "Inbox/local.md",
        &local.replace("the committed body", "SERVER-UNCOMMITTED body"),
    );

    // Now the agent arrives from the phone (its reply never quotes the
    // message), and another message keeps vaultrunner committing.
    fx.phone_write(
        "Agents/later.md",
        &command_definition("later", "cat > /dev/null; echo fixed reply"),
    );
    fx.phone_message("Inbox/other.md", "echo", "another message");
    fx.phone_commit_push("phone: the agent");
    hook(&addr);
    fx.wait(&serve, SOON, "both answered on origin", || {
        fx.origin_answered("Inbox/local.md") && fx.origin_answered("Inbox/other.md")
    });
    fx.wait(&serve, SOON, "nothing unpushed", || {
        health(&addr)["git"]["unpushed"] == 0
    });

    let leaked = fx.origin_history_with("SERVER-UNCOMMITTED");
    assert!(
        leaked.is_empty(),
        "a user's uncommitted edit reached origin: {leaked:?}"
    );
    let on_origin = fx.origin_file("Inbox/local.md").unwrap();
    assert!(
        body(&on_origin).contains("the committed body"),
        "{on_origin}"
    );
    assert_eq!(
        fx.origin_file("Notes/diary.md").as_deref(),
        Some("committed diary text\n")
    );
    // Still in the server's working tree, still uncommitted.
    assert_eq!(fx.v.read("Notes/diary.md"), "SERVER-UNCOMMITTED diary\n");
    let here = fx.v.read("Inbox/local.md");
    assert!(here.contains("SERVER-UNCOMMITTED body"), "{here}");
    assert_eq!(key(&here, "status").as_deref(), Some("handled"), "{here}");
    let st = fx.server_status();
    assert!(
        st.contains(" M Notes/diary.md") && st.contains(" M Inbox/local.md"),
        "{st}"
    );
    assert!(
        !fx.server_git(&["log", "-p", "--all"])
            .contains("SERVER-UNCOMMITTED"),
        "a user's uncommitted edit was committed on the server"
    );
}

// ------------------------------------------------------------------ 8. a stale lock

#[test]
fn a_stale_index_lock_pauses_sync_and_it_resumes_when_the_lock_goes() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/first.md", "echo", "before the lock");
    fx.phone_commit_push("phone: a message");
    hook(&addr);
    fx.wait(&serve, SOON, "Inbox/first answered on origin", || {
        fx.origin_answered("Inbox/first.md")
    });
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });

    let lock = fx.v.root.join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let at_lock = fx.origin_head();
    fx.wait(
        &serve,
        SOON,
        "/health: git paused naming index.lock",
        || {
            let h = health(&addr);
            h["git"]["state"] == "paused"
                && h["git"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("index.lock"))
        },
    );
    assert_eq!(health(&addr)["status"], "degraded");

    // Turns go on locally.
    let (st, v) = http(
        "POST",
        &addr,
        "/api/agents/echo/messages",
        Some(serde_json::json!({"content": "while paused"})),
    );
    assert_eq!(st, 202, "{v}");
    let rel = format!("{}.md", v["path"].as_str().unwrap());
    fx.wait(&serve, SOON, "the local message answered", || {
        fx.v.exists(&reply_of(&rel))
    });
    let out = fx.status();
    assert!(
        out.stdout.contains("git sync: paused: ") && out.stdout.contains("index.lock"),
        "{out}"
    );
    // Observation window: a few pull intervals with nothing pushed.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fx.origin_head(), at_lock, "pushed while paused");
    assert!(
        lock.exists(),
        "vaultrunner deleted a lock it did not create"
    );
    let log = serve.log_text();
    assert!(
        log.contains("git sync paused: ") && log.contains("index.lock"),
        "{log}"
    );

    std::fs::remove_file(&lock).unwrap();
    fx.wait(
        &serve,
        SOON,
        "the local reply pushed after the lock went",
        || fx.origin_answered(&rel),
    );
    fx.wait(&serve, SOON, "/health: git ok", || {
        git_state(&addr).as_deref() == Some("ok")
    });
    assert!(serve.log_text().contains("git sync resumed"));
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 9. origin away

#[test]
fn an_unreachable_origin_backs_off_and_the_replies_are_pushed_once_it_is_back() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    fx.wait(&serve, SOON, "/health: git ok", || {
        git_state(&addr).as_deref() == Some("ok")
    });
    let away = fx.home.join("origin-away.git");
    std::fs::rename(&fx.origin, &away).unwrap();

    let (st, v) = http(
        "POST",
        &addr,
        "/api/agents/echo/messages",
        Some(serde_json::json!({"content": "while origin is away"})),
    );
    assert_eq!(st, 202, "{v}");
    let rel = format!("{}.md", v["path"].as_str().unwrap());
    fx.wait(&serve, SOON, "answered locally", || {
        fx.v.exists(&reply_of(&rel))
    });
    fx.wait(&serve, SOON, "/health: git backoff", || {
        git_state(&addr).as_deref() == Some("backoff")
    });
    assert_eq!(health(&addr)["status"], "degraded");
    // The reply is committed locally meanwhile, waiting to be pushed.
    fx.wait(
        &serve,
        SOON,
        "/health: unpushed ≥ 1 while origin is away",
        || {
            health(&addr)["git"]["unpushed"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        },
    );
    let out = fx.status();
    assert!(out.stdout.contains("git sync: backing off: "), "{out}");

    std::fs::rename(&away, &fx.origin).unwrap();
    hook(&addr);
    fx.wait(
        &serve,
        Duration::from_secs(90),
        "the reply pushed once origin is back",
        || fx.origin_answered(&rel),
    );
    fx.wait(&serve, SOON, "/health: git ok", || {
        git_state(&addr).as_deref() == Some("ok")
    });
    fx.assert_one_reply_each(&[rel]);
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 10. 500 notes

#[test]
fn a_pull_of_500_messages_gets_500_replies() {
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    let rels: Vec<String> = (0..500).map(|i| format!("Bulk/m-{i:03}.md")).collect();
    for (i, rel) in rels.iter().enumerate() {
        fx.phone_message(rel, "echo", &format!("bulk {i}"));
    }
    fx.phone_commit_push("phone: 500 messages");
    hook(&addr);
    let replies: Vec<String> = rels.iter().map(|r| reply_of(r)).collect();
    let refs: Vec<&str> = replies.iter().map(String::as_str).collect();
    fx.wait(
        &serve,
        Duration::from_secs(180),
        "500 replies on origin",
        || fx.origin_files(&refs).iter().all(Option::is_some),
    );
    fx.wait(
        &serve,
        Duration::from_secs(60),
        "the server caught up with origin",
        || fx.server_caught_up(),
    );
    fx.assert_one_reply_each(&rels);
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 11. a secret

#[test]
fn a_reply_holding_a_secret_stays_local_and_is_reported() {
    const TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";
    let fx = Fx::new(|v| {
        v.agent("echo", "backend: echo\n", "");
        v.command_agent(
            "leaky",
            "timeout: 60s\n",
            // Built at run time: the definition (committed) never holds it.
            &format!(
                "cat > /dev/null\nt=ghp_\necho \"here is the token: ${{t}}{}\"",
                &TOKEN[4..]
            ),
        );
    });
    let (serve, addr) = fx.serve(&[]);
    fx.phone_message("Inbox/leak.md", "leaky", "what is the token?");
    fx.phone_message("Inbox/fine.md", "echo", "nothing secret");
    fx.phone_commit_push("phone: two messages");
    hook(&addr);

    fx.wait(&serve, SOON, "the leaky reply written locally", || {
        fx.v.exists("Inbox/leak.reply.md")
    });
    assert!(fx.v.read("Inbox/leak.reply.md").contains(TOKEN));
    fx.wait(&serve, SOON, "Inbox/fine answered on origin", || {
        fx.origin_answered("Inbox/fine.md")
    });
    fx.wait(&serve, SOON, "/health: git.held names the note", || {
        health(&addr)["git"]["held"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x.as_str()
                    .is_some_and(|s| s.starts_with("Inbox/leak.reply"))
            })
        })
    });
    let h = health(&addr);
    let held = h["git"]["held"].to_string();
    assert!(held.contains("ghp_"), "the kind of secret is named: {h}");
    assert!(
        !h.to_string().contains(TOKEN),
        "/health shows the secret: {h}"
    );

    // Another round of sync: still not pushed.
    fx.phone_message("Inbox/later.md", "echo", "later");
    fx.phone_commit_push("phone: one more");
    hook(&addr);
    fx.wait(&serve, SOON, "Inbox/later answered on origin", || {
        fx.origin_answered("Inbox/later.md")
    });
    let leaked = fx.origin_history_with(TOKEN);
    assert!(leaked.is_empty(), "the secret reached origin: {leaked:?}");
    assert!(fx.v.read("Inbox/leak.reply.md").contains(TOKEN));
    let log = serve.log_text();
    assert!(
        log.contains("Inbox/leak.reply"),
        "the log names the note:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the log shows the secret:\n{log}");
}

// ------------------------------------------------------------------ 12. SIGKILL

#[test]
fn sigkill_mid_sync_leaves_a_consistent_repository_and_one_reply_each() {
    let fx = Fx::echo();
    let mut rels = Vec::new();
    // Four rounds: new messages, then SIGKILL 0, 0.4, 0.9, 1.5 s after the
    // first of them is answered locally — before, during and after the
    // batch commit (~1 s after the writes) and its push (timing picks, not
    // assertions).
    for (round, delay_ms) in [0u64, 400, 900, 1500].into_iter().enumerate() {
        let mut serve = fx.spawn_serve(&[]);
        let new: Vec<String> = (0..10).map(|i| format!("Inbox/k{round}-{i}.md")).collect();
        for rel in &new {
            fx.phone_message(rel, "echo", rel);
        }
        fx.phone_commit_push(&format!("phone: round {round}"));
        rels.extend(new.iter().cloned());
        let first = reply_of(&new[0]);
        let ok = serve.wait_while_running(Duration::from_secs(45), || {
            new.iter().any(|r| fx.v.exists(&reply_of(r)))
        });
        assert!(
            ok,
            "round {round}: {first}… never answered:\n{}",
            serve.log_text()
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        serve.kill();
    }
    let (serve, addr) = fx.serve(&[]);
    hook(&addr);
    fx.wait(
        &serve,
        Duration::from_secs(90),
        "every message answered on origin",
        || rels.iter().all(|r| fx.origin_answered(r)),
    );
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    fx.assert_one_reply_each(&rels);
    fx.wait_in_step(&serve);
    drop(serve);

    for (who, dir) in [("server", &fx.v.root), ("origin", &fx.origin)] {
        let out = fx.git(dir, &["fsck", "--no-progress", "--no-dangling"]);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "git fsck of the {who}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let locks: Vec<String> = crate::common::walk(&fx.v.root.join(".git"))
        .into_iter()
        .map(|(r, _)| r)
        .filter(|r| r.ends_with(".lock"))
        .collect();
    assert!(locks.is_empty(), "locks left in .git: {locks:?}");
    fx.assert_no_conflict_markers();
}

// ------------------------------------------------------------------ 13. randomized

/// What the phone knows of one message it wrote.
struct Msg {
    rel: String,
    /// The line of the body the phone edits, as the phone last wrote it.
    line: String,
    edits: u32,
}

#[test]
fn randomized_interleavings_lose_no_edit_and_answer_each_message_once() {
    const SEEDS: u64 = 8;
    const STEPS: usize = 10;
    let fx = Fx::echo();
    let (serve, addr) = fx.serve(&[]);
    let started = Instant::now();
    let mut msgs: Vec<(u64, Msg)> = Vec::new();
    for seed in 1..=SEEDS {
        let mut rng = Rng::new(seed);
        let mut mine: Vec<usize> = Vec::new();
        for step in 0..STEPS {
            // A new message (the first step of a seed always is one).
            let action = if mine.is_empty() { 0 } else { rng.below(6) };
            match action {
                0 => {}
                1 | 2 => {
                    let i = mine[rng.below(mine.len() as u64) as usize];
                    let m = &mut msgs[i].1;
                    let Some(text) = fx.phone_read(&m.rel) else {
                        continue;
                    };
                    m.edits += 1;
                    let line = format!("{} edit {} (step {step})", m.rel, m.edits);
                    assert!(text.contains(&m.line), "seed {seed}: {}:\n{text}", m.rel);
                    fx.phone_write(&m.rel, &text.replace(&m.line, &line));
                    m.line = line;
                    continue;
                }
                3 => {
                    // Re-queue a message the phone sees handled.
                    let i = mine[rng.below(mine.len() as u64) as usize];
                    let m = &msgs[i].1;
                    if let Some(text) = fx.phone_read(&m.rel)
                        && text.contains("status: handled\n")
                    {
                        fx.phone_write(
                            &m.rel,
                            &text.replace("status: handled\n", "status: pending\n"),
                        );
                    }
                    continue;
                }
                4 => {
                    fx.phone_commit_push(&format!("phone: seed {seed} step {step}"));
                    if rng.below(2) == 0 {
                        hook(&addr);
                    }
                    std::thread::sleep(Duration::from_millis(rng.below(500)));
                    continue;
                }
                _ => {
                    fx.phone_commit(&format!("phone: seed {seed} step {step}"));
                    fx.phone_pull();
                    continue;
                }
            }
            let rel = format!("R{seed}/m{step}.md");
            let line = format!("{rel} as written");
            fx.phone_message(&rel, "echo", &line);
            msgs.push((
                seed,
                Msg {
                    rel,
                    line,
                    edits: 0,
                },
            ));
            mine.push(msgs.len() - 1);
            // Pacing of the simulated phone.
            std::thread::sleep(Duration::from_millis(rng.below(300)));
        }
        fx.phone_commit_push(&format!("phone: seed {seed} done"));
    }
    hook(&addr);
    let rels: Vec<String> = msgs.iter().map(|(_, m)| m.rel.clone()).collect();
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    fx.wait(
        &serve,
        Duration::from_secs(60),
        "every message handled with the phone's last body on origin",
        || {
            fx.origin_files(&refs).iter().zip(&msgs).all(|(t, (_, m))| {
                t.as_ref().is_some_and(|t| {
                    key(t, "status").as_deref() == Some("handled") && t.contains(&m.line)
                })
            }) && rels.iter().all(|r| fx.origin_answered(r))
        },
    );
    fx.wait(&serve, SOON, "the server caught up with origin", || {
        fx.server_caught_up()
    });
    for c in fx.phone_commits.borrow().iter() {
        assert!(fx.origin_has_commit(c), "phone commit {c} lost from origin");
    }
    let texts = fx.origin_files(&refs);
    let tree = fx.origin_tree();
    for ((seed, m), t) in msgs.iter().zip(texts) {
        let t = t.unwrap();
        assert!(
            t.contains(&m.line),
            "seed {seed}: {}: the phone's last edit lost:\n{t}",
            m.rel
        );
        assert_eq!(
            fx.origin_replies_of(&tree, &m.rel),
            vec![reply_of(&m.rel)],
            "seed {seed}: {}",
            m.rel
        );
    }
    fx.phone_pull();
    fx.assert_no_conflict_markers();
    eprintln!(
        "randomized: {SEEDS} seeds × {STEPS} steps, {} messages, {:?}",
        msgs.len(),
        started.elapsed()
    );
    fx.wait_in_step(&serve);
}

// ------------------------------------------------------------------ 14. process --git-sync

#[test]
fn process_git_sync_pulls_answers_commits_pushes_and_exits() {
    let fx = Fx::echo();
    fx.phone_message("Inbox/cron.md", "echo", "from cron");
    fx.phone_commit_push("phone: a message");
    let out = fx.process();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        fx.origin_answered("Inbox/cron.md"),
        "{out}\n{:#?}",
        fx.origin_log()
    );
    let head = fx.origin_log();
    assert!(head[0].by_vaultrunner(), "{head:#?}");
    assert!(head[0].subject.contains("Inbox/cron"), "{head:#?}");
    assert!(
        fx.server_in_step(),
        "{}\n{}\n{out}",
        fx.server_status(),
        fx.server_diff()
    );

    // Nothing to do: exits 0, commits nothing.
    let at = fx.origin_head();
    let out = fx.process();
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(fx.origin_head(), at);
}

#[test]
fn process_git_sync_with_origin_away_commits_locally_and_exits_1() {
    let fx = Fx::echo();
    fx.isolated(fx.v.vr(&["send", fx.v.root_str(), "echo", "sent while away"]))
        .run()
        .success();
    let away = fx.home.join("origin-away.git");
    std::fs::rename(&fx.origin, &away).unwrap();
    let out = fx.process();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("origin"), "names the remote: {out}");
    // The local work is done and committed.
    let replies = fx.v.replies();
    assert_eq!(replies.len(), 1, "{replies:?}");
    let committed = fx.git(
        &fx.v.root,
        &["cat-file", "-e", &format!("HEAD:{}", replies[0])],
    );
    assert!(
        committed.status.success(),
        "the reply is not committed locally: {out}"
    );

    std::fs::rename(&away, &fx.origin).unwrap();
    let out = fx.process();
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(fx.origin_file(&replies[0]).is_some(), "{out}");
}

// ------------------------------------------------------------------ 15. bad input

#[test]
fn a_pulled_note_with_conflict_markers_is_reported_and_the_rest_answered() {
    let fx = Fx::echo();
    let (mut serve, addr) = fx.serve(&[]);
    fx.phone_write(
        "Inbox/bad.md",
        &inbound(
            "echo",
            "",
            "<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> origin/main\n",
        ),
    );
    fx.phone_message("Inbox/good.md", "echo", "a good one");
    fx.phone_commit_push("phone: a bad note and a good one");
    hook(&addr);
    fx.wait(&serve, SOON, "Inbox/good answered on origin", || {
        fx.origin_answered("Inbox/good.md")
    });
    fx.wait(&serve, SOON, "the log names Inbox/bad", || {
        serve.log_text().contains("Inbox/bad")
    });
    assert!(serve.still_running(), "{}", serve.log_text());
    assert!(!fx.v.exists("Inbox/bad.reply.md"));
    assert_eq!(fx.origin_file("Inbox/bad.reply.md"), None);
    // The phone's note is as the phone wrote it, on origin and here.
    assert_eq!(
        fx.origin_file("Inbox/bad.md"),
        fx.phone_read("Inbox/bad.md")
    );
    assert_eq!(
        Some(fx.v.read("Inbox/bad.md")),
        fx.phone_read("Inbox/bad.md")
    );
}

#[test]
fn a_corrupt_server_repository_is_refused_naming_the_folder() {
    let fx = Fx::echo();
    std::fs::write(fx.v.root.join(".git/HEAD"), "garbage\n").unwrap();
    let mut serve = fx.spawn_serve(&[]);
    let st = serve.wait_exit(Duration::from_secs(30));
    let log = serve.log_text();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains(fx.v.root_str()), "names the folder:\n{log}");
    let out = fx.process();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.all().contains(fx.v.root_str()), "{out}");
}

#[test]
fn serve_git_sync_refuses_what_it_cannot_sync() {
    // Not a Git work tree.
    let plain = TestVault::new();
    plain.agent("echo", "backend: echo\n", "");
    let mut s = plain
        .serve_run(&["--git-sync", "--listen", "127.0.0.1:0"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", plain.parent.to_str().unwrap())
        // Even if the temp dir is inside someone's checkout.
        .env("GIT_CEILING_DIRECTORIES", plain.parent.to_str().unwrap())
        .spawn(plain.next_log("serve"));
    let st = s.wait_exit(Duration::from_secs(30));
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{}", s.log_text());
    assert!(s.log_text().contains(plain.root_str()), "{}", s.log_text());

    // A detached HEAD does not stop serve (SPEC §7): sync pauses, visibly.
    let fx = Fx::echo();
    fx.server_git(&["checkout", "-q", "--detach"]);
    let mut s = fx.spawn_serve(&[]);
    crate::common::wait_until(
        Duration::from_secs(30),
        "sync paused on the detached HEAD",
        || s.log_text().contains("git sync paused: HEAD is detached"),
    );
    assert!(s.still_running(), "{}", s.log_text());
    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        s.log_text()
    );
    fx.server_git(&["checkout", "-q", "main"]);

    // obsidian-git syncing the same clone.
    fx.v.write(
        ".obsidian/plugins/obsidian-git/data.json",
        r#"{"autoSaveInterval": 5, "autoPushInterval": 0, "autoPullInterval": 5}"#,
    );
    let mut s = fx.spawn_serve(&[]);
    let st = s.wait_exit(Duration::from_secs(30));
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{}", s.log_text());
    assert!(s.log_text().contains("obsidian-git"), "{}", s.log_text());

    // A served vault without --git-sync answers the hook with 409.
    std::fs::remove_dir_all(fx.v.root.join(".obsidian")).unwrap();
    let mut plain_serve = fx
        .isolated(fx.v.serve_run(&["--listen", "127.0.0.1:0"]))
        .spawn(fx.v.next_log("serve"));
    plain_serve.started();
    let addr = plain_serve.http_addr(&fx.v);
    let (st, v) = http("POST", &addr, "/hooks/git", Some(serde_json::json!({})));
    assert_eq!(st, 409, "{v}");
    assert!(health(&addr).get("git").is_none_or(Value::is_null));
}

// ------------------------------------------------------------------ the fixture itself

/// The fixture and the helpers the scenarios judge by, without `--git-sync`:
/// the phone's push reaches origin; a sync done by hand (pull, plain
/// `process`, commit, push) satisfies `origin_answered` and
/// `assert_one_reply_each` — so a scenario failing on them is about
/// vaultrunner's sync, not the fixture.
#[test]
fn the_fixture_and_its_judges_work_on_a_sync_done_by_hand() {
    let fx = Fx::echo();
    assert!(fx.server_in_step());
    fx.phone_message("Inbox/hand.md", "echo", "synced by hand");
    let c = fx.phone_commit_push("phone: a message").unwrap();
    assert!(fx.origin_has_commit(&c));
    assert_eq!(fx.origin_log()[0].author, "phone");
    assert!(!fx.origin_answered("Inbox/hand.md"));
    assert!(!fx.server_in_step());

    fx.server_git(&["pull", "-q"]);
    fx.isolated(fx.v.vr(&["process", fx.v.root_str()]))
        .run()
        .success();
    fx.server_git(&["add", "Inbox", "Threads"]);
    fx.server_git(&[
        "-c",
        "user.name=vaultrunner",
        "-c",
        "user.email=vaultrunner@host.invalid",
        "commit",
        "-q",
        "-m",
        "vaultrunner: answered Inbox/hand",
    ]);
    fx.server_git(&["push", "-q"]);
    assert!(fx.origin_answered("Inbox/hand.md"));
    assert!(fx.server_in_step(), "{}", fx.server_status());
    fx.assert_one_reply_each(&["Inbox/hand.md".to_string()]);
    let note = fx.origin_file("Inbox/hand.md").unwrap();
    assert_eq!(
        key(&note, "reply").as_deref(),
        Some("[[Inbox/hand.reply]]"),
        "{note}"
    );
    assert_eq!(
        body(&fx.origin_file("Inbox/hand.reply.md").unwrap()).trim(),
        "echo: Message:\n\nsynced by hand"
    );
    assert!(fx.origin_log()[0].by_vaultrunner());
    fx.phone_pull();
    fx.assert_no_conflict_markers();
    // The judges do fail: a second reply, a marker.
    fx.phone_write("Inbox/hand.reply (conflict 2026-01-01 000000).md", "x\n");
    fx.phone_commit_push("phone: a copy");
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || fx.assert_one_reply_each(&["Inbox/hand.md".to_string()])
        ))
        .is_err()
    );
}
