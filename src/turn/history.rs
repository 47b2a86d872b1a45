//! The conversation the HTTP model backends rebuild from the vault: a
//! thread's answered messages and their replies (the vault is their
//! session store).

use crate::backend;
use crate::note::{InboundMessage, Note, OutboundMessage, Status, reply_path};
use crate::vault::Vault;

/// Default `history_budget`: characters of earlier exchanges sent to
/// backends that rebuild the conversation from the vault.
pub const DEFAULT_HISTORY_BUDGET: usize = 200_000;

/// Whose history is rebuilt.
#[derive(Debug, Clone, Copy)]
pub struct HistoryOf<'a> {
    /// The thread note's path.
    pub thread: &'a str,
    /// The message whose turn this is (never part of its own history).
    pub current: &'a str,
    /// The thread's `reset_at`.
    pub reset_at: Option<&'a str>,
}

/// Rebuilds a thread's earlier exchanges from its notes: answered inbound
/// messages and their `ok` replies, newest first until the budget is
/// spent, returned oldest first. `paths` are the messages the index last
/// saw answered in this thread, oldest first; each note is read and left
/// out unless it is still answered in this thread (it may have changed or
/// gone since), and a message is taken once. Messages answered before the
/// thread's `reset_at` are left out.
pub fn load_history(
    vault: &dyn Vault,
    paths: &[String],
    of: &HistoryOf<'_>,
    budget: usize,
) -> Vec<backend::Exchange> {
    let mut out = Vec::new();
    let mut used = 0usize;
    let mut taken = std::collections::HashSet::new();
    for p in paths.iter().rev() {
        if p == of.current || !taken.insert(p.as_str()) {
            continue;
        }
        let Ok((text, _)) = vault.read(p) else {
            continue;
        };
        let Ok(n) = Note::parse(&text) else { continue };
        let m = InboundMessage::of(&n);
        if m.status != Status::Handled || m.thread.as_deref() != Some(of.thread) {
            continue;
        }
        if let (Some(r), Some(h)) = (of.reset_at, &m.handled_at)
            && h.as_str() <= r
        {
            continue;
        }
        let rp = m.reply.unwrap_or_else(|| reply_path(p));
        let Ok((rtext, _)) = vault.read(&rp) else {
            continue;
        };
        let Ok(rn) = Note::parse(&rtext) else {
            continue;
        };
        if OutboundMessage::of(&rn).is_error() {
            continue;
        }
        let user = n.body.trim().to_string();
        let assistant = rn.body.trim().to_string();
        used += user.len() + assistant.len();
        if used > budget {
            break;
        }
        out.push(backend::Exchange { user, assistant });
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::LocalVault;

    #[test]
    fn only_messages_still_answered_in_this_thread_count_and_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: String| std::fs::write(dir.path().join(rel), text).unwrap();
        let msg = |status: &str, thread: &str, body: &str| {
            format!(
                "---\ntags: [agent/message/inbound]\nagent: a\nstatus: {status}\nthread: \"[[{thread}]]\"\n---\n{body}\n"
            )
        };
        let reply =
            |body: &str| format!("---\ntags: [agent/message/outbound]\nstatus: ok\n---\n{body}\n");
        write("m1.md", msg("handled", "Threads/a/a", "one"));
        write("m1.reply.md", reply("re one"));
        // Moved to another thread since the index saw it.
        write("m2.md", msg("handled", "Threads/a/other", "two"));
        write("m2.reply.md", reply("re two"));
        // Set back to pending since.
        write("m3.md", msg("pending", "Threads/a/a", "three"));
        write("m3.reply.md", reply("re three"));
        let vault = LocalVault::open(dir.path()).unwrap();
        let paths: Vec<String> = ["m1", "m2", "m3", "gone", "m1"].map(String::from).to_vec();
        let of = HistoryOf {
            thread: "Threads/a/a",
            current: "now",
            reset_at: None,
        };
        let h = load_history(&vault, &paths, &of, 10_000);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            (h[0].user.as_str(), h[0].assistant.as_str()),
            ("one", "re one")
        );
    }
}
