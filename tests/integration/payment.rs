//! Payment: the HTTP adapter against a real (in-test) gateway server speaking
//! the wire protocol, and the sandbox gateway through the public API, both
//! driven by `charge_with_retries`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use smartmart::payment::{
    Charge, ChargeRequest, GatewayError, HttpGateway, HttpGatewayOptions, PaymentGateway, PaymentOutcome, RetryPolicy,
    SandboxGateway, charge_with_retries,
};

/// Short waits so that retries cost milliseconds, at most `max_attempts`.
fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(10),
        max_attempts: Some(max_attempts),
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// An answer deadline no test reaches.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(60)
}

fn request(key: &str, token: &str, amount_cents: u64) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.into(),
        order_id: format!("ord_{key}"),
        amount_cents,
        currency: "USD".into(),
        token: token.into(),
        request_id: None,
        traceparent: None,
    }
}

// ---------------------------------------------------------------------------
// An in-test gateway server implementing the protocol of `payment::http`.
// ---------------------------------------------------------------------------

/// What the test gateway does with the n-th charge request (1-based).
#[derive(Debug, Clone, Copy)]
enum Step {
    Capture,
    /// Answer this status with `{"error": "busy"}`, charging nothing.
    Fail(StatusCode),
    /// 402 with this reason, charging nothing.
    Decline(&'static str),
    /// Charge, then answer only after this long: the client has given up and
    /// the answer is lost, as with a gateway that is slow under load.
    CaptureThenStall(Duration),
    /// Charge nothing and answer 200 with a body that is not a capture.
    Malformed,
}

#[derive(Debug, Deserialize)]
struct ChargeBody {
    idempotency_key: String,
    order_id: String,
    amount_cents: u64,
    currency: String,
    token: String,
}

/// Everything the server saw and recorded.
#[derive(Default)]
struct Seen {
    /// Captured charges by idempotency key: the "money moved" record.
    ledger: HashMap<String, Charge>,
    /// The `Idempotency-Key` header of every charge request, in order.
    charge_keys: Vec<Option<String>>,
    /// Every charge body, to check what travelled.
    bodies: Vec<ChargeBody>,
}

struct GatewayState {
    script: Box<dyn Fn(u32) -> Step + Send + Sync>,
    seen: Mutex<Seen>,
}

type Shared = Arc<GatewayState>;

/// A running test gateway.
struct TestGateway {
    base_url: String,
    state: Shared,
}

impl TestGateway {
    /// Starts a gateway on `127.0.0.1:0` whose n-th charge request gets `script(n)`.
    async fn start(script: impl Fn(u32) -> Step + Send + Sync + 'static) -> TestGateway {
        let state = Arc::new(GatewayState { script: Box::new(script), seen: Mutex::default() });
        let app = Router::new()
            .route("/v1/charges", post(create_charge))
            .route("/v1/charges/{key}", get(find_charge))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        // The server lives until the test's runtime shuts down.
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestGateway { base_url: format!("http://{addr}"), state }
    }

    fn client(&self, timeout: Duration) -> HttpGateway {
        HttpGateway::new(&self.base_url, &HttpGatewayOptions { timeout, ca_file: None }).unwrap()
    }

    fn ledger(&self) -> HashMap<String, Charge> {
        self.state.seen.lock().unwrap().ledger.clone()
    }

    fn charge_keys(&self) -> Vec<Option<String>> {
        self.state.seen.lock().unwrap().charge_keys.clone()
    }
}

async fn create_charge(State(state): State<Shared>, headers: HeaderMap, Json(body): Json<ChargeBody>) -> Response {
    let header_key = headers.get("idempotency-key").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let key = body.idempotency_key.clone();
    let amount_cents = body.amount_cents;
    let (step, existing) = {
        let mut seen = state.seen.lock().unwrap();
        seen.charge_keys.push(header_key.clone());
        seen.bodies.push(body);
        let step = (state.script)(u32::try_from(seen.charge_keys.len()).unwrap());
        (step, seen.ledger.contains_key(&key))
    };
    if header_key.as_deref() != Some(key.as_str()) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "Idempotency-Key header and body differ"})))
            .into_response();
    }
    let capture = || {
        let mut seen = state.seen.lock().unwrap();
        let charge = seen
            .ledger
            .entry(key.clone())
            .or_insert_with(|| Charge { transaction_id: format!("gw_txn_{key}"), amount_cents })
            .clone();
        Json(
            json!({"transaction_id": charge.transaction_id, "amount_cents": charge.amount_cents, "status": "CAPTURED"}),
        )
    };
    match step {
        Step::Capture => {
            let status = if existing { StatusCode::OK } else { StatusCode::CREATED };
            (status, capture()).into_response()
        }
        Step::Fail(status) => (status, Json(json!({"error": "busy"}))).into_response(),
        Step::Decline(reason) => (StatusCode::PAYMENT_REQUIRED, Json(json!({"error": reason}))).into_response(),
        Step::CaptureThenStall(delay) => {
            let answer = capture();
            tokio::time::sleep(delay).await;
            (StatusCode::CREATED, answer).into_response()
        }
        Step::Malformed => (StatusCode::OK, "<html>hello</html>").into_response(),
    }
}

