//! The note kinds of SPEC §2 that vaultrunner reads keys of, as types:
//! an inbound message, a thread note and a reply. Each key is read in one
//! place, here, with one rule for its type (a list or a mapping where a
//! value belongs is named, never read as absent); no I/O.

use serde_yaml::{Mapping, Value};

use super::{FieldError, Note, get_str, unlink};

/// The processing state of an inbound note (`status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Draft,
    Working,
    Handled,
    Error,
    /// Anything else: left alone and reported.
    Unknown,
}

impl Status {
    pub fn parse(s: Option<&str>) -> Status {
        match s.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("pending") => Status::Pending,
            Some("draft") => Status::Draft,
            Some("working") => Status::Working,
            Some("handled") => Status::Handled,
            Some("error") => Status::Error,
            Some(_) => Status::Unknown,
        }
    }

    /// `handled` or `error`: answered, never run again unless a person
    /// sets it back to `pending`.
    pub fn is_done(self) -> bool {
        matches!(self, Status::Handled | Status::Error)
    }
}

/// A whole, non-negative number of a key (`2.0` counts as 2; `-1` and
/// `1.5` are not counts; a numeric string is read).
pub fn count_of(meta: &Mapping, key: &str) -> Option<u64> {
    match meta.get(key)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A finite number of a key, 0 when absent or not a (finite) number.
pub fn number_of(meta: &Mapping, key: &str) -> f64 {
    let n = match meta.get(key) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    };
    if n.is_finite() { n } else { 0.0 }
}

/// A text key, blank counting as absent.
fn text_of(meta: &Mapping, key: &str) -> Option<String> {
    get_str(meta, key).filter(|s| !s.trim().is_empty())
}

/// Parses an ISO-8601 / RFC 3339 timestamp (or a bare date) to epoch ms.
pub fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis());
    }
    None
}

/// The keys that say whom a message is for and where it stands: one of
/// them holding a list or a mapping leaves the message alone (reported).
pub const ROUTING_KEYS: &[&str] = &["agent", "channel", "status"];

/// The other keys of a message that a turn reads: one of them holding a
/// list or a mapping answers the message with an error naming it.
pub const MESSAGE_KEYS: &[&str] = &[
    "sender",
    "ts",
    "subject",
    "reply_to",
    "correlation_id",
    "delegation_depth",
];

/// An inbound message note (`agent/message/inbound`), its keys read.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// `agent`, else `channel`, trimmed; `None` when neither is set.
    pub agent: Option<String>,
    /// A status that is a list or a mapping is `Unknown`, not "absent".
    pub status: Status,
    pub sender: Option<String>,
    /// `ts` as written, and as epoch ms when it is a time.
    pub ts: Option<String>,
    pub ts_ms: Option<i64>,
    pub subject: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// `delegation_depth` (0 when absent), or why it is no depth.
    pub depth: Result<u64, String>,
    /// Starts counted so far (`attempts`; 0 when absent or no count).
    pub attempts: u64,
    /// The thread and reply it was stamped with (links unwrapped).
    pub thread: Option<String>,
    pub reply: Option<String>,
    pub handled_at: Option<String>,
    /// A routing key of the wrong type: the message is left alone.
    pub unroutable: Option<FieldError>,
    /// Another key of the wrong type: the message is answered with an
    /// error naming it.
    pub invalid: Option<FieldError>,
}

impl InboundMessage {
    /// Reads an inbound note's keys.
    pub fn of(note: &Note) -> InboundMessage {
        let meta = &note.meta;
        let agent = note
            .str("agent")
            .or_else(|| note.str("channel"))
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty());
        let status = match note.text("status") {
            Ok(s) => Status::parse(s.as_deref()),
            Err(_) => Status::Unknown,
        };
        let ts = note.str("ts");
        let depth = match meta.get("delegation_depth") {
            None | Some(Value::Null) => Ok(0),
            Some(_) => count_of(meta, "delegation_depth")
                .ok_or_else(|| "field `delegation_depth` is not a whole number".to_string()),
        };
        InboundMessage {
            agent,
            status,
            sender: note.str("sender"),
            ts_ms: ts.as_deref().and_then(parse_ts),
            ts,
            subject: note.str("subject"),
            reply_to: note
                .str("reply_to")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            correlation_id: text_of(meta, "correlation_id"),
            depth,
            attempts: count_of(meta, "attempts").unwrap_or(0),
            thread: note.str("thread").map(|t| unlink(&t).to_string()),
            reply: note.str("reply").map(|r| unlink(&r).to_string()),
            handled_at: note.str("handled_at"),
            unroutable: ROUTING_KEYS.iter().find_map(|k| note.text(k).err()),
            invalid: MESSAGE_KEYS.iter().find_map(|k| note.text(k).err()),
        }
    }

    /// The depth, or why the message is answered with an error without
    /// running: a key of the wrong type, a depth that is no number.
    pub fn runnable_depth(&self) -> Result<u64, String> {
        match &self.invalid {
            Some(e) => Err(e.to_string()),
            None => self.depth.clone(),
        }
    }
}

