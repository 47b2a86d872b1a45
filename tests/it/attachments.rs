//! Attachments (SPEC §9): the files an inbound note embeds, links or lists
//! are handed to its turn — as absolute paths to `command` (and the CLI
//! backends), as content blocks to `openai` and `anthropic` (the fake
//! model servers of `backends` record what they receive) — resolved as
//! Obsidian resolves links, inside the vault only. Whatever is left out
//! (missing, outside the vault, oversized, not a type the backend takes)
//! is named in the prompt and in the reply, and the turn is answered
//! once all the same.

use base64::Engine as _;
use serde_json::Value;

use crate::backends::{
    ANTHROPIC_KEY, FakeHttp, OPENAI_KEY, Reply, anthropic_agent, anthropic_stream, openai_agent,
    openai_stream, reply,
};
use crate::common::TestVault;

/// Bytes that start like a PNG (the fake servers do not decode images).
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR fake png";
const PDF: &[u8] = b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `command` agent that prints its stdin (the prompt), then
/// `VAULTRUNNER_ATTACHMENTS` and the first bytes of each file it names
/// (so the turn shows it can read them).
fn paths_agent(env: &TestVault) {
    env.command_agent(
        "files",
        "",
        "cat\necho\necho \"ENV<<$VAULTRUNNER_ATTACHMENTS>>\"\nprintf '%s\\n' \"$VAULTRUNNER_ATTACHMENTS\" | while read -r p; do [ -n \"$p\" ] && echo \"READ $(head -c 4 \"$p\")\"; done\nexit 0",
    );
}

/// The `ENV<<…>>` lines of a reply, as paths relative to the vault root.
fn env_paths(env: &TestVault, body: &str) -> Vec<String> {
    let start = body.find("ENV<<").expect("ENV line") + 5;
    let end = body[start..].find(">>").expect("ENV end") + start;
    let root = format!("{}/", env.root.display());
    body[start..end]
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.strip_prefix(&root)
                .unwrap_or_else(|| panic!("{l} is not under {root}"))
                .to_string()
        })
        .collect()
}

/// The lines vaultrunner adds to a reply, one per attachment left out.
fn left_out(body: &str) -> Vec<String> {
    let Some(i) = body.find("*vaultrunner: the agent did not get these attachments:*") else {
        return Vec::new();
    };
    body[i..]
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("- "))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_command_agent_gets_absolute_paths_in_its_prompt_and_environment() {
    let env = TestVault::new();
    paths_agent(&env);
    env.write_bytes("Files/photo.png", PNG);
    env.write_bytes("Files/report.pdf", PDF);
    env.write_bytes("Inbox/notes.txt", b"text");
    env.write_bytes("data/blob.bin", &[0, 1, 2, 3, 255]);
    env.message(
        "Inbox/m1.md",
        "files",
        "attachments:\n  - data/blob.bin\n",
        "Look at ![[photo.png|300]] and [[report.pdf#page=2|the report]], ![](notes.txt).\n\
         Not these: `![[photo.png]]` [[Some note]] [web](https://example.com/x.png)\n\n\
         ```\n![[code.png]]\n```\n",
    );
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let root = env.root.display().to_string();
    // The prompt's section, in the order of the message (the list first).
    let section = format!(
        "Attachments:\n- {root}/data/blob.bin\n- {root}/Files/photo.png\n- {root}/Files/report.pdf\n- {root}/Inbox/notes.txt\nENV<<"
    );
    assert!(body.contains(&section), "{body}");
    assert_eq!(
        env_paths(&env, &body),
        [
            "data/blob.bin",
            "Files/photo.png",
            "Files/report.pdf",
            "Inbox/notes.txt"
        ]
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("READ ") && l.ends_with("PNG")),
        "{body}"
    );
    assert!(body.contains("READ %PDF"), "{body}");
    assert!(body.contains("READ text"), "{body}");
    assert!(!body.contains("missing:"), "{body}");
    assert!(left_out(&body).is_empty(), "{body}");
    // A message without attachments: the variable is there, empty.
    env.message("Inbox/m2.md", "files", "", "no files here\n");
    env.process(&[]);
    let (_, body) = reply(&env, "m2");
    assert!(body.contains("ENV<<>>"), "{body}");
    assert!(!body.contains("Attachments:"), "{body}");
}

