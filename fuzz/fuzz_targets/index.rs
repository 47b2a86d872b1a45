//! The index: `queue::Index::update`, which every note read goes through,
//! on up to four notes (the input split at NUL bytes) at paths of every
//! folder, then pops, a second update with the same text, and removals.
//!
//! Invariants: never a panic; updating a note twice with the same text
//! gives the same state; every queued agent's queue drains by `pop` to
//! exactly its length; every agent listed is found by name; after all
//! notes are removed the index holds no agent, job, queue or problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultrunner::queue::Index;
use vaultrunner::vault::Version;
use vaultrunner_fuzz::Picker;

const PATHS: &[&str] = &[
    "Agents/bot",
    "Inbox/bot/m1",
    "Jobs/daily",
    "Threads/bot/bot",
    "Inbox/bot/m1.reply",
    "Agents/other/bot",
    "Notes/any",
];

#[derive(Debug, PartialEq)]
struct State {
    agents: Vec<String>,
    jobs: Vec<String>,
    queued: Vec<(String, usize)>,
    problems: Vec<(String, String, bool)>,
    waiting: Vec<(String, String, &'static str)>,
}

fn state(ix: &Index) -> State {
    State {
        agents: ix.agents().map(|d| d.name.clone()).collect(),
        jobs: ix.jobs().map(|j| j.path.clone()).collect(),
        queued: ix.queued_agents().map(|(a, n)| (a.clone(), n)).collect(),
        problems: ix
            .problems()
            .map(|p| (p.path.clone(), p.reason.clone(), p.is_error))
            .collect(),
        waiting: ix.waiting(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut p = Picker::new(data);
    let mut ix = Index::new(vaultrunner::backend::KINDS);
    ix.set_default_tz(chrono_tz::Tz::Europe__Berlin);
    let mut notes = Vec::new();
    for (i, part) in text.split('\0').take(4).enumerate() {
        let path = *p.pick(PATHS);
        let fp = Version {
            tag: part.len() as u64,
            modified_ns: 1_700_000_000_000_000_000 + i as i128,
        };
        let recovering = p.below(2) == 0;
        ix.update(path, part, fp, recovering);
        notes.push((path, part, fp, recovering));
    }
    for d in ix.agents() {
        assert!(ix.agent(&d.name).is_some(), "{}", d.name);
    }
    // The same text again changes nothing (a rescan of an unchanged vault).
    let before = state(&ix);
    if let Some((path, part, fp, recovering)) = notes.last() {
        ix.update(path, part, *fp, *recovering);
        assert_eq!(
            state(&ix),
            before,
            "a second update with the same text changed the index"
        );
    }
    for (agent, n) in state(&ix).queued {
        assert_eq!(ix.queue_len(&agent), n);
        let mut popped = 0;
        while let Some(m) = ix.pop(&agent) {
            assert!(
                ix.inbound(&m).is_some(),
                "popped {m} is not an indexed inbound note"
            );
            popped += 1;
            ix.finish(&m);
            assert!(popped <= n);
        }
        assert_eq!(popped, n);
        assert_eq!(ix.queue_len(&agent), 0);
    }
    for (path, _, _, _) in &notes {
        ix.remove(path);
    }
    assert!(ix.is_empty());
    let after = state(&ix);
    assert!(after.agents.is_empty(), "{after:?}");
    assert!(after.jobs.is_empty(), "{after:?}");
    assert!(after.queued.is_empty(), "{after:?}");
    assert!(after.problems.is_empty(), "{after:?}");
});
