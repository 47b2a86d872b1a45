//! The one-shot commands of SPEC §5 (`init`, `check`, `status`, `send`,
//! `reset`), as library functions returning values; `main.rs` prints them.

use std::path::Path;
use std::time::Duration;

use crate::agent::check_name;
pub use crate::message::{Reply, SendOptions, inbound_text, new_message_path, reply_of};
use crate::note::{Note, NoteKind, ThreadNote};
use crate::queue::Index;
use crate::vault::{LocalVault, Vault, VaultError};

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
        "Agents/planner.md",
        include_str!("../vault-example/Agents/planner.md"),
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
        error: e,
    })?;
    let vault = LocalVault::open(dir)?;
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
pub fn load_index(vault: &dyn Vault) -> (Index, Vec<Finding>) {
    load_index_as(vault, true)
}

/// [`load_index`], with `working` messages counted as queued or not.
fn load_index_as(vault: &dyn Vault, recovering: bool) -> (Index, Vec<Finding>) {
    let mut ix = Index::new(crate::backend::KINDS);
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
                ix.update(&e.path, &text, fp, recovering);
            }
            // Deleted since the listing.
            Err(err) if err.is_not_found() => {}
            // A note that cannot be read now (out of descriptors, an I/O
            // error) may be fine later: worth a warning, not a failed check.
            Err(err) if err.is_transient() => findings.push(Finding {
                file: format!("{}.md", e.path),
                reason: format!("could not be read now: {} (try again)", err.reason()),
                is_error: false,
            }),
            // A binary `.md` or one over the size limit cannot be an agent
            // note: the index records it as `serve` does (a warning).
            Err(err) => {
                ix.unreadable(&e.path, e.version, &err.reason());
            }
        }
    }
    (ix, findings)
}

/// `check VAULT`: every problem with its file and reason.
pub fn check(location: &str) -> Result<Vec<Finding>, CliError> {
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let (ix, mut findings) = load_index(vault);
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
    /// Why a remote vault could not be reached (what follows is then
    /// incomplete).
    pub unreachable: Option<String>,
    /// Where a running `serve --git-sync` stands with the upstream.
    pub sync: Option<crate::vault::SyncStatus>,
    pub agents: Vec<AgentStatus>,
    /// (message, agent, why) for messages whose agent cannot run.
    pub waiting: Vec<(String, String, String)>,
    pub errors: usize,
}

/// `status VAULT`.
pub fn status(location: &str) -> Result<StatusReport, CliError> {
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let served = vault.is_locked();
    // Without a running serve, `working` notes are crash leftovers that the
    // next start runs (queued); with one, they are in flight.
    let (ix, findings) = load_index_as(vault, !served);
    let mut agents = Vec::new();
    for def in ix.agents() {
        let (mut last, mut last_status, mut turns) = (None::<String>, None, 0u64);
        for entry in vault.list_under(&format!("Threads/{}", def.name)).entries {
            let Ok((text, _)) = vault.read(&entry.path) else {
                continue;
            };
            let Ok(n) = Note::parse(&text) else { continue };
            if n.kind() != NoteKind::Thread {
                continue;
            }
            let t = ThreadNote::of(&n.meta);
            turns = turns.saturating_add(t.turn_count);
            if let Some(at) = t.last_turn_at
                && last.as_ref().is_none_or(|l| at > *l)
            {
                last = Some(at);
                last_status = t.status;
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
        unreachable: vault.health().err(),
        sync: vault.sync_status(),
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

/// The largest message `send` writes, in bytes: 1 MiB, the HTTP API's
/// limit for a request body, so every way into the vault takes the same
/// messages. Far under the 8 MiB beyond which a note is not read at all
/// (a bigger message would be written and then ignored forever), and more
/// than a model's context holds anyway.
pub const MAX_MESSAGE_BYTES: usize = crate::trigger::http::MAX_BODY;

fn too_big(len: &str) -> CliError {
    CliError::Usage(format!(
        "the message is {len} bytes, over the limit of {MAX_MESSAGE_BYTES} (1 MiB); nothing was written. Put a long text in a note of its own and send a link to it"
    ))
}

/// Reads a message from `input` (standard input for `send -`), at most
/// [`MAX_MESSAGE_BYTES`]: a longer one is refused after reading one byte
/// more than the limit, never read whole.
pub fn read_message(input: impl std::io::Read) -> Result<String, CliError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_MESSAGE_BYTES).unwrap_or(u64::MAX);
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Usage(format!("reading the message from standard input: {e}")))?;
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(too_big(&format!("more than {MAX_MESSAGE_BYTES}")));
    }
    String::from_utf8(buf).map_err(|_| {
        CliError::Usage(
            "the message on standard input is not UTF-8 text; nothing was written".into(),
        )
    })
}

