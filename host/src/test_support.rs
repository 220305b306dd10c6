//! What the project's own tests and benchmarks reach beyond the library's
//! API, compiled only with the `test-support` feature.
//!
//! The library's API is what an embedder needs (`app`, `pipeline`'s order
//! types, `store::Store` and its records, the `rules` runtime, `events`'
//! sinks, `http::serve`); the modules below it are `pub(crate)`, so no
//! caller outside the crate can reach a stage, a back-end function or a
//! helper by accident. The tests need a few of those helpers (a token minter,
//! the reconciler run by hand, the reload debounce, a wire constant, …):
//! each is named here, one by one, rather than opening a whole module. The
//! package turns the feature on for its own tests and benchmarks only (a
//! dev-dependency on itself), so `cargo build` never compiles this file.

/// The command-line parts the tests drive without a process.
pub use crate::cli::serve::resolve_settings;
/// The clock every stored timestamp is read from.
pub use crate::clock::{now_ms, rfc3339_of_ms};
/// Wire constants of the brokers, checked against what the brokers stored.
pub use crate::events::kafka::{HEADER_EVENT_ID, HEADER_EVENT_TYPE, partition_for};
pub use crate::events::nats::STREAM_DESCRIPTION;
/// A/B figures folded by hand, and the interval behind their comparisons.
pub use crate::pipeline::experiments::{Arm, ArmCall, ExperimentFigures, Settled};
/// A customer identity token, as the identity provider would issue it.
pub use crate::pipeline::validate::mint_token;
pub use crate::release::welch::{Moments, welch_interval};
pub use crate::release::wilson::{Rate, wilson_interval};
/// The sandbox's fixed limits, so that tests sit exactly on them.
pub use crate::rules::budgets::MAX_OUTPUT_BYTES;
/// How long the plug-in watcher waits for a directory to settle.
pub use crate::rules::reload::{QUIET, ReloadStatus};
pub use crate::rules::text::{MAX_RULE_TEXT_CHARS, has_unsafe_chars};
/// Whether the host links an import into a rule's sandbox.
pub use crate::rules::world::is_granted;

/// The reconciler of interrupted orders, run by hand after a crash.
pub mod recovery {
    pub use crate::pipeline::recovery::{RecoveryReport, reconcile};
}

/// How a failed rule call was handled, as `rule-errors` lists it.
pub mod rule_errors {
    pub use crate::pipeline::rule_errors::Handling;
}

/// `smartmart rules run`: a module on an input, against expected answers.
pub mod runner {
    pub use crate::rules::runner::{Expected, RunInput, RunReport, differences, run};
}

/// Module digests and signatures, as `smartmart rules sign` makes them.
pub mod signing {
    pub use crate::rules::signing::{digest_of, keygen, sign_file};
}

/// The soak's engine settings and catalogue.
pub mod soak {
    pub use crate::cli::soak::{SKU_ON_HAND, SKUS, SoakOptions, settings};
}
