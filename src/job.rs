//! Cron job notes (`agent/job`): parsing, validation and fire times. No I/O.
//!
//! Schedules are standard 5-field crontab (minute hour day-of-month month
//! day-of-week; Sunday = 0 or 7; names; ranges, steps, lists; when both day
//! fields are restricted either may match; `@hourly` … `@yearly`), evaluated
//! by `croner` in the job's IANA time zone. Daylight saving: a local time
//! that does not exist fires once at the first valid time after the jump; a
//! local time that happens twice fires once (at its first instance).

use std::str::FromStr;

use chrono::{DateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde_yaml::Value;

use crate::agent::check_name;
use crate::note::Note;

/// What to do about runs missed while vaultrunner was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Fire once for any number of missed runs (counted from `last_run_at`).
    Once,
    /// Do not fire for missed runs.
    Skip,
}

/// A valid job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job note's path: the job's id.
    pub path: String,
    pub agent: String,
    pub cron_text: String,
    pub cron: Cron,
    pub tz: Tz,
    pub enabled: bool,
    pub subject: Option<String>,
    pub catch_up: CatchUp,
    /// The message.
    pub body: String,
    /// The scheduled time of the last fire.
    pub last_run_at: Option<DateTime<Utc>>,
}

/// A job note that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}.md: field `{field}`: {reason}")]
pub struct JobError {
    pub path: String,
    pub field: String,
    pub reason: String,
}

/// The host's IANA time zone (UTC if it cannot be told).
pub fn host_tz() -> Tz {
    if let Ok(tz) = std::env::var("TZ")
        && let Ok(t) = Tz::from_str(tz.trim_start_matches(':'))
    {
        return t;
    }
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|n| Tz::from_str(&n).ok())
        .unwrap_or(Tz::UTC)
}

/// Parses a standard 5-field crontab expression (or an `@` alias).
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty schedule".into());
    }
    if !t.starts_with('@') {
        let n = t.split_whitespace().count();
        if n != 5 {
            return Err(format!(
                "{t:?} has {n} fields; a crontab schedule has 5: minute hour day-of-month month day-of-week"
            ));
        }
    } else if !matches!(
        t.to_ascii_lowercase().as_str(),
        "@hourly" | "@daily" | "@midnight" | "@weekly" | "@monthly" | "@yearly" | "@annually"
    ) {
        return Err(format!(
            "{t:?} is not one of @hourly, @daily, @weekly, @monthly, @yearly"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(t)
        .map_err(|e| format!("{t:?} is not a valid crontab schedule: {e}"))?;
    if !ever_fires(&cron) {
        return Err(format!(
            "{t:?} never fires: no calendar date matches its day-of-month, month and day-of-week fields (like 30 February or 31 April)"
        ));
    }
    Ok(cron)
}

/// Does a parsed schedule have any fire time at all? `0 9 30 2 *` (30
/// February) parses, but would never fire.
///
/// Whether a date matches the day fields depends only on its month, its
/// day, its weekday and the month's length — that is, on the year's
/// calendar, of which there are 14 (leap or not × the weekday of 1
/// January). 2001–2028 is one 28-year cycle with no century year in it, so
/// it holds all 14, and each of them recurs forever; a schedule that
/// matches no date there matches none ever. The check asks croner's own
/// matcher (so `L`, `W`, `#` and the day-of-month/day-of-week OR rule are
/// judged as croner fires them) about one year of each calendar, at most
/// 14 × 372 dates: cheap, and it cannot hang. Minutes and hours are checked too.
fn ever_fires(cron: &Cron) -> bool {
    let p = &cron.pattern;
    let any_minute = (0..60).any(|m| p.minute_match(m).unwrap_or(false));
    let any_hour = (0..24).any(|h| p.hour_match(h).unwrap_or(false));
    if !any_minute || !any_hour {
        return false;
    }
    // One year of each calendar (leap or not × weekday of 1 January).
    let mut seen: Vec<(bool, chrono::Weekday)> = Vec::with_capacity(14);
    for year in 2001..=2028 {
        let Some(jan1) = chrono::NaiveDate::from_ymd_opt(year, 1, 1) else {
            continue;
        };
        let kind = (jan1.leap_year(), chrono::Datelike::weekday(&jan1));
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        for month in 1..=12u32 {
            if !p.month_match(month).unwrap_or(false) {
                continue;
            }
            // An impossible date (30 February) is an error: no match.
            for day in 1..=31u32 {
                if p.day_match(year, month, day).unwrap_or(false) {
                    return true;
                }
            }
        }
    }
    false
}

fn bool_key(note: &Note, key: &str, default: bool) -> Result<bool, String> {
    match note.meta.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Ok(true),
            "false" | "no" | "off" => Ok(false),
            _ => Err(format!("expected true or false, got {s:?}")),
        },
        Some(other) => Err(format!(
            "expected true or false, got {}",
            crate::note::value_kind(other)
        )),
    }
}

