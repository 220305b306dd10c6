//! The retention worker: prunes the tables that would otherwise grow with
//! every order or reload (`store::retention` names them and what is never
//! pruned) in small batches, so that it never holds the SQLite writer or
//! PostgreSQL's row locks for long. Every replica on a shared database
//! runs it: the store's batches skip rows another replica is deleting
//! (`FOR UPDATE SKIP LOCKED`), so they share the work without waiting on
//! each other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::metrics::Metrics;
use crate::store::retention::Retained;
use crate::store::{Store, StoreError};

/// How long each pruned table keeps its rows (`SMARTMART_RETENTION_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Idempotency keys, from the later of the key's first request and its
    /// order's final answer: a retry within this window gets the first
    /// answer; after it, the same key places a new order. Keys without a
    /// final answer are kept whatever their age.
    pub idempotency: Duration,
    /// Delivered events (outbox rows in state DELIVERED), from their delivery.
    pub delivered_events: Duration,
    /// Shadow runs, by age and by count (the newest `shadow_runs_max_rows`):
    /// the shadow figures of `GET /v1/admin/experiments` sum what is kept.
    pub shadow_runs: Duration,
    pub shadow_runs_max_rows: u64,
    /// The rollout history, by age and by count.
    pub rollout_events: Duration,
    pub rollout_events_max_rows: u64,
    /// Rows one statement deletes at most.
    pub batch: usize,
    /// The pause between two full batches of a pass: the writer (SQLite)
    /// and the tables' locks (PostgreSQL) go to orders meanwhile.
    pub pause: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            idempotency: Duration::from_secs(24 * 3600),
            delivered_events: Duration::from_secs(7 * 24 * 3600),
            shadow_runs: Duration::from_secs(30 * 24 * 3600),
            shadow_runs_max_rows: 500_000,
            rollout_events: Duration::from_secs(90 * 24 * 3600),
            rollout_events_max_rows: 10_000,
            batch: 500,
            pause: Duration::from_millis(20),
        }
    }
}

impl RetentionSettings {
    /// How often a pass runs: a tenth of the shortest window, between
    /// 100 ms and a minute. A table then holds at most its window and a
    /// tenth of it (rows go past their window at most one interval before
    /// the next pass), and the default windows cost one pass a minute.
    pub fn every(&self) -> Duration {
        let shortest = self.windows().map(|(_, window, _)| window).min().unwrap_or(Duration::from_secs(60));
        (shortest / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }

    /// Each table with its window and its row cap.
    fn windows(&self) -> impl Iterator<Item = (Retained, Duration, Option<u64>)> {
        Retained::ALL.into_iter().map(|table| match table {
            Retained::Idempotency => (table, self.idempotency, None),
            Retained::DeliveredEvents => (table, self.delivered_events, None),
            Retained::ShadowRuns => (table, self.shadow_runs, Some(self.shadow_runs_max_rows)),
            Retained::RolloutEvents => (table, self.rollout_events, Some(self.rollout_events_max_rows)),
        })
    }
}

/// What one pass deleted, by table.
#[derive(Debug, Default)]
struct Pruned {
    rows: BTreeMap<Retained, u64>,
}

impl Pruned {
    fn total(&self) -> u64 {
        self.rows.values().sum()
    }

    fn of(&self, table: Retained) -> u64 {
        self.rows.get(&table).copied().unwrap_or(0)
    }
}

/// Prunes every [`RetentionSettings::every`] until `shutdown`.
pub(super) async fn run_pruner(
    store: Store,
    metrics: Arc<Metrics>,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    // Every table's counter from the start, at 0: a dashboard sees the
    // series before the first row goes.
    for table in Retained::ALL {
        metrics.retention_pruned(table.as_str(), 0);
    }
    let every = settings.every();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let pass = Pass { store: &store, metrics: &metrics, settings: &settings, shutdown: &shutdown, now: now_ms() };
        let pruned = pass.run().await;
        if pruned.total() > 0 {
            // Debug: once a service is older than its windows, nearly every
            // pass prunes something. Failures are warnings (`Pass::run`).
            tracing::debug!(
                idempotency = pruned.of(Retained::Idempotency),
                outbox = pruned.of(Retained::DeliveredEvents),
                shadow_runs = pruned.of(Retained::ShadowRuns),
                rollout_events = pruned.of(Retained::RolloutEvents),
                "retention pass pruned rows"
            );
        }
    }
}

/// One pass over every table, with one cutoff time: rows that age past
/// their window while it runs wait for the next pass.
struct Pass<'a> {
    store: &'a Store,
    metrics: &'a Metrics,
    settings: &'a RetentionSettings,
    shutdown: &'a CancellationToken,
    now: i64,
}

impl Pass<'_> {
    /// Each table's rows past its window (or beyond its row cap). A table
    /// that fails is logged and left to the next pass; the others are still
    /// pruned.
    async fn run(&self) -> Pruned {
        let mut pruned = Pruned::default();
        for (table, window, cap) in self.settings.windows() {
            match self.prune(table, window, cap).await {
                Ok(rows) => {
                    pruned.rows.insert(table, rows);
                }
                Err(e) => tracing::warn!(%table, error = %e, "retention could not prune; the next pass tries again"),
            }
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        pruned
    }

    /// Batch after batch until one comes back short, pausing between them.
    async fn prune(&self, table: Retained, window: Duration, cap: Option<u64>) -> Result<u64, StoreError> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let mut before = self.now.saturating_sub(window_ms);
        if let Some(keep) = cap
            && let Some(beyond) = self.store.time_beyond_newest(table, keep).await?
        {
            // Everything up to the newest row beyond the cap goes (rows of
            // the same ms inside the cap with it: the cap is a maximum).
            before = before.max(beyond.saturating_add(1));
        }
        let batch = self.settings.batch.max(1);
        let mut total = 0;
        loop {
            let rows = self.store.prune(table, before, batch).await?;
            self.metrics.retention_pruned(table.as_str(), rows);
            total += rows;
            if rows < batch as u64 {
                return Ok(total);
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(total),
                () = tokio::time::sleep(self.settings.pause) => {}
            }
        }
    }
}
