//! Docker's log timestamps (`2024-05-01T10:00:00.123456789Z`), parsed once per log
//! entry, so by hand for the form dockerd writes.

use crate::record::Timestamp;

/// Parses Docker's RFC 3339 timestamp (`2024-05-01T10:00:00.123456789Z`).
pub fn parse_timestamp(text: &[u8]) -> Option<Timestamp> {
    parse_fixed_utc(text).or_else(|| parse_rfc3339(text))
}

/// The form dockerd writes on every frame (Go's `RFC3339NanoFixed` in UTC): exactly
/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`. Parsed by hand because it is done once per line;
/// anything else (offsets, fewer digits, a leap second) is left to chrono.
fn parse_fixed_utc(t: &[u8]) -> Option<Timestamp> {
    if t.len() != 30
        || t[4] != b'-'
        || t[7] != b'-'
        || t[10] != b'T'
        || t[13] != b':'
        || t[16] != b':'
        || t[19] != b'.'
        || t[29] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        t[r].iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = num(20..29)?;
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(Timestamp {
        secs: days * 86_400 + hour * 3600 + minute * 60 + second,
        nanos: u32::try_from(nanos).ok()?,
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_rfc3339(text: &[u8]) -> Option<Timestamp> {
    let text = std::str::from_utf8(text).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(Timestamp {
        secs: t.timestamp(),
        nanos: t.timestamp_subsec_nanos(),
    })
}

/// Splits `<timestamp> <payload>`; returns the timestamp, the prefix including its space,
/// and the payload.
pub fn split_frame(frame: &[u8]) -> Option<(Timestamp, &[u8], &[u8])> {
    let space = frame.iter().take(64).position(|&b| b == b' ')?;
    let ts = parse_timestamp(&frame[..space])?;
    Some((ts, &frame[..=space], &frame[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2024-05-01T10:00:00.000000001Z";

    #[test]
    fn parses_docker_timestamps() {
        assert_eq!(
            parse_timestamp(T1.as_bytes()),
            Some(Timestamp {
                secs: 1_714_557_600,
                nanos: 1
            })
        );
        assert_eq!(
            parse_timestamp(b"2024-05-01T12:00:00.5+02:00"),
            Some(Timestamp {
                secs: 1_714_557_600,
                nanos: 500_000_000
            })
        );
        assert_eq!(parse_timestamp(b"Error grabbing logs:"), None);
        assert_eq!(split_frame(b"no timestamp here"), None);
        assert_eq!(split_frame(b""), None);
    }

    #[test]
    fn the_hand_parser_agrees_with_chrono() {
        let mut t = chrono::DateTime::parse_from_rfc3339("1999-12-31T23:59:59.999999999Z")
            .expect("start")
            .to_utc();
        // About three days apart, across month ends and leap days, up to 2100.
        for i in 0..12_000u32 {
            let text = t.format("%Y-%m-%dT%H:%M:%S.%fZ").to_string();
            assert_eq!(text.len(), 30, "{text}");
            assert_eq!(
                parse_fixed_utc(text.as_bytes()),
                parse_rfc3339(text.as_bytes()),
                "{text}"
            );
            t += chrono::Duration::seconds(259_201) + chrono::Duration::nanoseconds(i64::from(i));
        }
        for bad in [
            "2024-02-30T10:00:00.000000000Z",
            "2023-02-29T10:00:00.000000000Z",
            "2024-13-01T10:00:00.000000000Z",
            "2024-05-01T24:00:00.000000000Z",
            "2024-05-01T10:00:00.00000000xZ",
        ] {
            assert_eq!(parse_fixed_utc(bad.as_bytes()), None, "{bad}");
            assert_eq!(parse_timestamp(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            parse_fixed_utc(b"2024-02-29T00:00:00.000000007Z"),
            Some(Timestamp {
                secs: 1_709_164_800,
                nanos: 7
            })
        );
    }
}
