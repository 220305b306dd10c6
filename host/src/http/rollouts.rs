//! `/v1/admin/rollouts`: the canaries of the serving rule set with their
//! state and figures, the recent reloads, refusals, rollbacks and
//! promotions; and promoting a canary. Admin key only.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::json::ApiPath;
use super::validate::check_id;
use crate::clock::now_ms;
use crate::domain::status::{ErrorCode, Slot};
use crate::rules::canary::{Canary, CanaryLimits, CanaryState, WindowFigures};
use crate::rules::{Rule, RuleSet, SlotRule};
use crate::store::rollouts::RolloutEvent;

/// A version of a rule: its module and configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuleVersion {
    /// The module file.
    pub module: String,
    /// The rule name the module reports.
    pub name: String,
    pub version: String,
    /// `sha256:` of the module file.
    pub digest: String,
    /// `sha256:` of its configuration.
    pub config_hash: String,
}

impl RuleVersion {
    fn of(rule: &Rule) -> RuleVersion {
        let id = rule.identity();
        RuleVersion {
            module: id.file.clone(),
            name: id.name.clone(),
            version: id.version.clone(),
            digest: id.digest.clone(),
            config_hash: rule.config_hash().to_string(),
        }
    }
}

/// One canary of the serving rule set.
#[derive(Debug, Serialize, ToSchema)]
pub struct CanaryAnswer {
    /// The canary's name (the manifest's `canary.name`, default its module stem).
    pub entry: String,
    /// `discount`, `warehouse` or `fraud`.
    pub slot: Slot,
    /// The version serving everyone outside the canary's share (as the
    /// manifest names it); `null` for a new rule's canary (`module = "none"`):
    /// whoever the canary does not serve goes without the rule.
    pub stable: Option<RuleVersion>,
    pub canary: RuleVersion,
    pub share_percent: u32,
    /// `running`, `rolled_back` or `promoted`.
    pub state: CanaryState,
    /// Canary calls since the rollout began (this process; as stored once it stopped).
    pub calls: u64,
    /// Failed canary calls (each answered by the stable version, or
    /// without the rule for a new rule's canary; each listed in
    /// `GET /v1/admin/rule-errors` with its order).
    pub errors: u64,
    /// Why it was rolled back or promoted.
    pub reason: Option<String>,
    /// Since when it is in its state (ms since the Unix epoch).
    pub since_ms: i64,
    /// The sliding window now.
    pub window: WindowFigures,
    pub limits: CanaryLimits,
}

/// `GET /v1/admin/rollouts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutsAnswer {
    pub canaries: Vec<CanaryAnswer>,
    /// The recent reloads, refusals, rollbacks and promotions, newest first (at most 100).
    pub events: Vec<RolloutEvent>,
}

fn canary_answer(slot: Slot, rule: &SlotRule, canary: &Canary) -> CanaryAnswer {
    let (calls, errors, reason, since_ms) = canary.control.totals();
    CanaryAnswer {
        entry: canary.name.clone(),
        slot,
        stable: rule.module.as_ref().map(RuleVersion::of),
        canary: RuleVersion::of(&canary.rule),
        share_percent: canary.share_percent,
        state: canary.control.state(),
        calls,
        errors,
        reason,
        since_ms,
        window: canary.control.figures(&canary.limits, now_ms()),
        limits: canary.limits,
    }
}

fn canaries(rules: &RuleSet) -> Vec<CanaryAnswer> {
    rules.canaries().map(|(slot, rule, canary)| canary_answer(slot, rule, canary)).collect()
}

/// The canaries of the serving rule set and the recent rollout events.
#[utoipa::path(get, path = "/v1/admin/rollouts", tag = "admin",
    responses((status = 200, description = "the canaries and the recent rollout events", body = RolloutsAnswer),
              (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_rollouts(State(state): State<AppState>, _admin: Admin) -> Result<Json<RolloutsAnswer>, ApiError> {
    let rules = state.engine.rules();
    let events = state.engine.rollouts().events().await?;
    Ok(Json(RolloutsAnswer { canaries: canaries(&rules), events }))
}

/// Makes a running canary the stable version: it serves every customer,
/// and stays so across restarts and reloads until the manifest names
/// another version.
#[utoipa::path(post, path = "/v1/admin/rollouts/{entry}/promote", tag = "admin",
    params(("entry" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, description = "the promoted canary", body = CanaryAnswer), (status = 401),
              (status = 404, description = "`NOT_FOUND`: the serving rule set has no canary of that name"),
              (status = 409, description = "`CONFLICT`: the canary is not running (rolled back or promoted already)")),
    security(("admin_key" = [])))]
pub async fn promote(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(entry): ApiPath<String>,
) -> Result<Json<CanaryAnswer>, ApiError> {
    check_id("entry", &entry)?;
    let rules = state.engine.rules();
    match state.engine.rollouts().promote(&rules, &entry).await? {
        None => Err(ApiError::new(ErrorCode::NotFound, format!("no canary named {entry} in the serving rule set"))),
        Some(Err(current)) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("canary {entry} is {}, not running: only a running canary can be promoted", current.as_str()),
        )),
        Some(Ok(())) => {
            let (slot, rule, canary) =
                rules.canaries().find(|(_, _, c)| c.name == entry).expect("the canary just promoted");
            Ok(Json(canary_answer(slot, rule, canary)))
        }
    }
}
