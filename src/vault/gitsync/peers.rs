//! A second syncer on the same clone (issue 11 point 6): obsidian-git
//! committing, pulling and pushing by itself in the folder vaultrunner
//! syncs. Two syncers on one work tree race each other's index, commits
//! and pulls, so `serve --git-sync` refuses to start and says which
//! settings to turn off.
//!
//! obsidian-git keeps its settings in `<config>/plugins/obsidian-git/data.json`,
//! where `<config>` is Obsidian's configuration folder (`.obsidian` unless
//! the user renamed it): any top-level dot-folder counts. Its automatic
//! sync is on when one of `autoSaveInterval` (commit-and-sync),
//! `autoPushInterval`, `autoPullInterval` (minutes) is above 0, or
//! `autoPullOnBoot` / `autoBackupAfterFileChange` is true (the names of its
//! `DEFAULT_SETTINGS`). A plugin Obsidian lists as not enabled
//! (`<config>/community-plugins.json` without `obsidian-git`) syncs
//! nothing. Anything unreadable — a data.json that is not JSON, one over
//! 1 MiB (not read), a folder that cannot be listed — counts as "not
//! configured": only a clearly enabled auto-sync refuses.

use std::fs;
use std::io::Read;
use std::path::Path;

/// The largest settings file read.
const MAX_SETTINGS: u64 = 1024 * 1024;

/// obsidian-git's interval settings (minutes; 0 = off).
const INTERVALS: [&str; 3] = ["autoSaveInterval", "autoPushInterval", "autoPullInterval"];
/// obsidian-git's on/off settings that sync by themselves.
const FLAGS: [&str; 2] = ["autoPullOnBoot", "autoBackupAfterFileChange"];

/// A second syncer configured on this clone, in words (what was found and
/// what to turn off), or `None`. `top` is the folder whose dot-folders are
/// looked in (the work tree's top, or the vault folder).
pub fn other_syncer(top: &Path) -> Option<String> {
    let mut dirs: Vec<String> = fs::read_dir(top)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with('.') && n != ".git")
        .collect();
    dirs.sort();
    dirs.iter().find_map(|dir| {
        let config = top.join(dir);
        if !plugin_enabled(&config) {
            return None;
        }
        let on = auto_sync(&config.join("plugins/obsidian-git/data.json"))?;
        Some(format!(
            "obsidian-git syncs this clone by itself ({dir}/plugins/obsidian-git/data.json: {}); \
             two syncers on one clone race each other's commits and pulls. Turn its automatic \
             sync off on this clone (in Obsidian's Git settings: the auto commit-and-sync, push \
             and pull intervals to 0, pull on startup and auto commit after file change off), \
             or disable the plugin here, or give vaultrunner a clone of its own",
            on.join(", ")
        ))
    })
}

/// Whether Obsidian may load obsidian-git from this config folder: no,
/// only when its `community-plugins.json` (the enabled plugins) is a list
/// that lacks it.
fn plugin_enabled(config: &Path) -> bool {
    match read_json(&config.join("community-plugins.json")) {
        Some(serde_json::Value::Array(ids)) => ids.iter().any(|v| v == "obsidian-git"),
        _ => true,
    }
}

/// The automatic-sync settings that are on (`autoPullInterval: 5`), or
/// `None` when none is or the file cannot be read as a JSON object.
fn auto_sync(data_json: &Path) -> Option<Vec<String>> {
    let settings = read_json(data_json)?;
    let settings = settings.as_object()?;
    let mut on = Vec::new();
    for key in INTERVALS {
        if let Some(v) = settings.get(key)
            && v.as_f64().is_some_and(|n| n > 0.0)
        {
            on.push(format!("{key}: {v}"));
        }
    }
    for key in FLAGS {
        if settings.get(key).and_then(serde_json::Value::as_bool) == Some(true) {
            on.push(format!("{key}: true"));
        }
    }
    (!on.is_empty()).then_some(on)
}

