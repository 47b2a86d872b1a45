//! Moving the work tree and the user's index from one commit to the next
//! for the paths that changed between them, and only those: what git's
//! two-tree `read-tree -m -u` does, without reading and writing the state
//! of every file of a big vault.
//!
//! The rules are git's: a path is updated only where the file on disk and
//! the index entry are still the old commit's (or already the new one's);
//! anything else — an uncommitted edit, something staged, an untracked
//! file in the way — stops the whole move before a file is touched. Paths
//! git would filter (LFS, `eol`/`text` attributes, `core.autocrlf`) or
//! that are submodules are left to `read-tree -m -u` itself ([`Fast::No`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;

use crate::git::RunOpts;

use super::cycle::{Halt, Repo, Step, ZERO_OID};

/// One path that differs between two commits.
#[derive(Debug, Clone)]
pub(super) struct Changed {
    pub path: String,
    pub old: Option<(String, String)>,
    pub new: Option<(String, String)>,
    /// Renamed (exactly) to this path.
    pub to: Option<String>,
}

/// Could the fast path do the move?
pub(super) enum Fast {
    Done,
    /// Use `read-tree -m -u` (filters or submodules are involved).
    No,
}

/// The paths that differ between commits `a` and `b`, with modes and
/// object names (`None`: not there); with `renames`, an exact rename is
/// one entry whose `to` is the new path.
pub(super) async fn changes(repo: &Repo, a: &str, b: &str, renames: bool) -> Step<Vec<Changed>> {
    // Exact renames only: two short notes from one template are similar
    // enough for git's guess, and a new message is no moved one.
    let how = if renames { "-M100%" } else { "--no-renames" };
    let out = repo
        .git
        .run(
            ["diff-tree", "-r", "-z", "--no-commit-id", how, a, b, "--"],
            RunOpts::read(),
        )
        .await?;
    // `:<m1> <m2> <o1> <o2> <S>\0<path>\0[<path2>\0]`
    let mut list = Vec::new();
    let mut it = out.stdout.split(|x| *x == 0).filter(|x| !x.is_empty());
    while let Some(meta) = it.next() {
        let meta = String::from_utf8_lossy(meta).into_owned();
        let f: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let (Some(m1), Some(m2), Some(o1), Some(o2), Some(st)) =
            (f.first(), f.get(1), f.get(2), f.get(3), f.get(4))
        else {
            break;
        };
        let Some(p) = it.next() else { break };
        let to = if st.starts_with('R') || st.starts_with('C') {
            let Some(p2) = it.next() else { break };
            Some(String::from_utf8_lossy(p2).into_owned())
        } else {
            None
        };
        let side = |m: &str, o: &str| {
            (!o.chars().all(|c| c == '0')).then(|| (m.to_string(), o.to_string()))
        };
        list.push(Changed {
            path: String::from_utf8_lossy(p).into_owned(),
            old: side(m1, o1),
            new: side(m2, o2),
            to,
        });
    }
    Ok(list)
}

/// `git <cmd…> -- <paths>…`, read-only, the paths taken literally.
async fn for_paths(repo: &Repo, cmd: &[&str], paths: &[&str]) -> Step<crate::git::Output> {
    let mut args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
    args.push("--".into());
    args.extend(paths.iter().map(OsString::from));
    Ok(repo
        .git
        .run(&args, RunOpts::read().var("GIT_LITERAL_PATHSPECS", "1"))
        .await?)
}

/// Path → object name from a `-z` listing of `<fields>\t<path>` entries,
/// the object name being the space-separated field `oid_field`.
async fn objects(
    repo: &Repo,
    cmd: &[&str],
    paths: &[&str],
    oid_field: usize,
) -> Step<HashMap<String, String>> {
    let out = for_paths(repo, cmd, paths).await?;
    let mut found = HashMap::new();
    for e in out.stdout.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let t = String::from_utf8_lossy(e);
        if let Some((meta, p)) = t.split_once('\t')
            && let Some(oid) = meta.split(' ').nth(oid_field)
        {
            found.insert(p.to_string(), oid.to_string());
        }
    }
    Ok(found)
}

