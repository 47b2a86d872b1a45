//! Notes: front-matter split, parse, tags, and byte-preserving edits.
//!
//! This layer does no I/O. It works on the raw text of a note and keeps the
//! body as a `&str` slice, touching only the front-matter block (the zola
//! approach). Edits change only the top-level keys vaultrunner owns and leave
//! every other byte — other keys, their order, comments, quoting, line
//! endings, the body — exactly as it was.

use serde_yaml::{Mapping, Value};

mod kinds;
pub use kinds::{
    InboundMessage, MESSAGE_KEYS, OutboundMessage, ROUTING_KEYS, Status, ThreadNote, count_of,
    number_of, parse_ts,
};

/// The tag kinds of SPEC §2.
pub const TAG_DEFINITION: &str = "agent/definition";
pub const TAG_MESSAGE: &str = "agent/message";
pub const TAG_INBOUND: &str = "agent/message/inbound";
pub const TAG_OUTBOUND: &str = "agent/message/outbound";
pub const TAG_THREAD: &str = "agent/thread";
pub const TAG_JOB: &str = "agent/job";

/// Where the front-matter block sits in a note's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    /// The YAML between the fences (may be empty).
    pub yaml: &'a str,
    /// Byte offset of the YAML start within the note text.
    pub yaml_start: usize,
    /// Byte offset just past the closing fence line (start of the body).
    pub body_start: usize,
    /// The body.
    pub body: &'a str,
    /// Whether the front-matter block exists at all.
    pub has_front_matter: bool,
}

/// Splits a note into front-matter YAML and body. A note without a first
/// line `---`, or whose block never closes, has no front-matter.
pub fn split(text: &str) -> Split<'_> {
    let none = Split {
        yaml: "",
        yaml_start: 0,
        body_start: 0,
        body: text,
        has_front_matter: false,
    };
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let rest = &text[start..];
    let Some(first_end) = rest.find('\n') else {
        return none;
    };
    if rest[..first_end].trim_end_matches('\r').trim_end() != "---" {
        return none;
    }
    let yaml_start = start + first_end + 1;
    let mut pos = yaml_start;
    while pos <= text.len() {
        let line_end = text[pos..].find('\n').map(|i| pos + i);
        let line = &text[pos..line_end.unwrap_or(text.len())];
        let trimmed = line.trim_end_matches('\r').trim_end();
        if trimmed == "---" || trimmed == "..." {
            let body_start = line_end.map(|e| e + 1).unwrap_or(text.len());
            return Split {
                yaml: &text[yaml_start..pos],
                yaml_start,
                body_start,
                body: &text[body_start..],
                has_front_matter: true,
            };
        }
        match line_end {
            Some(e) => pos = e + 1,
            None => break,
        }
    }
    none
}

/// Why front-matter could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontMatterError {
    #[error("invalid YAML front-matter: {0}")]
    Yaml(String),
    #[error("front-matter is not a mapping of keys to values")]
    NotMapping,
}

/// Parses front-matter YAML into a mapping. Empty YAML is an empty mapping.
pub fn parse_yaml(yaml: &str) -> Result<Mapping, FrontMatterError> {
    if yaml.trim().is_empty() {
        return Ok(Mapping::new());
    }
    if let Some(m) = crate::simple_yaml::parse(yaml) {
        return Ok(m);
    }
    match serde_yaml::from_str::<Value>(yaml) {
        Ok(Value::Mapping(m)) => Ok(m),
        Ok(Value::Null) => Ok(Mapping::new()),
        Ok(_) => Err(FrontMatterError::NotMapping),
        Err(e) => Err(FrontMatterError::Yaml(e.to_string())),
    }
}

/// A parsed note: its metadata, tags and body.
#[derive(Debug, Clone)]
pub struct Note {
    pub meta: Mapping,
    /// Lowercased tags without `#`, front-matter ∪ inline, deduplicated.
    pub tags: Vec<String>,
    pub body: String,
}

