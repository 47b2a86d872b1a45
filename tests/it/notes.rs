//! Round-trip safety on real-looking Obsidian notes (SPEC §1): after
//! `process`, every byte outside the keys vaultrunner owns on an inbound
//! note is as it was. And the tag rules that decide what is inbound.

use crate::common::{TestVault, front_matter, split_note, without_keys};

use crate::common::OWNED;

/// Processes a vault holding `Agents/echo.md` and the inbound note `text` at
/// `rel`, then checks the round trip; returns the note's new text.
fn round_trip(v: &TestVault, rel: &str, text: &str) -> String {
    v.write(rel, text);
    v.process(&[]);
    let after = v.read(rel);
    // The note was answered ...
    let fm = front_matter(&after).unwrap_or_else(|e| panic!("{e}\n{after}"));
    assert_eq!(
        crate::common::scalar(&fm, "status").as_deref(),
        Some("handled"),
        "{after}"
    );
    let reply = rel.replace(".md", ".reply.md");
    assert!(v.exists(&reply), "no reply:\n{after}");
    // ... every byte but the owned keys' lines is as it was ...
    assert_eq!(without_keys(&after, OWNED), without_keys(text, OWNED));
    // ... the body exactly ...
    assert_eq!(split_note(&after).1, split_note(text).1);
    // ... and every other key has its old value.
    let mut before_fm = front_matter(text).unwrap();
    let mut after_fm = fm;
    for k in OWNED {
        before_fm.remove(*k);
        after_fm.remove(*k);
    }
    assert_eq!(before_fm, after_fm);
    after
}

#[test]
fn an_obsidian_note_with_crlf_keeps_every_byte_but_the_owned_keys() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let lines = [
        "---",
        "# A note written in Obsidian, synced from Windows",
        "title: \"Planning: Q3 #1\"   # quoted, with a trailing comment",
        "aliases:",
        "  - Plan Q3",
        "  - 'Q3 plan'",
        "created: 2026-11-20 09:15",
        "tags: agent/message, agent/message/inbound",
        "status: pending # change to draft to hold",
        "priority: 2",
        "meta:",
        "  source:",
        "    kind: email",
        "    id: \"<abc@example.com>\"",
        "  flags: [a, b]",
        "",
        "# a comment between keys",
        "agent: echo  # who answers",
        "sender: alice",
        "empty:",
        "done: no",
        "---",
        "# Planning",
        "",
        "Please summarise #project/q3 and [[Meeting 2026-11-19|the meeting]].",
        "See also [a link](https://example.com/#frag) and ![[image.png]].",
        "",
        "```python",
        "# not a heading, #not-a-tag",
        "print('---')",
        "```",
        "",
        "- [ ] task with `inline #code`",
        "> quote #quoted",
        "",
        "Trailing line without newline at the end",
    ];
    let text = lines.join("\r\n");
    let after = round_trip(&v, "Inbox/Planning Q3.md", &text);
    // Line endings stay CRLF throughout, also on the lines vaultrunner wrote.
    assert!(
        !after.replace("\r\n", "").contains('\n'),
        "bare LF:\n{after:?}"
    );
    // `status` is edited in place: same position, its comment kept.
    assert!(
        after.contains("\r\nstatus: handled # change to draft to hold\r\npriority: 2\r\n"),
        "{after:?}"
    );
    // The echo got the body.
    let reply = v.body("Inbox/Planning Q3.reply.md");
    assert!(reply.starts_with("echo: # Planning"), "{reply}");
    assert!(reply.contains("print('---')"), "{reply}");
}

#[test]
fn an_lf_note_with_owned_keys_already_present_keeps_everything_else() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    // Owned keys present from an earlier (edited) run, in odd places, with
    // a multi-line `error` block that vaultrunner removes.
    let text = "---\n\
reply:\n\
agent: 'echo'\n\
error: |\n  an old failure\n  on two lines\n\
status: \"pending\"\n\
tags:\n  - Agent/Message/Inbound   # capitals are fine\n  - journal\n\
weird key: \"value with: colon\"\n\
'quoted key': 1e3\n\
list_after:\n- x\n- y\n\
thread: \"[[Threads/old/old]]\"\n\
...\n\
Body starts right after a `...` fence.\n\
\n\
#agent/definition inside a body is a tag, but this note is inbound by front-matter.\n";
    // A `#agent/definition` inline tag would make it a definition: avoid
    // that here; this test is about bytes, not kinds.
    let text = text.replace("#agent/definition", "agent-definition");
    let after = round_trip(&v, "Journal/2026-11-21.md", &text);
    assert!(!after.contains("an old failure"), "{after}");
    assert!(after.contains("\n...\nBody starts"), "{after}");
    assert_eq!(
        v.get("Journal/2026-11-21.md", "thread").as_deref(),
        Some("[[Threads/echo/echo]]")
    );
}

