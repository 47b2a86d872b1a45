//! Git sync's note-level pieces (`vault::gitsync::ops`) on any three
//! texts — the note before vaultrunner's write, after it, and as someone
//! else left it upstream — split by NUL bytes.
//!
//! Invariants: nothing panics (and `find_secret` stays linear); replaying
//! vaultrunner's key changes onto the note it changed gives every value it
//! set; onto someone else's version it keeps that version's body; and a
//! replay is idempotent (replaying onto its own result changes nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::note;
use vaultrunner::vault::gitsync::ops::{self, OwnChange, Replayed};

fn meta(text: &str) -> Option<serde_yaml::Mapping> {
    note::parse_yaml(note::split(text).yaml).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = s.splitn(3, '\0');
    let (Some(base), Some(after), target) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let _ = ops::find_secret(s);
    let _ = ops::conflict_copy_path(base, chrono::DateTime::UNIX_EPOCH);
    let change = ops::own_change(Some(base), after);
    let _ = ops::own_change(None, after);
    if let OwnChange::Keys(keys) = &change
        && let Replayed::Write(t) = ops::replay(&change, Some(base), Some(base))
    {
        let (m, want) = (meta(&t).expect("the replayed note parses"), meta(after));
        if let Some(want) = want {
            for (k, _) in keys {
                let k = serde_yaml::Value::String(k.clone());
                assert_eq!(m.get(&k), want.get(&k), "key {k:?} of {t:?}");
            }
        }
        assert_eq!(note::split(&t).body, note::split(base).body);
        assert_eq!(
            ops::replay(&change, Some(base), Some(&t)),
            Replayed::Unchanged,
            "not idempotent on {t:?}"
        );
    }
    let Some(target) = target else { return };
    match ops::replay(&change, Some(base), Some(target)) {
        Replayed::Write(t) => {
            if matches!(change, OwnChange::Keys(_)) {
                assert_eq!(note::split(&t).body, note::split(target).body, "{t:?}");
                assert_eq!(
                    ops::replay(&change, Some(base), Some(&t)),
                    Replayed::Unchanged,
                    "not idempotent on {t:?}"
                );
            }
        }
        Replayed::Conflict { theirs, .. } => assert_eq!(theirs, target),
        Replayed::Unchanged | Replayed::Skipped { .. } => {}
    }
});
