//! The files a message comes with (SPEC §9): what its body embeds or links
//! (`![[photo.png]]`, `![[photo.png|300]]`, `![](Files/a.pdf)`,
//! `[[report.pdf#page=2|alias]]`) and what its `attachments:` key lists
//! (vault paths or links), found outside code as Obsidian reads a note
//! (the Markdown parser the note module reads inline tags with), resolved
//! as Obsidian resolves a link, inside the vault only, and handed to the
//! turn the way its backend takes them ([`Takes`]).
//!
//! Resolution: the exact vault path (for a Markdown link, first relative
//! to the note's folder, as Markdown means it; `./` and `../` are relative
//! to it in any link), else the file of that name (or that path's end)
//! anywhere in the vault — the shortest path winning: fewest folders,
//! then fewest bytes, then alphabetical. Refused, and named: absolute
//! paths, `..` that climbs out of the vault, dot-folders, symlinks that
//! lead out (the vault checks those), files over [`MAX_BYTES`] (refused
//! before they are read). Every file the turn runs without is named in
//! the prompt and in a line of the reply ([`reply_note`]); none stops the
//! turn.
//!
//! Only the vault knows where a file is on disk ([`Vault::file`]); this
//! module sees vault paths, sizes, and the absolute path a folder vault
//! gives for programs that read files themselves.

use std::sync::Arc;

use serde_yaml::{Mapping, Value};

use crate::backend::{Attachment, AttachmentContent, Takes, TurnRequest};
use crate::vault::{FileInfo, Vault, VaultError};

/// Largest attachment handed to a turn (SPEC §9: 20 MB each).
pub const MAX_BYTES: u64 = 20 * 1024 * 1024;

/// Most bytes the attachments of one message may hold together when a
/// backend sends them in its request (50 MB): a request stays within what
/// the model APIs take, and a turn's memory stays bounded.
pub const MAX_TOTAL_BYTES: u64 = 50 * 1024 * 1024;

/// Most attachments one message hands to its turn.
pub const MAX_COUNT: usize = 32;

/// The front-matter key that lists attachments.
pub const KEY: &str = "attachments";

/// Extensions of files people attach: a link to one that is not in the
/// vault is named as missing. A link with another extension is an
/// attachment only if the file is there (`[[Meeting 2026.01.05]]` is a
/// note).
const KNOWN: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "webp", "bmp", "svg", "avif", "heic", "tif", "tiff", "ico", "pdf",
    "mp3", "wav", "m4a", "ogg", "flac", "aac", "webm", "3gp", "mp4", "mov", "mkv", "ogv", "avi",
    "txt", "csv", "tsv", "json", "xml", "yaml", "yml", "html", "htm", "doc", "docx", "xls", "xlsx",
    "ppt", "pptx", "odt", "ods", "odp", "rtf", "epub", "zip", "tar", "gz", "tgz", "7z", "bin",
];

/// How a link was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[[x]]`, `![[x]]`.
    Wiki,
    /// `[t](x)`, `![t](x)`.
    Markdown,
    /// An item of `attachments:`.
    FrontMatter,
}

/// A link of a message that may name an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The target as written (for naming it), without alias or size.
    pub written: String,
    /// The target to resolve: `#…` and `?…` cut off, a Markdown link's
    /// `%20` decoded.
    pub target: String,
    pub form: Form,
    /// `![[…]]` / `![…](…)`.
    pub embed: bool,
}

/// An attachment the turn runs without, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    /// The link or path as the message wrote it.
    pub link: String,
    pub reason: String,
}

/// What a message comes with: the files handed to its turn and those
/// left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gathered {
    pub attachments: Vec<Attachment>,
    pub left: Vec<Left>,
}

/// The links of a note's body, in order, outside code blocks and inline
/// code (the Markdown parser does not see links there), with wiki links.
pub fn body_links(body: &str) -> Vec<Link> {
    use pulldown_cmark::{Event, LinkType, Options, Parser, Tag};
    let mut out = Vec::new();
    if !body.contains('[') {
        return out;
    }
    for ev in Parser::new_ext(body, Options::ENABLE_WIKILINKS) {
        let (dest, link_type, embed) = match ev {
            Event::Start(Tag::Image {
                dest_url,
                link_type,
                ..
            }) => (dest_url, link_type, true),
            Event::Start(Tag::Link {
                dest_url,
                link_type,
                ..
            }) => (dest_url, link_type, false),
            _ => continue,
        };
        let form = match link_type {
            LinkType::WikiLink { .. } => Form::Wiki,
            LinkType::Autolink | LinkType::Email => continue,
            _ => Form::Markdown,
        };
        if let Some(l) = link(&dest, form, embed) {
            out.push(l);
        }
    }
    out
}

