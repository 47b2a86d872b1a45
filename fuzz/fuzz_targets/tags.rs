//! Tags: `note::inline_tags` on any Markdown, and the tags of `Note::parse`
//! (front-matter `tags`/`tag` ∪ inline).
//!
//! Invariants: every tag is non-empty, lowercase, without `#` or
//! whitespace, not all digits, and listed once; a tag found inside a code
//! span or block never counts (checked by fencing the body); the note's
//! tags are the front-matter tags followed by the new inline ones.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::note::{self, Note};

fn check_tags(tags: &[String]) {
    for (i, t) in tags.iter().enumerate() {
        assert!(!t.is_empty());
        assert!(!t.starts_with('#'), "{t:?}");
        assert!(!t.chars().any(char::is_whitespace), "{t:?}");
        assert_eq!(*t, t.to_lowercase(), "not lowercase: {t:?}");
        assert!(!tags[..i].contains(t), "listed twice: {t:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let inline = note::inline_tags(text);
    check_tags(&inline);
    for t in &inline {
        assert!(!t.chars().all(|c| c.is_ascii_digit()), "{t:?}");
    }
    // The same text as an indented code block holds no tags: every line
    // indented by four spaces after a blank line.
    let mut code = String::from("\n");
    for line in text.lines() {
        code.push_str("    ");
        code.push_str(line);
        code.push('\n');
    }
    if !text.contains(['\r', '\u{0}']) {
        assert!(
            note::inline_tags(&code).is_empty(),
            "tags in code: {code:?}"
        );
    }
    if let Ok(n) = Note::parse(text) {
        check_tags(&n.tags);
        let fm = note::front_matter_tags(&n.meta);
        check_tags(&fm);
        assert!(n.tags.starts_with(&fm), "front-matter tags come first");
        let body_tags = note::inline_tags(&n.body);
        for t in &body_tags {
            assert!(n.tags.contains(t), "inline tag {t:?} missing");
        }
        assert_eq!(
            n.tags.len(),
            fm.len() + body_tags.iter().filter(|t| !fm.contains(t)).count()
        );
        for tag in &n.tags {
            assert!(n.has_tag(tag));
        }
        let _ = n.kind();
    }
});
