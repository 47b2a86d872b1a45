//! A fast path for the front-matter most notes have: top-level `key: value`
//! lines with plain or simply quoted scalars, block lists of such scalars,
//! comments and blank lines. It builds exactly the mapping the full YAML
//! parser (`serde_yaml`) builds — the same scalar resolution, copied from
//! it — and gives up (`None`) on anything else, which then goes to the full
//! parser. Parsing front-matter was about half of vaultrunner's own CPU
//! time per turn (docs/PERFORMANCE.md); the full parser stays the
//! reference, and the tests compare the two on many inputs.

use serde_yaml::{Mapping, Number, Value};

/// Parses `yaml` if it is in the simple subset; `None` otherwise.
pub fn parse(yaml: &str) -> Option<Mapping> {
    if !yaml.chars().all(allowed_char) {
        return None;
    }
    let mut map = Mapping::new();
    let mut lines = yaml
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .peekable();
    while let Some(line) = lines.next() {
        if line.contains('\r') {
            return None;
        }
        if blank_or_comment(line) {
            continue;
        }
        let (key, rest) = split_key(line)?;
        let key = match resolve_plain(key)? {
            Value::String(k) => k,
            _ => return None,
        };
        if map.contains_key(key.as_str()) {
            // Duplicate keys are an error of the full parser: let it say so.
            return None;
        }
        let rest = rest.trim_start_matches(' ');
        let value = if rest.is_empty() || rest.starts_with('#') {
            // `key:` alone: a block list follows, or the value is null.
            let mut items = Vec::new();
            let mut indent = None;
            while let Some(next) = lines.peek() {
                if next.contains('\r') {
                    return None;
                }
                if blank_or_comment(next) {
                    lines.next();
                    continue;
                }
                let ind = next.len() - next.trim_start_matches(' ').len();
                let after = &next[ind..];
                if after == "-" || after.starts_with("- ") {
                    if *indent.get_or_insert(ind) != ind {
                        return None;
                    }
                    items.push(scalar(after[1..].trim_start_matches(' '))?);
                    lines.next();
                } else if ind > 0 {
                    return None;
                } else {
                    break;
                }
            }
            if items.is_empty() {
                Value::Null
            } else {
                Value::Sequence(items)
            }
        } else {
            scalar(rest)?
        };
        map.insert(Value::String(key), value);
    }
    Some(map)
}

/// Characters the YAML reader accepts as printable, without tab, the
/// Unicode line separators or a byte-order mark (all handled by the full
/// parser).
fn allowed_char(c: char) -> bool {
    matches!(c, '\n' | '\r' | ' '..='~')
        || (('\u{a0}'..='\u{d7ff}').contains(&c) && c != '\u{2028}' && c != '\u{2029}')
        || (('\u{e000}'..='\u{fffd}').contains(&c) && c != '\u{feff}')
        || ('\u{10000}'..='\u{10ffff}').contains(&c)
}

fn blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches(' ');
    t.is_empty() || t.starts_with('#')
}

/// `key: rest` or `key:` at the start of a line, with a plain key of
/// letters, digits, `_` and `-` (starting with a letter or `_`).
fn split_key(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(':')?;
    let key = &line[..colon];
    let mut chars = key.chars();
    if !chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return None;
    }
    let rest = &line[colon + 1..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((key, rest))
}

/// A value on one line: double-quoted without escapes, single-quoted
/// without `''`, or plain; then nothing but an optional comment.
fn scalar(text: &str) -> Option<Value> {
    let quote = text.chars().next()?;
    if quote == '"' || quote == '\'' {
        let inner = &text[1..];
        let close = inner.find(quote)?;
        let content = &inner[..close];
        let after = &inner[close + 1..];
        if quote == '"' && content.contains('\\') {
            return None;
        }
        if quote == '\'' && after.starts_with('\'') {
            return None;
        }
        let tail = after.trim_start_matches(' ');
        if !(tail.is_empty() || (tail.starts_with('#') && after.starts_with(' '))) {
            return None;
        }
        return Some(Value::String(content.to_string()));
    }
    if quote == '[' {
        return flow_list(text);
    }
    // A plain scalar may not start with an indicator.
    if "-?:,[]{}#&*!|>'\"%@`".contains(quote) {
        return None;
    }
    let value = match text.find(" #") {
        Some(i) => &text[..i],
        None => text,
    };
    let value = value.trim_end_matches(' ');
    if value.is_empty() || value.contains(": ") || value.ends_with(':') {
        return None;
    }
    resolve_plain(value)
}

