//! Retention: the tables that would otherwise grow with every order or
//! reload, and what "older than" means for each. These are the names both
//! back-ends prune by (`store::sqlite::retention`, `store::postgres::retention`);
//! when and how much to prune is the worker's (`app::retention`).
//!
//! What is never pruned, whatever the cutoff:
//!
//! - an idempotency key whose order has no final answer yet (`status_code`
//!   NULL: the order is running or interrupted; `202`: its payment is
//!   pending) — a retry must still find its order;
//! - an event not yet delivered (`READY`, `AWAITING_VERDICT`);
//! - orders, their invoices and fraud reviews (what `rules replay` and the
//!   reload's replay gate read), canary states, A/B figures, the sandbox
//!   ledger: none of them is a table pruned here.

use crate::clock::rfc3339_of_ms;

/// A table retention prunes, named as the metric's `table` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Retained {
    /// Idempotency keys with a final answer (`idempotency`), by the later of
    /// the key's claim and its order's last update (its settlement).
    Idempotency,
    /// Delivered events (`outbox` rows in state `DELIVERED`), by delivery time.
    DeliveredEvents,
    /// Shadow runs (`shadow_runs`), by the time they were recorded.
    ShadowRuns,
    /// The rollout history (`rollout_events`), by the event's time.
    RolloutEvents,
}

impl Retained {
    /// Every pruned table, in the order a pass prunes them.
    pub const ALL: [Retained; 4] =
        [Retained::Idempotency, Retained::DeliveredEvents, Retained::ShadowRuns, Retained::RolloutEvents];

    /// The table's name (the `table` label of `smartmart_retention_pruned_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Retained::Idempotency => "idempotency",
            Retained::DeliveredEvents => "outbox",
            Retained::ShadowRuns => "shadow_runs",
            Retained::RolloutEvents => "rollout_events",
        }
    }
}

impl std::fmt::Display for Retained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The RFC 3339 text that the idempotency key's times (`created_at`, and
/// its order's `updated_at`) are compared with, for a cutoff of `before_ms`.
///
/// Those columns are text as `clock::now_rfc3339` writes it: the fraction of
/// the second has its trailing zeros cut (`…:16Z`, `…:16.5Z`, `…:16.123Z`),
/// so two times within one second do not sort as text as they do as times.
/// Times in different seconds always do (every field before the fraction
/// has a fixed width). So the cutoff is a whole second, `S`, one second
/// before the second `before_ms` falls in: a time sorting below `…:SSZ`
/// lies in second `S` or earlier, that is before `(S + 1) s <= before_ms`.
/// A key is thus pruned up to two seconds after its cutoff, never before.
/// Both back-ends compare byte-wise (PostgreSQL with `COLLATE "C"`).
pub(in crate::store) fn text_cutoff(before_ms: i64) -> String {
    let second = before_ms.div_euclid(1000) - 1;
    rfc3339_of_ms(second * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::rfc3339_of_ms;

    #[test]
    fn the_text_cutoff_never_lets_a_later_time_through() {
        let before_ms = 1_765_000_000_250;
        let cutoff = text_cutoff(before_ms);
        assert!(cutoff.ends_with('Z') && !cutoff.contains('.'), "a whole second: {cutoff}");
        // Every ms from two seconds before to after the cutoff, as the clock writes it.
        for ms in before_ms - 2_500..before_ms + 1_500 {
            let text = rfc3339_of_ms(ms);
            if text.as_str() < cutoff.as_str() {
                assert!(ms < before_ms, "{text} ({ms}) sorts below {cutoff} but is not before {before_ms}");
            }
            if ms < before_ms - 2_000 {
                assert!(text.as_str() < cutoff.as_str(), "{text} is over two seconds early and kept");
            }
        }
    }
}
