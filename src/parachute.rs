//! A typed async client of the Parachute Vault HTTP API: the wire under a
//! remote vault (SPEC §6). It knows the API as the real server behaves
//! (`docs/remote-vault.md` lists the facts it relies on) and nothing of
//! vaultrunner's notes: it sits at the bottom of the layers and imports no
//! other module of the crate.
//!
//! - One [`Client`] per vault, cheap to clone (one connection pool).
//! - Every update is a compare-and-set: [`Client::update`] takes the
//!   [`Version`] the caller read, and there is no way to send an update
//!   without one (`force` is never sent).
//! - Creates never upsert: an existing path is [`Conflict::Path`].
//! - Errors are typed ([`ErrorKind`]); [`Error::is_transient`] says which
//!   are worth retrying (the server down, a timeout, a `5xx`).
//! - Every request has a connect and a total timeout, every answer a size
//!   bound; a note over [`MAX_NOTE_BYTES`] is reported, not loaded.
//! - The token is never logged, never in an error and never in `Debug`
//!   output; text the server sends back is scrubbed of it too.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value, json};

/// The environment variable that holds the token (named in every
/// authentication error).
pub const TOKEN_ENV: &str = "VAULTRUNNER_VAULT_TOKEN";

/// The largest note content read, in bytes (as for a folder vault): a
/// larger note is reported ([`Content::TooLarge`], [`ErrorKind::TooLarge`])
/// and its content dropped.
pub const MAX_NOTE_BYTES: u64 = 8 * 1024 * 1024;

/// The largest answer read, in bytes (a page of notes, or one note).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The largest error body read (only its message is used).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The longest text from the server quoted in an error.
const MAX_QUOTE: usize = 300;

/// What a base URL looks like, for error messages.
const SHAPE: &str = "a Parachute Vault address is http(s)://HOST[:PORT]/vault/<name>";

// ---------------------------------------------------------------- addresses

/// A validated vault base URL, `http(s)://HOST[:PORT]/vault/<name>`, with
/// no trailing slash, query, fragment or credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    url: Url,
    name: String,
}

impl BaseUrl {
    /// Parses and normalises a base URL (trailing slashes dropped, host in
    /// lower case). The error is a reason for a user; it never repeats a
    /// password the text may carry.
    pub fn parse(text: &str) -> Result<BaseUrl, String> {
        let text = text.trim();
        let shown = without_userinfo(text);
        let bad =
            |why: &str| format!("{shown:?} is not a Parachute Vault address: {why} ({SHAPE})");
        let url = Url::parse(text).map_err(|e| bad(&format!("it is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("it must start with http:// or https://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(&format!(
                "it must not carry a user name or password (the token goes in {TOKEN_ENV})"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("it has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it must not have a query (?…) or a fragment (#…)"));
        }
        let mut segments: Vec<&str> = url
            .path_segments()
            .map(Iterator::collect)
            .unwrap_or_default();
        while segments.last() == Some(&"") {
            segments.pop();
        }
        let name = match segments.as_slice() {
            ["vault", name] => *name,
            s if s.contains(&"api") => {
                return Err(bad(
                    "give the vault's base, without /api or anything after it",
                ));
            }
            ["vault"] => return Err(bad("the vault's name is missing after /vault/")),
            [] => return Err(bad("the path /vault/<name> is missing")),
            _ => return Err(bad("its path must be /vault/<name>")),
        };
        let name_ok = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(bad(&format!(
                "the vault name {name:?} may hold only lower-case letters, digits, - and _"
            )));
        }
        let mut norm = url.clone();
        norm.set_path(&format!("/vault/{name}"));
        Ok(BaseUrl {
            url: norm,
            name: name.to_string(),
        })
    }

    /// The base, without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The vault's name (the last segment).
    pub fn vault_name(&self) -> &str {
        &self.name
    }

    /// The vault's MCP endpoint, `<base>/mcp`.
    pub fn mcp(&self) -> Url {
        self.join(&["mcp"])
    }

    /// `<base>/api/<segments…>`, each segment percent-encoded as one
    /// (a `/` inside becomes `%2F`).
    fn api(&self, segments: &[&str]) -> Url {
        let mut all = vec!["api"];
        all.extend_from_slice(segments);
        self.join(&all)
    }

    fn join(&self, segments: &[&str]) -> Url {
        let mut url = self.url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseUrl({:?})", self.as_str())
    }
}

/// `text` with any `user:password@` before the host replaced by `…@`.
fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((authority, tail)) = rest.split_at_checked(end) else {
        return text.to_string();
    };
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{tail}"),
        None => text.to_string(),
    }
}

/// A note path as the server stores it: trimmed, `\` turned into `/`, a
/// final `.md` (any case) dropped, runs of `/` collapsed, one leading and
/// one trailing `/` dropped; `None` when nothing is left. Lookups by path
/// are exact, so the client looks up the normalised form of what it wrote.
pub fn normalize_path(path: &str) -> Option<String> {
    let p = path.trim().replace('\\', "/");
    let p = match p.len().checked_sub(3).and_then(|i| p.split_at_checked(i)) {
        Some((stem, ext)) if ext.eq_ignore_ascii_case(".md") => stem.to_string(),
        _ => p,
    };
    let mut collapsed = String::with_capacity(p.len());
    for c in p.chars() {
        if c == '/' && collapsed.ends_with('/') {
            continue;
        }
        collapsed.push(c);
    }
    let p = collapsed.strip_prefix('/').unwrap_or(&collapsed);
    let p = p.strip_suffix('/').unwrap_or(p);
    (!p.is_empty()).then(|| p.to_string())
}

// ---------------------------------------------------------------- the token

/// The bearer token: opaque, never shown (`Debug` prints `Token(…)`, and
/// there is no `Display`).
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text (surrounding white space dropped). The error
    /// names [`TOKEN_ENV`] and never the token.
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(format!(
                "{TOKEN_ENV} is empty: set it to a token of the vault (with the vault:read and vault:write scopes)"
            ));
        }
        if let Some(pos) = t.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "{TOKEN_ENV} holds a character that cannot go in an HTTP header (a space, a control or a non-ASCII character, at byte {pos}): copy the token again"
            ));
        }
        Ok(Token(Arc::from(t)))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

// ---------------------------------------------------------------- notes

