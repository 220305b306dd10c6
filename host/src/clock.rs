//! The wall clock as every layer writes it: milliseconds since the epoch,
//! and RFC 3339 UTC text to the millisecond (what the store keeps and the
//! API shows). A module of its own so that the store, the saga and the
//! event envelopes share one spelling of time without importing each other.
//! [`Clock`] is the one the order saga reads an order's start from: the
//! system's, or a [`ManualClock`] in tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

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

/// The clock an order reads its start from, the instant that picks its
/// rules (a scheduled rule's window is asked at it): the system's, or one
/// set by hand ([`ManualClock`]) so that tests and drills cross a window's
/// boundary without waiting. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(at) => at.load(Ordering::Relaxed),
            None => now_ms(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            Some(_) => write!(f, "Clock(manual, {})", rfc3339_of_ms(self.now_ms())),
            None => f.write_str("Clock(system)"),
        }
    }
}

/// A clock that stands still until it is set: hand [`ManualClock::clock`]
/// to the engine, then move it with [`ManualClock::set_ms`].
#[derive(Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `at_ms`.
    pub fn at_ms(at_ms: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(at_ms)))
    }

    /// Moves the clock (and every [`Clock`] it handed out) to `at_ms`.
    pub fn set_ms(&self, at_ms: i64) {
        self.0.store(at_ms, Ordering::Relaxed);
    }

    /// The clock to give the engine.
    pub fn clock(&self) -> Clock {
        Clock { manual: Some(self.0.clone()) }
    }
}

/// Parses RFC 3339 text (`2026-11-27T00:00:00Z`, an offset required) to
/// milliseconds since the Unix epoch.
pub fn ms_of_rfc3339(text: &str) -> Result<i64, time::error::Parse> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)?;
    Ok((at.unix_timestamp_nanos() / 1_000_000) as i64)
}
