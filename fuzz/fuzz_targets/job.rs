//! Jobs: `job::parse_job` on any parsed note, then the fire times of an
//! accepted job (`next_after`, `upcoming`, `latest_between`, `fire_path`).
//!
//! Invariants: a refusal names a field and the file; an accepted job has a
//! valid agent and the body as its message; the fire-time invariants of
//! the cron target hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::agent;
use vaultrunner::job;
use vaultrunner::note::Note;
use vaultrunner_fuzz::{Picker, check_fire_times};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = Note::parse(text) else {
        return;
    };
    let mut p = Picker::new(data);
    let default_tz = *p.pick(vaultrunner_fuzz::ZONES);
    let default_tz: chrono_tz::Tz = default_tz.parse().unwrap_or(chrono_tz::Tz::UTC);
    match job::parse_job("Jobs/daily report", &n, default_tz) {
        Ok(j) => {
            assert!(agent::valid_name(&j.agent), "{:?}", j.agent);
            assert_eq!(j.body, n.body.trim());
            assert!(job::parse_cron(&j.cron_text).is_ok());
            check_fire_times(&j, &mut p);
        }
        Err(e) => {
            assert!(!e.field.is_empty() && !e.reason.is_empty());
            assert!(e.to_string().starts_with("Jobs/daily report.md: field `"));
        }
    }
});
