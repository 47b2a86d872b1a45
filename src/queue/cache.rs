//! The index's small records saved across a restart: every note's version
//! (16 bytes under its path's key) and each thread's recent messages, so a
//! start reads only the notes that changed since. Bytes in, bytes out; the
//! engine reads and writes the file (`.vaultrunner/index.cache`).
//!
//! Only what a note's version vouches for is saved: the notes the index
//! keeps whole (definitions, jobs, messages not answered, problems) are
//! left out and read again at every start, and so is a note changed in the
//! last moments before the save (its time may not yet tell a second write
//! apart). Anything odd about the file — another format or release,
//! a cut-short or corrupt file — makes it useless, never wrong: the start
//! then reads every note.

use std::collections::HashSet;

use super::{Index, OrderKey, Seen, path_key};

const MAGIC: &[u8] = b"vaultrunner index cache\n";
/// Bumped when the layout or what a saved record means changes.
const FORMAT: u32 = 1;

/// Why a saved index cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("not an index cache")]
    NotACache,
    #[error("written by vaultrunner {0} (this is {version})", version = env!("CARGO_PKG_VERSION"))]
    OtherRelease(String),
    #[error("cut short or corrupt ({0})")]
    Corrupt(&'static str),
}

/// FNV-1a over bytes: the file's checksum.
fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over the file's bytes: every read checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CacheError> {
        if self.rest.len() < n {
            return Err(CacheError::Corrupt("ends early"));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, CacheError> {
        let b: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| CacheError::Corrupt("u32"))?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, CacheError> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| CacheError::Corrupt("u64"))?;
        Ok(u64::from_le_bytes(b))
    }
    fn i64(&mut self) -> Result<i64, CacheError> {
        Ok(self.u64()? as i64)
    }
    fn str(&mut self) -> Result<&'a str, CacheError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| CacheError::Corrupt("a path is not UTF-8"))
    }
}

