//! Store errors callers match on.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is locked, unreachable or out of space: the order's
    /// dependency is unavailable, not the order wrong.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A row the caller named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The change would break an invariant (e.g. stock below what is held).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data that cannot be decoded (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | CannotOpen | DiskFull | ReadOnly) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