/// A note's version: its `updatedAt` exactly as the server sent it, echoed
/// as `if_updated_at`. Opaque: compare for equality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// A version kept from an earlier read (a runner's local state).
    pub fn new(updated_at: impl Into<String>) -> Version {
        Version(updated_at.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A note's content, as far as it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The Markdown body (no front-matter).
    Text(String),
    /// Not asked for (a listing without content); the size the server
    /// reports, if it does.
    Omitted { byte_size: Option<u64> },
    /// Over [`MAX_NOTE_BYTES`] (or the configured limit): not kept.
    TooLarge { byte_size: u64 },
}

/// A note of the vault.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Opaque, assigned by the server.
    pub id: String,
    /// Unique when present; many notes have none.
    pub path: Option<String>,
    pub content: Content,
    /// JSON values as stored (the Parachute convention is strings; numbers,
    /// booleans, `null` and nesting occur).
    pub metadata: Map<String, Value>,
    /// Exact strings, sorted by the server (`#a` and `a` differ).
    pub tags: Vec<String>,
    pub created_at: Option<String>,
    /// The version (`createdAt` when the server sent no `updatedAt`).
    pub updated_at: String,
}

impl Note {
    /// The version to send with an update of this note.
    pub fn version(&self) -> Version {
        Version(self.updated_at.clone())
    }

    /// The content, when it was read and is within the limit.
    pub fn text(&self) -> Option<&str> {
        match &self.content {
            Content::Text(t) => Some(t),
            _ => None,
        }
    }

    /// How the note is named in messages: its path, else `id <id>`.
    pub fn name(&self) -> String {
        match &self.path {
            Some(p) => format!("{p:?}"),
            None => format!("id {}", self.id),
        }
    }

    /// Reads a note from the server's JSON (camelCase or snake_case;
    /// missing `path`, `content`, `metadata`, `tags` and `createdAt`
    /// tolerated). Content over `max_bytes` is dropped as
    /// [`Content::TooLarge`]. The error says what is wrong, naming the
    /// note when its id is known.
    pub fn from_json(v: &Value, max_bytes: u64) -> Result<Note, String> {
        let Some(obj) = v.as_object() else {
            return Err(format!(
                "a note is not a JSON object (it is {})",
                kind_of(v)
            ));
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) => return Err("a note has an empty `id`".into()),
            None | Some(Value::Null) => return Err("a note without an `id`".into()),
            Some(other) => {
                return Err(format!(
                    "a note's `id` is not a text (it is {})",
                    kind_of(other)
                ));
            }
        };
        let bad = |field: &str, why: String| format!("note {id}: `{field}` {why}");
        let text = |keys: &[&str]| -> Result<Option<String>, String> {
            for key in keys {
                match obj.get(*key) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(s)) => return Ok(Some(s.clone())),
                    Some(other) => {
                        return Err(bad(
                            key,
                            format!("is not a text (it is {})", kind_of(other)),
                        ));
                    }
                }
            }
            Ok(None)
        };
        let path = text(&["path"])?.filter(|p| !p.is_empty());
        let created_at = text(&["createdAt", "created_at"])?;
        let updated_at = match text(&["updatedAt", "updated_at"])? {
            Some(u) => u,
            None => created_at.clone().ok_or_else(|| {
                format!(
                    "note {id} has neither `updatedAt` nor `createdAt`: no version to update it by"
                )
            })?,
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                return Err(bad(
                    "metadata",
                    format!("is not an object (it is {})", kind_of(other)),
                ));
            }
        };
        let tags = match obj.get("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut tags = Vec::with_capacity(items.len());
                for t in items {
                    match t {
                        Value::String(s) => tags.push(s.clone()),
                        other => {
                            return Err(bad(
                                "tags",
                                format!("holds {}, not a text", kind_of(other)),
                            ));
                        }
                    }
                }
                tags
            }
            Some(other) => {
                return Err(bad(
                    "tags",
                    format!("is not a list (it is {})", kind_of(other)),
                ));
            }
        };
        let reported_size = match obj.get("byteSize").or_else(|| obj.get("byte_size")) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .ok_or_else(|| bad("byteSize", format!("is not a size ({n})")))?,
            ),
            Some(other) => {
                return Err(bad(
                    "byteSize",
                    format!("is not a number (it is {})", kind_of(other)),
                ));
            }
        };
        let content = match obj.get("content") {
            Some(Value::String(s)) => {
                let size = s.len() as u64;
                if size > max_bytes {
                    Content::TooLarge { byte_size: size }
                } else {
                    Content::Text(s.clone())
                }
            }
            Some(Value::Null) => Content::Text(String::new()),
            None => match reported_size {
                Some(size) if size > max_bytes => Content::TooLarge { byte_size: size },
                size => Content::Omitted { byte_size: size },
            },
            Some(other) => {
                return Err(bad(
                    "content",
                    format!("is not a text (it is {})", kind_of(other)),
                ));
            }
        };
        Ok(Note {
            id,
            path,
            content,
            metadata,
            tags,
            created_at,
            updated_at,
        })
    }
}

/// What a JSON value is, for error messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A note to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewNote {
    /// Normalised by the server (see [`normalize_path`]).
    pub path: Option<String>,
    pub content: String,
    pub metadata: Map<String, Value>,
    /// Written literally (parent tags too: a `/` implies no hierarchy).
    pub tags: Vec<String>,
}

/// A change to an existing note, applied only if it is still at the
/// version read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    /// Replaces the content.
    pub content: Option<String>,
    /// Merged shallowly into the old metadata (a key set to `null` is
    /// stored as `null` on this server version, deleted on newer ones).
    pub metadata: Map<String, Value>,
    pub add_tags: Vec<String>,
    /// Applied after `add_tags`.
    pub remove_tags: Vec<String>,
}

/// How several tags of a listing combine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TagMatch {
    /// A note with any of the tags.
    #[default]
    Any,
    /// Only notes with all of them.
    All,
}

/// A listing: which notes, and whether with their content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Empty: every note.
    pub tags: Vec<String>,
    pub tag_match: TagMatch,
    /// Only notes whose path starts with this (exactly: the server's own
    /// filter is a case-insensitive `LIKE` in which `_` and `%` are
    /// wildcards, so the client filters its answer again).
    pub path_prefix: Option<String>,
    pub include_content: bool,
    /// Only the newest notes (by `createdAt`), at most this many: one page
    /// in descending order, newest first.
    pub newest: Option<u32>,
}

impl Query {
    /// The notes with any of `tags`.
    pub fn tagged(tags: &[&str]) -> Query {
        Query {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Query::default()
        }
    }

    pub fn with_content(mut self) -> Query {
        self.include_content = true;
        self
    }

    pub fn all(mut self) -> Query {
        self.tag_match = TagMatch::All;
        self
    }

    pub fn under(mut self, prefix: &str) -> Query {
        self.path_prefix = Some(prefix.to_string());
        self
    }

    fn describe(&self) -> String {
        let mut s = String::from("list notes");
        if !self.tags.is_empty() {
            let m = match self.tag_match {
                TagMatch::Any => "any",
                TagMatch::All => "all",
            };
            s.push_str(&format!(" tagged {} ({m})", self.tags.join(", ")));
        }
        if let Some(p) = &self.path_prefix {
            s.push_str(&format!(" under {p:?}"));
        }
        s
    }
}

