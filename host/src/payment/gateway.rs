//! The boundary between the order pipeline and a payment gateway: what is
//! asked, what comes back, and the two ways it can fail.

use std::fmt;

use async_trait::async_trait;

/// One attempt to capture money for an order.
///
/// The `idempotency_key` is what makes retries safe: a gateway charges at most
/// once per key, however many times the same request is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Stable for the life of the order (the same on every attempt and after a
    /// crash), so the gateway can recognise a repeated request.
    pub idempotency_key: String,
    /// The order being paid for, for the gateway's records.
    pub order_id: String,
    /// The amount to capture, in minor units of `currency`.
    pub amount_cents: u64,
    /// ISO 4217 code of the deployment's currency, e.g. `USD`.
    pub currency: String,
    /// The customer's payment token. A secret: never logged, and redacted from
    /// this type's `Debug` output.
    pub token: String,
}

// Manual so that a `{:?}` in a log line or a panic message cannot leak the
// payment token.
impl fmt::Debug for ChargeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChargeRequest")
            .field("idempotency_key", &self.idempotency_key)
            .field("order_id", &self.order_id)
            .field("amount_cents", &self.amount_cents)
            .field("currency", &self.currency)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A captured charge, as the gateway recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The gateway's id for the charge (`txn_…` for the sandbox).
    pub transaction_id: String,
    /// The amount captured, in minor units.
    pub amount_cents: u64,
}

/// Why a charge (or a lookup) did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Final: the gateway refused the payment. Retrying cannot help.
    #[error("payment declined: {reason}")]
    Declined {
        /// Why, in the gateway's words (safe to show the customer).
        reason: String,
    },
    /// The outcome is unknown or the gateway is unavailable: the same request
    /// (same idempotency key) may be sent again.
    #[error("payment gateway unavailable: {reason}")]
    Transient {
        /// What went wrong (timeout, connection refused, 503, …).
        reason: String,
    },
}

impl GatewayError {
    /// A final refusal.
    pub fn declined(reason: impl Into<String>) -> Self {
        GatewayError::Declined { reason: reason.into() }
    }

    /// A failure worth retrying with the same idempotency key.
    pub fn transient(reason: impl Into<String>) -> Self {
        GatewayError::Transient { reason: reason.into() }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Transient { .. })
    }

    /// The reason, whichever the kind.
    pub fn reason(&self) -> &str {
        match self {
            GatewayError::Declined { reason } | GatewayError::Transient { reason } => reason,
        }
    }
}

/// A payment gateway: the sandbox built into the host, or an external one
/// behind the HTTP adapter.
///
/// `async_trait` rather than a native `async fn` because the pipeline holds
/// the configured gateway as `Arc<dyn PaymentGateway>`.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// A short name recorded on the invoice (`"sandbox"`, `"http"`).
    fn name(&self) -> &str;

    /// Makes ONE attempt to capture `request.amount_cents`. Idempotent per
    /// `request.idempotency_key`: repeating a request whose key was already
    /// captured returns that same charge and captures nothing more.
    /// Retrying is the caller's job (see `charge_with_retries`).
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError>;

    /// Whether a charge was captured under `idempotency_key`, for reconciling
    /// orders whose outcome was lost in a crash. `Ok(None)` means "certainly
    /// not charged"; an unreachable gateway is `Err(Transient)`.
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_token() {
        let request = ChargeRequest {
            idempotency_key: "key-1".into(),
            order_id: "ord_1".into(),
            amount_cents: 1234,
            currency: "USD".into(),
            token: "tok_secret_4242".into(),
        };
        let shown = format!("{request:?} {request:#?}");
        assert!(!shown.contains("tok_secret_4242"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("key-1") && shown.contains("ord_1") && shown.contains("1234"));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(GatewayError::transient("503").is_transient());
        assert!(!GatewayError::declined("card declined").is_transient());
        assert_eq!(GatewayError::declined("card declined").reason(), "card declined");
    }
}
