//! The one writer: a thread that owns the write connection and commits
//! every waiting command in one transaction (group commit).
//!
//! SQLite has one writer at a time anyway; what costs is the commit (an
//! `fdatasync` with `synchronous=FULL`) and the hand-offs to reach the
//! connection. Here callers send a command and await its answer; the thread
//! takes everything queued, runs each command in its own SAVEPOINT (a
//! failing command is rolled back alone, never undoing another), commits
//! once, and only then answers: an answer always means "durable".
//!
//! A failed commit (disk full, I/O error) fails every command of that batch
//! with [`StoreError::Unavailable`] and leaves none of it applied. When
//! SQLite aborts the whole transaction on its own (it does for `SQLITE_FULL`
//! and I/O errors), the commands already run in it are failed the same way
//! and the rest run in a fresh transaction.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use std::sync::Arc;
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::super::StoreError;
use super::super::stats::WriterStats;

/// Most commands committed together.
const MAX_BATCH: usize = 512;
/// Commands waiting for the writer before senders wait for room.
const QUEUE: usize = 8192;

/// Sends the outcome of a command to its caller once the batch's fate is
/// known: `None` when it committed, the failure otherwise.
type Complete = Box<dyn FnOnce(Option<&str>) + Send>;

/// A command: `run` executes its statements and says whether they succeeded
/// (to keep or roll back its savepoint); `complete` answers the caller.
struct Job {
    run: Box<dyn FnOnce(&Connection) -> bool + Send>,
    complete: Complete,
}

/// The bytes of a WAL frame besides its page: its header.
const WAL_FRAME_HEADER: u64 = 24;

/// Handle to the writer thread; cheap to clone. The thread stops when the
/// last handle is dropped, after committing what was queued.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `conn` (already configured and migrated).
    pub(super) fn start(conn: Connection, stats: Arc<WriterStats>) -> std::io::Result<Writer> {
        let (jobs, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new().name("store-writer".into()).spawn(move || run(conn, queue, &stats))?;
        Ok(Writer { jobs })
    }

    /// Runs `op` in the next batch; answers once that batch is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (job, answer) = job(op);
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer has stopped".into())
}

fn job<T: Send + 'static>(
    op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T, StoreError>>) {
    let (answer, receive) = oneshot::channel();
    // What `run` produced, for `complete` to send once the batch is decided.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<Result<T, StoreError>>));
    let filled = slot.clone();
    let run = Box::new(move |conn: &Connection| {
        let result = op(conn);
        let ok = result.is_ok();
        *filled.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        ok
    });
    let complete: Complete = Box::new(move |failure| {
        let result = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = match (failure, result) {
            (None, Some(result)) => result,
            (Some(why), _) => Err(StoreError::Unavailable(why.to_string())),
            (None, None) => Err(StoreError::Unavailable("the store command failed".into())),
        };
        // The caller may have gone away (a cancelled request): the command
        // is committed all the same, which is what it asked for.
        let _ = answer.send(outcome);
    });
    (Job { run, complete }, receive)
}

/// The thread's loop: one batch per wake-up, until every handle is gone.
fn run(conn: Connection, mut queue: mpsc::Receiver<Job>, stats: &WriterStats) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    // Pages written before the first batch (the migrations) are not the
    // batches': start the count from here.
    pages_written(&conn);
    let frame_bytes = conn
        .pragma_query_value(None, "page_size", |r| r.get::<_, u64>(0))
        .map(|page| page + WAL_FRAME_HEADER)
        .unwrap_or(0);
    while let Some(first) = queue.blocking_recv() {
        pending.push_back(first);
        while pending.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        while !pending.is_empty() {
            run_batch(&conn, &mut pending, stats, frame_bytes);
        }
    }
}

