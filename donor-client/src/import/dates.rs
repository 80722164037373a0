//! Parsing of the date and date-time forms the sources use into civil (wall-clock) values, **as written**:
//! a trailing offset (`Z`, `-04:00`, ` +0200`) is checked for syntax and then dropped, never applied.
//!
//! Accepted: `YYYY`, `YYYY-MM` (partial, FHIR only), `YYYY-MM-DD`, and `YYYY-MM-DD` followed by `T` or a
//! space, `hh:mm[:ss[.fraction]]` and an optional offset (`Z`, `±hh:mm`, `±hhmm`, `±hh`, optionally after a
//! space as in Apple's `2019-06-12 10:15:00 +0200`). A leap second `:60` is read as `:59`.

use jiff::civil::{Date, DateTime};

/// A parsed source date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceDate {
    /// A date with a time of day.
    DateTime(DateTime),
    /// A calendar date without time.
    Date(Date),
    /// A year or year-month only, which the output model cannot hold.
    Partial,
}

impl SourceDate {
    /// As a date-time (a bare date becomes midnight); `None` for partial dates.
    pub(crate) fn date_time(self) -> Option<DateTime> {
        match self {
            SourceDate::DateTime(dt) => Some(dt),
            SourceDate::Date(d) => Some(d.to_datetime(jiff::civil::Time::midnight())),
            SourceDate::Partial => None,
        }
    }

    /// As a calendar date; `None` for partial dates.
    pub(crate) fn date(self) -> Option<Date> {
        match self {
            SourceDate::DateTime(dt) => Some(dt.date()),
            SourceDate::Date(d) => Some(d),
            SourceDate::Partial => None,
        }
    }
}

/// Parses `text`; `None` if it is not a date in any accepted form.
pub(crate) fn parse(text: &str) -> Option<SourceDate> {
    let b = text.trim().as_bytes();
    let year = digits(b, 0, 4)?;
    if b.len() == 4 {
        return (year >= 1).then_some(SourceDate::Partial);
    }
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    if b.len() == 7 {
        return (year >= 1 && (1..=12).contains(&month)).then_some(SourceDate::Partial);
    }
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2)?;
    let date = Date::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
    )
    .ok()?;
    if b.len() == 10 {
        return Some(SourceDate::Date(date));
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    let mut pos = 16;
    let mut second = 0;
    let mut nanos = 0u32;
    if b.get(pos) == Some(&b':') {
        second = digits(b, pos + 1, 2)?.min(59);
        pos += 3;
        if matches!(b.get(pos), Some(b'.' | b',')) {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                if pos - start < 9 {
                    nanos = nanos * 10 + u32::from(b[pos] - b'0');
                }
                pos += 1;
            }
            if pos == start {
                return None;
            }
            for _ in (pos - start)..9 {
                nanos *= 10;
            }
        }
    }
    if !valid_offset(&b[pos..]) {
        return None;
    }
    let time = jiff::civil::Time::new(
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second).ok()?,
        i32::try_from(nanos).ok()?,
    )
    .ok()?;
    Some(SourceDate::DateTime(date.to_datetime(time)))
}

/// `count` ASCII digits at `at`, as a number.
fn digits(b: &[u8], at: usize, count: usize) -> Option<u32> {
    let slice = b.get(at..at + count)?;
    slice.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn expect(b: &[u8], at: usize, byte: u8) -> Option<()> {
    (b.get(at) == Some(&byte)).then_some(())
}

/// Empty, `Z`, `±hh`, `±hhmm` or `±hh:mm`, optionally after one space.
fn valid_offset(rest: &[u8]) -> bool {
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', tail @ ..] => {
            let ok_hours = |h: &[u8]| digits(h, 0, 2).is_some_and(|h| h <= 23);
            let ok_minutes = |m: &[u8]| digits(m, 0, 2).is_some_and(|m| m <= 59);
            match tail {
                [h1, h2] => ok_hours(&[*h1, *h2]),
                [h1, h2, m1, m2] => ok_hours(&[*h1, *h2]) && ok_minutes(&[*m1, *m2]),
                [h1, h2, b':', m1, m2] => ok_hours(&[*h1, *h2]) && ok_minutes(&[*m1, *m2]),
                _ => false,
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn forms_from_the_sources() {
        let dt = |s| parse(s).and_then(SourceDate::date_time);
        assert_eq!(
            dt("2019-06-03T19:01:34-04:00"),
            Some(date(2019, 6, 3).at(19, 1, 34, 0))
        );
        assert_eq!(
            dt("1991-08-23T11:30:34.967+00:00"),
            Some(date(1991, 8, 23).at(11, 30, 34, 967_000_000))
        );
        assert_eq!(
            dt("2023-10-10T04:17:47Z"),
            Some(date(2023, 10, 10).at(4, 17, 47, 0))
        );
        assert_eq!(
            dt("2024-01-01 01:01:36 +0200"),
            Some(date(2024, 1, 1).at(1, 1, 36, 0))
        );
        assert_eq!(
            dt("2016-12-31T23:59:60Z"),
            Some(date(2016, 12, 31).at(23, 59, 59, 0))
        );
        assert_eq!(
            parse("1972-06-12"),
            Some(SourceDate::Date(date(1972, 6, 12)))
        );
        assert_eq!(parse("1972-06"), Some(SourceDate::Partial));
        assert_eq!(parse("1972"), Some(SourceDate::Partial));
    }

    #[test]
    fn rejects_non_dates() {
        for bad in [
            "",
            "abc",
            "2019-02-30",
            "2019-13",
            "2019-06-03T25:00",
            "2019-06-03X",
            "2019-06-03T10:00+5",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