/// `[a, b, c]` on one line, of plain scalars without flow indicators,
/// quotes, `:` or `#`; then nothing but an optional comment.
fn flow_list(text: &str) -> Option<Value> {
    let close = text.find(']')?;
    let after = &text[close + 1..];
    let tail = after.trim_start_matches(' ');
    if !(tail.is_empty() || (tail.starts_with('#') && after.starts_with(' '))) {
        return None;
    }
    let inner = text[1..close].trim_matches(' ');
    if inner.is_empty() {
        return Some(Value::Sequence(Vec::new()));
    }
    let mut items = Vec::new();
    for item in inner.split(',') {
        let item = item.trim_matches(' ');
        if item.is_empty()
            || item.contains(['[', ']', '{', '}', ':', '#', '"', '\''])
            || item.starts_with(['-', '?', '&', '*', '!', '|', '>', '%', '@', '`'])
        {
            return None;
        }
        items.push(resolve_plain(item)?);
    }
    Some(Value::Sequence(items))
}

/// How `serde_yaml` resolves an untagged plain scalar (its
/// `visit_untagged_scalar`): null, bool, integer, float, else string.
/// Integers beyond 64 bits are left to the full parser.
fn resolve_plain(v: &str) -> Option<Value> {
    if matches!(v, "null" | "Null" | "NULL" | "~") {
        return Some(Value::Null);
    }
    match v {
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Some(n) = parse_unsigned_int(v, u64::from_str_radix) {
        return Some(Value::Number(n.into()));
    }
    if let Some(n) = parse_negative_int(v, i64::from_str_radix) {
        return Some(Value::Number(n.into()));
    }
    if parse_unsigned_int(v, u128::from_str_radix).is_some()
        || parse_negative_int(v, i128::from_str_radix).is_some()
    {
        return None;
    }
    if !digits_but_not_number(v)
        && let Some(f) = parse_f64(v)
    {
        return Some(Value::Number(Number::from(f)));
    }
    Some(Value::String(v.to_string()))
}

type Radix<T> = fn(&str, u32) -> Result<T, std::num::ParseIntError>;

fn parse_unsigned_int<T>(scalar: &str, from_str_radix: Radix<T>) -> Option<T> {
    let unpositive = scalar.strip_prefix('+').unwrap_or(scalar);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(n) = from_str_radix(rest, radix) {
                return Some(n);
            }
        }
    }
    if unpositive.starts_with(['+', '-']) {
        return None;
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(unpositive, 10).ok()
}

fn parse_negative_int<T>(scalar: &str, from_str_radix: Radix<T>) -> Option<T> {
    for (prefix, radix) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = scalar.strip_prefix(prefix)
            && let Ok(n) = from_str_radix(&format!("-{rest}"), radix)
        {
            return Some(n);
        }
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(scalar, 10).ok()
}

fn parse_f64(scalar: &str) -> Option<f64> {
    let unpositive = match scalar.strip_prefix('+') {
        Some(u) if u.starts_with(['+', '-']) => return None,
        Some(u) => u,
        None => scalar,
    };
    if matches!(unpositive, ".inf" | ".Inf" | ".INF") {
        return Some(f64::INFINITY);
    }
    if matches!(scalar, "-.inf" | "-.Inf" | "-.INF") {
        return Some(f64::NEG_INFINITY);
    }
    if matches!(scalar, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN.copysign(1.0));
    }
    unpositive.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Leading zeros followed by digits: a string in YAML 1.2.
