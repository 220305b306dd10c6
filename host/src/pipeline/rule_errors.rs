//! What a failed rule said, for operators only.
//!
//! A rule's failure text (its panic message, a trap's backtrace note, its
//! error message) is the guest's own words: it never goes into a client's
//! HTTP answer, a stored invoice or an event. A client gets the cause's kind
//! (`trap`, `fuel_budget`, …) and an `error_id`: in `503 RULE_FAILED` when
//! the slot fails closed, in the invoice's `skipped_rules` (and the fraud
//! review's `skipped`) when a fail-open rule was skipped. The full cause is
//! logged with that id and kept here, in a bounded ring of the [`CAPACITY`]
//! most recent failures of this process ([`RuleErrors`], owned by the
//! engine's pipeline), which `GET /v1/admin/rule-errors` shows.
//!
//! A failed canary call changes nothing for the client (the stable version
//! answers, or, for a new rule's canary, the order goes without the rule),
//! so the client gets no id for it; it is listed here all the same, with
//! its order and canary, and logged with them, so that operators see why a
//! canary was rolled back and which orders it failed on.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::status::Slot;
use crate::rules::{FailureCause, ModuleIdentity};

/// Failures kept; the oldest goes when a new one comes.
pub const CAPACITY: usize = 256;

/// What a failure did to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// The slot fails closed: the order was answered `RULE_FAILED`.
    RuleFailed,
    /// The slot fails open: the rule was skipped and the order went on
    /// (listed in the invoice's `skipped_rules` or the fraud review's `skipped`).
    Skipped,
    /// A canary call failed: the stable version answered the order (or, for
    /// a new rule's canary, the order went without the rule). The failure
    /// counts against the canary's limits.
    CanaryFallback,
}

/// One rule failure that reached a client as `RULE_FAILED`, a fail-open
/// rule that was skipped, or a failed canary call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RuleErrorRecord {
    /// The id the client's error body carries (`details.error_id`), or
    /// the invoice's `skipped_rules` entry.
    pub error_id: String,
    /// The order the call was made for; absent for `rule_failed` (that
    /// order was refused, and never stored: the client has the `error_id`).
    pub order_id: Option<String>,
    /// The canary whose call failed (`canary_fallback` only).
    pub canary: Option<String>,
    /// When it happened (RFC 3339, UTC).
    pub at: String,
    /// The rule slot: `discount`, `warehouse` or `fraud`.
    pub slot: Slot,
    /// The module's file, name, version and digest.
    pub module: String,
    pub rule: String,
    pub version: String,
    pub digest: String,
    /// The cause's kind, as in the client's error (`trap`, `fuel_budget`, …).
    pub cause_kind: String,
    /// The full cause, the guest's words included (escaped and bounded by the
    /// rule runtime).
    pub cause: String,
    /// `rule_failed` (the order was refused), `skipped` (a fail-open rule)
    /// or `canary_fallback` (a failed canary call, answered without it).
    pub handling: Handling,
}

/// The most recent rule failures of one engine.
#[derive(Debug)]
pub struct RuleErrors {
    ring: Mutex<VecDeque<RuleErrorRecord>>,
}

impl Default for RuleErrors {
    fn default() -> Self {
        RuleErrors { ring: Mutex::new(VecDeque::with_capacity(CAPACITY)) }
    }
}

impl RuleErrors {
    /// Logs a rule failure with a fresh error id (and the order and canary
    /// it happened on, when known), keeps it in the ring, and returns the id
    /// for the client's answer (or the invoice).
    pub fn record(
        &self,
        slot: Slot,
        module: &ModuleIdentity,
        cause: &FailureCause,
        handling: Handling,
        order_id: Option<&str>,
        canary: Option<&str>,
    ) -> String {
        let error_id = format!("rerr_{}", uuid::Uuid::now_v7().simple());
        match handling {
            Handling::RuleFailed => tracing::error!(
                error_id = %error_id, order_id, %slot, module = %module, cause_kind = cause.kind(), %cause,
                "rule failed; the client was answered RULE_FAILED with this error_id"
            ),
            Handling::Skipped => tracing::warn!(
                error_id = %error_id, order_id, %slot, module = %module, cause_kind = cause.kind(), %cause,
                "fail-open rule failed and was skipped; the order lists it with this error_id"
            ),
            Handling::CanaryFallback => tracing::warn!(
                error_id = %error_id, order_id, canary, %slot, module = %module, cause_kind = cause.kind(), %cause,
                "canary call failed; the order was answered without it (by the stable version, if the rule has one)"
            ),
        }
        let at =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let record = RuleErrorRecord {
            error_id: error_id.clone(),
            order_id: order_id.map(str::to_string),
            canary: canary.map(str::to_string),
            at,
            slot,
            module: module.file.clone(),
            rule: module.name.clone(),
            version: module.version.clone(),
            digest: module.digest.clone(),
            cause_kind: cause.kind().to_string(),
            cause: cause.to_string(),
            handling,
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(record);
        error_id
    }

    /// The kept failures, newest first.
    pub fn recent(&self) -> Vec<RuleErrorRecord> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}
