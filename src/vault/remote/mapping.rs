//! A server note as a note's text, and back (SPEC §6, "Mapping").
//!
//! - Front-matter is the note's `metadata` (JSON values as the same YAML
//!   values; lists stay lists) plus `tags` (the note's tags, a leading `#`
//!   dropped); the body is its `content`. A `null` value is no key.
//! - The Parachute convention is string values: a string that is exactly
//!   the canonical text of a number or a boolean (`"3"`, `"true"`) reads as
//!   that number or boolean, so `attempts: "3"` and `enabled: "false"` mean
//!   what they say; any other string stays a string (`"007"`, `"yes"`).
//! - Written back, scalars become strings again (`3` → `"3"`); lists and
//!   mappings keep their shape; tags are written bare.

use serde_json::{Map, Value as Json};
use serde_yaml::{Mapping, Value as Yaml};

use crate::parachute;

/// What a note's text says, in the server's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Parts {
    pub metadata: Map<String, Json>,
    pub tags: Vec<String>,
    pub content: String,
}

/// A top-level metadata value as YAML: the canonical text of a number or
/// a boolean reads as one.
fn yaml_of_scalar_text(s: &str) -> Yaml {
    if s == "true" {
        return Yaml::Bool(true);
    }
    if s == "false" {
        return Yaml::Bool(false);
    }
    if let Ok(n) = s.parse::<i64>()
        && n.to_string() == s
    {
        return Yaml::Number(n.into());
    }
    if let Ok(n) = s.parse::<u64>()
        && n.to_string() == s
    {
        return Yaml::Number(n.into());
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
        && f.to_string() == s
        && s.contains('.')
    {
        return Yaml::Number(f.into());
    }
    Yaml::String(s.to_string())
}

/// JSON as YAML, keeping its shape.
fn yaml_of(v: &Json) -> Yaml {
    match v {
        Json::Null => Yaml::Null,
        Json::Bool(b) => Yaml::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Yaml::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Yaml::Number(u.into())
            } else {
                Yaml::Number(n.as_f64().unwrap_or(0.0).into())
            }
        }
        Json::String(s) => Yaml::String(s.clone()),
        Json::Array(a) => Yaml::Sequence(a.iter().map(yaml_of).collect()),
        Json::Object(o) => {
            let mut m = Mapping::new();
            for (k, v) in o {
                m.insert(Yaml::String(k.clone()), yaml_of(v));
            }
            Yaml::Mapping(m)
        }
    }
}

/// YAML as JSON, keeping its shape (scalars inside lists and mappings as
/// they are).
fn json_of(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                serde_json::Number::from_f64(n.as_f64().unwrap_or(0.0))
                    .map_or(Json::Null, Json::Number)
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(s) => Json::Array(s.iter().map(json_of).collect()),
        Yaml::Mapping(m) => {
            Json::Object(m.iter().map(|(k, v)| (key_text(k), json_of(v))).collect())
        }
        Yaml::Tagged(t) => json_of(&t.value),
    }
}

