//! What an order's payment came to: decided from the attempts where their
//! answers tell, resolved with the gateway where they do not.
//!
//! An attempt whose outcome is unknown (a timeout, a reset, a 5xx) may have
//! captured. Calling such an order failed would leave the customer charged
//! for an order they were told failed, so it is never guessed: the key is
//! looked up, and if no charge is found, cancelled (protocol v2), which
//! either returns a capture that raced in or guarantees that none ever
//! will. Until one of them answers, the outcome stays unknown and the
//! order stays pending.

use tokio::time::Instant;

use super::gateway::{CancelOutcome, Charge, GatewayError, PaymentGateway, RequestTrace};
use super::retry::PaymentOutcome;

/// What became of an order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Captured: the order is confirmed with this charge.
    Charged(Charge),
    /// Certainly not charged, now or later: the order fails with this reason.
    NotCharged(String),
    /// Still unknown (the gateway cannot be asked now): the order stays
    /// pending and the reconciler asks again.
    Unknown(String),
}

/// The decision a retried charge allows, resolving its outcome with the
/// gateway (before `deadline`) when the attempts leave it unknown; the
/// lookup and cancel are made for the request `trace` names, if any.
pub async fn decide(
    gateway: &dyn PaymentGateway,
    key: &str,
    trace: &RequestTrace,
    outcome: PaymentOutcome,
    deadline: Instant,
) -> Decision {
    match outcome.result {
        Ok(charge) => Decision::Charged(charge),
        Err(error @ GatewayError::Declined { .. }) => Decision::NotCharged(error.to_string()),
        // No attempt reached the gateway (refused connections, an untrusted
        // certificate): there is nothing it could capture later.
        Err(error) if !outcome.maybe_charged => Decision::NotCharged(error.to_string()),
        Err(error) => match resolve(gateway, key, trace, deadline).await {
            Decision::NotCharged(how) => Decision::NotCharged(format!("{error}; {how}")),
            decided => decided,
        },
    }
}

