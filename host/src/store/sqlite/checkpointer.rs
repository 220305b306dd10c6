//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its
//! threshold: the writer thread then copies a thousand pages into the
//! database file and syncs it while every command queued behind it waits.
//! Those stalls were the tail of an order's latency. Here a thread of its
//! own runs passive checkpoints every few milliseconds instead; a passive
//! checkpoint never blocks the writer (WAL mode lets one writer append
//! while a checkpoint copies what is already committed), and each one has
//! little to copy. The writer keeps SQLite's own checkpoint as a backstop,
//! at a threshold this thread never lets the WAL reach unless it stalls.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use super::super::{Durability, StoreError};

/// How often the WAL is checkpointed.
const INTERVAL: Duration = Duration::from_millis(50);
/// The writer's own automatic checkpoint, in pages (64 MiB of 4 KiB
/// pages): only reached if this thread falls behind.
pub(super) const WRITER_BACKSTOP_PAGES: i64 = 16_384;

/// Stops the checkpoint thread when dropped (with the store).
pub(super) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`.
    pub(super) fn start(path: &Path, durability: Durability) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        // A checkpoint syncs as its connection's setting says.
        conn.pragma_update(None, "synchronous", durability.pragma())?;
        conn.busy_timeout(Duration::from_millis(100))?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &stopped))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn run(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    // Until the store (the only sender) is dropped.
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // The writer's backstop checkpoints meanwhile; nothing is lost.
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_pages_reach_the_database_file_without_the_writers_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let writer = Connection::open(&path).unwrap();
        writer.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v BLOB NOT NULL);").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES).unwrap();
        writer.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let _checkpointer = Checkpointer::start(&path, Durability::Normal).unwrap();
        // ~2 MiB, far below the writer's backstop: only the thread can move it.
        for _ in 0..500 {
            writer.execute("INSERT INTO t (v) VALUES (zeroblob(4000))", []).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + 1_000_000 {
            assert!(std::time::Instant::now() < deadline, "the database file never grew: nothing was checkpointed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
