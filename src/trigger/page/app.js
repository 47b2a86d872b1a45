// vaultrunner's status page (SPEC §9, docs/status-page.md). Hand-written,
// no dependencies: it polls GET /api/status every 2 s and follows running
// turns through the per-agent event streams. Everything that comes from
// the server (agent names, note paths, a model's text) goes into the page
// as text nodes, never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const MAX_STREAMS = 4; // a browser opens 6 connections per server
  const RETRY_MS = 3000;
  const LIVE_CHARS = 64 * 1024;
  const LINGER_MS = 30000; // a finished turn's output stays this long
  const TOKEN_KEY = "vaultrunner.token";

  const $ = (id) => document.getElementById(id);
  const tokenNeeded = document.body.dataset.token === "required";
  let token = null;
  try {
    token = sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    token = null;
  }

  let status = null; // the last /api/status
  let skew = 0; // browser clock minus server clock, ms
  let pollTimer = null;
  let running = false; // the app (not the login) is shown
  let selected = null; // the agent of the send form
  let pending = null; // the message sent from the form: {agent, path, done}
  const streams = new Map(); // agent -> {es, open, waiters, retry}
  const live = new Map(); // agent -> {message, thread, text, tools, done, endedAt, streamed}
  const cards = new Map(); // agent -> card elements

  // ------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") e.className = v;
        else if (k === "text") e.textContent = v;
        else e.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function clear(e) {
    while (e.firstChild) e.removeChild(e.firstChild);
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "";
    const s = Math.max(0, Math.round((Date.now() - skew - t) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return `${s} s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ago`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min ago`;
    return new Date(t).toLocaleString();
  }

  function took(ms) {
    if (ms < 1000) return `${ms} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${Math.round(s - m * 60)} s`;
  }

  function count(n) {
    if (n < 1000) return String(n);
    if (n < 1e6) return `${(n / 1000).toFixed(n < 10000 ? 1 : 0)}k`;
    return `${(n / 1e6).toFixed(1)}M`;
  }

  function dollars(x) {
    if (!x) return "$0";
    return x < 1 ? `$${x.toFixed(4)}` : `$${x.toFixed(2)}`;
  }

  function when(iso) {
    return el("time", { datetime: iso, "data-at": iso, title: new Date(iso).toLocaleString(), text: ago(iso) });
  }

  function refreshTimes() {
    for (const t of document.querySelectorAll("[data-at]")) t.textContent = ago(t.dataset.at);
  }

  function cut(s, n) {
    return s.length > n ? `${s.slice(0, n)}…` : s;
  }

  // A note: its vault path as text, and beside it a link that opens it in
  // Obsidian when the vault is a folder.
  function note(path, link, label) {
    if (!path) return el("span", { class: "none", text: "—" });
    const file = `${path}.md`;
    const wrap = el("span", { class: "note" });
    if (label) wrap.append(el("span", { class: "note-label", text: label }));
    wrap.append(el("code", { class: "path", title: file, text: file }));
    if (link) wrap.append(el("a", { class: "obsidian", href: link, title: `Open ${file} in Obsidian`, text: "Obsidian" }));
    else if (label) wrap.append(el("span"));
    return wrap;
  }

  function setConn(state, text) {
    $("conn-dot").className = `dot ${state}`;
    $("conn").textContent = text;
  }

  function banner(text) {
    const b = $("banner");
    b.textContent = text || "";
    b.hidden = !text;
  }

  // ---------------------------------------------------------------- API

  async function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (e) {
      return { ok: false, status: 0, error: "the server cannot be reached" };
    }
    let json = null;
    try {
      json = await r.json();
    } catch (_) {
      json = null;
    }
    const error = json && typeof json.error === "string" ? json.error : `HTTP ${r.status}`;
    if (r.status === 401) refused(error);
    return { ok: r.ok, status: r.status, json, error };
  }

  // --------------------------------------------------------------- token

  function showLogin(message) {
    running = false;
    stopAll();
    $("app").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    $("vault").textContent = "";
    const err = $("login-error");
    err.textContent = message || "";
    err.hidden = !message;
    setConn("off", message ? "token refused" : "token needed");
    banner("");
    $("token").focus();
  }

  // The server said 401: forget the token and everything it showed.
  function refused(error) {
    const had = token;
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* nothing kept */ }
    showLogin(had
      ? `The server refused this token (401: ${error}). Check VAULTRUNNER_TOKEN and enter it again.`
      : `This server needs its token (401: ${error}).`);
  }

  async function login(e) {
    e.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    token = t;
    $("login-error").hidden = true;
    setConn("wait", "checking the token…");
    const r = await api("GET", "/api/status");
    if (!r.ok) {
      if (r.status !== 401) showLogin(`Could not check the token: ${r.error}.`);
      return;
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) { /* kept in memory only */ }
    $("token").value = "";
    startApp(r.json);
  }

  function signOut() {
    token = null;
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* nothing kept */ }
    showLogin("");
  }

  // ------------------------------------------------------------- polling

  function startApp(first) {
    running = true;
    $("login").hidden = true;
    $("app").hidden = false;
    $("signout").hidden = !token;
    if (first) render(first);
    schedule(first ? POLL_MS : 0);
  }

  function schedule(ms) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, ms);
  }

  async function poll() {
    if (!running) return;
    if (document.hidden) {
      schedule(POLL_MS);
      return;
    }
    const r = await api("GET", "/api/status");
    if (!running) return;
    if (r.ok && r.json) {
      banner("");
      render(r.json);
    } else if (r.status !== 401) {
      setConn("bad", "reconnecting…");
      banner(r.status === 0 ? "The server cannot be reached; trying again." : `The server answered ${r.status}: ${r.error}`);
    }
    schedule(POLL_MS);
  }

  function stopAll() {
    clearTimeout(pollTimer);
    for (const name of [...streams.keys()]) closeStream(name);
    live.clear();
    cards.clear();
    status = null;
    pending = null;
    for (const id of ["agents", "recent", "problems", "send-agent"]) clear($(id));
    $("send-result").hidden = true;
    $("send-status").textContent = "";
    $("updated").textContent = "";
    recentSig = "";
    problemSig = "";
  }

  // -------------------------------------------------------------- render

  function render(s) {
    status = s;
    const now = Date.parse(s.now);
    if (!Number.isNaN(now)) skew = Date.now() - now;
    const v = $("vault");
    clear(v);
    v.append(el("code", { title: s.vault.location, text: s.vault.location }));
    if (s.vault.obsidian_name) v.append(el("span", { class: "hint", text: ` · Obsidian vault “${s.vault.obsidian_name}”` }));
    setConn("ok", "live");
    $("updated").textContent = ` · updated ${new Date().toLocaleTimeString()}`;
    mergeRunning(s);
    renderAgents(s);
    renderSelect(s);
    renderRecent(s);
    renderProblems(s);
    checkPending(s);
    wantStreams(s);
    refreshTimes();
  }

  // What the poll says runs now, merged with what the streams brought.
  function mergeRunning(s) {
    const t = Date.now();
    for (const a of s.agents) {
      const r = a.running;
      const cur = live.get(a.name);
      if (r && r.message) {
        if (!cur || cur.message !== r.message) {
          live.set(a.name, { message: r.message, thread: r.thread, text: r.text, tools: r.tools.slice(), done: null, since: r.since });
        } else if (!cur.done && !streamOpen(a.name)) {
          cur.text = r.text;
          cur.tools = r.tools.slice();
        }
        if (cur && r.since) cur.since = r.since;
      } else if (cur && !cur.done) {
        // Ended while no stream told us.
        const last = a.last_turn;
        cur.done = last && last.message === cur.message ? { ok: last.outcome === "ok", message: last.error } : { ok: true };
        cur.endedAt = t;
      }
    }
    for (const [name, cur] of live) {
      if (cur.done && t - cur.endedAt > LINGER_MS) live.delete(name);
      if (!s.agents.some((a) => a.name === name)) live.delete(name);
    }
  }

  function renderAgents(s) {
    const box = $("agents");
    $("agent-count").textContent = s.agents.length ? String(s.agents.length) : "";
    const names = new Set(s.agents.map((a) => a.name));
    for (const [name, c] of cards) {
      if (!names.has(name)) {
        c.root.remove();
        cards.delete(name);
      }
    }
    if (!s.agents.length) {
      if (!box.querySelector(".empty")) {
        clear(box);
        box.append(el("p", { class: "empty", text: "No agents yet: a note tagged agent/definition defines one (vaultrunner init makes examples)." }));
      }
      return;
    }
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
    let prev = null;
    for (const a of s.agents) {
      let c = cards.get(a.name);
      if (!c) {
        c = makeCard(a.name);
        cards.set(a.name, c);
      }
      // Keep the order of the server's list (by name).
      if (prev ? prev.nextSibling !== c.root : box.firstChild !== c.root) {
        if (prev) prev.after(c.root);
        else box.prepend(c.root);
      }
      prev = c.root;
      fillCard(c, a, (s.series || {})[a.name] || []);
    }
  }

  function makeCard(name) {
    const c = {};
    c.root = el("article", { class: "agent", "data-agent": name });
    c.state = el("span", { class: "badge state" });
    c.head = el("header", { class: "agent-head" }, el("h3", { class: "agent-name", text: name }), c.state);
    c.model = el("div", { class: "agent-model" });
    c.facts = el("dl", { class: "facts" });
    c.chart = el("div", { class: "chart" });
    c.legend = el("div", { class: "legend" });
    c.live = el("div", { class: "live-box", hidden: true });
    c.root.append(c.head, c.model, c.facts, c.chart, c.legend, c.live);
    return c;
  }

  function fact(label, ...value) {
    return [el("dt", { text: label }), el("dd", null, ...value)];
  }

  function fillCard(c, a, series) {
    const state = a.enabled ? a.state : "disabled";
    c.root.dataset.state = state;
    c.state.className = `badge state ${state}`;
    c.state.textContent = state;
    c.model.textContent = [a.backend, a.model].filter(Boolean).join(" · ");
    clear(c.facts);
    const last = a.last_turn;
    const lastValue = last
      ? [el("span", { class: `badge ${last.outcome}`, text: last.outcome }), " ", when(last.at), el("span", { class: "hint nowrap", text: ` · took ${took(last.ms)}` })]
      : [el("span", { class: "none", text: "none since the server started" })];
    c.facts.append(
      ...fact("Queue", el("span", { class: a.queued ? "queue-depth num strong" : "queue-depth num", text: String(a.queued) })),
      ...fact("Last turn", ...lastValue),
      ...fact("Turns", `${a.turns}`, a.errors ? el("span", { class: "hint", text: ` (${a.errors} failed)` }) : null),
      ...fact("Usage", `${count(a.tokens.input)} in · ${count(a.tokens.output)} out tokens · ${dollars(a.cost_usd)}`),
    );
    if (last && last.outcome === "error" && last.error) {
      c.facts.append(...fact("Error", el("span", { class: "error-text", text: cut(last.error, 200) })));
    }
    drawChart(c, series);
    fillLive(c, a.name);
  }

  // Turns per minute (bars) and queue depth (line), the last hour: one
  // slot a minute, this minute at the right; minutes before the server
  // knew the agent are left blank.
  function drawChart(c, series) {
    clear(c.chart);
    clear(c.legend);
    const N = 60, W = 240, H = 44, w = W / N;
    const lastMin = series.length ? Math.floor(Date.parse(series[series.length - 1].minute) / 60000) : 0;
    const slot = (m) => N - 1 - (lastMin - Math.floor(Date.parse(m.minute) / 60000));
    const pts = series.map((m) => ({ i: slot(m), turns: m.turns, queued: m.queued })).filter((p) => p.i >= 0 && p.i < N);
    const maxT = Math.max(1, ...pts.map((p) => p.turns));
    const peakQ = Math.max(0, ...pts.map((p) => p.queued));
    const maxQ = Math.max(1, peakQ);
    const sumT = pts.reduce((x, p) => x + p.turns, 0);
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", class: "spark" });
    const title = svg("title");
    title.textContent = `Last hour: ${sumT} turns, at most ${sumT ? maxT : 0} a minute; queue at most ${peakQ}`;
    g.append(title);
    if (pts.length) {
      const x0 = pts[0].i * w;
      g.append(svg("rect", { x: x0, y: 0, width: W - x0, height: H, class: "known" }));
    }
    g.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
    for (const p of pts) {
      if (!p.turns) continue;
      const h = Math.max(2, (p.turns / maxT) * (H - 6));
      g.append(svg("rect", { x: p.i * w + 0.6, y: H - h, width: Math.max(0.8, w - 1.2), height: h, class: "bar" }));
    }
    if (peakQ) {
      const y = (q) => (H - 1 - (q / maxQ) * (H - 6)).toFixed(1);
      // A step line: the queue's deepest in each minute.
      const line = [];
      for (const p of pts) line.push(`${(p.i * w).toFixed(1)},${y(p.queued)}`, `${((p.i + 1) * w).toFixed(1)},${y(p.queued)}`);
      g.append(svg("polyline", { points: line.join(" "), class: "queue" }));
    }
    c.chart.append(g);
    c.legend.append(
      el("span", { class: "key bar-key" }), ` ${sumT} ${sumT === 1 ? "turn" : "turns"}`, el("span", { class: "hint", text: ` (max ${sumT ? maxT : 0}/min)` }),
      el("span", { class: "key queue-key" }), " queue", el("span", { class: "hint", text: ` (max ${peakQ})` }),
      el("span", { class: "hint right", title: "one bar a minute, this minute at the right", text: "last hour" }),
    );
  }

  function fillLive(c, name) {
    const l = live.get(name);
    const box = c.live;
    if (!l) {
      if (!box.hidden) {
        clear(box);
        box.hidden = true;
      }
      return;
    }
    box.hidden = false;
    clear(box);
    const head = el("div", { class: "live-head" });
    if (l.done) head.append(el("span", { class: `badge ${l.done.ok ? "ok" : "error"}`, text: l.done.ok ? "finished" : "failed" }));
    else head.append(el("span", { class: "badge working", text: "running" }));
    head.append(" ", note(l.message, linkOf(l.message)));
    if (l.since && !l.done) head.append(el("span", { class: "hint", text: " · since " }), when(l.since));
    box.append(head);
    if (l.tools.length) {
      const ul = el("ul", { class: "tools" });
      for (const t of l.tools.slice(-6)) {
        const li = el("li", null, el("span", { class: "tool-name", text: t.name }), " ", el("code", { class: "tool-input", text: t.input }));
        if (t.output !== null && t.output !== undefined) {
          li.append(el("div", { class: t.is_error ? "tool-output error-text" : "tool-output", text: `→ ${t.output}` }));
        }
        ul.append(li);
      }
      box.append(ul);
    }
    const pre = el("pre", { class: "live live-text", text: l.text || (l.done ? "" : "…") });
    box.append(pre);
    if (l.done && !l.done.ok && l.done.message) box.append(el("div", { class: "error-text", text: l.done.message }));
    pre.scrollTop = pre.scrollHeight;
  }

  function linkOf(path) {
    const name = status && status.vault.obsidian_name;
    if (!name || !path) return null;
    const enc = (x) => encodeURIComponent(x).replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`);
    return `obsidian://open?vault=${enc(name)}&file=${enc(`${path}.md`)}`;
  }

  function renderSelect(s) {
    const sel = $("send-agent");
    const names = s.agents.filter((a) => a.enabled).map((a) => a.name);
    const have = [...sel.options].map((o) => o.value);
    if (have.join("\n") !== names.join("\n")) {
      const keep = sel.value;
      clear(sel);
      for (const n of names) sel.append(el("option", { value: n, text: n }));
      if (names.includes(keep)) sel.value = keep;
    }
    selected = sel.value || null;
    $("send-button").disabled = !names.length;
  }

  let recentSig = "";
  function renderRecent(s) {
    const box = $("recent");
    $("recent-count").textContent = s.recent.length ? String(s.recent.length) : "";
    const sig = s.recent.map((t) => `${t.message}|${t.at}`).join("\n");
    if (sig === recentSig && box.firstChild) return;
    recentSig = sig;
    clear(box);
    if (!s.recent.length) {
      box.append(el("p", { class: "empty", text: "No turn has ended since the server started." }));
      return;
    }
    const table = el("table", { class: "turns" });
    table.append(el("thead", null, el("tr", null, ...["When", "Agent", "Outcome", "Took", "Tokens", "Notes"].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    for (const t of s.recent) {
      const notes = el("div", { class: "notes" },
        note(t.message, t.links.message, "message"),
        note(t.reply, t.links.reply, "reply"),
        t.thread ? note(t.thread, t.links.thread, "thread") : null);
      if (t.error) notes.append(el("div", { class: "error-text", text: cut(t.error, 300) }));
      body.append(el("tr", { "data-message": t.message },
        el("td", { "data-label": "When" }, when(t.at)),
        el("td", { "data-label": "Agent", class: "agent-cell", text: t.agent }),
        el("td", { "data-label": "Outcome" }, el("span", { class: `badge ${t.outcome}`, text: t.outcome })),
        el("td", { "data-label": "Took", class: "num", text: took(t.ms) }),
        el("td", { "data-label": "Tokens", class: "num", text: t.tokens.input || t.tokens.output ? `${count(t.tokens.input)} / ${count(t.tokens.output)}` : "—" }),
        el("td", { "data-label": "Notes" }, notes)));
    }
    table.append(body);
    box.append(table);
  }

  let problemSig = "";
  function renderProblems(s) {
    const ul = $("problems");
    const total = s.problems_total || 0;
    $("problem-count").textContent = total ? String(total) : "";
    const sig = s.problems.map((p) => `${p.path}|${p.reason}`).join("\n");
    if (sig === problemSig && ul.firstChild) return;
    problemSig = sig;
    clear(ul);
    if (!s.problems.length) {
      ul.append(el("li", { class: "empty", text: "None: every note reads fine." }));
      return;
    }
    for (const p of s.problems) {
      ul.append(el("li", { class: p.error ? "problem is-error" : "problem" },
        el("span", { class: `badge ${p.error ? "error" : "warn"}`, text: p.error ? "error" : "warning" }), " ",
        el("code", { class: "path", text: p.path }),
        el("div", { class: "reason", text: p.reason })));
    }
    if (total > s.problems.length) ul.append(el("li", { class: "hint", text: `… and ${total - s.problems.length} more (vaultrunner check lists them all)` }));
  }

  // ------------------------------------------------------------- streams

  function streamOpen(name) {
    const s = streams.get(name);
    return !!(s && s.open);
  }

  // A stream for the form's agent, then for working agents, then the rest,
  // at most MAX_STREAMS.
  function wantStreams(s) {
    const order = [];
    const add = (n) => {
      if (n && !order.includes(n) && s.agents.some((a) => a.name === n && a.enabled)) order.push(n);
    };
    add(pending && !pending.done ? pending.agent : null);
    add(selected);
    for (const a of s.agents) if (a.state === "working") add(a.name);
    for (const a of s.agents) add(a.name);
    const want = new Set(order.slice(0, MAX_STREAMS));
    for (const name of [...streams.keys()]) if (!want.has(name)) closeStream(name);
    for (const name of want) if (!streams.has(name)) openStream(name);
  }

  function closeStream(name) {
    const s = streams.get(name);
    if (!s) return;
    streams.delete(name);
    clearTimeout(s.retry);
    if (s.es) s.es.close();
    for (const w of s.waiters) w(false);
  }

  async function openStream(name) {
    const s = { es: null, open: false, waiters: [], retry: null };
    streams.set(name, s);
    let url = `/api/agents/${encodeURIComponent(name)}/events`;
    if (token) {
      // EventSource cannot send the token: a one-time ticket goes in the
      // address instead (the token never does).
      const r = await api("POST", `${url}/ticket`);
      if (streams.get(name) !== s) return;
      if (!r.ok) {
        s.retry = setTimeout(() => reopen(name, s), RETRY_MS);
        return;
      }
      url += `?ticket=${encodeURIComponent(r.json.ticket)}`;
    }
    const es = new EventSource(url);
    s.es = es;
    es.onopen = () => {
      s.open = true;
      for (const w of s.waiters.splice(0)) w(true);
    };
    es.onerror = () => {
      // Gone (a restart, a ticket used up): a new ticket, a new stream.
      es.close();
      s.open = false;
      if (streams.get(name) === s) s.retry = setTimeout(() => reopen(name, s), RETRY_MS);
    };
    for (const kind of ["text", "tool", "tool_result", "done", "error"]) {
      es.addEventListener(kind, (ev) => {
        let d;
        try {
          d = JSON.parse(ev.data);
        } catch (_) {
          return;
        }
        onEvent(name, kind, d);
      });
    }
  }

  function reopen(name, s) {
    if (streams.get(name) !== s || !running) return;
    streams.delete(name);
    openStream(name);
  }

  function whenOpen(name, ms) {
    const s = streams.get(name);
    if (!s) return Promise.resolve(false);
    if (s.open) return Promise.resolve(true);
    return new Promise((resolve) => {
      s.waiters.push(resolve);
      setTimeout(() => resolve(false), ms);
    });
  }

  function onEvent(agent, kind, d) {
    if (!d || typeof d.message !== "string") return;
    let l = live.get(agent);
    if (!l || l.message !== d.message) {
      l = { message: d.message, thread: d.thread, text: "", tools: [], done: null, since: null };
      live.set(agent, l);
    }
    if (kind === "text") {
      l.text += String(d.text || "");
      if (l.text.length > LIVE_CHARS) l.text = l.text.slice(-LIVE_CHARS);
    } else if (kind === "tool") {
      l.tools.push({ name: String(d.name), input: cut(JSON.stringify(d.input), 300), output: null, is_error: false });
      if (l.tools.length > 20) l.tools.shift();
    } else if (kind === "tool_result") {
      const t = [...l.tools].reverse().find((x) => x.output === null);
      if (t) {
        t.output = cut(String(d.output || ""), 300);
        t.is_error = !!d.is_error;
      }
    } else if (kind === "done") {
      l.done = { ok: true, reply: String(d.reply || "") };
      l.endedAt = Date.now();
    } else if (kind === "error") {
      l.done = { ok: false, message: String(d.error || "") };
      l.endedAt = Date.now();
    }
    const c = cards.get(agent);
    if (c) fillLive(c, agent);
    if (pending && pending.path === d.message) onPendingEvent(kind, d, l);
  }

  // ---------------------------------------------------------------- send

  function sendStatus(text, cls) {
    const s = $("send-status");
    s.textContent = text;
    s.className = `send-status ${cls || ""}`;
  }

  async function send(e) {
    e.preventDefault();
    const agent = $("send-agent").value;
    const subject = $("send-subject").value.trim();
    const content = $("send-content").value;
    if (!agent) return sendStatus("There is no agent to send to.", "error");
    if (!content.trim()) return sendStatus("Write a message first.", "error");
    const body = { content };
    if (subject) body.subject = subject;
    $("send-button").disabled = true;
    sendStatus("Sending…");
    // Be listening before the turn can end (an echo agent answers at once).
    if (!streams.has(agent)) openStream(agent);
    await whenOpen(agent, 3000);
    const r = await api("POST", `/api/agents/${encodeURIComponent(agent)}/messages`, body);
    $("send-button").disabled = false;
    if (!r.ok) {
      if (r.status !== 401) sendStatus(`Not sent: ${r.error}`, "error");
      return;
    }
    $("send-content").value = "";
    pending = { agent, path: r.json.path, done: false };
    sendStatus(`Sent to ${agent}; the reply shows here when it arrives.`, "ok");
    $("send-result").hidden = false;
    const o = $("send-outcome");
    o.className = "badge queued";
    o.textContent = "waiting";
    const p = $("send-path");
    clear(p);
    p.append(note(pending.path, linkOf(pending.path)));
    $("send-live").hidden = true;
    $("send-live").textContent = "";
    $("send-reply").hidden = true;
    $("send-reply").textContent = "";
    // The turn may have run (or ended) before the answer came back.
    const l = live.get(agent);
    if (l && l.message === pending.path) {
      if (l.done) onPendingEvent(l.done.ok ? "done" : "error", { reply: l.done.reply, error: l.done.message }, l);
      else onPendingEvent("text", {}, l);
    }
    if (status) wantStreams(status);
  }

  function onPendingEvent(kind, d, l) {
    if (pending.done) return;
    const o = $("send-outcome");
    const liveBox = $("send-live");
    if (kind === "done" || kind === "error") {
      pending.done = true;
      const ok = kind === "done";
      o.className = `badge ${ok ? "ok" : "error"}`;
      o.textContent = ok ? "replied" : "failed";
      liveBox.hidden = true;
      const reply = $("send-reply");
      reply.hidden = false;
      reply.className = ok ? "reply" : "reply error-text";
      reply.textContent = ok ? String(d.reply || "") : String(d.error || "");
      sendStatus(ok ? `${pending.agent} replied; the reply note is ${pending.path}.reply.md (see Recent turns).` : `${pending.agent} failed; the reply note says why.`, ok ? "ok" : "error");
      return;
    }
    o.className = "badge working";
    o.textContent = "running";
    liveBox.hidden = false;
    liveBox.textContent = l.text || "…";
    liveBox.scrollTop = liveBox.scrollHeight;
  }

  // The reply landed while no stream was open: the recent turns say so.
  function checkPending(s) {
    if (!pending || pending.done) return;
    const t = s.recent.find((x) => x.message === pending.path);
    if (!t) return;
    pending.done = true;
    const o = $("send-outcome");
    o.className = `badge ${t.outcome}`;
    o.textContent = t.outcome === "ok" ? "replied" : "failed";
    $("send-live").hidden = true;
    const reply = $("send-reply");
    reply.hidden = false;
    reply.className = "reply";
    clear(reply);
    reply.append("The reply is in ", note(t.reply, t.links.reply));
    if (t.error) reply.append(el("div", { class: "error-text", text: t.error }));
  }

  // ---------------------------------------------------------------- start

  function init() {
    $("login-form").addEventListener("submit", login);
    $("signout").addEventListener("click", signOut);
    $("send-form").addEventListener("submit", send);
    $("send-agent").addEventListener("change", () => {
      selected = $("send-agent").value;
      if (status) wantStreams(status);
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && running) schedule(0);
    });
    setInterval(refreshTimes, 5000);
    if (tokenNeeded && !token) showLogin("");
    else startApp(null);
  }

  init();
})();
