//! The pure, note-level pieces of git sync (SPEC §7): what vaultrunner
//! changed in a note ([`own_change`]), replaying that change onto another
//! version of the note ([`replay`]) so the user's body and keys win and
//! only vaultrunner's own keys are re-applied, the path of a conflict copy
//! ([`conflict_copy_path`]), and the scan that keeps a secret out of a
//! commit ([`find_secret`]). No I/O, no git: texts in, texts out.

use serde_yaml::Value;

use crate::note::{
    FmValue, Note, NoteKind, edit_front_matter, has_conflict_markers, parse_yaml, render_str, split,
};

/// What vaultrunner changed in one note, in a form that can be replayed
/// onto another version of the note.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum OwnChange {
    /// Top-level front-matter keys vaultrunner set, in order; `None` = removed.
    /// Values are YAML scalars rendered as one line of YAML (`handled`,
    /// `3`, `"a: b"`, `true`), i.e. what `note::FmValue::render` gives.
    Keys(Vec<(String, Option<String>)>),
    /// A whole note vaultrunner wrote (created, or a reply it rewrote).
    Whole(String),
}

/// What vaultrunner changed when it replaced `before` (None: nothing was
/// there) with `after`.
///
/// A change of top-level scalar keys only (the body and every other key as
/// they were) is [`OwnChange::Keys`]: the keys whose value differs, in
/// `after`'s order, then the keys `after` no longer has. Anything else — a
/// new note, a reply (outbound notes are always written whole), a changed
/// body, front-matter that does not parse, a key set to a list, a mapping
/// or null — is [`OwnChange::Whole`].
pub fn own_change(before: Option<&str>, after: &str) -> OwnChange {
    match before.and_then(|b| changed_keys(b, after)) {
        Some(keys) => OwnChange::Keys(keys),
        None => OwnChange::Whole(after.to_string()),
    }
}

/// The keys `after` changed from `before`, or `None` when the change is not
/// one of scalar keys alone.
fn changed_keys(before: &str, after: &str) -> Option<Vec<(String, Option<String>)>> {
    if Note::parse(after).ok()?.kind() == NoteKind::Outbound {
        return None;
    }
    let (b, a) = (split(before), split(after));
    if b.body != a.body {
        return None;
    }
    let before_keys = parse_yaml(b.yaml).ok()?;
    let after_keys = parse_yaml(a.yaml).ok()?;
    let mut out = Vec::new();
    for (k, v) in &after_keys {
        if before_keys.get(k) == Some(v) {
            continue;
        }
        let Value::String(key) = k else { return None };
        out.push((key.clone(), Some(render_scalar(v)?)));
    }
    for (k, _) in &before_keys {
        if !after_keys.contains_key(k) {
            let Value::String(key) = k else { return None };
            out.push((key.clone(), None));
        }
    }
    Some(out)
}

/// A YAML scalar vaultrunner can write back ([`FmValue`]): a string, a
/// boolean, an integer that fits `i64`, a float.
fn fm_value(v: &Value) -> Option<FmValue> {
    match v {
        Value::String(s) => Some(FmValue::Str(s.clone())),
        Value::Bool(b) => Some(FmValue::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(FmValue::Int(i)),
            None if n.is_f64() => n.as_f64().map(FmValue::Float),
            None => None,
        },
        _ => None,
    }
}

/// The one-line YAML of a scalar, only when parsing it back gives the same
/// value (a float like NaN that would come back as text is not one).
fn render_scalar(v: &Value) -> Option<String> {
    let rendered = match fm_value(v)? {
        FmValue::Str(s) => render_str(&s),
        other => other.render(),
    };
    (parse_scalar(&rendered).as_ref() == Some(v)).then_some(rendered)
}

/// The value a rendered scalar stands for: what `k: <rendered>` parses to.
fn parse_scalar(rendered: &str) -> Option<Value> {
    let mut m = parse_yaml(&format!("k: {rendered}\n")).ok()?;
    m.remove("k")
}

/// The outcome of replaying an own change onto a version of the note.
#[derive(Debug, Clone, PartialEq)]
pub enum Replayed {
    /// Leave the target as it is (nothing to do, or deleted upstream).
    Unchanged,
    /// Write this text at the path.
    Write(String),
    /// vaultrunner's whole note goes at the path and the user's version
    /// (`theirs`) is kept beside it at `conflict_copy_path`.
    Conflict { ours: String, theirs: String },
    /// Cannot be applied (the target's front-matter does not parse, has
    /// conflict markers, …): left as it is; `reason` is reported.
    Skipped { reason: String },
}

