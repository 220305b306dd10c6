//! Retrying a charge: bounded attempts, exponential backoff with full jitter,
//! the same idempotency key every time so that the gateway charges at most once.

use std::time::Duration;

use tracing::{info, warn};

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};

/// How hard to try before giving up on a gateway that keeps failing transiently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (configured by
    /// `SMARTMART_PAYMENT_MAX_ATTEMPTS`). `0` is treated as `1`: a charge is
    /// always attempted.
    pub max_attempts: u32,
    /// The ceiling of the first wait; each later ceiling doubles.
    pub base_delay: Duration,
    /// No wait is ever longer than this, however many attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 25 ms base, 1 s cap: at most ~75 ms of waiting in total, so
    /// a failing gateway does not hold an order's stock for long.
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(25), max_delay: Duration::from_secs(1) }
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
    /// The last attempt's answer: a capture, a decline, or the transient
    /// failure that outlasted the retries.
    pub result: Result<Charge, GatewayError>,
    /// How many attempts were made (recorded on the invoice).
    pub attempts: u32,
}

/// Charges `request` through `gateway`, retrying transient failures up to
/// `policy.max_attempts` attempts in total. A decline is final and never
/// retried. Every attempt sends the very same request, idempotency key
/// included, so a retry after a lost answer cannot charge twice.
///
/// Emits one `tracing` event per attempt with the order id, the attempt number
/// and its outcome (never the payment token).
pub async fn charge_with_retries(
    gateway: &dyn PaymentGateway,
    request: &ChargeRequest,
    policy: &RetryPolicy,
) -> PaymentOutcome {
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = gateway.charge(request).await;
        let retry = matches!(&result, Err(error) if error.is_transient()) && attempt < max_attempts;
        log_attempt(gateway.name(), request, attempt, &result, retry);
        if !retry {
            return PaymentOutcome { result, attempts: attempt };
        }
        tokio::time::sleep(policy.backoff(attempt)).await;
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
        Ok(charge) => info!(
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
        Err(GatewayError::Transient { reason }) => warn!(
            order_id,
            gateway,
            idempotency_key = key,
            attempt,
            outcome = "transient",
            reason = reason.as_str(),
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
    use tokio::time::Instant;

    use super::*;

    /// Answers from a script, remembering when each call came and with which key.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Charge, GatewayError>>>,
        calls: Mutex<Vec<(Instant, String)>>,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Result<Charge, GatewayError>>) -> Self {
            Scripted { answers: Mutex::new(answers.into_iter().collect()), calls: Mutex::new(Vec::new()) }
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
            self.answers.lock().unwrap().pop_front().unwrap_or_else(|| Err(GatewayError::transient("script exhausted")))
        }

        async fn lookup(&self, _idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
            Ok(None)
        }
    }

    fn request() -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "order-key-1".into(),
            order_id: "ord_1".into(),
            amount_cents: 5000,
            currency: "USD".into(),
            token: "tok_ok".into(),
        }
    }

    fn captured() -> Result<Charge, GatewayError> {
        Ok(Charge { transaction_id: "txn_1".into(), amount_cents: 5000 })
    }

    fn transient() -> Result<Charge, GatewayError> {
        Err(GatewayError::transient("503"))
    }

    #[test]
    fn ceilings_double_from_the_base_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let ms = |n| policy.backoff_ceiling(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(7)], [25, 50, 100, 200, 400, 800, 1000]);
        // Huge attempt numbers saturate instead of overflowing.
        assert_eq!(policy.backoff_ceiling(200), Duration::from_secs(1));
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jittered_waits_stay_within_the_ceiling_and_vary() {
        let policy = RetryPolicy::default();
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(3)).collect();
        assert!(waits.iter().all(|wait| *wait <= Duration::from_millis(100)), "{waits:?}");
        let first = waits[0];
        assert!(waits.iter().any(|wait| *wait != first), "full jitter must not be constant");
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_same_key_until_captured() {
        tokio::time::pause();
        let gateway = Scripted::new([transient(), transient(), captured()]);
        let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default()).await;

        assert_eq!(outcome, PaymentOutcome { result: captured(), attempts: 3 });
        let keys: Vec<String> = gateway.calls().into_iter().map(|(_, key)| key).collect();
        assert_eq!(keys, ["order-key-1", "order-key-1", "order-key-1"]);
        let gaps = gateway.gaps();
        assert!(gaps[0] <= Duration::from_millis(25), "{gaps:?}");
        assert!(gaps[1] <= Duration::from_millis(50), "{gaps:?}");
    }

    #[tokio::test]
    async fn a_decline_is_never_retried() {
        tokio::time::pause();
        let gateway = Scripted::new([Err(GatewayError::declined("card declined")), captured()]);
        let started = Instant::now();
        let outcome = charge_with_retries(&gateway, &request(), &RetryPolicy::default()).await;

        assert_eq!(outcome.result, Err(GatewayError::declined("card declined")));
        assert_eq!(outcome.attempts, 1);
        assert_eq!(gateway.calls().len(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "no backoff after a decline");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_without_waiting_after_the_last() {
        tokio::time::pause();
        let gateway = Scripted::new([transient(), transient(), transient(), transient(), captured()]);
        let policy = RetryPolicy { max_attempts: 4, ..RetryPolicy::default() };
        let started = Instant::now();
        let outcome = charge_with_retries(&gateway, &request(), &policy).await;

        assert_eq!(outcome, PaymentOutcome { result: transient(), attempts: 4 });
        assert_eq!(gateway.calls().len(), 4);
        // Three waits (after failures 1, 2, 3), none after the last attempt.
        assert!(started.elapsed() <= Duration::from_millis(25 + 50 + 100), "{:?}", started.elapsed());
        assert_eq!(started.elapsed(), gateway.calls()[3].0 - started);
    }

    #[tokio::test]
    async fn waits_never_exceed_max_delay() {
        tokio::time::pause();
        let gateway = Scripted::new(std::iter::repeat_with(transient).take(8));
        let policy = RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(150),
        };
        let outcome = charge_with_retries(&gateway, &request(), &policy).await;

        assert_eq!(outcome.attempts, 8);
        let gaps = gateway.gaps();
        assert_eq!(gaps.len(), 7);
        assert!(gaps.iter().all(|gap| *gap <= Duration::from_millis(150)), "{gaps:?}");
    }

    #[tokio::test]
    async fn zero_max_attempts_still_attempts_once() {
        tokio::time::pause();
        let gateway = Scripted::new([transient(), captured()]);
        let policy = RetryPolicy { max_attempts: 0, ..RetryPolicy::default() };
        let outcome = charge_with_retries(&gateway, &request(), &policy).await;

        assert_eq!(outcome, PaymentOutcome { result: transient(), attempts: 1 });
    }
}