/// Runs queued jobs in one transaction and answers them. Jobs left in
/// `pending` (after SQLite aborted the transaction) go into the next one.
fn run_batch(conn: &Connection, pending: &mut VecDeque<Job>, stats: &WriterStats, frame_bytes: u64) {
    let started = Instant::now();
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        let why = format!("cannot begin a transaction: {e}");
        tracing::error!(error = %e, "store writer cannot begin a transaction; failing {} commands", pending.len());
        for job in pending.drain(..) {
            (job.complete)(Some(&why));
        }
        return;
    }
    let mut completions: Vec<Complete> = Vec::with_capacity(pending.len());
    while let Some(job) = pending.pop_front() {
        if let Err(e) = run_cached(conn, "SAVEPOINT command") {
            pending.push_front(job);
            return abort(conn, completions, &format!("cannot open a savepoint: {e}"));
        }
        let Job { run, complete } = job;
        let ok = catch_unwind(AssertUnwindSafe(|| run(conn))).unwrap_or_else(|_| {
            // A bug in a command: its statements are rolled back below and
            // its caller is told the command failed.
            tracing::error!("a store command panicked; its changes are rolled back");
            false
        });
        completions.push(complete);
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (SQLITE_FULL, I/O
            // error): every command of it so far is undone.
            return abort(conn, completions, "the store aborted the transaction (disk full or I/O error)");
        }
        let closed = if ok {
            run_cached(conn, "RELEASE command")
        } else {
            run_cached(conn, "ROLLBACK TO command").and_then(|()| run_cached(conn, "RELEASE command"))
        };
        if let Err(e) = closed {
            return abort(conn, completions, &format!("cannot close a savepoint: {e}"));
        }
    }
    let committing = Instant::now();
    match run_cached(conn, "COMMIT") {
        Ok(()) => {
            let wal_bytes = pages_written(conn) * frame_bytes;
            stats.committed(completions.len(), committing - started, committing.elapsed(), wal_bytes);
            completions.into_iter().for_each(|complete| complete(None));
        }
        Err(e) => abort(conn, completions, &format!("commit failed: {e}")),
    }
}

/// Runs a statement without parameters or rows from the statement cache:
/// the transaction and savepoint statements run several times per order,
/// and parsing them each time showed in the profile.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// The pages this connection has written since the last call: in WAL mode,
/// the frames its commits appended to the WAL (SQLite's
/// `SQLITE_DBSTATUS_CACHE_WRITE`, read and reset). A rolled-back batch's
/// pages count in the next reading: they were written all the same.
#[allow(unsafe_code)]
fn pages_written(conn: &Connection) -> u64 {
    let (mut current, mut highwater) = (0, 0);
    // SAFETY: the handle is this open connection's, used on the thread that
    // owns it (the writer's) while no statement of it runs; SQLite writes
    // only the two integers passed.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE,
            &mut current,
            &mut highwater,
            1,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK { u64::try_from(current).unwrap_or(0) } else { 0 }
}

/// Rolls back what is open and fails every command of the transaction.
fn abort(conn: &Connection, completions: Vec<Complete>, why: &str) {
    tracing::error!(commands = completions.len(), why, "store batch failed; none of it is applied");
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for complete in completions {
        complete(Some(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.sqlite")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER NOT NULL UNIQUE);").unwrap();
        (Writer::start(conn, Arc::default()).unwrap(), dir)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let conn = Connection::open(dir.path().join("w.sqlite")).unwrap();
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_command_never_undoes_another_of_its_batch() {
        let (writer, dir) = writer();
        let insert = |v: i64| {
            let writer = writer.clone();
            async move {
                writer
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                        // A command that writes, then fails: its write must go.
                        if v % 2 == 1 {
                            c.execute("INSERT INTO t (v) VALUES (?1)", [v + 1000])?;
                            return Err(StoreError::Conflict(format!("odd {v}")));
                        }
                        Ok(v)
                    })
                    .await
            }
        };
        let results = futures_join_all((0..200).map(insert).collect()).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 100);
        assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(StoreError::Conflict(_)))));
        assert_eq!(count(&dir), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_fails_the_whole_batch_and_applies_nothing() {
        let (writer, dir) = writer();
        writer.write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?)).await.unwrap();
        // SQLITE_FULL, for real: the database may not grow past its size now.
        writer
            .write(|c| {
                let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
                Ok(())
            })
            .await
            .unwrap();
        let blob = "x".repeat(64 * 1024);
        let big = writer.write(move |c| Ok(c.execute("INSERT INTO t (v) VALUES (length(?1) + 7)", [blob])?)).await;
        let huge = "y".repeat(256 * 1024);
        let bigger = writer
            .write(move |c| {
                c.execute("CREATE TABLE IF NOT EXISTS pad (b BLOB)", [])?;
                Ok(c.execute("INSERT INTO pad (b) VALUES (?1)", [huge])?)
            })
            .await;
        assert!(matches!(bigger, Err(StoreError::Unavailable(_))), "{bigger:?}");
        // Whatever else was in flight either committed whole or failed whole.
        let rows = count(&dir);
        assert!(rows == 1 || (rows == 2 && big.is_ok()), "rows {rows}, big {big:?}");
        // The writer keeps serving once there is room again.
        writer.write(|c| Ok(c.execute_batch("PRAGMA max_page_count = 1073741823")?)).await.unwrap();
        writer.write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (3)", [])?)).await.unwrap();
    }

    async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }
}
