//! Read connections, used inline by whoever reads.
//!
//! In WAL mode a reader never waits for the writer and sees the last
//! committed state; a read of a few rows from the page cache takes
//! microseconds, less than handing it to another thread would. So reads run
//! on the caller's thread, each on a connection of its own taken from a
//! small pool (one per thread reading at that moment).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::super::StoreError;

/// Prepared statements kept per connection: more than the store has.
pub(super) const STATEMENT_CACHE_CAPACITY: usize = 128;
/// Idle connections kept for reuse; more are opened when more threads read at once.
const MAX_IDLE: usize = 16;

pub(super) struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: &Path, busy_timeout: Duration) -> Readers {
        Readers { path: path.to_owned(), busy_timeout, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(conn)
    }

    /// Runs `f` on a read connection, on this thread.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }
}
