//! `not_before` / `not_after`: RFC 3339 UTC date-times (`2026-06-01T00:00:00Z`, an
//! offset such as `+02:00` accepted) or Unix seconds.

use serde::Deserialize;
use serde_json::Value;

use crate::error::ConfigError;
use crate::json::{self, FromJson};

/// A point in time as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum RawTime {
    /// Unix seconds.
    Seconds(i64),
    /// RFC 3339, e.g. `2026-06-01T00:00:00Z`.
    Rfc3339(String),
}

/// As serde's `untagged` reads it: a whole number that fits an `i64` is seconds, a
/// string is RFC 3339 (checked later, by [`RawTime::unix_seconds`]); anything else is
/// neither.
impl FromJson for RawTime {
    fn from_json(value: Value, at: &str) -> Result<Self, ConfigError> {
        match value {
            Value::String(text) => Ok(RawTime::Rfc3339(text)),
            other => other
                .as_i64()
                .map(RawTime::Seconds)
                .ok_or_else(|| json::wrong_type(at, "Unix seconds or an RFC 3339 date-time", &other)),
        }
    }
}

impl RawTime {
    /// Unix seconds, or why not.
    pub fn unix_seconds(&self) -> Result<i64, &'static str> {
        match self {
            RawTime::Seconds(s) => Ok(*s),
            RawTime::Rfc3339(text) => {
                parse_rfc3339(text).ok_or("is not an RFC 3339 date-time such as 2026-06-01T00:00:00Z")
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; the fraction is dropped.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
    {
        return None;
    }
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = b.get(19..)?;
    if rest.first() == Some(&b'.') {
        let digits = rest.iter().skip(1).take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = rest.get(1 + digits..)?;
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let minutes = (h1 * 10 + h2) * 60 + m1 * 10 + m2;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset)
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2021-04-20T02:07:53Z"), Some(1_618_884_473));
        assert_eq!(parse_rfc3339("2021-04-20T04:07:53.250+02:00"), Some(1_618_884_473));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-06-01 00:00:00Z",
            "2026-06-01T00:00:00",
            "2026-06-01T00:00:00.Z",
            "soon",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
