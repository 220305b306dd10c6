//! Shadow runs: a candidate rule module run beside the active one, after
//! the answer, with how its result differs. A candidate is named by its
//! rule name, version, digest and configuration hash; a run where the
//! candidate failed (trap, budget, error) is an error, never a difference.
//! These are the records both back-ends store (`store::sqlite::shadows`,
//! `store::postgres::shadows`).

use serde::Serialize;
use serde_json::Value;

use crate::domain::status::Slot;

/// A module as a shadow run names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowModule {
    pub file: String,
    /// The rule name the module reports (`meta.info`).
    pub name: String,
    pub version: String,
    pub digest: String,
    /// `sha256:` of the module's configuration (`rules::config_hash`).
    pub config_hash: String,
    /// The configuration as a JSON object's text.
    pub config: String,
}

/// One shadow run to record.
#[derive(Debug, Clone)]
pub struct ShadowRun {
    pub order_id: String,
    pub slot: Slot,
    pub active: ShadowModule,
    pub candidate: ShadowModule,
    /// The results as JSON text.
    pub active_result: String,
    pub candidate_result: String,
    /// Candidate minus active, in the customer's money (discounts: cents
    /// more off with the candidate; 0 for the other slots and for a failure).
    pub money_difference_cents: i64,
    /// The candidate answered otherwise (never set when it failed).
    pub differs: bool,
    /// The candidate trapped, ran out of a budget or returned an error.
    pub failed: bool,
}

/// Sums per (slot, active module, candidate version and configuration) of
/// the shadow runs so far.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ShadowSummary {
    pub slot: Slot,
    pub active_module: String,
    pub candidate_module: String,
    pub candidate_version: String,
    pub candidate_digest: String,
    /// Runs (orders the candidate ran on).
    pub orders: u64,
    /// Orders the candidate answered otherwise (failures are not counted here).
    pub differing_orders: u64,
    /// `differing_orders / orders`.
    pub share_differing: f64,
    pub money_difference_cents: i64,
    /// The rule name the candidate reports.
    pub candidate_name: String,
    /// `sha256:` of the candidate's configuration.
    pub candidate_config_hash: String,
    /// The candidate's configuration.
    #[schema(value_type = Object)]
    pub candidate_config: Value,
    /// Orders the candidate failed on (trap, budget, error).
    pub errors: u64,
    /// `errors / orders`.
    pub error_rate: f64,
}