impl Index {
    /// Writes the records a restart may trust into `out`: every version but
    /// those of the notes kept whole, of `exclude` ([`path_key`]s the caller
    /// must read again, e.g. notes whose reads failed) and of notes changed
    /// after `changed_before_ns`; and each thread's recent messages.
    /// Returns how many versions it wrote.
    pub fn save(&self, exclude: &HashSet<u64>, changed_before_ns: i64, out: &mut Vec<u8>) -> usize {
        let whole: HashSet<u64> = self.whole_paths().map(|p| path_key(p)).collect();
        // Sized once: a buffer grown by doubling would hold up to twice
        // the file for a moment.
        let recent: usize = self
            .threads
            .iter()
            .map(|(t, r)| t.len() + 8 + r.messages.iter().map(|(_, p)| p.len() + 12).sum::<usize>())
            .sum();
        out.reserve(MAGIC.len() + 64 + self.versions.len() * 24 + recent);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        put_str(out, env!("CARGO_PKG_VERSION"));
        let count_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        let mut n: u64 = 0;
        for (k, seen) in &self.versions {
            if whole.contains(k) || exclude.contains(k) || seen.ns >= changed_before_ns {
                continue;
            }
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&seen.tag.to_le_bytes());
            out.extend_from_slice(&seen.ns.to_le_bytes());
            n += 1;
        }
        if let Some(slot) = out.get_mut(count_at..count_at + 8) {
            slot.copy_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&u32::try_from(self.threads.len()).unwrap_or(0).to_le_bytes());
        for (thread, recent) in self.threads.iter().take(u32::MAX as usize) {
            put_str(out, thread);
            out.extend_from_slice(
                &u32::try_from(recent.messages.len())
                    .unwrap_or(0)
                    .to_le_bytes(),
            );
            for (order, path) in &recent.messages {
                out.extend_from_slice(&order.to_le_bytes());
                put_str(out, path);
            }
        }
        let sum = checksum(out);
        out.extend_from_slice(&sum.to_le_bytes());
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Takes in what [`Index::save`] wrote. The file is checked whole
    /// before anything is taken: on an error the index is as it was.
    /// Versions the index already has are kept. Returns how many versions
    /// it took.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<usize, CacheError> {
        let body_len = bytes.len().checked_sub(8).ok_or(CacheError::NotACache)?;
        let (body, sum) = bytes.split_at(body_len);
        if !body.starts_with(MAGIC) {
            return Err(CacheError::NotACache);
        }
        let mut r = Reader {
            rest: body.get(MAGIC.len()..).unwrap_or_default(),
        };
        let format = r.u32()?;
        let release = r.str()?;
        if format != FORMAT || release != env!("CARGO_PKG_VERSION") {
            return Err(CacheError::OtherRelease(if format == FORMAT {
                release.to_string()
            } else {
                format!("{release} (index format {format})")
            }));
        }
        let sum = u64::from_le_bytes(
            sum.try_into()
                .map_err(|_| CacheError::Corrupt("checksum"))?,
        );
        if checksum(body) != sum {
            return Err(CacheError::Corrupt("checksum mismatch"));
        }
        let n = usize::try_from(r.u64()?).map_err(|_| CacheError::Corrupt("count"))?;
        if n > r.rest.len() / 24 {
            return Err(CacheError::Corrupt("more versions than bytes"));
        }
        let mut versions = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.u64()?;
            let tag = r.u64()?;
            let ns = r.i64()?;
            versions.push((k, Seen { tag, ns }));
        }
        let threads = r.u32()? as usize;
        let mut recent: Vec<(String, OrderKey)> = Vec::new();
        for _ in 0..threads {
            let thread = r.str()?;
            let m = r.u32()? as usize;
            if m > r.rest.len() / 12 {
                return Err(CacheError::Corrupt("more messages than bytes"));
            }
            for _ in 0..m {
                let order = r.i64()?;
                let path = r.str()?;
                recent.push((thread.to_string(), (order, path.to_string())));
            }
        }
        if !r.rest.is_empty() {
            return Err(CacheError::Corrupt("bytes after the end"));
        }
        self.versions.reserve(versions.len());
        for (k, seen) in versions {
            self.versions.entry(k).or_insert(seen);
        }
        for (thread, order) in recent {
            self.remember(thread, order);
        }
        self.changes += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::testing::KINDS;
    use crate::vault::Version;

    fn fp(ms: i128) -> Version {
        Version {
            tag: 7,
            modified_ns: ms * 1_000_000,
        }
    }

    fn msg(status: &str, thread: &str, ts: &str) -> String {
        format!(
            "---\ntags: [agent/message/inbound]\nagent: a\nstatus: {status}\nthread: \"[[{thread}]]\"\nts: {ts}\n---\nhi\n"
        )
    }

    fn vault_index() -> Index {
        let mut ix = Index::new(KINDS);
        ix.update(
            "Agents/a",
            "---\ntags: [agent/definition]\n---\n",
            fp(1),
            false,
        );
        ix.update("plain", "just a note", fp(2), false);
        ix.update(
            "m/1",
            &msg("handled", "Threads/a/a", "2026-01-01T00:00:01Z"),
            fp(3),
            false,
        );
        ix.update(
            "m/1.reply",
            "---\ntags: [agent/message/outbound]\n---\nok\n",
            fp(4),
            false,
        );
        ix.update(
            "m/2",
            &msg("handled", "Threads/a/a", "2026-01-01T00:00:02Z"),
            fp(5),
            false,
        );
        ix.update(
            "m/3",
            &msg("pending", "Threads/a/a", "2026-01-01T00:00:03Z"),
            fp(6),
            false,
        );
        ix
    }

    #[test]
    fn a_saved_index_restores_versions_and_history_but_not_the_notes_kept_whole() {
        let ix = vault_index();
        let mut bytes = Vec::new();
        let exclude: HashSet<u64> = [path_key("m/1.reply")].into();
        // The definition and the pending message are kept whole: left out;
        // the reply is excluded by the caller.
        assert_eq!(ix.save(&exclude, i64::MAX, &mut bytes), 3);
        let mut back = Index::new(KINDS);
        assert_eq!(back.restore(&bytes), Ok(3));
        assert!(back.seen("plain", fp(2)));
        assert!(back.seen("m/1", fp(3)) && back.seen("m/2", fp(5)));
        assert!(!back.knows("m/1.reply"));
        assert!(!back.knows("Agents/a") && !back.knows("m/3"));
        assert!(!back.seen("plain", fp(9)));
        assert_eq!(back.thread_history("Threads/a/a"), vec!["m/1", "m/2"]);
    }

    #[test]
    fn notes_changed_just_before_the_save_are_left_out() {
        let ix = vault_index();
        let mut bytes = Vec::new();
        // Changed at 3 ms or later: "m/1" (3 ms) and "m/2" (5 ms) go.
        assert_eq!(ix.save(&HashSet::new(), 3_000_000, &mut bytes), 1);
        let mut back = Index::new(KINDS);
        back.restore(&bytes).unwrap();
        assert!(back.knows("plain") && !back.knows("m/1") && !back.knows("m/2"));
    }

    #[test]
    fn a_bad_file_is_refused_whole_and_changes_nothing() {
        let ix = vault_index();
        let mut good = Vec::new();
        ix.save(&HashSet::new(), i64::MAX, &mut good);
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        let mut other = good.clone();
        let at = MAGIC.len() + 8;
        other[at] = b'X';
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "not an index cache"),
            (b"hello world, not a cache".to_vec(), "not an index cache"),
            (good[..good.len() - 3].to_vec(), "corrupt"),
            (good[..good.len() / 2].to_vec(), "corrupt"),
            (flipped, "checksum"),
            (other, "written by vaultrunner"),
        ];
        for (bytes, why) in cases {
            let mut back = Index::new(KINDS);
            let err = back.restore(&bytes).unwrap_err().to_string();
            assert!(err.contains(why), "{err} (expected {why})");
            assert!(back.is_empty() && back.thread_history("Threads/a/a").is_empty());
        }
    }

    #[test]
    fn a_restore_keeps_what_the_index_already_read() {
        let ix = vault_index();
        let mut bytes = Vec::new();
        ix.save(&HashSet::new(), i64::MAX, &mut bytes);
        let mut back = Index::new(KINDS);
        back.update("plain", "changed", fp(99), false);
        back.restore(&bytes).unwrap();
        assert!(back.seen("plain", fp(99)));
    }
}
