//! The notes a turn writes, rendered: the reply, the callback, a new
//! thread note's keys, a failure's text, the delegation section of a
//! system prompt. Pure: no I/O.

use crate::agent::{Definition, valid_name};
use crate::note::{FmValue, InboundMessage, TAG_THREAD, derived_path, link, render_new};
use crate::vault::NoteWrite;

use super::MAX_DELEGATION_DEPTH;

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The outbound note's text.
pub(super) fn outbound_text(
    agent: &str,
    inbound: &str,
    thread: Option<&str>,
    ok: bool,
    body: &str,
) -> String {
    let mut fields: Vec<(&str, FmValue)> = vec![
        ("agent", agent.into()),
        ("direction", "outbound".into()),
        ("sender", agent.into()),
        ("ts", now_rfc3339().into()),
        ("in_reply_to", link(inbound).into()),
    ];
    if let Some(t) = thread {
        fields.push(("thread", link(t).into()));
    }
    fields.push(("status", if ok { "ok" } else { "error" }.into()));
    render_new(&["agent/message", "agent/message/outbound"], &fields, body)
}

/// Step 6: a callback owed to the `reply_to` agent of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackTo {
    pub agent: String,
    pub correlation_id: Option<String>,
    /// The callback's own depth: the message's + 1.
    pub depth: u64,
}

/// The callback a message is owed, if any: it has a valid `reply_to`, and
/// neither it nor the callback would be at or past the depth limit.
pub fn callback_for(msg: &InboundMessage, depth: u64) -> Option<CallbackTo> {
    let to = msg.reply_to.clone()?;
    if !valid_name(&to) {
        tracing::warn!("reply_to {to:?} is not a valid agent name; no callback");
        return None;
    }
    if depth + 1 >= MAX_DELEGATION_DEPTH {
        return None;
    }
    Some(CallbackTo {
        agent: to,
        correlation_id: msg.correlation_id.clone(),
        depth: depth + 1,
    })
}

/// The callback note: a new inbound message to the `reply_to` agent at a
/// path derived from the message's (`<stem>.callback`), so a re-run
/// rewrites it. It never carries `reply_to`; its body is a notification
/// with links, not the reply copied.
pub fn callback_write(
    cb: &CallbackTo,
    message: &str,
    source_agent: &str,
    ok: bool,
    thread: Option<&str>,
    reply: &str,
) -> NoteWrite {
    let status = if ok { "ok" } else { "error" };
    let mut fields: Vec<(&str, FmValue)> = vec![
        ("agent", cb.agent.as_str().into()),
        ("sender", format!("callback:{source_agent}").into()),
        ("ts", now_rfc3339().into()),
        ("callback", "true".into()),
        ("source_status", status.into()),
        ("source_agent", source_agent.into()),
    ];
    if let Some(t) = thread {
        fields.push(("source_thread", link(t).into()));
    }
    fields.push(("source_message", link(reply).into()));
    if let Some(c) = &cb.correlation_id {
        fields.push(("correlation_id", c.as_str().into()));
    }
    fields.push(("delegation_depth", cb.depth.into()));
    let mut body = format!(
        "{source_agent} finished the task you sent ({status}): {}\n",
        link(reply)
    );
    if let Some(t) = thread {
        body.push_str(&format!("\nThread: {}\n", link(t)));
    }
    body.push_str(&format!("\nTask: {}\n", link(message)));
    if let Some(c) = &cb.correlation_id {
        body.push_str(&format!("\nCorrelation id: `{c}`\n"));
    }
    NoteWrite {
        path: derived_path(message, "callback"),
        content: render_new(&["agent/message", "agent/message/inbound"], &fields, &body),
    }
}

/// The body of a failure reply: short and human-readable.
pub fn failure_body(reason: &str) -> String {
    format!("**vaultrunner: this message could not be answered.**\n\n{reason}\n")
}

pub(super) fn thread_fields(def: &Definition, status: &str) -> Vec<(&'static str, FmValue)> {
    vec![
        ("agent", def.name.as_str().into()),
        ("mode", def.mode.as_str().into()),
        ("definition", link(&def.path).into()),
        ("backend", def.backend.as_str().into()),
        (
            "model",
            def.model
                .clone()
                .map(FmValue::Str)
                .unwrap_or(FmValue::Remove),
        ),
        ("status", status.into()),
    ]
}

