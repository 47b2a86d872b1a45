//! A property (issue 9 point 7): an owned-key edit
//! (`note::edit_front_matter`) of any generated note leaves every byte
//! outside the owned keys' lines identical and re-parses to the same
//! values.
//!
//! The notes are built from segments that each know which top-level key
//! (if any) their lines belong to: plain, quoted and multi-line scalars,
//! block scalars, trailing and stand-alone comments, block and flow lists,
//! nested mappings, blank lines, CRLF, a BOM, empty and missing
//! front-matter, flow-style front-matter (the editor's lossy fallback), and
//! bodies holding `---` lines, `key: value` lines and `#tags`. Some notes
//! already hold owned keys. The edits set or remove owned keys.

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};
use vaultrunner::note::{self, FmValue, Note};

use crate::common::OWNED;

/// Keys a user writes (some with spaces, dashes, digits, underscores).
const OTHER_KEYS: &[&str] = &[
    "title",
    "agent",
    "tags",
    "aliases",
    "created at",
    "sender",
    "ts",
    "meta",
    "summary",
    "x-y",
    "_k",
    "k2",
    "Status",
    "statuses",
];

/// Plain scalars that read as text, numbers, booleans, dates or null.
const PLAIN: &[&str] = &[
    "hello world",
    "echo",
    "42",
    "-7",
    "3.14",
    "1e3",
    "true",
    "no",
    "null",
    "~",
    "2026-11-21",
    "2026-11-21T15:04:05.123Z",
    "12:30",
    "a#b",
    "C#",
    "http://x.y/z?q=1#frag",
    "ünïcödé 日本語",
    "agent/message/inbound",
    "007",
    "0x1F",
    "pending",
];

/// Text for double-quoted scalars (escaped when written).
const QUOTED: &[&str] = &[
    "[[Inbox/bot/m1.reply]]",
    "Planning: Q3 #1",
    "with \"quotes\" and \\ backslash",
    "",
    "- not a list",
    "multi\nline",
    "tab\there",
    "#not-a-comment",
    "---",
];

/// Lines of a body (joined with the note's line ending).
const BODY: &[&str] = &[
    "Some text.",
    "",
    "---",
    "...",
    "status: handled",
    "agent: someone-else",
    "#tag and #agent/message/inbound",
    "```",
    "- item",
    "> [!note] a callout #in-callout",
    "| a | b |",
    "![[image.png]]",
    "<<<<<<< not a conflict alone",
];

/// One top-level value shape.
#[derive(Debug, Clone)]
enum Shape {
    Plain(usize, bool),
    DoubleQuoted(usize, bool),
    SingleQuoted(usize),
    Empty,
    MultiLinePlain(usize, usize),
    Block(char, usize),
    BlockList(bool, usize, bool),
    FlowList(usize),
    Nested(usize, bool),
}

/// How a key is written.
#[derive(Debug, Clone, Copy)]
enum KeyForm {
    Plain,
    Double,
    Single,
}

#[derive(Debug, Clone)]
enum Item {
    Entry {
        key: usize,
        form: KeyForm,
        shape: Shape,
    },
    Comment(usize),
    Blank,
}

#[derive(Debug, Clone)]
enum FrontMatter {
    Missing,
    Empty,
    Block {
        bom: bool,
        items: Vec<Item>,
    },
    /// `{a: 1, status: x}` on one line: the editor re-serializes it.
    Flow(Vec<(usize, usize)>),
}

#[derive(Debug, Clone)]
struct GenNote {
    crlf: bool,
    fm: FrontMatter,
    body: Vec<usize>,
    /// Whether the body ends with a line ending.
    body_nl: bool,
}

/// A segment of the generated text: its bytes and the key they belong to.
struct Segment {
    owner: Option<String>,
    text: String,
    /// A single-line entry's trailing ` # comment`.
    trailing_comment: Option<String>,
}

