//! The adapter for an external payment gateway speaking JSON over HTTP.
//!
//! # Wire protocol (v1)
//!
//! This is what a gateway must implement to be used by SmartMart. All bodies
//! are JSON (`Content-Type: application/json`), UTF-8; amounts are integers in
//! minor units. `{base}` is the configured base URL, which may carry a path
//! prefix (`https://pay.example/gw` → `https://pay.example/gw/v1/charges`).
//!
//! ## Capture: `POST {base}/v1/charges`
//!
//! Header `Idempotency-Key: <key>` (also in the body), body:
//!
//! ```json
//! {"idempotency_key": "…", "order_id": "ord_…", "amount_cents": 90000, "currency": "USD", "token": "tok_…"}
//! ```
//!
//! The gateway MUST charge at most once per idempotency key: a request whose
//! key was already captured answers the SAME charge again (same
//! `transaction_id`) without charging; SmartMart retries with the same key
//! after timeouts and transient failures, and after its own crashes.
//!
//! | answer | meaning to SmartMart |
//! |---|---|
//! | `200`/`201` `{"transaction_id": "…", "amount_cents": 90000, "status": "CAPTURED"}` | captured |
//! | `402` `{"error": "card declined"}` (or `{"error": {"message": "…"}}`) | declined: final, never retried |
//! | `408`, `425`, `429`, any `5xx` | transient: retried with the same key |
//! | any other status (other `4xx`, `3xx`, …) | rejected: final (`rejected by gateway: <status>`) |
//! | a `2xx` whose body is not the object above, or whose `amount_cents` differs from the request | transient (`unreadable answer`): the outcome is unknown, so the same key is tried again |
//! | no answer within the configured timeout, or no connection | transient |
//!
//! ## Reconciliation: `GET {base}/v1/charges/{idempotency_key}`
//!
//! The key is one percent-encoded path segment. `200` with the capture body
//! above if a charge was captured under that key, `404` if none was (the
//! gateway keeps no record of declined or failed attempts). Anything else is
//! transient. SmartMart uses it after a crash to learn whether an order in
//! flight was charged.
//!
//! SmartMart never logs the payment token; the gateway should not either.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderValue, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway};

/// The longest reason taken from a gateway's answer; a misbehaving gateway
/// must not fill our logs and invoices.
const MAX_REASON_CHARS: usize = 200;

/// The HTTP gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpGatewayError {
    /// The base URL is not an absolute `http(s)` URL.
    #[error("invalid payment gateway URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as configured.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// reqwest could not build its client.
    #[error("cannot build the payment gateway's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A [`PaymentGateway`] reached over HTTP with the protocol of this module.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    base_url: Url,
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    idempotency_key: &'a str,
    order_id: &'a str,
    amount_cents: u64,
    currency: &'a str,
    token: &'a str,
}

#[derive(Deserialize)]
struct CapturedBody {
    transaction_id: String,
    amount_cents: u64,
    status: String,
}

/// How a status code of a charge answer is read, before its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Success,
    Declined,
    Transient,
    Rejected,
}

fn classify(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        _ if status.is_success() => StatusClass::Success,
        402 => StatusClass::Declined,
        // Request Timeout, Too Early, Too Many Requests: "try again later".
        408 | 425 | 429 => StatusClass::Transient,
        _ if status.is_server_error() => StatusClass::Transient,
        _ => StatusClass::Rejected,
    }
}

