//! The adapter for an external payment gateway speaking JSON over HTTP(S).
//!
//! # Wire protocol (v1, with the v2 additions)
//!
//! This is what a gateway must implement to be used by SmartMart. All bodies
//! are JSON (`Content-Type: application/json`), UTF-8; amounts are integers in
//! minor units. `{base}` is the configured base URL, which may carry a path
//! prefix (`https://pay.example/gw` → `https://pay.example/gw/v1/charges`).
//! HTTPS is verified against the system's trust roots plus an optional CA
//! file (`SMARTMART_PAYMENT_GATEWAY_CA_FILE`); there is no way to turn
//! verification off.
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
//! | `429` | not processed (rate limited): retried, honouring `Retry-After` |
//! | `408`, `425`, any `5xx` | outcome unknown: retried with the same key, honouring `Retry-After` |
//! | any other status (other `4xx`, `3xx`, …) | rejected: final (`rejected by gateway: <status>`) |
//! | a `2xx` whose body is not the object above, or whose `amount_cents` differs from the request | outcome unknown (`unreadable answer`) |
//! | no answer within the configured timeout, a connection reset | outcome unknown |
//! | no connection, or a certificate SmartMart does not trust | not charged (the request never left); a certificate error is not retried |
//!
//! ## Reconciliation: `GET {base}/v1/charges/{idempotency_key}`
//!
//! The key is one percent-encoded path segment. `200` with the capture body
//! above if a charge was captured under that key, `404` if none was (the
//! gateway keeps no record of declined or failed attempts), or (v2) `200`
//! `{"status": "CANCELLED"}` for a cancelled key. Anything else is an
//! unknown answer.
//!
//! ## v2: cancel: `POST {base}/v1/charges/{idempotency_key}/cancel`
//!
//! No body. Atomically, either answers the charge captured under the key
//! (`200` with the capture body) or marks the key dead and answers `200`
//! `{"status": "CANCELLED"}`; idempotent. After a cancel, no capture with
//! that key may ever happen, including one from a request that is already
//! on its way (the gateway decides at the moment it would capture, and a
//! capture with a dead key answers `409`). This is what lets SmartMart call
//! an order whose outcome it could not learn `PAYMENT_FAILED` without ever
//! leaving a charge behind: a lookup alone cannot rule out a late capture.
//! A gateway without it (`404`, `405` or `501` here) leaves such orders
//! `PAYMENT_PENDING` until a lookup finds the charge.
//!
//! ## Request ids and trace context (every endpoint)
//!
//! A call made while answering a request (the order's charge attempts, and
//! the lookup and cancel that resolve their outcome before the answer)
//! carries that request's `X-Request-Id`, and a W3C `traceparent` when the
//! request came with one (same trace id, the request's own span as the
//! parent). Calls the reconciler makes after the answer, or after a crash,
//! carry neither. Gateways may log them; they change nothing in the
//! protocol.
//!
//! SmartMart never logs the payment token; the gateway should not either.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use super::gateway::{CancelOutcome, Charge, ChargeRequest, GatewayError, PaymentGateway, RequestTrace};

/// The longest reason taken from a gateway's answer; a misbehaving gateway
/// must not fill our logs and invoices.
const MAX_REASON_CHARS: usize = 200;

/// The longest `Retry-After` honoured: a gateway asking for more is treated
/// as asking for this much (the retry budget decides whether to wait).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

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
    /// The CA file cannot be read or holds no PEM certificate.
    #[error("payment gateway CA file {path}: {reason}")]
    CaFile {
        /// The file as configured.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// reqwest could not build its client.
    #[error("cannot build the payment gateway's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A [`PaymentGateway`] reached over HTTP(S) with the protocol of this module.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    base_url: Url,
}

/// How the HTTP gateway connects.
#[derive(Debug, Clone, Default)]
pub struct HttpGatewayOptions {
    /// Bounds each request as a whole, from connecting to reading the
    /// answer (`SMARTMART_PAYMENT_GATEWAY_TIMEOUT_MS`).
    pub timeout: Duration,
    /// A PEM file of certificate authorities trusted besides the system's
    /// (`SMARTMART_PAYMENT_GATEWAY_CA_FILE`), e.g. a private CA.
    pub ca_file: Option<std::path::PathBuf>,
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

#[derive(Deserialize)]
struct StatusBody {
    status: String,
}

/// How a status code of a charge answer is read, before its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Success,
    Declined,
    /// Refused before processing ("too many requests"): nothing charged.
    NotProcessed,
    /// The gateway may or may not have acted.
    Unknown,
    Rejected,
}

fn classify(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        _ if status.is_success() => StatusClass::Success,
        402 => StatusClass::Declined,
        429 => StatusClass::NotProcessed,
        // Request Timeout, Too Early: the gateway may have started on it.
        408 | 425 => StatusClass::Unknown,
        _ if status.is_server_error() => StatusClass::Unknown,
        _ => StatusClass::Rejected,
    }
}

