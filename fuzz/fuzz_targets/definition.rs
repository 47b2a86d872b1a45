//! Definitions: `agent::parse_definition` on any parsed note (arbitrary
//! front-matter, every backend's keys).
//!
//! Invariants: it never panics (a definition value once killed `serve`);
//! an accepted definition has a valid name, a known backend, non-zero
//! timeouts and the body as its system prompt, a command agent has an
//! argv; a refusal names a field and the note's file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::agent;
use vaultrunner::backend::{self, KINDS, command::CommandBackend};
use vaultrunner::note::Note;
use vaultrunner_fuzz::Picker;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(note) = Note::parse(text) else {
        return;
    };
    let mut p = Picker::new(data);
    let path = *p.pick(&[
        "Agents/bot",
        "Agents/sub dir/Bot-2",
        "bot",
        "Agents/con",
        "Agents/ünï",
    ]);
    match agent::parse_definition(path, &note, KINDS) {
        Ok(d) => {
            assert!(agent::valid_name(&d.name), "{:?}", d.name);
            assert!(KINDS.iter().any(|k| k.name == d.backend), "{:?}", d.backend);
            let built = backend::built(&d);
            assert!(built.is_some(), "no backend built: {:?}", d.runner);
            assert!(!d.timeout.is_zero());
            assert!(!d.stall_timeout.is_zero());
            assert_eq!(d.system_prompt, note.body.trim());
            assert_eq!(d.path, path);
            if d.backend == "command" {
                let argv = built
                    .and_then(|b| b.downcast_ref::<CommandBackend>())
                    .map(|c| c.argv());
                assert!(
                    argv.is_some_and(|a| !a.is_empty()),
                    "command agent without argv"
                );
            }
            for key in ["stream", "enabled", "allow_delegation", "x"] {
                let _ = d.flag(key, true);
                let _ = d.str(key);
            }
        }
        Err(e) => {
            assert!(!e.field.is_empty());
            assert!(!e.reason.is_empty());
            assert!(
                e.to_string()
                    .starts_with(&format!("{path}.md: field `{}`", e.field))
            );
        }
    }
});