/// A link from its destination as the parser gives it (a wiki link's
/// target before `|`, a Markdown link's URL with its escapes undone).
fn link(dest: &str, form: Form, embed: bool) -> Option<Link> {
    let written = dest.trim();
    // An alias or size the parser did not take (a front-matter item).
    let written = written.split('|').next().unwrap_or(written).trim();
    let mut target = written;
    for cut in ['#', '?'] {
        if form == Form::Markdown || cut == '#' {
            target = target.split(cut).next().unwrap_or(target);
        }
    }
    let target = if form == Form::Markdown {
        percent_decode(target)
    } else {
        target.to_string()
    };
    let target = target.trim().to_string();
    if target.is_empty() {
        return None;
    }
    Some(Link {
        written: written.to_string(),
        target,
        form,
        embed,
    })
}

/// `%XX` sequences decoded (Obsidian writes `![](My%20photo.png)`); text
/// that does not decode to UTF-8 is kept as written.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

/// The `attachments:` key: a list of vault paths or links (or one). An
/// item that is not text is named (the turn runs without it).
pub fn front_matter_links(meta: &Mapping) -> (Vec<Link>, Vec<Left>) {
    let mut links = Vec::new();
    let mut left = Vec::new();
    let items: Vec<Value> = match meta.get(KEY) {
        None | Some(Value::Null) => return (links, left),
        Some(Value::Sequence(s)) => s.clone(),
        Some(Value::Mapping(_)) => {
            left.push(Left {
                link: format!("`{KEY}:`"),
                reason: format!(
                    "field `{KEY}` is a mapping; expected a list of vault paths or links"
                ),
            });
            return (links, left);
        }
        Some(v) => vec![v.clone()],
    };
    for (i, item) in items.iter().enumerate() {
        let text = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => continue,
            // `- [[photo.png]]` unquoted is YAML for a list in a list.
            Value::Sequence(inner) if inner.len() == 1 => match inner.first() {
                Some(Value::Sequence(x)) if x.len() == 1 => match x.first() {
                    Some(Value::String(s)) => format!("[[{s}]]"),
                    _ => String::new(),
                },
                _ => String::new(),
            },
            _ => String::new(),
        };
        if text.trim().is_empty() {
            left.push(Left {
                link: format!("`{KEY}:` item {}", i + 1),
                reason: format!(
                    "field `{KEY}`, item {}: not a vault path or a link (quote a link: \"[[photo.png]]\")",
                    i + 1
                ),
            });
            continue;
        }
        // A link in the list (`"[[photo.png]]"`, `"![](a.pdf)"`) is read as
        // one; anything else is a vault path.
        let t = text.trim();
        let parsed = if t.contains('[') {
            body_links(t)
        } else {
            Vec::new()
        };
        if parsed.is_empty() {
            links.extend(link(t, Form::FrontMatter, true));
        } else {
            links.extend(parsed.into_iter().map(|mut l| {
                l.form = if l.form == Form::Wiki {
                    Form::FrontMatter
                } else {
                    l.form
                };
                l.embed = true;
                l
            }));
        }
    }
    (links, left)
}

/// What a link is, before the vault is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// Not an attachment: a note, a URL, an anchor.
    Not,
    /// Named and left out, without asking the vault.
    Refused(String),
    /// A file to look for.
    Look(Lookup),
}

/// Where to look for a file a link names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// Vault paths to try first, in order.
    pub exact: Vec<String>,
    /// Else a file whose path ends with this (a file name, or the link's
    /// path), anywhere in the vault; `None` for a `./` or `../` link.
    pub by_name: Option<String>,
    /// Named when it is not there (a known extension, or a front-matter
    /// item); else a link that finds nothing is a note link.
    pub strong: bool,
}