/// Reads a job from a parsed note at `path`.
pub fn parse_job(path: &str, note: &Note, default_tz: Tz) -> Result<Job, JobError> {
    let err = |field: &str, reason: String| JobError {
        path: path.to_string(),
        field: field.to_string(),
        reason,
    };
    // A key as text; a list or a mapping is an error naming the key.
    let text = |keys: &[&str]| -> Result<Option<String>, JobError> {
        note.text_any(keys).map_err(|e| err(&e.field, e.reason))
    };
    let agent = text(&["agent"])?
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| err("agent", "missing: which agent gets the message?".into()))?;
    check_name(&agent).map_err(|r| err("agent", r))?;
    let cron_text = text(&["cron"])?.ok_or_else(|| {
        err(
            "cron",
            "missing: a schedule like \"0 9 * * mon-fri\"".into(),
        )
    })?;
    let cron = parse_cron(&cron_text).map_err(|r| err("cron", r))?;
    let tz = match text(&["tz"])? {
        None => default_tz,
        Some(t) if t.trim().is_empty() => default_tz,
        Some(t) => Tz::from_str(t.trim()).map_err(|_| {
            err(
                "tz",
                format!(
                    "{t:?} is not an IANA time zone name like Europe/Berlin or America/New_York"
                ),
            )
        })?,
    };
    let enabled = bool_key(note, "enabled", true).map_err(|r| err("enabled", r))?;
    let catch_up = match text(&["catch_up", "catchUp"])?
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("once") => CatchUp::Once,
        Some("skip") => CatchUp::Skip,
        Some(other) => return Err(err("catch_up", format!("{other:?} is not once or skip"))),
    };
    let last_run_at = match text(&["last_run_at", "lastRunAt"])? {
        None => None,
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s.trim())
                .map_err(|_| err("last_run_at", format!("{s:?} is not an RFC 3339 time")))?
                .with_timezone(&Utc),
        ),
    };
    let body = note.body.trim().to_string();
    Ok(Job {
        path: path.to_string(),
        agent,
        cron_text,
        cron,
        tz,
        enabled,
        subject: text(&["subject"])?.filter(|s| !s.trim().is_empty()),
        catch_up,
        body,
        last_run_at,
    })
}

/// Is this instant the second instance of a local time that happens twice
/// (the hour repeated when clocks go back)?
fn is_repeat_instance(t: &DateTime<Tz>) -> bool {
    match t.timezone().from_local_datetime(&t.naive_local()) {
        chrono::LocalResult::Ambiguous(first, _) => first.offset().fix() != t.offset().fix(),
        _ => false,
    }
}

