//! What the status page (issue 12) shows of the engine's work, kept in
//! memory of a fixed size: the last [`RECENT_TURNS`] turns, and for each
//! defined agent its totals since the start, its last turn, the message it
//! runs now, and a series of [`MINUTES`] per-minute slots (turns ended,
//! deepest queue). Nothing here grows with the vault or with time: the
//! ring drops its oldest turn, the series overwrites its oldest minute, and
//! an agent whose definition is gone is forgotten (at most [`MAX_AGENTS`]).
//! Like every cache of the engine it starts empty: it shows what this
//! `serve` did.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::backend::Usage;
use crate::turn::Summary;

/// Turns kept for the page's list of recent turns.
pub const RECENT_TURNS: usize = 100;
/// Minutes of the per-agent series (the last hour).
pub const MINUTES: usize = 60;
/// Agents tracked at most (definitions beyond it get no series).
pub const MAX_AGENTS: usize = 4096;
/// An error's text is cut to this many characters.
const MAX_ERROR_CHARS: usize = 500;

/// A turn that ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TurnRecord {
    pub agent: String,
    /// The inbound note (a vault path).
    pub message: String,
    /// Its reply note.
    pub reply: String,
    /// Its thread note, when it got one.
    pub thread: Option<String>,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    /// How long it took, in milliseconds.
    pub ms: u64,
    pub ok: bool,
    /// Why it failed (cut to 500 characters).
    pub error: Option<String>,
    pub usage: Usage,
}

/// One minute of an agent's series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute (Unix time divided by 60).
    pub minute: i64,
    /// Turns that ended in it.
    pub turns: u32,
    /// The deepest its queue was in it.
    pub queued: u32,
}

/// The message an agent runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    pub message: String,
    /// Since when (RFC 3339, UTC).
    pub since: String,
}

/// One agent's part of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentActivity {
    pub last: Option<TurnRecord>,
    /// Tokens and cost of every turn since the start.
    pub usage: Usage,
    pub turns: u64,
    pub errors: u64,
    /// The last [`MINUTES`] minutes, oldest first, ending with this one
    /// (fewer when the agent was first seen less than an hour ago).
    pub series: Vec<Minute>,
    pub running: Option<Running>,
}

/// What the page is given.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Newest first.
    pub recent: Vec<TurnRecord>,
    pub agents: HashMap<String, AgentActivity>,
}

#[derive(Debug)]
struct PerAgent {
    last: Option<TurnRecord>,
    usage: Usage,
    turns: u64,
    errors: u64,
    /// Slot `m % MINUTES` holds minute `m`, for the minutes up to `filled`.
    series: [Minute; MINUTES],
    filled: i64,
    /// The minute it was first seen: the series starts there.
    first: i64,
    /// The queue's depth as last told.
    depth: u32,
    running: Option<Running>,
}

impl PerAgent {
    fn new(minute: i64) -> PerAgent {
        let mut a = PerAgent {
            last: None,
            usage: Usage::default(),
            turns: 0,
            errors: 0,
            series: [Minute::default(); MINUTES],
            filled: minute,
            first: minute,
            depth: 0,
            running: None,
        };
        if let Some(s) = a.slot(minute) {
            *s = Minute {
                minute,
                ..Minute::default()
            };
        }
        a
    }

    fn slot(&mut self, minute: i64) -> Option<&mut Minute> {
        let i = usize::try_from(minute.rem_euclid(MINUTES as i64)).ok()?;
        self.series.get_mut(i)
    }

    /// Fills the minutes since the last one told with the queue as it
    /// was (nothing changed it meanwhile), and returns the slot of `now`
    /// (the last one told, should the clock go back).
    fn roll(&mut self, now: i64) -> Option<&mut Minute> {
        let now = now.max(self.filled);
        let from = self
            .filled
            .saturating_add(1)
            .max(now.saturating_sub(MINUTES as i64 - 1));
        let depth = self.depth;
        for m in from..=now {
            if let Some(s) = self.slot(m) {
                *s = Minute {
                    minute: m,
                    turns: 0,
                    queued: depth,
                };
            }
        }
        self.filled = now;
        self.slot(now)
    }

