//! Where a message's thread note is (SPEC §2, Thread). The paths derived
//! from a message's own path (its reply, its callback) are the note
//! layer's: [`crate::note::reply_path`], [`crate::note::derived_path`].

use crate::agent::{Definition, Mode};
use crate::note::{fnv1a, slug};

/// The thread note of a message (SPEC §2, Thread).
pub fn thread_path(def: &Definition, subject: Option<&str>, inbound: &str) -> String {
    let name = &def.name;
    if let Some(subject) = subject.map(str::trim).filter(|s| !s.is_empty()) {
        let s = slug(subject);
        let s = if s.is_empty() {
            format!("{:08x}", fnv1a(subject) as u32)
        } else {
            s
        };
        return format!("Threads/{name}/{name}--{s}");
    }
    match def.mode {
        Mode::SingleThreaded => format!("Threads/{name}/{name}"),
        Mode::MultiThreaded => {
            let stem = inbound.rsplit('/').next().unwrap_or(inbound);
            let s = slug(stem);
            let s: String = s.chars().take(60).collect();
            let h = fnv1a(inbound) as u32;
            if s.is_empty() {
                format!("Threads/{name}/{h:08x}")
            } else {
                format!("Threads/{name}/{s}-{h:08x}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::reply_path;
    use crate::turn::tests::def;

    #[test]
    fn reply_paths_are_derived_from_the_inbound_path() {
        assert_eq!(reply_path("Inbox/hello"), "Inbox/hello.reply");
        assert_eq!(reply_path("hello"), "hello.reply");
        let long = format!("Inbox/{}", "x".repeat(300));
        let r = reply_path(&long);
        assert!(r.len() < 200 && r.ends_with(".reply"));
        assert_eq!(r, reply_path(&long));
        assert_ne!(r, reply_path(&format!("Inbox/{}y", "x".repeat(300))));
    }

    #[test]
    fn thread_paths() {
        let s = def(Mode::SingleThreaded);
        assert_eq!(thread_path(&s, None, "Inbox/a"), "Threads/bot/bot");
        assert_eq!(
            thread_path(&s, Some("Weekly Report!"), "Inbox/a"),
            "Threads/bot/bot--weekly-report"
        );
        assert_eq!(
            thread_path(&s, Some("../../etc"), "Inbox/a"),
            "Threads/bot/bot--etc"
        );
        let m = def(Mode::MultiThreaded);
        let a = thread_path(&m, None, "Inbox/Hello There");
        assert!(a.starts_with("Threads/bot/hello-there-"), "{a}");
        assert_eq!(a, thread_path(&m, None, "Inbox/Hello There"));
        assert_ne!(a, thread_path(&m, None, "Other/Hello There"));
        for p in [a, thread_path(&s, Some("!!!"), "x")] {
            crate::vault::check_rel_path(&p).unwrap();
        }
    }
}
