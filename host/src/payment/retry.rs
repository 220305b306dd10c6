//! Retrying a charge within a time budget: exponential backoff with full
//! jitter, `Retry-After` honoured, the same idempotency key every time so
//! that the gateway charges at most once.
//!
//! The budget is in time, not in attempts: a gateway that answers 503 for a
//! second is bridged, whatever its answers cost, and an order never waits
//! past its answer deadline for one more attempt.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};

/// How hard to try before giving up on a gateway that keeps failing transiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// New attempts start only within this long of the first
    /// (`SMARTMART_PAYMENT_RETRY_BUDGET_MS`); it lies within the stage
    /// timeout, so that the outcome can still be resolved before the answer.
    pub budget: Duration,
    /// An optional cap on attempts, the first included
    /// (`SMARTMART_PAYMENT_MAX_ATTEMPTS`); `None`: as many as the budget
    /// allows. `Some(0)` is treated as `1`: a charge is always attempted.
    pub max_attempts: Option<u32>,
    /// The ceiling of the first wait; each later ceiling doubles.
    pub base_delay: Duration,
    /// No backoff is ever longer than this (a `Retry-After` may be).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 2.5 s of retries, 50 ms base, 1 s cap: a 1 s burst of 503s is
    /// bridged, and with the default 2 s gateway timeout and 5 s stage
    /// timeout a last attempt still leaves time to resolve its outcome.
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_millis(2_500),
            max_attempts: None,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The longest wait after the `failures`-th failed attempt (1-based):
    /// `min(max_delay, base_delay × 2^(failures − 1))`.
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The actual wait after the `failures`-th failed attempt: uniformly random
    /// in `0..=backoff_ceiling(failures)` ("full jitter"), so that orders that
    /// failed together against a struggling gateway do not retry in lockstep.
    pub fn backoff(&self, failures: u32) -> Duration {
        let ceiling = u64::try_from(self.backoff_ceiling(failures).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=ceiling))
    }
}

/// The end of a retried charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    /// The last attempt's answer: a capture, a decline, or the failure that
    /// outlasted the budget.
    pub result: Result<Charge, GatewayError>,
    /// How many attempts were made (recorded on the invoice).
    pub attempts: u32,
    /// Whether any attempt's outcome was unknown, so that the gateway may
    /// hold a charge under the key although the last attempt says nothing
    /// of it: such a failure must be resolved with the gateway (lookup,
    /// cancel) before the order may be called failed.
    pub maybe_charged: bool,
}

/// Charges `request` through `gateway`, retrying transient failures while
/// `policy.budget` lasts (and `policy.max_attempts`, if set). A decline, or a
/// certificate the host will not trust, is final at once. No attempt runs
/// past `deadline`: one still unanswered then has an unknown outcome. Every
/// attempt sends the very same request, idempotency key included, so a
/// retry after a lost answer cannot charge twice.
///
/// Emits one `tracing` event per attempt with the order id, the attempt number
/// and its outcome (never the payment token): `debug` for a capture (the
/// usual case: one line per order would flood the log), `info` for a
/// decline, `warn` for a failure.
pub async fn charge_with_retries(
    gateway: &dyn PaymentGateway,
    request: &ChargeRequest,
    policy: &RetryPolicy,
    deadline: Instant,
) -> PaymentOutcome {
    let max_attempts = policy.max_attempts.map_or(u32::MAX, |cap| cap.max(1));
    let budget_ends = (Instant::now() + policy.budget).min(deadline);
    let mut attempts = 0;
    let mut maybe_charged = false;
    loop {
        attempts += 1;
        let result = match tokio::time::timeout_at(deadline, gateway.charge(request)).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::transient("no answer before the order's answer deadline")),
        };
        maybe_charged |= matches!(&result, Err(error) if error.may_have_charged());
        let wait = match &result {
            Err(error) if error.is_transient() && attempts < max_attempts => {
                let wait = policy.backoff(attempts).max(error.retry_after().unwrap_or_default());
                (Instant::now() + wait < budget_ends).then_some(wait)
            }
            _ => None,
        };
        log_attempt(gateway.name(), request, attempts, &result, wait.is_some());
        match wait {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return PaymentOutcome { result, attempts, maybe_charged },
        }
    }
}

