//! Why an order did not go through: each variant is one code of the API's
//! error table, and this file holds that table (code → HTTP status).

use serde_json::{Value, json};

use crate::domain::invoice::Invoice;
use crate::domain::status::{ErrorCode, Slot};

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
    RuleFailed {
        slot: Slot,
        module: Box<ModuleIdentity>,
        cause: FailureCause,
        /// The failure's entry in the engine's rule errors, once recorded
        /// there (`Pipeline::place_order` does, as the error leaves the saga).
        error_id: Option<String>,
    },
    #[error("payment failed: {reason}")]
    PaymentFailed {
        reason: String,
        order: Box<Invoice>,
        /// The request the failure answers (`error.request_id` of the body,
        /// stored with it for idempotent replays); `None` when no request
        /// is waiting (the reconciler settled it).
        request_id: Option<String>,
    },
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
    pub fn code(&self) -> ErrorCode {
        match self {
            OrderError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            OrderError::InvalidCustomerToken(_) => ErrorCode::InvalidCustomerToken,
            OrderError::CustomerMismatch => ErrorCode::CustomerMismatch,
            OrderError::CustomerNotFound(_) => ErrorCode::CustomerNotFound,
            OrderError::CustomerBlocked(_) => ErrorCode::CustomerBlocked,
            OrderError::EmptyCart => ErrorCode::EmptyCart,
            OrderError::UnknownSku(_) => ErrorCode::UnknownSku,
            OrderError::InvalidCoupon { .. } => ErrorCode::InvalidCoupon,
            OrderError::OutOfStock { .. } => ErrorCode::OutOfStock,
            OrderError::RuleFailed { .. } => ErrorCode::RuleFailed,
            OrderError::PaymentFailed { .. } => ErrorCode::PaymentFailed,
            OrderError::DependencyUnavailable { .. } => ErrorCode::DependencyUnavailable,
            OrderError::StageTimeout { .. } => ErrorCode::StageTimeout,
            OrderError::IdempotencyInProgress => ErrorCode::IdempotencyInProgress,
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
            OrderError::RuleFailed { slot, .. } => match slot {
                Slot::Discount => Stage::Discount,
                Slot::Warehouse => Stage::Inventory,
                Slot::Fraud => Stage::Events,
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
            OrderError::RuleFailed { slot, module, cause, error_id } => {
                let mut details = json!({
                    "slot": slot, "module": module.file, "rule": module.name, "version": module.version,
                    "digest": module.digest, "cause": cause.kind(),
                });
                if let Some(error_id) = error_id {
                    details["error_id"] = json!(error_id);
                }
                Some(details)
            }
            _ => None,
        }
    }

    /// The error's message for the client. A failed rule's cause quotes the
    /// guest (its panic message, its error text): the client is told which
    /// rule failed and how (`cause` in the details), never what it said.
    pub fn public_message(&self) -> String {
        match self {
            OrderError::RuleFailed { slot, module, cause, .. } => format!(
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
            OrderError::PaymentFailed { order, request_id, .. } => {
                if let Some(request_id) = request_id {
                    error["request_id"] = json!(request_id);
                }
                json!({ "error": error, "order": order })
            }
            _ => json!({ "error": error }),
        }
    }
}

/// Error code → HTTP status: the one table the API's error list
/// (docs/api.md, "Errors") is written from. Exhaustive: a new code cannot
/// be added without its status.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::InvalidRequest => 400,
        ErrorCode::Unauthenticated | ErrorCode::InvalidCustomerToken => 401,
        ErrorCode::PaymentFailed => 402,
        ErrorCode::CustomerBlocked | ErrorCode::CustomerMismatch => 403,
        ErrorCode::CustomerNotFound | ErrorCode::OrderNotFound | ErrorCode::NotFound => 404,
        ErrorCode::MethodNotAllowed => 405,
        ErrorCode::OutOfStock
        | ErrorCode::IdempotencyKeyReused
        | ErrorCode::IdempotencyInProgress
        | ErrorCode::Conflict => 409,
        ErrorCode::PayloadTooLarge => 413,
        ErrorCode::UnsupportedMediaType => 415,
        ErrorCode::EmptyCart | ErrorCode::UnknownSku | ErrorCode::InvalidCoupon | ErrorCode::QuantityTooLarge => 422,
        ErrorCode::RuleFailed | ErrorCode::DependencyUnavailable => 503,
        ErrorCode::StageTimeout => 504,
    }
}
