//! The sandbox payment gateway's ledger: what the stand-in provider
//! captured, one row per gateway idempotency key, and the keys cancelled
//! before any capture. It lives in the store's database so that its writes
//! share the writer's group commit and any process on the same database can
//! reconcile an order another started.
//!
//! A key is captured or cancelled, never both: a capture of a cancelled key
//! captures nothing, a cancel of a captured key returns the charge. These
//! are the records both back-ends answer with (`store::sqlite::ledger`,
//! `store::postgres::ledger`).

/// A capture as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerCharge {
    pub idempotency_key: String,
    pub transaction_id: String,
    pub order_id: String,
    pub amount_cents: u64,
    pub currency: String,
}

/// What recording a capture did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// A new charge.
    New(LedgerCharge),
    /// The key was captured before (a retry): the same charge.
    Existing(LedgerCharge),
    /// The key was captured before for another amount or currency.
    Mismatch(&'static str),
    /// The key was cancelled (see [`Store::ledger_cancel`](super::Store::ledger_cancel)): nothing was captured.
    Cancelled,
}

/// What cancelling a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerCancel {
    /// The key was captured before the cancel: that charge stands.
    Captured(LedgerCharge),
    /// No capture under the key, and none will ever be made.
    Cancelled,
}
