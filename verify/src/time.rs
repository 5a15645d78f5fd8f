//! Times as operators and vendors write them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 UTC, a fraction of a second
/// ignored) or Unix seconds.
pub fn parse(s: &str) -> Option<SystemTime> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, t.strip_suffix('Z')?.split('.').next()?),
        None => (s, "00:00:00"),
    };
    let mut d = date.split('-').map(|v| v.parse::<u16>().ok());
    let mut t = time.split(':').map(|v| v.parse::<u8>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    let dt =
        x509_cert::der::DateTime::new(y, u8::try_from(mo).ok()?, u8::try_from(da).ok()?, h, mi, se)
            .ok()?;
    Some(dt.to_system_time())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_and_nothing_else() {
        let day = parse("2025-07-01").unwrap();
        assert_eq!(day, parse("2025-07-01T00:00:00Z").unwrap());
        assert_eq!(day, parse("2025-07-01T00:00:00.123Z").unwrap());
        assert_eq!(day, parse("1751328000").unwrap());
        for bad in [
            "2025-07-01T00:00:00",
            "2025-13-01",
            "2025-07",
            "x",
            "2025-07-01-02",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
