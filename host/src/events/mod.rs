//! Event delivery: the outbox dispatcher and the sinks it delivers to.
//!
//! - [`sink`]: the `EventSink` trait and the default JSON Lines sink;
//! - [`dispatcher`]: reads READY outbox rows, delivers them at least once,
//!   backs off per event when a sink fails; never on an order's path.

pub mod dispatcher;
pub mod sink;

pub use dispatcher::{deliver_due, run_dispatcher};
pub use sink::{EventSink, JsonlSink};