/// A thread note (`agent/thread`), the keys vaultrunner keeps on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadNote {
    pub status: Option<String>,
    /// The session to resume (only an id a backend reported; blank is none).
    pub session: Option<String>,
    /// Exchanges answered before this are left out of the history.
    pub reset_at: Option<String>,
    pub last_turn_at: Option<String>,
    pub turn_count: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_cost_usd: f64,
    /// Whether the note keeps token counts already (they are then kept up
    /// to date even by turns that report none).
    pub has_usage: bool,
}

impl ThreadNote {
    /// Reads a thread note's keys from its front-matter.
    pub fn of(meta: &Mapping) -> ThreadNote {
        ThreadNote {
            status: get_str(meta, "status"),
            session: text_of(meta, "session"),
            reset_at: text_of(meta, "reset_at"),
            last_turn_at: get_str(meta, "last_turn_at"),
            turn_count: count_of(meta, "turn_count").unwrap_or(0),
            input_tokens: count_of(meta, "input_tokens").unwrap_or(0),
            output_tokens: count_of(meta, "output_tokens").unwrap_or(0),
            total_cost_usd: number_of(meta, "total_cost_usd"),
            has_usage: meta.contains_key("input_tokens"),
        }
    }
}

/// A reply note (`agent/message/outbound`): its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// `ok` or `error` (a reply without `status` counts as `ok`).
    pub status: String,
}

impl OutboundMessage {
    pub fn of(note: &Note) -> OutboundMessage {
        OutboundMessage {
            status: note.str("status").unwrap_or_else(|| "ok".into()),
        }
    }

    pub fn is_error(&self) -> bool {
        self.status == "error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(yaml: &str) -> InboundMessage {
        InboundMessage::of(&Note::parse(&format!("---\n{yaml}---\nhi\n")).unwrap())
    }

    #[test]
    fn inbound_keys() {
        let m = inbound(
            "agent: ' echo '\nstatus: Working\nattempts: 2\nts: 2026-01-01T00:00:01Z\nreply_to: boss\ncorrelation_id: ' '\nthread: \"[[Threads/echo/echo]]\"\n",
        );
        assert_eq!(m.agent.as_deref(), Some("echo"));
        assert_eq!(m.status, Status::Working);
        assert_eq!(m.attempts, 2);
        assert_eq!(m.ts_ms, Some(1_767_225_601_000));
        assert_eq!(m.reply_to.as_deref(), Some("boss"));
        assert_eq!(m.correlation_id, None);
        assert_eq!(m.thread.as_deref(), Some("Threads/echo/echo"));
        assert_eq!(m.runnable_depth(), Ok(0));
        assert_eq!(inbound("channel: c\n").agent.as_deref(), Some("c"));
    }

    #[test]
    fn wrong_types_are_named() {
        let m = inbound("agent: echo\nstatus: [handled]\n");
        assert_eq!(m.status, Status::Unknown);
        assert_eq!(m.unroutable.unwrap().field, "status");
        let m = inbound("agent: echo\nsubject: {a: 1}\n");
        assert!(m.unroutable.is_none());
        assert!(m.runnable_depth().unwrap_err().contains("field `subject`"));
        assert!(
            inbound("agent: echo\ndelegation_depth: many\n")
                .runnable_depth()
                .unwrap_err()
                .contains("delegation_depth")
        );
        assert_eq!(inbound("agent: echo\nattempts: -1\n").attempts, 0);
    }

    #[test]
    fn thread_keys() {
        let n = Note::parse(
            "---\nsession: ' '\nturn_count: 3\ninput_tokens: '10'\ntotal_cost_usd: 0.5\nreset_at: 2026-01-01T00:00:00Z\n---\n",
        )
        .unwrap();
        let t = ThreadNote::of(&n.meta);
        assert_eq!(t.session, None);
        assert_eq!(t.turn_count, 3);
        assert_eq!(t.input_tokens, 10);
        assert_eq!(t.total_cost_usd, 0.5);
        assert!(t.has_usage);
        assert_eq!(t.reset_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(ThreadNote::of(&Mapping::new()), ThreadNote::default());
    }

    #[test]
    fn counts_and_statuses() {
        let m: Mapping = serde_yaml::from_str("a: 2.0\nb: 1.5\nc: '7'\nd: -3\ne: 1e300\n").unwrap();
        assert_eq!(count_of(&m, "a"), Some(2));
        assert_eq!(count_of(&m, "b"), None);
        assert_eq!(count_of(&m, "c"), Some(7));
        assert_eq!(count_of(&m, "d"), None);
        assert_eq!(count_of(&m, "e"), None);
        assert!(Status::Handled.is_done() && Status::Error.is_done());
        assert!(!Status::Working.is_done());
    }
}
