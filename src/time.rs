//! Bounded durations and overflow-free deadlines: the lowest layer (it
//! imports no other module of the crate), used wherever a duration comes
//! from outside — a definition key, a model server's `retry-after`, a CLI
//! number — and wherever a deadline is computed.
//!
//! Every duration vaultrunner accepts is at most [`MAX_DURATION`] (one
//! year, SPEC §5a): far beyond any sensible turn, yet small enough that
//! `now + d` cannot overflow an `Instant`. Parsing never goes through
//! floating point (`Duration::from_secs_f64` panics on huge values), and
//! [`after`] / [`later`] add with `checked_add`, so no value can panic.

use std::time::Duration;

use tokio::time::Instant;

/// The longest duration vaultrunner accepts anywhere: 365 days.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What a duration looks like, for error messages.
pub const DURATION_HINT: &str = "a duration like 90s, 10m or 1h";

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// [`MAX_DURATION`] in nanoseconds.
const MAX_NANOS: u128 = 365 * 24 * 60 * 60 * NANOS_PER_SEC;
/// Digits of a fraction that count (the rest is below a nanosecond for
/// every unit up to a week).
const FRACTION_DIGITS: usize = 18;

/// Nanoseconds in one unit (`ms`, `s`, `m`, `h`, `d`, `w` and their longer
/// spellings, any case).
fn unit_nanos(unit: &str) -> Option<u128> {
    let secs: u128 = match unit.to_ascii_lowercase().as_str() {
        "ms" | "msec" | "msecs" => return Some(1_000_000),
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 60 * 60,
        "d" | "day" | "days" => 24 * 60 * 60,
        "w" | "week" | "weeks" => 7 * 24 * 60 * 60,
        _ => return None,
    };
    Some(secs * NANOS_PER_SEC)
}

/// Splits the leading ASCII digits off `s`.
fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    s.split_at_checked(n).unwrap_or((s, ""))
}

/// Parses a duration: `90` (seconds), `1.5` (seconds), `30s`, `10m`,
/// `1h30m`, `1h 30m`, `2d`, `1w`, `500ms`, `1.5h`. At most
/// [`MAX_DURATION`]; zero is a valid result (callers that need more than
/// zero say so). The error is a reason for a user: `"…" is over the
/// one-year limit` or `"…" is not a duration like 90s, 10m or 1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = || format!("{s:?} is not {DURATION_HINT}");
    let over = || format!("{s:?} is over the one-year limit (365d)");
    let mut total: u128 = 0;
    let mut rest = s;
    let mut parts = 0usize;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (int, after) = split_digits(rest);
        if int.is_empty() {
            return Err(bad());
        }
        let (frac, after) = match after.strip_prefix('.') {
            Some(r) => {
                let (f, a) = split_digits(r);
                if f.is_empty() {
                    return Err(bad());
                }
                (f, a)
            }
            None => ("", after),
        };
        let after = after.trim_start();
        let ulen = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at_checked(ulen).unwrap_or((after, ""));
        let per_unit = if unit.is_empty() {
            // A bare number is seconds, and only on its own: `1h30` is
            // ambiguous.
            if parts > 0 || !after.trim().is_empty() {
                return Err(bad());
            }
            NANOS_PER_SEC
        } else {
            unit_nanos(unit).ok_or_else(bad)?
        };
        // The whole part: more than 25 significant digits is over any
        // limit (and would not fit the arithmetic below).
        let int = int.trim_start_matches('0');
        if int.len() > 25 {
            return Err(over());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let whole = int.checked_mul(per_unit).ok_or_else(over)?;
        let frac = frac.get(..FRACTION_DIGITS).unwrap_or(frac);
        let part = if frac.is_empty() {
            whole
        } else {
            let digits: u128 = frac.parse().map_err(|_| bad())?;
            let scale = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
            // < 10^18 × 6.1·10^14: fits a u128.
            whole
                .checked_add(digits * per_unit / scale)
                .ok_or_else(over)?
        };
        total = total.checked_add(part).ok_or_else(over)?;
        if total > MAX_NANOS {
            return Err(over());
        }
        parts += 1;
        rest = after;
    }
    if parts == 0 {
        return Err(bad());
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| over())?;
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| over())?;
    Ok(Duration::new(secs, nanos))
}

