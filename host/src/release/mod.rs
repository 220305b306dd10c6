//! Rule releases: the tooling that decides whether a rule module may serve
//! and how a new one is brought in, above the order saga (`pipeline`),
//! whose leaf pieces (`pipeline::rule_io`) it reuses and which never calls
//! it.
//!
//! - [`replay`]: `smartmart rules replay`, a candidate rule on the stored
//!   orders' inputs;
//! - [`gate`]: the replay gate every reload passes (stored orders and the
//!   plug-in dir's examples);
//! - [`rollouts`]: canary promotion and the hooks of every reload (stored
//!   states restored, the gate, the history of reloads);
//! - [`welch`]: the confidence interval of a difference in means, for the
//!   A/B figures;
//! - [`wilson`]: the confidence interval of a rate, for the A/B figures.

pub(crate) mod gate;
pub(crate) mod replay;
pub(crate) mod rollouts;
pub(crate) mod welch;
pub(crate) mod wilson;
