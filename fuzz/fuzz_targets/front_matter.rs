//! Front-matter: `note::split`, `note::parse_yaml`, `Note::parse` and the
//! owned-key editor `note::edit_front_matter`, on any text.
//!
//! Invariants: the split's offsets describe the text; `Note::parse` fails
//! exactly when the front-matter's YAML does and then the editor refuses
//! too; after an edit the note still parses, the owned keys read back as
//! written (or are gone), every other key keeps its value, the text before
//! and after the YAML block (fences, body) is unchanged, and the same edit
//! again changes nothing (or, when the editor falls back to re-writing the
//! block, keeps every value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::note::{self, Note};
use vaultrunner_fuzz::{Picker, check_split, owned_edits, same_values, written};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let s = check_split(text);
    let yaml = note::parse_yaml(s.yaml);
    let parsed = Note::parse(text);
    assert_eq!(yaml.is_ok(), parsed.is_ok());
    let mut p = Picker::new(data);
    let changes = owned_edits(&mut p);
    let edited = note::edit_front_matter(text, &changes);
    let (Ok(before), Ok(n)) = (yaml, parsed) else {
        assert!(
            edited.is_err(),
            "edited a note whose front-matter does not parse"
        );
        return;
    };
    assert_eq!(n.body, s.body);
    let (out, lossy) = match edited {
        Ok(e) => e,
        Err(e) => panic!("the front-matter parses but the edit failed: {e}"),
    };
    let after = match Note::parse(&out) {
        Ok(a) => a,
        Err(e) => panic!("the edited note does not parse: {e}\n{out:?}"),
    };
    // The body is untouched; a note without front-matter keeps all of its
    // text as the body.
    assert_eq!(after.body, s.body, "body changed:\n{out:?}");
    for (k, v) in &changes {
        assert_eq!(
            after.meta.get(*k),
            written(v).as_ref(),
            "owned key {k} after the edit:\n{out:?}"
        );
    }
    let mut others = before.clone();
    let mut others_after = after.meta.clone();
    for (k, _) in &changes {
        others.remove(*k);
        others_after.remove(*k);
    }
    assert!(
        same_values(&others, &others_after),
        "other keys changed:\n{others:?}\n{others_after:?}\n{out:?}"
    );
    if s.has_front_matter {
        let yaml_end = s.yaml_start + s.yaml.len();
        assert!(
            out.starts_with(&text[..s.yaml_start]),
            "opening fence changed"
        );
        assert!(
            out.ends_with(&text[yaml_end..]),
            "closing fence or body changed"
        );
    } else {
        assert!(out.ends_with(text));
        assert!(!lossy);
    }
    // Once the keys hold their values, the same edit is a no-op (the
    // engine stamps a message several times with the same keys) unless
    // the editor falls back; either way the values stay.
    if !lossy {
        let (again, lossy2) = match note::edit_front_matter(&out, &changes) {
            Ok(e) => e,
            Err(e) => panic!("a second edit failed: {e}"),
        };
        if !lossy2 {
            assert_eq!(again, out, "a second edit changed the note");
        }
        match Note::parse(&again) {
            Ok(n2) => assert!(same_values(&n2.meta, &after.meta), "{again:?}"),
            Err(e) => panic!("the note edited twice does not parse: {e}\n{again:?}"),
        }
    }
});