/// Seconds as a float (a model server's `retry-after: 1.5`) to a duration:
/// `None` for NaN, negative or infinite values, and at most
/// [`MAX_DURATION`]. Never panics, unlike `Duration::from_secs_f64`.
pub fn secs_f64(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs.is_infinite() || secs < 0.0 {
        return None;
    }
    if secs == 0.0 {
        // Also -0.0.
        return Some(Duration::ZERO);
    }
    if secs >= MAX_DURATION.as_secs_f64() {
        return Some(MAX_DURATION);
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// `t + d` without overflow: `d` is capped at [`MAX_DURATION`], and if
/// even that does not fit the clock, the largest half-step that does is
/// used (`t` itself at worst). Never panics.
pub fn later(t: Instant, d: Duration) -> Instant {
    let mut d = d.min(MAX_DURATION);
    loop {
        if let Some(x) = t.checked_add(d) {
            return x;
        }
        if d.is_zero() {
            return t;
        }
        d = d.checked_div(2).unwrap_or_default();
    }
}

/// The instant `d` from now, as [`later`]: for deadlines, timers and
/// `sleep_until`. Never panics.
pub fn after(d: Duration) -> Instant {
    later(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn durations() {
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 90 "), Duration::from_secs(90));
        assert_eq!(ok("1.5"), Duration::from_millis(1500));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("5 m"), Duration::from_secs(300));
        assert_eq!(ok("2d"), Duration::from_secs(2 * 86400));
        assert_eq!(ok("1w"), Duration::from_secs(7 * 86400));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("0.001s"), Duration::from_millis(1));
        assert_eq!(ok("10M"), Duration::from_secs(600));
        assert_eq!(ok("2 hours"), Duration::from_secs(7200));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0007s"), Duration::from_secs(7));
        // A long fraction is cut below the nanosecond, not refused.
        assert_eq!(
            ok("0.1234567890123456789012s"),
            Duration::from_nanos(123_456_789)
        );
    }

    #[test]
    fn not_durations() {
        for bad in [
            "", " ", "soon", "10x", "m", "1h30", "-5s", "+5s", "1.s", ".5s", "1..5s", "5s5",
            "1e3s", "nan", "inf", "1,5s", "５s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                e.contains("is not a duration like 90s, 10m or 1h"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_one_year_limit() {
        assert_eq!(ok("365d"), MAX_DURATION);
        assert_eq!(ok("31536000"), MAX_DURATION);
        assert_eq!(ok("52w 1d"), MAX_DURATION);
        for over in [
            "365d 1ms",
            "366d",
            "31536001",
            "53w",
            "8761h",
            "99999999999999999999d",
            "18446744073709551615",
            "18446744073709551616s",
            "340282366920938463463374607431768211456ms",
            "9999999999999999999999999999999999999999999999999999h",
        ] {
            let e = parse_duration(over).unwrap_err();
            assert!(e.contains("over the one-year limit"), "{over}: {e}");
        }
        // Many parts, each under the limit, still add up to too much.
        let many = "300d ".repeat(100);
        assert!(parse_duration(&many).unwrap_err().contains("one-year"));
    }

    #[test]
    fn float_seconds() {
        assert_eq!(secs_f64(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(secs_f64(0.0), Some(Duration::ZERO));
        assert_eq!(secs_f64(-0.0), Some(Duration::ZERO));
        assert_eq!(secs_f64(f64::NAN), None);
        assert_eq!(secs_f64(-1.0), None);
        assert_eq!(secs_f64(f64::INFINITY), None);
        assert_eq!(secs_f64(f64::NEG_INFINITY), None);
        assert_eq!(secs_f64(1e300), Some(MAX_DURATION));
        assert_eq!(secs_f64(f64::MAX), Some(MAX_DURATION));
        assert_eq!(secs_f64(1e-12), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn deadlines_never_overflow() {
        let now = Instant::now();
        assert!(after(Duration::MAX) >= now);
        assert!(after(Duration::MAX) <= Instant::now() + MAX_DURATION);
        let t = after(Duration::from_secs(5));
        assert!(t >= now + Duration::from_secs(5));
        assert_eq!(later(now, Duration::ZERO), now);
        assert_eq!(later(now, Duration::MAX), now + MAX_DURATION);
        // At the end of the clock: as far as fits, never a panic. The last
        // whole second the clock can hold, by bisection:
        let (mut lo, mut hi) = (0u64, u64::MAX);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if now.checked_add(Duration::from_secs(mid)).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let end = now + Duration::from_secs(lo);
        assert!(end.checked_add(Duration::from_secs(3600)).is_none());
        assert!(later(end, Duration::from_secs(3600)) >= end);
        assert!(later(end, Duration::MAX) >= end);
    }
}
