//! The wall clock as every layer writes it: milliseconds since the epoch,
//! and RFC 3339 UTC text to the millisecond (what the store keeps and the
//! API shows). A module of its own so that the store, the saga and the
//! event envelopes share one spelling of time without importing each other.

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `ms` since the Unix epoch as RFC 3339 text, to the millisecond (as
/// [`now_rfc3339`] writes it).
pub fn rfc3339_of_ms(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    rfc3339(at)
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    let at = at.replace_nanosecond(at.millisecond() as u32 * 1_000_000).unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
