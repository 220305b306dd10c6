//! Rollouts: the state of each canary (running, rolled back, promoted) and
//! the events of reloads, refusals, rollbacks and promotions. Stored, not
//! kept in memory, so that a rollback survives restarts and reloads, and so
//! that several replicas on one database see one history. Times are integer
//! milliseconds since the Unix epoch. These are the records both back-ends
//! store (`store::sqlite::rollouts`, `store::postgres::rollouts`).

use serde::Serialize;

use crate::domain::status::{CanaryState, RolloutEventKind, Slot};

/// The stored state of one canary, by its name. It applies only while the
/// manifest names the same canary (digest and configuration): a new version
/// is a new rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    pub entry: String,
    pub slot: Slot,
    pub stable_digest: String,
    pub stable_config_hash: String,
    pub canary_digest: String,
    pub canary_config_hash: String,
    pub state: CanaryState,
    pub reason: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub at_ms: i64,
}

/// One event of the rollout history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RolloutEvent {
    pub at_ms: i64,
    pub kind: RolloutEventKind,
    /// The canary's name, or the manifest entry a reload changed or the gate refused.
    pub entry: String,
    pub reason: String,
}
