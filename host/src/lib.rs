//! SmartMart's order fulfillment engine, as a library with a thin binary.
//!
//! Data flows one way: request → [`pipeline`] (six stages) → [`rules`]
//! (sandboxed business rules), [`store`] (SQLite), [`payment`] (gateways) and
//! the outbox → [`events`] (delivered after the answer).
//!
//! - [`domain`]: the records and states every layer speaks (the leaf: it
//!   imports none of the others);
//! - [`app`]: the assembled engine and its settings; [`demo`]: `smartmart demo`;
//! - [`rules`]: the WebAssembly sandbox that runs business rules;
//! - [`pipeline`]: the order saga and its stages;
//! - [`store`]: the embedded database, its migrations and queries;
//! - [`payment`]: the gateway boundary, the sandbox gateway, the HTTP adapter, retries;
//! - [`events`]: event sinks and the outbox dispatcher.

pub mod app;
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub(crate) mod metrics;
pub mod payment;
pub mod pipeline;
pub(crate) mod release;
pub mod rules;
pub mod store;
#[cfg(feature = "test-support")]
pub mod test_support;
pub(crate) mod tls;