/// The user's index entries of `paths` (path → object name), by one
/// `ls-files -s` (which reads the index, never the work tree):
/// `<mode> <oid> <stage>\t<path>`.
pub(super) async fn index_entries(repo: &Repo, paths: &[&str]) -> Step<HashMap<String, String>> {
    objects(repo, &["ls-files", "-s", "-z"], paths, 1).await
}

/// The blobs of `paths` in `commit` (path → object name), by one
/// `ls-tree`: `<mode> blob <oid>\t<path>`.
pub(super) async fn tree_entries(
    repo: &Repo,
    commit: &str,
    paths: &[&str],
) -> Step<HashMap<String, String>> {
    objects(repo, &["ls-tree", "-z", "--full-tree", commit], paths, 2).await
}

/// Does git filter any of these paths when it checks them out?
async fn filtered(repo: &Repo, paths: &[&str]) -> Step<bool> {
    let crlf = repo
        .git
        .run(
            ["config", "--get", "core.autocrlf"],
            RunOpts::read().ok_code(1),
        )
        .await?;
    let crlf = String::from_utf8_lossy(&crlf.stdout)
        .trim()
        .to_ascii_lowercase();
    if matches!(crlf.as_str(), "true" | "input") {
        return Ok(true);
    }
    let out = for_paths(repo, &["check-attr", "-z", "filter", "text", "eol"], paths).await?;
    // `<path>\0<attribute>\0<value>\0` …
    let fields: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    Ok(fields
        .chunks(3)
        .filter_map(|c| c.get(2))
        .any(|v| !matches!(*v, b"unspecified" | b"unset" | b"")))
}

/// Is every folder on the way to `path` (below `top`) a real folder, or
/// not there yet — never a symlink or a file?
fn plain_folders(top: &Path, path: &str) -> bool {
    let mut at = top.to_path_buf();
    let mut parts = path.split('/').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        if part.is_empty() || part == "." || part == ".." {
            return false;
        }
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            _ => return false,
        }
    }
    true
}

/// What is at `path` on disk: a file's bytes, a symlink's target, or
/// nothing (`Err` for something else: a folder, unreadable).
fn on_disk(path: &Path) -> Result<Option<(bool, Vec<u8>)>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path)
            .map(|t| Some((true, t.into_os_string().into_encoded_bytes())))
            .map_err(|e| e.to_string()),
        Ok(m) if m.is_file() => std::fs::read(path)
            .map(|b| Some((false, b)))
            .map_err(|e| e.to_string()),
        Ok(_) => Err("not a file".into()),
    }
}

fn matches(
    disk: &Option<(bool, Vec<u8>)>,
    side: &Option<(String, String)>,
    blob: &Option<Vec<u8>>,
) -> bool {
    match (disk, side, blob) {
        (None, None, _) => true,
        (Some((link, bytes)), Some((mode, _)), Some(b)) => {
            *link == (mode == "120000") && bytes == b
        }
        _ => false,
    }
}