/// All keys: the owned ones first, then the others.
fn key_name(i: usize) -> &'static str {
    if i < OWNED.len() {
        OWNED[i]
    } else {
        OTHER_KEYS[(i - OWNED.len()) % OTHER_KEYS.len()]
    }
}

fn quote(s: &str) -> String {
    note::render_str(s)
}

fn render_key(name: &str, form: KeyForm) -> String {
    match form {
        KeyForm::Plain => name.to_string(),
        KeyForm::Double => format!("\"{name}\""),
        KeyForm::Single => format!("'{name}'"),
    }
}

impl GenNote {
    fn nl(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }

    /// The note's text as segments.
    fn segments(&self) -> Vec<Segment> {
        let nl = self.nl();
        let mut out = Vec::new();
        let mut push = |owner: Option<&str>, text: String, trailing: Option<String>| {
            out.push(Segment {
                owner: owner.map(str::to_string),
                text,
                trailing_comment: trailing,
            })
        };
        match &self.fm {
            FrontMatter::Missing => {}
            FrontMatter::Empty => push(None, format!("---{nl}---{nl}"), None),
            FrontMatter::Flow(pairs) => {
                let inner: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}: {}", key_name(*k), quote(PLAIN[*v % PLAIN.len()])))
                    .collect();
                push(
                    None,
                    format!("---{nl}{{{}}}{nl}---{nl}", inner.join(", ")),
                    None,
                );
            }
            FrontMatter::Block { bom, items } => {
                let bom = if *bom { "\u{feff}" } else { "" };
                push(None, format!("{bom}---{nl}"), None);
                for item in items {
                    match item {
                        Item::Blank => push(None, nl.to_string(), None),
                        Item::Comment(c) => push(None, format!("# comment {c} #x{nl}"), None),
                        Item::Entry { key, form, shape } => {
                            let name = key_name(*key);
                            let k = render_key(name, *form);
                            let (text, trailing) = render_shape(&k, shape, nl);
                            push(Some(name), text, trailing);
                        }
                    }
                }
                push(None, format!("---{nl}"), None);
            }
        }
        let mut body: Vec<&str> = self.body.iter().map(|i| BODY[*i % BODY.len()]).collect();
        if matches!(self.fm, FrontMatter::Missing)
            && body.first().is_some_and(|l| l.starts_with("---"))
        {
            // A first line `---` would open a front-matter block.
            body.insert(0, "Some text.");
        }
        let mut b = body.join(nl);
        if self.body_nl && !b.is_empty() {
            b.push_str(nl);
        }
        push(None, b, None);
        out
    }

    fn text(&self) -> String {
        self.segments().iter().map(|s| s.text.as_str()).collect()
    }
}

