//! The status page at `GET /` (SPEC §9, issue 12), in a real browser:
//! headless Chromium driven by `chromedriver` over WebDriver (plain HTTP
//! JSON with reqwest), against the real `vaultrunner serve` on a temp
//! vault. The tests assert on the rendered DOM: the agents listed, a
//! running turn's text streaming, a message sent with the form and its
//! reply arriving live, the problems, the recent turns with their links,
//! and with a token the prompt (and no agent name before it). Screenshots
//! at 1280×900 and 390×844 go to a temp dir (its path is printed); with
//! `VAULTRUNNER_SCREENSHOTS=docs` also to `docs/status-page-*.png`.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` the browser
//! tests fail, saying how to install them (`.ci/run` does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{SCRUB_ENV, Serve, TestVault, fake, reply_of, wait_until};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "page-test-token-7f3a";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

// ------------------------------------------------------------- WebDriver

/// A headless Chromium session through its own `chromedriver` (in a
/// process group of its own, so the browser goes with it).
struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Child,
    /// The browser's home: its profile and everything else it writes.
    _home: tempfile::TempDir,
}

#[track_caller]
fn need_chromium() {
    for p in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(p).exists(),
            "{p} is missing: the status page is tested in a real browser. Install it with \
             `sudo apt-get install -y chromium chromium-driver` (Debian/Ubuntu; .ci/run does this)"
        );
    }
}

impl Browser {
    fn start() -> Browser {
        need_chromium();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for k in SCRUB_ENV {
            cmd.env_remove(k);
        }
        // Everything the browser writes (its profile, its crash reports'
        // database under ~/.config) stays in a temp dir.
        let home = tempfile::tempdir().unwrap();
        cmd.env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_CACHE_HOME", home.path().join(".cache"));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}"));
        // "ChromeDriver was started successfully on port 41133."
        let mut out = BufReader::new(driver.stdout.take().unwrap());
        let mut port = None;
        let mut seen = String::new();
        for _ in 0..20 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("successfully on port ").nth(1) {
                port = rest.trim().trim_end_matches('.').parse::<u16>().ok();
                break;
            }
        }
        let port = port.unwrap_or_else(|| panic!("chromedriver did not say its port:\n{seen}"));
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let profile = home.path().join("profile");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--no-default-browser-check",
                    "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
                    "--force-color-profile=srgb", "--lang=en-US", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let base = format!("http://127.0.0.1:{port}");
        let started = rt.block_on(async {
            let r = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await?;
            r.json::<Value>().await
        });
        let mut b = Browser {
            rt,
            http,
            session: String::new(),
            driver,
            _home: home,
        };
        let v = started.unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b.session = format!("{base}/session/{id}");
        b
    }

    /// One WebDriver command; its `value`, or a panic with the error.
    #[track_caller]
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let req = self.http.request(method, &url);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let (status, v) = self
            .rt
            .block_on(async {
                let r = req.timeout(Duration::from_secs(60)).send().await?;
                let s = r.status();
                Ok::<_, reqwest::Error>((s, r.json::<Value>().await?))
            })
            .unwrap_or_else(|e| panic!("WebDriver {url}: {e}"));
        assert!(status.is_success(), "WebDriver {url}: {status} {v}");
        v["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page.
    fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// Polls `script` until it returns something truthy (a non-empty
    /// string, `true`, a number other than 0); returns it.
    #[track_caller]
    fn wait(&self, within: Duration, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > within {
                let text = self.js("return document.body.innerText");
                panic!(
                    "timed out after {within:?} waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn find(&self, css: &str) -> String {
        let v = self.post("/element", json!({"using": "css selector", "value": css}));
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/clear"), json!({}));
        self.post(&format!("/element/{e}/value"), json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.post(&format!("/element/{e}/click"), json!({}));
    }

    /// The page's viewport, in CSS pixels, at `scale` device pixels each.
    fn viewport(&self, width: u32, height: u32, scale: f64, mobile: bool) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile,
            }}),
        );
        let w = self.js("return window.innerWidth");
        assert_eq!(w.as_u64(), Some(u64::from(width)), "viewport width");
    }

    /// `prefers-color-scheme` as the page sees it.
    fn color_scheme(&self, scheme: &str) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": scheme}],
            }}),
        );
    }

    /// A PNG of the viewport.
    fn screenshot(&self, to: &Path) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None);
        let png = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap())
                .expect("a screenshot in base64")
        };
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(to, png).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let (http, session) = (self.http.clone(), self.session.clone());
        let _ = self.rt.block_on(async move {
            http.delete(&session)
                .timeout(Duration::from_secs(10))
                .send()
                .await
        });
        // The driver's process group: chromedriver and the browser it ran.
        let pgid = i32::try_from(self.driver.id()).unwrap();
        // SAFETY: signalling the process group of our own child.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

