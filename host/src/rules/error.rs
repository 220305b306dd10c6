//! Errors of the rule runtime: loading a module, and calling one.

use std::path::PathBuf;
use std::sync::Arc;

use super::module::ModuleIdentity;
use super::types::Refusal;
use super::world::World;

/// Why a module file was refused at load time. Every variant names the file
/// and the world it was expected to implement.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The OS error is part of the message and not a `source` too, so that
    /// a chain printed whole (`{:#}`) says it once.
    #[error("{file}: cannot read the module for world `{expected}`: {error}")]
    Read { file: PathBuf, expected: World, error: std::io::Error },
    #[error("{file}: not usable as a `{expected}` rule: {reason}")]
    NotAComponent { file: PathBuf, expected: World, reason: String },
    #[error("{file}: does not implement world `{expected}`: {reason}")]
    WrongWorld { file: PathBuf, expected: World, reason: String },
    #[error(
        "{file}: imports {}, not granted to `{expected}` rules \
         (granted: smartmart:rules/log, smartmart:rules/config, the inert wasi:io and wasi:cli interfaces of Rust's std, and a fixed insecure random seed; no file system, network, clock or secure random)",
        imports.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
    )]
    ForbiddenImport { file: PathBuf, expected: World, imports: Vec<String> },
    #[error("{file}: `meta.info` failed while loading as `{expected}`: {cause}")]
    Describe { file: PathBuf, expected: World, cause: String },
    #[error("{file}: invalid budgets for a `{expected}` rule: {reason}")]
    Budgets { file: PathBuf, expected: World, reason: String },
    /// `meta.info` answered a name or version that cannot name the module
    /// in logs, terminals and invoices (see `module::MAX_NAME_BYTES`).
    #[error("{file}: `meta.info` of a `{expected}` rule reports an unusable {field}: {reason}")]
    BadIdentity { file: PathBuf, expected: World, field: &'static str, reason: String },
}

impl LoadError {
    /// The module file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            LoadError::Read { file, .. }
            | LoadError::NotAComponent { file, .. }
            | LoadError::WrongWorld { file, .. }
            | LoadError::ForbiddenImport { file, .. }
            | LoadError::Describe { file, .. }
            | LoadError::Budgets { file, .. }
            | LoadError::BadIdentity { file, .. } => file,
        }
    }
}

/// Why a rule call did not produce a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule answered with a typed refusal: the order's fault (an unknown
    /// coupon, stock that cannot cover the cart), not the module's.
    #[error("{module} refused: {refusal:?}")]
    Refused { module: Arc<ModuleIdentity>, refusal: Refusal },
    /// The module failed: it trapped, exhausted a budget or returned an error.
    #[error("{module} failed: {cause}")]
    Failed { module: Arc<ModuleIdentity>, cause: FailureCause },
}

impl RuleError {
    pub fn module(&self) -> &Arc<ModuleIdentity> {
        match self {
            RuleError::Refused { module, .. } | RuleError::Failed { module, .. } => module,
        }
    }
}

/// What went wrong inside a failed rule call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureCause {
    #[error("exceeded its time budget of {0} ms")]
    TimeBudget(u64),
    #[error("exceeded its fuel budget of {0}")]
    FuelBudget(u64),
    #[error("exceeded its memory budget of {0} bytes")]
    MemoryBudget(usize),
    /// The rule tried to hand the host more than its output budget in one
    /// crossing (its answer, or one host call such as `log.emit`); the host
    /// refused before copying it.
    #[error("sent more than its output budget of {limit} bytes to the host in one call")]
    OutputTooLarge { limit: usize },
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned an error: {0}")]
    Guest(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl FailureCause {
    /// A short machine-readable name, for metrics and error details.
    pub fn kind(&self) -> &'static str {
        match self {
            FailureCause::TimeBudget(_) => "time_budget",
            FailureCause::FuelBudget(_) => "fuel_budget",
            FailureCause::MemoryBudget(_) => "memory_budget",
            FailureCause::OutputTooLarge { .. } => "output_budget",
            FailureCause::Trap(_) => "trap",
            FailureCause::Guest(_) => "guest_error",
            FailureCause::Instantiate(_) => "instantiate",
        }
    }
}
