//! Helpers shared by the fuzz targets: a deterministic choice of edits and
//! times from the input's hash (so the seeds stay plain notes), and the
//! invariants more than one target checks.

use serde_yaml::{Mapping, Value};
use vaultrunner::note::{self, FmValue};

/// The keys vaultrunner owns on an inbound note (SPEC §2).
pub const OWNED: &[&str] = &[
    "status",
    "attempts",
    "handled_at",
    "reply",
    "thread",
    "error",
];

/// Choices derived from the input: libFuzzer's mutations change the hash,
/// so every choice gets explored without a binary header in the seeds.
pub struct Picker(u64);

impl Picker {
    pub fn new(data: &[u8]) -> Picker {
        // FNV-1a.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in data {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Picker(h | 1)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values vaultrunner writes into owned keys, and some it could be made to
/// write (an error text holding YAML, a reply link, several lines).
pub fn owned_value(p: &mut Picker) -> FmValue {
    const STRS: &[&str] = &[
        "working",
        "handled",
        "error",
        "pending",
        "[[Inbox/bot/m1.reply]]",
        "[[Threads/bot/bot]]",
        "2026-03-29T01:30:00.000Z",
        "backend failed: exit status 1\nstderr: boom",
        "a: b",
        "- x",
        "#tag",
        "---",
        "...",
        "",
        " leading space",
        "trailing space ",
        "quote \" and \\ backslash",
        "null",
        "true",
        "123",
        "0x1f",
        "1e400",
        "tab\there",
        "ünïcode ✓",
        "{a: 1}",
        "[1, 2]",
        "'single'",
        "cr\rlf",
        "\u{feff}bom",
        "nul\u{0}byte",
        "line\u{2028}sep",
        "x # not a comment",
    ];
    match p.below(10) {
        0 => FmValue::Remove,
        1 => FmValue::Int(p.below(5) as i64),
        2 => FmValue::Int(i64::MIN + p.below(2) as i64),
        3 => FmValue::Bool(p.below(2) == 0),
        4 => FmValue::Float([0.5, -0.0, 1e300, 3.0][p.below(4)]),
        _ => FmValue::Str((*p.pick(STRS)).to_string()),
    }
}

/// A set of owned-key edits (each key at most once, as vaultrunner does).
pub fn owned_edits(p: &mut Picker) -> Vec<(&'static str, FmValue)> {
    let mut out = Vec::new();
    for k in OWNED {
        if p.below(3) != 0 {
            out.push((*k, owned_value(p)));
        }
    }
    out
}

/// The YAML value an edit writes (`None`: the key is removed).
pub fn written(v: &FmValue) -> Option<Value> {
    match v {
        FmValue::Str(s) => Some(Value::String(s.clone())),
        FmValue::Int(n) => Some(Value::Number((*n).into())),
        FmValue::Float(f) => Some(Value::Number((*f).into())),
        FmValue::Bool(b) => Some(Value::Bool(*b)),
        FmValue::Remove => None,
    }
}

/// Mapping equality, in order, that treats NaN as equal to NaN and tells
/// numbers' kinds apart (what the tests of src/simple_yaml.rs use).
pub fn same_mapping(a: &Mapping, b: &Mapping) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The same keys with the same values, in any order (NaN equal to NaN).
pub fn same_values(a: &Mapping, b: &Mapping) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, v)| {
            b.get(k)
                .is_some_and(|w| format!("{v:?}") == format!("{w:?}"))
        })
}

/// The invariants of [`note::split`] on any text.
pub fn check_split(text: &str) -> note::Split<'_> {
    let s = note::split(text);
    assert!(s.body_start <= text.len());
    assert_eq!(
        s.body,
        &text[s.body_start..],
        "body is the text after body_start"
    );
    if s.has_front_matter {
        let yaml_end = s.yaml_start + s.yaml.len();
        assert!(yaml_end <= s.body_start);
        assert_eq!(s.yaml, &text[s.yaml_start..yaml_end]);
        // The opening fence is the first line (after a BOM).
        let head = text[..s.yaml_start].trim_start_matches('\u{feff}');
        assert_eq!(head.trim_end(), "---", "opening fence {head:?}");
        let fence = text[yaml_end..s.body_start].trim_end();
        assert!(fence == "---" || fence == "...", "closing fence {fence:?}");
    } else {
        assert_eq!(s.body, text);
        assert!(s.yaml.is_empty());
    }
    s
}

/// Zones with daylight saving (north and south), half-hour and 45-minute
/// offsets, a 30-minute DST shift, a zone that skipped a day, and UTC.
pub const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "Pacific/Apia",
    "America/Santiago",
    "Asia/Tehran",
    "Europe/London",
];

/// Instants next to clock changes (and one far in the future).
pub fn instants() -> Vec<chrono::DateTime<chrono::Utc>> {
    [
        "2026-03-08T06:59:30Z", // New York springs forward at 07:00Z
        "2026-11-01T05:30:00Z", // New York falls back at 06:00Z
        "2026-03-29T00:59:59Z", // Berlin springs forward at 01:00Z
        "2026-10-25T00:30:00Z", // Berlin falls back at 01:00Z
        "2026-04-04T14:45:00Z", // Lord Howe: 30-minute shift at 15:00Z
        "2026-09-26T13:59:00Z",
        "2011-12-29T09:59:00Z", // Apia skipped 30 December 2011
        "2026-01-01T00:00:00.999Z",
        "2399-12-31T23:59:00Z",
    ]
    .iter()
    .filter_map(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    .map(|t| t.with_timezone(&chrono::Utc))
    .collect()
}

/// The fire-time invariants of a job, from an instant the picker chooses.
pub fn check_fire_times(j: &vaultrunner::job::Job, p: &mut Picker) {
    use chrono::Timelike;
    let ts = instants();
    let after = *p.pick(&ts);
    let next = j.next_after(after);
    if let Some(n) = next {
        assert!(n > after, "next_after({after}) = {n} is not later");
        assert_eq!(n.nanosecond(), 0, "{n}");
        assert_eq!(n.second(), 0, "{n}");
    }
    let count = 1 + p.below(40);
    let up = j.upcoming(after, count);
    assert!(up.len() <= count);
    assert_eq!(up.first().map(|t| t.with_timezone(&chrono::Utc)), next);
    for w in up.windows(2) {
        assert!(
            w[0] < w[1],
            "upcoming not increasing: {} then {}",
            w[0],
            w[1]
        );
    }
    // The latest fire up to the last of them is that one (when they are
    // all found: `upcoming` stops early only when the schedule ends).
    if let Some(last) = up.last() {
        let last = last.with_timezone(&chrono::Utc);
        assert_eq!(j.latest_between(after, last), Some(last));
        if up.len() > 1 {
            let before_last = up[up.len() - 2].with_timezone(&chrono::Utc);
            let just_before = last - chrono::Duration::seconds(1);
            assert_eq!(j.latest_between(after, just_before), Some(before_last));
        }
        let path = j.fire_path(last);
        assert!(
            path.starts_with(&format!("Inbox/{}/job--", j.agent)),
            "{path}"
        );
    } else {
        assert_eq!(
            j.latest_between(after, after + chrono::Duration::days(400)),
            None
        );
    }
}
