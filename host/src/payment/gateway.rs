//! The boundary between the order pipeline and a payment gateway: what is
//! asked, what comes back, and the two ways it can fail.

use std::fmt;
use std::time::Duration;

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
    /// The id of the request the order was placed by (`X-Request-Id` to an
    /// HTTP gateway); `None` for calls no request made (reconciliation).
    pub request_id: Option<String>,
    /// The W3C `traceparent` to send with the call, when the request came
    /// with a trace context.
    pub traceparent: Option<String>,
}

impl ChargeRequest {
    /// What ties this charge, and the lookup and cancel that may follow it,
    /// to the request it is made for.
    pub fn trace(&self) -> RequestTrace {
        RequestTrace { request_id: self.request_id.clone(), traceparent: self.traceparent.clone() }
    }
}

/// What ties a gateway call to the request it is made for: sent by the
/// HTTP gateway as the `X-Request-Id` and `traceparent` headers. Empty
/// ([`RequestTrace::default`]) for calls no request made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestTrace {
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
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
            .field("request_id", &self.request_id)
            .field("traceparent", &self.traceparent)
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

/// Why a charge (or a lookup, or a cancel) did not succeed. The three kinds
/// differ in what they say about the money, which is what decides an order:
/// a decline and a request that never reached the gateway charged nothing,
/// an unknown outcome may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Final: the gateway refused the payment. Nothing was charged and
    /// retrying cannot help.
    #[error("payment declined: {reason}")]
    Declined {
        /// Why, in the gateway's words (safe to show the customer).
        reason: String,
    },
    /// The request certainly did not reach the gateway (no connection, or a
    /// TLS handshake the host refused), so nothing was charged by it.
    #[error("payment gateway unreachable: {reason}")]
    NotCharged {
        /// What went wrong (connection refused, the certificate error, …).
        reason: String,
        /// Whether trying again may succeed: not for a certificate the host
        /// will not trust, which no retry within an order's time changes.
        retryable: bool,
        /// How long the gateway asked us to wait (`Retry-After` of a `429`).
        retry_after: Option<Duration>,
    },
    /// The outcome is unknown: the gateway may have captured (a timeout, a
    /// reset connection, a 5xx, an unreadable answer). The same request
    /// (same idempotency key) may be sent again; before an order may be
    /// called failed, the key must be resolved (looked up, then cancelled).
    #[error("payment gateway unavailable: {reason}")]
    Unknown {
        /// What went wrong.
        reason: String,
        /// How long the gateway asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
}

impl GatewayError {
    /// A final refusal.
    pub fn declined(reason: impl Into<String>) -> Self {
        GatewayError::Declined { reason: reason.into() }
    }

    /// An attempt whose outcome is unknown (the gateway may have charged);
    /// worth retrying with the same idempotency key.
    pub fn transient(reason: impl Into<String>) -> Self {
        GatewayError::Unknown { reason: reason.into(), retry_after: None }
    }

    /// A request that never reached the gateway; worth retrying.
    pub fn unreachable(reason: impl Into<String>) -> Self {
        GatewayError::NotCharged { reason: reason.into(), retryable: true, retry_after: None }
    }

    /// A request the host refused to send (an untrusted certificate): not
    /// retried.
    pub fn untrusted(reason: impl Into<String>) -> Self {
        GatewayError::NotCharged { reason: reason.into(), retryable: false, retry_after: None }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Unknown { .. } | GatewayError::NotCharged { retryable: true, .. })
    }

    /// Whether the gateway may have charged during the failed attempt.
    pub fn may_have_charged(&self) -> bool {
        matches!(self, GatewayError::Unknown { .. })
    }

    /// The wait the gateway asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Unknown { retry_after, .. } | GatewayError::NotCharged { retry_after, .. } => *retry_after,
            GatewayError::Declined { .. } => None,
        }
    }

    /// The reason, whichever the kind.
    pub fn reason(&self) -> &str {
        match self {
            GatewayError::Declined { reason }
            | GatewayError::NotCharged { reason, .. }
            | GatewayError::Unknown { reason, .. } => reason,
        }
    }

    /// A short label of the kind, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Declined { .. } => "declined",
            GatewayError::NotCharged { retryable: true, .. } => "unreachable",
            GatewayError::NotCharged { retryable: false, .. } => "untrusted",
            GatewayError::Unknown { .. } => "unknown",
        }
    }
}

/// What the gateway answered to a cancel of an idempotency key (protocol v2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// A charge was captured under the key before the cancel: here it is.
    Captured(Charge),
    /// Nothing was captured, and the key is dead: no request with it can
    /// ever capture, even one already on its way.
    Cancelled,
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

    /// Whether a charge was captured under `idempotency_key`. `Ok(None)`
    /// means "not charged so far": a request still on its way may capture
    /// later, which only [`PaymentGateway::cancel`] rules out. An
    /// unreachable gateway is an error.
    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError>;

    /// Settles the key for good: the charge captured under it, or the
    /// guarantee that none ever will be (protocol v2). Idempotent.
    async fn cancel(&self, idempotency_key: &str) -> Result<CancelOutcome, GatewayError>;

    /// [`PaymentGateway::lookup`] made for the request `trace` names (a
    /// gateway that can carry it says so to its operators; the default
    /// ignores it).
    async fn lookup_for(&self, idempotency_key: &str, trace: &RequestTrace) -> Result<Option<Charge>, GatewayError> {
        let _ = trace;
        self.lookup(idempotency_key).await
    }

    /// [`PaymentGateway::cancel`] made for the request `trace` names.
    async fn cancel_for(&self, idempotency_key: &str, trace: &RequestTrace) -> Result<CancelOutcome, GatewayError> {
        let _ = trace;
        self.cancel(idempotency_key).await
    }
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
            request_id: Some("req-1".into()),
            traceparent: None,
        };
        let shown = format!("{request:?} {request:#?}");
        assert!(!shown.contains("tok_secret_4242"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("key-1") && shown.contains("ord_1") && shown.contains("1234"));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(GatewayError::transient("503").is_transient());
        assert!(GatewayError::unreachable("refused").is_transient());
        assert!(!GatewayError::untrusted("unknown issuer").is_transient());
        assert!(!GatewayError::declined("card declined").is_transient());
        assert_eq!(GatewayError::declined("card declined").reason(), "card declined");
    }

    #[test]
    fn only_an_unknown_outcome_may_have_charged() {
        assert!(GatewayError::transient("timed out").may_have_charged());
        assert!(!GatewayError::unreachable("refused").may_have_charged());
        assert!(!GatewayError::untrusted("unknown issuer").may_have_charged());
        assert!(!GatewayError::declined("card declined").may_have_charged());
    }
}
