//! Cron: `job::parse_cron` on any text, and the fire times of an accepted
//! schedule (through `job::parse_job`, in a zone with daylight saving or an
//! odd offset, from an instant near a clock change).
//!
//! Invariants: bounded work (run with -timeout); `next_after` is strictly
//! later and a whole minute; `upcoming` is strictly increasing, at most `n`
//! long, and agrees with `next_after` and `latest_between`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::job;
use vaultrunner::note::{self, Note};
use vaultrunner_fuzz::{Picker, check_fire_times};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if job::parse_cron(text).is_err() {
        return;
    }
    let mut p = Picker::new(data);
    let zone = *p.pick(vaultrunner_fuzz::ZONES);
    let note_text = format!(
        "---\ntags: [agent/job]\nagent: bot\ncron: {}\ntz: {zone}\n---\nrun\n",
        note::render_str(text)
    );
    let n = match Note::parse(&note_text) {
        Ok(n) => n,
        Err(e) => panic!("the rendered job note does not parse: {e}\n{note_text:?}"),
    };
    let j = match job::parse_job("Jobs/j", &n, chrono_tz::Tz::UTC) {
        Ok(j) => j,
        Err(e) => panic!("parse_cron accepted {text:?} but parse_job refused: {e}"),
    };
    check_fire_times(&j, &mut p);
});
