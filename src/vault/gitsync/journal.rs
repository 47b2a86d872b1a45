//! The journal of vaultrunner's own writes to a Git-synced folder, kept
//! until they are committed: one JSON line per note written, appended
//! (and flushed) before the note is renamed into place. It is the list of
//! intents; the work tree is the fact — a commit takes an intent only
//! where the note on disk still shows it, so a crash between the line and
//! the rename commits nothing that is not there.
//!
//! Several processes append (`serve`, a `send` beside it); the file lock
//! on the journal orders them, and the one that takes the journal moves it
//! aside under the same lock, so no line is lost to the move.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ops::OwnChange;

/// The journal's file in the vault's state folder.
pub const FILE: &str = "git-journal.jsonl";
/// Taken aside for a commit (kept if the commit does not finish, and
/// read again first).
const TAKEN: &str = "git-journal.taken.jsonl";

/// The most a journal is read (a journal is cleared at every commit; one
/// this big means commits have been failing for a long while).
const MAX_BYTES: u64 = 256 * 1024 * 1024;

/// One own write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The vault path (no `.md`).
    pub path: String,
    pub change: OwnChange,
    /// When it was written (seconds since the epoch).
    #[serde(default)]
    pub at: i64,
}

/// The journal of one vault.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

fn lock(f: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    loop {
        // SAFETY: flock on a descriptor this function borrows.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Is the open file still the one at `path` (not moved aside)?
fn same_file(f: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (f.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            dir: state_dir.to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Opens the journal for appending, locked, and sure to be the file at
    /// its path (not one a taker moved aside meanwhile).
    fn open_locked(&self) -> io::Result<File> {
        let path = self.path();
        loop {
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            lock(&f)?;
            if same_file(&f, &path) {
                return Ok(f);
            }
        }
    }

    /// Appends records durably (one `write` per batch of lines).
    pub fn append(&self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = self.open_locked()?;
        f.write_all(&buf)?;
        f.sync_data()
        // The lock goes with the descriptor.
    }

    /// Takes every record not yet committed: the ones a commit that did
    /// not finish left aside, then the journal (moved aside). Call
    /// [`Journal::done`] once they are committed. Lines that do not parse
    /// (a torn last line after a crash) are passed over and counted.
    pub fn take(&self) -> io::Result<(Vec<Record>, usize)> {
        let taken = self.dir.join(TAKEN);
        let mut text = Vec::new();
        if let Ok(f) = File::open(&taken) {
            f.take(MAX_BYTES).read_to_end(&mut text)?;
            if text.last().is_some_and(|b| *b != b'\n') {
                text.push(b'\n');
            }
        }
        let path = self.path();
        if path.exists() {
            let f = self.open_locked()?;
            let mut now = Vec::new();
            File::open(&path)?.take(MAX_BYTES).read_to_end(&mut now)?;
            text.extend_from_slice(&now);
            // Everything read is now in `taken`; the journal starts anew.
            write_durably(&taken, &text)?;
            fs::remove_file(&path)?;
            drop(f);
        }
        let mut records = Vec::new();
        let mut bad = 0;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(_) => bad += 1,
            }
        }
        Ok((records, bad))
    }

    /// The records taken are committed (or were found to have nothing to
    /// commit): forgets them.
    pub fn done(&self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(TAKEN)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The notes of the records not yet committed (read, not taken).
    pub fn paths(&self) -> std::collections::HashSet<String> {
        let mut out = std::collections::HashSet::new();
        for f in [self.dir.join(TAKEN), self.path()] {
            let Ok(file) = File::open(&f) else { continue };
            let mut text = Vec::new();
            if file.take(MAX_BYTES).read_to_end(&mut text).is_err() {
                continue;
            }
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(r) = serde_json::from_slice::<Record>(line) {
                    out.insert(r.path);
                }
            }
        }
        out
    }

    /// Are there records not yet committed?
    pub fn is_empty(&self) -> bool {
        !self.path().exists() && !self.dir.join(TAKEN).exists()
    }
}

/// Writes `bytes` to `path` through a temp file and a rename, flushed.
pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn rec(p: &str) -> Record {
        Record {
            path: p.into(),
            change: OwnChange::Whole(format!("body of {p}\n")),
            at: 0,
        }
    }

    #[test]
    fn appended_records_are_taken_once_and_kept_until_done() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path());
        assert!(j.is_empty());
        j.append(&[rec("a"), rec("b")]).unwrap();
        j.append(&[rec("c")]).unwrap();
        let (r, bad) = j.take().unwrap();
        assert_eq!(bad, 0);
        assert_eq!(r, vec![rec("a"), rec("b"), rec("c")]);
        // Not done: taken again, with what came since.
        j.append(&[rec("d")]).unwrap();
        let (r, _) = j.take().unwrap();
        assert_eq!(r.len(), 4);
        j.done().unwrap();
        assert!(j.is_empty());
        assert_eq!(j.take().unwrap().0, vec![]);
    }

    #[test]
    fn paths_name_what_is_not_committed_yet_taken_or_not() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path());
        j.append(&[rec("a")]).unwrap();
        let _ = j.take().unwrap();
        j.append(&[rec("b")]).unwrap();
        let mut p: Vec<_> = j.paths().into_iter().collect();
        p.sort();
        assert_eq!(p, vec!["a", "b"]);
        j.done().unwrap();
        assert_eq!(j.paths().into_iter().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn a_torn_line_is_passed_over_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path());
        j.append(&[rec("a")]).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"path\":\"b\",\"cha").unwrap();
        let (r, bad) = j.take().unwrap();
        assert_eq!((r, bad), (vec![rec("a")], 1));
    }

    #[test]
    fn appends_from_many_threads_while_taking_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal::new(d.path());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        j.append(&[rec(&format!("{t}-{i}"))]).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while writers.iter().any(|w| !w.is_finished()) {
            let (r, _) = j.take().unwrap();
            seen.extend(r);
            j.done().unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        seen.extend(j.take().unwrap().0);
        let mut paths: Vec<_> = seen.into_iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 200);
    }
}
