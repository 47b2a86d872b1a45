//! Messages that vaultrunner writes (from `send`, HTTP, webhooks, cron)
//! and the replies it looks up for them.

use crate::note::{
    FmValue, InboundMessage, Note, OutboundMessage, TAG_INBOUND, TAG_MESSAGE, render_new,
};
use crate::turn::{now_rfc3339, reply_path};
use crate::vault::{NoteWrite, Vault, VaultError};

/// What `send` writes.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub subject: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// `cli`, `webhook:<name>`, `agent:<name>`, …
    pub sender: Option<String>,
    pub delegation_depth: Option<u64>,
}

/// The inbound note path for a new message to `agent`.
pub fn new_message_path(agent: &str) -> String {
    let now = chrono::Utc::now();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Inbox/{agent}/{}-{}",
        now.format("%Y%m%d-%H%M%S-%3f"),
        &id[..8]
    )
}

/// The text of an inbound note that vaultrunner writes.
pub fn inbound_text(agent: &str, message: &str, opts: &SendOptions) -> String {
    let mut fields: Vec<(&str, FmValue)> = vec![
        ("agent", agent.into()),
        (
            "sender",
            opts.sender.clone().unwrap_or_else(|| "cli".into()).into(),
        ),
        ("ts", now_rfc3339().into()),
    ];
    if let Some(s) = &opts.subject {
        fields.push(("subject", s.clone().into()));
    }
    if let Some(r) = &opts.reply_to {
        fields.push(("reply_to", r.clone().into()));
    }
    if let Some(c) = &opts.correlation_id {
        fields.push(("correlation_id", c.clone().into()));
    }
    if let Some(d) = opts.delegation_depth {
        fields.push(("delegation_depth", d.into()));
    }
    render_new(&[TAG_MESSAGE, TAG_INBOUND], &fields, message)
}

/// The reply to a message, once it is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: String,
    pub text: String,
    pub path: String,
}

/// Looks for the reply of an inbound note: `Some` once the inbound is
/// `handled`/`error` and its reply note exists.
pub fn reply_of(vault: &dyn Vault, inbound: &str) -> Option<Reply> {
    let (text, _) = vault.read(inbound).ok()?;
    let n = Note::parse(&text).ok()?;
    if !InboundMessage::of(&n).status.is_done() {
        return None;
    }
    let rp = reply_path(inbound);
    let (rtext, _) = vault.read(&rp).ok()?;
    let r = Note::parse(&rtext).ok()?;
    Some(Reply {
        status: OutboundMessage::of(&r).status,
        text: r.body.trim_end().to_string(),
        path: rp,
    })
}

/// Blanks `session` and stamps `reset_at` on every thread note of `agent`
/// (`session` for CLI backends; `reset_at` for backends that rebuild the
/// conversation from the thread's notes: older ones are left out).
pub fn reset_threads(
    vault: &dyn Vault,
    agent: &str,
) -> Result<Vec<String>, crate::vault::VaultError> {
    let mut changed = Vec::new();
    for entry in vault.list_under(&format!("Threads/{agent}")).entries {
        let path = entry.path;
        // A turn may be writing the thread right now: its write wins the
        // race, and the reset is made again on what it wrote.
        let mut tries = 0;
        while let Ok((text, version)) = vault.read(&path) {
            let Ok(n) = Note::parse(&text) else { break };
            if n.kind() != crate::note::NoteKind::Thread {
                break;
            }
            let Ok((edited, _)) = crate::note::edit_front_matter(
                &text,
                &[("session", "".into()), ("reset_at", now_rfc3339().into())],
            ) else {
                break;
            };
            match vault.write_batch(&[NoteWrite::update(&path, edited, version)]) {
                Ok(_) => {
                    changed.push(path);
                    break;
                }
                Err(VaultError::Changed { .. }) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5 * tries));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(changed)
}