fn log_attempt(
    gateway: &str,
    request: &ChargeRequest,
    attempt: u32,
    result: &Result<Charge, GatewayError>,
    retry: bool,
) {
    let order_id = request.order_id.as_str();
    let key = request.idempotency_key.as_str();
    match result {
        Ok(charge) => debug!(
            order_id,
            gateway,
            idempotency_key = key,
            attempt,
            outcome = "captured",
            transaction_id = charge.transaction_id.as_str(),
            "payment attempt"
        ),
        // A decline is the customer's business outcome, not a fault of ours.
        Err(GatewayError::Declined { reason }) => info!(
            order_id,
            gateway,
            idempotency_key = key,
            attempt,
            outcome = "declined",
            reason = reason.as_str(),
            "payment attempt"
        ),
        Err(error) => warn!(
            order_id,
            gateway,
            idempotency_key = key,
            attempt,
            outcome = error.kind(),
            reason = error.reason(),
            retry,
            "payment attempt"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::super::gateway::CancelOutcome;
    use super::*;

    /// An answer of the script: given at once, or never (the attempt hangs).
    enum Step {
        Answer(Result<Charge, GatewayError>),
        Hang,
    }

    /// Answers from a script, remembering when each call came and with which key.
    struct Scripted {
        steps: Mutex<VecDeque<Step>>,
        calls: Mutex<Vec<(Instant, String)>>,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Result<Charge, GatewayError>>) -> Self {
            Self::steps(answers.into_iter().map(Step::Answer))
        }

        fn steps(steps: impl IntoIterator<Item = Step>) -> Self {
            Scripted { steps: Mutex::new(steps.into_iter().collect()), calls: Mutex::new(Vec::new()) }
        }

        fn calls(&self) -> Vec<(Instant, String)> {
            self.calls.lock().unwrap().clone()
        }

        /// The waits between consecutive calls.
        fn gaps(&self) -> Vec<Duration> {
            self.calls().windows(2).map(|pair| pair[1].0 - pair[0].0).collect()
        }
    }

    #[async_trait]
    impl PaymentGateway for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
            self.calls.lock().unwrap().push((Instant::now(), request.idempotency_key.clone()));
            let step = self.steps.lock().unwrap().pop_front();
            match step {
                Some(Step::Answer(answer)) => answer,
                Some(Step::Hang) => std::future::pending().await,
                None => Err(GatewayError::transient("script exhausted")),
            }
        }

        async fn lookup(&self, _idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
            Ok(None)
        }

        async fn cancel(&self, _idempotency_key: &str) -> Result<CancelOutcome, GatewayError> {
            Ok(CancelOutcome::Cancelled)
        }
    }

    fn request() -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "order-key-1".into(),
            order_id: "ord_1".into(),
            amount_cents: 5000,
            currency: "USD".into(),
            token: "tok_ok".into(),
            request_id: None,
            traceparent: None,
        }
    }

    fn captured() -> Result<Charge, GatewayError> {
        Ok(Charge { transaction_id: "txn_1".into(), amount_cents: 5000 })
    }

    fn transient() -> Result<Charge, GatewayError> {
        Err(GatewayError::transient("503"))
    }

    fn refused() -> Result<Charge, GatewayError> {
        Err(GatewayError::unreachable("connection refused"))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let ms = |n| policy.backoff_ceiling(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5), ms(6)], [50, 100, 200, 400, 800, 1000]);
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(policy.backoff_ceiling(200), Duration::from_secs(1));
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jittered_waits_stay_within_the_ceiling_and_vary() {
        let policy = RetryPolicy::default();
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(3)).collect();
        assert!(waits.iter().all(|wait| *wait <= Duration::from_millis(200)), "{waits:?}");
        let first = waits[0];
        assert!(waits.iter().any(|wait| *wait != first), "full jitter must not be constant");
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_same_key_until_captured() {
        tokio::time::pause();
        let gateway = Scripted::new([transient(), refused(), captured()]);
        let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default(), far()).await;

        assert_eq!(outcome, PaymentOutcome { result: captured(), attempts: 3, maybe_charged: true });
        let keys: Vec<String> = gateway.calls().into_iter().map(|(_, key)| key).collect();
        assert_eq!(keys, ["order-key-1", "order-key-1", "order-key-1"]);
        let gaps = gateway.gaps();
        assert!(gaps[0] <= Duration::from_millis(50), "{gaps:?}");
        assert!(gaps[1] <= Duration::from_millis(100), "{gaps:?}");
    }

    #[tokio::test]
    async fn a_decline_or_an_untrusted_certificate_is_never_retried() {
        tokio::time::pause();
        for final_error in [GatewayError::declined("card declined"), GatewayError::untrusted("unknown issuer")] {
            let gateway = Scripted::new([Err(final_error.clone()), captured()]);
            let started = Instant::now();
            let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default(), far()).await;

            assert_eq!(outcome.result, Err(final_error));
            assert_eq!((outcome.attempts, outcome.maybe_charged), (1, false));
            assert_eq!(gateway.calls().len(), 1);
            assert_eq!(started.elapsed(), Duration::ZERO, "no backoff after a final answer");
        }
    }

    #[tokio::test]
    async fn retries_stop_when_the_budget_is_spent_not_after_a_count() {
        tokio::time::pause();
        let gateway = Scripted::new(std::iter::repeat_with(transient).take(1000));
        let policy = RetryPolicy { budget: Duration::from_secs(3), ..RetryPolicy::default() };
        let started = Instant::now();
        let outcome = charge_with_retries(&gateway, &request(), &policy, far()).await;

        assert!(outcome.attempts > 3, "a budget in time allows more than three attempts: {}", outcome.attempts);
        assert!(outcome.maybe_charged);
        let last_call = gateway.calls().last().unwrap().0;
        assert!(last_call - started < Duration::from_secs(3), "no attempt starts after the budget");
        assert_eq!(started.elapsed(), last_call - started, "no wait after the last attempt");
    }

    #[tokio::test]
    async fn a_one_second_burst_of_failures_is_bridged() {
        tokio::time::pause();
        // Failures for the first second of the order, then a capture.
        struct Burst(Instant);
        #[async_trait]
        impl PaymentGateway for Burst {
            fn name(&self) -> &str {
                "burst"
            }
            async fn charge(&self, _request: &ChargeRequest) -> Result<Charge, GatewayError> {
                if self.0.elapsed() < Duration::from_secs(1) { transient() } else { captured() }
            }
            async fn lookup(&self, _key: &str) -> Result<Option<Charge>, GatewayError> {
                Ok(None)
            }
            async fn cancel(&self, _key: &str) -> Result<CancelOutcome, GatewayError> {
                Ok(CancelOutcome::Cancelled)
            }
        }
        for _ in 0..50 {
            let outcome = charge_with_retries(&Burst(Instant::now()), &request(), &RetryPolicy::default(), far()).await;
            assert_eq!(outcome.result, captured());
        }
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        tokio::time::pause();
        let asks_to_wait =
            Err(GatewayError::Unknown { reason: "503".into(), retry_after: Some(Duration::from_secs(2)) });
        let gateway = Scripted::new([asks_to_wait, captured()]);
        let policy = RetryPolicy { budget: Duration::from_secs(3), ..RetryPolicy::default() };
        let outcome = charge_with_retries(&gateway, &request(), &policy, far()).await;

        assert_eq!(outcome.result, captured());
        assert!(gateway.gaps()[0] >= Duration::from_secs(2), "{:?}", gateway.gaps());
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_ends_the_retries() {
        tokio::time::pause();
        let asks_to_wait =
            Err(GatewayError::Unknown { reason: "503".into(), retry_after: Some(Duration::from_secs(30)) });
        let gateway = Scripted::new([asks_to_wait.clone(), captured()]);
        let started = Instant::now();
        let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default(), far()).await;

        assert_eq!((outcome.result, outcome.attempts), (asks_to_wait, 1));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn only_unknown_outcomes_mark_the_payment_as_maybe_charged() {
        tokio::time::pause();
        let policy = RetryPolicy { max_attempts: Some(3), ..RetryPolicy::default() };
        let never_sent = Scripted::new([refused(), refused(), refused()]);
        let outcome = charge_with_retries(&never_sent, &request(), &policy, far()).await;
        assert_eq!((outcome.attempts, outcome.maybe_charged), (3, false));

        let once_unknown = Scripted::new([transient(), refused(), refused()]);
        let outcome = charge_with_retries(&once_unknown, &request(), &policy, far()).await;
        assert_eq!((outcome.attempts, outcome.maybe_charged), (3, true));
    }

    #[tokio::test]
    async fn an_attempt_still_unanswered_at_the_deadline_has_an_unknown_outcome() {
        tokio::time::pause();
        let gateway = Scripted::steps([Step::Hang]);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(4);
        let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default(), deadline).await;

        assert!(matches!(outcome.result, Err(GatewayError::Unknown { .. })), "{:?}", outcome.result);
        assert!(outcome.maybe_charged);
        assert_eq!(outcome.attempts, 1);
        // The timer wheel rounds to the next millisecond.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_secs(4) && elapsed < Duration::from_millis(4_010), "{elapsed:?}");
    }

    #[tokio::test]
    async fn an_attempt_cap_still_applies_and_zero_means_one() {
        tokio::time::pause();
        let gateway = Scripted::new([transient(), transient(), transient(), captured()]);
        let policy = RetryPolicy { max_attempts: Some(2), ..RetryPolicy::default() };
        let outcome = charge_with_retries(&gateway, &request(), &policy, far()).await;
        assert_eq!((outcome.result, outcome.attempts), (transient(), 2));

        let gateway = Scripted::new([transient(), captured()]);
        let policy = RetryPolicy { max_attempts: Some(0), ..RetryPolicy::default() };
        let outcome = charge_with_retries(&gateway, &request(), &policy, far()).await;
        assert_eq!((outcome.result, outcome.attempts), (transient(), 1));
    }
}