async fn find_charge(State(state): State<Shared>, Path(key): Path<String>) -> Response {
    match state.seen.lock().unwrap().ledger.get(&key) {
        Some(charge) => Json(
            json!({"transaction_id": charge.transaction_id, "amount_cents": charge.amount_cents, "status": "CAPTURED"}),
        )
        .into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "no such charge"}))).into_response(),
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// HttpGateway
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http_captures_on_the_first_attempt_and_sends_the_protocol_body() {
    let server = TestGateway::start(|_| Step::Capture).await;
    let gateway = server.client(CLIENT_TIMEOUT);
    assert_eq!(gateway.name(), "http");

    let outcome = charge_with_retries(&gateway, &request("k-first", "tok_ok", 90_000), &fast_policy(3), far()).await;

    let expected = Charge { transaction_id: "gw_txn_k-first".into(), amount_cents: 90_000 };
    assert_eq!(outcome, PaymentOutcome { result: Ok(expected.clone()), attempts: 1, maybe_charged: false });
    assert_eq!(server.ledger(), HashMap::from([("k-first".to_owned(), expected)]));
    assert_eq!(server.charge_keys(), [Some("k-first".to_owned())]);
    let seen = server.state.seen.lock().unwrap();
    let body = &seen.bodies[0];
    assert_eq!(
        (body.idempotency_key.as_str(), body.order_id.as_str(), body.amount_cents, body.currency.as_str()),
        ("k-first", "ord_k-first", 90_000, "USD")
    );
    assert_eq!(body.token, "tok_ok", "the gateway, and only the gateway, receives the token");
}

#[tokio::test]
async fn http_retries_503_with_the_same_key_and_charges_once() {
    let server =
        TestGateway::start(|n| if n <= 2 { Step::Fail(StatusCode::SERVICE_UNAVAILABLE) } else { Step::Capture }).await;
    let gateway = server.client(CLIENT_TIMEOUT);

    let outcome = charge_with_retries(&gateway, &request("k-retry", "tok_ok", 1_500), &fast_policy(3), far()).await;

    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.result, Ok(Charge { transaction_id: "gw_txn_k-retry".into(), amount_cents: 1_500 }));
    assert_eq!(server.ledger().len(), 1, "exactly one charge recorded");
    assert_eq!(server.charge_keys(), vec![Some("k-retry".to_owned()); 3]);
}

#[tokio::test]
async fn http_decline_is_final_and_not_retried() {
    let server = TestGateway::start(|_| Step::Decline("insufficient funds")).await;
    let gateway = server.client(CLIENT_TIMEOUT);

    let outcome = charge_with_retries(&gateway, &request("k-decline", "tok_ok", 700), &fast_policy(3), far()).await;

    assert_eq!(
        outcome,
        PaymentOutcome { result: Err(GatewayError::declined("insufficient funds")), attempts: 1, maybe_charged: false }
    );
    assert_eq!(server.charge_keys().len(), 1, "one request only");
    assert!(server.ledger().is_empty());
}

#[tokio::test]
async fn http_timeout_is_transient_and_the_retry_finds_the_charge_made_by_the_lost_attempt() {
    let client_timeout = Duration::from_millis(200);
    let server =
        TestGateway::start(
            move |n| {
                if n == 1 { Step::CaptureThenStall(Duration::from_secs(5)) } else { Step::Capture }
            },
        )
        .await;
    let gateway = server.client(client_timeout);

    // One attempt alone: the answer never comes in time.
    let single = charge_with_retries(&gateway, &request("k-slow", "tok_ok", 2_000), &fast_policy(1), far()).await;
    assert_eq!(single.attempts, 1);
    assert!(single.maybe_charged, "a timed-out attempt may have charged");
    let Err(GatewayError::Unknown { reason, .. }) = single.result else { panic!("expected unknown: {single:?}") };
    assert!(reason.contains("timed out"), "{reason}");

    // The pipeline retries with the same key: the gateway answers the charge
    // the lost attempt made, and nothing is charged twice.
    let retried = charge_with_retries(&gateway, &request("k-slow", "tok_ok", 2_000), &fast_policy(3), far()).await;
    assert_eq!(
        retried,
        PaymentOutcome {
            result: Ok(Charge { transaction_id: "gw_txn_k-slow".into(), amount_cents: 2_000 }),
            attempts: 1,
            maybe_charged: false
        }
    );
    assert_eq!(server.ledger().len(), 1);
    assert_eq!(server.charge_keys(), vec![Some("k-slow".to_owned()); 2]);
}

