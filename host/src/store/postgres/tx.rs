//! What the store's operations run their statements on ([`Db`]): a pooled
//! connection for a read, a [`Tx`] for a write.
//!
//! A [`Tx`] is the write's transaction, begun by its first statement
//! rather than up front, and committed (or rolled back) only if it was
//! begun. So an operation done by one statement — a server-side function
//! doing the whole operation, called with [`Db::call_prepared`] — runs in that
//! statement's implicit transaction: one round trip, where `BEGIN`,
//! statement, `COMMIT` would be three. Operations of several statements
//! are transactions as before: they begin with their first statement.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{ClientWrapper, Object};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row, Statement, ToStatement};

/// A connection to run a store operation's statements on: the
/// `deadpool_postgres::GenericClient` methods the back-end uses, and [`Db::call`].
pub(in crate::store) trait Db: Sync {
    /// A statement prepared once per connection.
    async fn prepare_cached(&self, query: &str) -> Result<Statement, Error>;

    async fn execute<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement + Sync + Send;

    async fn query<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send;

    async fn query_one<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement + Sync + Send;

    async fn query_opt<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send;

    /// Runs `sql`, one statement, in one round trip whether or not this
    /// connection prepared it before (parse, bind and execute go together,
    /// the parameters' types given), without beginning a [`Tx`]'s
    /// transaction: an operation that is this one call runs in the
    /// statement's own implicit transaction. (After other statements of a
    /// [`Tx`] it runs in their transaction, as they do.) Its plan is not
    /// kept: meant for statements run now and then and cheap to plan (the
    /// retention's prunes); the order path's calls are prepared
    /// ([`Db::call_prepared`]).
    async fn call(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>, Error>;

    /// Runs one of the order path's calls ([`OrderCall`]) as [`Db::call`]
    /// does, in one round trip and without beginning a [`Tx`]'s
    /// transaction, but as the statement this connection prepared when it
    /// opened (`postgres::prepare_order_path`): the server binds and runs
    /// it, without parsing, analysing and planning it again for every order.
    async fn call_prepared(&self, call: &OrderCall, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>;
}

/// A call of one of the server-side functions of an order's answer path
/// (the order's read, phase 1, the sandbox gateway's capture, phase 2):
/// prepared on every connection of the pool when it opens, with these
/// parameter types.
pub(in crate::store) struct OrderCall {
    pub sql: &'static str,
    pub types: &'static [Type],
}

impl Db for Object {
    async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        let client: &ClientWrapper = self;
        client.prepare_cached(query).await
    }

    async fn execute<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        let client: &tokio_postgres::Client = self;
        client.execute(statement, params).await
    }

    async fn query<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        let client: &tokio_postgres::Client = self;
        client.query(statement, params).await
    }

    async fn query_one<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        let client: &tokio_postgres::Client = self;
        client.query_one(statement, params).await
    }

    async fn query_opt<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        let client: &tokio_postgres::Client = self;
        client.query_opt(statement, params).await
    }

    async fn call(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>, Error> {
        let client: &tokio_postgres::Client = self;
        client.query_typed(sql, params).await
    }

    async fn call_prepared(&self, call: &OrderCall, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        // Found in the connection's cache, but for a connection opened
        // before the schema was migrated: then prepared now, once.
        let statement = self.prepare_typed_cached(call.sql, call.types).await?;
        let client: &tokio_postgres::Client = self;
        client.query(&statement, params).await
    }
}

/// A write operation's transaction on a pooled connection, begun by its
/// first statement (see the module's doc). Run by `transact_steps!`,
/// which commits or rolls it back.
pub(in crate::store) struct Tx {
    /// Taken only when a [`Tx`] dropped in the middle of its transaction
    /// gives its connection up.
    client: Option<Object>,
    /// Whether `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` since.
    open: AtomicBool,
}

impl Tx {
    pub(in crate::store) fn new(client: Object) -> Tx {
        Tx { client: Some(client), open: AtomicBool::new(false) }
    }

    fn client(&self) -> &Object {
        self.client.as_ref().expect("a Tx's connection is taken only as the Tx is dropped")
    }

    /// Begins the transaction if it has not begun. The statements of one
    /// operation run one after another, never two at once.
    async fn begin(&self) -> Result<(), Error> {
        if self.open.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.client().batch_execute("BEGIN").await
    }

    /// Ends the transaction with `statement` (`COMMIT` or `ROLLBACK`), if it began.
    async fn end(self, statement: &str) -> Result<(), Error> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let ended = self.client().batch_execute(statement).await;
        // Ended either way: a failed COMMIT rolls back (or the connection is gone).
        self.open.store(false, Ordering::Release);
        ended
    }

    pub(in crate::store) async fn commit(self) -> Result<(), Error> {
        self.end("COMMIT").await
    }

    pub(in crate::store) async fn rollback(self) -> Result<(), Error> {
        self.end("ROLLBACK").await
    }
}

impl Drop for Tx {
    /// A transaction still open here was abandoned half-way (its operation's
    /// future dropped, or a panic): its connection must not go back to the
    /// pool inside it, where the next operation would run in it. It leaves
    /// the pool and closes, and the server rolls the transaction back.
    fn drop(&mut self) {
        if self.open.load(Ordering::Acquire)
            && let Some(client) = self.client.take()
        {
            drop(Object::take(client));
        }
    }
}

impl Db for Tx {
    async fn prepare_cached(&self, query: &str) -> Result<Statement, Error> {
        // Inside the transaction, as its statements: a preparation on its
        // own would be an implicit transaction of its own.
        self.begin().await?;
        self.client().prepare_cached(query).await
    }

    async fn execute<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        self.begin().await?;
        self.client().execute(statement, params).await
    }

    async fn query<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        self.begin().await?;
        self.client().query(statement, params).await
    }

    async fn query_one<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        self.begin().await?;
        self.client().query_one(statement, params).await
    }

    async fn query_opt<T>(&self, statement: &T, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement + Sync + Send,
    {
        self.begin().await?;
        self.client().query_opt(statement, params).await
    }

    async fn call(&self, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>, Error> {
        // No BEGIN: alone, the statement is its own transaction.
        self.client().call(sql, params).await
    }

    async fn call_prepared(&self, call: &OrderCall, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        // No BEGIN, as `call`.
        self.client().call_prepared(call, params).await
    }
}
