//! The one-shot commands of SPEC §5 (`init`, `check`, `status`, `send`,
//! `reset`), as library functions returning values; `main.rs` prints them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::agent::valid_name;
use crate::note::{
    FmValue, Note, NoteKind, TAG_INBOUND, TAG_MESSAGE, edit_front_matter, render_new,
};
use crate::queue::{Index, Status};
use crate::turn::{now_rfc3339, reply_path};
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Usage(String),
}

/// The files `init` writes: the example vault, compiled in.
pub const EXAMPLE_VAULT: &[(&str, &str)] = &[
    ("README.md", include_str!("../vault-example/README.md")),
    (
        "Agents/echo.md",
        include_str!("../vault-example/Agents/echo.md"),
    ),
    (
        "Agents/shout.md",
        include_str!("../vault-example/Agents/shout.md"),
    ),
    (
        "Templates/Message.md",
        include_str!("../vault-example/Templates/Message.md"),
    ),
    (
        "Inbox/hello.md",
        include_str!("../vault-example/Inbox/hello.md"),
    ),
    (
        "Jobs/morning.md",
        include_str!("../vault-example/Jobs/morning.md"),
    ),
];

/// `init DIR`: creates a ready-to-run vault. Existing files are never
/// overwritten; returns the files written.
pub fn init(dir: &Path) -> Result<Vec<String>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| VaultError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let vault = Vault::open(dir)?;
    let mut written = Vec::new();
    for (rel, text) in EXAMPLE_VAULT {
        let path = rel.trim_end_matches(".md");
        if vault.create_new(path, text)? {
            written.push((*rel).to_string());
        }
    }
    Ok(written)
}

/// One finding of `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The note's file, vault-relative (with `.md`).
    pub file: String,
    pub reason: String,
    pub is_error: bool,
}

/// Reads a whole vault into an index (no lock needed: read-only).
pub fn load_index(vault: &Vault) -> (Index, Vec<Finding>) {
    let mut ix = Index::new();
    let mut findings = Vec::new();
    let listing = vault.list();
    for s in listing.skipped {
        findings.push(Finding {
            file: s.rel,
            reason: s.reason,
            is_error: false,
        });
    }
    for e in listing.entries {
        match vault.read(&e.path) {
            Ok((text, fp)) => {
                ix.update(&e.path, &text, fp, true);
            }
            // An unreadable or binary `.md` cannot be an agent note; it is
            // worth a warning, not a failed check.
            Err(err) => findings.push(Finding {
                file: format!("{}.md", e.path),
                reason: match err {
                    VaultError::Io { source, .. } => format!("{source} (ignored)"),
                    other => other.to_string(),
                },
                is_error: false,
            }),
        }
    }
    (ix, findings)
}

/// `check VAULT`: every problem with its file and reason.
pub fn check(vault_dir: &Path) -> Result<Vec<Finding>, CliError> {
    let vault = Vault::open(vault_dir)?;
    let (ix, mut findings) = load_index(&vault);
    for p in ix.problems() {
        findings.push(Finding {
            file: format!("{}.md", p.path),
            reason: p.reason.clone(),
            is_error: p.is_error,
        });
    }
    for (path, agent, why) in ix.waiting() {
        findings.push(Finding {
            file: format!("{path}.md"),
            reason: format!("waiting for agent {agent:?}: {why}"),
            is_error: false,
        });
    }
    findings.sort_by(|a, b| a.file.cmp(&b.file).then(a.reason.cmp(&b.reason)));
    Ok(findings)
}

/// One agent's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub name: String,
    pub backend: String,
    pub enabled: bool,
    pub queued: usize,
    pub last_turn_at: Option<String>,
    pub last_status: Option<String>,
    pub turns: u64,
}

/// What `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub served: bool,
    pub agents: Vec<AgentStatus>,
    /// (message, agent, why) for messages whose agent cannot run.
    pub waiting: Vec<(String, String, String)>,
    pub errors: usize,
}