#[test]
fn links_resolve_as_obsidian_resolves_them() {
    let env = TestVault::new();
    paths_agent(&env);
    for (rel, text) in [
        ("Deep/a/b/photo.png", "deep"),
        ("Z/photo.png", "zzzz"),
        ("A/photo.png", "aaaa"),
        ("A/longer/photo.png", "long"),
        ("pic.gif", "root"),
        ("Inbox/pic.gif", "here"),
        ("Scans/2026/scan.pdf", "scan"),
        (".trash/only-here.png", "gone"),
    ] {
        env.write(rel, text);
    }
    env.message(
        "Inbox/m1.md",
        "files",
        "",
        // By name: fewest folders, then alphabetical (A before Z); a path
        // that is exact wins; a Markdown link is relative to the note's
        // folder first; a partial path matches the end of one; a name
        // only in a dot-folder is not found.
        "![[photo.png]] ![[Deep/a/b/photo.png]] ![](pic.gif) ![[2026/scan.pdf]] ![[only-here.png]]\n",
    );
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(
        env_paths(&env, &body),
        [
            "A/photo.png",
            "Deep/a/b/photo.png",
            "Inbox/pic.gif",
            "Scans/2026/scan.pdf"
        ]
    );
    assert_eq!(
        left_out(&body),
        ["- `only-here.png`: not found in the vault"]
    );
    assert!(
        body.contains("- missing: only-here.png (not found in the vault)"),
        "{body}"
    );
}

/// A sparse 2 GB file: nothing of it is read (it is refused by its size).
fn sparse_2gb(env: &TestVault, rel: &str) {
    let p = env.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::File::create(&p).unwrap().set_len(2 << 30).unwrap();
}

/// The bad links of the issue, each named in the reply and the prompt.
const BAD: &str =
    "![[../../etc/passwd]] ![](/etc/passwd) ![[Files/out.png]] ![[nope.png]] ![[Files/big.png]]";

fn bad_setup(env: &TestVault) {
    env.write_bytes("Files/photo.png", PNG);
    sparse_2gb(env, "Files/big.png");
    let secret = env.scratch().join("secret.png");
    std::fs::write(&secret, PNG).unwrap();
    std::os::unix::fs::symlink(&secret, env.path("Files/out.png")).unwrap();
}

fn assert_bad_named(lines: &[String], body: &str) {
    let want = [
        ("../../etc/passwd", "the link leads outside the vault"),
        ("/etc/passwd", "an absolute path"),
        ("Files/out.png", "leads outside the vault"),
        ("nope.png", "not found in the vault"),
        (
            "Files/big.png",
            "2.0 GB (2147483648 bytes), over the 20 MB limit",
        ),
    ];
    for (link, why) in want {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("- `{link}`: ")) && l.contains(why)),
            "{link} ({why}) not named in {lines:?}\n{body}"
        );
    }
}