/// Reads every PEM certificate of `path`.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, HttpGatewayError> {
    let fail = |reason: String| HttpGatewayError::CaFile { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certificates.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

impl HttpGateway {
    /// A gateway at `base_url` (absolute `http`/`https`, optionally with a
    /// path prefix). An attempt that outlasts `options.timeout` has an
    /// unknown outcome.
    pub fn new(base_url: &str, options: &HttpGatewayOptions) -> Result<Self, HttpGatewayError> {
        let invalid =
            |reason: &str| HttpGatewayError::InvalidBaseUrl { url: base_url.to_owned(), reason: reason.into() };
        let parsed = Url::parse(base_url).map_err(|error| invalid(&error.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if parsed.cannot_be_a_base() {
            return Err(invalid("not a base URL"));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(parsed.scheme() == "https")
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // A redirected POST may turn into a GET or be replayed elsewhere;
            // a gateway has no business redirecting a charge.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &options.ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(HttpGatewayError::Client)?;
        Ok(HttpGateway { client, base_url: parsed })
    }

    /// `{base}/v1/charges[/{key}[/cancel]]`, each segment percent-encoded.
    fn endpoint(&self, key: Option<&str>, cancel: bool) -> Url {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut segments) = url.path_segments_mut() {
            // `new` refused URLs that cannot be a base, so this always runs.
            segments.pop_if_empty().extend(["v1", "charges"]);
            if let Some(key) = key {
                segments.push(key);
                if cancel {
                    segments.push("cancel");
                }
            }
        }
        url
    }

    fn user_agent() -> HeaderValue {
        HeaderValue::from_static(concat!("smartmart/", env!("CARGO_PKG_VERSION")))
    }
}

/// A transport failure (no answer). A request that never connected charged
/// nothing; one that may have been sent has an unknown outcome.
fn transport_error(what: &str, error: reqwest::Error) -> GatewayError {
    if let Some(certificate) = crate::tls::certificate_refused(&error) {
        return GatewayError::untrusted(format!("{what}: TLS certificate refused: {certificate}"));
    }
    // `without_url`: the base URL may carry credentials; the message names the call instead.
    if error.is_timeout() {
        GatewayError::transient(format!("{what}: timed out"))
    } else if error.is_connect() {
        GatewayError::unreachable(format!("{what}: cannot connect to the gateway"))
    } else {
        GatewayError::transient(format!("{what}: {}", error.without_url()))
    }
}

/// The `Retry-After` of an answer, in seconds (the HTTP-date form is not
/// used by payment gateways and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
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

/// Whether a body is v2's `{"status": "CANCELLED"}`.
fn cancelled_body(body: &[u8]) -> bool {
    serde_json::from_slice::<StatusBody>(body).is_ok_and(|body| body.status == "CANCELLED")
}

/// An answer that is neither of the expected ones: unknown, with what the
/// gateway said.
fn unexpected(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
    let reason = match reason_from_body(body) {
        Some(reason) => format!("{what}: gateway answered {status}: {reason}"),
        None => format!("{what}: gateway answered {status}"),
    };
    GatewayError::Unknown { reason, retry_after: retry_after(headers) }
}

impl HttpGateway {
    /// Sends `request` (with the headers naming the request it is made
    /// for) and reads its whole answer.
    async fn exchange(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        trace: &RequestTrace,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let mut request = request.header(USER_AGENT, Self::user_agent());
        // Checked at the HTTP edge; a value that cannot be a header is left out, never fatal.
        let headers = [("x-request-id", &trace.request_id), ("traceparent", &trace.traceparent)];
        for (name, value) in headers {
            if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.map_err(|error| transport_error(what, error))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|error| transport_error(what, error))?;
        Ok((status, headers, body.to_vec()))
    }
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    fn name(&self) -> &str {
        "http"
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        const WHAT: &str = "POST /v1/charges";
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
        let post = self.client.post(self.endpoint(None, false)).header("Idempotency-Key", key_header).json(&body);
        let (status, headers, answer) = self.exchange(WHAT, post, &request.trace()).await?;

        match classify(status) {
            StatusClass::Success => match captured_from_body(&answer) {
                Some(charge) if charge.amount_cents == request.amount_cents => Ok(charge),
                _ => Err(GatewayError::transient(format!("{WHAT}: unreadable answer ({status})"))),
            },
            StatusClass::Declined => Err(GatewayError::declined(
                reason_from_body(&answer).unwrap_or_else(|| format!("declined by gateway: {status}")),
            )),
            StatusClass::NotProcessed => Err(GatewayError::NotCharged {
                reason: format!("{WHAT}: gateway answered {status}"),
                retryable: true,
                retry_after: retry_after(&headers),
            }),
            StatusClass::Unknown => Err(unexpected(WHAT, status, &headers, &answer)),
            StatusClass::Rejected => Err(GatewayError::declined(format!("rejected by gateway: {status}"))),
        }
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Charge>, GatewayError> {
        self.lookup_for(idempotency_key, &RequestTrace::default()).await
    }

    async fn cancel(&self, idempotency_key: &str) -> Result<CancelOutcome, GatewayError> {
        self.cancel_for(idempotency_key, &RequestTrace::default()).await
    }

    async fn lookup_for(&self, idempotency_key: &str, trace: &RequestTrace) -> Result<Option<Charge>, GatewayError> {
        const WHAT: &str = "GET /v1/charges/{key}";
        let get = self.client.get(self.endpoint(Some(idempotency_key), false));
        let (status, headers, answer) = self.exchange(WHAT, get, trace).await?;
        match status {
            StatusCode::OK if cancelled_body(&answer) => Ok(None),
            StatusCode::OK => captured_from_body(&answer)
                .map(Some)
                .ok_or_else(|| GatewayError::transient(format!("{WHAT}: unreadable answer ({status})"))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(unexpected(WHAT, status, &headers, &answer)),
        }
    }

    async fn cancel_for(&self, idempotency_key: &str, trace: &RequestTrace) -> Result<CancelOutcome, GatewayError> {
        const WHAT: &str = "POST /v1/charges/{key}/cancel";
        let post = self.client.post(self.endpoint(Some(idempotency_key), true));
        let (status, headers, answer) = self.exchange(WHAT, post, trace).await?;
        match status {
            StatusCode::OK if cancelled_body(&answer) => Ok(CancelOutcome::Cancelled),
            StatusCode::OK => captured_from_body(&answer)
                .map(CancelOutcome::Captured)
                .ok_or_else(|| GatewayError::transient(format!("{WHAT}: unreadable answer ({status})"))),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                Err(GatewayError::transient(format!(
                    "{WHAT}: the gateway does not implement cancel (protocol v2; answered {status}); \
                     the outcome stays unknown until a lookup finds the charge"
                )))
            }
            _ => Err(unexpected(WHAT, status, &headers, &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> HttpGatewayOptions {
        HttpGatewayOptions { timeout: Duration::from_secs(1), ca_file: None }
    }

    #[test]
    fn statuses_are_classified_as_the_protocol_says() {
        let class = |code: u16| classify(StatusCode::from_u16(code).unwrap());
        assert_eq!(class(200), StatusClass::Success);
        assert_eq!(class(201), StatusClass::Success);
        assert_eq!(class(402), StatusClass::Declined);
        assert_eq!(class(429), StatusClass::NotProcessed);
        for code in [408, 425, 500, 502, 503, 504, 599] {
            assert_eq!(class(code), StatusClass::Unknown, "{code}");
        }
        for code in [301, 400, 401, 403, 404, 409, 422] {
            assert_eq!(class(code), StatusClass::Rejected, "{code}");
        }
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_the_key() {
        let gateway = HttpGateway::new("http://pay.example:8080/gw/?x=1", &options()).unwrap();
        assert_eq!(gateway.endpoint(None, false).as_str(), "http://pay.example:8080/gw/v1/charges");
        assert_eq!(
            gateway.endpoint(Some("a/b c?"), false).as_str(),
            "http://pay.example:8080/gw/v1/charges/a%2Fb%20c%3F"
        );
        assert_eq!(gateway.endpoint(Some("a/b"), true).as_str(), "http://pay.example:8080/gw/v1/charges/a%2Fb/cancel");
        let bare = HttpGateway::new("http://pay.example", &options()).unwrap();
        assert_eq!(bare.endpoint(None, false).as_str(), "http://pay.example/v1/charges");
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for url in ["pay.example", "ftp://pay.example", "mailto:pay@example.com", ""] {
            let error = HttpGateway::new(url, &options()).unwrap_err();
            assert!(matches!(error, HttpGatewayError::InvalidBaseUrl { .. }), "{url}: {error}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            map
        };
        assert_eq!(retry_after(&headers("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&headers(" 0 ")), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2026 07:28:00 GMT")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn a_cancelled_body_is_recognised() {
        assert!(cancelled_body(br#"{"status":"CANCELLED","idempotency_key":"k"}"#));
        assert!(!cancelled_body(br#"{"transaction_id":"t1","amount_cents":5,"status":"CAPTURED"}"#));
        assert!(!cancelled_body(b"<html>"));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = HttpGatewayOptions { ca_file: Some(dir.path().join("none.pem")), ..options() };
        assert!(matches!(HttpGateway::new("https://pay.example", &missing), Err(HttpGatewayError::CaFile { .. })));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let empty = HttpGatewayOptions { ca_file: Some(empty), ..options() };
        assert!(matches!(HttpGateway::new("https://pay.example", &empty), Err(HttpGatewayError::CaFile { .. })));
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