/// `status VAULT`.
pub fn status(vault_dir: &Path) -> Result<StatusReport, CliError> {
    let vault = Vault::open(vault_dir)?;
    let served = vault.is_locked();
    let (ix, findings) = load_index(&vault);
    let mut agents = Vec::new();
    for def in ix.agents() {
        let (mut last, mut last_status, mut turns) = (None::<String>, None, 0u64);
        let dir = vault.root().join("Threads").join(&def.name);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(".md") else {
                    continue;
                };
                let Ok((text, _)) = vault.read(&format!("Threads/{}/{stem}", def.name)) else {
                    continue;
                };
                let Ok(n) = Note::parse(&text) else { continue };
                if n.kind() != NoteKind::Thread {
                    continue;
                }
                turns += n
                    .str("turn_count")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if let Some(t) = n.str("last_turn_at")
                    && last.as_ref().is_none_or(|l| t > *l)
                {
                    last = Some(t);
                    last_status = n.str("status");
                }
            }
        }
        agents.push(AgentStatus {
            name: def.name.clone(),
            backend: def.backend.clone(),
            enabled: def.enabled,
            queued: ix.queue_len(&def.name),
            last_turn_at: last,
            last_status,
            turns,
        });
    }
    Ok(StatusReport {
        served,
        agents,
        waiting: ix
            .waiting()
            .into_iter()
            .map(|(p, a, w)| (p, a, w.to_string()))
            .collect(),
        errors: ix.problems().filter(|p| p.is_error).count()
            + findings.iter().filter(|f| f.is_error).count(),
    })
}

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

/// `send`: writes an inbound note durably; returns its path and whether the
/// agent has a definition now.
pub fn send(
    vault_dir: &Path,
    agent: &str,
    message: &str,
    opts: &SendOptions,
) -> Result<(String, bool), CliError> {
    if !valid_name(agent) {
        return Err(CliError::Usage(format!(
            "{agent:?} is not a valid agent name (letters, digits, `_` and `-` only)"
        )));
    }
    if let Some(r) = &opts.reply_to
        && !valid_name(r)
    {
        return Err(CliError::Usage(format!(
            "--reply-to {r:?} is not a valid agent name"
        )));
    }
    let vault = Vault::open(vault_dir)?;
    let path = new_message_path(agent);
    vault.write(&path, &inbound_text(agent, message, opts))?;
    let (ix, _) = load_definitions(&vault);
    Ok((path, ix.agent(agent).is_some()))
}

/// Reads the definitions under `Agents/` (a cheap, advisory check for
/// `send`: definitions elsewhere in the vault are not looked at).
fn load_definitions(vault: &Vault) -> (Index, ()) {
    let mut ix = Index::new();
    for e in vault.list_under("Agents").entries {
        if let Ok((text, fp)) = vault.read(&e.path) {
            ix.update(&e.path, &text, fp, false);
        }
    }
    (ix, ())
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
pub fn reply_of(vault: &Vault, inbound: &str) -> Option<Reply> {
    let (text, _) = vault.read(inbound).ok()?;
    let n = Note::parse(&text).ok()?;
    let st = Status::parse(n.str("status").as_deref());
    if !matches!(st, Status::Handled | Status::Error) {
        return None;
    }
    let rp = reply_path(inbound);
    let (rtext, _) = vault.read(&rp).ok()?;
    let r = Note::parse(&rtext).ok()?;
    Some(Reply {
        status: r.str("status").unwrap_or_else(|| "ok".into()),
        text: r.body.trim_end().to_string(),
        path: rp,
    })
}

/// Waits up to `timeout` for the reply of `inbound`.
pub async fn wait_reply(
    vault_dir: &Path,
    inbound: &str,
    timeout: Duration,
) -> Result<Option<Reply>, CliError> {
    let vault = Vault::open(vault_dir)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(r) = reply_of(&vault, inbound) {
            return Ok(Some(r));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `reset VAULT AGENT`: blanks `session` and stamps `reset_at` on the
/// agent's thread notes so the next turn starts a fresh conversation.
/// Returns the threads changed.
pub fn reset(vault_dir: &Path, agent: &str) -> Result<Vec<String>, CliError> {
    if !valid_name(agent) {
        return Err(CliError::Usage(format!(
            "{agent:?} is not a valid agent name"
        )));
    }
    let vault = Vault::open(vault_dir)?;
    let dir: PathBuf = vault.root().join("Threads").join(agent);
    let mut changed = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(changed);
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let Some(stem) = name.strip_suffix(".md") else {
            continue;
        };
        let path = format!("Threads/{agent}/{stem}");
        let Ok((text, _)) = vault.read(&path) else {
            continue;
        };
        let Ok(n) = Note::parse(&text) else { continue };
        if n.kind() != NoteKind::Thread {
            continue;
        }
        // `session` for CLI backends; `reset_at` for backends that rebuild
        // the conversation from the thread's notes (older ones are left out).
        if let Ok((edited, _)) = edit_front_matter(
            &text,
            &[("session", "".into()), ("reset_at", now_rfc3339().into())],
        ) {
            vault.write(&path, &edited)?;
            changed.push(path);
        }
    }
    Ok(changed)
}