/// Decides what a link is and where its file may be, for a message at
/// `note` (its vault path): pure, no I/O.
pub fn classify(l: &Link, note: &str) -> Candidate {
    let t = l.target.as_str();
    // URLs (`https:`, `mailto:`, `obsidian:`), protocol-relative ones.
    let scheme = t.split_once(':').is_some_and(|(s, _)| {
        s.len() > 1
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    });
    if scheme || t.starts_with("//") {
        return Candidate::Not;
    }
    let name = t.rsplit('/').next().unwrap_or(t);
    let ext = name
        .rsplit_once('.')
        .filter(|(stem, e)| !stem.is_empty() && !e.is_empty())
        .map(|(_, e)| e.to_ascii_lowercase());
    if ext.as_deref() == Some("md") {
        return Candidate::Not;
    }
    let front = l.form == Form::FrontMatter;
    let note_link = ext.is_none() && !front;
    // A plain link to a note (no extension) is not looked at; an embed or
    // a listed item is checked first, so one that points out of the vault
    // is named even without an extension (`![[../../etc/passwd]]`).
    if note_link && !l.embed {
        return Candidate::Not;
    }
    let drive = t.as_bytes().get(1) == Some(&b':');
    if t.starts_with('/') || t.starts_with('\\') || drive {
        return Candidate::Refused(
            "an absolute path: an attachment is named by its path in the vault".into(),
        );
    }
    if t.contains('\\') {
        return Candidate::Refused("a backslash in the path (use `/`)".into());
    }
    if t.chars().any(char::is_control) {
        return Candidate::Refused("a control character in the path".into());
    }
    let relative = t.starts_with("./") || t.starts_with("../");
    let note_dir: Vec<&str> = match note.rsplit_once('/') {
        Some((d, _)) => d.split('/').collect(),
        None => Vec::new(),
    };
    let from_note = normalize(&note_dir, t);
    let from_root = normalize(&[], t);
    let mut exact = Vec::new();
    if l.form == Form::Markdown || relative {
        match &from_note {
            Ok(p) => exact.push(p.clone()),
            Err(r) => return Candidate::Refused(r.clone()),
        }
    }
    if !relative {
        match &from_root {
            Ok(p) if !exact.contains(p) => exact.push(p.clone()),
            Ok(_) => {}
            Err(_) if !exact.is_empty() => {}
            Err(r) => return Candidate::Refused(r.clone()),
        }
    }
    for p in &exact {
        if p.split('/').any(|c| c.starts_with('.')) {
            return Candidate::Refused(
                "in a dot-folder (.obsidian, .git, .vaultrunner, …), which is not the vault's to hand out"
                    .into(),
            );
        }
    }
    exact.retain(|p| !p.is_empty());
    if note_link || exact.is_empty() {
        return Candidate::Not;
    }
    let strong = front || ext.as_deref().is_some_and(|e| KNOWN.contains(&e));
    let by_name = (!relative)
        .then(|| from_root.ok())
        .flatten()
        .filter(|p| !p.is_empty());
    Candidate::Look(Lookup {
        exact,
        by_name,
        strong,
    })
}

/// `rel` joined to the folder `base` (components), `.` and `..` resolved;
/// `Err` when it climbs out of the vault.
fn normalize(base: &[&str], rel: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = base.to_vec();
    for c in rel.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("the link leads outside the vault".into());
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The winner among files found by name: fewest folders, then fewest
/// bytes, then alphabetical. `suffix` is the link's path (`b/c.png` only
/// matches files whose path ends with `/b/c.png` or is it), compared
/// case-insensitively.
pub fn shortest<'a>(found: &'a [String], suffix: &str) -> Option<&'a String> {
    let suffix = suffix.to_lowercase();
    found
        .iter()
        .filter(|p| {
            let p = p.to_lowercase();
            p == suffix
                || (p.ends_with(&suffix)
                    && p.as_bytes().get(p.len().saturating_sub(suffix.len() + 1)) == Some(&b'/'))
        })
        .min_by(|a, b| {
            let depth = |p: &str| p.matches('/').count();
            (depth(a), a.len(), a.as_str()).cmp(&(depth(b), b.len(), b.as_str()))
        })
}