impl Note {
    /// Parses a note's text. Invalid front-matter is an error value, never a
    /// panic; the caller reports it with the file's path.
    pub fn parse(text: &str) -> Result<Note, FrontMatterError> {
        let s = split(text);
        let meta = parse_yaml(s.yaml)?;
        let mut tags = front_matter_tags(&meta);
        for t in inline_tags(s.body) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        Ok(Note {
            meta,
            tags,
            body: s.body.to_string(),
        })
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// A string-ish value of a key (strings, numbers and booleans render as
    /// text), or `None` when absent, null or a collection.
    pub fn str(&self, key: &str) -> Option<String> {
        get_str(&self.meta, key)
    }

    /// The first present key of several spellings (snake_case, camelCase).
    pub fn str_any(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| self.str(k))
    }

    /// A key as text, or an error naming it when it holds a list or a
    /// mapping (see [`get_text`]).
    pub fn text(&self, key: &str) -> Result<Option<String>, FieldError> {
        get_text(&self.meta, key)
    }

    /// The first present key of several spellings, as [`Note::text`].
    pub fn text_any(&self, keys: &[&str]) -> Result<Option<String>, FieldError> {
        for k in keys {
            if let Some(v) = self.text(k)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// What kind of note this is, by the rules of SPEC §2.
    pub fn kind(&self) -> NoteKind {
        let outbound = self.has_tag(TAG_OUTBOUND)
            || self
                .str("direction")
                .is_some_and(|d| d.eq_ignore_ascii_case("outbound"));
        if self.has_tag(TAG_DEFINITION) {
            return NoteKind::Definition;
        }
        if self.has_tag(TAG_JOB) {
            return NoteKind::Job;
        }
        if self.has_tag(TAG_THREAD) {
            return NoteKind::Thread;
        }
        if outbound {
            return NoteKind::Outbound;
        }
        if self.has_tag(TAG_INBOUND) {
            return NoteKind::Inbound;
        }
        NoteKind::Other
    }
}

/// The kinds of SPEC §2. A note with several kinds' tags is not inbound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoteKind {
    Definition,
    Inbound,
    Outbound,
    Thread,
    Job,
    Other,
}

/// Reads a key as text: strings as they are, numbers and booleans rendered.
pub fn get_str(meta: &Mapping, key: &str) -> Option<String> {
    match meta.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => match &t.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A front-matter key whose value is not of the type vaultrunner expects
/// (`backend: [claude]`): reported with the file and the field, never read
/// as if the key were absent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// What a YAML value is, in words (for errors).
pub fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Reads a key as text like [`get_str`] (strings as they are, numbers and
/// booleans rendered; absent or empty is `None`), but a list, a mapping or
/// a tagged non-string is an error naming the key instead of "absent".
pub fn get_text(meta: &Mapping, key: &str) -> Result<Option<String>, FieldError> {
    match meta.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match get_str(meta, key) {
            Some(s) => Ok(Some(s)),
            None => Err(FieldError::new(
                key,
                format!("expected a single value, got {}", value_kind(v)),
            )),
        },
    }
}

fn normalize_tag(t: &str) -> Option<String> {
    let t = t.trim().trim_start_matches('#').trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_lowercase())
    }
}