/// Replays `change` onto `target` (the note as it is now upstream, None:
/// not there). `base` is the note as it was before vaultrunner's change
/// (None: it created the note).
///
/// Keys: a note deleted upstream stays deleted; each key is set unless the
/// target already has vaultrunner's value or the user changed that key
/// (its value differs from `base`'s — a `status: pending` set again is a
/// re-run, not something to overwrite); the rest of the note stays byte
/// for byte. Values are compared as YAML values, not as text. A whole
/// note: written when the target is gone or is still `base`, else the
/// user's version is kept beside it ([`Replayed::Conflict`]).
pub fn replay(change: &OwnChange, base: Option<&str>, target: Option<&str>) -> Replayed {
    match change {
        OwnChange::Keys(keys) => replay_keys(keys, base, target),
        OwnChange::Whole(ours) => replay_whole(ours, base, target),
    }
}

fn replay_whole(ours: &str, base: Option<&str>, target: Option<&str>) -> Replayed {
    let Some(target) = target else {
        // A reply is always written, even where the user deleted the old one.
        return Replayed::Write(ours.to_string());
    };
    if target == ours {
        Replayed::Unchanged
    } else if Some(target) == base {
        Replayed::Write(ours.to_string())
    } else {
        Replayed::Conflict {
            ours: ours.to_string(),
            theirs: target.to_string(),
        }
    }
}

fn replay_keys(
    keys: &[(String, Option<String>)],
    base: Option<&str>,
    target: Option<&str>,
) -> Replayed {
    let Some(target) = target else {
        return Replayed::Unchanged;
    };
    if has_conflict_markers(target) {
        return Replayed::Skipped {
            reason: "the note holds Git conflict markers (<<<<<<< … ======= … >>>>>>>)".to_string(),
        };
    }
    let theirs = match parse_yaml(split(target).yaml) {
        Ok(m) => m,
        Err(e) => {
            return Replayed::Skipped {
                reason: format!("the note's front-matter does not parse: {e}"),
            };
        }
    };
    // A base that does not parse counts as one without keys: a key the
    // target has is then the user's, a key it lacks is set.
    let base_keys = base
        .and_then(|b| parse_yaml(split(b).yaml).ok())
        .unwrap_or_default();
    let mut edits: Vec<(&str, FmValue)> = Vec::new();
    for (key, ours) in keys {
        let ours = match ours {
            None => None,
            Some(rendered) => match parse_scalar(rendered).and_then(|v| Some((fm_value(&v)?, v))) {
                Some(pair) => Some(pair),
                None => {
                    return Replayed::Skipped {
                        reason: format!(
                            "vaultrunner's value of `{key}` ({rendered}) is not one YAML scalar"
                        ),
                    };
                }
            },
        };
        let now = theirs.get(key.as_str());
        if now == ours.as_ref().map(|(_, v)| v) {
            continue;
        }
        if now != base_keys.get(key.as_str()) {
            // The user changed this key upstream: the user wins.
            continue;
        }
        edits.push((key.as_str(), ours.map_or(FmValue::Remove, |(fm, _)| fm)));
    }
    if edits.is_empty() {
        return Replayed::Unchanged;
    }
    match edit_front_matter(target, &edits) {
        Ok((text, _)) if text == target => Replayed::Unchanged,
        Ok((text, _)) => Replayed::Write(text),
        Err(e) => Replayed::Skipped {
            reason: e.to_string(),
        },
    }
}

/// `Inbox/a.reply` + 2026-12-01T15:06:07Z → `Inbox/a.reply (conflict 2026-12-01 150607)`
/// (vault paths have no `.md`; no `:` so Windows and Android can hold it).
pub fn conflict_copy_path(path: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{path} (conflict {})", at.format("%Y-%m-%d %H%M%S"))
}

const SK: &str = "an OpenAI/Anthropic key (sk-…)";
const GITHUB_PAT: &str = "a GitHub token (github_pat_…)";
const AWS: &str = "an AWS access key id (AKIA…)";
const PEM: &str = "a PEM private key block";

