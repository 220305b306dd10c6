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
    /// A value the schema refuses (a CHECK constraint), e.g. a quantity out of range.
    #[error("refused by the schema: {0}")]
    Constraint(String),
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// Any other PostgreSQL error.
    #[error("database error: {0}")]
    Postgres(tokio_postgres::Error),
}

impl StoreError {
    /// Whether running the whole transaction again may succeed: PostgreSQL
    /// aborted it for a deadlock or a serialization failure.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, StoreError::Postgres(e)
            if matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE))
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection failed (closed, refused, timed
            // out), or this side could not encode or decode a value (a bug).
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            return if e.is_closed() || io { StoreError::Unavailable(e.to_string()) } else { StoreError::Postgres(e) };
        };
        let class = &code.code()[..2];
        if *code == SqlState::CHECK_VIOLATION {
            StoreError::Constraint(e.to_string())
        } else if matches!(class, "08" | "53" | "57") || *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            // Connection exception, insufficient resources, operator intervention.
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Postgres(e)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | SystemIoFailure | CannotOpen | DiskFull | ReadOnly) => {
                StoreError::Unavailable(e.to_string())
            }
            Some(ConstraintViolation) if e.to_string().contains("CHECK constraint") => {
                StoreError::Constraint(e.to_string())
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
