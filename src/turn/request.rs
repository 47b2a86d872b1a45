//! The backend request of a turn: the prompt with its run-context header,
//! the system prompt, the workspace and the environment of SPEC §4.

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::Definition;
use crate::backend::TurnRequest;

use super::TurnEnv;
use super::render::{delegation_section, now_rfc3339};

/// The running vaultrunner binary, for `$VAULTRUNNER_BIN send …` in turns.
pub fn vaultrunner_bin() -> String {
    // Looked up once (a `readlink` of /proc/self/exe per turn otherwise).
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "vaultrunner".into())
    })
    .clone()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_request(
    env: &TurnEnv,
    def: &Arc<Definition>,
    path: &str,
    thread: &str,
    (message, sender): (&str, Option<&str>),
    thread_body: &str,
    session: Option<String>,
    depth: u64,
    header: bool,
) -> TurnRequest {
    let root = env.vault.workspace(&def.name);
    let message = message.trim().to_string();
    let prompt = if header {
        format!(
            "[vaultrunner] time: {} · agent: {} · thread: {} · from: {}\n\n{}",
            now_rfc3339(),
            def.name,
            thread,
            sender.unwrap_or("user"),
            message
        )
    } else {
        message.clone()
    };
    let mut system_prompt = def.system_prompt.clone();
    let mut add = |part: &str| {
        if !part.is_empty() {
            if !system_prompt.is_empty() {
                system_prompt.push_str("\n\n");
            }
            system_prompt.push_str(part);
        }
    };
    add(thread_body.trim());
    if def.backend == "claude" && def.delegation_prompt {
        add(&delegation_section(&def.name, &env.agents));
    }
    let workspace = match def
        .workspace
        .as_deref()
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        None => root.clone(),
        Some(w) if w.starts_with("~/") => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(&w[2..]))
            .unwrap_or_else(|| root.join(w)),
        Some(w) => root.join(w),
    };
    let env_vars = vec![
        ("VAULTRUNNER_VAULT".to_string(), env.vault.location()),
        ("VAULTRUNNER_AGENT".to_string(), def.name.clone()),
        ("VAULTRUNNER_THREAD".to_string(), thread.to_string()),
        (
            "VAULTRUNNER_SESSION".to_string(),
            session.clone().unwrap_or_default(),
        ),
        (
            "VAULTRUNNER_MESSAGE".to_string(),
            env.vault.note_location(path),
        ),
        (
            "VAULTRUNNER_DELEGATION_DEPTH".to_string(),
            depth.to_string(),
        ),
        ("VAULTRUNNER_BIN".to_string(), vaultrunner_bin()),
    ];
    TurnRequest {
        definition: def.clone(),
        prompt,
        message,
        system_prompt,
        session,
        workspace,
        env: env_vars,
        timeout: def.timeout,
        deadline: crate::time::after(def.timeout),
        stall: def.stall_timeout,
        history: Vec::new(),
        mcp_config: match env.vault.mcp_config() {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!("{}: the vault's MCP endpoint is left out: {e}", def.name);
                None
            }
        },
        attachments: Vec::new(),
    }
}
