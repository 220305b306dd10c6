//! The embedded store: SQLite in WAL mode in the data directory.
//!
//! - [`schema`]: versioned migrations;
//! - [`catalog`]: customers, products, warehouses, stock and carts;
//! - [`orders`]: orders, reservations, payments and the outbox, with every
//!   order's state change in one transaction;
//! - [`error`]: what callers match on.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, every
//! statement here takes microseconds, and a single connection keeps each
//! order's transaction simple to reason about. Calls run on tokio's blocking
//! pool so that a slow disk never stalls the async workers.

pub mod catalog;
pub mod error;
pub mod orders;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

pub use error::StoreError;

/// Prepared statements kept per connection: more than the store has.
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a statement waits for a lock held by another connection
    /// before the store reports itself unavailable.
    pub busy_timeout: Duration,
    /// `PRAGMA synchronous`: `NORMAL` survives a crash of the process (WAL);
    /// `FULL` also survives a power cut, at an fsync per transaction.
    pub synchronous_full: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { busy_timeout: Duration::from_secs(2), synchronous_full: false }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    /// Held by an outbox delivery pass, so that two passes in this process
    /// (the dispatcher and `Engine::drain`) never read the same ready
    /// events and deliver them twice.
    delivery: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if options.synchronous_full { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement of the store is `prepare_cached` (some 45 of
        // them); rusqlite keeps 16 by default, so the hot path would parse
        // and plan its SQL again on every call.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
            delivery: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Taken for one outbox delivery pass (see `events::deliver_due`).
    pub async fn delivery_pass(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.delivery.lock().await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (the
            // transaction rolls back on drop), so a poisoned lock is usable.
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Runs `f` with the connection on the current thread (CLI, tests, start-up).
    pub fn run_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Whether the database answers a trivial query (readiness).
    pub async fn ping(&self) -> bool {
        self.run(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)).await.is_ok()
    }
}

/// The current time as RFC 3339 UTC with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