/// Does this text hold something that looks like a secret? The kind
/// found (`an OpenAI/Anthropic key (sk-…)`, `a GitHub token (ghp_…)`,
/// `a GitHub token (github_pat_…)`, `an AWS access key id (AKIA…)`,
/// `a PEM private key block`), never the secret itself.
///
/// A prefix counts only where a word starts (not after a letter or digit,
/// so `task-management-…` is no key but `key=sk-…` is). Linear in the
/// text: every candidate looks at a bounded number of bytes after it.
pub fn find_secret(text: &str) -> Option<&'static str> {
    let bytes = text.as_bytes();
    for i in memchr::memchr3_iter(b's', b'g', b'A', bytes) {
        let after_alnum = text
            .get(..i)
            .and_then(|s| s.chars().next_back())
            .is_some_and(char::is_alphanumeric);
        if after_alnum {
            continue;
        }
        if let Some(kind) = token_at(bytes.get(i..).unwrap_or_default()) {
            return Some(kind);
        }
    }
    text.split('\n').any(is_pem_begin).then_some(PEM)
}

/// The kind of token `rest` starts with, if any.
fn token_at(rest: &[u8]) -> Option<&'static str> {
    let key_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    if let Some(t) = rest.strip_prefix(b"sk-") {
        // `sk-ant-…` and `sk-proj-…` are `sk-` followed by the same class.
        return (run(t, 20, key_char) >= 20).then_some(SK);
    }
    if let Some(t) = rest.strip_prefix(b"github_pat_") {
        let pat_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        return (run(t, 22, pat_char) >= 22).then_some(GITHUB_PAT);
    }
    if let Some(t) = rest.strip_prefix(b"gh") {
        let (kind, tail) = match t {
            [b'p', b'_', tail @ ..] => ("a GitHub token (ghp_…)", tail),
            [b'o', b'_', tail @ ..] => ("a GitHub token (gho_…)", tail),
            [b'u', b'_', tail @ ..] => ("a GitHub token (ghu_…)", tail),
            [b's', b'_', tail @ ..] => ("a GitHub token (ghs_…)", tail),
            [b'r', b'_', tail @ ..] => ("a GitHub token (ghr_…)", tail),
            _ => return None,
        };
        return (run(tail, 36, |c| c.is_ascii_alphanumeric()) >= 36).then_some(kind);
    }
    if let Some(t) = rest.strip_prefix(b"AKIA") {
        let id_char = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
        return (run(t, 16, id_char) >= 16).then_some(AWS);
    }
    None
}

/// How many of the first `max` bytes of `t` are of the class (at most `max`).
fn run(t: &[u8], max: usize, class: impl Fn(u8) -> bool) -> usize {
    t.iter().take(max).take_while(|c| class(**c)).count()
}

