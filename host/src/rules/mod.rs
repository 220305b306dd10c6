//! The sandbox for business rules: WebAssembly components implementing the
//! worlds of `wit/`, compiled once, instantiated fresh for every call.
//!
//! - [`engine`]: the process-wide engine, linker, epoch ticker and artifact cache;
//! - [`world`]: the three rule worlds and the imports a rule may have;
//! - [`module`]: one loaded module and the typed calls into it;
//! - [`budgets`]: per-call time, fuel, memory and output limits;
//! - [`config_hash`]: the hash naming a module's configuration;
//! - [`types`]: what rules receive and return, in the host's own types;
//! - [`text`]: escaping and bounding the text rules hand the host;
//! - [`error`]: load-time refusals and call failures;
//! - [`manifest`], [`ruleset`]: the plug-in directory and the immutable rule set loaded from it;
//! - [`scope`]: the channels and activation window of a rule, asked by each order at its start;
//! - [`canary`]: a new version on a share of customers, watched, rolled back by itself;
//! - [`native`]: the same calls on native closures (the benchmark baseline);
//! - [`pool`]: the threads synchronous rule calls run on, a batch of calls per hop;
//! - [`reload`]: hot reload of the plug-in directory (watch, debounce, check, swap);
//! - [`signing`]: ed25519 module signatures;
//! - [`runner`]: `smartmart rules check | run` for rule authors;
//! - [`scaffold`]: `smartmart rules new`, a rule project to start from;
//! - [`js_engine`]: the QuickJS engine a JavaScript rule embeds, without clock or randomness;
//! - [`typescript`]: a world's TypeScript definitions for JavaScript rules, from `wit/`;
//! - [`project`]: `smartmart rules test | watch`, a rule project built, checked and run on its examples;
//! - `bindings` (private): the generated bindings, the only `bindgen!`.
//!
//! ## What a rule can make the host hold
//!
//! A rule is hostile until proven otherwise; these are the bounds on the
//! host memory one call can cost, whatever the guest does:
//!
//! - **its linear memory**: at most its `memory_bytes` budget (default
//!   16 MiB, at most [`budgets::MAX_MEMORY_BYTES`] = 64 MiB), in a slot of
//!   the engine's instance pool, returned to the pool when the call ends;
//! - **what it hands over**: its answer (or typed error) and the arguments of
//!   each host call it makes (`log.emit`, `config.get`, WASI stdio) are each
//!   charged against `output_bytes` (default 64 KiB, at most
//!   [`budgets::MAX_OUTPUT_BYTES`] = 16 MiB) *while wasmtime lifts them*,
//!   string by string and list by list, before the host copies what would go
//!   over (`Store::set_hostcall_fuel`): a crossing that would exceed it fails
//!   the call with [`FailureCause::OutputTooLarge`], having copied at most
//!   the budget. The charge is what the host allocates: string bytes, plus
//!   each list's length × its element's in-host size (a UTF-16 or Latin-1
//!   guest's strings may grow up to 2× when transcoded to UTF-8; Rust guests
//!   are UTF-8). Lazily-lifted `WasmStr` answers cannot do this in wasmtime
//!   48: `TypedFunc::call` runs the guest's post-return (which frees the
//!   answer's buffers) before it returns, so the strings would be read from
//!   freed memory;
//! - **its log**: at most 64 lines and 16 KiB of text per call, fields
//!   included, charged before anything is formatted (see `state`); each
//!   line's arguments are a crossing as above, dropped when the line is;
//! - **its stdout/stderr**: a 4 KiB pipe;
//! - **rule text kept**: after the answer is converted to the host's types,
//!   every text is escaped and cut at 200 characters ([`text`]), so an
//!   invoice keeps less than the answer's budget.
//!
//! A call therefore holds at most `memory_bytes` of guest memory and, on the
//! host's heap, about 2 × `output_bytes` (the lifted answer and its cleaned
//! copy, briefly both) + 16 KiB of log + 4 KiB of stdio + the store's fixed
//! part (tens of KiB): with the defaults about 16 MiB + 250 KiB, at most
//! 64 MiB + 32.3 MiB. A host call's arguments are freed before the answer is
//! lifted, so they do not add to it.
//!
//! Calls in flight are bounded by the instance pool: every call instantiates
//! its module in the pool (`RuntimeOptions::max_instances` component
//! instances, default 256) and a call finding the pool full fails with
//! [`FailureCause::Instantiate`] rather than allocating. The service's worst
//! case is therefore `max_instances` × the above: with the defaults 256 ×
//! ~250 KiB ≈ 64 MiB of host heap for rule calls, beside at most 256 × 16 MiB
//! of guest memory in the pool's slots (committed only as guests touch it).

mod bindings;
pub(crate) mod budgets;
pub(crate) mod canary;
pub(crate) mod config_hash;
pub(crate) mod engine;
pub(crate) mod epoch;
pub(crate) mod error;
pub(crate) mod js_engine;
pub(crate) mod manifest;
pub(crate) mod module;
pub(crate) mod native;
pub(crate) mod pool;
pub(crate) mod project;
pub(crate) mod reload;
pub(crate) mod ruleset;
pub(crate) mod runner;
pub(crate) mod scaffold;
pub(crate) mod scope;
pub(crate) mod signing;
mod state;
pub(crate) mod text;
pub mod types;
pub(crate) mod typescript;
pub(crate) mod world;

pub use budgets::Budgets;
pub use config_hash::config_hash;
pub use engine::{RuleRuntime, RuntimeOptions};
pub use error::{FailureCause, LoadError, RuleError};
pub use manifest::FailMode;
pub use module::{Called, ModuleIdentity, RuleModule, Traced, Usage, run_blocking};
pub use native::{NativeLogic, NativeRule, Rule};
pub use ruleset::{Experiment, HostDefaults, Picked, RuleSet, SlotRule, Variant};
pub use scope::{Channels, OrderScope, Scope, Window};
pub use state::{LogLine, ModuleConfig};
pub use world::World;