/// A top-level entry's lines, and its trailing comment when it is one line.
fn render_shape(k: &str, shape: &Shape, nl: &str) -> (String, Option<String>) {
    let comment = |on: bool| {
        if on {
            " # trailing".to_string()
        } else {
            String::new()
        }
    };
    match shape {
        Shape::Plain(v, c) => (
            format!("{k}: {}{}{nl}", PLAIN[v % PLAIN.len()], comment(*c)),
            c.then(|| comment(true)),
        ),
        Shape::DoubleQuoted(v, c) => (
            format!(
                "{k}: {}{}{nl}",
                quote_always(QUOTED[v % QUOTED.len()]),
                comment(*c)
            ),
            c.then(|| comment(true)),
        ),
        Shape::SingleQuoted(v) => {
            let s = PLAIN[v % PLAIN.len()].replace('\'', "''");
            (format!("{k}: 'it''s {s}'{nl}"), None)
        }
        Shape::Empty => (format!("{k}:{nl}"), None),
        Shape::MultiLinePlain(v, n) => {
            let mut t = format!("{k}: first line{nl}");
            for i in 0..1 + n % 3 {
                t.push_str(&format!(
                    "  continued {i} {}{nl}",
                    PLAIN[(v + i) % PLAIN.len()]
                ));
            }
            (t, None)
        }
        Shape::Block(style, n) => {
            let indicator = match style {
                '>' => ">",
                '-' => "|-",
                _ => "|",
            };
            let mut t = format!("{k}: {indicator}{nl}  line one: not a key{nl}");
            if n % 2 == 0 {
                t.push_str(nl);
            }
            t.push_str(&format!(
                "  # not a comment{nl}    indented more{nl}  ---{nl}  last{nl}"
            ));
            (t, None)
        }
        Shape::BlockList(indented, n, inner_comment) => {
            let pre = if *indented { "  " } else { "" };
            let mut t = format!("{k}:{nl}");
            for i in 0..1 + n % 4 {
                if *inner_comment && i == 1 {
                    t.push_str(&format!("{pre}# between items{nl}"));
                }
                t.push_str(&format!("{pre}- {}{nl}", PLAIN[(n + i) % PLAIN.len()]));
            }
            (t, None)
        }
        Shape::FlowList(n) => {
            let items: Vec<&str> = (0..n % 4).map(|i| PLAIN[(n + i) % 5]).collect();
            (format!("{k}: [{}]{nl}", items.join(", ")), None)
        }
        Shape::Nested(n, with_list) => {
            let mut t = format!("{k}:{nl}  project: vaultrunner{nl}  status: nested-not-owned{nl}");
            if *with_list {
                t.push_str(&format!(
                    "  owners:{nl}    - alice{nl}    # who{nl}    - bob{nl}"
                ));
            }
            t.push_str(&format!("  depth:{nl}    n: {n}{nl}"));
            (t, None)
        }
    }
}

/// A double-quoted scalar even where a plain one would do.
fn quote_always(s: &str) -> String {
    let q = quote(s);
    if q.starts_with('"') {
        q
    } else {
        format!("\"{q}\"")
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        3 => (any::<usize>(), any::<bool>()).prop_map(|(v, c)| Shape::Plain(v, c)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(v, c)| Shape::DoubleQuoted(v, c)),
        1 => any::<usize>().prop_map(Shape::SingleQuoted),
        1 => Just(Shape::Empty),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(v, n)| Shape::MultiLinePlain(v, n)),
        1 => (prop::sample::select(vec!['|', '>', '-']), any::<usize>())
            .prop_map(|(s, n)| Shape::Block(s, n)),
        2 => (any::<bool>(), any::<usize>(), any::<bool>())
            .prop_map(|(i, n, c)| Shape::BlockList(i, n, c)),
        1 => any::<usize>().prop_map(Shape::FlowList),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, l)| Shape::Nested(n, l)),
    ]
}

fn key_form() -> impl Strategy<Value = KeyForm> {
    prop_oneof![6 => Just(KeyForm::Plain), 1 => Just(KeyForm::Double), 1 => Just(KeyForm::Single)]
}

fn item() -> impl Strategy<Value = Item> {
    let keys = OWNED.len() + OTHER_KEYS.len();
    prop_oneof![
        6 => (0..keys, key_form(), shape()).prop_map(|(key, form, shape)| Item::Entry { key, form, shape }),
        1 => any::<u8>().prop_map(|c| Item::Comment(c as usize)),
        1 => Just(Item::Blank),
    ]
}

/// Drops every entry whose key came before (YAML refuses duplicate keys).
fn unique(items: Vec<Item>) -> Vec<Item> {
    let mut seen = Vec::new();
    items
        .into_iter()
        .filter(|i| match i {
            Item::Entry { key, .. } => {
                let name = key_name(*key);
                if seen.contains(&name) {
                    false
                } else {
                    seen.push(name);
                    true
                }
            }
            _ => true,
        })
        .collect()
}

