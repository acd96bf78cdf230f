//! Wall-clock time as the server writes it: Unix milliseconds, and RFC 3339 text as MISSION.md
//! writes times (`2024-01-10T15:30:00Z`).

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch at `at` (0 before the epoch).
pub fn unix_ms(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// `at` in RFC 3339 with whole seconds (`2024-01-10T15:30:00Z`).
pub fn rfc3339(at: OffsetDateTime) -> Option<String> {
    at.replace_nanosecond(0)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `at` in RFC 3339 to the nanosecond, as an event's `timestamp` (it orders events of the same
/// second).
pub fn rfc3339_exact(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Reads an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_whole_seconds_in_utc() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_704_900_600_123_456_789).unwrap();
        assert_eq!(rfc3339(at).as_deref(), Some("2024-01-10T15:30:00Z"));
        assert_eq!(unix_ms(at), 1_704_900_600_123);
        assert_eq!(rfc3339_exact(at), "2024-01-10T15:30:00.123456789Z");
    }
}
