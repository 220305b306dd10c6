//! The test payment gateway (`support::gateway`) itself, driven by a plain
//! reqwest client: its wire protocol (v1 and the v2 cancel) over HTTPS with
//! a test CA, certificate failures, and each fault it can inject, so that
//! the tests driving the real binary against it can rely on it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_rustls::rustls::CertificateError;

use crate::support::gateway::{Faults, GatewayServer, RequestKind};
use crate::support::tls::{TestCa, certificate_error, reqwest_client_without_test_ca};

/// Long enough for any answer that is not meant to be late.
const PATIENT: Duration = Duration::from_secs(5);

/// How long a test polls for something that should happen soon.
const POLL_LIMIT: Duration = Duration::from_secs(5);

/// `key` as one percent-encoded path segment.
fn segment(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The status and JSON body (`Null` if not JSON) of an answer.
async fn read(answer: reqwest::Response) -> (StatusCode, Value) {
    let status = answer.status();
    let bytes = answer.bytes().await.expect("reading the gateway's answer");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn post_charge(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    amount_cents: u64,
    token: &str,
) -> reqwest::Result<(StatusCode, Value)> {
    let body = json!({
        "idempotency_key": key,
        "order_id": format!("ord_{key}"),
        "amount_cents": amount_cents,
        "currency": "USD",
        "token": token,
    });
    let answer = client.post(format!("{base}/v1/charges")).header("Idempotency-Key", key).json(&body).send().await?;
    Ok(read(answer).await)
}

async fn lookup(client: &reqwest::Client, base: &str, key: &str) -> (StatusCode, Value) {
    let answer =
        client.get(format!("{base}/v1/charges/{}", segment(key))).send().await.expect("the lookup gets an answer");
    read(answer).await
}

async fn cancel(client: &reqwest::Client, base: &str, key: &str) -> (StatusCode, Value) {
    let answer = client
        .post(format!("{base}/v1/charges/{}/cancel", segment(key)))
        .send()
        .await
        .expect("the cancel gets an answer");
    read(answer).await
}

/// Polls `done` every 20 ms until it holds, failing the test after
/// `POLL_LIMIT`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + POLL_LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "still not so after {POLL_LIMIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().expect("a client")
}

#[tokio::test]
async fn https_capture_replay_lookup_and_cancel() {
    let ca = TestCa::new("gateway-protocol");
    let gateway = GatewayServer::start_https(ca.issue(&["localhost", "127.0.0.1"]), Faults::none());
    let base = gateway.url();
    assert!(base.starts_with("https://localhost:"), "{base}");
    let client = ca.reqwest_client(PATIENT);

    // The first capture, then the same key again: the same charge, nothing new.
    let (status, first) = post_charge(&client, &base, "k-1", 90_000, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "CAPTURED");
    assert_eq!(first["amount_cents"], 90_000);
    let transaction_id = first["transaction_id"].as_str().expect("a transaction id").to_string();
    assert!(transaction_id.starts_with("txn_"), "{transaction_id}");
    let (status, again) = post_charge(&client, &base, "k-1", 90_000, "tok_ok").await.unwrap();
    assert_eq!((status, &again), (StatusCode::OK, &first));
    // Another amount under a captured key is a conflict.
    let (status, _) = post_charge(&client, &base, "k-1", 1, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT);

    assert_eq!(lookup(&client, &base, "k-1").await, (StatusCode::OK, first.clone()));
    assert_eq!(lookup(&client, &base, "k-none").await, (StatusCode::NOT_FOUND, json!({"error": "no charge"})));
    // The IP the certificate also names works too.
    let by_ip = gateway.url_with_host("127.0.0.1");
    assert_eq!(lookup(&client, &by_ip, "k-1").await, (StatusCode::OK, first.clone()));

    // A decline records nothing; the key stays free.
    let (status, declined) = post_charge(&client, &base, "k-declined", 500, "tok_decline").await.unwrap();
    assert_eq!((status, declined), (StatusCode::PAYMENT_REQUIRED, json!({"error": "card declined"})));
    assert_eq!(lookup(&client, &base, "k-declined").await.0, StatusCode::NOT_FOUND);

    // A cancel of a key never captured kills it: a later POST captures nothing.
    let dead = "k-dead/odd key";
    let cancelled = json!({"status": "CANCELLED", "idempotency_key": dead});
    assert_eq!(cancel(&client, &base, dead).await, (StatusCode::OK, cancelled.clone()));
    assert_eq!(cancel(&client, &base, dead).await, (StatusCode::OK, cancelled.clone()), "idempotent");
    let (status, refused) = post_charge(&client, &base, dead, 700, "tok_ok").await.unwrap();
    assert_eq!((status, refused), (StatusCode::CONFLICT, json!({"error": "idempotency key cancelled"})));
    assert_eq!(lookup(&client, &base, dead).await, (StatusCode::OK, cancelled));

    // A cancel of a captured key answers the charge.
    assert_eq!(cancel(&client, &base, "k-1").await, (StatusCode::OK, first));

    // The Idempotency-Key header must match the body's.
    let mismatched = client
        .post(format!("{base}/v1/charges"))
        .header("Idempotency-Key", "k-header")
        .header("X-Request-Id", "req-42")
        .json(
            &json!({"idempotency_key": "k-body", "order_id": "o", "amount_cents": 1, "currency": "USD", "token": "t"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), StatusCode::BAD_REQUEST);

    let charges = gateway.charges();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0].idempotency_key, "k-1");
    assert_eq!(charges[0].order_id, "ord_k-1");
    assert_eq!(charges[0].transaction_id, transaction_id);
    assert_eq!(charges[0].amount_cents, 90_000);
    assert_eq!(gateway.charge("k-1").as_ref(), Some(&charges[0]));
    assert_eq!(gateway.cancelled_keys(), vec![dead.to_string()]);
    assert_eq!(gateway.posts_for("k-1"), 3);
    assert_eq!(gateway.posts_for(dead), 1);
    let kinds: Vec<RequestKind> = gateway.requests_for("k-1").iter().map(|r| r.kind).collect();
    use RequestKind::{Cancel, Charge, Lookup};
    assert_eq!(kinds, [Charge, Charge, Charge, Lookup, Lookup, Cancel]);
    let header = gateway.requests_for("k-header");
    assert_eq!(header.len(), 1);
    assert_eq!(header[0].headers.get("x-request-id").unwrap(), "req-42");

    let stats = gateway.stats();
    assert_eq!(stats.posts, 6);
    assert_eq!(stats.captures, 1);
    assert_eq!(stats.replays, 1);
    assert_eq!(stats.amount_conflicts, 1);
    assert_eq!(stats.declines, 1);
    assert_eq!(stats.refused_cancelled, 1);
    assert_eq!(stats.keys_cancelled, 1);
    assert_eq!(stats.cancels, 3);
    assert_eq!(stats.lookups, 5);
    assert_eq!(stats.bad_requests, 1);
}