#[tokio::test]
async fn http_timeouts_are_retried_within_one_charge() {
    let server =
        TestGateway::start(
            move |n| {
                if n <= 2 { Step::CaptureThenStall(Duration::from_secs(5)) } else { Step::Capture }
            },
        )
        .await;
    let gateway = server.client(Duration::from_millis(150));

    let outcome = charge_with_retries(&gateway, &request("k-slow3", "tok_ok", 10), &fast_policy(3), far()).await;

    assert_eq!(
        outcome,
        PaymentOutcome {
            result: Ok(Charge { transaction_id: "gw_txn_k-slow3".into(), amount_cents: 10 }),
            attempts: 3,
            maybe_charged: true
        }
    );
    assert_eq!(server.ledger().len(), 1);
}

#[tokio::test]
async fn http_gateway_down_fails_every_attempt_as_never_sent() {
    // A port with nothing listening: bind, take the port, let go.
    let port = crate::support::ports::free_port();
    let gateway = HttpGateway::new(
        &format!("http://127.0.0.1:{port}"),
        &HttpGatewayOptions { timeout: CLIENT_TIMEOUT, ca_file: None },
    )
    .unwrap();

    let outcome = charge_with_retries(&gateway, &request("k-down", "tok_ok", 100), &fast_policy(4), far()).await;

    assert_eq!(outcome.attempts, 4);
    assert!(!outcome.maybe_charged, "a refused connection sent nothing");
    assert!(matches!(&outcome.result, Err(GatewayError::NotCharged { retryable: true, .. })), "{outcome:?}");
    assert!(matches!(gateway.lookup("k-down").await, Err(GatewayError::NotCharged { .. })));
}

#[tokio::test]
async fn http_malformed_answers_are_transient_and_other_4xx_are_final() {
    let server = TestGateway::start(|n| match n {
        1 => Step::Malformed,
        2 => Step::Fail(StatusCode::BAD_REQUEST),
        3 => Step::Fail(StatusCode::TOO_MANY_REQUESTS),
        _ => Step::Capture,
    })
    .await;
    let gateway = server.client(CLIENT_TIMEOUT);

    let malformed = gateway.charge(&request("k-odd", "tok_ok", 5)).await;
    assert_eq!(malformed, Err(GatewayError::transient("POST /v1/charges: unreadable answer (200 OK)")));
    let rejected = gateway.charge(&request("k-odd", "tok_ok", 5)).await;
    assert_eq!(rejected, Err(GatewayError::declined("rejected by gateway: 400 Bad Request")));
    let throttled = gateway.charge(&request("k-odd", "tok_ok", 5)).await;
    assert_eq!(
        throttled,
        Err(GatewayError::NotCharged {
            reason: "POST /v1/charges: gateway answered 429 Too Many Requests".into(),
            retryable: true,
            retry_after: None
        })
    );
    assert!(server.ledger().is_empty());
}

#[tokio::test]
async fn http_lookup_finds_captured_keys_only() {
    let server = TestGateway::start(|_| Step::Capture).await;
    let gateway = server.client(CLIENT_TIMEOUT);
    let charged = gateway.charge(&request("k/look up", "tok_ok", 4_200)).await.unwrap();

    assert_eq!(gateway.lookup("k/look up").await, Ok(Some(charged)));
    assert_eq!(gateway.lookup("k-never").await, Ok(None));
}

// ---------------------------------------------------------------------------
// SandboxGateway
// ---------------------------------------------------------------------------

/// A sandbox gateway whose ledger is in a store in `dir`.
fn sandbox_in(dir: &tempfile::TempDir) -> SandboxGateway {
    let store = smartmart::store::Store::open(&dir.path().join("smartmart.sqlite"), &Default::default()).unwrap();
    SandboxGateway::new(store)
}