fn key_text(k: &Yaml) -> String {
    match k {
        Yaml::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

/// A top-level value as the server stores it: scalars as strings.
fn metadata_value(v: &Yaml) -> Json {
    match v {
        Yaml::Bool(b) => Json::String(b.to_string()),
        Yaml::Number(n) => Json::String(n.to_string()),
        Yaml::Tagged(t) => metadata_value(&t.value),
        other => json_of(other),
    }
}

/// Does writing back `old` (a value as the server has it) as it reads give
/// `new`? Then the key is unchanged and is not sent: a number a user wrote
/// (`priority: 3`) stays a number, and `"3"` stays `"3"`.
pub fn unchanged(old: &Json, new: &Json) -> bool {
    if old == new {
        return true;
    }
    let read = match old {
        Json::String(s) => yaml_of_scalar_text(s),
        other => yaml_of(other),
    };
    metadata_value(&read) == *new
}

/// A tag as vaultrunner writes it: no leading `#` or blanks (however
/// many, in any mix) and no trailing blanks, so a tag read back is bare
/// already.
pub fn bare_tag(tag: &str) -> &str {
    tag.trim_start_matches(|c: char| c == '#' || c.is_whitespace())
        .trim_end()
}

/// A note's text: front-matter from its metadata and tags, then `body`.
pub fn text_of(note: &parachute::Note, body: &str) -> String {
    let mut m = Mapping::new();
    for (k, v) in &note.metadata {
        if k == "tags" || v.is_null() {
            continue;
        }
        let value = match v {
            Json::String(s) => yaml_of_scalar_text(s),
            other => yaml_of(other),
        };
        m.insert(Yaml::String(k.clone()), value);
    }
    let mut tags: Vec<String> = Vec::new();
    for t in &note.tags {
        let t = bare_tag(t);
        if !t.is_empty() && !tags.iter().any(|x| x == t) {
            tags.push(t.to_string());
        }
    }
    if !tags.is_empty() {
        m.insert(
            Yaml::String("tags".into()),
            Yaml::Sequence(tags.into_iter().map(Yaml::String).collect()),
        );
    }
    // A body that starts like front-matter gets a block of its own (empty
    // if need be), so it is never read as the note's front-matter.
    if m.is_empty() && !crate::note::split(body).has_front_matter {
        return body.to_string();
    }
    let yaml = if m.is_empty() {
        "{}\n".to_string()
    } else {
        serde_yaml::to_string(&m).unwrap_or_default()
    };
    format!("---\n{yaml}---\n{body}")
}

/// Takes a note's text apart for the server; the error says what is wrong
/// with its front-matter.
pub fn parts_of(text: &str) -> Result<Parts, String> {
    let split = crate::note::split(text);
    if !split.has_front_matter {
        return Ok(Parts {
            metadata: Map::new(),
            tags: Vec::new(),
            content: text.to_string(),
        });
    }
    let meta = crate::note::parse_yaml(split.yaml).map_err(|e| e.to_string())?;
    let mut metadata = Map::new();
    let mut tags = Vec::new();
    for (k, v) in &meta {
        let key = key_text(k);
        if key == "tags" {
            match v {
                Yaml::String(s) => tags.extend(s.split_whitespace().map(str::to_string)),
                Yaml::Sequence(items) => {
                    for t in items {
                        match t {
                            Yaml::String(s) => tags.push(s.clone()),
                            other => tags.push(key_text(other)),
                        }
                    }
                }
                Yaml::Null => {}
                _ => return Err("`tags` is neither a list nor a text".into()),
            }
            continue;
        }
        metadata.insert(key, metadata_value(v));
    }
    let mut bare: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let t = bare_tag(&t).to_string();
        if !t.is_empty() && !t.contains(',') && !bare.contains(&t) {
            bare.push(t);
        }
    }
    Ok(Parts {
        metadata,
        tags: bare,
        content: split.body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note(metadata: Json, tags: &[&str]) -> parachute::Note {
        parachute::Note::from_json(
            &json!({"id": "n1", "path": "Inbox/hi", "content": "Hello", "metadata": metadata,
                    "tags": tags, "updatedAt": "2026-12-01T07:06:49.537Z"}),
            1 << 20,
        )
        .unwrap()
    }

    #[test]
    fn strings_that_are_numbers_or_booleans_read_as_them() {
        let n = note(
            json!({"agent": "echo", "attempts": "3", "enabled": "false", "zip": "007",
                   "yes": "yes", "ratio": "1.5", "depth": 2, "cmd": ["a", "b"], "gone": null}),
            &["#agent/message", "agent/message/inbound"],
        );
        let text = text_of(&n, "Hello");
        let parsed = crate::note::Note::parse(&text).unwrap();
        let get = |k: &str| parsed.meta.get(Yaml::String(k.into())).cloned();
        assert_eq!(get("attempts"), Some(Yaml::Number(3.into())));
        assert_eq!(get("enabled"), Some(Yaml::Bool(false)));
        assert_eq!(get("zip"), Some(Yaml::String("007".into())));
        assert_eq!(get("yes"), Some(Yaml::String("yes".into())));
        assert_eq!(get("ratio"), Some(Yaml::Number(1.5.into())));
        assert_eq!(get("depth"), Some(Yaml::Number(2.into())));
        assert!(matches!(get("cmd"), Some(Yaml::Sequence(s)) if s.len() == 2));
        assert_eq!(get("gone"), None);
        assert_eq!(parsed.kind(), crate::note::NoteKind::Inbound);
        assert_eq!(parsed.body, "Hello");
    }

    #[test]
    fn written_back_scalars_are_strings_lists_keep_their_shape_tags_are_bare() {
        let text = "---\nagent: echo\nattempts: 3\nenabled: false\ncommand: [cat, -n]\ntags: [\"#agent/message\", agent/message/inbound]\n---\nbody\n";
        let p = parts_of(text).unwrap();
        assert_eq!(p.metadata["attempts"], json!("3"));
        assert_eq!(p.metadata["enabled"], json!("false"));
        assert_eq!(p.metadata["command"], json!(["cat", "-n"]));
        assert_eq!(p.tags, vec!["agent/message", "agent/message/inbound"]);
        assert_eq!(p.content, "body\n");
        assert!(!p.metadata.contains_key("tags"));
    }

    #[test]
    fn a_value_read_and_written_back_as_it_was_is_unchanged() {
        for (old, new) in [
            (json!(3), json!("3")),
            (json!("3"), json!("3")),
            (json!(1.5), json!("1.5")),
            (json!(true), json!("true")),
            (json!(["a", 1]), json!(["a", 1])),
        ] {
            assert!(unchanged(&old, &new), "{old} → {new}");
        }
        for (old, new) in [
            (json!(3), json!("4")),
            (json!("x"), json!("y")),
            (json!(1), json!(1.5)),
        ] {
            assert!(!unchanged(&old, &new), "{old} → {new}");
        }
    }

    #[test]
    fn round_trip_keeps_the_body_and_the_values() {
        let n = note(
            json!({"agent": "echo", "ts": "2026-12-01T07:06:49Z"}),
            &["agent/thread"],
        );
        let text = text_of(&n, "line 1\n---\nline 3\n");
        let p = parts_of(&text).unwrap();
        assert_eq!(p.content, "line 1\n---\nline 3\n");
        assert_eq!(p.metadata["ts"], json!("2026-12-01T07:06:49Z"));
        assert_eq!(p.tags, vec!["agent/thread"]);
    }

    #[test]
    fn a_tag_with_blanks_around_its_hash_round_trips_bare() {
        // Found by the fuzzer: "  #  x" was written as "#  x" and read
        // back as "  x".
        let n = note(json!({}), &["   #   job[", "#agent/thread ", " # ##x"]);
        let p = parts_of(&text_of(&n, "b")).unwrap();
        assert_eq!(p.tags, vec!["job[", "agent/thread", "x"]);
    }

    #[test]
    fn a_body_that_looks_like_front_matter_stays_the_body() {
        let n = parachute::Note::from_json(
            &json!({"id": "n2", "content": "---\nlooks: like\n---\nbody", "updatedAt": "x"}),
            1 << 20,
        )
        .unwrap();
        let text = text_of(&n, "---\nlooks: like\n---\nbody");
        let parsed = crate::note::Note::parse(&text).unwrap();
        assert!(parsed.meta.is_empty(), "{text}");
        assert_eq!(
            parts_of(&text).unwrap().content,
            "---\nlooks: like\n---\nbody"
        );
    }

    #[test]
    fn broken_front_matter_is_an_error_and_no_front_matter_is_all_content() {
        assert!(parts_of("---\na: [1\n---\nx").is_err());
        let p = parts_of("just text").unwrap();
        assert_eq!(p.content, "just text");
        assert!(p.metadata.is_empty());
    }
}