#[tokio::test]
async fn https_refused_when_the_ca_is_not_trusted_or_the_name_is_wrong() {
    let ca = TestCa::new("trusted");
    let gateway = GatewayServer::start_https(ca.issue(&["localhost"]), Faults::none());

    // Clients that do not trust the CA: another test CA's, the system's roots.
    let strangers = [TestCa::new("stranger").reqwest_client(PATIENT), reqwest_client_without_test_ca(PATIENT)];
    for client in &strangers {
        let error = post_charge(client, &gateway.url(), "k-untrusted", 100, "tok_ok").await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
        let certificate = certificate_error(&error).unwrap_or_else(|| panic!("not a certificate error: {error:?}"));
        assert!(matches!(certificate, CertificateError::UnknownIssuer), "{certificate:?}");
    }

    // A certificate of the trusted CA, but for another name.
    let elsewhere = GatewayServer::start_https(ca.issue(&["other.example"]), Faults::none());
    let client = ca.reqwest_client(PATIENT);
    let error = post_charge(&client, &elsewhere.url(), "k-wrong-name", 100, "tok_ok").await.unwrap_err();
    let certificate = certificate_error(&error).unwrap_or_else(|| panic!("not a certificate error: {error:?}"));
    assert!(
        matches!(certificate, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        "{certificate:?}"
    );

    // No request got through.
    for server in [&gateway, &elsewhere] {
        assert_eq!(server.stats().posts, 0);
        assert!(server.charges().is_empty());
    }
    // The trusted client, right name: fine.
    let (status, _) = post_charge(&client, &gateway.url(), "k-trusted", 100, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
}

/// Every POST stalls 1.5 s. The margins: the request must reach the gateway
/// within `IMPATIENT`, and a cancel must follow it within 1.5 s.
fn stalling() -> Faults {
    Faults { seed: 7, stall_then_capture: 1.0, stall: Duration::from_millis(1_500), ..Faults::none() }
}

/// A client timeout well short of the stall.
const IMPATIENT: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_cancel_during_a_stall_prevents_the_capture() {
    let gateway = GatewayServer::start_http(stalling());
    let base = gateway.url();

    let impatient = http_client(IMPATIENT);
    let post = {
        let base = base.clone();
        tokio::spawn(async move { post_charge(&impatient, &base, "k-stalled", 2_500, "tok_ok").await })
    };
    // As soon as the gateway holds the request (stalling), cancel: the cancel wins.
    eventually("the POST reaches the gateway", || gateway.stats().stalls == 1).await;
    let client = http_client(PATIENT);
    let cancelled = json!({"status": "CANCELLED", "idempotency_key": "k-stalled"});
    assert_eq!(cancel(&client, &base, "k-stalled").await, (StatusCode::OK, cancelled.clone()));
    let error = post.await.unwrap().unwrap_err();
    assert!(error.is_timeout(), "{error:?}");

    // The stalled capture reaches the ledger after its stall, and is refused.
    eventually("the stalled capture is refused", || gateway.stats().refused_cancelled == 1).await;
    assert!(gateway.charges().is_empty(), "{:?}", gateway.charges());
    assert_eq!(lookup(&client, &base, "k-stalled").await, (StatusCode::OK, cancelled));
    let stats = gateway.stats();
    assert_eq!((stats.stalls, stats.captures, stats.stalled_captures), (1, 0, 0));
}

#[tokio::test]
async fn a_stalled_capture_happens_after_the_client_gave_up() {
    let gateway = GatewayServer::start_http(stalling());
    let base = gateway.url();

    let impatient = http_client(IMPATIENT);
    let error = post_charge(&impatient, &base, "k-late", 2_500, "tok_ok").await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    let client = http_client(PATIENT);
    eventually("the stalled capture happens", || gateway.charge("k-late").is_some()).await;
    let (status, found) = lookup(&client, &base, "k-late").await;
    assert_eq!((status, &found["status"], &found["amount_cents"]), (StatusCode::OK, &json!("CAPTURED"), &json!(2_500)));

    // A patient retry stalls too, then answers the same charge.
    let (status, replayed) = post_charge(&client, &base, "k-late", 2_500, "tok_ok").await.unwrap();
    assert_eq!((status, replayed), (StatusCode::OK, found));
    assert_eq!(gateway.charges().len(), 1);
    assert_eq!(gateway.posts_for("k-late"), 2);
    let stats = gateway.stats();
    assert_eq!((stats.stalls, stats.captures, stats.stalled_captures, stats.replays), (2, 1, 1, 1));
}

#[tokio::test]
async fn a_reset_after_capture_loses_the_answer_but_not_the_charge() {
    let gateway = GatewayServer::start_http(Faults { reset_after_capture: 1.0, ..Faults::none() });
    let base = gateway.url();
    let client = http_client(PATIENT);

    let error = post_charge(&client, &base, "k-reset", 4_200, "tok_ok").await.unwrap_err();
    assert!(!error.is_timeout() && !error.is_connect(), "a transport error after sending: {error:?}");
    assert_eq!(gateway.charge("k-reset").map(|c| c.amount_cents), Some(4_200));
    let (status, found) = lookup(&client, &base, "k-reset").await;
    assert_eq!((status, &found["status"]), (StatusCode::OK, &json!("CAPTURED")));
    // A retry captures nothing more (and loses its answer again).
    post_charge(&client, &base, "k-reset", 4_200, "tok_ok").await.unwrap_err();
    assert_eq!(gateway.charges().len(), 1);
    let stats = gateway.stats();
    assert_eq!((stats.resets, stats.captures, stats.replays), (2, 1, 1));
}

#[tokio::test]
async fn a_503_after_capture_still_charged() {
    let gateway = GatewayServer::start_http(Faults { capture_then_503: 1.0, ..Faults::none() });
    let base = gateway.url();
    let client = http_client(PATIENT);

    let (status, _) = post_charge(&client, &base, "k-503", 300, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gateway.charge("k-503").map(|c| c.amount_cents), Some(300));
    let (status, found) = lookup(&client, &base, "k-503").await;
    assert_eq!((status, &found["amount_cents"]), (StatusCode::OK, &json!(300)));
    assert_eq!(gateway.stats().captures_then_503, 1);
}

#[tokio::test]
async fn bursts_of_503_come_and_go() {
    let faults = Faults {
        burst_503: Some((Duration::from_millis(400), Duration::from_millis(200))),
        burst_retry_after: Some(1),
        ..Faults::none()
    };
    let gateway = GatewayServer::start_http(faults);
    let base = gateway.url();
    let client = http_client(PATIENT);

    // Seen: a burst 503, then a capture after it.
    let mut refused = Vec::new();
    let mut captured_after_burst = false;
    let deadline = Instant::now() + POLL_LIMIT;
    for n in 0.. {
        assert!(Instant::now() < deadline, "no 503 then capture within {POLL_LIMIT:?}: refused {refused:?}");
        let key = format!("k-burst-{n}");
        let answer = client
            .post(format!("{base}/v1/charges"))
            .header("Idempotency-Key", &key)
            .json(
                &json!({"idempotency_key": key, "order_id": "o", "amount_cents": 10, "currency": "USD", "token": "t"}),
            )
            .send()
            .await
            .unwrap();
        match answer.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.headers().get("retry-after").unwrap(), "1");
                refused.push(key);
            }
            StatusCode::CREATED if !refused.is_empty() => captured_after_burst = true,
            StatusCode::CREATED => {}
            other => panic!("unexpected {other}"),
        }
        if captured_after_burst {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The burst did nothing: none of the refused keys was captured.
    for key in &refused {
        assert!(gateway.charge(key).is_none(), "{key} was captured during a burst");
    }
    let stats = gateway.stats();
    assert_eq!(stats.burst_503s, refused.len() as u64);
    assert_eq!(stats.captures + stats.burst_503s, stats.posts);
}

#[tokio::test]
async fn going_down_refuses_connections_then_comes_back_on_the_same_port() {
    let gateway = GatewayServer::start_http(Faults::none());
    let base = gateway.url();
    let client = http_client(PATIENT);
    let (status, first) = post_charge(&client, &base, "k-down", 100, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CREATED);

    // Down until told otherwise: no race with the test's own pace.
    gateway.go_down(Duration::MAX).await;
    assert!(!gateway.is_up());
    // A new connection is refused.
    let fresh = http_client(PATIENT);
    let error = post_charge(&fresh, &base, "k-down", 100, "tok_ok").await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    // The open connection of the first client was dropped: it fails too.
    post_charge(&client, &base, "k-down", 100, "tok_ok").await.unwrap_err();

    gateway.come_back().await;
    assert!(gateway.is_up());
    assert_eq!(gateway.url(), base);
    let (status, again) = post_charge(&client, &base, "k-down", 100, "tok_ok").await.unwrap();
    assert_eq!((status, again), (StatusCode::OK, first));
    let (status, _) = post_charge(&fresh, &base, "k-after", 100, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(gateway.charges().len(), 2);

    // A timed outage ends by itself.
    gateway.go_down(Duration::from_millis(300)).await;
    gateway.wait_up().await;
    let (status, _) = post_charge(&http_client(PATIENT), &base, "k-later", 100, "tok_ok").await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(gateway.stats().downs, 2);
}

#[tokio::test]
async fn the_same_seed_meets_the_same_faults() {
    let faults = Faults { seed: 42, capture_then_503: 0.3, reset_after_capture: 0.3, ..Faults::none() };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let gateway = GatewayServer::start_http(faults.clone());
        let client = http_client(PATIENT);
        let mut outcomes = Vec::new();
        for n in 0..24 {
            let outcome = match post_charge(&client, &gateway.url(), &format!("k-{n}"), 10, "tok_ok").await {
                Ok((status, _)) => status.as_u16(),
                Err(_) => 0,
            };
            outcomes.push(outcome);
        }
        // Every POST captured, whatever the client saw.
        assert_eq!(gateway.charges().len(), 24);
        runs.push(outcomes);
    }
    assert_eq!(runs[0], runs[1]);
    for status in [0, 201, 503] {
        assert!(runs[0].contains(&status), "{status} never seen in {:?}", runs[0]);
    }
}