/// Which note: by id, or by path (one URL segment, looked up exactly after
/// [`normalize_path`]; the server tries ids first, so the client checks
/// that the note it got has that path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteRef<'a> {
    Id(&'a str),
    Path(&'a str),
}

/// The server's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The vault's name as the server reports it.
    pub vault: String,
}

// ---------------------------------------------------------------- errors

/// Why a create or an update was refused as conflicting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// `409 path_conflict`: a note already has that path (creates never
    /// overwrite it).
    Path { path: String },
    /// `409 conflict`: the note changed since the version sent.
    Stale {
        current_updated_at: Option<String>,
        your_updated_at: String,
    },
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// `401` (a missing or unknown token) or `403` (too little scope).
    Unauthorized {
        status: u16,
        reason: String,
        required_scope: Option<String>,
        granted_scopes: Vec<String>,
    },
    /// The server has no vault of that name (the base URL is wrong).
    NoSuchVault,
    /// No such note.
    NotFound,
    Conflict(Conflict),
    /// `428`: the server did not see `if_updated_at`. The client always
    /// sends it, so this is a bug (or something between that drops it).
    VersionNotSent,
    /// Connection refused or reset, a timeout, `408`, `429` or a `5xx`:
    /// try again later.
    Unavailable {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other refusal (`400`, `413`, `422`, …): the same request will
    /// fail again.
    Rejected {
        status: u16,
        reason: String,
    },
    /// An answer that is not what the API returns.
    Protocol(String),
    /// A note over the size limit (content not loaded, or not written).
    TooLarge {
        byte_size: Option<u64>,
        limit: u64,
    },
    /// A listing with more notes than the bound.
    TooMany {
        bound: usize,
    },
    /// A request the client refuses to send (a tag with a comma, a path
    /// that is empty after normalisation, …).
    Invalid(String),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Unauthorized {
                status: 403,
                reason,
                required_scope,
                granted_scopes,
            } => {
                let has = if granted_scopes.is_empty() {
                    String::from("none")
                } else {
                    granted_scopes.join(", ")
                };
                match required_scope {
                    Some(scope) => write!(
                        f,
                        "the token in {TOKEN_ENV} lacks the scope {scope} this needs (it has {has}): give it a token with {scope}"
                    ),
                    None => write!(
                        f,
                        "the vault forbids this to the token in {TOKEN_ENV} (403: {reason}): give it a token with the vault:read and vault:write scopes"
                    ),
                }
            }
            ErrorKind::Unauthorized { status, reason, .. } => write!(
                f,
                "the vault refused the token in {TOKEN_ENV} ({status}: {reason}): set it to a token of this vault (with the vault:read and vault:write scopes)"
            ),
            ErrorKind::NoSuchVault => f.write_str(
                "the server has no vault of this name (check the name after /vault/ in the address)",
            ),
            ErrorKind::NotFound => f.write_str("no such note"),
            ErrorKind::Conflict(Conflict::Path { path }) => write!(
                f,
                "a note already has the path {path:?} (409 path_conflict; a create never overwrites)"
            ),
            ErrorKind::Conflict(Conflict::Stale {
                current_updated_at,
                your_updated_at,
            }) => write!(
                f,
                "the note changed since it was read (409 conflict: it is at {}, the update expected {your_updated_at}): read it again and decide again",
                current_updated_at.as_deref().unwrap_or("an unknown version")
            ),
            ErrorKind::VersionNotSent => f.write_str(
                "the vault refused an update without a version (428 precondition_required): vaultrunner sends `if_updated_at` with every update, so this is a bug or something between drops it; please report it",
            ),
            ErrorKind::Unavailable { status: Some(s), reason, .. } => {
                write!(f, "the vault is unavailable (HTTP {s}: {reason}); will try again")
            }
            ErrorKind::Unavailable { status: None, reason, .. } => {
                write!(f, "the vault is unreachable ({reason}); will try again")
            }
            ErrorKind::Rejected { status, reason } => {
                write!(f, "the vault refused the request (HTTP {status}: {reason})")
            }
            ErrorKind::Protocol(what) => {
                write!(f, "the answer is not what the Parachute Vault API returns: {what}")
            }
            ErrorKind::TooLarge {
                byte_size: Some(n),
                limit,
            } => write!(
                f,
                "the note is {n} bytes, over the limit of {limit} bytes ({} MiB): it is not loaded or written",
                limit / (1024 * 1024)
            ),
            ErrorKind::TooLarge { byte_size: None, limit } => write!(
                f,
                "the note is over the limit of {limit} bytes ({} MiB): it is not loaded or written",
                limit / (1024 * 1024)
            ),
            ErrorKind::TooMany { bound } => write!(
                f,
                "more than {bound} notes match; the listing stops there (the bound is a setting)"
            ),
            ErrorKind::Invalid(why) => f.write_str(why),
        }
    }
}

/// An error of one request: the vault, the request and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    base: String,
    request: String,
    /// Boxed: an `Error` travels in every `Result` of the client.
    kind: Box<ErrorKind>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Parachute Vault {}: {}: {}",
            self.base, self.request, self.kind
        )
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The error of a request that could not be sent because the caller's
    /// runtime is stopping (transient: a later run sends it).
    pub fn stopped() -> Error {
        Error {
            base: String::new(),
            request: "a request".into(),
            kind: Box::new(ErrorKind::Unavailable {
                status: None,
                reason: "vaultrunner is stopping".into(),
                retry_after: None,
            }),
        }
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    pub fn into_kind(self) -> ErrorKind {
        *self.kind
    }

    /// What was asked (`update note id …`), for messages.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// Could the same request succeed later (the vault down or overloaded)?
    pub fn is_transient(&self) -> bool {
        matches!(*self.kind, ErrorKind::Unavailable { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(*self.kind, ErrorKind::NotFound)
    }

    pub fn conflict(&self) -> Option<&Conflict> {
        match &*self.kind {
            ErrorKind::Conflict(c) => Some(c),
            _ => None,
        }
    }

    /// How long the server asked to wait (`retry-after`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match &*self.kind {
            ErrorKind::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- the client

/// Timeouts and bounds of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// To establish a connection.
    pub connect_timeout: Duration,
    /// For a whole request, answer included.
    pub request_timeout: Duration,
    /// The largest answer read (a page of notes, or one note).
    pub max_body_bytes: usize,
    /// The largest note content kept or written.
    pub max_note_bytes: u64,
    /// Notes per page of a listing (the server's default is 50).
    pub page_size: u32,
    /// The most notes one listing returns before it fails with
    /// [`ErrorKind::TooMany`].
    pub max_notes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: MAX_BODY_BYTES,
            max_note_bytes: MAX_NOTE_BYTES,
            page_size: 500,
            max_notes: 100_000,
        }
    }
}