#[test]
fn a_message_whose_status_line_is_commented_keeps_the_comment() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let text = "---\ntags: [agent/message/inbound]\nagent: echo\nstatus: pending # set me to draft to hold it\nattempts: 0 # reset by hand\n---\nhi\n";
    let after = round_trip(&v, "Inbox/c.md", text);
    assert!(
        after.contains("\nstatus: handled # set me to draft to hold it\n"),
        "{after}"
    );
    assert!(after.contains("\nattempts: 1 # reset by hand\n"), "{after}");
}

#[test]
fn a_note_without_front_matter_needs_an_agent_to_be_routed() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    // Inbound only through an inline tag, no front-matter: no `agent`, so
    // there is nobody to route it to (SPEC §2: routing is `agent`, fallback
    // `channel`). It is reported by `check` and left untouched.
    let bare = "Hello #agent/message/inbound, anyone?\n";
    v.write("Inbox/bare.md", bare);
    // Inbound through an inline tag, routed by a front-matter `agent`
    // (the front-matter has no tags at all).
    let inline = "---\nagent: echo\n---\nRoute me #agent/message/inbound please\n";
    v.write("Inbox/inline.md", inline);
    // Routed through `channel` (the fallback of `agent`).
    v.write(
        "Inbox/channel.md",
        "---\ntags: agent/message/inbound\nchannel: echo\n---\nvia channel\n",
    );

    let out = v.check();
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Inbox/bare.md"))
        .unwrap_or_else(|| panic!("bare note not reported:\n{out}"));
    assert!(line.contains("agent"), "{line}");

    v.process(&[]);
    assert_eq!(v.read("Inbox/bare.md"), bare, "unroutable note was changed");
    assert!(!v.exists("Inbox/bare.reply.md"));

    let after = v.read("Inbox/inline.md");
    assert_eq!(split_note(&after).1, split_note(inline).1);
    assert_eq!(
        v.get("Inbox/inline.md", "status").as_deref(),
        Some("handled")
    );
    assert_eq!(
        v.body("Inbox/inline.reply.md").trim_end(),
        "echo: Route me #agent/message/inbound please"
    );
    assert_eq!(
        v.body("Inbox/channel.reply.md").trim_end(),
        "echo: via channel"
    );
}

#[test]
fn a_reply_quoting_the_inbound_tag_never_wakes_an_agent() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    v.message(
        "Inbox/q.md",
        "echo",
        "",
        "Tag your notes with #agent/message/inbound to send them.\n",
    );
    let out = v.process(&[]);
    assert!(out.stdout.contains("processed 1 message(s)"), "{out}");
    let reply = v.body("Inbox/q.reply.md");
    assert!(reply.contains("#agent/message/inbound"), "{reply}");

    // Hand-written notes that carry the inbound tag but are not inbound:
    // an outbound by `direction`, a thread, a definition-tagged note.
    let quoted = [
        (
            "Inbox/by-direction.md",
            "---\ntags: [agent/message/inbound]\nagent: echo\ndirection: outbound\n---\nquoted\n",
        ),
        (
            "Inbox/outbound-tag.md",
            "---\ntags: [agent/message/outbound]\nagent: echo\n---\nYou wrote: #agent/message/inbound\n",
        ),
        (
            "Inbox/thread-too.md",
            "---\ntags: [agent/message/inbound, agent/thread]\nagent: echo\n---\nboth\n",
        ),
        (
            "Inbox/plain.md",
            "---\ntags: [agent/message]\nagent: echo\n---\nnot inbound: #agent/message is not #agent/message/inboundx\n",
        ),
    ];
    for (p, t) in quoted {
        v.write(p, t);
    }
    let before = v.snapshot_with_mtimes();
    let out = v.process(&[]);
    assert!(out.stdout.contains("processed 0 message(s)"), "{out}");
    assert_eq!(before, v.snapshot_with_mtimes());
    assert!(!v.files().iter().any(|f| f.contains(".reply.reply")));
}

#[test]
fn tags_match_exactly_and_case_insensitively_from_every_source() {
    let v = TestVault::new();
    v.agent("echo", "", "");
    let routed = [
        ("Inbox/list.md", "tags:\n  - '#Agent/Message/Inbound'\n"),
        (
            "Inbox/string.md",
            "tags: \"journal agent/message/inbound\"\n",
        ),
        ("Inbox/singular.md", "tag: agent/message/inbound\n"),
    ];
    for (p, tags) in routed {
        v.write(p, &format!("---\n{tags}agent: echo\n---\nvia {p}\n"));
    }
    let ignored = [
        ("Inbox/prefix.md", "tags: [agent/message]\n"),
        ("Inbox/longer.md", "tags: [agent/message/inbound/extra]\n"),
        ("Inbox/code.md", ""),
    ];
    for (p, tags) in ignored {
        v.write(
            p,
            &format!("---\n{tags}agent: echo\n---\n`#agent/message/inbound` in code\n\n```\n#agent/message/inbound\n```\n"),
        );
    }
    v.process(&[]);
    for (p, _) in routed {
        assert_eq!(v.get(p, "status").as_deref(), Some("handled"), "{p}");
    }
    for (p, _) in ignored {
        assert!(v.get(p, "status").is_none(), "{p} was routed");
        assert!(!v.exists(&p.replace(".md", ".reply.md")), "{p}");
    }
}