/// A `-----BEGIN [RSA |EC |DSA |OPENSSH |ENCRYPTED ]PRIVATE KEY-----` line
/// (indented or quoted with `>` too, as a key pasted into Markdown is).
fn is_pem_begin(line: &str) -> bool {
    let line = line
        .trim_start_matches(|c: char| c == '>' || c.is_whitespace())
        .trim_end();
    let Some(rest) = line.strip_prefix("-----BEGIN ") else {
        return false;
    };
    let rest = ["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED "]
        .iter()
        .find_map(|k| rest.strip_prefix(k))
        .unwrap_or(rest);
    rest == "PRIVATE KEY-----"
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_yaml::Mapping;

    const INBOUND: &str = "---\n# the user's comment\ntags: [agent/message/inbound]\nagent: echo   # who\ntitle: \"Quoted: yes\"\nstatus: pending\n---\nHello #there\n";

    /// `OwnChange::Keys` of these pairs (also for the cycle's tests).
    pub(in crate::vault::gitsync) fn keys(pairs: &[(&str, Option<&str>)]) -> OwnChange {
        OwnChange::Keys(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        )
    }

    fn edit(text: &str, changes: &[(&str, FmValue)]) -> String {
        edit_front_matter(text, changes).unwrap().0
    }

    fn meta(text: &str) -> Mapping {
        parse_yaml(split(text).yaml).unwrap()
    }

    // ---- own_change ----

    #[test]
    fn a_created_note_is_whole() {
        assert_eq!(own_change(None, INBOUND), OwnChange::Whole(INBOUND.into()));
        // Even one with no body (that is keys only, next to an empty note).
        let keys_only = "---\nagent: echo\n---\n";
        assert_eq!(
            own_change(None, keys_only),
            OwnChange::Whole(keys_only.into())
        );
    }

    #[test]
    fn keys_changed_in_afters_order_then_removed_ones() {
        let before = "---\nb: 1\nsession: abc\nstatus: pending\nkeep: x\n---\nbody\n";
        let after = edit(
            before,
            &[
                ("status", "handled".into()),
                ("session", FmValue::Remove),
                ("attempts", 1i64.into()),
                ("reply", "[[Inbox/a.reply]]".into()),
                ("ok", true.into()),
                ("cost", FmValue::Float(0.25)),
            ],
        );
        assert_eq!(
            own_change(Some(before), &after),
            keys(&[
                ("status", Some("handled")),
                ("attempts", Some("1")),
                ("reply", Some("\"[[Inbox/a.reply]]\"")),
                ("ok", Some("true")),
                ("cost", Some("0.25")),
                ("session", None),
            ])
        );
    }

    #[test]
    fn values_are_compared_as_yaml_not_as_text() {
        // Same values spelt differently: no change.
        let before = "---\na: 'x'\nn: 0x10\n---\nbody\n";
        let after = "---\na: x\nn: 16\n---\nbody\n";
        assert_eq!(own_change(Some(before), after), keys(&[]));
        // "1" (text) → 1 (a number) is a change.
        let after = "---\na: x\nn: \"16\"\n---\nbody\n";
        assert_eq!(
            own_change(Some(before), after),
            keys(&[("n", Some("\"16\""))])
        );
    }

    #[test]
    fn rendered_values_parse_back_to_the_same_value() {
        let before = "---\nk: old\n---\n";
        for v in [
            Value::String("a: b".into()),
            Value::String("true".into()),
            Value::String("123".into()),
            Value::String("".into()),
            Value::String("multi\nline \"q\"".into()),
            Value::String("#x".into()),
            Value::Bool(false),
            Value::Number((-7i64).into()),
            Value::Number(1.5f64.into()),
            Value::Number(3.0f64.into()),
        ] {
            let mut m = Mapping::new();
            m.insert("k".into(), v.clone());
            let after = format!("---\n{}---\n", serde_yaml::to_string(&m).unwrap());
            let OwnChange::Keys(ks) = own_change(Some(before), &after) else {
                panic!("{after}")
            };
            let rendered = ks[0].1.clone().unwrap();
            assert_eq!(parse_scalar(&rendered), Some(v), "{rendered}");
        }
    }

    #[test]
    fn a_reply_is_always_whole() {
        let before = "---\ntags: [agent/message/outbound]\nstatus: ok\n---\nthe reply\n";
        let after = edit(before, &[("status", "error".into())]);
        assert_eq!(own_change(Some(before), &after), OwnChange::Whole(after));
        let before = "---\ndirection: outbound\nstatus: ok\n---\nthe reply\n";
        let after = edit(before, &[("status", "error".into())]);
        assert_eq!(own_change(Some(before), &after), OwnChange::Whole(after));
    }

    #[test]
    fn a_changed_body_is_whole() {
        let after = INBOUND.replace("Hello", "Hullo");
        assert_eq!(own_change(Some(INBOUND), &after), OwnChange::Whole(after));
    }

    #[test]
    fn front_matter_that_does_not_parse_is_whole() {
        let broken = "---\nagent: [unclosed\nstatus: pending\n---\nHello #there\n";
        let fixed = "---\nagent: echo\nstatus: pending\n---\nHello #there\n";
        assert_eq!(
            own_change(Some(broken), fixed),
            OwnChange::Whole(fixed.into())
        );
        let broken_after = "---\nagent: [unclosed\nstatus: handled\n---\nHello #there\n";
        assert_eq!(
            own_change(Some(INBOUND), broken_after),
            OwnChange::Whole(broken_after.into())
        );
    }

    #[test]
    fn a_key_set_to_something_not_scalar_is_whole() {
        for v in [
            "[a, b]",
            "{x: 1}",
            "",
            "!tag x",
            "18446744073709551615",
            ".nan",
        ] {
            let after = INBOUND.replace("status: pending", &format!("status: {v}"));
            assert_eq!(
                own_change(Some(INBOUND), &after),
                OwnChange::Whole(after.clone()),
                "{v}"
            );
        }
    }

    // ---- replay of keys ----

    #[test]
    fn keys_onto_a_deleted_note_leave_it_deleted() {
        let ch = keys(&[("status", Some("handled")), ("attempts", Some("1"))]);
        assert_eq!(replay(&ch, Some(INBOUND), None), Replayed::Unchanged);
        // Also when the base had none of the keys (nothing the user could
        // have changed: the deletion alone keeps it deleted).
        assert_eq!(replay(&ch, Some("hi\n"), None), Replayed::Unchanged);
    }

    #[test]
    fn keys_onto_a_note_with_conflict_markers_or_broken_yaml_are_skipped() {
        let ch = keys(&[("status", Some("handled"))]);
        let marked = format!("{INBOUND}<<<<<<< HEAD\nmine\n=======\ntheirs\n>>>>>>> x\n");
        let Replayed::Skipped { reason } = replay(&ch, Some(INBOUND), Some(&marked)) else {
            panic!()
        };
        assert!(reason.contains("conflict markers"), "{reason}");
        let broken = "---\nagent: [unclosed\nstatus: pending\n---\nHello\n";
        let Replayed::Skipped { reason } = replay(&ch, Some(INBOUND), Some(broken)) else {
            panic!()
        };
        assert!(reason.contains("front-matter does not parse"), "{reason}");
    }

    #[test]
    fn keys_are_set_and_everything_else_stays_byte_for_byte() {
        let ours = edit(
            INBOUND,
            &[
                ("status", "handled".into()),
                ("reply", "[[Inbox/a.reply]]".into()),
            ],
        );
        let ch = own_change(Some(INBOUND), &ours);
        // The user edited the body and added a key upstream meanwhile.
        let target = INBOUND
            .replace("Hello #there", "Hello there, edited on the phone")
            .replace("title:", "mood: good\ntitle:");
        let Replayed::Write(out) = replay(&ch, Some(INBOUND), Some(&target)) else {
            panic!()
        };
        assert_eq!(
            out,
            "---\n# the user's comment\ntags: [agent/message/inbound]\nagent: echo   # who\nmood: good\ntitle: \"Quoted: yes\"\nstatus: handled\nreply: \"[[Inbox/a.reply]]\"\n---\nHello there, edited on the phone\n"
        );
    }

    #[test]
    fn keys_are_removed_unless_the_user_changed_them() {
        let base = "---\nsession: abc\nx: 1\n---\nbody\n";
        let ch = own_change(Some(base), "---\nx: 1\n---\nbody\n");
        assert_eq!(ch, keys(&[("session", None)]));
        assert_eq!(
            replay(&ch, Some(base), Some(base)),
            Replayed::Write("---\nx: 1\n---\nbody\n".into())
        );
        let target = "---\nsession: mine\nx: 1\n---\nbody\n";
        assert_eq!(replay(&ch, Some(base), Some(target)), Replayed::Unchanged);
    }

    #[test]
    fn a_key_already_at_our_value_is_not_rewritten() {
        let ch = keys(&[("status", Some("handled")), ("attempts", Some("1"))]);
        // Spelt differently but the same values: nothing to write (not
        // even a re-spelling), whether the base had them or not.
        let target = INBOUND.replace("status: pending", "status: 'handled'\nattempts: 0x1");
        assert_eq!(
            replay(&ch, Some(&target), Some(&target)),
            Replayed::Unchanged
        );
        assert_eq!(
            replay(&ch, Some(INBOUND), Some(&target)),
            Replayed::Unchanged
        );
    }

    #[test]
    fn a_key_the_user_changed_upstream_is_theirs() {
        // vaultrunner took the note (working) and answered it (handled);
        // meanwhile the user set it back to pending to have it run again.
        let base = INBOUND.replace("status: pending", "status: working");
        let ours = edit(
            &base,
            &[("status", "handled".into()), ("attempts", 1i64.into())],
        );
        let ch = own_change(Some(&base), &ours);
        let target = INBOUND.replace("Hello", "Hello again");
        let Replayed::Write(out) = replay(&ch, Some(&base), Some(&target)) else {
            panic!()
        };
        let m = meta(&out);
        assert_eq!(m.get("status"), Some(&Value::String("pending".into())));
        assert_eq!(m.get("attempts"), Some(&Value::Number(1.into())));
        assert!(out.ends_with("Hello again #there\n"), "{out}");
    }

    #[test]
    fn keys_with_nothing_left_to_set_are_unchanged() {
        let base = INBOUND.replace("status: pending", "status: working");
        let ch = keys(&[("status", Some("handled"))]);
        assert_eq!(replay(&ch, Some(&base), Some(INBOUND)), Replayed::Unchanged);
    }

    #[test]
    fn a_journal_value_that_is_not_a_scalar_is_skipped() {
        let ch = keys(&[("status", Some("[a, b]"))]);
        assert!(matches!(
            replay(&ch, Some(INBOUND), Some(INBOUND)),
            Replayed::Skipped { .. }
        ));
    }

    // ---- replay of whole notes ----

    #[test]
    fn whole_notes() {
        let old = "---\ntags: [agent/message/outbound]\n---\nold reply\n";
        let ours = "---\ntags: [agent/message/outbound]\n---\nnew reply\n";
        let ch = own_change(Some(old), ours);
        assert_eq!(ch, OwnChange::Whole(ours.into()));
        // Deleted upstream: the reply is written anyway.
        assert_eq!(replay(&ch, Some(old), None), Replayed::Write(ours.into()));
        // Already there.
        assert_eq!(replay(&ch, Some(old), Some(ours)), Replayed::Unchanged);
        // The user did not touch it.
        assert_eq!(
            replay(&ch, Some(old), Some(old)),
            Replayed::Write(ours.into())
        );
        // The user edited it upstream.
        let theirs = "---\ntags: [agent/message/outbound]\n---\nold reply, annotated\n";
        assert_eq!(
            replay(&ch, Some(old), Some(theirs)),
            Replayed::Conflict {
                ours: ours.into(),
                theirs: theirs.into()
            }
        );
        // vaultrunner created it, the user wrote a note at that path.
        let created = own_change(None, ours);
        assert_eq!(
            replay(&created, None, Some(theirs)),
            Replayed::Conflict {
                ours: ours.into(),
                theirs: theirs.into()
            }
        );
    }

    #[test]
    fn conflict_copy_path_has_no_colon() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T15:06:07Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            conflict_copy_path("Inbox/a.reply", at),
            "Inbox/a.reply (conflict 2026-12-01 150607)"
        );
    }

    // ---- find_secret ----

    #[test]
    fn secrets_of_each_kind_are_found_and_named() {
        let gh36 = "a".repeat(30) + "B1c2D3";
        for (text, kind) in [
            ("key=sk-abcdefghij0123456789", SK),
            ("sk-ant-api03-abcdefghijKLMNOP_-12", SK),
            ("export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrst", SK),
            (&format!("token: ghp_{gh36}\n"), "a GitHub token (ghp_…)"),
            (&format!("gho_{gh36}"), "a GitHub token (gho_…)"),
            (&format!("(ghu_{gh36})"), "a GitHub token (ghu_…)"),
            (&format!("ghs_{gh36}"), "a GitHub token (ghs_…)"),
            (&format!("ghr_{gh36}"), "a GitHub token (ghr_…)"),
            ("github_pat_11ABCDEFG0123456789_ab", GITHUB_PAT),
            ("aws: AKIAIOSFODNN7EXAMPLE", AWS),
            ("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", PEM),
            ("x\n-----BEGIN EC PRIVATE KEY-----\r\n", PEM),
            ("    -----BEGIN OPENSSH PRIVATE KEY-----", PEM),
            ("> -----BEGIN PRIVATE KEY-----", PEM),
            ("-----BEGIN ENCRYPTED PRIVATE KEY-----", PEM),
        ] {
            assert_eq!(find_secret(text), Some(kind), "{text}");
        }
    }

    #[test]
    fn lookalikes_are_not_secrets() {
        let gh35 = "a".repeat(35);
        for text in [
            "",
            "sk-abcdefghij012345678", // 19 after the prefix
            "task-management-and-planning-for-the-team", // `sk-` inside a word
            "desk-sk0123456789abcdefghijkl",
            &format!("ghp_{gh35}"),
            &format!("ghx_{gh35}b"),
            &format!("xghp_{gh35}b"),
            "github_pat_short",
            "github_pat_11ABCDEFG0123456789_a", // 21
            "AKIAiosfodnn7example",
            "AKIA0123456789ABCDE",
            "BAKIAIOSFODNN7EXAMPLE",
            "starts with `-----BEGIN RSA PRIVATE KEY-----` in prose",
            "-----BEGIN PUBLIC KEY-----",
            "the header is -----BEGIN RSA PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "ésk-abcdefghij0123456789",
        ] {
            assert_eq!(find_secret(text), None, "{text}");
        }
    }

    #[test]
    fn find_secret_is_linear_on_adversarial_text() {
        // Every position a candidate that almost matches: a quadratic scan
        // would take minutes on this.
        let mut text = String::new();
        for _ in 0..60_000 {
            text.push_str("sk-aaaa-ghp_aaaa AKIA1 github_pat_x -----BEGIN ");
        }
        text.push_str(&"-".repeat(1 << 20));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(find_secret(&text)));
        let found = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(found, Ok(None), "not done within 10 s");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Keys vaultrunner changes, and keys only the user does.
        const OURS: &[&str] = &[
            "status",
            "attempts",
            "handled_at",
            "reply",
            "error",
            "thread",
        ];
        const USERS: &[&str] = &["agent", "title", "x-y", "created at", "note"];

        fn value() -> impl Strategy<Value = FmValue> {
            prop_oneof![
                prop::sample::select(vec![
                    "handled",
                    "a: b",
                    "true",
                    "123",
                    "",
                    "[[Inbox/a.reply]]",
                    "multi\nline",
                    "#x",
                    "- x",
                    "ünï",
                    "\"q\"",
                    "12:30",
                    "null",
                ])
                .prop_map(FmValue::from),
                any::<i64>().prop_map(FmValue::Int),
                any::<bool>().prop_map(FmValue::Bool),
                (-1000i32..1000).prop_map(|n| FmValue::Float(f64::from(n) / 8.0)),
            ]
        }

        fn fields(
            keys: &'static [&'static str],
        ) -> impl Strategy<Value = Vec<(&'static str, FmValue)>> {
            prop::collection::vec((prop::sample::select(keys), value()), 0..6).prop_map(|mut v| {
                let mut seen = Vec::new();
                v.retain(|(k, _)| {
                    let first = !seen.contains(k);
                    seen.push(*k);
                    first
                });
                v
            })
        }

        fn body() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "",
                "Hello\n",
                "---\nstatus: pending\n---\n",
                "a #tag\nkey: value\n",
            ])
            .prop_map(str::to_string)
        }

        fn changes() -> impl Strategy<Value = Vec<(&'static str, FmValue)>> {
            prop::collection::vec(
                (
                    prop::sample::select(OURS),
                    prop_oneof![1 => Just(FmValue::Remove), 4 => value()],
                ),
                0..6,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn replaying_own_keys(
                base_ours in fields(OURS),
                base_users in fields(USERS),
                body in body(),
                ours in changes(),
                user_edits in fields(USERS),
                user_body in body(),
            ) {
                let mut all = base_users.clone();
                all.extend(base_ours);
                let b = crate::note::render_new(&["agent/message/inbound"], &all, &body);
                let a = edit(&b, &ours);
                let ch = own_change(Some(&b), &a);
                let OwnChange::Keys(ks) = &ch else {
                    return Err(TestCaseError::fail(format!("not keys: {ch:?}")));
                };

                // Onto the note as it was: exactly what vaultrunner wrote.
                let first = replay(&ch, Some(&b), Some(&b));
                if a == b {
                    prop_assert_eq!(&first, &Replayed::Unchanged);
                } else {
                    prop_assert_eq!(&first, &Replayed::Write(a.clone()));
                }
                prop_assert_eq!(replay(&ch, Some(&b), Some(&a)), Replayed::Unchanged);

                // Onto the user's edit of the body and of other keys.
                let edited = edit(&b, &user_edits);
                let target = format!("{}{user_body}", &edited[..split(&edited).body_start]);
                let out = match replay(&ch, Some(&b), Some(&target)) {
                    Replayed::Unchanged => target.clone(),
                    Replayed::Write(t) => t,
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                prop_assert_eq!(split(&out).body, user_body.as_str());
                let (got, theirs, wanted) = (meta(&out), meta(&target), meta(&a));
                for k in USERS {
                    prop_assert_eq!(got.get(*k), theirs.get(*k), "user's key {}", k);
                }
                for (k, _) in ks {
                    prop_assert_eq!(got.get(k.as_str()), wanted.get(k.as_str()), "our key {}", k);
                }
                // Twice is once.
                prop_assert_eq!(replay(&ch, Some(&b), Some(&out)), Replayed::Unchanged);
            }

            #[test]
            fn find_secret_never_panics(s in "\\PC*", cut in any::<prop::sample::Index>()) {
                let _ = find_secret(&s);
                let mut at = cut.index(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                let _ = find_secret(&s[at..]);
                let _ = find_secret(&format!("é{}", &s[..at]));
            }
        }
    }
}