#[tokio::test]
async fn sandbox_tokens_behave_as_the_contract_says() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox_in(&dir);
    assert_eq!(sandbox.name(), "sandbox");
    let policy = fast_policy(3);

    let ok = charge_with_retries(&sandbox, &request("ok", "tok_ok", 100), &policy, far()).await;
    assert_eq!(ok.attempts, 1);
    let ok = ok.result.unwrap();
    assert!(ok.transaction_id.starts_with("txn_"), "{ok:?}");
    assert_eq!(ok.amount_cents, 100);

    let other = charge_with_retries(&sandbox, &request("other", "tok_visa_4242", 200), &policy, far()).await;
    assert_eq!((other.attempts, other.result.as_ref().map(|c| c.amount_cents)), (1, Ok(200)));

    let declined = charge_with_retries(&sandbox, &request("decline", "tok_decline", 300), &policy, far()).await;
    assert_eq!(
        declined,
        PaymentOutcome { result: Err(GatewayError::declined("card declined")), attempts: 1, maybe_charged: false }
    );

    let down = charge_with_retries(&sandbox, &request("down", "tok_down", 400), &policy, far()).await;
    assert_eq!((down.attempts, down.maybe_charged), (3, false));
    assert!(matches!(down.result, Err(GatewayError::NotCharged { .. })), "{down:?}");

    let invalid = charge_with_retries(&sandbox, &request("invalid", "4242-4242", 500), &policy, far()).await;
    assert_eq!(
        invalid,
        PaymentOutcome {
            result: Err(GatewayError::declined("invalid payment token")),
            attempts: 1,
            maybe_charged: false
        }
    );

    let keys: Vec<String> = sandbox.charges().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["ok", "other"], "only captures are in the ledger");
}

#[tokio::test]
async fn sandbox_transient_2_captures_on_the_third_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox_in(&dir);

    let outcome = charge_with_retries(&sandbox, &request("t2", "tok_transient_2", 999), &fast_policy(3), far()).await;

    assert_eq!(outcome.attempts, 3);
    let charge = outcome.result.unwrap();
    assert_eq!(sandbox.charges(), vec![("t2".to_owned(), charge)]);
}

#[tokio::test]
async fn sandbox_transient_3_outlasts_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox_in(&dir);

    let outcome = charge_with_retries(&sandbox, &request("t3", "tok_transient_3", 999), &fast_policy(3), far()).await;

    assert_eq!(outcome.attempts, 3);
    assert!(matches!(outcome.result, Err(GatewayError::Unknown { .. })), "{outcome:?}");
    assert!(sandbox.charges().is_empty(), "nothing charged");
    assert_eq!(sandbox.lookup("t3").await, Ok(None));
    // The fourth attempt for that key (say, a later retry) captures.
    let fourth = sandbox.charge(&request("t3", "tok_transient_3", 999)).await.unwrap();
    assert_eq!(sandbox.lookup("t3").await, Ok(Some(fourth)));
}

#[tokio::test]
async fn sandbox_charging_a_key_twice_returns_the_same_charge_and_records_one() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox_in(&dir);

    let first = sandbox.charge(&request("twice", "tok_ok", 1_234)).await.unwrap();
    let second = sandbox.charge(&request("twice", "tok_ok", 1_234)).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(sandbox.charges(), vec![("twice".to_owned(), first)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sandbox_concurrent_charges_of_one_key_record_one_charge() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = sandbox_in(&dir);

    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move { sandbox.charge(&request("race", "tok_ok", 50)).await })
        })
        .collect();
    let mut ids = Vec::new();
    for attempt in attempts {
        ids.push(attempt.await.unwrap().unwrap().transaction_id);
    }

    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(sandbox.charges().len(), 1);
}

#[tokio::test]
async fn sandbox_ledger_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let charge = {
        let sandbox = sandbox_in(&dir);
        sandbox.charge(&request("durable", "tok_ok", 4_321)).await.unwrap()
    };

    let reopened = sandbox_in(&dir);

    assert_eq!(reopened.charges(), vec![("durable".to_owned(), charge.clone())]);
    assert_eq!(reopened.lookup("durable").await, Ok(Some(charge.clone())));
    assert_eq!(reopened.lookup("never").await, Ok(None));
    // A retry after the "crash" returns the recorded charge, not a new one.
    assert_eq!(reopened.charge(&request("durable", "tok_ok", 4_321)).await, Ok(charge));
    assert_eq!(reopened.charges().len(), 1);
}
