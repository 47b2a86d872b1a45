//! The conversation the HTTP model backends rebuild from the vault: a
//! thread's answered messages and their replies (the vault is their
//! session store).

use crate::backend;
use crate::note::{InboundMessage, Note, OutboundMessage, Status, reply_path};
use crate::vault::Vault;

/// Default `history_budget`: characters of earlier exchanges sent to
/// backends that rebuild the conversation from the vault.
pub const DEFAULT_HISTORY_BUDGET: usize = 200_000;

/// Rebuilds a thread's earlier exchanges from its notes: answered inbound
/// messages and their `ok` replies, newest first until the budget is
/// spent, returned oldest first. Messages answered before the thread's
/// `reset_at` are left out.
pub fn load_history(
    vault: &Vault,
    paths: &[String],
    current: &str,
    reset_at: Option<&str>,
    budget: usize,
) -> Vec<backend::Exchange> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for p in paths.iter().rev() {
        if p == current {
            continue;
        }
        let Ok((text, _)) = vault.read(p) else {
            continue;
        };
        let Ok(n) = Note::parse(&text) else { continue };
        let m = InboundMessage::of(&n);
        if m.status != Status::Handled {
            continue;
        }
        if let (Some(r), Some(h)) = (reset_at, &m.handled_at)
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