/// Learns what the gateway did under `key`: a lookup first (a charge found
/// decides it), then a cancel, both made for the request `trace` names
/// (none: [`RequestTrace::default`]). Calls still unanswered at `deadline`
/// leave the outcome unknown.
pub async fn resolve(gateway: &dyn PaymentGateway, key: &str, trace: &RequestTrace, deadline: Instant) -> Decision {
    let out_of_time = || GatewayError::transient("no answer before the deadline");
    let lookup =
        tokio::time::timeout_at(deadline, gateway.lookup_for(key, trace)).await.unwrap_or_else(|_| Err(out_of_time()));
    if let Ok(Some(charge)) = lookup {
        tracing::info!(idempotency_key = key, transaction_id = %charge.transaction_id, "payment outcome resolved: a lookup found the charge");
        return Decision::Charged(charge);
    }
    let cancel =
        tokio::time::timeout_at(deadline, gateway.cancel_for(key, trace)).await.unwrap_or_else(|_| Err(out_of_time()));
    match cancel {
        Ok(CancelOutcome::Captured(charge)) => {
            tracing::info!(idempotency_key = key, transaction_id = %charge.transaction_id, "payment outcome resolved: the cancel found the charge");
            Decision::Charged(charge)
        }
        Ok(CancelOutcome::Cancelled) => {
            tracing::info!(
                idempotency_key = key,
                "payment outcome resolved: the gateway cancelled the key, nothing was charged"
            );
            Decision::NotCharged("the gateway cancelled the payment; nothing was charged".into())
        }
        Err(error) => {
            let lookup = match lookup {
                Err(lookup_error) => format!("lookup: {lookup_error}; "),
                Ok(_) => String::new(),
            };
            tracing::warn!(idempotency_key = key, error = %error, "payment outcome still unknown");
            Decision::Unknown(format!("{lookup}cancel: {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::super::gateway::ChargeRequest;
    use super::*;

    /// A gateway whose lookup and cancel answer as told, counting calls
    /// and the requests they were made for.
    struct Resolver {
        lookup: Result<Option<Charge>, GatewayError>,
        cancel: Result<CancelOutcome, GatewayError>,
        calls: Mutex<Vec<&'static str>>,
        traces: Mutex<Vec<RequestTrace>>,
    }

    #[async_trait]
    impl PaymentGateway for Resolver {
        fn name(&self) -> &str {
            "resolver"
        }
        async fn charge(&self, _request: &ChargeRequest) -> Result<Charge, GatewayError> {
            unreachable!("resolution never charges")
        }
        async fn lookup(&self, _key: &str) -> Result<Option<Charge>, GatewayError> {
            self.calls.lock().unwrap().push("lookup");
            self.lookup.clone()
        }
        async fn cancel(&self, _key: &str) -> Result<CancelOutcome, GatewayError> {
            self.calls.lock().unwrap().push("cancel");
            self.cancel.clone()
        }
        async fn lookup_for(&self, key: &str, trace: &RequestTrace) -> Result<Option<Charge>, GatewayError> {
            self.traces.lock().unwrap().push(trace.clone());
            self.lookup(key).await
        }
        async fn cancel_for(&self, key: &str, trace: &RequestTrace) -> Result<CancelOutcome, GatewayError> {
            self.traces.lock().unwrap().push(trace.clone());
            self.cancel(key).await
        }
    }

    fn charge() -> Charge {
        Charge { transaction_id: "txn_9".into(), amount_cents: 100 }
    }

    fn gateway(lookup: Result<Option<Charge>, GatewayError>, cancel: Result<CancelOutcome, GatewayError>) -> Resolver {
        Resolver { lookup, cancel, calls: Mutex::new(Vec::new()), traces: Mutex::new(Vec::new()) }
    }

    fn unknown(maybe_charged: bool) -> PaymentOutcome {
        PaymentOutcome { result: Err(GatewayError::transient("timed out")), attempts: 3, maybe_charged }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_charge_found_by_the_lookup_confirms_without_a_cancel() {
        let gateway = gateway(Ok(Some(charge())), Ok(CancelOutcome::Cancelled));
        assert_eq!(
            decide(&gateway, "k", &RequestTrace::default(), unknown(true), soon()).await,
            Decision::Charged(charge())
        );
        assert_eq!(*gateway.calls.lock().unwrap(), ["lookup"]);
    }

    #[tokio::test]
    async fn no_charge_found_is_not_enough_the_key_is_cancelled_first() {
        let gateway = gateway(Ok(None), Ok(CancelOutcome::Cancelled));
        let decision = decide(&gateway, "k", &RequestTrace::default(), unknown(true), soon()).await;
        assert!(matches!(&decision, Decision::NotCharged(why) if why.contains("cancelled")), "{decision:?}");
        assert_eq!(*gateway.calls.lock().unwrap(), ["lookup", "cancel"]);
    }

    #[tokio::test]
    async fn the_lookup_and_the_cancel_are_made_for_the_request() {
        let gateway = gateway(Ok(None), Ok(CancelOutcome::Cancelled));
        let trace = RequestTrace { request_id: Some("req-9".into()), traceparent: Some("00-a-b-01".into()) };
        decide(&gateway, "k", &trace, unknown(true), soon()).await;
        assert_eq!(*gateway.traces.lock().unwrap(), [trace.clone(), trace]);
    }

    #[tokio::test]
    async fn a_capture_that_raced_in_is_returned_by_the_cancel() {
        let gateway = gateway(Ok(None), Ok(CancelOutcome::Captured(charge())));
        assert_eq!(
            decide(&gateway, "k", &RequestTrace::default(), unknown(true), soon()).await,
            Decision::Charged(charge())
        );
    }

    #[tokio::test]
    async fn a_gateway_that_cannot_answer_leaves_the_outcome_unknown() {
        let down = || Err(GatewayError::transient("503"));
        let gateway = gateway(down().map(|_: ()| None), down().map(|_: ()| CancelOutcome::Cancelled));
        let decision = decide(&gateway, "k", &RequestTrace::default(), unknown(true), soon()).await;
        assert!(matches!(&decision, Decision::Unknown(why) if why.contains("503")), "{decision:?}");
    }

    #[tokio::test]
    async fn attempts_that_never_reached_the_gateway_fail_without_asking_it() {
        let gateway = gateway(Ok(None), Ok(CancelOutcome::Cancelled));
        let never_sent = PaymentOutcome {
            result: Err(GatewayError::untrusted("unknown issuer")),
            attempts: 1,
            maybe_charged: false,
        };
        assert!(matches!(
            decide(&gateway, "k", &RequestTrace::default(), never_sent, soon()).await,
            Decision::NotCharged(_)
        ));
        let declined =
            PaymentOutcome { result: Err(GatewayError::declined("card declined")), attempts: 2, maybe_charged: true };
        assert!(matches!(
            decide(&gateway, "k", &RequestTrace::default(), declined, soon()).await,
            Decision::NotCharged(_)
        ));
        assert!(gateway.calls.lock().unwrap().is_empty());
    }
}