impl HttpGateway {
    /// A gateway at `base_url` (absolute `http`/`https`, optionally with a
    /// path prefix). `timeout` bounds each attempt as a whole, from connecting
    /// to reading the answer; an attempt that outlasts it is transient.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, HttpGatewayError> {
        let invalid =
            |reason: &str| HttpGatewayError::InvalidBaseUrl { url: base_url.to_owned(), reason: reason.into() };
        let parsed = Url::parse(base_url).map_err(|error| invalid(&error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if parsed.cannot_be_a_base() {
            return Err(invalid("not a base URL"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirected POST may turn into a GET or be replayed elsewhere;
            // a gateway has no business redirecting a charge.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(HttpGatewayError::Client)?;
        Ok(HttpGateway { client, base_url: parsed })
    }

    /// `{base}/v1/charges[/{key}]`, each segment percent-encoded.
    fn endpoint(&self, key: Option<&str>) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            // `new` refused URLs that cannot be a base, so this always runs.
            segments.pop_if_empty().extend(["v1", "charges"]);
            if let Some(key) = key {
                segments.push(key);
            }
        }
        url
    }

    fn user_agent() -> HeaderValue {
        HeaderValue::from_static(concat!("smartmart/", env!("CARGO_PKG_VERSION")))
    }
}

/// A transport failure (no answer): always transient, because the request may
/// or may not have reached the gateway and the same key can be tried again.
fn transport_error(what: &str, error: reqwest::Error) -> GatewayError {
    // `without_url`: the base URL may carry credentials; the message names the call instead.
    let reason = if error.is_timeout() {
        format!("{what}: timed out")
    } else if error.is_connect() {
        format!("{what}: cannot connect to the gateway")
    } else {
        format!("{what}: {}", error.without_url())
    };
    GatewayError::transient(reason)
}

/// The reason a gateway gave in `{"error": "…"}` or `{"error": {"message": "…"}}`.
fn reason_from_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let reason = error.as_str().or_else(|| error.get("message")?.as_str())?.trim();
    (!reason.is_empty()).then(|| reason.chars().take(MAX_REASON_CHARS).collect())
}

/// Reads a capture body; `None` if it is not one.
fn captured_from_body(body: &[u8]) -> Option<Charge> {
    let body: CapturedBody = serde_json::from_slice(body).ok()?;
    (body.status == "CAPTURED" && !body.transaction_id.is_empty())
        .then_some(Charge { transaction_id: body.transaction_id, amount_cents: body.amount_cents })
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    fn name(&self) -> &str {
        "http"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        // A key that cannot travel in a header would fail on every attempt.
        let key_header = HeaderValue::from_str(&request.idempotency_key)
            .map_err(|_| GatewayError::declined("idempotency key is not a valid HTTP header value"))?;
        let body = ChargeBody {
            idempotency_key: &request.idempotency_key,
            order_id: &request.order_id,
            amount_cents: request.amount_cents,
            currency: &request.currency,
            token: &request.token,
        };
        let response = self
            .client
            .post(self.endpoint(None))
            .header(USER_AGENT, Self::user_agent())
            .header("Idempotency-Key", key_header)
            .json(&body)
            .send()
            .await
            .map_err(|error| transport_error("POST /v1/charges", error))?;
        let status = response.status();
        let answer = response.bytes().await.map_err(|error| transport_error("POST /v1/charges", error))?;

        match classify(status) {
            StatusClass::Success => match captured_from_body(&answer) {
                Some(charge) if charge.amount_cents == request.amount_cents => Ok(charge),
                Some(charge) => Err(GatewayError::transient(format!(
                    "unreadable answer: captured {} cents for a charge of {}",
                    charge.amount_cents, request.amount_cents
                ))),
                None => Err(GatewayError::transient(format!("unreadable answer ({status})"))),
            },
            StatusClass::Declined => Err(GatewayError::declined(
                reason_from_body(&answer).unwrap_or_else(|| format!("declined by gateway: {status}")),
            )),
            StatusClass::Transient => Err(GatewayError::transient(match reason_from_body(&answer) {
                Some(reason) => format!("gateway answered {status}: {reason}"),
                None => format!("gateway answered {status}"),
            })),
            StatusClass::Rejected => Err(GatewayError::declined(format!("rejected by gateway: {status}"))),
        }
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
        let response = self
            .client
            .get(self.endpoint(Some(idempotency_key)))
            .header(USER_AGENT, Self::user_agent())
            .send()
            .await
            .map_err(|error| transport_error("GET /v1/charges/{key}", error))?;
        let status = response.status();
        match status {
            StatusCode::OK => {
                let answer = response.bytes().await.map_err(|error| transport_error("GET /v1/charges/{key}", error))?;
                captured_from_body(&answer)
                    .map(Some)
                    .ok_or_else(|| GatewayError::transient(format!("unreadable answer ({status})")))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(GatewayError::transient(format!("lookup answered {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_protocol_says() {
        let class = |code: u16| classify(StatusCode::from_u16(code).unwrap());
        assert_eq!(class(200), StatusClass::Success);
        assert_eq!(class(201), StatusClass::Success);
        assert_eq!(class(402), StatusClass::Declined);
        for code in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(class(code), StatusClass::Transient, "{code}");
        }
        for code in [301, 400, 401, 403, 404, 409, 422] {
            assert_eq!(class(code), StatusClass::Rejected, "{code}");
        }
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_the_key() {
        let gateway = HttpGateway::new("http://pay.example:8080/gw/?x=1", Duration::from_secs(1)).unwrap();
        assert_eq!(gateway.endpoint(None).as_str(), "http://pay.example:8080/gw/v1/charges");
        assert_eq!(gateway.endpoint(Some("a/b c?")).as_str(), "http://pay.example:8080/gw/v1/charges/a%2Fb%20c%3F");
        let bare = HttpGateway::new("http://pay.example", Duration::from_secs(1)).unwrap();
        assert_eq!(bare.endpoint(None).as_str(), "http://pay.example/v1/charges");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for url in ["pay.example", "ftp://pay.example", "mailto:pay@example.com", ""] {
            let error = HttpGateway::new(url, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(error, HttpGatewayError::InvalidBaseUrl { .. }), "{url}: {error}");
        }
    }

    #[test]
    fn reasons_are_read_from_either_error_shape_and_bounded() {
        assert_eq!(reason_from_body(br#"{"error":"card declined"}"#).as_deref(), Some("card declined"));
        assert_eq!(
            reason_from_body(br#"{"error":{"code":"X","message":"insufficient funds"}}"#).as_deref(),
            Some("insufficient funds")
        );
        assert_eq!(reason_from_body(b"<html>"), None);
        assert_eq!(reason_from_body(br#"{"error":""}"#), None);
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(1000));
        assert_eq!(reason_from_body(long.as_bytes()).unwrap().len(), MAX_REASON_CHARS);
    }

    #[test]
    fn only_a_captured_status_with_an_id_is_a_charge() {
        let charge = captured_from_body(br#"{"transaction_id":"t1","amount_cents":5,"status":"CAPTURED"}"#);
        assert_eq!(charge, Some(Charge { transaction_id: "t1".into(), amount_cents: 5 }));
        assert_eq!(captured_from_body(br#"{"transaction_id":"t1","amount_cents":5,"status":"PENDING"}"#), None);
        assert_eq!(captured_from_body(br#"{"transaction_id":"","amount_cents":5,"status":"CAPTURED"}"#), None);
        assert_eq!(captured_from_body(br#"{"transaction_id":"t1","amount_cents":-5,"status":"CAPTURED"}"#), None);
        assert_eq!(captured_from_body(b"not json"), None);
    }
}