/// Moves the files and the index entries of `changes` from the old side
/// to the new (the branch is the caller's, after). Stops before touching
/// anything when a path has someone's edit.
pub(super) async fn move_paths(repo: &Repo, changes: &[Changed]) -> Step<Fast> {
    if changes.is_empty() {
        return Ok(Fast::Done);
    }
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    let submodule = changes.iter().any(|c| {
        [&c.old, &c.new]
            .iter()
            .any(|s| s.as_ref().is_some_and(|(m, _)| m == "160000"))
    });
    // A folder on the way that is a symlink (or not a folder) would send
    // a write or a removal somewhere else: git's own checkout knows how
    // to refuse or replace it.
    let top = repo.git.top().to_path_buf();
    if submodule || paths.iter().any(|p| !plain_folders(&top, p)) || filtered(repo, &paths).await? {
        return Ok(Fast::No);
    }
    // Both sides' blobs, and the index's entries, in one call each.
    let mut specs = Vec::with_capacity(changes.len() * 2);
    for c in changes {
        specs.push(
            c.old
                .as_ref()
                .map_or(ZERO_OID.to_string(), |(_, o)| o.clone()),
        );
        specs.push(
            c.new
                .as_ref()
                .map_or(ZERO_OID.to_string(), |(_, o)| o.clone()),
        );
    }
    let mut got = repo.blobs(&specs).await?.into_iter();
    let index = index_entries(repo, &paths).await?;
    let mut plan = Vec::with_capacity(changes.len());
    let mut kept = Vec::new();
    for c in changes {
        let (old_blob, new_blob) = (got.next().flatten(), got.next().flatten());
        let full = top.join(&c.path);
        let disk = match on_disk(&full) {
            Ok(d) => d,
            Err(why) => {
                kept.push(format!("{} ({why})", c.path));
                continue;
            }
        };
        let staged = index.get(&c.path);
        let staged_ok = |side: &Option<(String, String)>| match side {
            None => staged.is_none(),
            Some((_, o)) => staged == Some(o),
        };
        let at_new = matches(&disk, &c.new, &new_blob) && staged_ok(&c.new);
        let at_old = matches(&disk, &c.old, &old_blob) && staged_ok(&c.old);
        if at_new {
            continue;
        }
        if !at_old {
            kept.push(c.path.clone());
            continue;
        }
        plan.push((c.clone(), new_blob));
    }
    if !kept.is_empty() {
        return Err(Halt::Pause(format!(
            "notes changed upstream have uncommitted edits here, which are kept: {}. Commit or undo those edits and sync goes on",
            kept.join(", ")
        )));
    }
    // Deletions first (a folder may give way to a file), then the writes.
    let mut info = Vec::new();
    for (c, _) in plan.iter().filter(|(c, _)| c.new.is_none()) {
        let full = top.join(&c.path);
        if let Err(e) = std::fs::remove_file(&full)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Halt::Fail(format!("{}: {e}", full.display())));
        }
        // As git does: a folder left empty goes.
        let mut dir = full.parent();
        while let Some(d) = dir {
            if d == top || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        info.extend_from_slice(format!("0 {ZERO_OID}\t{}", c.path).as_bytes());
        info.push(0);
    }
    for (c, blob) in plan.iter().filter(|(c, _)| c.new.is_some()) {
        let (Some((mode, oid)), Some(bytes)) = (&c.new, blob) else {
            continue;
        };
        let full = top.join(&c.path);
        write_file(&full, mode, bytes)
            .map_err(|e| Halt::Fail(format!("{}: {e}", full.display())))?;
        info.extend_from_slice(format!("{mode} {oid}\t{}", c.path).as_bytes());
        info.push(0);
    }
    if !info.is_empty() {
        repo.git
            .run(
                ["update-index", "-z", "--index-info"],
                RunOpts::default().input(info),
            )
            .await
            .map_err(|e| Halt::Fail(e.to_string()))?;
    }
    Ok(Fast::Done)
}

/// Writes a file (or a symlink, mode 120000) in place through a temp
/// file and a rename, flushed.
fn write_file(full: &Path, mode: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = full.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if mode == "120000" {
        let tmp = dir.join(format!(
            ".vaultrunner-{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        std::os::unix::fs::symlink(
            std::ffi::OsStr::new(&String::from_utf8_lossy(bytes).into_owned()),
            &tmp,
        )?;
        return std::fs::rename(&tmp, full);
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".vaultrunner-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    // The bits a file there had (a group-writable vault stays one), else
    // the usual; the executable bits as the commit says.
    use std::os::unix::fs::PermissionsExt as _;
    let had = std::fs::symlink_metadata(full)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.permissions().mode() & 0o666);
    let bits = had.unwrap_or(0o644);
    let bits = if mode == "100755" {
        bits | ((bits & 0o444) >> 2)
    } else {
        bits
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(bits))?;
    tmp.as_file().sync_data()?;
    tmp.persist(full).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_or_file_folder_on_the_way_is_not_plain() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path();
        std::fs::create_dir_all(top.join("Inbox/sub")).unwrap();
        std::fs::write(top.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("/tmp", top.join("out")).unwrap();
        assert!(plain_folders(top, "Inbox/sub/a.md"));
        assert!(plain_folders(top, "Inbox/new/deeper/a.md"));
        assert!(plain_folders(top, "a.md"));
        assert!(!plain_folders(top, "out/a.md"));
        assert!(!plain_folders(top, "file/a.md"));
        assert!(!plain_folders(top, "Inbox/../a.md"));
    }
}