    fn series(&mut self, now: i64) -> Vec<Minute> {
        self.roll(now);
        let end = self.filled;
        let first = self.first;
        (0..MINUTES as i64)
            .rev()
            .map(|back| end.saturating_sub(back))
            .filter(|m| *m >= first)
            .map(|m| {
                let i = usize::try_from(m.rem_euclid(MINUTES as i64)).unwrap_or(0);
                match self.series.get(i) {
                    Some(s) if s.minute == m => *s,
                    _ => Minute {
                        minute: m,
                        ..Minute::default()
                    },
                }
            })
            .collect()
    }
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<TurnRecord>,
    agents: HashMap<String, PerAgent>,
}

impl Inner {
    fn agent(&mut self, name: &str, minute: i64) -> Option<&mut PerAgent> {
        if !self.agents.contains_key(name) && self.agents.len() < MAX_AGENTS {
            self.agents.insert(name.to_string(), PerAgent::new(minute));
        }
        self.agents.get_mut(name)
    }
}

/// The engine's record for the status page (see the module's doc).
#[derive(Debug, Default)]
pub struct Activity {
    inner: Mutex<Inner>,
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn rfc3339(secs_ms: chrono::DateTime<chrono::Utc>) -> String {
    secs_ms.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
        None => s.to_string(),
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `agent` started a turn for `message`.
    pub fn turn_started(&self, agent: &str, message: &str) {
        let now = chrono::Utc::now();
        let mut inner = self.lock();
        if let Some(a) = inner.agent(agent, now.timestamp().div_euclid(60)) {
            a.running = Some(Running {
                message: message.to_string(),
                since: rfc3339(now),
            });
        }
    }

    /// A turn of `agent` for `message` ended without a reply (skipped,
    /// cut short by shutdown, not written yet).
    pub fn turn_stopped(&self, agent: &str, message: &str) {
        if let Some(a) = self.lock().agents.get_mut(agent)
            && a.running.as_ref().is_some_and(|r| r.message == message)
        {
            a.running = None;
        }
    }

    /// A turn of `agent` for `message` ended with a reply, after `took`.
    pub fn turn_ended(
        &self,
        agent: &str,
        message: &str,
        ok: bool,
        took: std::time::Duration,
        summary: &Summary,
    ) {
        let now = chrono::Utc::now();
        let record = TurnRecord {
            agent: agent.to_string(),
            message: message.to_string(),
            reply: crate::note::reply_path(message),
            thread: summary.thread.clone(),
            at: rfc3339(now),
            ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            ok,
            error: summary.error.as_deref().map(|e| cut(e, MAX_ERROR_CHARS)),
            usage: summary.usage,
        };
        self.ended_at(record, now.timestamp());
    }

    fn ended_at(&self, record: TurnRecord, now_secs: i64) {
        let mut inner = self.lock();
        if let Some(a) = inner.agent(&record.agent, now_secs.div_euclid(60)) {
            if a.running
                .as_ref()
                .is_some_and(|r| r.message == record.message)
            {
                a.running = None;
            }
            a.turns = a.turns.saturating_add(1);
            if !record.ok {
                a.errors = a.errors.saturating_add(1);
            }
            let u = record.usage;
            a.usage.input_tokens = a.usage.input_tokens.saturating_add(u.input_tokens);
            a.usage.output_tokens = a.usage.output_tokens.saturating_add(u.output_tokens);
            a.usage.total_cost_usd += u.total_cost_usd;
            if let Some(s) = a.roll(now_secs.div_euclid(60)) {
                s.turns = s.turns.saturating_add(1);
            }
            a.last = Some(record.clone());
        }
        if inner.recent.len() >= RECENT_TURNS {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record);
    }

    /// The queue depth of every defined agent; agents not among them are
    /// forgotten (their definition is gone).
    pub fn depths<'a>(&self, agents: impl Iterator<Item = (&'a str, usize)>) {
        self.depths_at(agents, now_secs());
    }

    fn depths_at<'a>(&self, agents: impl Iterator<Item = (&'a str, usize)>, now_secs: i64) {
        let minute = now_secs.div_euclid(60);
        let mut inner = self.lock();
        let mut seen = HashSet::new();
        for (name, depth) in agents {
            let depth = u32::try_from(depth).unwrap_or(u32::MAX);
            if let Some(a) = inner.agent(name, minute) {
                if let Some(s) = a.roll(minute) {
                    s.queued = s.queued.max(depth);
                }
                a.depth = depth;
                seen.insert(name);
            }
        }
        if seen.len() != inner.agents.len() {
            inner.agents.retain(|name, _| seen.contains(name.as_str()));
        }
    }

    /// The queue depth of one agent (after it took a message).
    pub fn depth(&self, agent: &str, depth: usize) {
        let minute = now_secs().div_euclid(60);
        let depth = u32::try_from(depth).unwrap_or(u32::MAX);
        if let Some(a) = self.lock().agents.get_mut(agent) {
            if let Some(s) = a.roll(minute) {
                s.queued = s.queued.max(depth);
            }
            a.depth = depth;
        }
    }

    /// What the page shows now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(now_secs())
    }

    fn snapshot_at(&self, now_secs: i64) -> Snapshot {
        let minute = now_secs.div_euclid(60);
        let mut inner = self.lock();
        let recent = inner.recent.iter().rev().cloned().collect();
        let agents = inner
            .agents
            .iter_mut()
            .map(|(name, a)| {
                (
                    name.clone(),
                    AgentActivity {
                        last: a.last.clone(),
                        usage: a.usage,
                        turns: a.turns,
                        errors: a.errors,
                        series: a.series(minute),
                        running: a.running.clone(),
                    },
                )
            })
            .collect();
        Snapshot { recent, agents }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(agent: &str, n: usize, ok: bool) -> TurnRecord {
        TurnRecord {
            agent: agent.into(),
            message: format!("Inbox/m{n}"),
            reply: format!("Inbox/m{n}.reply"),
            thread: Some(format!("Threads/{agent}/m{n}")),
            at: "2026-01-01T00:00:00.000Z".into(),
            ms: 5,
            ok,
            error: (!ok).then(|| "boom".into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 3,
                total_cost_usd: 0.5,
            },
        }
    }

    #[test]
    fn the_ring_keeps_the_last_hundred_turns_newest_first() {
        let a = Activity::default();
        let t0 = 1_700_000_000;
        a.depths_at([("echo", 0)].into_iter(), t0);
        for n in 0..1000 {
            a.ended_at(rec("echo", n, n % 10 != 0), t0);
        }
        let s = a.snapshot_at(t0);
        assert_eq!(s.recent.len(), RECENT_TURNS);
        assert_eq!(s.recent[0].message, "Inbox/m999");
        assert_eq!(s.recent[RECENT_TURNS - 1].message, "Inbox/m900");
        let e = &s.agents["echo"];
        assert_eq!((e.turns, e.errors), (1000, 100));
        assert_eq!(e.usage.input_tokens, 10_000);
        assert_eq!(e.usage.output_tokens, 3000);
        assert!((e.usage.total_cost_usd - 500.0).abs() < 1e-6);
        assert_eq!(
            e.last.as_ref().map(|l| l.message.as_str()),
            Some("Inbox/m999")
        );
    }

    #[test]
    fn the_series_is_the_last_hour_per_minute_and_carries_the_queue() {
        let a = Activity::default();
        let t0 = 1_700_000_000 / 60 * 60; // the start of a minute
        a.depths_at([("echo", 3)].into_iter(), t0);
        a.ended_at(rec("echo", 1, true), t0 + 5);
        a.ended_at(rec("echo", 2, true), t0 + 50);
        a.depths_at([("echo", 1)].into_iter(), t0 + 55);
        // Ten minutes later, with nothing in between.
        a.ended_at(rec("echo", 3, true), t0 + 600);
        a.depths_at([("echo", 0)].into_iter(), t0 + 601);
        let s = a.snapshot_at(t0 + 660);
        let series = &s.agents["echo"].series;
        // From the minute it was first seen.
        assert_eq!(series.len(), 12);
        let m0 = t0 / 60;
        assert_eq!(series.last().map(|m| m.minute), Some(m0 + 11));
        let at = |m: i64| series.iter().find(|x| x.minute == m).copied().unwrap();
        assert_eq!((at(m0).turns, at(m0).queued), (2, 3));
        // The queue stayed at 1 while nothing happened.
        assert_eq!((at(m0 + 5).turns, at(m0 + 5).queued), (0, 1));
        assert_eq!((at(m0 + 10).turns, at(m0 + 10).queued), (1, 1));
        assert_eq!((at(m0 + 11).turns, at(m0 + 11).queued), (0, 0));
        assert_eq!(series.first().map(|m| m.minute), Some(m0));
        // Two hours later the whole window is quiet, and still 60 slots.
        let s = a.snapshot_at(t0 + 7200);
        let series = &s.agents["echo"].series;
        assert_eq!(series.len(), MINUTES);
        assert!(series.iter().all(|m| m.turns == 0 && m.queued == 0));
        assert_eq!(series.first().map(|m| m.minute), Some(m0 + 120 - 59));
    }

    #[test]
    fn a_clock_that_goes_back_changes_nothing_it_should_not() {
        let a = Activity::default();
        let t0 = 1_700_000_000 / 60 * 60;
        a.depths_at([("echo", 0)].into_iter(), t0 + 120);
        a.ended_at(rec("echo", 1, true), t0);
        let s = a.snapshot_at(t0);
        let series = &s.agents["echo"].series;
        assert_eq!(series.len(), 1);
        assert_eq!(
            series.last().map(|m| (m.minute, m.turns)),
            Some((t0 / 60 + 2, 1))
        );
    }

    #[test]
    fn agents_whose_definition_is_gone_are_forgotten_and_running_is_cleared() {
        let a = Activity::default();
        let t0 = 1_700_000_000;
        a.depths_at([("a", 0), ("b", 0)].into_iter(), t0);
        a.turn_started("a", "Inbox/m1");
        assert_eq!(
            a.snapshot_at(t0).agents["a"]
                .running
                .as_ref()
                .map(|r| r.message.as_str()),
            Some("Inbox/m1")
        );
        a.turn_stopped("a", "Inbox/other");
        assert!(a.snapshot_at(t0).agents["a"].running.is_some());
        a.ended_at(rec("a", 1, true), t0);
        assert!(a.snapshot_at(t0).agents["a"].running.is_none());
        a.depths_at([("a", 0)].into_iter(), t0);
        let s = a.snapshot_at(t0);
        assert!(s.agents.contains_key("a") && !s.agents.contains_key("b"));
        // The recent turns stay, whoever ran them.
        assert_eq!(s.recent.len(), 1);
    }

    #[test]
    fn the_agents_tracked_are_bounded() {
        let a = Activity::default();
        let names: Vec<String> = (0..MAX_AGENTS + 10).map(|i| format!("a{i}")).collect();
        a.depths_at(names.iter().map(|n| (n.as_str(), 1)), 1_700_000_000);
        assert_eq!(a.lock().agents.len(), MAX_AGENTS);
    }

    #[test]
    fn long_errors_are_cut() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 3), "abc…");
        assert_eq!(cut("ééééé", 2), "éé…");
    }
}