/// `send`: writes an inbound note durably; returns its path and whether the
/// agent has a definition now. A message over [`MAX_MESSAGE_BYTES`] is
/// refused.
pub fn send(
    location: &str,
    agent: &str,
    message: &str,
    opts: &SendOptions,
) -> Result<(String, bool), CliError> {
    check_name(agent).map_err(CliError::Usage)?;
    if let Some(r) = &opts.reply_to {
        check_name(r).map_err(|e| CliError::Usage(format!("--reply-to: {e}")))?;
    }
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(too_big(&message.len().to_string()));
    }
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let path = new_message_path(agent);
    vault.write(&path, &inbound_text(agent, message, opts))?;
    let (ix, _) = load_definitions(vault);
    Ok((path, ix.agent(agent).is_some()))
}

/// Reads the definitions under `Agents/` (a cheap, advisory check for
/// `send`: definitions elsewhere in the vault are not looked at).
fn load_definitions(vault: &dyn Vault) -> (Index, ()) {
    let mut ix = Index::new(crate::backend::KINDS);
    for e in vault.list_under("Agents").entries {
        if let Ok((text, fp)) = vault.read(&e.path) {
            ix.update(&e.path, &text, fp, false);
        }
    }
    (ix, ())
}

/// Waits up to `timeout` for the reply of `inbound`.
pub async fn wait_reply(
    location: &str,
    inbound: &str,
    timeout: Duration,
) -> Result<Option<Reply>, CliError> {
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let deadline = crate::time::after(timeout);
    loop {
        if let Some(r) = reply_of(vault, inbound) {
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
/// Returns the threads changed. An agent with neither a definition nor a
/// `Threads/<agent>/` folder is an error (a typo must not look like
/// success).
pub fn reset(location: &str, agent: &str) -> Result<Vec<String>, CliError> {
    check_name(agent).map_err(CliError::Usage)?;
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let has_threads = !vault
        .list_under(&format!("Threads/{agent}"))
        .entries
        .is_empty();
    if !has_threads {
        let (ix, _) = load_index(vault);
        if ix.agent(agent).is_none() {
            let mut names: Vec<&str> = ix.agents().map(|d| d.name.as_str()).collect();
            names.sort_unstable();
            let known = if names.is_empty() {
                "this vault has no agents".to_string()
            } else {
                format!("the agents are: {}", names.join(", "))
            };
            return Err(CliError::Usage(format!(
                "no agent {agent:?} in this vault: no definition names it and there is no Threads/{agent}/ folder; {known} (a broken definition is listed by `vaultrunner check`)"
            )));
        }
    }
    Ok(crate::message::reset_threads(vault, agent)?)
}

/// One job's line in `schedule`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobSchedule {
    /// The job note's path.
    pub job: String,
    pub agent: String,
    #[serde(skip)]
    pub cron: String,
    #[serde(skip)]
    pub tz: String,
    #[serde(skip)]
    pub enabled: bool,
    /// Next fire times, RFC 3339 with the zone's offset (none if disabled).
    pub next: Vec<String>,
}

/// `schedule VAULT`: each job's next `count` fire times after `from`, and
/// the job notes that are invalid (file and field).
pub fn schedule(
    location: &str,
    from: chrono::DateTime<chrono::Utc>,
    count: usize,
) -> Result<(Vec<JobSchedule>, Vec<Finding>), CliError> {
    let vault = crate::vault::open(location, &Default::default())?;
    let vault = &*vault;
    let (ix, _) = load_index(vault);
    let jobs = ix
        .jobs()
        .map(|j| JobSchedule {
            job: j.path.clone(),
            agent: j.agent.clone(),
            cron: j.cron_text.clone(),
            tz: j.tz.name().to_string(),
            enabled: j.enabled,
            next: if j.enabled {
                j.upcoming(from, count)
                    .iter()
                    .map(|t| t.to_rfc3339())
                    .collect()
            } else {
                Vec::new()
            },
        })
        .collect();
    let invalid = ix
        .problems()
        .filter(|p| p.reason.starts_with("job disabled"))
        .map(|p| Finding {
            file: format!("{}.md", p.path),
            reason: p.reason.clone(),
            is_error: true,
        })
        .collect();
    Ok((jobs, invalid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_with_a_bound() {
        let max = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(
            read_message(max.as_bytes()).unwrap().len(),
            MAX_MESSAGE_BYTES
        );
        let over = format!("{max}b");
        let e = read_message(over.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("over the limit of 1048576 (1 MiB)"), "{e}");
        // An endless input is refused after the limit, not read forever.
        let e = read_message(std::io::repeat(b'x')).unwrap_err().to_string();
        assert!(e.contains("more than 1048576 bytes"), "{e}");
        let e = read_message(&[0xff, 0xfe][..]).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    /// `init` writes exactly what `vault-example/` holds.
    #[test]
    fn example_vault_is_complete() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vault-example");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e
                        .path()
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    // Notes the example vault gains by running it are not part of it.
                    if !rel.starts_with("Threads/")
                        && !rel.contains(".reply.")
                        && !rel.contains(".callback.")
                    {
                        on_disk.push(rel);
                    }
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EXAMPLE_VAULT.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for (p, text) in EXAMPLE_VAULT {
            assert_eq!(&std::fs::read_to_string(root.join(p)).unwrap(), text, "{p}");
        }
    }
}
