//! Why an order did not go through: each variant is one code of the API's
//! error table, and this file holds that table (code → HTTP status).

use serde_json::{Value, json};

use super::invoice::Invoice;
use crate::rules::{FailureCause, ModuleIdentity};

/// A stage of the pipeline, as named in error bodies and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Validate,
    Cart,
    Discount,
    Inventory,
    Payment,
    Events,
    Invoice,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Cart => "cart",
            Stage::Discount => "discount",
            Stage::Inventory => "inventory",
            Stage::Payment => "payment",
            Stage::Events => "events",
            Stage::Invoice => "invoice",
        }
    }
}

/// An order refused or failed; `code()` is the API's error code.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("customer token rejected: {0}")]
    InvalidCustomerToken(String),
    #[error("the customer token is for another customer")]
    CustomerMismatch,
    #[error("customer {0} not found")]
    CustomerNotFound(String),
    #[error("customer {0} is blocked")]
    CustomerBlocked(String),
    #[error("the cart is empty")]
    EmptyCart,
    #[error("unknown sku {0}")]
    UnknownSku(String),
    #[error("invalid coupon: {message}")]
    InvalidCoupon { message: String, module: Box<ModuleIdentity> },
    #[error("out of stock: {sku} (requested {requested}, available {available})")]
    OutOfStock { sku: String, requested: u64, available: u64 },
    #[error("{slot} rule {module} failed: {cause}")]
    RuleFailed { slot: &'static str, module: Box<ModuleIdentity>, cause: FailureCause },
    #[error("payment failed: {reason}")]
    PaymentFailed { reason: String, order: Box<Invoice> },
    #[error("{stage:?} dependency unavailable: {message}")]
    DependencyUnavailable { stage: Stage, message: String },
    #[error("{stage:?} stage timed out")]
    StageTimeout { stage: Stage },
    /// The request's idempotency key belongs to an order that has not
    /// finished (another replica's, or one a crash interrupted).
    #[error("an order with this Idempotency-Key is still being completed; ask again shortly")]
    IdempotencyInProgress,
}

impl OrderError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::InvalidRequest(_) => "INVALID_REQUEST",
            OrderError::InvalidCustomerToken(_) => "INVALID_CUSTOMER_TOKEN",
            OrderError::CustomerMismatch => "CUSTOMER_MISMATCH",
            OrderError::CustomerNotFound(_) => "CUSTOMER_NOT_FOUND",
            OrderError::CustomerBlocked(_) => "CUSTOMER_BLOCKED",
            OrderError::EmptyCart => "EMPTY_CART",
            OrderError::UnknownSku(_) => "UNKNOWN_SKU",
            OrderError::InvalidCoupon { .. } => "INVALID_COUPON",
            OrderError::OutOfStock { .. } => "OUT_OF_STOCK",
            OrderError::RuleFailed { .. } => "RULE_FAILED",
            OrderError::PaymentFailed { .. } => "PAYMENT_FAILED",
            OrderError::DependencyUnavailable { .. } => "DEPENDENCY_UNAVAILABLE",
            OrderError::StageTimeout { .. } => "STAGE_TIMEOUT",
            OrderError::IdempotencyInProgress => "IDEMPOTENCY_IN_PROGRESS",
        }
    }

    /// The HTTP status of the code: the one table the API's error list
    /// (docs/api.md, "Errors") is written from.
    pub fn status(&self) -> u16 {
        status_of(self.code())
    }

    /// The stage the error arose in, where one applies.
    pub fn stage(&self) -> Option<Stage> {
        Some(match self {
            OrderError::InvalidRequest(_) | OrderError::IdempotencyInProgress => return None,
            OrderError::InvalidCustomerToken(_)
            | OrderError::CustomerMismatch
            | OrderError::CustomerNotFound(_)
            | OrderError::CustomerBlocked(_) => Stage::Validate,
            OrderError::EmptyCart | OrderError::UnknownSku(_) => Stage::Cart,
            OrderError::InvalidCoupon { .. } => Stage::Discount,
            OrderError::OutOfStock { .. } => Stage::Inventory,
            OrderError::RuleFailed { slot, .. } => match *slot {
                "discount" => Stage::Discount,
                "warehouse" => Stage::Inventory,
                _ => Stage::Events,
            },
            OrderError::PaymentFailed { .. } => Stage::Payment,
            OrderError::DependencyUnavailable { stage, .. } | OrderError::StageTimeout { stage } => *stage,
        })
    }

    /// Machine-readable details for the error body.
    pub fn details(&self) -> Option<Value> {
        match self {
            OrderError::UnknownSku(sku) => Some(json!({ "sku": sku })),
            OrderError::OutOfStock { sku, requested, available } => {
                Some(json!({ "sku": sku, "requested": requested, "available": available }))
            }
            OrderError::InvalidCoupon { module, .. } => {
                Some(json!({ "module": module.file, "version": module.version, "digest": module.digest }))
            }
            OrderError::RuleFailed { slot, module, cause } => Some(json!({
                "slot": slot, "module": module.file, "rule": module.name, "version": module.version,
                "digest": module.digest, "cause": cause.kind(),
            })),
            _ => None,
        }
    }

    /// The error's message for the client. A failed rule's cause quotes the
    /// guest (its panic message, its error text): the client is told which
    /// rule failed and how (`cause` in the details), never what it said.
    pub fn public_message(&self) -> String {
        match self {
            OrderError::RuleFailed { slot, module, cause } => format!(
                "the {slot} rule {}@{} failed ({}); operators can look the failure up by its error_id",
                module.name,
                module.version,
                cause.kind()
            ),
            other => other.to_string(),
        }
    }

    /// The API's error body; a failed payment also carries the order.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.public_message() });
        if let Some(stage) = self.stage() {
            error["stage"] = json!(stage.as_str());
        }
        if let Some(details) = self.details() {
            error["details"] = details;
        }
        match self {
            OrderError::PaymentFailed { order, .. } => json!({ "error": error, "order": order }),
            _ => json!({ "error": error }),
        }
    }
}

/// Error code → HTTP status (docs/api.md, "Errors").
pub fn status_of(code: &str) -> u16 {
    match code {
        "INVALID_REQUEST" => 400,
        "UNAUTHENTICATED" | "INVALID_CUSTOMER_TOKEN" => 401,
        "PAYMENT_FAILED" => 402,
        "CUSTOMER_BLOCKED" | "CUSTOMER_MISMATCH" => 403,
        "CUSTOMER_NOT_FOUND" | "ORDER_NOT_FOUND" | "NOT_FOUND" => 404,
        "METHOD_NOT_ALLOWED" => 405,
        "OUT_OF_STOCK" | "IDEMPOTENCY_KEY_REUSED" | "IDEMPOTENCY_IN_PROGRESS" | "CONFLICT" => 409,
        "PAYLOAD_TOO_LARGE" => 413,
        "UNSUPPORTED_MEDIA_TYPE" => 415,
        "EMPTY_CART" | "UNKNOWN_SKU" | "INVALID_COUPON" => 422,
        "RULE_FAILED" | "DEPENDENCY_UNAVAILABLE" => 503,
        "STAGE_TIMEOUT" => 504,
        _ => 500,
    }
}