#[test]
fn links_out_of_the_vault_missing_and_oversized_files_are_named_not_fatal() {
    let env = TestVault::new();
    paths_agent(&env);
    bad_setup(&env);
    env.message(
        "Inbox/m1.md",
        "files",
        "",
        &format!("{BAD} ![[photo.png]]\n"),
    );
    let started = std::time::Instant::now();
    env.process(&[]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let lines = left_out(&body);
    assert_eq!(lines.len(), 5, "{lines:?}\n{body}");
    assert_bad_named(&lines, &body);
    // The prompt said so too; the good one was given.
    assert!(
        body.contains("- missing: ../../etc/passwd (the link leads outside the vault)"),
        "{body}"
    );
    assert_eq!(env_paths(&env, &body), ["Files/photo.png"]);
    // Nothing of the secret came through.
    assert!(!body.contains("secret"), "{body}");
    // Answered once.
    assert_eq!(env.replies().len(), 1, "{:?}", env.replies());
    assert_eq!(env.get("Inbox/m1.md", "status").as_deref(), Some("handled"));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn openai_gets_images_and_pdfs_as_content_parts_for_this_message_only() {
    let server = FakeHttp::start(|n, _| {
        Reply::Stream(openai_stream(&[if n == 0 { "Seen." } else { "Again." }], 7))
    });
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.write_bytes("Files/photo.png", PNG);
    env.write_bytes("Files/report.pdf", PDF);
    env.write_bytes("Files/blob.bin", &[0, 1, 2, 3, 255]);
    env.write_bytes("Files/fake.png", b"not really a png");
    env.message(
        "Inbox/m1.md",
        "oa",
        "",
        "What is in ![[photo.png]] and [[report.pdf]]? ![[blob.bin]] ![[fake.png]]\n",
    );
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert!(body.starts_with("Seen."), "{body}");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let messages = reqs[0].body["messages"].as_array().unwrap().clone();
    let user = &messages.last().unwrap()["content"];
    let parts = user.as_array().unwrap_or_else(|| panic!("{user}"));
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[0]["type"], "text");
    let text = parts[0]["text"].as_str().unwrap();
    assert!(text.contains("What is in"), "{text}");
    assert!(
        text.contains("Attachments:\n- Files/photo.png (image/png, attached)\n- Files/report.pdf (application/pdf, attached)\n- missing: blob.bin (not a PNG, JPEG, GIF or WebP image or a PDF, which is what the openai backend can send)\n- missing: fake.png (not a PNG"),
        "{text}"
    );
    assert_eq!(parts[1]["type"], "image_url");
    assert_eq!(
        parts[1]["image_url"]["url"],
        format!("data:image/png;base64,{}", b64(PNG))
    );
    assert_eq!(parts[2]["type"], "file");
    assert_eq!(parts[2]["file"]["filename"], "report.pdf");
    assert_eq!(
        parts[2]["file"]["file_data"],
        format!("data:application/pdf;base64,{}", b64(PDF))
    );
    let lines = left_out(&body);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("- `blob.bin`: not a PNG"), "{lines:?}");
    assert!(lines[1].starts_with("- `fake.png`: not a PNG"), "{lines:?}");

    // The next message: its history carries the first one as text only.
    env.message("Inbox/m2.md", "oa", "", "and now?\n");
    env.process_with(&[OPENAI_KEY]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    let messages = reqs[1].body["messages"].as_array().unwrap().clone();
    assert!(
        messages.iter().all(|m| m["content"].is_string()),
        "{messages:?}"
    );
    assert!(!reqs[1].body.to_string().contains(&b64(PNG)));
}

#[test]
fn anthropic_gets_image_and_document_blocks() {
    let server = FakeHttp::start(|_, _| Reply::Stream(anthropic_stream(&["Got it"], 30, 2)));
    let env = TestVault::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    env.write_bytes("Files/photo.png", PNG);
    env.write_bytes("Scans/report.pdf", PDF);
    env.write_bytes("Files/anim.gif", b"GIF89a fake gif");
    env.message(
        "Inbox/m1.md",
        "an",
        "attachments:\n  - \"[[report.pdf]]\"\n",
        "Please read ![](../Files/photo.png) and ![[anim.gif]]\n",
    );
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    assert_eq!(body.trim(), "Got it");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let content = reqs[0].body["messages"][0]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 4, "{content:?}");
    let source = |b: &Value| {
        (
            b["type"].as_str().unwrap().to_string(),
            b["source"]["type"].as_str().unwrap().to_string(),
            b["source"]["media_type"].as_str().unwrap().to_string(),
            b["source"]["data"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(
        source(&content[0]),
        (
            "document".into(),
            "base64".into(),
            "application/pdf".into(),
            b64(PDF)
        )
    );
    assert_eq!(content[0]["title"], "report.pdf");
    assert_eq!(
        source(&content[1]),
        (
            "image".into(),
            "base64".into(),
            "image/png".into(),
            b64(PNG)
        )
    );
    assert_eq!(
        source(&content[2]),
        (
            "image".into(),
            "base64".into(),
            "image/gif".into(),
            b64(b"GIF89a fake gif")
        )
    );
    assert_eq!(content[3]["type"], "text");
    let text = content[3]["text"].as_str().unwrap();
    assert!(text.contains("Please read"), "{text}");
    assert!(
        text.contains("- Scans/report.pdf (application/pdf, attached)"),
        "{text}"
    );
}

#[test]
fn a_model_backend_names_what_it_was_not_given_and_still_answers_once() {
    let server = FakeHttp::start(|_, _| Reply::Stream(anthropic_stream(&["Fine"], 3, 1)));
    let env = TestVault::new();
    anthropic_agent(&env, "an", &server.base, "", "");
    bad_setup(&env);
    env.write_bytes("Files/blob.bin", &[0, 1, 2, 3, 255]);
    env.message(
        "Inbox/m1.md",
        "an",
        "",
        &format!("{BAD} ![[blob.bin]] ![[photo.png]]\n"),
    );
    env.process_with(&[ANTHROPIC_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "ok", "{body}");
    let lines = left_out(&body);
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_bad_named(&lines, &body);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("- `blob.bin`: not a PNG")),
        "{lines:?}"
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let content = reqs[0].body["messages"][0]["content"]
        .as_array()
        .unwrap()
        .clone();
    // Only the photo went; the secret never did.
    assert_eq!(content.len(), 2, "{content:?}");
    assert_eq!(content[0]["source"]["data"], b64(PNG));
    assert_eq!(env.replies().len(), 1);
}

#[test]
fn a_failure_reply_names_the_attachments_too() {
    let server = FakeHttp::start(|_, _| {
        Reply::Full {
        status: 401,
        headers: vec![],
        body: serde_json::json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}).to_string(),
    }
    });
    let env = TestVault::new();
    openai_agent(&env, "oa", &server.base, "", "");
    env.message("Inbox/m1.md", "oa", "", "see ![[nope.pdf]]\n");
    env.process_with(&[OPENAI_KEY]);
    let (status, body) = reply(&env, "m1");
    assert_eq!(status, "error", "{body}");
    assert!(body.contains("Incorrect API key"), "{body}");
    assert_eq!(left_out(&body), ["- `nope.pdf`: not found in the vault"]);
}
