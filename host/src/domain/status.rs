//! The states an order and its parts go through, and the other closed sets
//! of words (slots, error codes), as enums stored as text.
//!
//! Each is matched in one place (here) when read back from the store; every
//! other module speaks the enum. The texts are part of the API (`status` of
//! an invoice, `type` of an event) and of the schema's CHECK constraints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Defines a text-backed enum: `as_str`, `Display`, `FromStr`, serde and
/// the OpenAPI schema as the same upper/lower-case words.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialised text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        // The OpenAPI schema by hand: utoipa's derive does not see a serde
        // rename whose text comes through a macro, and would publish the
        // Rust variant names (`Confirmed`) instead of the texts the bodies
        // carry (`CONFIRMED`). A string enum of exactly those texts.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // So that a test or a handler can compare with the API's text.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl FromStr for $name {
            type Err = UnknownText;

            fn from_str(s: &str) -> Result<Self, UnknownText> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownText { kind: stringify!($name), text: other.to_string() }),
                }
            }
        }
    };
}

/// A stored text that names no value of the enum (a hand-edited database,
/// or a newer binary's data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}")]
pub struct UnknownText {
    pub kind: &'static str,
    pub text: String,
}

text_enum! {
    /// Where an order is in its saga (see the diagram in `store::orders`).
    OrderStatus {
        /// Stock held; payment not settled yet.
        Pending = "PENDING",
        Confirmed = "CONFIRMED",
        PaymentFailed = "PAYMENT_FAILED",
        /// Undone before payment (a failed leg, or interrupted by a crash).
        Cancelled = "CANCELLED",
        /// Answered `202`: the gateway has not said whether it captured;
        /// stock stays held while the reconciler finds out. Only in the
        /// invoice (the order's row stays `PENDING` until it settles).
        PaymentPending = "PAYMENT_PENDING",
    }
}

text_enum! {
    /// The payment of an order.
    PaymentStatus {
        /// Not asked yet (only in a draft invoice).
        Pending = "PENDING",
        /// Recorded before the gateway is asked: a crash after it is reconciled.
        Intent = "INTENT",
        Captured = "CAPTURED",
        Failed = "FAILED",
    }
}

text_enum! {
    /// The three events of every order that reaches payment.
    EventKind {
        Audit = "audit",
        Analytics = "analytics",
        Fraud = "fraud",
    }
}

text_enum! {
    /// An event's place in the outbox.
    OutboxState {
        /// The fraud event, until the fraud checks have run.
        AwaitingVerdict = "AWAITING_VERDICT",
        Ready = "READY",
        Delivered = "DELIVERED",
    }
}

text_enum! {
    /// The rule slots: where a rule module plugs into the pipeline.
    Slot {
        Discount = "discount",
        Warehouse = "warehouse",
        Fraud = "fraud",
    }
}

text_enum! {
    /// The sales channels orders come from, each with its key
    /// (`SMARTMART_CHANNEL_KEYS`); a manifest entry may serve only some.
    Channel {
        Web = "web",
        Mobile = "mobile",
        Partner = "partner",
    }
}

impl Channel {
    /// `web, mobile, partner`: the channels, for messages that refuse another name.
    pub fn names() -> String {
        Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
    }
}

text_enum! {
    /// What a canary does now (stored with its rollout).
    CanaryState {
        /// Serving its share, watched.
        Running = "running",
        /// Stopped by a crossed limit: the stable version serves everyone.
        RolledBack = "rolled_back",
        /// Made the stable version: it serves everyone.
        Promoted = "promoted",
    }
}

text_enum! {
    /// What moved a rollout's history (`GET /v1/admin/rollouts`).
    RolloutEventKind {
        /// A reload of the plug-in directory was applied.
        Reload = "reload",
        /// A reload was refused (a check or the replay gate).
        Refused = "refused",
        /// A canary crossed a limit and was rolled back.
        Rollback = "rollback",
        /// A canary became the stable version.
        Promote = "promote",
    }
}

text_enum! {
    /// The API's error codes (docs/api.md, "Errors"); each has one HTTP
    /// status, in `pipeline::error::status_of`.
    ErrorCode {
        InvalidRequest = "INVALID_REQUEST",
        Unauthenticated = "UNAUTHENTICATED",
        InvalidCustomerToken = "INVALID_CUSTOMER_TOKEN",
        PaymentFailed = "PAYMENT_FAILED",
        CustomerBlocked = "CUSTOMER_BLOCKED",
        CustomerMismatch = "CUSTOMER_MISMATCH",
        CustomerNotFound = "CUSTOMER_NOT_FOUND",
        OrderNotFound = "ORDER_NOT_FOUND",
        NotFound = "NOT_FOUND",
        MethodNotAllowed = "METHOD_NOT_ALLOWED",
        OutOfStock = "OUT_OF_STOCK",
        IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
        IdempotencyInProgress = "IDEMPOTENCY_IN_PROGRESS",
        Conflict = "CONFLICT",
        PayloadTooLarge = "PAYLOAD_TOO_LARGE",
        UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
        EmptyCart = "EMPTY_CART",
        UnknownSku = "UNKNOWN_SKU",
        InvalidCoupon = "INVALID_COUPON",
        QuantityTooLarge = "QUANTITY_TOO_LARGE",
        RuleFailed = "RULE_FAILED",
        DependencyUnavailable = "DEPENDENCY_UNAVAILABLE",
        StageTimeout = "STAGE_TIMEOUT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_schema_spells_each_enum_as_the_bodies_do() {
        use utoipa::PartialSchema as _;
        let texts = |schema| serde_json::to_value(schema).unwrap()["enum"].clone();
        assert_eq!(
            texts(OrderStatus::schema()),
            serde_json::json!(["PENDING", "CONFIRMED", "PAYMENT_FAILED", "CANCELLED", "PAYMENT_PENDING"])
        );
        assert_eq!(texts(PaymentStatus::schema()), serde_json::json!(["PENDING", "INTENT", "CAPTURED", "FAILED"]));
        assert_eq!(texts(EventKind::schema()), serde_json::json!(["audit", "analytics", "fraud"]));
        assert_eq!(texts(Slot::schema()), serde_json::json!(["discount", "warehouse", "fraud"]));
    }

    #[test]
    fn every_value_reads_back_from_its_text() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), *status);
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for kind in EventKind::ALL {
            assert_eq!(kind.to_string().parse::<EventKind>().unwrap(), *kind);
        }
        assert!("confirmed".parse::<OrderStatus>().is_err());
    }
}
