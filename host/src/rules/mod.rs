//! The sandbox for business rules: WebAssembly components implementing the
//! worlds of `wit/`, compiled once, instantiated fresh for every call.
//!
//! - [`engine`]: the process-wide engine, linker, epoch ticker and artifact cache;
//! - [`world`]: the three rule worlds and the imports a rule may have;
//! - [`module`]: one loaded module and the typed calls into it;
//! - [`budgets`]: per-call time, fuel, memory and output limits;
//! - [`types`]: what rules receive and return, in the host's own types;
//! - [`error`]: load-time refusals and call failures;
//! - [`manifest`], [`ruleset`]: the plug-in directory and the immutable rule set loaded from it;
//! - [`native`]: the same calls on native closures (the benchmark baseline);
//! - [`reload`]: hot reload of the plug-in directory (watch, debounce, check, swap);
//! - [`signing`]: ed25519 module signatures;
//! - [`runner`]: `smartmart rules check | run` for rule authors;
//! - [`scaffold`]: `smartmart rules new`, a rule project to start from;
//! - `bindings` (private): the generated bindings, the only `bindgen!`.

mod bindings;
pub mod budgets;
pub mod engine;
pub mod error;
pub mod manifest;
pub mod module;
pub mod native;
pub mod reload;
pub mod ruleset;
pub mod runner;
pub mod scaffold;
pub mod signing;
mod state;
pub mod types;
pub mod world;

pub use budgets::Budgets;
pub use engine::{RuleRuntime, RuntimeOptions};
pub use error::{FailureCause, LoadError, RuleError};
pub use manifest::FailMode;
pub use module::{Called, ModuleIdentity, RuleModule, Traced, Usage, run_blocking};
pub use native::{NativeLogic, NativeRule, Rule};
pub use ruleset::{Experiment, HostDefaults, Picked, RuleSet, SlotRule, Variant};
pub use state::{LogLine, ModuleConfig};
pub use world::World;