/// A small JSON file, or `None` (absent, not a file, over the limit,
/// unreadable, not JSON).
fn read_json(path: &Path) -> Option<serde_json::Value> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_SETTINGS {
        return None;
    }
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(MAX_SETTINGS.saturating_add(1))
        .read_to_end(&mut buf)
        .ok()?;
    if u64::try_from(buf.len()).map_or(true, |n| n > MAX_SETTINGS) {
        return None;
    }
    serde_json::from_slice(&buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(top: &Path, config: &str, data: &str) {
        let dir = top.join(config).join("plugins/obsidian-git");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data.json"), data).unwrap();
    }

    /// obsidian-git's defaults: everything automatic off.
    const DEFAULTS: &str = r#"{"commitMessage":"vault backup: {{date}}","autoSaveInterval":0,"autoPushInterval":0,"autoPullInterval":0,"autoPullOnBoot":false,"disablePush":false,"autoBackupAfterFileChange":false}"#;

    #[test]
    fn nothing_there_or_defaults_is_no_syncer() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(other_syncer(t.path()), None);
        plugin(t.path(), ".obsidian", DEFAULTS);
        assert_eq!(other_syncer(t.path()), None);
        assert_eq!(other_syncer(&t.path().join("missing")), None);
    }

    #[test]
    fn each_automatic_setting_counts() {
        for (key, on) in [
            ("autoSaveInterval", "5"),
            ("autoPushInterval", "1"),
            ("autoPullInterval", "0.5"),
            ("autoPullOnBoot", "true"),
            ("autoBackupAfterFileChange", "true"),
        ] {
            let t = tempfile::tempdir().unwrap();
            let data = DEFAULTS.replace(&format!("\"{key}\":0"), &format!("\"{key}\":{on}"));
            let data = data.replace(&format!("\"{key}\":false"), &format!("\"{key}\":{on}"));
            assert_ne!(data, DEFAULTS, "{key}");
            plugin(t.path(), ".obsidian", &data);
            let found = other_syncer(t.path()).unwrap_or_else(|| panic!("{key} not seen"));
            assert!(found.contains(&format!("{key}: {on}")), "{found}");
            assert!(
                found.contains(".obsidian/plugins/obsidian-git/data.json"),
                "{found}"
            );
            assert!(found.contains("Turn its automatic sync off"), "{found}");
        }
    }

    #[test]
    fn a_renamed_config_folder_is_looked_in() {
        let t = tempfile::tempdir().unwrap();
        plugin(t.path(), ".obsidian-phone", r#"{"autoPullInterval":10}"#);
        let found = other_syncer(t.path()).unwrap();
        assert!(found.contains(".obsidian-phone/plugins"), "{found}");
        // Not a dot-folder: not Obsidian's config.
        let t = tempfile::tempdir().unwrap();
        plugin(t.path(), "obsidian", r#"{"autoPullInterval":10}"#);
        assert_eq!(other_syncer(t.path()), None);
    }

    #[test]
    fn unreadable_settings_are_not_configured() {
        for data in [
            "not json",
            "[1, 2]",
            r#"{"autoPullInterval":"10"}"#,
            r#"{"autoPullInterval":-1, "autoPullOnBoot":"yes"}"#,
            "",
        ] {
            let t = tempfile::tempdir().unwrap();
            plugin(t.path(), ".obsidian", data);
            assert_eq!(other_syncer(t.path()), None, "{data}");
        }
        // Over 1 MiB: not read at all, even though it would say "on".
        let t = tempfile::tempdir().unwrap();
        let huge = format!(
            "{{\"autoPullInterval\":10,\"pad\":\"{}\"}}",
            "x".repeat(1 << 20)
        );
        plugin(t.path(), ".obsidian", &huge);
        assert_eq!(other_syncer(t.path()), None);
        // data.json a folder.
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join(".obsidian/plugins/obsidian-git/data.json")).unwrap();
        assert_eq!(other_syncer(t.path()), None);
    }

    #[test]
    fn a_plugin_obsidian_does_not_enable_syncs_nothing() {
        let t = tempfile::tempdir().unwrap();
        plugin(t.path(), ".obsidian", r#"{"autoSaveInterval":5}"#);
        let list = t.path().join(".obsidian/community-plugins.json");
        fs::write(&list, r#"["dataview"]"#).unwrap();
        assert_eq!(other_syncer(t.path()), None);
        fs::write(&list, r#"["dataview", "obsidian-git"]"#).unwrap();
        assert!(other_syncer(t.path()).is_some());
        // A list that cannot be read says nothing either way.
        fs::write(&list, "garbage").unwrap();
        assert!(other_syncer(t.path()).is_some());
    }
}
