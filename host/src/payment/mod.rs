//! Payment: stage 4 of the order pipeline's boundary to money. The pipeline
//! calls it after stock is reserved; it must never charge twice, and must let
//! the pipeline find out after a crash whether an order was charged.
//!
//! - [`gateway`]: what a charge asks and answers, the two kinds of failure
//!   (declined, transient) and the [`PaymentGateway`] trait (`charge`, `lookup`);
//! - [`retry`]: [`charge_with_retries`], bounded attempts with exponential
//!   backoff and full jitter, the same idempotency key on every attempt;
//! - [`sandbox`]: the built-in [`SandboxGateway`] driven by magic tokens
//!   (`tok_ok`, `tok_decline`, `tok_transient_N`, `tok_down`), with its own
//!   durable ledger as an external provider would have;
//! - [`http`]: [`HttpGateway`], the adapter for an external gateway, and the
//!   wire protocol such a gateway implements.

pub mod gateway;
pub mod http;
pub mod retry;
pub mod sandbox;

pub use gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};
pub use http::{HttpGateway, HttpGatewayError};
pub use retry::{PaymentOutcome, RetryPolicy, charge_with_retries};
pub use sandbox::SandboxGateway;