// ------------------------------------------------------------- the server

/// `serve` on a free loopback port (with `env`), its base URL.
fn serve(v: &TestVault, env: &[(&str, &str)]) -> (Serve, String) {
    let (s, addr) = v.serve_http(env);
    (s, format!("http://{addr}"))
}

/// A raw HTTP/1.1 GET with exactly these headers (a `Host` naming `addr`
/// unless given): (status, lower-cased head, body).
fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, val) in headers {
        req.push_str(&format!("{k}: {val}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let all = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// Where the screenshots go: a fresh temp dir (kept, its path printed).
fn screenshot_dir() -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("vaultrunner-status-page-")
        .tempdir()
        .unwrap()
        .keep();
    println!("status page screenshots: {}", dir.display());
    dir
}

/// Desktop and phone screenshots of the page as it is now, and the
/// desktop one in dark mode, into `dir`; with `to_docs` and
/// `VAULTRUNNER_SCREENSHOTS=docs`, the light ones into `docs/` as well.
fn screenshots(b: &Browser, dir: &Path, name: &str, to_docs: bool) {
    let docs = to_docs && std::env::var("VAULTRUNNER_SCREENSHOTS").is_ok_and(|v| v == "docs");
    for (kind, w, h, scale, mobile, dark) in [
        ("desktop", 1280, 900, 1.0, false, false),
        ("phone", 390, 844, 2.0, true, false),
        ("desktop-dark", 1280, 900, 1.0, false, true),
    ] {
        b.viewport(w, h, scale, mobile);
        b.color_scheme(if dark { "dark" } else { "light" });
        b.js("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); return true");
        // Let a re-render at the new width settle.
        std::thread::sleep(Duration::from_millis(300));
        let file = dir.join(format!("{name}-{kind}.png"));
        b.screenshot(&file);
        println!("screenshot: {}", file.display());
        if docs && !dark {
            let to = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/{name}-{kind}.png"));
            std::fs::copy(&file, &to).unwrap();
            println!("screenshot: {}", to.display());
        }
    }
    b.viewport(1280, 900, 1.0, false);
    b.color_scheme("light");
}

/// The vault the page is shown on: an assistant (the fake `claude`: a
/// tool call, tokens and cost), `drafter` (prints its draft line by line
/// and waits for `gate` before its last line), `echo`, `failing` (exits
/// 3), and a broken definition for the problems list.
fn page_vault() -> (TestVault, PathBuf) {
    let v = TestVault::new();
    let gate = v.scratch().join("gate");
    v.agent(
        "assistant",
        &format!(
            "backend: claude\nprogram: {}\nretry_base: 20ms\n",
            fake("claude")
        ),
        "You help with the vault.\n",
    );
    v.command_agent(
        "drafter",
        "timeout: 120s\n",
        &format!(
            "cat >/dev/null\n\
             echo 'Outline of the weekly note:'\n\
             sleep 0.3\n\
             echo '1. What shipped: the status page'\n\
             sleep 0.3\n\
             echo '2. What is next: attachments'\n\
             while [ ! -e {gate} ]; do sleep 0.05; done\n\
             echo '3. Done: the draft is in Drafts/weekly.md'",
            gate = crate::common::sh_quote(&gate.display().to_string())
        ),
    );
    v.agent("echo", "backend: echo\n", "");
    v.command_agent(
        "failing",
        "",
        "cat >/dev/null\necho 'model unavailable' >&2\nexit 3",
    );
    v.write(
        "Agents/broken.md",
        "---\ntags: [agent/definition]\nname: broken\nbackend: [claude]\n---\n",
    );
    (v, gate)
}

fn names_js() -> &'static str {
    "return [...document.querySelectorAll('article.agent .agent-name')].map(e => e.textContent).join(',')"
}

// ------------------------------------------------------------- the tests

#[test]
fn the_page_shows_agents_a_streaming_turn_problems_and_a_sent_messages_reply() {
    let (v, gate) = page_vault();
    let (_serve, base) = serve(&v, &[]);
    let serve_log = || _serve.log_text();
    // Turns that ended before the page was opened.
    v.message(
        "Inbox/plan.md",
        "assistant",
        "subject: planning\n",
        "Plan the week. scenario=tool\n",
    );
    v.message("Inbox/hi.md", "echo", "", "hello\n");
    v.message("Inbox/oops.md", "failing", "", "try\n");
    for rel in ["Inbox/plan.md", "Inbox/hi.md", "Inbox/oops.md"] {
        _serve.answered(&v, rel);
    }
    let dir = screenshot_dir();
    let b = Browser::start();
    b.goto(&format!("{base}/"));

    // Every agent is listed, with its state; the broken one is a problem.
    b.wait(
        Duration::from_secs(20),
        "the agents",
        "return document.querySelectorAll('article.agent').length === 4",
    );
    assert_eq!(b.js(names_js()), json!("assistant,drafter,echo,failing"));
    b.wait(
        Duration::from_secs(10),
        "the broken definition among the problems",
        "return [...document.querySelectorAll('#problems .problem')].some(e => e.textContent.includes('Agents/broken.md') && e.textContent.includes('backend'))",
    );
    // The last turns, with what they cost, and links to their notes.
    let assistant =
        b.js("return document.querySelector('article[data-agent=assistant]').innerText");
    let assistant = assistant.as_str().unwrap();
    assert!(assistant.contains("idle"), "{assistant}");
    assert!(
        assistant.contains("120 in · 50 out tokens · $0.0200"),
        "{assistant}"
    );
    let failing = b.js("return document.querySelector('article[data-agent=failing]').innerText");
    assert!(failing.as_str().unwrap().contains("error"), "{failing}");
    let recent = b.js(
        "return [...document.querySelectorAll('#recent tr[data-message]')].map(r => r.dataset.message).join(',')",
    );
    for m in ["Inbox/plan", "Inbox/hi", "Inbox/oops"] {
        assert!(recent.as_str().unwrap().contains(m), "{m} in {recent}");
    }
    let links = b.js(
        "return [...document.querySelectorAll('#recent tr[data-message=\"Inbox/plan\"] a.obsidian')].map(a => a.getAttribute('href'))",
    );
    assert_eq!(
        links,
        json!([
            "obsidian://open?vault=vault&file=Inbox%2Fplan.md",
            "obsidian://open?vault=vault&file=Inbox%2Fplan.reply.md",
            "obsidian://open?vault=vault&file=Threads%2Fassistant%2Fassistant--planning.md",
        ]),
        "{}",
        serve_log()
    );
    let plan_row =
        b.js("return document.querySelector('#recent tr[data-message=\"Inbox/plan\"]').innerText");
    assert!(
        plan_row.as_str().unwrap().contains("Inbox/plan.reply.md"),
        "{plan_row}"
    );

    // A message sent with the form: its reply shows up without a reload.
    b.click("#send-agent option[value=echo]");
    b.type_into("#send-subject", "greeting");
    b.type_into("#send-content", "hello from the page");
    b.click("#send-button");
    b.wait(
        Duration::from_secs(20),
        "the reply to the form's message",
        "return document.getElementById('send-reply').textContent === 'echo: hello from the page'",
    );
    let sent: Vec<String> = v
        .notes_under("Inbox/echo")
        .into_iter()
        .filter(|p| !p.ends_with(".reply.md"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(v.get(&sent[0], "subject").as_deref(), Some("greeting"));
    assert_eq!(v.body(&sent[0]).trim(), "hello from the page");

    // A turn's tool calls show up live in its agent's card.
    v.message(
        "Inbox/look.md",
        "assistant",
        "",
        "Look around. scenario=tool\n",
    );
    let tools = b.wait(
        Duration::from_secs(30),
        "the assistant's tool call",
        "const t = document.querySelector('article[data-agent=assistant] .tools'); return !!t && t.innerText.includes('Bash') && t.innerText",
    );
    let tools = tools.as_str().unwrap();
    assert!(
        tools.contains("echo hi3") && tools.contains("→ hi3"),
        "{tools}"
    );

    // A running turn's text streams in while it runs, and two more
    // messages wait in its queue.
    v.message(
        "Drafts/weekly.md",
        "drafter",
        "",
        "Draft the weekly note.\n",
    );
    b.wait(
        Duration::from_secs(20),
        "the drafter's first lines while it runs",
        "const t = document.querySelector('article[data-agent=drafter] .live-text'); return !!t && t.textContent.includes('2. What is next')",
    );
    let card = b.js("return document.querySelector('article[data-agent=drafter]').innerText");
    let card = card.as_str().unwrap();
    assert!(card.contains("running"), "{card}");
    assert!(
        !card.contains("3. Done"),
        "the last line is printed only after the gate: {card}"
    );
    assert!(!v.exists(&reply_of("Drafts/weekly.md")), "still running");
    v.message("Drafts/monthly.md", "drafter", "", "And the monthly one.\n");
    v.message("Drafts/yearly.md", "drafter", "", "And the yearly one.\n");
    b.wait(
        Duration::from_secs(20),
        "two messages queued for the drafter",
        "return document.querySelector('article[data-agent=drafter] .queue-depth').textContent === '2'",
    );
    screenshots(&b, &dir, "status-page", true);

    // The gate opens: the last line streams in, then the turn ends.
    std::fs::write(&gate, "").unwrap();
    b.wait(
        Duration::from_secs(20),
        "the drafter's last line",
        "return [...document.querySelectorAll('article[data-agent=drafter] .live-text')].some(t => t.textContent.includes('3. Done'))",
    );
    for rel in ["Drafts/weekly.md", "Drafts/monthly.md", "Drafts/yearly.md"] {
        _serve.answered(&v, rel);
    }
    b.wait(
        Duration::from_secs(20),
        "the drafter's turns in the list",
        "return ['Drafts/weekly', 'Drafts/monthly', 'Drafts/yearly'].every(m => document.querySelector(`#recent tr[data-message=\"${m}\"]`))",
    );
    // Its chart counts the turns of this minute (a bar), the queue a line.
    let chart = b.js(
        "const c = document.querySelector('article[data-agent=drafter]'); return [c.querySelectorAll('svg rect.bar').length, c.querySelectorAll('svg polyline.queue').length, c.querySelector('.legend').textContent]",
    );
    assert!(chart[0].as_u64().unwrap() >= 1, "{chart}");
    assert_eq!(chart[1], json!(1), "{chart}");
    assert!(chart[2].as_str().unwrap().contains("3 turns"), "{chart}");

    // An error of the API is shown as it says: an agent that is gone.
    b.js("const s = document.getElementById('send-agent'); s.append(new Option('nobody', 'nobody')); s.value = 'nobody'; return true");
    b.type_into("#send-content", "anyone there?");
    b.click("#send-button");
    let shown = b.wait(
        Duration::from_secs(20),
        "the error of a message to an unknown agent",
        "const s = document.getElementById('send-status'); return s.classList.contains('error') && s.textContent",
    );
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("Not sent") && shown.contains("unknown agent \"nobody\""),
        "{shown}"
    );
    // A blank message is not sent at all.
    b.js("document.getElementById('send-agent').value = 'echo'; return true");
    b.type_into("#send-content", "   ");
    b.click("#send-button");
    b.wait(
        Duration::from_secs(5),
        "the blank message refused",
        "return document.getElementById('send-status').textContent.includes('Write a message first')",
    );
    assert_eq!(v.notes_under("Inbox/nobody").len(), 0);

    // A turn that fails: the form shows why, from the stream's `error`.
    b.js("document.getElementById('send-agent').value = 'failing'; return true");
    b.type_into("#send-content", "will this work?");
    b.click("#send-button");
    let why = b.wait(
        Duration::from_secs(20),
        "the failing turn's reason in the form",
        "const r = document.getElementById('send-reply'); return !r.hidden && r.classList.contains('error-text') && r.textContent",
    );
    assert!(why.as_str().unwrap().contains("model unavailable"), "{why}");
}

#[test]
fn with_a_token_the_page_asks_for_it_and_shows_no_agent_before() {
    let v = TestVault::new();
    v.agent("zebra-agent", "backend: echo\n", "");
    v.agent("quokka-agent", "backend: echo\n", "");
    let (_serve, base) = serve(&v, &[("VAULTRUNNER_TOKEN", TOKEN)]);
    let addr = base.trim_start_matches("http://").to_string();

    // What a request without the token gets: the page, naming no agent.
    let (status, _, html) = get(&addr, "/", &[]);
    assert_eq!(status, 200);
    assert!(html.contains("data-token=\"required\""), "{html}");
    assert!(
        !html.contains("zebra") && !html.contains("quokka"),
        "{html}"
    );
    let (status, _, body) = get(&addr, "/api/status", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    let b = Browser::start();
    b.goto(&format!("{base}/"));
    b.wait(
        Duration::from_secs(20),
        "the token prompt",
        "return !document.getElementById('login').hidden && document.getElementById('app').hidden",
    );
    let no_names = "const h = document.documentElement.outerHTML; return !h.includes('zebra') && !h.includes('quokka')";
    screenshots(&b, &screenshot_dir(), "token-prompt", false);
    assert_eq!(
        b.js(no_names),
        json!(true),
        "an agent name before the token"
    );
    assert_eq!(
        b.js("return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/')).length"),
        json!(0),
        "the page asked the API before it had a token"
    );

    // A wrong token: a clear message, still nothing shown, nothing kept.
    b.type_into("#token", "not-the-token");
    b.click("#login-form button");
    let err = b.wait(
        Duration::from_secs(20),
        "the wrong token's message",
        "const e = document.getElementById('login-error'); return !e.hidden && e.textContent",
    );
    assert!(
        err.as_str().unwrap().contains("refused this token"),
        "{err}"
    );
    assert_eq!(
        b.js(no_names),
        json!(true),
        "an agent name after a wrong token"
    );
    assert_eq!(b.js("return sessionStorage.length"), json!(0));

    // The right one: the agents, live, the token in this tab's session
    // only and in no address the page used.
    b.type_into("#token", TOKEN);
    b.click("#login-form button");
    b.wait(
        Duration::from_secs(20),
        "the agents",
        "return document.querySelectorAll('article.agent').length === 2",
    );
    assert_eq!(b.js(names_js()), json!("quokka-agent,zebra-agent"));
    assert_eq!(
        b.js("return sessionStorage.getItem('vaultrunner.token')"),
        json!(TOKEN)
    );
    // The reply through the event stream, opened with a ticket.
    b.click("#send-agent option[value=zebra-agent]");
    b.type_into("#send-content", "stripes?");
    b.click("#send-button");
    b.wait(
        Duration::from_secs(20),
        "the reply through the event stream",
        "return document.getElementById('send-reply').textContent === 'echo: stripes?'",
    );
    let urls = b
        .js("return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]");
    // (The reply's text comes only through the event stream; a stream
    // still open is not among the resources, its ticket's request is.)
    assert!(
        urls.as_array().unwrap().iter().any(|u| u
            .as_str()
            .unwrap()
            .ends_with("/api/agents/zebra-agent/events/ticket")),
        "the events were opened with a ticket: {urls}"
    );
    assert!(
        !urls.to_string().contains(TOKEN),
        "the token in an address: {urls}"
    );
    // A reload keeps the session's token.
    b.goto(&format!("{base}/"));
    b.wait(
        Duration::from_secs(20),
        "the agents after a reload",
        "return document.querySelectorAll('article.agent').length === 2",
    );
    // Forgetting it shows the prompt again, and nothing else.
    b.click("#signout");
    b.wait(
        Duration::from_secs(5),
        "the prompt after forgetting the token",
        "return !document.getElementById('login').hidden",
    );
    assert_eq!(
        b.js(no_names),
        json!(true),
        "an agent name after forgetting the token"
    );
    assert_eq!(b.js("return sessionStorage.length"), json!(0));
}

#[test]
fn the_page_and_its_status_keep_the_browser_guard_and_the_token_rules() {
    let v = TestVault::with_probes();
    let (serve_open, base) = serve(&v, &[]);
    serve_open.ready(&v);
    let addr = base.trim_start_matches("http://").to_string();
    let port = addr.rsplit(':').next().unwrap().to_string();

    // The page and its status, as the browser asks for them.
    let (status, head, html) = get(&addr, "/", &[("Sec-Fetch-Site", "none")]);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("frame-ancestors 'none'") && head.contains("x-frame-options: deny"),
        "{head}"
    );
    assert!(
        html.contains("data-token=\"none\"") && !html.contains("probe"),
        "{html}"
    );
    for asset in ["/assets/app.js", "/assets/app.css"] {
        let (status, head, _) = get(&addr, asset, &[]);
        assert_eq!(status, 200, "{asset}: {head}");
    }
    let origin = format!("http://{addr}");
    let same_origin = [
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    // The probe's turn is recorded just after its reply lands.
    let mut s = Value::Null;
    wait_until(
        Duration::from_secs(10),
        "the probe's turn in /api/status",
        || {
            let (status, _, body) = get(&addr, "/api/status", &same_origin);
            assert_eq!(status, 200, "{body}");
            s = serde_json::from_str(&body).unwrap();
            s["recent"].as_array().is_some_and(|r| !r.is_empty())
        },
    );
    let names: Vec<&str> = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ok", "probe"]);
    assert_eq!(s["vault"]["obsidian_name"], json!("vault"));
    // The minutes since the agent was first seen, at most the last hour.
    let minutes = s["series"]["probe"].as_array().unwrap();
    assert!((1..=60).contains(&minutes.len()), "{minutes:?}");
    let turns: u64 = minutes.iter().map(|m| m["turns"].as_u64().unwrap()).sum();
    assert_eq!(turns, 1, "{minutes:?}");
    let probe = s["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "probe")
        .unwrap();
    assert_eq!(probe["last_turn"]["outcome"], json!("ok"));
    assert_eq!(s["recent"][0]["agent"], json!("probe"));
    assert_eq!(
        s["recent"][0]["links"]["message"],
        json!("obsidian://open?vault=vault&file=Probe%2Fp1.md")
    );

    // Any other page, a rebinding name, a cross-site load: 403, for both.
    let localhost = format!("http://localhost:{port}");
    let rebound = format!("evil.example:{port}");
    for path in ["/", "/api/status"] {
        for (what, headers) in [
            ("a foreign Origin", [("Origin", "http://evil.example")]),
            ("another loopback name", [("Origin", localhost.as_str())]),
            ("a cross-site fetch", [("Sec-Fetch-Site", "cross-site")]),
            ("a rebinding Host", [("Host", rebound.as_str())]),
        ] {
            let (status, _, body) = get(&addr, path, &headers);
            assert_eq!(status, 403, "{path} with {what}: {body}");
            let e: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert!(e["error"].is_string(), "{body}");
            assert!(!body.contains("probe"), "{body}");
        }
    }
    drop(serve_open);

    // With a token: the page for anyone (it asks for the token), the
    // status only with it.
    let (_serve, base) = serve(&v, &[("VAULTRUNNER_TOKEN", TOKEN)]);
    let addr = base.trim_start_matches("http://").to_string();
    let (status, _, html) = get(&addr, "/", &[]);
    assert_eq!(status, 200);
    assert!(html.contains("data-token=\"required\"") && !html.contains("probe"));
    let (status, _, body) = get(&addr, "/api/status", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("\"error\"") && !body.contains("probe"),
        "{body}"
    );
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = get(&addr, "/api/status", &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"probe\""), "{body}");
}
