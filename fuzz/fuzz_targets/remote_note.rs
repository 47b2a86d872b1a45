//! A remote vault's notes: `parachute::Note::from_json` on any JSON a
//! server might send, then `vault::remote::mapping::text_of` (the note's
//! text) and `parts_of` (the text taken apart again for a write).
//!
//! Invariants: nothing panics; the text vaultrunner makes of any note it
//! accepted reads back as a note (its front-matter parses); taking that
//! text apart gives back the note's content exactly, and only tags the
//! note has (leading `#`s and blanks dropped).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::parachute::Note;
use vaultrunner::vault::remote::mapping::{bare_tag, parts_of, text_of};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(note) = Note::from_json(&v, 1 << 20) else {
        return;
    };
    let body = note.text().unwrap_or("").to_string();
    let text = text_of(&note, &body);
    if let Err(e) = vaultrunner::note::Note::parse(&text) {
        panic!("the text of {v} does not parse: {e}\n{text}");
    }
    let parts = match parts_of(&text) {
        Ok(p) => p,
        Err(e) => panic!("the text of {v} cannot be taken apart: {e}\n{text}"),
    };
    assert_eq!(parts.content, body, "content of {v}\n{text}");
    for t in &parts.tags {
        assert!(
            note.tags.iter().any(|n| bare_tag(n) == t),
            "tag {t:?} is not one of {:?}",
            note.tags
        );
    }
});
