//! Payment: stage 4 of the order pipeline's boundary to money. The pipeline
//! calls it after stock is reserved; it must never charge twice, never call
//! an order failed while the gateway may hold its charge, and must let the
//! pipeline find out after a crash whether an order was charged.
//!
//! - [`gateway`]: what a charge asks and answers, the three kinds of failure
//!   (declined, not charged, unknown) and the [`PaymentGateway`] trait
//!   (`charge`, `lookup`, `cancel`);
//! - [`retry`]: [`charge_with_retries`], attempts within a time budget with
//!   exponential backoff, full jitter and `Retry-After`, the same
//!   idempotency key on every attempt;
//! - [`resolve`]: [`decide`], what the attempts came to, resolving an
//!   unknown outcome with a lookup and a cancel;
//! - [`sandbox`]: the built-in [`SandboxGateway`] driven by magic tokens,
//!   with its own durable ledger as an external provider would have;
//! - [`http`]: [`HttpGateway`], the adapter for an external gateway over
//!   HTTP(S), and the wire protocol such a gateway implements.

pub(crate) mod gateway;
pub(crate) mod http;
pub(crate) mod resolve;
pub(crate) mod retry;
pub(crate) mod sandbox;

pub use gateway::{CancelOutcome, Charge, ChargeRequest, GatewayError, PaymentGateway, RequestTrace};
pub use http::{HttpGateway, HttpGatewayError, HttpGatewayOptions};
pub use resolve::{Decision, decide, resolve};
pub use retry::{PaymentOutcome, RetryPolicy, charge_with_retries};
pub use sandbox::SandboxGateway;