pub(super) fn new_thread(def: &Definition) -> String {
    let mut fields = thread_fields(def, "working");
    fields.push(("started_at", now_rfc3339().into()));
    fields.push(("turn_count", 0i64.into()));
    render_new(&[TAG_THREAD], &fields, "")
}

/// The section the claude backend's system prompt gains (unless the
/// definition says `delegation_prompt: false`): how to hand work to
/// another agent through the vault. Documented in docs/delegation.md.
pub fn delegation_section(me: &str, agents: &[String]) -> String {
    let others: Vec<&str> = agents
        .iter()
        .map(String::as_str)
        .filter(|a| *a != me)
        .collect();
    let list = if others.is_empty() {
        "(no other agents are defined right now)".to_string()
    } else {
        others.join(", ")
    };
    format!(
        "## Delegating to other agents\n\
         You are the agent `{me}` in a vault run by vaultrunner. To hand a task to another agent, run:\n\
         \n    \"$VAULTRUNNER_BIN\" send \"$VAULTRUNNER_VAULT\" <agent> \"<task>\" --reply-to {me} --correlation-id <id>\n\n\
         Agents here: {list}. The task becomes a note and runs in that agent's queue; you do not wait for it. \
         When it is answered you get a new message with `callback: \"true\"`, its `correlation_id`, \
         `source_status` (ok or error) and a link to the reply note (read it from the vault). \
         Give each task its own correlation id. Delegation chains stop at depth {MAX_DELEGATION_DEPTH}."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::{Note, NoteKind};

    #[test]
    fn callbacks_follow_the_depth_rule() {
        let n = |extra: &str| {
            let note = Note::parse(&format!(
                "---\ntags: [agent/message/inbound]\nagent: w\n{extra}---\ntask\n"
            ))
            .unwrap();
            InboundMessage::of(&note)
        };
        assert_eq!(callback_for(&n(""), 0), None);
        let cb = callback_for(&n("reply_to: boss\ncorrelation_id: t-1\n"), 1).unwrap();
        assert_eq!(
            cb,
            CallbackTo {
                agent: "boss".into(),
                correlation_id: Some("t-1".into()),
                depth: 2
            }
        );
        assert!(callback_for(&n("reply_to: boss\n"), 6).is_some());
        assert_eq!(callback_for(&n("reply_to: boss\n"), 7), None);
        assert_eq!(callback_for(&n("reply_to: ../x\n"), 0), None);
        let w = callback_write(
            &cb,
            "Inbox/w/task",
            "w",
            true,
            Some("Threads/w/w"),
            "Inbox/w/task.reply",
        );
        assert_eq!(w.path, "Inbox/w/task.callback");
        let note = Note::parse(&w.content).unwrap();
        assert_eq!(note.kind(), NoteKind::Inbound);
        assert_eq!(note.str("agent").as_deref(), Some("boss"));
        assert_eq!(note.str("callback").as_deref(), Some("true"));
        assert!(matches!(
            note.meta.get("callback"),
            Some(serde_yaml::Value::String(_))
        ));
        assert_eq!(note.str("source_status").as_deref(), Some("ok"));
        assert_eq!(
            note.str("source_message").as_deref(),
            Some("[[Inbox/w/task.reply]]")
        );
        assert_eq!(note.str("correlation_id").as_deref(), Some("t-1"));
        assert_eq!(note.str("delegation_depth").as_deref(), Some("2"));
        assert_eq!(note.str("sender").as_deref(), Some("callback:w"));
        assert!(note.str("reply_to").is_none());
        assert!(note.body.contains("[[Inbox/w/task.reply]]"));
    }

    #[test]
    fn delegation_section_names_the_others() {
        let s = delegation_section("boss", &["boss".into(), "a".into(), "b".into()]);
        assert!(s.contains("Agents here: a, b."), "{s}");
        assert!(s.contains("--reply-to boss"));
        assert!(s.contains("$VAULTRUNNER_BIN"));
    }
}
