//! Trees for vaultrunner's commits, built along the changed paths only:
//! the trees of the folders that hold a changed file are read (one
//! `cat-file --batch`), changed, and written back bottom-up with `mktree`
//! — never an index of the whole vault, so a commit's cost follows the
//! folders it touches, not the size of the vault.

use std::collections::BTreeMap;

use crate::git::RunOpts;

use super::cycle::{Halt, Repo, Step, first_line};

/// A tree built.
pub(super) struct Built {
    pub tree: String,
    /// The blob of each file set (git path → object name).
    pub blobs: BTreeMap<String, String>,
}

/// One entry of a tree: its mode (as git writes it) and object name (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: String,
    oid: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The entries of a raw tree object (`<mode> <name>\0<oid bytes>`…).
fn parse_tree(raw: &[u8], oid_len: usize) -> Option<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let sp = memchr::memchr(b' ', rest)?;
        let mode = std::str::from_utf8(rest.get(..sp)?).ok()?.to_string();
        rest = rest.get(sp + 1..)?;
        let nul = memchr::memchr(0, rest)?;
        let name = String::from_utf8_lossy(rest.get(..nul)?).into_owned();
        rest = rest.get(nul + 1..)?;
        let oid = hex(rest.get(..oid_len)?);
        rest = rest.get(oid_len..)?;
        out.insert(name, Entry { mode, oid });
    }
    Some(out)
}

/// The folders holding `path` (`a/b/c.md` → `["", "a", "a/b"]`).
fn folders(path: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut at = 0;
    while let Some(i) = path.get(at..).and_then(|r| r.find('/')) {
        let end = at + i;
        out.push(path.get(..end).unwrap_or_default().to_string());
        at = end + 1;
    }
    out
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').and_then(|i| path.get(..i)).unwrap_or("")
}

/// The tree of commit `base` (`None`: empty) with `files` (git path →
/// text) set in it. Files keep an executable mode they had.
pub(super) async fn build_tree(
    repo: &Repo,
    state_dir: &std::path::Path,
    base: Option<&str>,
    files: &BTreeMap<String, String>,
) -> Step<Built> {
    let texts: Vec<&str> = files.values().map(String::as_str).collect();
    let oids = repo.write_blobs(state_dir, &texts).await?;
    let blobs: BTreeMap<String, String> = files.keys().cloned().zip(oids).collect();
    // Every folder on the way to a changed file, read once.
    let mut dirs: BTreeMap<String, BTreeMap<String, Entry>> = BTreeMap::new();
    for p in files.keys() {
        for d in folders(p) {
            dirs.entry(d).or_default();
        }
    }
    if let Some(base) = base {
        let names: Vec<String> = dirs.keys().cloned().collect();
        let specs: Vec<String> = names
            .iter()
            .map(|d| {
                if d.is_empty() {
                    format!("{base}^{{tree}}")
                } else {
                    format!("{base}:{d}")
                }
            })
            .collect();
        for (d, obj) in names.iter().zip(repo.objects(&specs).await?) {
            // A folder that is not there yet (or a file in its place,
            // which the new entries replace) starts empty.
            if let Some((kind, raw)) = obj
                && kind == "tree"
            {
                let entries = parse_tree(&raw, repo.oid_len).ok_or_else(|| {
                    Halt::Fail(format!("the tree of {d:?} in {base} does not parse"))
                })?;
                dirs.insert(d.clone(), entries);
            }
        }
    }
    for (p, oid) in &blobs {
        let dir = dirs.entry(parent_of(p).to_string()).or_default();
        let mode = match dir.get(name_of(p)).map(|e| e.mode.as_str()) {
            Some("100755") => "100755",
            _ => "100644",
        };
        dir.insert(
            name_of(p).to_string(),
            Entry {
                mode: mode.into(),
                oid: oid.clone(),
            },
        );
    }
    // Deepest first: each folder's new tree goes into its parent.
    let mut order: Vec<String> = dirs.keys().cloned().collect();
    order.sort_by_key(|d| {
        std::cmp::Reverse(if d.is_empty() {
            0
        } else {
            d.matches('/').count() + 1
        })
    });
    let mut root = None;
    for d in order {
        let Some(entries) = dirs.remove(&d) else {
            continue;
        };
        let mut input = Vec::new();
        for (name, e) in &entries {
            let kind = match e.mode.as_str() {
                "40000" | "040000" => "tree",
                "160000" => "commit",
                _ => "blob",
            };
            let mode = if kind == "tree" {
                "040000"
            } else {
                e.mode.as_str()
            };
            input.extend_from_slice(format!("{mode} {kind} {}\t{name}", e.oid).as_bytes());
            input.push(0);
        }
        let out = repo
            .git
            .run(["mktree", "-z"], RunOpts::default().input(input))
            .await?;
        let oid = first_line(&out.stdout);
        if d.is_empty() {
            root = Some(oid);
        } else {
            dirs.entry(parent_of(&d).to_string()).or_default().insert(
                name_of(&d).to_string(),
                Entry {
                    mode: "040000".into(),
                    oid,
                },
            );
        }
    }
    let tree = root.ok_or_else(|| Halt::Fail("no root tree was built".into()))?;
    Ok(Built { tree, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_names_of_a_path() {
        assert_eq!(folders("a/b/c.md"), vec!["", "a", "a/b"]);
        assert_eq!(folders("c.md"), vec![""]);
        assert_eq!(
            (parent_of("a/b/c.md"), name_of("a/b/c.md")),
            ("a/b", "c.md")
        );
        assert_eq!((parent_of("c.md"), name_of("c.md")), ("", "c.md"));
    }

    #[test]
    fn raw_trees_parse_and_torn_ones_do_not() {
        let mut raw = b"100644 a.md\0".to_vec();
        raw.extend([0xab; 20]);
        raw.extend(b"40000 sub\0");
        raw.extend([0x01; 20]);
        let t = parse_tree(&raw, 20).unwrap();
        assert_eq!(t["a.md"].mode, "100644");
        assert_eq!(t["a.md"].oid, "ab".repeat(20));
        assert_eq!(t["sub"].mode, "40000");
        assert!(parse_tree(raw.get(..raw.len() - 3).unwrap(), 20).is_none());
    }
}