fn front_matter() -> impl Strategy<Value = FrontMatter> {
    let keys = OWNED.len() + OTHER_KEYS.len();
    prop_oneof![
        1 => Just(FrontMatter::Missing),
        1 => Just(FrontMatter::Empty),
        8 => (any::<bool>(), prop::collection::vec(item(), 0..12))
            .prop_map(|(bom, items)| FrontMatter::Block { bom: bom && items.len() % 3 == 0, items: unique(items) }),
        1 => prop::collection::vec((0..keys, any::<usize>()), 1..5).prop_map(|pairs| {
            let mut seen = Vec::new();
            FrontMatter::Flow(
                pairs
                    .into_iter()
                    .filter(|(k, _)| {
                        let fresh = !seen.contains(&key_name(*k));
                        seen.push(key_name(*k));
                        fresh
                    })
                    .collect(),
            )
        }),
    ]
}

fn gen_note() -> impl Strategy<Value = GenNote> {
    (
        any::<bool>(),
        front_matter(),
        prop::collection::vec(any::<usize>(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(crlf, fm, body, body_nl)| GenNote {
            crlf,
            fm,
            body,
            body_nl,
        })
}

/// What an edit writes into an owned key.
fn fm_value() -> impl Strategy<Value = FmValue> {
    let strs = vec![
        "working",
        "handled",
        "error",
        "[[Inbox/bot/m1.reply]]",
        "[[Threads/bot/bot]]",
        "2026-11-21T15:04:05.123Z",
        "backend failed: exit 1\nstderr: boom",
        "a: b",
        "#x",
        "---",
        "",
        "quote\" and \\",
        "ünïcode",
        "null",
        "123",
    ];
    prop_oneof![
        2 => Just(FmValue::Remove),
        1 => (0i64..5).prop_map(FmValue::Int),
        1 => any::<bool>().prop_map(FmValue::Bool),
        5 => prop::sample::select(strs).prop_map(FmValue::from),
    ]
}

fn edits() -> impl Strategy<Value = Vec<(&'static str, FmValue)>> {
    prop::collection::vec((prop::sample::select(OWNED.to_vec()), fm_value()), 1..5).prop_map(|v| {
        let mut seen = Vec::new();
        v.into_iter()
            .filter(|(k, _)| {
                let fresh = !seen.contains(k);
                seen.push(*k);
                fresh
            })
            .collect()
    })
}

fn written(v: &FmValue) -> Option<Value> {
    match v {
        FmValue::Str(s) => Some(Value::String(s.clone())),
        FmValue::Int(n) => Some(Value::Number((*n).into())),
        FmValue::Float(f) => Some(Value::Number((*f).into())),
        FmValue::Bool(b) => Some(Value::Bool(*b)),
        FmValue::Remove => None,
    }
}

/// Whether a line (at column 0) is `key:` for one of `keys`, plain or
/// quoted.
fn is_key_line(line: &str, keys: &[&str]) -> bool {
    keys.iter().any(|k| {
        [format!("{k}:"), format!("\"{k}\":"), format!("'{k}':")]
            .iter()
            .any(|p| line.starts_with(p.as_str()))
    })
}

/// The edited note without the edited keys' lines. The editor writes each
/// key it sets on one line, so in its output a key's lines are that line.
fn without_edited_lines(out: &str, keys: &[&str]) -> String {
    let mut kept = String::new();
    let mut in_fm = false;
    for (i, line) in out.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if i == 0 {
            in_fm = bare.trim_start_matches('\u{feff}') == "---";
            kept.push_str(line);
            continue;
        }
        if in_fm && (bare == "---" || bare == "...") {
            in_fm = false;
        } else if in_fm && is_key_line(line, keys) {
            continue;
        }
        kept.push_str(line);
    }
    kept
}

fn without(m: &Mapping, keys: &[&str]) -> Mapping {
    let mut m = m.clone();
    for k in keys {
        m.shift_remove(*k);
    }
    m
}

/// Checks one edit of one note; `Err` says what broke.
fn check(g: &GenNote, changes: &[(&str, FmValue)]) -> Result<(), TestCaseError> {
    let text = g.text();
    let before = Note::parse(&text).map_err(|e| {
        TestCaseError::fail(format!("generated note does not parse: {e}\n{text:?}"))
    })?;
    let (out, lossy) = note::edit_front_matter(&text, changes)
        .map_err(|e| TestCaseError::fail(format!("edit failed: {e}")))?;
    let after = Note::parse(&out)
        .map_err(|e| TestCaseError::fail(format!("edited note does not parse: {e}\n{out:?}")))?;
    for (k, v) in changes {
        let want = written(v);
        prop_assert_eq!(after.meta.get(*k), want.as_ref(), "key {}:\n{:?}", k, out);
    }
    let keys: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
    prop_assert_eq!(
        without(&before.meta, &keys),
        without(&after.meta, &keys),
        "{:?}",
        out
    );
    prop_assert_eq!(&after.body, &before.body);
    // Only flow-style front-matter defeats the line editor.
    let flow = matches!(g.fm, FrontMatter::Flow(_));
    prop_assert!(flow || !lossy, "lossy fallback on {:?}", text);
    if lossy {
        return Ok(());
    }
    // Every byte outside the edited keys' lines is as it was.
    let segments = g.segments();
    let mut expected: String = segments
        .iter()
        .filter(|s| s.owner.as_deref().is_none_or(|o| !keys.contains(&o)))
        .map(|s| s.text.as_str())
        .collect();
    if matches!(g.fm, FrontMatter::Missing) {
        // The new block's lines end as the note's do (LF when it has none).
        let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
        expected = format!("---{nl}---{nl}{expected}");
    }
    prop_assert_eq!(
        without_edited_lines(&out, &keys),
        expected,
        "\nbefore {:?}\nafter  {:?}",
        text,
        out
    );
    // A trailing comment on a one-line owned key survives a new value.
    for s in &segments {
        if let (Some(owner), Some(c)) = (&s.owner, &s.trailing_comment)
            && changes
                .iter()
                .any(|(k, v)| k == owner && *v != FmValue::Remove)
        {
            let line = out
                .split_inclusive('\n')
                .find(|l| is_key_line(l, &[owner.as_str()]))
                .unwrap_or_default();
            prop_assert!(
                line.trim_end().ends_with(c.as_str()),
                "comment lost: {:?}",
                line
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES=100000 for a longer run (docs/TESTING.md).
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn an_owned_key_edit_keeps_every_other_byte_and_value(g in gen_note(), changes in edits()) {
        check(&g, &changes)?;
    }
}

/// The generator really produces the shapes the property is about (a
/// property over notes that all lack front-matter would prove little).
#[test]
fn the_generator_covers_the_shapes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let g = gen_note().new_tree(&mut runner).map(|t| t.current());
        let Ok(g) = g else { continue };
        let text = g.text();
        for (name, hit) in [
            ("crlf", text.contains("\r\n")),
            ("bom", text.starts_with('\u{feff}')),
            ("no front-matter", matches!(g.fm, FrontMatter::Missing)),
            ("empty front-matter", matches!(g.fm, FrontMatter::Empty)),
            ("flow", matches!(g.fm, FrontMatter::Flow(_))),
            (
                "owned key present",
                OWNED.iter().any(|k| text.contains(&format!("\n{k}:"))),
            ),
            ("block scalar", text.contains(": |")),
            ("nested", text.contains("  project:")),
            ("list", text.contains("- ")),
            ("comment", text.contains("# comment")),
            ("trailing comment", text.contains(" # trailing")),
            ("quoted key", text.contains("\":") || text.contains("':")),
            ("body fence", text.matches("---").count() >= 3),
            ("body tag", text.contains("#agent/message/inbound")),
        ] {
            if hit {
                seen.insert(name);
            }
        }
    }
    assert_eq!(seen.len(), 14, "shapes seen: {seen:?}");
}