/// A client of one vault. Clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: BaseUrl,
    token: Token,
    auth: HeaderValue,
    config: Config,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base)
            .field("token", &self.inner.token)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// An answer read within its bound.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

/// Why an answer could not be read.
enum Failure {
    /// Over the bound (with the declared length, if any).
    TooLarge(Option<u64>),
    Error(ErrorKind),
}

impl Client {
    pub fn new(base: BaseUrl, token: Token, config: Config) -> Result<Client, Error> {
        let fail = |why: String| Error {
            base: base.to_string(),
            request: "set up the client".into(),
            kind: Box::new(ErrorKind::Invalid(why)),
        };
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| fail(format!("{TOKEN_ENV} cannot go in an HTTP header")))?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("vaultrunner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("the HTTP client could not be built: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                token,
                auth,
                config,
            }),
        })
    }

    /// The vault's MCP endpoint as a Claude Code `--mcp-config` document
    /// (`<base>/mcp`, HTTP, the bearer token): it holds the token, so it
    /// goes into a file only its user can read, never onto a command line.
    pub fn mcp_config_json(&self) -> String {
        json!({
            "mcpServers": {
                "parachute-vault": {
                    "type": "http",
                    "url": self.inner.base.mcp().as_str(),
                    "headers": {"Authorization": format!("Bearer {}", self.inner.token.expose())},
                }
            }
        })
        .to_string()
    }

    /// `text` with the token replaced by `<redacted: VAULTRUNNER_VAULT_TOKEN>`
    /// (borrowed when it holds none): what vaultrunner writes into a note
    /// never carries the token, even when a turn printed its environment.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        let token = self.inner.token.expose();
        if token.is_empty() || !text.contains(token) {
            return std::borrow::Cow::Borrowed(text);
        }
        std::borrow::Cow::Owned(text.replace(token, &format!("<redacted: {TOKEN_ENV}>")))
    }

    pub fn base(&self) -> &BaseUrl {
        &self.inner.base
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn error(&self, request: &str, kind: ErrorKind) -> Error {
        Error {
            base: self.inner.base.to_string(),
            request: request.to_string(),
            kind: Box::new(kind),
        }
    }

    /// Server text fit for an error: the token removed, control characters
    /// escaped, at most [`MAX_QUOTE`] characters.
    fn quote(&self, text: &str) -> String {
        let text = text.replace(self.inner.token.expose(), "<redacted>");
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            if i >= MAX_QUOTE {
                out.push('…');
                break;
            }
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Sends one request and reads its answer within `limit` bytes (error
    /// answers within [`MAX_ERROR_BODY`]).
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        limit: usize,
    ) -> Result<Answer, Failure> {
        let mut rb = self
            .inner
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.inner.auth.clone());
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let mut resp = rb
            .send()
            .await
            .map_err(|e| Failure::Error(self.transport(&e)))?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(Failure::Error(ErrorKind::Protocol(format!(
                "the server redirects (HTTP {}) to {}: use the final address as the vault's base",
                status.as_u16(),
                self.quote(to)
            ))));
        }
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(3600)));
            let body = match read_bounded(&mut resp, MAX_ERROR_BODY, true).await {
                Ok(b) => b,
                Err(Failure::Error(k)) => return Err(Failure::Error(k)),
                Err(Failure::TooLarge(_)) => Vec::new(),
            };
            return Err(Failure::Error(self.status_error(
                status,
                &body,
                retry_after,
            )));
        }
        let body = match read_bounded(&mut resp, limit, false).await {
            Ok(b) => b,
            Err(Failure::Error(_)) => {
                // The body failed midway: a timeout or a reset.
                return Err(Failure::Error(ErrorKind::Unavailable {
                    status: None,
                    reason: format!(
                        "the answer broke off or took over {} s",
                        self.inner.config.request_timeout.as_secs()
                    ),
                    retry_after: None,
                }));
            }
            Err(too_large) => return Err(too_large),
        };
        Ok(Answer {
            status,
            content_type,
            body,
        })
    }

    /// A connection error, a timeout, as an error kind.
    fn transport(&self, e: &reqwest::Error) -> ErrorKind {
        let reason = if e.is_timeout() {
            format!(
                "no answer within {} s (connect timeout {} s)",
                self.inner.config.request_timeout.as_secs(),
                self.inner.config.connect_timeout.as_secs()
            )
        } else {
            // The innermost cause says it best ("Connection refused").
            let mut cause: &dyn std::error::Error = e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            let what = if e.is_connect() {
                "cannot connect"
            } else {
                "connection error"
            };
            format!("{what}: {}", self.quote(&cause.to_string()))
        };
        ErrorKind::Unavailable {
            status: None,
            reason,
            retry_after: None,
        }
    }

    /// A non-2xx answer as an error kind.
    fn status_error(
        &self,
        status: StatusCode,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> ErrorKind {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(|s| self.quote(s));
        let error_type = field("error_type");
        let reason = field("message")
            .or_else(|| field("error"))
            .unwrap_or_else(|| {
                let text = self.quote(&String::from_utf8_lossy(body));
                if text.trim().is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("no reason given")
                        .to_string()
                } else {
                    text
                }
            });
        let code = status.as_u16();
        match code {
            401 | 403 => ErrorKind::Unauthorized {
                status: code,
                reason,
                required_scope: field("required_scope"),
                granted_scopes: v
                    .get("granted_scopes")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(|s| self.quote(s))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            404 if field("error").as_deref() == Some("Vault not found") => ErrorKind::NoSuchVault,
            404 => ErrorKind::NotFound,
            409 if error_type.as_deref() == Some("path_conflict") => {
                ErrorKind::Conflict(Conflict::Path {
                    path: field("path").unwrap_or_default(),
                })
            }
            409 if error_type.as_deref() == Some("conflict") => {
                ErrorKind::Conflict(Conflict::Stale {
                    current_updated_at: field("current_updated_at"),
                    your_updated_at: field("your_updated_at")
                        .or_else(|| field("expected_updated_at"))
                        .unwrap_or_default(),
                })
            }
            428 => ErrorKind::VersionNotSent,
            408 | 429 | 500..=599 => ErrorKind::Unavailable {
                status: Some(code),
                reason,
                retry_after,
            },
            _ => ErrorKind::Rejected {
                status: code,
                reason,
            },
        }
    }

    /// The JSON of a 2xx answer; an answer that is not JSON (an HTML page
    /// from a proxy) is a protocol error that says what it was.
    fn json_of(&self, answer: &Answer) -> Result<Value, ErrorKind> {
        serde_json::from_slice(&answer.body).map_err(|e| {
            let start =
                String::from_utf8_lossy(answer.body.get(..80).unwrap_or(&answer.body)).into_owned();
            ErrorKind::Protocol(format!(
                "a {} answer that is not JSON ({e}; content-type {:?}, it starts {:?})",
                answer.status.as_u16(),
                self.quote(&answer.content_type),
                self.quote(&start)
            ))
        })
    }

    /// One request whose 2xx answer is JSON.
    async fn call(
        &self,
        request: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let limit = self.inner.config.max_body_bytes;
        match self.send(method, url, body, limit).await {
            Ok(answer) => self.json_of(&answer).map_err(|k| self.error(request, k)),
            Err(Failure::Error(k)) => Err(self.error(request, k)),
            Err(Failure::TooLarge(n)) => Err(self.error(
                request,
                ErrorKind::TooLarge {
                    byte_size: n,
                    limit: self.inner.config.max_note_bytes,
                },
            )),
        }
    }

    fn note_of(&self, request: &str, v: &Value) -> Result<Note, Error> {
        Note::from_json(v, self.inner.config.max_note_bytes)
            .map_err(|why| self.error(request, ErrorKind::Protocol(self.quote(&why))))
    }

    /// `GET /api/health`: the server is up and the token is accepted
    /// (the health check needs a valid token).
    pub async fn health(&self) -> Result<Health, Error> {
        let request = "health check";
        let v = self
            .call(request, Method::GET, self.inner.base.api(&["health"]), None)
            .await?;
        let status = v.get("status").and_then(Value::as_str);
        let vault = v.get("vault").and_then(Value::as_str);
        match (status, vault) {
            (Some("ok"), Some(vault)) => Ok(Health {
                vault: vault.to_string(),
            }),
            (Some("ok"), None) => Ok(Health {
                vault: self.inner.base.vault_name().to_string(),
            }),
            (Some(other), _) => Err(self.error(
                request,
                ErrorKind::Unavailable {
                    status: Some(200),
                    reason: format!("its status is {:?}", self.quote(other)),
                    retry_after: None,
                },
            )),
            (None, _) => Err(self.error(
                request,
                ErrorKind::Protocol(format!("no `status` in {}", self.quote(&v.to_string()))),
            )),
        }
    }

    /// Reads one note by id or by path.
    pub async fn get(&self, note: NoteRef<'_>) -> Result<Note, Error> {
        match note {
            NoteRef::Id(id) => {
                let request = format!("read note id {id}");
                self.get_one(&request, id).await
            }
            NoteRef::Path(raw) => {
                let request = format!("read note {raw:?}");
                let path = self.addressable(&request, raw)?;
                let found = self.get_one(&request, &path).await?;
                if found.path.as_deref() == Some(path.as_str()) {
                    return Ok(found);
                }
                // The path is some other note's id (ids are tried first):
                // ask for the path alone.
                let mut url = self.inner.base.api(&["notes"]);
                url.query_pairs_mut()
                    .append_pair("path", &path)
                    .append_pair("include_content", "true")
                    .append_pair("limit", "2");
                let v = self.call(&request, Method::GET, url, None).await?;
                let mut notes = self.notes_of(&request, &v)?;
                notes.retain(|n| n.path.as_deref() == Some(path.as_str()));
                match notes.len() {
                    0 => Err(self.error(&request, ErrorKind::NotFound)),
                    1 => notes
                        .pop()
                        .ok_or_else(|| self.error(&request, ErrorKind::NotFound)),
                    n => Err(self.error(
                        &request,
                        ErrorKind::Protocol(format!(
                            "{n} notes have the path {path:?}, which is unique"
                        )),
                    )),
                }
            }
        }
    }

    /// A path normalised as the server stores it, and addressable as one
    /// URL segment.
    fn addressable(&self, request: &str, raw: &str) -> Result<String, Error> {
        match normalize_path(raw) {
            None => Err(self.error(
                request,
                ErrorKind::Invalid(format!("the path {raw:?} is empty once normalised")),
            )),
            Some(p) if p == "." || p == ".." => Err(self.error(
                request,
                ErrorKind::Invalid(format!("the path {p:?} cannot be addressed in a URL")),
            )),
            Some(p) => Ok(p),
        }
    }

    async fn get_one(&self, request: &str, segment: &str) -> Result<Note, Error> {
        let v = self
            .call(
                request,
                Method::GET,
                self.inner.base.api(&["notes", segment]),
                None,
            )
            .await?;
        let note = self.note_of(request, &v)?;
        if let Content::TooLarge { byte_size } = note.content {
            return Err(self.error(
                request,
                ErrorKind::TooLarge {
                    byte_size: Some(byte_size),
                    limit: self.inner.config.max_note_bytes,
                },
            ));
        }
        Ok(note)
    }

    /// The notes of a listing's answer: a JSON list (this server), or an
    /// object whose `notes` is one (newer servers page that way).
    fn notes_of(&self, request: &str, v: &Value) -> Result<Vec<Note>, Error> {
        let items = match v {
            Value::Array(items) => items,
            Value::Object(o) => match o.get("notes") {
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return Err(self.error(
                        request,
                        ErrorKind::Protocol(format!(
                            "`notes` is not a list (it is {})",
                            kind_of(other)
                        )),
                    ));
                }
                None => {
                    return Err(self.error(
                        request,
                        ErrorKind::Protocol(
                            "an object without `notes`, not a list of notes".into(),
                        ),
                    ));
                }
            },
            other => {
                return Err(self.error(
                    request,
                    ErrorKind::Protocol(format!(
                        "a listing is {}, not a list of notes",
                        kind_of(other)
                    )),
                ));
            }
        };
        items
            .iter()
            .map(|item| self.note_of(request, item))
            .collect()
    }

    /// Lists the notes a query selects, page by page (offset paging in
    /// `createdAt` order, so notes created meanwhile come last) until a
    /// short page, at most [`Config::max_notes`] of them.
    pub async fn list(&self, query: &Query) -> Result<Vec<Note>, Error> {
        let request = query.describe();
        for tag in &query.tags {
            if tag.is_empty() || tag.contains(',') {
                return Err(self.error(
                    &request,
                    ErrorKind::Invalid(format!(
                        "the tag {tag:?} cannot be listed: the API takes tags as one comma-separated list"
                    )),
                ));
            }
        }
        let page_size = query
            .newest
            .unwrap_or(self.inner.config.page_size)
            .clamp(1, self.inner.config.page_size.max(1));
        let limit = usize::try_from(page_size).unwrap_or(usize::MAX);
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut offset: u64 = 0;
        loop {
            let page = self.page(&request, query, offset, page_size).await?;
            let n = page.len();
            if n > limit {
                return Err(self.error(
                    &request,
                    ErrorKind::Protocol(format!("asked for at most {limit} notes, got {n}")),
                ));
            }
            let mut new = 0usize;
            for note in page {
                if !seen.insert(note.id.clone()) {
                    continue;
                }
                new += 1;
                let within = match &query.path_prefix {
                    Some(prefix) => note
                        .path
                        .as_deref()
                        .is_some_and(|p| p.starts_with(prefix.as_str())),
                    None => true,
                };
                if within {
                    out.push(note);
                }
            }
            if seen.len() > self.inner.config.max_notes {
                return Err(self.error(
                    &request,
                    ErrorKind::TooMany {
                        bound: self.inner.config.max_notes,
                    },
                ));
            }
            if n < limit || query.newest.is_some() {
                return Ok(out);
            }
            if new == 0 {
                return Err(self.error(
                    &request,
                    ErrorKind::Protocol(format!(
                        "the page at offset {offset} repeats notes already listed: the server ignores `offset`"
                    )),
                ));
            }
            offset = offset.saturating_add(n as u64);
        }
    }

    fn page_url(&self, query: &Query, offset: u64, page_size: u32, content: bool) -> Url {
        let mut url = self.inner.base.api(&["notes"]);
        {
            let mut q = url.query_pairs_mut();
            if !query.tags.is_empty() {
                q.append_pair("tag", &query.tags.join(","));
                let m = match query.tag_match {
                    TagMatch::Any => "any",
                    TagMatch::All => "all",
                };
                q.append_pair("tag_match", m);
            }
            if let Some(p) = &query.path_prefix {
                q.append_pair("path_prefix", p);
            }
            q.append_pair("include_content", if content { "true" } else { "false" });
            q.append_pair(
                "sort",
                if query.newest.is_some() {
                    "desc"
                } else {
                    "asc"
                },
            );
            q.append_pair("limit", &page_size.to_string());
            q.append_pair("offset", &offset.to_string());
        }
        url
    }

    /// One page. A page with content over the body bound is read again
    /// without content, and its notes one by one (a note over the note
    /// limit is not fetched at all).
    async fn page(
        &self,
        request: &str,
        query: &Query,
        offset: u64,
        page_size: u32,
    ) -> Result<Vec<Note>, Error> {
        let limit = self.inner.config.max_body_bytes;
        let url = self.page_url(query, offset, page_size, query.include_content);
        match self.send(Method::GET, url, None, limit).await {
            Ok(answer) => {
                let v = self.json_of(&answer).map_err(|k| self.error(request, k))?;
                return self.notes_of(request, &v);
            }
            Err(Failure::Error(k)) => return Err(self.error(request, k)),
            Err(Failure::TooLarge(_)) if query.include_content => {}
            Err(Failure::TooLarge(n)) => {
                return Err(self.error(
                    request,
                    ErrorKind::Protocol(format!(
                        "a page of {page_size} notes without content is {} over the {limit}-byte bound: lower the page size",
                        n.map_or_else(|| "somewhere".to_string(), |n| format!("{n} bytes,"))
                    )),
                ));
            }
        }
        let url = self.page_url(query, offset, page_size, false);
        let v = self.call(request, Method::GET, url, None).await?;
        let index = self.notes_of(request, &v)?;
        let mut notes = Vec::with_capacity(index.len());
        for entry in index {
            if matches!(entry.content, Content::TooLarge { .. }) {
                notes.push(entry);
                continue;
            }
            match self.get_one(request, &entry.id).await {
                Ok(note) => notes.push(note),
                Err(e) if e.is_not_found() => {} // deleted meanwhile
                Err(e) => match *e.kind {
                    ErrorKind::TooLarge { byte_size, .. } => notes.push(Note {
                        content: Content::TooLarge {
                            byte_size: byte_size.unwrap_or(self.inner.config.max_note_bytes),
                        },
                        ..entry
                    }),
                    _ => return Err(e),
                },
            }
        }
        Ok(notes)
    }

    /// Creates a note (`POST`). Never overwrites: a note already at that
    /// path is [`Conflict::Path`].
    pub async fn create(&self, note: &NewNote) -> Result<Note, Error> {
        let request = match &note.path {
            Some(p) => format!("create note {p:?}"),
            None => "create note (no path)".to_string(),
        };
        let path = match &note.path {
            Some(raw) => Some(self.addressable(&request, raw)?),
            None => None,
        };
        if path.is_none() && note.content.trim().is_empty() {
            return Err(self.error(
                &request,
                ErrorKind::Invalid(
                    "a note needs a path or some content (the server refuses an empty note)".into(),
                ),
            ));
        }
        self.check_size(&request, &note.content)?;
        self.check_tags(&request, note.tags.iter())?;
        let mut body = Map::new();
        body.insert("content".into(), Value::String(note.content.clone()));
        if let Some(p) = path {
            body.insert("path".into(), Value::String(p));
        }
        if !note.metadata.is_empty() {
            body.insert("metadata".into(), Value::Object(note.metadata.clone()));
        }
        if !note.tags.is_empty() {
            body.insert("tags".into(), json!(note.tags));
        }
        let v = self
            .call(
                &request,
                Method::POST,
                self.inner.base.api(&["notes"]),
                Some(&Value::Object(body)),
            )
            .await?;
        self.note_of(&request, &v)
    }

    /// Updates a note if it is still at `version` (`PATCH` with
    /// `if_updated_at`): content replaced, metadata merged shallowly, tags
    /// added then removed. A note changed meanwhile is [`Conflict::Stale`].
    pub async fn update(&self, id: &str, version: &Version, patch: &Patch) -> Result<Note, Error> {
        let request = format!("update note id {id}");
        if let Some(c) = &patch.content {
            self.check_size(&request, c)?;
        }
        self.check_tags(&request, patch.add_tags.iter().chain(&patch.remove_tags))?;
        let mut body = Map::new();
        body.insert("if_updated_at".into(), Value::String(version.0.clone()));
        if let Some(c) = &patch.content {
            body.insert("content".into(), Value::String(c.clone()));
        }
        if !patch.metadata.is_empty() {
            body.insert("metadata".into(), Value::Object(patch.metadata.clone()));
        }
        if !patch.add_tags.is_empty() || !patch.remove_tags.is_empty() {
            body.insert(
                "tags".into(),
                json!({"add": patch.add_tags, "remove": patch.remove_tags}),
            );
        }
        let v = self
            .call(
                &request,
                Method::PATCH,
                self.inner.base.api(&["notes", id]),
                Some(&Value::Object(body)),
            )
            .await?;
        self.note_of(&request, &v)
    }

    /// Deletes a note (unconditionally: the API has no version check for
    /// deletes).
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        let request = format!("delete note id {id}");
        let v = self
            .call(
                &request,
                Method::DELETE,
                self.inner.base.api(&["notes", id]),
                None,
            )
            .await?;
        match v.get("deleted") {
            Some(Value::Bool(true)) => Ok(()),
            _ => Err(self.error(
                &request,
                ErrorKind::Protocol(format!(
                    "not `deleted: true`: {}",
                    self.quote(&v.to_string())
                )),
            )),
        }
    }

    fn check_size(&self, request: &str, content: &str) -> Result<(), Error> {
        let size = content.len() as u64;
        if size > self.inner.config.max_note_bytes {
            return Err(self.error(
                request,
                ErrorKind::TooLarge {
                    byte_size: Some(size),
                    limit: self.inner.config.max_note_bytes,
                },
            ));
        }
        Ok(())
    }

    fn check_tags<'t>(
        &self,
        request: &str,
        mut tags: impl Iterator<Item = &'t String>,
    ) -> Result<(), Error> {
        match tags.find(|t| t.trim().is_empty()) {
            Some(t) => Err(self.error(
                request,
                ErrorKind::Invalid(format!("the tag {t:?} is empty")),
            )),
            None => Ok(()),
        }
    }
}

