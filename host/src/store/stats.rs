//! What the store does, counted as it happens: on SQLite, how many
//! commands each group commit of the writer carries, and where the
//! writer's time goes (running the commands against committing them, the
//! commit's `fdatasync` included) and the bytes its commits appended to
//! the WAL; on PostgreSQL, the round trips to the
//! server and the transactions. The figures every claim about the store's
//! cost rests on; `/metrics` exports them (`smartmart_store_*`). Owned by
//! one store: two stores in one process (tests) count apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The writer's running totals.
#[derive(Debug, Default)]
pub struct WriterStats {
    commits: AtomicU64,
    commands: AtomicU64,
    run_nanos: AtomicU64,
    commit_nanos: AtomicU64,
    wal_bytes: AtomicU64,
}

/// A reading of [`WriterStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterTotals {
    /// Transactions committed (one per batch).
    pub commits: u64,
    /// Commands those transactions carried.
    pub commands: u64,
    /// Time spent running the commands (their statements and savepoints).
    pub running: Duration,
    /// Time spent in `COMMIT` (the WAL write and, with `durability = full`,
    /// its `fdatasync`), during which the writer runs nothing else.
    pub committing: Duration,
    /// Bytes the writer appended to the WAL: one frame (a 24-byte header
    /// and the page) per page each commit changed. What an order's write
    /// costs the disk and the checkpoint that copies it back.
    pub wal_bytes: u64,
}

impl WriterStats {
    /// One committed batch of `commands`, with the time each part took and
    /// the WAL bytes it appended.
    pub(super) fn committed(&self, commands: usize, running: Duration, committing: Duration, wal_bytes: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.wal_bytes.fetch_add(wal_bytes, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
        self.run_nanos.fetch_add(nanos(running), Ordering::Relaxed);
        self.commit_nanos.fetch_add(nanos(committing), Ordering::Relaxed);
    }

    pub fn totals(&self) -> WriterTotals {
        WriterTotals {
            commits: self.commits.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            running: Duration::from_nanos(self.run_nanos.load(Ordering::Relaxed)),
            committing: Duration::from_nanos(self.commit_nanos.load(Ordering::Relaxed)),
            wal_bytes: self.wal_bytes.load(Ordering::Relaxed),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What the PostgreSQL back-end's connections said, counted from the wire
/// as it happens (see `store::postgres::wire`): the figures behind "one
/// round trip per phase of an order". Owned by one store, like
/// [`WriterStats`].
#[derive(Debug, Default)]
pub struct WireStats {
    round_trips: AtomicU64,
    transactions: AtomicU64,
}

/// A reading of [`WireStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireTotals {
    /// `Sync` and simple `Query` messages sent: each is answered by one
    /// `ReadyForQuery`, so each is one wait for the server.
    pub round_trips: u64,
    /// Transactions ended, implicit or explicit: `ReadyForQuery` messages
    /// saying the session is idle again (the one ending the start-up of a
    /// connection excluded).
    pub transactions: u64,
}

impl WireStats {
    /// Round trips made and transactions ended by some bytes of a session.
    pub(super) fn add(&self, round_trips: u64, transactions: u64) {
        // Most reads and writes carry neither: no atomic write for them.
        if round_trips > 0 {
            self.round_trips.fetch_add(round_trips, Ordering::Relaxed);
        }
        if transactions > 0 {
            self.transactions.fetch_add(transactions, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> WireTotals {
        WireTotals {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}