impl Job {
    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Fire times are whole minutes: search from a whole second so the
        // result carries no fraction of `after`.
        let whole = after.with_nanosecond(0).unwrap_or(after);
        let mut from = whole.with_timezone(&self.tz);
        for _ in 0..4 {
            let t = self.cron.find_next_occurrence(&from, false).ok()?;
            if is_repeat_instance(&t) {
                from = t;
                continue;
            }
            let u = t.with_timezone(&Utc);
            // A gap-snapped time can equal the previous fire; never twice.
            if u <= after {
                from = t;
                continue;
            }
            return Some(u);
        }
        None
    }

    /// The next `n` fire times after `after`, in the job's zone.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next.with_timezone(&self.tz));
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The latest fire time in `(after, now]`, if any (for catch-up).
    pub fn latest_between(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut t = after;
        let mut latest = None;
        // Bounded: a job can be down for years; step by fire times but cap
        // the work (minutely jobs over a long outage).
        for _ in 0..1_000_000 {
            match self.next_after(t) {
                Some(next) if next <= now => {
                    latest = Some(next);
                    t = next;
                }
                _ => break,
            }
        }
        latest
    }

    /// The inbound note a fire at `scheduled` writes: derived from the job
    /// and the time only, so one scheduled time fires at most once.
    pub fn fire_path(&self, scheduled: DateTime<Utc>) -> String {
        let id = crate::note::slug(&self.path);
        format!(
            "Inbox/{}/job--{}--{}",
            self.agent,
            if id.is_empty() { "job".to_string() } else { id },
            scheduled.format("%Y%m%dT%H%MZ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(cron: &str, tz: &str) -> Job {
        let text = format!(
            "---\ntags: [agent/job]\nagent: echo\ncron: \"{cron}\"\ntz: {tz}\n---\nhello\n"
        );
        parse_job("Jobs/j", &Note::parse(&text).unwrap(), Tz::UTC).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next_local(j: &Job, from: &str, n: usize) -> Vec<String> {
        j.upcoming(utc(from), n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn sunday_is_0_and_7_and_names_work() {
        // 2026-11-21 is a Saturday.
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun", "0 9 * * SUN"] {
            let j = job(expr, "UTC");
            assert_eq!(
                next_local(&j, "2026-11-21T12:00:00Z", 1),
                vec!["2026-11-22T09:00:00+00:00"],
                "{expr}"
            );
        }
        let j = job("0 9 * * mon-fri", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-20T10:00:00Z", 2),
            vec!["2026-11-23T09:00:00+00:00", "2026-11-24T09:00:00+00:00"]
        );
    }

    /// Found by the cron fuzz target: `,` parses as a field that matches
    /// nothing, `+` as a day-of-week that matches nothing (ANDed with the
    /// day of the month), and the first `next_after` then took over 10 s.
    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        for expr in [
            ", 0 * * *",
            "0 , * * *",
            ",, 0 * * *",
            "0 0 29 2 +",
            "0 0 30 2 *",
        ] {
            let e = parse_cron(expr).map(|_| ()).unwrap_err();
            assert!(e.contains("never fires"), "{expr}: {e}");
        }
        assert!(parse_cron("0,30 9 * * *").is_ok());
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Vixie rule: the 1st of the month OR any Monday.
        let j = job("0 0 1 * mon", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-24T00:00:00Z", 3),
            vec![
                "2026-11-30T00:00:00+00:00", // Monday
                "2026-12-01T00:00:00+00:00", // the 1st (a Tuesday)
                "2026-12-07T00:00:00+00:00", // Monday
            ]
        );
    }

    #[test]
    fn ranges_steps_lists_and_aliases() {
        let j = job("*/20 9-10 * * *", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-21T09:30:00Z", 4),
            vec![
                "2026-11-21T09:40:00+00:00",
                "2026-11-21T10:00:00+00:00",
                "2026-11-21T10:20:00+00:00",
                "2026-11-21T10:40:00+00:00"
            ]
        );
        let j = job("5,35 * * * *", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-21T09:30:00Z", 2),
            vec!["2026-11-21T09:35:00+00:00", "2026-11-21T10:05:00+00:00"]
        );
        assert_eq!(
            next_local(&job("@hourly", "UTC"), "2026-11-21T09:30:00Z", 1),
            vec!["2026-11-21T10:00:00+00:00"]
        );
        assert_eq!(
            next_local(&job("@daily", "UTC"), "2026-11-21T09:30:00Z", 1),
            vec!["2026-11-22T00:00:00+00:00"]
        );
        assert_eq!(
            next_local(&job("@weekly", "UTC"), "2026-11-21T09:30:00Z", 1),
            vec!["2026-11-22T00:00:00+00:00"]
        );
        assert_eq!(
            next_local(&job("@monthly", "UTC"), "2026-11-21T09:30:00Z", 1),
            vec!["2026-12-01T00:00:00+00:00"]
        );
        assert_eq!(
            next_local(&job("@yearly", "UTC"), "2026-11-21T09:30:00Z", 1),
            vec!["2027-01-01T00:00:00+00:00"]
        );
    }

    #[test]
    fn time_zone_is_respected() {
        let j = job("0 9 * * *", "America/New_York");
        // 09:00 in New York in November (EST, UTC-5) is 14:00 UTC.
        let next = j.next_after(utc("2026-11-21T12:00:00Z")).unwrap();
        assert_eq!(next, utc("2026-11-21T14:00:00Z"));
    }

    #[test]
    fn dst_gap_fires_once_after_the_jump() {
        // Europe/Berlin springs forward 2027-03-28 02:00 → 03:00.
        let j = job("30 2 * * *", "Europe/Berlin");
        let fires = next_local(&j, "2027-03-27T12:00:00Z", 3);
        assert_eq!(
            fires,
            vec![
                "2027-03-28T03:00:00+02:00",
                "2027-03-29T02:30:00+02:00",
                "2027-03-30T02:30:00+02:00"
            ]
        );
        // Every 30 minutes across the gap: 01:30, then 03:00 once.
        let j = job("*/30 * * * *", "Europe/Berlin");
        let fires = next_local(&j, "2027-03-28T00:15:00Z", 3);
        assert_eq!(
            fires,
            vec![
                "2027-03-28T01:30:00+01:00",
                "2027-03-28T03:00:00+02:00",
                "2027-03-28T03:30:00+02:00"
            ]
        );
    }

    #[test]
    fn dst_repeated_hour_fires_once() {
        // Europe/Berlin falls back 2026-10-25 03:00 → 02:00.
        let j = job("30 2 * * *", "Europe/Berlin");
        let fires = next_local(&j, "2026-10-24T12:00:00Z", 2);
        assert_eq!(
            fires,
            vec!["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        let j = job("0 * * * *", "Europe/Berlin");
        let fires = next_local(&j, "2026-10-24T22:30:00Z", 3);
        // 01:00 CEST, 02:00 CEST, then 03:00 CET: the repeated 02:00 CET is skipped.
        assert_eq!(
            fires,
            vec![
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T03:00:00+01:00"
            ]
        );
    }

    #[test]
    fn fire_times_have_no_fraction_of_the_start() {
        let j = job("0 9 * * *", "UTC");
        let t = j.next_after(utc("2026-11-21T08:59:59.731Z")).unwrap();
        assert_eq!(t, utc("2026-11-21T09:00:00Z"));
        let t = j.next_after(utc("2026-11-21T09:00:00.2Z")).unwrap();
        assert_eq!(t, utc("2026-11-22T09:00:00Z"));
    }

    #[test]
    fn catch_up_window() {
        let j = job("0 * * * *", "UTC");
        assert_eq!(
            j.latest_between(utc("2026-11-21T08:00:00Z"), utc("2026-11-21T12:30:00Z")),
            Some(utc("2026-11-21T12:00:00Z"))
        );
        assert_eq!(
            j.latest_between(utc("2026-11-21T12:00:00Z"), utc("2026-11-21T12:30:00Z")),
            None
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let bad = |extra: &str| {
            let text = format!("---\ntags: [agent/job]\nagent: echo\n{extra}---\n");
            parse_job("Jobs/j", &Note::parse(&text).unwrap(), Tz::UTC)
                .unwrap_err()
                .field
        };
        assert_eq!(bad("cron: \"61 * * * *\"\n"), "cron");
        assert_eq!(bad("cron: \"0 9 * * * *\"\n"), "cron");
        assert_eq!(bad("cron: \"* * *\"\n"), "cron");
        assert_eq!(bad("cron: \"@reboot\"\n"), "cron");
        assert_eq!(bad("cron: \"0 9 * * *\"\ntz: Mars/Olympus\n"), "tz");
        assert_eq!(bad("cron: \"0 9 * * *\"\ncatch_up: always\n"), "catch_up");
        assert_eq!(bad("cron: \"0 9 * * *\"\nenabled: sometimes\n"), "enabled");
        assert_eq!(bad(""), "cron");
        let text = "---\ntags: [agent/job]\ncron: \"0 9 * * *\"\n---\n";
        assert_eq!(
            parse_job("Jobs/j", &Note::parse(text).unwrap(), Tz::UTC)
                .unwrap_err()
                .field,
            "agent"
        );
    }

    #[test]
    fn impossible_schedules_are_refused() {
        for never in [
            "0 9 30 2 *",
            "0 0 31 4 *",
            "0 0 31 2,4,6,9,11 *",
            "0 0 30,31 feb *",
            "* * 31 jun *",
        ] {
            let e = parse_cron(never).unwrap_err();
            assert!(e.contains("never fires"), "{never}: {e}");
        }
        let bad = |cron: &str| {
            let text = format!("---\ntags: [agent/job]\nagent: echo\ncron: \"{cron}\"\n---\n");
            parse_job("Jobs/j", &Note::parse(&text).unwrap(), Tz::UTC).unwrap_err()
        };
        let e = bad("0 9 30 2 *");
        assert_eq!(e.field, "cron");
        assert!(
            e.to_string().starts_with("Jobs/j.md: field `cron`: "),
            "{e}"
        );
    }

    #[test]
    fn rare_schedules_are_kept_and_fire() {
        // 29 February: leap years only.
        let j = job("0 9 29 2 *", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-21T00:00:00Z", 2),
            vec!["2028-02-29T09:00:00+00:00", "2032-02-29T09:00:00+00:00"]
        );
        // The OR rule: 30 February never comes, but Mondays in February do.
        let j = job("0 9 30 2 mon", "UTC");
        assert_eq!(
            next_local(&j, "2027-01-01T00:00:00Z", 1),
            vec!["2027-02-01T09:00:00+00:00"]
        );
        // The 31st of the months that have one; the last day of February.
        let j = job("0 0 31 * *", "UTC");
        assert_eq!(
            next_local(&j, "2027-01-31T12:00:00Z", 1),
            vec!["2027-03-31T00:00:00+00:00"]
        );
        let j = job("0 0 L 2 *", "UTC");
        assert_eq!(
            next_local(&j, "2027-01-01T00:00:00Z", 2),
            vec!["2027-02-28T00:00:00+00:00", "2028-02-29T00:00:00+00:00"]
        );
        // A fifth Monday in February: only in a leap year whose February
        // starts on a Monday (2044 next).
        let j = job("0 9 * 2 mon#5", "UTC");
        assert_eq!(
            next_local(&j, "2026-11-21T00:00:00Z", 1),
            vec!["2044-02-29T09:00:00+00:00"]
        );
    }

    #[test]
    fn the_fire_time_check_is_cheap() {
        // The worst case is a schedule that never fires: every date of the
        // 28-year cycle is asked. Debug builds included, far under a
        // millisecond a schedule in practice; 50 ms bounds a slow machine.
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(parse_cron("* * 31 2,4,6,9,11 *").is_err());
        }
        let each = started.elapsed() / 10;
        assert!(each < std::time::Duration::from_millis(50), "{each:?}");
    }

    #[test]
    fn wrong_typed_keys_are_errors() {
        let field = |extra: &str| {
            let text =
                format!("---\ntags: [agent/job]\nagent: echo\ncron: \"0 9 * * *\"\n{extra}---\n");
            parse_job("Jobs/j", &Note::parse(&text).unwrap(), Tz::UTC)
                .unwrap_err()
                .field
        };
        assert_eq!(field("tz: [UTC]\n"), "tz");
        assert_eq!(field("enabled: [true]\n"), "enabled");
        assert_eq!(field("subject: {a: 1}\n"), "subject");
        assert_eq!(field("catch_up: [once]\n"), "catch_up");
        assert_eq!(field("catchUp: [once]\n"), "catchUp");
        assert_eq!(
            field("last_run_at: [2026-01-01T00:00:00Z]\n"),
            "last_run_at"
        );
        let only = |yaml: &str| {
            let text = format!("---\ntags: [agent/job]\n{yaml}---\n");
            parse_job("Jobs/j", &Note::parse(&text).unwrap(), Tz::UTC).unwrap_err()
        };
        let e = only("agent: [a, b]\ncron: \"0 9 * * *\"\n");
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("agent", "expected a single value, got a list")
        );
        assert_eq!(only("agent: echo\ncron: [\"0 9 * * *\"]\n").field, "cron");
        let e = only("agent: CON\ncron: \"0 9 * * *\"\n");
        assert!(e.reason.contains("Windows reserves it"), "{e}");
    }

    #[test]
    fn fire_paths_are_deterministic() {
        let j = job("0 9 * * *", "UTC");
        let t = utc("2026-11-21T09:00:00Z");
        assert_eq!(j.fire_path(t), "Inbox/echo/job--jobs-j--20261121T0900Z");
        crate::vault::check_rel_path(&j.fire_path(t)).unwrap();
    }
}
