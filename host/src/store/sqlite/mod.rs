//! The SQLite back-end of the store: the same operations as the PostgreSQL
//! one (`store::postgres`, its sibling), on an embedded database file
//! written by one process. Private to `store`: the rest of the host reaches
//! it only through `Store`, with the records of the neutral modules
//! (`store::orders`, `store::catalog`, …).
//!
//! Where the PostgreSQL back-end relies on the database to arbitrate
//! between replicas, this one relies on being the database's only writer:
//!
//! - [`writer`]: one thread owns the write connection and commits every
//!   waiting command in one transaction (group commit, a SAVEPOINT per
//!   command); callers await their command's durable answer, and a command
//!   runs alone, so its checks cannot go stale before its writes;
//! - [`readers`]: read connections used inline by the reading thread (WAL
//!   readers never wait for the writer);
//! - [`checkpointer`]: WAL checkpoints on a thread of their own, off the
//!   writer's path;
//! - [`schema`]: versioned migrations, tracked in `PRAGMA user_version`;
//! - one file per group of records (`orders`, `catalog`, `outbox`, …): the
//!   statements, as functions of a `&Connection` the store hands them (the
//!   writer's, inside its transaction, or a reader's).

pub(super) mod catalog;
mod checkpointer;
pub(super) mod experiments;
pub(super) mod ledger;
pub(super) mod orders;
pub(super) mod outbox;
mod readers;
pub(super) mod retention;
pub(super) mod rollouts;
pub(super) mod schema;
pub(super) mod shadows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

use super::stats::WriterStats;
use super::{StoreError, StoreOptions};
use checkpointer::Checkpointer;
use readers::Readers;
use writer::Writer;

/// The domain's text enums as SQLite columns: written as their text, read
/// back through `FromStr`, a word the service does not know being an error
/// (a corrupt row), never a default.
macro_rules! text_columns {
    ($($name:ty),+) => {$(
        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}

text_columns!(crate::domain::status::Slot, crate::domain::status::CanaryState, crate::domain::status::RolloutEventKind);

pub(super) struct Sqlite {
    /// `None` for a store opened read-only (tools beside a running service).
    writer: Option<Writer>,
    /// Checkpoints the WAL while the store is open (`None` read-only).
    _checkpointer: Option<Checkpointer>,
    readers: Readers,
    /// What the writer did (`Store::writer_totals`).
    pub(super) stats: Arc<WriterStats>,
    pub(super) path: PathBuf,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`, migrates it and
    /// starts its writer thread.
    pub(super) fn open(path: &Path, options: &StoreOptions) -> Result<Sqlite, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(options.busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", options.durability.pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each store command runs in a savepoint, whose undo pages SQLite
        // keeps in a statement journal: in memory, not in a temp file.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Every statement is `prepare_cached`; rusqlite keeps 16 by default,
        // so the hot path would parse and plan its SQL again on every call.
        conn.set_prepared_statement_cache_capacity(readers::STATEMENT_CACHE_CAPACITY);
        schema::migrate(&mut conn)?;
        // Checkpoints run on a thread of their own (see `checkpointer`).
        conn.pragma_update(None, "wal_autocheckpoint", checkpointer::WRITER_BACKSTOP_PAGES)?;
        let checkpointer = Checkpointer::start(path, options.durability)?;
        let stats = Arc::new(WriterStats::default());
        let writer = Writer::start(conn, stats.clone())
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Sqlite {
            stats,
            writer: Some(writer),
            _checkpointer: Some(checkpointer),
            readers: Readers::new(path, options.busy_timeout),
            path: path.to_owned(),
        })
    }

    /// Opens the database at `path` for reading only: no writer thread, no
    /// migration, every connection `SQLITE_OPEN_READ_ONLY`. A missing file,
    /// or a schema version other than the one this binary knows, is refused.
    pub(super) fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Sqlite, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NotFound(format!(
                "no database at {} (is this the service's data dir?)",
                path.display()
            )));
        }
        let readers = Readers::new(path, options.busy_timeout);
        readers.read(schema::check_current)?;
        Ok(Sqlite { stats: Arc::default(), writer: None, _checkpointer: None, readers, path: path.to_owned() })
    }

    /// Runs `f` on a read connection, on this thread.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.readers.read(f)
    }

    /// Runs `op` as one command of the writer; answers once it is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        match &self.writer {
            Some(writer) => writer.write(op).await,
            None => Err(StoreError::Unavailable(format!("{} was opened read-only", self.path.display()))),
        }
    }
}

/// Whether the database answers a trivial query (readiness).
pub(super) fn ping(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?)
}

/// A new database with this binary's schema, in memory: what the tests of
/// the queries run on.
#[cfg(test)]
fn migrated_database() -> Connection {
    let mut conn = Connection::open_in_memory().expect("an in-memory database");
    schema::migrate(&mut conn).expect("this binary's migrations");
    conn
}

/// What SQLite plans for `sql` (`EXPLAIN QUERY PLAN`, its steps joined by
/// `; `): the tests that keep the polling and pruning queries on their indexes.
#[cfg(test)]
fn query_plan(conn: &Connection, sql: &str) -> String {
    // Unbound parameters read as NULL; the plan does not depend on them.
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("a statement SQLite can plan");
    let mut rows = stmt.raw_query();
    let mut plan = Vec::new();
    while let Some(row) = rows.next().expect("a plan step") {
        plan.push(row.get::<_, String>(3).expect("the step's text"));
    }
    plan.join("; ")
}