/// Tags from `tags` (or `tag`): a YAML list, or a string separated by commas
/// and/or spaces.
pub fn front_matter_tags(meta: &Mapping) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        for part in s.split(|c: char| c == ',' || c.is_whitespace()) {
            if let Some(t) = normalize_tag(part)
                && !out.contains(&t)
            {
                out.push(t);
            }
        }
    };
    for key in ["tags", "tag"] {
        match meta.get(key) {
            Some(Value::String(s)) => push(s),
            Some(Value::Sequence(seq)) => {
                for v in seq {
                    if let Value::String(s) = v {
                        push(s);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-' || c == '/'
}

/// Inline `#tags` in Markdown text, outside code blocks and inline code.
/// A tag follows the start of a text run or whitespace, and is not all
/// digits (Obsidian's rule, so `#123` is not a tag).
pub fn inline_tags(body: &str) -> Vec<String> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut out: Vec<String> = Vec::new();
    if !body.contains('#') {
        return out;
    }
    let mut in_code_block = 0usize;
    // Text events of one paragraph can be split (e.g. around `[`), so the
    // "preceded by whitespace" rule looks at the previous text's last char.
    let mut prev_char: Option<char> = None;
    for ev in Parser::new(body) {
        match ev {
            Event::Start(Tag::CodeBlock(_)) => in_code_block += 1,
            Event::End(TagEnd::CodeBlock) => in_code_block = in_code_block.saturating_sub(1),
            Event::Text(t) if in_code_block == 0 => {
                scan_tags(&t, prev_char, &mut out);
                prev_char = t.chars().last();
            }
            Event::Code(_) | Event::Html(_) | Event::InlineHtml(_) => prev_char = Some('x'),
            Event::SoftBreak | Event::HardBreak => prev_char = None,
            Event::Start(_) | Event::End(_) => prev_char = None,
            _ => {}
        }
    }
    out
}

fn scan_tags(text: &str, prev: Option<char>, out: &mut Vec<String>) {
    let mut last = prev;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '#' && last.is_none_or(char::is_whitespace) {
            let rest = &text[i + 1..];
            let end = rest.find(|ch: char| !is_tag_char(ch)).unwrap_or(rest.len());
            // The digits rule applies to the tag as kept: `#1/` is `1`, no tag.
            let tag = rest[..end].trim_end_matches('/');
            if !tag.is_empty()
                && !tag.chars().all(|ch| ch.is_ascii_digit())
                && let Some(t) = normalize_tag(tag)
                && !out.contains(&t)
            {
                out.push(t);
            }
        }
        last = Some(c);
        let _ = chars.peek();
    }
}

/// Whether the text holds Git conflict markers (a `<<<<<<<` line, a
/// `=======` line and a `>>>>>>>` line, in that order).
pub fn has_conflict_markers(text: &str) -> bool {
    let mut stage = 0;
    for line in text.lines() {
        match stage {
            0 if line.starts_with("<<<<<<<") => stage = 1,
            1 if line.trim_end() == "=======" => stage = 2,
            2 if line.starts_with(">>>>>>>") => return true,
            _ => {}
        }
    }
    false
}

/// A front-matter value vaultrunner writes.
#[derive(Debug, Clone, PartialEq)]
pub enum FmValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Removes the key.
    Remove,
}

impl From<&str> for FmValue {
    fn from(s: &str) -> Self {
        FmValue::Str(s.to_string())
    }
}
impl From<String> for FmValue {
    fn from(s: String) -> Self {
        FmValue::Str(s)
    }
}
impl From<i64> for FmValue {
    fn from(n: i64) -> Self {
        FmValue::Int(n)
    }
}
impl From<u64> for FmValue {
    fn from(n: u64) -> Self {
        FmValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<bool> for FmValue {
    fn from(b: bool) -> Self {
        FmValue::Bool(b)
    }
}

impl FmValue {
    fn to_value(&self) -> Option<Value> {
        match self {
            FmValue::Str(s) => Some(Value::String(s.clone())),
            FmValue::Int(n) => Some(Value::Number((*n).into())),
            FmValue::Float(f) => Some(Value::Number((*f).into())),
            FmValue::Bool(b) => Some(Value::Bool(*b)),
            FmValue::Remove => None,
        }
    }

    /// Renders the value as a YAML scalar on one line.
    pub fn render(&self) -> String {
        match self {
            FmValue::Str(s) => render_str(s),
            FmValue::Int(n) => n.to_string(),
            FmValue::Float(f) => {
                let s = format!("{f}");
                if s.contains('.') || s.contains('e') {
                    s
                } else {
                    format!("{s}.0")
                }
            }
            FmValue::Bool(b) => b.to_string(),
            FmValue::Remove => String::new(),
        }
    }
}

/// Renders a string as a YAML scalar: plain when unambiguous, else
/// double-quoted with escapes (always one line).
pub fn render_str(s: &str) -> String {
    let plain_ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "_-./:+@".contains(c))
        && !s.starts_with(['-', ':', '.', '@'])
        && !s.ends_with(':')
        && !s.contains(": ")
        && !looks_special(s);
    if plain_ok {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Strings a YAML parser would read as something other than a string.
fn looks_special(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    matches!(
        l.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "~"
    ) || s.parse::<f64>().is_ok()
        || s.starts_with("0x")
        || s.starts_with("0o")
        || (s.chars().next().is_some_and(|c| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_digit() || c == '_' || c == ':'))
}

/// Why an edit could not be done byte-preservingly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    FrontMatter(#[from] FrontMatterError),
}

/// Sets (or removes) top-level keys in a note's front-matter, changing
/// nothing else. Existing keys are replaced where they stand (a trailing
/// `# comment` on the key's line is kept); new keys are appended at the end
/// of the block; a note without front-matter gains one. The result is
/// verified by re-parsing: every other key must keep its value. When the
/// front-matter's layout defeats the line editor (flow style `{…}`, a key
/// written as `? key`), the block is re-serialized instead; comments in it
/// are then lost, which is reported through the returned flag.
pub fn edit_front_matter(
    text: &str,
    changes: &[(&str, FmValue)],
) -> Result<(String, bool), EditError> {
    let s = split(text);
    let before = parse_yaml(s.yaml)?;
    let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut expected = before.clone();
    for (k, v) in changes {
        match v.to_value() {
            Some(val) => {
                expected.insert(Value::String((*k).to_string()), val);
            }
            None => {
                expected.remove(*k);
            }
        }
    }
    if !s.has_front_matter {
        let mut out = String::with_capacity(text.len() + 64);
        out.push_str("---");
        out.push_str(nl);
        for (k, v) in changes {
            if *v != FmValue::Remove {
                out.push_str(&format!("{k}: {}{nl}", v.render()));
            }
        }
        out.push_str("---");
        out.push_str(nl);
        out.push_str(text);
        return Ok((out, false));
    }
    let new_yaml = edit_yaml_lines(s.yaml, changes, nl);
    if let Ok(after) = parse_yaml(&new_yaml)
        && mappings_equal(&after, &expected)
    {
        let mut out = String::with_capacity(text.len() + 64);
        out.push_str(&text[..s.yaml_start]);
        out.push_str(&new_yaml);
        out.push_str(&text[s.yaml_start + s.yaml.len()..]);
        return Ok((out, false));
    }
    // Fallback: re-serialize the whole mapping.
    let mut yaml = serde_yaml::to_string(&Value::Mapping(expected))
        .map_err(|e| FrontMatterError::Yaml(e.to_string()))?;
    if nl == "\r\n" {
        yaml = yaml.replace('\n', "\r\n");
    }
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str(&text[..s.yaml_start]);
    out.push_str(&yaml);
    out.push_str(&text[s.yaml_start + s.yaml.len()..]);
    Ok((out, true))
}

fn mappings_equal(a: &Mapping, b: &Mapping) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// A top-level key's span of lines: its own line and the continuation lines
/// (indented, or blank/comment lines followed by more indented lines).
fn top_level_key(line: &str) -> Option<&str> {
    let first = line.chars().next()?;
    if first.is_whitespace() || first == '#' || first == '-' || first == '?' {
        return None;
    }
    // Lines come with their terminator: a key with an empty value (`reply:`)
    // ends in `:\n`, which must count as `:` at the end of the line.
    let line = line.trim_end_matches(['\n', '\r']);
    // Key is up to the first ':' followed by space or end of line.
    let bytes = line.as_bytes();
    if first == '"' || first == '\'' {
        let close = line[1..].find(first)? + 1;
        if bytes.get(close + 1) != Some(&b':') {
            return None;
        }
        return Some(&line[1..close]);
    }
    bytes.iter().enumerate().find_map(|(i, b)| {
        (*b == b':' && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t')))
            .then(|| line[..i].trim_end())
    })
}

/// Finds the trailing ` # comment` of a plain scalar line, if any.
fn trailing_comment(value_part: &str) -> Option<&str> {
    let v = value_part.trim_start();
    if v.starts_with('"') || v.starts_with('\'') {
        let q = v.chars().next()?;
        let close = v[1..].find(q)? + 1;
        let after = &v[close + 1..];
        let pos = after.find(" #")?;
        return Some(after[pos..].trim_end_matches('\r'));
    }
    let pos = value_part.find(" #")?;
    Some(value_part[pos..].trim_end_matches('\r'))
}

fn edit_yaml_lines(yaml: &str, changes: &[(&str, FmValue)], nl: &str) -> String {
    // Split into lines keeping terminators.
    let mut lines: Vec<&str> = yaml.split_inclusive('\n').collect();
    let ends_with_nl = yaml.is_empty() || yaml.ends_with('\n');
    // Map key -> (start line, end line exclusive).
    let spans = |lines: &[&str]| -> Vec<(String, usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(line) = lines.get(i) {
            if let Some(k) = top_level_key(line) {
                let start = i;
                let mut end = i + 1;
                let mut j = i + 1;
                while let Some(next) = lines.get(j) {
                    let l = next.trim_end_matches(['\n', '\r']);
                    let first = l.chars().next();
                    if matches!(first, Some(c) if c.is_whitespace())
                        || (first == Some('-') && !l.starts_with("---"))
                    {
                        end = j + 1;
                        j += 1;
                    } else if l.trim().is_empty() || first == Some('#') {
                        j += 1; // maybe inside; only counts if more continuation follows
                    } else {
                        break;
                    }
                }
                out.push((k.to_string(), start, end));
                i = end;
            } else {
                i += 1;
            }
        }
        out
    };
    let mut replaced: Vec<(usize, usize, Option<String>)> = Vec::new();
    let mut appended: Vec<String> = Vec::new();
    let existing = spans(&lines);
    // A key named twice: the last change wins, as in the mapping the
    // result is checked against.
    let mut seen: Vec<&str> = Vec::new();
    let last_wins: Vec<&(&str, FmValue)> = changes
        .iter()
        .rev()
        .filter(|(k, _)| {
            let first = !seen.contains(k);
            seen.push(k);
            first
        })
        .collect();
    for (k, v) in last_wins.into_iter().rev() {
        let found = existing.iter().find(|(key, _, _)| key == k);
        match (found, v) {
            (Some((_, s, e)), FmValue::Remove) => replaced.push((*s, *e, None)),
            (Some((_, s, e)), v) => {
                let Some(first) = lines.get(*s) else { continue };
                let colon = first.find(':').map(|c| c + 1).unwrap_or(first.len());
                let comment = if e - s == 1 {
                    trailing_comment(first[colon..].trim_end_matches(['\n', '\r']))
                        .map(str::to_string)
                } else {
                    None
                };
                let key_text = first[..colon].to_string();
                let mut line = format!("{key_text} {}", v.render());
                if let Some(c) = comment {
                    line.push_str(&c);
                }
                line.push_str(nl);
                replaced.push((*s, *e, Some(line)));
            }
            (None, FmValue::Remove) => {}
            (None, v) => appended.push(format!("{k}: {}{nl}", v.render())),
        }
    }
    replaced.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    for (s, e, new) in replaced {
        // Spans never overlap: one per key, each key changed once.
        if s <= e && e <= owned.len() {
            owned.splice(s..e, new);
        }
    }
    if !appended.is_empty() {
        if !ends_with_nl && let Some(last) = owned.last_mut() {
            last.push_str(nl);
        }
        owned.extend(appended);
    }
    lines.clear();
    owned.concat()
}

/// Renders a new note that vaultrunner creates: front-matter from ordered
/// key/value pairs plus a body.
pub fn render_new(tags: &[&str], fields: &[(&str, FmValue)], body: &str) -> String {
    let mut out = String::with_capacity(256 + body.len());
    out.push_str("---\n");
    if !tags.is_empty() {
        out.push_str("tags:\n");
        for t in tags {
            out.push_str(&format!("  - {t}\n"));
        }
    }
    for (k, v) in fields {
        if *v != FmValue::Remove {
            out.push_str(&format!("{k}: {}\n", v.render()));
        }
    }
    out.push_str("---\n");
    out.push_str(body);
    if !body.is_empty() && !body.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Lowercase slug: runs of characters other than letters and digits become
/// `-`, trimmed, capped in length so it is always a safe file name.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    let mut dash = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            for l in c.to_lowercase() {
                out.push(l);
            }
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    // Cap at 80 bytes on a char boundary.
    if out.len() > 80 {
        let mut cut = 80;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        while out.ends_with('-') {
            out.pop();
        }
    }
    out
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between releases;
/// this one names files, so it must not).
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The reply note's path: `<inbound dir>/<inbound stem>.reply`, derived only
/// from the inbound's path (a very long stem is shortened with a hash so the
/// file name stays within limits).
pub fn reply_path(inbound: &str) -> String {
    derived_path(inbound, "reply")
}

/// `<inbound dir>/<stem>.<suffix>`, shortened the same way as replies.
pub fn derived_path(inbound: &str, suffix: &str) -> String {
    let (dir, stem) = match inbound.rsplit_once('/') {
        Some((d, s)) => (Some(d), s),
        None => (None, inbound),
    };
    let stem = if stem.len() > 160 {
        let mut cut = 140;
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}-{:08x}", &stem[..cut], fnv1a(stem) as u32)
    } else {
        stem.to_string()
    };
    match dir {
        Some(d) => format!("{d}/{stem}.{suffix}"),
        None => format!("{stem}.{suffix}"),
    }
}

/// Percent-encodes all but the unreserved characters (RFC 3986), for a
/// URL's path segment or query value: `a b/é` → `a%20b%2F%C3%A9`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A wiki link to a note path: `[[path]]`.
pub fn link(path: &str) -> String {
    format!("[[{path}]]")
}

/// The path inside a `[[path]]` or `[[path|alias]]` link, or the text itself.
pub fn unlink(s: &str) -> &str {
    let t = s.trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .unwrap_or(t);
    inner.split('|').next().unwrap_or(inner).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_valid_missing_unclosed() {
        let s = split("---\na: 1\n---\nbody\n");
        assert!(s.has_front_matter);
        assert_eq!(s.yaml, "a: 1\n");
        assert_eq!(s.body, "body\n");
        let s = split("no front matter\n---\n");
        assert!(!s.has_front_matter);
        assert_eq!(s.body, "no front matter\n---\n");
        let s = split("---\na: 1\nnever closed\n");
        assert!(!s.has_front_matter);
        let s = split("---\r\na: 1\r\n...\r\nbody");
        assert!(s.has_front_matter);
        assert_eq!(s.yaml, "a: 1\r\n");
        assert_eq!(s.body, "body");
        let s = split("---\n---\n");
        assert!(s.has_front_matter);
        assert_eq!(s.yaml, "");
        assert_eq!(s.body, "");
    }

    #[test]
    fn invalid_yaml_is_an_error_value() {
        let err = Note::parse("---\nagent: [unclosed\n---\nhi").unwrap_err();
        assert!(matches!(err, FrontMatterError::Yaml(_)), "{err:?}");
        let err = Note::parse("---\n- a\n- b\n---\nhi").unwrap_err();
        assert_eq!(err, FrontMatterError::NotMapping);
    }

    #[test]
    fn tags_from_list_string_singular_and_inline() {
        let n = Note::parse("---\ntags: [Agent/Message/Inbound, '#foo']\n---\n").unwrap();
        assert_eq!(n.tags, vec!["agent/message/inbound", "foo"]);
        let n = Note::parse("---\ntags: agent/message, agent/message/inbound x\n---\n").unwrap();
        assert_eq!(n.tags, vec!["agent/message", "agent/message/inbound", "x"]);
        let n = Note::parse("---\ntag: agent/job\n---\n").unwrap();
        assert_eq!(n.tags, vec!["agent/job"]);
        let n = Note::parse("hello #Agent/Message/Inbound world #123 #a-b_c/d").unwrap();
        assert_eq!(n.tags, vec!["agent/message/inbound", "a-b_c/d"]);
    }

    #[test]
    fn inline_tags_ignore_code_headings_links_urls() {
        let body = "# Heading\n\n`#agent/job` and\n\n```\n#agent/definition\n```\n\n    #indented/code\n\nsee [[Note#section]] and http://x.y/#frag and a#b\n\n- item #real\n";
        assert_eq!(inline_tags(body), vec!["real"]);
    }

    /// Found by the tags fuzz target: `#1/` gave the all-digits tag `1`.
    #[test]
    fn a_tag_all_digits_once_its_trailing_slash_goes_is_no_tag() {
        assert_eq!(inline_tags("#1/ #22// #3/a #x/"), vec!["3/a", "x"]);
    }

    #[test]
    fn kind_rules() {
        let k = |t: &str| Note::parse(t).unwrap().kind();
        assert_eq!(
            k("---\ntags: [agent/message/inbound]\n---\n"),
            NoteKind::Inbound
        );
        assert_eq!(
            k("---\ntags: [agent/message/inbound, agent/message/outbound]\n---\n"),
            NoteKind::Outbound
        );
        assert_eq!(
            k("---\ntags: [agent/message/inbound]\ndirection: outbound\n---\n"),
            NoteKind::Outbound
        );
        assert_eq!(k("---\ntags: [agent/message]\n---\n"), NoteKind::Other);
        assert_eq!(
            k("---\ntags: [agent/message/inbound, agent/thread]\n---\n"),
            NoteKind::Thread
        );
        // A reply quoting the inbound tag inline never becomes inbound.
        assert_eq!(
            k("---\ntags: [agent/message/outbound]\n---\nyou wrote #agent/message/inbound"),
            NoteKind::Outbound
        );
    }

    #[test]
    fn edit_replaces_in_place_and_keeps_everything_else() {
        let text = "---\n# my note\ntitle: \"Quoted: yes\"   # keep me\nstatus: pending # was pending\ntags:\n  - agent/message/inbound\nagent: echo\n---\nBody with #tag\n";
        let (out, lossy) = edit_front_matter(
            text,
            &[("status", "working".into()), ("attempts", 1i64.into())],
        )
        .unwrap();
        assert!(!lossy);
        assert_eq!(
            out,
            "---\n# my note\ntitle: \"Quoted: yes\"   # keep me\nstatus: working # was pending\ntags:\n  - agent/message/inbound\nagent: echo\nattempts: 1\n---\nBody with #tag\n"
        );
    }

    #[test]
    fn edit_keeps_crlf() {
        let text = "---\r\nagent: echo\r\nstatus: pending\r\n---\r\nhi\r\n";
        let (out, _) = edit_front_matter(
            text,
            &[("status", "handled".into()), ("reply", "[[x]]".into())],
        )
        .unwrap();
        assert_eq!(
            out,
            "---\r\nagent: echo\r\nstatus: handled\r\nreply: \"[[x]]\"\r\n---\r\nhi\r\n"
        );
    }

    #[test]
    fn edit_replaces_block_values_and_removes() {
        let text = "---\nerror: |\n  line one\n  line two\nkeep: 1\nsession: abc\n---\n";
        let (out, lossy) = edit_front_matter(
            text,
            &[("error", "short".into()), ("session", FmValue::Remove)],
        )
        .unwrap();
        assert!(!lossy);
        assert_eq!(out, "---\nerror: short\nkeep: 1\n---\n");
    }

    #[test]
    fn edit_adds_front_matter_when_missing() {
        let (out, _) = edit_front_matter(
            "just #agent/message/inbound text\n",
            &[("status", "working".into())],
        )
        .unwrap();
        assert_eq!(
            out,
            "---\nstatus: working\n---\njust #agent/message/inbound text\n"
        );
    }

    #[test]
    fn edit_flow_style_falls_back() {
        let text = "---\n{agent: echo, status: pending}\n---\nbody\n";
        let (out, lossy) = edit_front_matter(text, &[("status", "handled".into())]).unwrap();
        assert!(lossy);
        let n = Note::parse(&out).unwrap();
        assert_eq!(n.str("status").as_deref(), Some("handled"));
        assert_eq!(n.str("agent").as_deref(), Some("echo"));
        assert_eq!(n.body, "body\n");
    }

    #[test]
    fn render_str_roundtrips() {
        for s in [
            "plain",
            "with space",
            "true",
            "123",
            "1.5",
            "[[link]]",
            "a: b",
            "#x",
            "- x",
            "",
            "quote\"s",
            "multi\nline",
            "2026-11-21T15:04:05.123Z",
            "cli",
            "job:daily",
            "null",
            "tab\there",
            "ünïcode",
            "back\\slash",
            "0x1f",
            "12:30",
        ] {
            let yaml = format!("k: {}\n", render_str(s));
            let m = parse_yaml(&yaml).unwrap();
            assert_eq!(get_str(&m, "k").as_deref(), Some(s), "{yaml}");
            assert!(matches!(m.get("k"), Some(Value::String(_))), "{yaml}");
        }
    }

    #[test]
    fn slug_rules() {
        assert_eq!(slug("Weekly Report: Q3!"), "weekly-report-q3");
        assert_eq!(slug("../../etc/passwd"), "etc-passwd");
        assert_eq!(slug("!!!"), "");
        assert_eq!(slug("Ünïcode Title"), "ünïcode-title");
        assert!(slug(&"a".repeat(500)).len() <= 80);
    }

    #[test]
    fn conflict_markers() {
        assert!(has_conflict_markers(
            "a\n<<<<<<< HEAD\nx\n=======\ny\n>>>>>>> b\n"
        ));
        assert!(!has_conflict_markers("a\n=======\n"));
    }

    #[test]
    fn a_key_changed_twice_takes_the_last_value() {
        let text = "---\nerror: |\n  one\n  two\nkeep: 1\n---\nbody\n";
        let (out, lossy) = edit_front_matter(
            text,
            &[
                ("error", "first".into()),
                ("error", "second".into()),
                ("new", 1i64.into()),
                ("new", 2i64.into()),
            ],
        )
        .unwrap();
        assert!(!lossy);
        assert_eq!(out, "---\nerror: second\nkeep: 1\nnew: 2\n---\nbody\n");
    }

    #[test]
    fn text_values_and_wrong_types() {
        let n =
            Note::parse("---\na: x\nb: 2\nc: true\nd: [1]\ne: {k: v}\nf:\ng: !t s\n---\n").unwrap();
        assert_eq!(n.text("a").unwrap().as_deref(), Some("x"));
        assert_eq!(n.text("b").unwrap().as_deref(), Some("2"));
        assert_eq!(n.text("c").unwrap().as_deref(), Some("true"));
        assert_eq!(n.text("f").unwrap(), None);
        assert_eq!(n.text("missing").unwrap(), None);
        assert_eq!(n.text("g").unwrap().as_deref(), Some("s"));
        let e = n.text("d").unwrap_err();
        assert_eq!(e.field, "d");
        assert!(e.to_string().contains("a list"), "{e}");
        assert!(n.text("e").unwrap_err().reason.contains("a mapping"));
        assert_eq!(n.text_any(&["missing", "a"]).unwrap().as_deref(), Some("x"));
        assert!(n.text_any(&["d", "a"]).is_err());
    }

    #[test]
    fn unlink_forms() {
        assert_eq!(unlink("[[a/b]]"), "a/b");
        assert_eq!(unlink("[[a/b|alias]]"), "a/b");
        assert_eq!(unlink("a/b"), "a/b");
    }
}