/// Reads a body of at most `limit` bytes; with `truncate`, a longer one is
/// cut at the limit instead of refused.
async fn read_bounded(
    resp: &mut reqwest::Response,
    limit: usize,
    truncate: bool,
) -> Result<Vec<u8>, Failure> {
    let declared = resp.content_length();
    if !truncate && declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::TooLarge(declared));
    }
    let mut body = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(Failure::Error(ErrorKind::Unavailable {
                    status: None,
                    reason: format!("the answer broke off: {e}"),
                    retry_after: None,
                }));
            }
        };
        if body.len().saturating_add(chunk.len()) > limit {
            if truncate {
                let room = limit.saturating_sub(body.len());
                body.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
                return Ok(body);
            }
            return Err(Failure::TooLarge(declared));
        }
        body.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_validated_and_normalised() {
        let b = BaseUrl::parse(" http://127.0.0.1:1940/vault/default/ ").unwrap();
        assert_eq!(b.as_str(), "http://127.0.0.1:1940/vault/default");
        assert_eq!(b.vault_name(), "default");
        let b = BaseUrl::parse("HTTPS://Example.COM/vault/my_v-2//").unwrap();
        assert_eq!(b.as_str(), "https://example.com/vault/my_v-2");
        assert_eq!(
            b.api(&["notes", "Inbox/hi there"]).as_str(),
            "https://example.com/vault/my_v-2/api/notes/Inbox%2Fhi%20there"
        );
        assert_eq!(b.mcp().as_str(), "https://example.com/vault/my_v-2/mcp");
        for (bad, says) in [
            ("ftp://h/vault/x", "http:// or https://"),
            ("http://h/vault", "name is missing"),
            ("http://h/", "/vault/<name> is missing"),
            ("http://h/vault/x/api", "without /api"),
            ("http://h/vault/x/api/notes", "without /api"),
            ("http://h/api", "without /api"),
            ("http://h/vault/x/y", "must be /vault/<name>"),
            ("http://h/other/x", "must be /vault/<name>"),
            ("http://h/vault/Big", "lower-case"),
            ("http://h/vault/x?k=1", "query"),
            ("http://h/vault/x#f", "fragment"),
            ("not a url", "not a URL"),
            ("/vault/x", "not a URL"),
        ] {
            let e = BaseUrl::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("http(s)://HOST[:PORT]/vault/<name>"), "{e}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_not_repeated() {
        let e = BaseUrl::parse("https://me:s3cr3t@h/vault/x").unwrap_err();
        assert!(e.contains("user name or password"), "{e}");
        assert!(e.contains(TOKEN_ENV), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = BaseUrl::parse("https://me:s3cr3t@h:bad/vault/x").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn paths_normalise_as_the_server_does() {
        for (given, want) in [
            ("Inbox/hi", Some("Inbox/hi")),
            (" Inbox/hi.md ", Some("Inbox/hi")),
            ("Inbox/hi.MD", Some("Inbox/hi")),
            ("\\Inbox\\hi", Some("Inbox/hi")),
            ("/Inbox//hi/", Some("Inbox/hi")),
            // `.md` goes before the slashes, as on the server.
            (" \\Inbox\\hi.md/ ", Some("Inbox/hi.md")),
            ("//a//", Some("a")),
            ("///", None),
            ("  ", None),
            (".md", None),
            ("é/ü.md", Some("é/ü")),
        ] {
            assert_eq!(normalize_path(given).as_deref(), want, "{given:?}");
        }
    }

    #[test]
    fn a_token_is_never_shown() {
        let t = Token::new(" pvt_secret_123\n").unwrap();
        assert_eq!(t.expose(), "pvt_secret_123");
        assert!(!format!("{t:?}").contains("secret"));
        let e = Token::new("  ").unwrap_err();
        assert!(e.contains(TOKEN_ENV), "{e}");
        let e = Token::new("pvt_a b").unwrap_err();
        assert!(e.contains(TOKEN_ENV) && !e.contains("pvt_a"), "{e}");
        let c = Client::new(
            BaseUrl::parse("http://h/vault/x").unwrap(),
            Token::new("pvt_secret_123").unwrap(),
            Config::default(),
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("secret"), "{d}");
        assert!(d.contains("http://h/vault/x"), "{d}");
    }

    #[test]
    fn notes_read_both_cases_and_tolerate_missing_fields() {
        let n = Note::from_json(
            &json!({"id":"a","path":"P/x","content":"hi","metadata":{"n":3},"tags":["t"],
                    "createdAt":"2026-01-01T00:00:00.000Z","updatedAt":"2026-01-01T00:00:01.000Z"}),
            10,
        )
        .unwrap();
        assert_eq!(n.path.as_deref(), Some("P/x"));
        assert_eq!(n.text(), Some("hi"));
        assert_eq!(n.metadata.get("n"), Some(&json!(3)));
        assert_eq!(n.version().as_str(), "2026-01-01T00:00:01.000Z");
        let n = Note::from_json(
            &json!({"id":"b","created_at":"c","updated_at":"u","content":"x"}),
            10,
        )
        .unwrap();
        assert_eq!(
            (n.created_at.as_deref(), n.updated_at.as_str()),
            (Some("c"), "u")
        );
        assert!(n.path.is_none() && n.metadata.is_empty() && n.tags.is_empty());
        // No updatedAt: createdAt is the version (as the server does).
        let n = Note::from_json(&json!({"id":"c","createdAt":"c1"}), 10).unwrap();
        assert_eq!(n.updated_at, "c1");
        assert_eq!(n.content, Content::Omitted { byte_size: None });
        let n = Note::from_json(&json!({"id":"d","createdAt":"c","byteSize":4}), 10).unwrap();
        assert_eq!(n.content, Content::Omitted { byte_size: Some(4) });
        let n = Note::from_json(&json!({"id":"d","createdAt":"c","byteSize":11}), 10).unwrap();
        assert_eq!(n.content, Content::TooLarge { byte_size: 11 });
        let n = Note::from_json(
            &json!({"id":"e","createdAt":"c","content":"12345678901"}),
            10,
        )
        .unwrap();
        assert_eq!(n.content, Content::TooLarge { byte_size: 11 });
        assert_eq!(n.text(), None);
    }

    #[test]
    fn odd_metadata_and_shapes_are_read_as_sent() {
        let v = json!({"id":"a","createdAt":"c","updatedAt":"u","path":"",
                       "metadata":{"n":3,"f":-1.5,"b":false,"z":null,"l":[1,"x"],"o":{"k":{}}}});
        let n = Note::from_json(&v, 10).unwrap();
        assert_eq!(Value::Object(n.metadata.clone()), v["metadata"]);
        assert_eq!(n.path, None, "an empty path is no path");
        assert_eq!(n.name(), "id a");
        let n = Note::from_json(
            &json!({"id":"a","createdAt":"c","metadata":null,"tags":null,"content":null}),
            10,
        )
        .unwrap();
        assert!(n.metadata.is_empty() && n.tags.is_empty());
        assert_eq!(n.text(), Some(""));
        // camelCase wins over snake_case when both are there.
        let n = Note::from_json(
            &json!({"id":"a","updatedAt":"camel","updated_at":"snake"}),
            10,
        )
        .unwrap();
        assert_eq!(n.updated_at, "camel");
        for v in [json!(null), json!("note"), json!(3), json!(true)] {
            assert!(
                Note::from_json(&v, 10)
                    .unwrap_err()
                    .contains("not a JSON object"),
                "{v}"
            );
        }
        // Huge content: kept as a size, the text dropped.
        let big = "é".repeat(600_000);
        let n =
            Note::from_json(&json!({"id":"h","createdAt":"c","content":big}), 1_000_000).unwrap();
        assert_eq!(
            n.content,
            Content::TooLarge {
                byte_size: 1_200_000
            }
        );
        assert_eq!(n.text(), None);
    }

    #[test]
    fn server_text_quoted_in_errors_is_scrubbed_of_the_token() {
        let c = Client::new(
            BaseUrl::parse("http://h/vault/x").unwrap(),
            Token::new("pvt_secret_123").unwrap(),
            Config::default(),
        )
        .unwrap();
        let body = br#"{"error":"Unauthorized","message":"bad key pvt_secret_123\u0007"}"#;
        for status in [401, 403, 500, 400] {
            let k = c.status_error(StatusCode::from_u16(status).unwrap(), body, None);
            let e = c.error("list notes", k);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let k = c.status_error(StatusCode::FORBIDDEN, br#"{"error_type":"insufficient_scope","required_scope":"vault:write","granted_scopes":["vault:read"]}"#, None);
        let s = c.error("create note", k).to_string();
        assert!(
            s.contains(TOKEN_ENV) && s.contains("lacks the scope vault:write"),
            "{s}"
        );
        let k = c.status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            b"<html>down</html>",
            Some(Duration::from_secs(7)),
        );
        let e = c.error("health check", k);
        assert!(
            e.is_transient() && e.retry_after() == Some(Duration::from_secs(7)),
            "{e:?}"
        );
        assert!(e.to_string().contains("<html>down</html>"), "{e}");
    }

    #[test]
    fn nonsense_notes_are_refused_with_what_is_wrong() {
        for (v, says) in [
            (json!([1]), "not a JSON object (it is a list)"),
            (json!({"content":"x","createdAt":"c"}), "without an `id`"),
            (
                json!({"id":7,"createdAt":"c"}),
                "`id` is not a text (it is a number)",
            ),
            (json!({"id":"","createdAt":"c"}), "empty `id`"),
            (
                json!({"id":"a"}),
                "note a has neither `updatedAt` nor `createdAt`",
            ),
            (
                json!({"id":"a","createdAt":"c","metadata":[1]}),
                "note a: `metadata` is not an object (it is a list)",
            ),
            (
                json!({"id":"a","createdAt":"c","tags":"t"}),
                "note a: `tags` is not a list",
            ),
            (
                json!({"id":"a","createdAt":"c","tags":["t",3]}),
                "note a: `tags` holds a number",
            ),
            (
                json!({"id":"a","createdAt":"c","content":{}}),
                "note a: `content` is not a text",
            ),
            (
                json!({"id":"a","createdAt":5}),
                "note a: `createdAt` is not a text",
            ),
            (
                json!({"id":"a","createdAt":"c","path":1}),
                "note a: `path` is not a text",
            ),
            (
                json!({"id":"a","createdAt":"c","byteSize":-1}),
                "note a: `byteSize` is not a size",
            ),
        ] {
            let e = Note::from_json(&v, 10).unwrap_err();
            assert!(e.contains(says), "{v}: {e}");
        }
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = |kind| {
            Error {
                base: "http://h/vault/x".into(),
                request: "update note id 1".into(),
                kind: Box::new(kind),
            }
            .to_string()
        };
        let s = e(ErrorKind::Unauthorized {
            status: 401,
            reason: "Invalid API key".into(),
            required_scope: None,
            granted_scopes: vec![],
        });
        assert!(
            s.starts_with("Parachute Vault http://h/vault/x: update note id 1: "),
            "{s}"
        );
        assert!(
            s.contains(TOKEN_ENV) && s.contains("Invalid API key"),
            "{s}"
        );
        let s = e(ErrorKind::Unauthorized {
            status: 403,
            reason: "r".into(),
            required_scope: Some("vault:write".into()),
            granted_scopes: vec!["vault:read".into()],
        });
        assert!(
            s.contains("lacks the scope vault:write") && s.contains("it has vault:read"),
            "{s}"
        );
        assert!(s.contains(TOKEN_ENV), "{s}");
        let s = e(ErrorKind::VersionNotSent);
        assert!(
            s.contains("428") && s.contains("if_updated_at") && s.contains("bug"),
            "{s}"
        );
        let s = e(ErrorKind::TooLarge {
            byte_size: Some(9 * 1024 * 1024),
            limit: MAX_NOTE_BYTES,
        });
        assert!(s.contains("9437184 bytes") && s.contains("8 MiB"), "{s}");
    }
}
