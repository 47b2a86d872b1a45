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

/// The inbound note path for a new message to `agent`:
/// `Inbox/<agent>/<YYYY>/<MM>/<DD>/<YYYYMMDD-HHMMSS-mmm>-<8 hex>`, the
/// folders and the stem from the same UTC time, so no folder grows without
/// bound (docs/DECISIONS.md, "Dated inbox folders").
pub fn new_message_path(agent: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    message_path_at(agent, chrono::Utc::now(), &id[..8])
}

/// [`new_message_path`] at a given time, with a given suffix.
fn message_path_at(agent: &str, now: chrono::DateTime<chrono::Utc>, suffix: &str) -> String {
    format!(
        "Inbox/{agent}/{}/{}-{suffix}",
        now.format("%Y/%m/%d"),
        now.format("%Y%m%d-%H%M%S-%3f"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn a_new_message_lands_in_the_folder_of_its_utc_day() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 3, 7, 23, 59, 58)
            .single()
            .expect("a valid time")
            + chrono::Duration::milliseconds(62);
        assert_eq!(
            message_path_at("echo", at, "20dec359"),
            "Inbox/echo/2026/03/07/20260307-235958-062-20dec359"
        );
        let p = new_message_path("echo");
        let parts: Vec<&str> = p.split('/').collect();
        assert_eq!(parts.len(), 6, "{p}");
        assert_eq!(&parts[..2], ["Inbox", "echo"]);
        // The folders name the day the stem starts with.
        assert_eq!(
            parts[5][..8],
            format!("{}{}{}", parts[2], parts[3], parts[4])
        );
        assert!(crate::vault::check_rel_path(&p).is_ok(), "{p}");
    }
}
