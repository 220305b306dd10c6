//! Logs an operator can follow, and request ids end to end: the real
//! `smartmart serve` binary with `SMARTMART_LOG_FORMAT=json` and its default
//! filter writes JSON lines only (no escape codes), and every line written
//! for a request names it; every answer carries `X-Request-Id` (the
//! client's when valid, else a generated one), every error body has it as
//! `error.request_id`; the payment gateway hears the request id and the
//! caller's trace on the charge, and on the lookup and cancel that resolve
//! an unknown outcome before the answer; a replayed `402` is the first
//! answer byte for byte; `/metrics` has the request-duration histogram and
//! the build info. In process: answers made outside the handlers (the
//! request timeout, 404, 405, 413, 415) carry the id too.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use smartmart::app::{Dataset, Engine};
use smartmart::http::{AppState, ConnectionLimits, serve_with};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::gateway::{DECLINED_TOKEN, Faults, GatewayServer, RequestKind};
use crate::support::server::{ADMIN_KEY, Answer, WEB_KEY, credentials, send, token};
use crate::support::service::{Service, free_port};
use crate::support::{bundled_plugins, demo_dataset, engine_settings};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// `POST /v1/orders` for `customer` (after filling their cart) with extra headers.
async fn order(
    client: &reqwest::Client,
    service: &Service,
    customer: &str,
    payment_token: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let cart = client
        .put(service.url(&format!("/v1/carts/{customer}")))
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token(customer))
        .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(cart.status(), 200, "cart of {customer}");
    let mut request = client
        .post(service.url("/v1/orders"))
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token(customer))
        .json(&json!({"customer_id": customer, "payment": {"token": payment_token}}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// Every gateway request of the order `order_id` carries `request_id` and
/// the caller's trace with a new parent (the service's span); returns their kinds.
fn assert_gateway_heard(gateway: &GatewayServer, order_id: &str, request_id: &str) -> Vec<RequestKind> {
    let seen = gateway.requests_for(&format!("pay_{order_id}"));
    assert!(!seen.is_empty(), "the gateway never heard of {order_id}");
    for request in &seen {
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("x-request-id").as_deref(), Some(request_id), "{:?} of {order_id}", request.kind);
        let traceparent = header("traceparent").unwrap_or_else(|| panic!("no traceparent on {:?}", request.kind));
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"), "the caller's trace: {traceparent}");
        assert!(parts[2].len() == 16 && parts[2].bytes().all(|b| b.is_ascii_hexdigit()), "{traceparent}");
        assert_ne!(parts[2], CALLER_SPAN, "the service's own span is the parent of its calls");
    }
    seen.iter().map(|r| r.kind).collect()
}

/// The service's log, once it has a line naming `request_id` (lines are
/// written as they happen; this waits out the last write).
fn log_lines_once_naming(log: &Path, request_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let bytes = std::fs::read(log).unwrap_or_default();
        assert!(!bytes.contains(&0x1b), "an escape code in the log:\n{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8(bytes).expect("the log is UTF-8");
        // Every line is one JSON object (the last may still be being written).
        let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
        let lines: Vec<Value> = complete
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(value.is_object(), "not an object: {line}");
                value
            })
            .collect();
        if lines.iter().any(|line| names_request(line, request_id)) {
            return lines;
        }
        assert!(Instant::now() < deadline, "no log line names {request_id}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a JSON log line was written for the request `request_id`.
fn names_request(line: &Value, request_id: &str) -> bool {
    line["spans"].as_array().is_some_and(|spans| spans.iter().any(|span| span["request_id"] == request_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_each_request_and_the_gateway_hears_its_id_and_trace() {
    let gateway = GatewayServer::start_http(Faults::none());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let env = [
        ("SMARTMART_LOG_FORMAT", "json".to_string()),
        // Empty: `serve`'s default filter (`warn,smartmart=info`).
        ("RUST_LOG", String::new()),
        ("SMARTMART_PAYMENT_GATEWAY_URL", gateway.url()),
    ];
    let mut service = Service::spawn_logging(&dir.path().join("data"), free_port(), &env, Some(&log));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    service.wait_ready(&client).await;
    let traceparent = traceparent();

    // A declined payment: 402, naming the request in the header and the body.
    let declined_id = "obs-declined/0001";
    let headers = [("X-Request-Id", declined_id), ("traceparent", traceparent.as_str()), ("Idempotency-Key", "obs-1")];
    let declined = order(&client, &service, "C-1001", DECLINED_TOKEN, &headers).await;
    assert_eq!(declined.status, 402, "{}", declined.text());
    assert_eq!(declined.request_id.as_deref(), Some(declined_id));
    declined.assert_error_shape();
    let declined_order = declined.json["order"]["order_id"].as_str().unwrap().to_string();

    // Its replay (same key and body, another request): the first answer byte
    // for byte, the first request's id included; the header is the replay's.
    let replay_id = "obs-replay-0001";
    let replay_headers = [("X-Request-Id", replay_id), ("Idempotency-Key", "obs-1")];
    let replayed = order(&client, &service, "C-1001", DECLINED_TOKEN, &replay_headers).await;
    assert_eq!(replayed.status, 402);
    assert_eq!(replayed.bytes, declined.bytes, "a replay is the first answer, byte for byte");
    assert_eq!(replayed.request_id.as_deref(), Some(replay_id));

    // A confirmed order with its own id.
    let confirmed_id = "obs-confirmed-0002";
    let confirmed =
        order(&client, &service, "C-1002", "tok_ok", &[("X-Request-Id", confirmed_id), ("traceparent", &traceparent)])
            .await;
    assert_eq!(confirmed.status, 201, "{}", confirmed.text());
    assert_eq!(confirmed.request_id.as_deref(), Some(confirmed_id));
    let confirmed_order = confirmed.json["order_id"].as_str().unwrap().to_string();

    // The gateway heard both requests' ids and the caller's trace.
    assert_eq!(assert_gateway_heard(&gateway, &declined_order, declined_id), [RequestKind::Charge]);
    assert_eq!(assert_gateway_heard(&gateway, &confirmed_order, confirmed_id), [RequestKind::Charge]);

    // An error without an id of the client's: a generated one, in both places.
    let nobody = send(
        client
            .post(service.url("/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token("C-NOBODY"))
            .json(&json!({"customer_id": "C-NOBODY", "payment": {"token": "tok_ok"}})),
    )
    .await;
    nobody.assert_error(404, "CUSTOMER_NOT_FOUND");
    assert!(nobody.request_id.as_deref().is_some_and(|id| id.starts_with("req_")), "{nobody:?}");

    // A malformed id is replaced, on answers and error bodies alike.
    let too_long = "r".repeat(200);
    for bad in [too_long.as_str(), "has space", ""] {
        let health = send(client.get(service.url("/healthz")).header("X-Request-Id", bad)).await;
        assert_eq!(health.status, 200);
        let id = health.request_id.clone().expect("an id on every answer");
        assert!(id != bad && id.starts_with("req_"), "{bad:?} -> {id}");
        let missing = send(client.get(service.url("/no/such/endpoint")).header("X-Request-Id", bad)).await;
        missing.assert_error(404, "NOT_FOUND");
        assert_ne!(missing.request_id.as_deref(), Some(bad));
    }

    // The request-duration histogram by route and status, and the build.
    let metrics = send(client.get(service.url("/metrics"))).await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with("smartmart_http_request_duration_seconds_bucket{")
            && l.contains(r#"route="/v1/orders""#)
            && l.contains(r#"status="402""#)),
        "{metrics}"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(metrics.lines().any(|l| l == format!(r#"smartmart_build_info{{version="{version}"}} 1"#)), "{metrics}");

    // The log: JSON lines only, no escape codes; the 402's line (the
    // declined attempt, at `info`) names the request, the order and the
    // trace; a confirmed order writes nothing at the default filter.
    let lines = log_lines_once_naming(&log, declined_id);
    let attempt = lines
        .iter()
        .find(|line| names_request(line, declined_id) && line["message"] == "payment attempt")
        .unwrap_or_else(|| panic!("no payment attempt line for {declined_id}: {lines:#?}"));
    assert_eq!(attempt["level"], "INFO");
    assert_eq!(attempt["outcome"], "declined");
    assert!(attempt["timestamp"].is_string() && attempt["target"].is_string(), "{attempt}");
    let spans = attempt["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["name"] == "request" && s["trace_id"] == TRACE_ID), "{attempt}");
    assert!(spans.iter().any(|s| s["name"] == "order" && s["order_id"] == declined_order.as_str()), "{attempt}");
    assert!(!lines.iter().any(|line| names_request(line, confirmed_id)), "a confirmed order is quiet: {lines:#?}");
    assert!(lines.iter().any(|line| line["message"] == "store open" && line["level"] == "INFO"), "start-up lines");
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lookup_and_cancel_resolving_an_order_carry_its_request_id() {
    // Every charge is captured (or declined) and then answered 503: the
    // outcome is unknown, and with one attempt allowed it is resolved at
    // once: a lookup finds the capture; a decline's key is looked up and cancelled.
    let gateway = GatewayServer::start_http(Faults { capture_then_503: 1.0, ..Faults::none() });
    let dir = tempfile::tempdir().unwrap();
    let env = [("SMARTMART_PAYMENT_GATEWAY_URL", gateway.url()), ("SMARTMART_PAYMENT_MAX_ATTEMPTS", "1".to_string())];
    let mut service = Service::spawn(&dir.path().join("data"), free_port(), &env);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    service.wait_ready(&client).await;
    let traceparent = traceparent();

    let captured_id = "obs-resolved-1";
    let captured =
        order(&client, &service, "C-1001", "tok_ok", &[("X-Request-Id", captured_id), ("traceparent", &traceparent)])
            .await;
    assert_eq!(captured.status, 201, "{}", captured.text());
    let order_id = captured.json["order_id"].as_str().unwrap();
    use RequestKind::{Cancel, Charge, Lookup};
    assert_eq!(assert_gateway_heard(&gateway, order_id, captured_id), [Charge, Lookup]);

    let cancelled_id = "obs-resolved-2";
    let headers = [("X-Request-Id", cancelled_id), ("traceparent", traceparent.as_str())];
    let cancelled = order(&client, &service, "C-1002", DECLINED_TOKEN, &headers).await;
    assert_eq!(cancelled.status, 402, "{}", cancelled.text());
    cancelled.assert_error_shape();
    assert_eq!(cancelled.json["error"]["request_id"], cancelled_id);
    let order_id = cancelled.json["order"]["order_id"].as_str().unwrap();
    assert_eq!(assert_gateway_heard(&gateway, order_id, cancelled_id), [Charge, Lookup, Cancel]);
    drop(service);
}

/// The service in process with a short request timeout and a slow cart
/// stage: answers made outside the handlers carry the request id too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_made_outside_the_handlers_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = engine_settings(dir.path(), &bundled_plugins());
    settings.faults.cart_delay = Duration::from_millis(600);
    let engine = Engine::start(settings).await.unwrap();
    Dataset::read(&demo_dataset()).unwrap().load_into(engine.store()).await.unwrap();
    let state = AppState::new(Arc::new(engine), credentials(), 4096, Duration::from_millis(150));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_with(
        listener,
        state,
        shutdown.clone(),
        Duration::from_secs(5),
        ConnectionLimits::default(),
    ));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let request = |method: Method, path: &str, id: &str| {
        client.request(method, format!("{base}{path}")).header("X-Request-Id", id.to_string())
    };

    let order = json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}});
    let cart = json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]});
    let put_cart = request(Method::PUT, "/v1/carts/C-1001", "cart")
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token("C-1001"))
        .json(&cart);
    assert_eq!(send(put_cart).await.status, 200);
    let cases: Vec<(reqwest::RequestBuilder, &str, u16, &str)> = vec![
        (
            request(Method::POST, "/v1/orders", "t-timeout")
                .bearer_auth(WEB_KEY)
                .header("X-Customer-Token", token("C-1001"))
                .json(&order),
            "t-timeout",
            504,
            "STAGE_TIMEOUT",
        ),
        (request(Method::GET, "/nowhere", "t-404"), "t-404", 404, "NOT_FOUND"),
        (request(Method::DELETE, "/v1/orders", "t-405"), "t-405", 405, "METHOD_NOT_ALLOWED"),
        (request(Method::GET, "/v1/admin/stock/HDMI-2M", "t-401"), "t-401", 401, "UNAUTHENTICATED"),
        (
            request(Method::POST, "/v1/orders", "t-413")
                .bearer_auth(WEB_KEY)
                .header("X-Customer-Token", token("C-1001"))
                .header("Content-Type", "application/json")
                .body(format!(r#"{{"customer_id": "{}"}}"#, "x".repeat(8192))),
            "t-413",
            413,
            "PAYLOAD_TOO_LARGE",
        ),
        (
            request(Method::POST, "/v1/orders", "t-415").bearer_auth(WEB_KEY).body("{}"),
            "t-415",
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (request, id, status, code) in cases {
        let answer = send(request).await;
        assert_eq!(answer.request_id.as_deref(), Some(id), "{status} {code}: {answer:?}");
        answer.assert_error(status, code);
    }
    let stock = send(request(Method::GET, "/v1/admin/stock/HDMI-2M", "t-200").bearer_auth(ADMIN_KEY)).await;
    assert_eq!((stock.status, stock.request_id.as_deref()), (200, Some("t-200")));
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