fn digits_but_not_number(scalar: &str) -> bool {
    let s = scalar.strip_prefix(['-', '+']).unwrap_or(scalar);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(yaml: &str) -> Result<Mapping, String> {
        match serde_yaml::from_str::<Value>(yaml) {
            Ok(Value::Mapping(m)) => Ok(m),
            Ok(Value::Null) => Ok(Mapping::new()),
            Ok(other) => Err(format!("not a mapping: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Debug text compares NaN with NaN, and numbers by kind and value.
    fn same(a: &Mapping, b: &Mapping) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    /// Whatever the fast path accepts, it reads exactly as the full parser.
    fn agrees(yaml: &str) -> bool {
        match parse(yaml) {
            None => false,
            Some(fast) => match full(yaml) {
                Ok(slow) => {
                    assert!(same(&fast, &slow), "{yaml:?}\nfast {fast:?}\nfull {slow:?}");
                    true
                }
                Err(e) => panic!("fast path accepted what the full parser refuses: {yaml:?}: {e}"),
            },
        }
    }

    const SCALARS: &[&str] = &[
        "plain",
        "two words",
        "hello world # not a comment?",
        "a#b",
        "C#",
        "x, y",
        "[[link]]",
        "a: b",
        "a:b",
        "ends:",
        "http://x.y/z?q=1",
        "true",
        "True",
        "TRUE",
        "tRue",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "Y",
        "null",
        "Null",
        "NULL",
        "nULL",
        "~",
        "0",
        "00",
        "007",
        "7",
        "-7",
        "+7",
        "-0",
        "+0",
        "1_000",
        "12345678901234567890",
        "123456789012345678901234567890",
        "-9223372036854775808",
        "-9223372036854775809",
        "0x1F",
        "0X1F",
        "0x",
        "-0x1F",
        "+0x1F",
        "0x-1",
        "0o17",
        "0o8",
        "0b101",
        "-0b1",
        "1.5",
        "-1.5",
        "+1.5",
        ".5",
        "5.",
        "1e3",
        "1E3",
        "1e",
        "1.0e-3",
        "inf",
        "-inf",
        "Infinity",
        "nan",
        "NaN",
        ".inf",
        ".Inf",
        "-.inf",
        "+.inf",
        ".nan",
        ".NaN",
        "1e400",
        "2026-11-21",
        "2026-11-21T15:04:05.123Z",
        "15:04",
        "1:30",
        "12:30:00",
        "0.0.1",
        "1,000",
        "v1.2",
        "#tag",
        "-x",
        "- x",
        "-",
        "?x",
        ":x",
        "@user",
        "`code`",
        "!tag x",
        "&a x",
        "*a",
        "|",
        ">",
        "%x",
        "'",
        "\"",
        "'single'",
        "\"double\"",
        "'it''s'",
        "\"esc\\\"aped\"",
        "\"back\\\\slash\"",
        "\"\"",
        "''",
        "\"a\" # c",
        "'a' # c",
        "\"a\"b",
        "'a'b",
        "\"a\"#c",
        "ünïcödé",
        "日本語",
        "emoji 🎉",
        "a\u{85}b",
        "a\u{2028}b",
        "tab\there",
        "{a: 1}",
        "[1, 2]",
        "a b ",
        "trailing # comment",
        "x #",
        "x#",
        "nul\u{0}l",
        "a\u{7f}b",
    ];

    #[test]
    fn every_accepted_scalar_reads_as_the_full_parser_reads_it() {
        let mut accepted = 0;
        for s in SCALARS {
            for form in [
                format!("key: [{s}]\n"),
                format!("key: [a, {s} ,b] # c\n"),
                format!("key: {s}\n"),
                format!("key:   {s}   \n"),
                format!("tags:\n  - {s}\n  - other\n"),
                format!("tags:\n- {s}\n"),
                format!("a: 1\nkey: {s}\r\nb: two\r\n"),
                format!("{s}: value\n"),
            ] {
                if agrees(&form) {
                    accepted += 1;
                }
            }
        }
        // The fast path must really take the common cases.
        assert!(accepted > 200, "only {accepted} forms took the fast path");
    }

    #[test]
    fn the_notes_vaultrunner_reads_most_take_the_fast_path() {
        for yaml in [
            "tags:\n  - agent/message\n  - agent/message/inbound\nagent: a001\nsender: you\nts: 2026-01-01T00:00:00.123Z\n",
            "tags:\n- agent/message/inbound\nagent: bot # the echo bot\nstatus: working\nattempts: 1\nthread: \"[[Threads/bot/bot]]\"\n",
            "tags:\n  - agent/thread\nagent: bot\nmode: single-threaded\ndefinition: \"[[Agents/bot]]\"\nbackend: echo\nstatus: ok\nstarted_at: 2026-11-21T15:04:05.123Z\nturn_count: 12\nsession: 5f0c3f0e-8d7b-4a57-9c43-1d2a3b4c5d6e\ntotal_cost_usd: 0.0123\n",
            "tags:\n  - agent/message\n  - agent/message/outbound\nagent: bot\ndirection: outbound\nin_reply_to: \"[[Inbox/m1]]\"\nstatus: ok\n",
            "# a comment\n\ntitle: My note\naliases:\n  - one\n  - two\ncreated: 2024-03-01 10:00\n",
        ] {
            assert!(agrees(yaml), "{yaml}");
        }
        for yaml in [
            "tags: [agent/message/inbound]\nagent: bot\n",
            "tags: [agent/message, agent/message/inbound] # both\n",
            "tags: []\n",
            "tags: [ a ,b,c ]\n",
        ] {
            assert!(agrees(yaml), "{yaml}");
        }
        // Nested or trailing-comma lists are left to the full parser.
        for yaml in [
            "tags: [a, [b]]\n",
            "tags: [a, ]\n",
            "tags: [a, b\n",
            "tags: [a]x\n",
        ] {
            assert!(parse(yaml).is_none(), "{yaml}");
        }
    }

    /// Random documents built from the scalars above and the line shapes
    /// of the subset (and some outside it): never a disagreement.
    #[test]
    fn random_documents_agree_with_the_full_parser() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let keys = ["a", "b", "tags", "status", "x-y", "_k", "k2", "true", "on"];
        let mut accepted = 0;
        for _ in 0..3000 {
            let mut doc = String::new();
            for _ in 0..1 + next(5) {
                let k = keys[next(keys.len())];
                let v = SCALARS[next(SCALARS.len())];
                let nl = if next(4) == 0 { "\r\n" } else { "\n" };
                match next(7) {
                    0 => doc.push_str(&format!("{k}:{nl}  - {v}{nl}  - {v}{nl}")),
                    1 => doc.push_str(&format!("{k}: [{v}, {v}]{nl}")),
                    2 => doc.push_str(&format!("# {v}{nl}{nl}")),
                    3 => doc.push_str(&format!("{k}:{nl}")),
                    4 => doc.push_str(&format!("{k}: {v} # {v}{nl}")),
                    5 => doc.push_str(&format!("{k}: {v}{nl}  {v}{nl}")),
                    _ => doc.push_str(&format!("{k}: {v}{nl}")),
                }
            }
            if agrees(&doc) {
                accepted += 1;
            }
        }
        assert!(
            accepted > 300,
            "only {accepted} documents took the fast path"
        );
    }

    #[test]
    fn shapes_outside_the_subset_go_to_the_full_parser() {
        for yaml in [
            "a: 1\na: 2\n",         // duplicate key: the full parser's error
            "a:\n  b: 1\n",         // nested mapping
            "a: one\n  two\n",      // multi-line plain scalar
            "a: |\n  block\n",      // block scalar
            "a:\n  - x\n    - y\n", // mixed indentation
            "a:\n  - x\n - y\n",
            "a:\n  -\n",      // empty item
            "a:\n  - k: v\n", // mapping in a list
            "\"quoted key\": 1\n",
            "key : 1\n",
            "\ta: 1\n",
            " a: 1\n",
            "- a\n",         // a list, not a mapping
            "a: 'x\n  y'\n", // quoted over two lines
            "true: 1\n",     // a key that is not a string
            "null: 1\n",
            "a: 1\rb: 2\n",
            "\u{feff}a: 1\n",
        ] {
            assert!(parse(yaml).is_none(), "{yaml:?}");
        }
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let yaml = "# top\r\n\r\na: 1 # one\r\n  # indented comment\r\nb:\r\n  # inside\r\n  - x # first\r\n\r\n  - 'y' # second\r\nc: \"z\"   # third\r\nd:\r\n";
        assert!(agrees(yaml));
        let m = parse(yaml).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m.get("d"), Some(&Value::Null));
    }
}