/// The media type of the bytes (not of the file's name): PNG, JPEG, GIF,
/// WebP images and PDFs, the types the model APIs take.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// A size for people: `2.0 GB (2147483648 bytes)`.
fn size_text(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    let f = n as f64;
    if f >= 1024.0 * MB {
        format!("{:.1} GB ({n} bytes)", f / (1024.0 * MB))
    } else {
        format!("{:.1} MB ({n} bytes)", f / MB)
    }
}

/// Why the vault gave no file, in words for the reply.
fn vault_reason(e: &VaultError) -> String {
    match e {
        _ if e.is_not_found() => "not found in the vault".into(),
        VaultError::UnsafePath { reason, .. } => (*reason).to_string(),
        VaultError::FileTooLarge { size, .. } => over_limit(*size),
        other => other.reason(),
    }
}

fn over_limit(size: u64) -> String {
    format!(
        "{}, over the {} MB limit for an attachment (not read)",
        size_text(size),
        MAX_BYTES / (1024 * 1024)
    )
}

/// Could the note come with attachments at all? (A cheap test before
/// [`gather`] is run off the async threads.)
pub fn may_have(meta: &Mapping, body: &str) -> bool {
    meta.contains_key(KEY) || body.contains('[')
}

/// Finds, checks and (for a backend that takes blocks) reads the files the
/// message at `note` comes with: its body's links and its `attachments:`
/// key. Blocking (vault I/O). `backend` names the backend in reasons.
pub fn gather(
    vault: &dyn Vault,
    note: &str,
    meta: &Mapping,
    body: &str,
    takes: Takes,
    backend: &str,
) -> Gathered {
    let (mut links, bad) = front_matter_links(meta);
    links.extend(body_links(body));
    let mut out = Gathered::default();
    if links.is_empty() && bad.is_empty() {
        return out;
    }
    // Everything is kept in the message's order (the list first): `left`
    // and `found` carry each link's place, and are sorted by it at the end.
    let mut left: Vec<(usize, Left)> = bad.into_iter().map(|l| (0, l)).collect();
    // 1. What each link is; exact paths tried at once.
    let mut pending: Vec<(usize, Link, Lookup)> = Vec::new();
    let mut found: Vec<(usize, Link, FileInfo)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (i, l) in links.into_iter().enumerate() {
        if seen.contains(&l.written) {
            continue;
        }
        seen.push(l.written.clone());
        let lookup = match classify(&l, note) {
            Candidate::Not => continue,
            Candidate::Refused(reason) => {
                left.push((
                    i,
                    Left {
                        link: l.written,
                        reason,
                    },
                ));
                continue;
            }
            Candidate::Look(k) => k,
        };
        let mut hit = None;
        let mut refused = None;
        for p in &lookup.exact {
            match vault.file(p) {
                Ok(info) => {
                    hit = Some(info);
                    break;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        match (hit, refused) {
            (Some(info), _) => found.push((i, l, info)),
            (None, Some(VaultError::NoFiles(why))) => {
                if lookup.strong {
                    left.push((
                        i,
                        Left {
                            link: l.written,
                            reason: why,
                        },
                    ));
                }
            }
            (None, Some(e)) => left.push((
                i,
                Left {
                    link: l.written,
                    reason: vault_reason(&e),
                },
            )),
            (None, None) => pending.push((i, l, lookup)),
        }
    }
    // 2. The rest by name: one walk of the vault for all of them.
    let names: Vec<String> = pending
        .iter()
        .filter_map(|(_, _, k)| k.by_name.as_deref())
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .collect();
    let everywhere = if names.is_empty() {
        Ok(Vec::new())
    } else {
        vault.find_files(&names)
    };
    for (i, l, k) in pending {
        let winner = match (&everywhere, &k.by_name) {
            (Ok(all), Some(suffix)) => shortest(all, suffix).cloned(),
            _ => None,
        };
        let result = match winner {
            Some(p) => vault.file(&p),
            None => {
                if k.strong {
                    let reason = match &everywhere {
                        Err(e) => format!("not found in the vault ({})", e.reason()),
                        Ok(_) => "not found in the vault".into(),
                    };
                    left.push((
                        i,
                        Left {
                            link: l.written,
                            reason,
                        },
                    ));
                }
                continue;
            }
        };
        match result {
            Ok(info) => found.push((i, l, info)),
            Err(e) => left.push((
                i,
                Left {
                    link: l.written,
                    reason: vault_reason(&e),
                },
            )),
        }
    }
    found.sort_by_key(|(i, _, _)| *i);
    // 3. Each file once, within the limits, as the backend takes it.
    let mut total = 0u64;
    let mut given: Vec<String> = Vec::new();
    for (i, l, info) in found {
        if given.contains(&info.path) {
            continue;
        }
        let leave = |reason: String| {
            (
                i,
                Left {
                    link: l.written.clone(),
                    reason,
                },
            )
        };
        if given.len() >= MAX_COUNT {
            left.push(leave(format!(
                "more than {MAX_COUNT} attachments in one message; the rest are left out"
            )));
            continue;
        }
        if info.size > MAX_BYTES {
            left.push(leave(over_limit(info.size)));
            continue;
        }
        let attachment = match takes {
            Takes::Paths => match &info.local {
                Some(p) => Attachment {
                    name: info.path.clone(),
                    path: Some(p.clone()),
                    content: None,
                },
                None => {
                    left.push(leave(format!(
                        "no file on this machine to hand to {backend}"
                    )));
                    continue;
                }
            },
            Takes::Blocks { pdf } => {
                if total.saturating_add(info.size) > MAX_TOTAL_BYTES {
                    left.push(leave(format!(
                        "{}: the message's attachments would be over {} MB together",
                        size_text(info.size),
                        MAX_TOTAL_BYTES / (1024 * 1024)
                    )));
                    continue;
                }
                let bytes = match vault.read_file(&info.path, MAX_BYTES) {
                    Ok(b) => b,
                    Err(e) => {
                        left.push(leave(vault_reason(&e)));
                        continue;
                    }
                };
                let media_type = match sniff(&bytes) {
                    Some("application/pdf") if !pdf => {
                        left.push(leave(format!(
                            "a PDF, which the {backend} backend does not take"
                        )));
                        continue;
                    }
                    Some(t) => t,
                    None => {
                        let also = if pdf { " or a PDF" } else { "" };
                        left.push(leave(format!(
                            "not a PNG, JPEG, GIF or WebP image{also}, which is what the {backend} backend can send"
                        )));
                        continue;
                    }
                };
                total = total.saturating_add(bytes.len() as u64);
                Attachment {
                    name: info.path.clone(),
                    path: info.local.clone(),
                    content: Some(AttachmentContent {
                        media_type,
                        data: Arc::from(bytes),
                    }),
                }
            }
        };
        given.push(info.path.clone());
        out.attachments.push(attachment);
    }
    left.sort_by_key(|(i, _)| *i);
    out.left = left.into_iter().map(|(_, l)| l).collect();
    out
}

/// Adds what a message comes with to its request: the "Attachments:"
/// section of the prompt (each file, and each left out with why), the
/// files themselves, and `VAULTRUNNER_ATTACHMENTS` (their absolute paths,
/// one a line; empty when there are none).
pub fn apply(req: &mut TurnRequest, g: Gathered) {
    let paths: Vec<String> = g
        .attachments
        .iter()
        .filter_map(|a| a.path.as_ref().map(|p| p.display().to_string()))
        .collect();
    req.env
        .push(("VAULTRUNNER_ATTACHMENTS".into(), paths.join("\n")));
    if g.attachments.is_empty() && g.left.is_empty() {
        return;
    }
    let mut s = String::from("\n\nAttachments:\n");
    for a in &g.attachments {
        match (&a.content, &a.path) {
            (Some(c), _) => s.push_str(&format!("- {} ({}, attached)\n", a.name, c.media_type)),
            (None, Some(p)) => s.push_str(&format!("- {}\n", p.display())),
            (None, None) => s.push_str(&format!("- {}\n", a.name)),
        }
    }
    for l in &g.left {
        s.push_str(&format!("- missing: {} ({})\n", l.link, l.reason));
    }
    req.prompt.push_str(s.trim_end());
    req.attachments = g.attachments;
}

/// The lines vaultrunner adds to the reply note for the attachments a
/// turn ran without (empty when there are none).
pub fn reply_note(left: &[Left]) -> String {
    if left.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n\n---\n*vaultrunner: the agent did not get these attachments:*\n");
    for l in left {
        let name = if l.link.contains('`') {
            l.link.clone()
        } else {
            format!("`{}`", l.link)
        };
        s.push_str(&format!("- {name}: {}\n", l.reason));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(body: &str) -> Vec<(String, Form, bool)> {
        body_links(body)
            .into_iter()
            .map(|l| (l.target, l.form, l.embed))
            .collect()
    }

    fn t(s: &str, f: Form, e: bool) -> (String, Form, bool) {
        (s.to_string(), f, e)
    }

    #[test]
    fn links_of_every_form() {
        let body = "Look: ![[photo.png]] and ![[photo.png|300]]\n\n\
                    ![chart](Files/My%20chart.png \"title\") [report](<Files/a b.pdf>)\n\n\
                    See [[report.pdf#page=2|the report]] and [[Some note]] and [web](https://x.y/a.png)\n\n\
                    [[Other.md]] ![[Folder/pic.jpg]]\n";
        assert_eq!(
            targets(body),
            vec![
                t("photo.png", Form::Wiki, true),
                t("photo.png", Form::Wiki, true),
                t("Files/My chart.png", Form::Markdown, true),
                t("Files/a b.pdf", Form::Markdown, false),
                t("report.pdf", Form::Wiki, false),
                t("Some note", Form::Wiki, false),
                t("https://x.y/a.png", Form::Markdown, false),
                t("Other.md", Form::Wiki, false),
                t("Folder/pic.jpg", Form::Wiki, true),
            ]
        );
        let l = &body_links("[[report.pdf#page=2|alias]]")[0];
        assert_eq!(l.written, "report.pdf#page=2");
        assert_eq!(l.target, "report.pdf");
    }

    #[test]
    fn links_in_code_are_not_attachments() {
        let body = "`![[inline.png]]`\n\n```\n![[fenced.png]]\n[x](fenced.pdf)\n```\n\n    ![[indented.png]]\n\nreal ![[real.png]]\n";
        assert_eq!(targets(body), vec![t("real.png", Form::Wiki, true)]);
    }

    #[test]
    fn front_matter_items() {
        let meta: Mapping = serde_yaml::from_str(
            "attachments:\n  - Files/a.pdf\n  - \"[[photo.png]]\"\n  - \"![](x/y.gif)\"\n  - [[unquoted.png]]\n  - {a: 1}\n  - 7\n",
        )
        .unwrap();
        let (links, left) = front_matter_links(&meta);
        let got: Vec<(&str, Form)> = links.iter().map(|l| (l.target.as_str(), l.form)).collect();
        assert_eq!(
            got,
            vec![
                ("Files/a.pdf", Form::FrontMatter),
                ("photo.png", Form::FrontMatter),
                ("x/y.gif", Form::Markdown),
                ("unquoted.png", Form::FrontMatter),
                ("7", Form::FrontMatter),
            ]
        );
        assert!(links.iter().all(|l| l.embed));
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].reason.contains("item 5"), "{left:?}");
        let one: Mapping = serde_yaml::from_str("attachments: Files/a.pdf\n").unwrap();
        assert_eq!(front_matter_links(&one).0.len(), 1);
        let bad: Mapping = serde_yaml::from_str("attachments: {a: 1}\n").unwrap();
        let (l, left) = front_matter_links(&bad);
        assert!(l.is_empty());
        assert!(left[0].reason.contains("field `attachments`"), "{left:?}");
    }

    fn look(target: &str, form: Form, embed: bool, note: &str) -> Candidate {
        let l = Link {
            written: target.into(),
            target: target.into(),
            form,
            embed,
        };
        classify(&l, note)
    }

    #[test]
    fn classify_refuses_what_leaves_the_vault() {
        for (target, form) in [
            ("../../etc/passwd", Form::Wiki),
            ("/etc/passwd", Form::Markdown),
            ("../../../x.png", Form::Markdown),
            ("C:\\x.png", Form::Wiki),
            ("a\\b.png", Form::Wiki),
            (".obsidian/app.json", Form::Wiki),
            ("x/.git/config.png", Form::FrontMatter),
            ("../.vaultrunner/lock", Form::Markdown),
        ] {
            assert!(
                matches!(look(target, form, true, "Inbox/m"), Candidate::Refused(_)),
                "{target}: {:?}",
                look(target, form, true, "Inbox/m")
            );
        }
        let Candidate::Refused(r) = look("../../etc/passwd", Form::Wiki, true, "Inbox/m") else {
            panic!()
        };
        assert_eq!(r, "the link leads outside the vault");
        // Inside the vault, `..` is fine.
        assert_eq!(
            look("../Files/a.png", Form::Markdown, true, "Inbox/m"),
            Candidate::Look(Lookup {
                exact: vec!["Files/a.png".into()],
                by_name: None,
                strong: true
            })
        );
    }

    #[test]
    fn classify_notes_and_urls_are_not_attachments() {
        for (target, embed) in [
            ("Some note", false),
            ("Some note", true),
            ("Other.md", true),
            ("https://x.y/a.png", true),
            ("mailto:a@b.c", false),
            ("/docs/intro", false),
            ("../../up", false),
        ] {
            assert_eq!(
                look(target, Form::Wiki, embed, "Inbox/m"),
                Candidate::Not,
                "{target}"
            );
        }
    }

    #[test]
    fn classify_where_to_look() {
        // A Markdown link: the note's folder first, then the root.
        assert_eq!(
            look("img/x.png", Form::Markdown, true, "Inbox/m"),
            Candidate::Look(Lookup {
                exact: vec!["Inbox/img/x.png".into(), "img/x.png".into()],
                by_name: Some("img/x.png".into()),
                strong: true
            })
        );
        // A wiki link: the root, then by name.
        assert_eq!(
            look("photo.png", Form::Wiki, true, "Inbox/m"),
            Candidate::Look(Lookup {
                exact: vec!["photo.png".into()],
                by_name: Some("photo.png".into()),
                strong: true
            })
        );
        // An unknown extension is weak: a note with dots in its name.
        let Candidate::Look(k) = look("Meeting 2026.01.05", Form::Wiki, false, "m") else {
            panic!()
        };
        assert!(!k.strong);
    }

    #[test]
    fn the_shortest_path_wins() {
        let found: Vec<String> = [
            "b/deep/photo.png",
            "zz/photo.png",
            "aa/photo.png",
            "a/photo.PNG",
            "other.png",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(shortest(&found, "photo.png").unwrap(), "a/photo.PNG");
        assert_eq!(
            shortest(&found, "deep/photo.png").unwrap(),
            "b/deep/photo.png"
        );
        assert!(shortest(&found, "eep/photo.png").is_none());
        let tie: Vec<String> = vec!["bb/x.png".into(), "aa/x.png".into()];
        assert_eq!(shortest(&tie, "x.png").unwrap(), "aa/x.png");
    }

    #[test]
    fn sniffing_and_decoding() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"GIF89a.."), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"%PDF-1.7"), Some("application/pdf"));
        assert_eq!(sniff(b"\0\x01\x02 not an image"), None);
        assert_eq!(percent_decode("My%20photo%2Epng"), "My photo.png");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%FF"), "%FF");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// Whatever a message writes, the vault is only ever asked for
            /// paths that stay inside it: no `..`, no absolute path, no
            /// dot-folder, no backslash, nothing empty.
            #[test]
            fn no_link_asks_the_vault_for_a_path_outside_it(
                body in r"(!?\[\[[a-z./\\:%#|~ ]{0,14}\]\]|!?\[x\]\([a-z./%:#2<> ]{0,14}\)|`| |\n|x){0,10}",
                note in "[a-z]{1,3}(/[a-z]{1,3}){0,3}",
            ) {
                for l in body_links(&body) {
                    if let Candidate::Look(k) = classify(&l, &note) {
                        for p in k.exact.iter().chain(k.by_name.iter()) {
                            prop_assert!(
                                crate::vault::check_rel_path(p).is_ok(),
                                "{:?} from {:?} in {}: {}", p, l.target, note, body
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn reply_note_names_each_left_out() {
        assert_eq!(reply_note(&[]), "");
        let s = reply_note(&[Left {
            link: "../../etc/passwd".into(),
            reason: "the link leads outside the vault".into(),
        }]);
        assert!(
            s.contains("- `../../etc/passwd`: the link leads outside the vault"),
            "{s}"
        );
    }
}
