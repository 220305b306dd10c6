//! Random requests at the real service: random bodies (JSON values, bytes,
//! truncated and broken valid bodies), random paths (mutations of the real
//! routes, random segments, percent-encoded junk) and random headers
//! (Authorization, X-Customer-Token, Idempotency-Key, Content-Type) at every
//! endpoint of one running server.
//!
//! Whatever arrives: never a 5xx, never a dropped connection, every non-2xx
//! answer a JSON error body, and nothing written. Every body generated for
//! a write is invalid by construction (so even with valid credentials no
//! write may succeed), and the orders, carts, stock, idempotency records,
//! payments and catalog are compared after every single request.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Map, Value, json};

use crate::support::SECRET;
use crate::support::server::{
    ADMIN_KEY, MOBILE_KEY, Snapshot, TestServer, WEB_KEY, now_secs, send, signed_token, token, try_send,
};

/// The routes of the service, with `{…}` parameters.
const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/v1/carts/{customer}"),
    ("GET", "/v1/carts/{customer}"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders/{order}"),
    ("PUT", "/v1/admin/customers/{customer}"),
    ("PUT", "/v1/admin/products/{sku}"),
    ("PUT", "/v1/admin/warehouses/{warehouse}"),
    ("PUT", "/v1/admin/stock/{warehouse}/{sku}"),
    ("GET", "/v1/admin/stock/{sku}"),
    ("GET", "/v1/admin/plugins"),
    ("GET", "/v1/admin/experiments"),
    ("GET", "/v1/admin/fraud/escalations"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/admin"),
    ("GET", "/admin/dashboard.js"),
    ("GET", "/admin/dashboard.css"),
];

/// One valid body per kind of write, with its required fields: the base
/// of the broken ones.
fn valid_bodies() -> Vec<(Value, Vec<&'static str>)> {
    let location = json!({"lat": 12.97, "lon": 77.59});
    vec![
        (json!({"items": [{"sku": "TV-55-OLED", "quantity": 1}, {"sku": "HDMI-2M", "quantity": 2}]}), vec!["items"]),
        (
            json!({"customer_id": "C-1001", "coupon_code": "WELCOME10", "payment": {"token": "tok_ok"}, "ship_to": location}),
            vec!["customer_id", "payment"],
        ),
        (
            json!({"name": "N", "email": "e@example.com", "phone": "1", "tier": "GOLD", "status": "ACTIVE", "location": location}),
            vec!["name", "email", "phone", "tier", "status", "location"],
        ),
        (json!({"name": "N", "category": "c", "unit_price_cents": 100}), vec!["name", "category", "unit_price_cents"]),
        (json!({"name": "N", "location": location}), vec!["name", "location"]),
        (json!({"on_hand": 5}), vec!["on_hand"]),
    ]
}

/// A request to throw.
#[derive(Clone)]
struct Case {
    method: Method,
    path: String,
    authorization: Option<Vec<u8>>,
    customer_token: Option<Vec<u8>>,
    idempotency_key: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// Headers and body shown as text (lossy), so a failing case reads well.
impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |bytes: &Option<Vec<u8>>| bytes.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
        f.debug_struct("Case")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("authorization", &text(&self.authorization))
            .field("customer_token", &text(&self.customer_token))
            .field("idempotency_key", &text(&self.idempotency_key))
            .field("content_type", &text(&self.content_type))
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

fn ascii(max: usize) -> BoxedStrategy<String> {
    proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).expect("a valid regex").boxed()
}

/// Header values: printable ASCII, some with bytes above 0x7F (valid in
/// HTTP, not text), and a few near-misses of the real values.
fn header_bytes(real: Vec<String>) -> BoxedStrategy<Option<Vec<u8>>> {
    let real_strategy = proptest::sample::select(real.clone()).prop_map(|s| s.into_bytes());
    let near_miss = (proptest::sample::select(real), 0usize..64, any::<u8>()).prop_map(|(s, at, byte)| {
        let mut bytes = s.into_bytes();
        if bytes.is_empty() {
            return bytes;
        }
        let at = at % bytes.len();
        match byte % 3 {
            0 => bytes.truncate(at),
            1 => bytes[at] = b'!' + byte % 90,
            _ => bytes.insert(at, b'A' + byte % 26),
        }
        bytes
    });
    let high = proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff], 0..40);
    prop_oneof![
        2 => Just(None),
        3 => real_strategy.prop_map(Some),
        2 => near_miss.prop_map(Some),
        2 => ascii(300).prop_map(|s| Some(s.into_bytes())),
        1 => high.prop_map(Some),
    ]
    .boxed()
}

/// Mostly the right key for the route, else anything.
fn authorization(admin: bool) -> BoxedStrategy<Option<Vec<u8>>> {
    let right = format!("Bearer {}", if admin { ADMIN_KEY } else { WEB_KEY });
    let real = [WEB_KEY, MOBILE_KEY, ADMIN_KEY]
        .iter()
        .flat_map(|k| [format!("Bearer {k}"), format!("bearer  {k} "), format!("Basic {k}")])
        .chain(["Bearer".to_string(), "Bearer ".to_string()])
        .collect();
    prop_oneof![1 => Just(Some(right.into_bytes())), 1 => header_bytes(real)].boxed()
}

fn customer_token() -> BoxedStrategy<Option<Vec<u8>>> {
    let now = now_secs();
    let real = vec![
        token("C-1001"),
        token("C-1002"),
        token("C-1004"),
        token("C-0000"),
        signed_token(SECRET, &json!({"sub": "C-1001", "exp": now - 3600})),
        signed_token(b"another-secret-0123456789", &json!({"sub": "C-1001", "exp": now + 600})),
        signed_token(SECRET, &json!({"sub": 5, "exp": now + 600})),
        signed_token(SECRET, &json!({"sub": "C-1001", "exp": "tomorrow"})),
    ];
    prop_oneof![1 => Just(Some(token("C-1001").into_bytes())), 1 => header_bytes(real)].boxed()
}

fn idempotency_key() -> BoxedStrategy<Option<Vec<u8>>> {
    header_bytes(vec!["fuzz-key".into(), "k".repeat(255), "k".repeat(256), String::new(), "a b".into()])
}

fn content_type() -> BoxedStrategy<Option<Vec<u8>>> {
    let any = header_bytes(vec![
        "application/json".into(),
        "application/json; charset=utf-8".into(),
        "APPLICATION/JSON".into(),
        "text/plain".into(),
        "application/problem+json".into(),
        "multipart/form-data; boundary=x".into(),
    ]);
    prop_oneof![1 => Just(Some(b"application/json".to_vec())), 1 => any].boxed()
}

/// A path segment: a real id, junk, or percent-encoded junk (invalid UTF-8 included).
fn segment() -> BoxedStrategy<String> {
    let real = proptest::sample::select(vec![
        "C-1001",
        "C-1002",
        "C-1004",
        "C-0000",
        "TV-55-OLED",
        "HDMI-2M",
        "WH-BLR",
        "WH-NOPE",
        "ord_0",
        "..",
        ".",
    ])
    .prop_map(str::to_string);
    let junk = proptest::string::string_regex("[A-Za-z0-9._~-]{0,80}").expect("a valid regex").boxed();
    let percent = proptest::collection::vec(any::<u8>(), 1..12)
        .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect::<String>());
    let mixed = (junk.clone(), proptest::collection::vec(any::<u8>(), 1..4))
        .prop_map(|(s, bytes)| format!("{s}{}", bytes.iter().map(|b| format!("%{b:02x}")).collect::<String>()));
    prop_oneof![4 => real, 3 => junk, 2 => percent, 1 => mixed].boxed()
}

fn query() -> BoxedStrategy<String> {
    let key = proptest::sample::select(vec!["limit", "offset", "x", "limit[]", ""]);
    let value = prop_oneof![
        proptest::sample::select(vec!["1", "0", "-1", "1000", "1001", "99999999999999999999", "abc", "1e3", ""])
            .prop_map(str::to_string),
        proptest::collection::vec(any::<u8>(), 0..6)
            .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect::<String>()),
    ];
    prop_oneof![
        3 => Just(String::new()),
        2 => (key, value).prop_map(|(k, v)| format!("?{k}={v}")),
        1 => (proptest::sample::select(vec!["limit", "x"]), 0u8..4)
            .prop_map(|(k, n)| format!("?{}", (0..n).map(|i| format!("{k}={i}")).collect::<Vec<_>>().join("&"))),
    ]
    .boxed()
}

/// A parameter of `kind` (the name in the template): mostly a real id of
/// that kind, so that requests get past routing and lookups.
fn parameter(kind: &str) -> BoxedStrategy<String> {
    let real: Vec<&'static str> = match kind {
        "{customer}" => vec!["C-1001", "C-1002", "C-1004"],
        "{sku}" => vec!["TV-55-OLED", "HDMI-2M", "LIMITED-CONSOLE"],
        "{warehouse}" => vec!["WH-BLR", "WH-DEL"],
        _ => vec!["ord_0", "ord_00000000000000000000000000000000"],
    };
    prop_oneof![3 => proptest::sample::select(real).prop_map(str::to_string), 2 => segment()].boxed()
}

/// A real route with random parameters, then maybe mutated: (the route's
/// method, whether it is an admin route, the path with a query).
fn path() -> BoxedStrategy<(String, bool, String)> {
    proptest::sample::select(ROUTES.to_vec())
        .prop_flat_map(|(method, template)| {
            let kinds: Vec<&str> = template.split('/').filter(|p| p.starts_with('{')).collect();
            let parameters: Vec<BoxedStrategy<String>> = kinds.iter().map(|k| parameter(k)).collect();
            (Just((method, template)), parameters, 0u8..20, segment(), query())
        })
        .prop_map(|((method, template), parameters, mutation, extra, query)| {
            let mut filled = String::new();
            let mut next = parameters.iter();
            for part in template.split('/').skip(1) {
                filled.push('/');
                if part.starts_with('{') {
                    filled.push_str(next.next().expect("a parameter per placeholder"));
                } else {
                    filled.push_str(part);
                }
            }
            let path = match mutation {
                0 => format!("{filled}/{extra}"),
                1 => filled.rsplit_once('/').map_or(filled.clone(), |(head, _)| head.to_string()),
                2 => filled.to_uppercase(),
                3 => format!("{filled}/"),
                4 => filled.replacen('/', "//", 2),
                5 => format!("/{extra}{filled}"),
                _ => filled,
            };
            (method.to_string(), template.starts_with("/v1/admin"), format!("{path}{query}"))
        })
        .boxed()
}

fn method(route_method: String) -> BoxedStrategy<Method> {
    let route = Method::from_bytes(route_method.as_bytes()).expect("a method");
    prop_oneof![
        6 => Just(route),
        1 => proptest::sample::select(vec![
            Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::PATCH, Method::HEAD, Method::OPTIONS,
        ]),
        1 => Just(Method::from_bytes(b"FUZZ").expect("an extension method")),
    ]
    .boxed()
}

/// Random JSON. Object keys never name a real field (`deny_unknown_fields`
/// refuses them), so no random value is a valid body.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        proptest::sample::select(vec![0.0, -1.0, 1e30, -1e30, 1_000_001.0, 4_294_967_296.0, 0.5])
            .prop_map(|f| json!(f)),
        ascii(40).prop_map(Value::String),
        proptest::sample::select(vec!["C-1001", "TV-55-OLED", "tok_ok", "WELCOME10", "GOLD", ""])
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("z_[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
    .boxed()
}

/// A valid body broken in one way that no endpoint accepts.
fn broken_body() -> BoxedStrategy<Value> {
    // Never valid where a string is expected (not even `null`: the coupon is optional)...
    let not_a_string =
        proptest::sample::select(vec![json!(-1), json!(0), json!(1e30), json!(true), json!([]), json!({})]);
    // ...nor where a count or an amount is.
    let not_a_count = proptest::sample::select(vec![
        json!(-1),
        json!(1e30),
        json!(1.5),
        json!("1"),
        Value::Null,
        json!(true),
        json!([]),
        json!({}),
    ]);
    let base = proptest::sample::select(valid_bodies());
    (base, 0u8..3, any::<prop::sample::Index>(), not_a_string, not_a_count, json_value())
        .prop_map(|((mut body, required), how, index, not_a_string, not_a_count, random)| {
            let object = body.as_object_mut().expect("bodies are objects");
            match how {
                // An unknown field.
                0 => {
                    object.insert("unexpected_field".into(), random);
                }
                // A required field missing.
                1 => {
                    object.remove(required[index.index(required.len())]);
                }
                // A field of the wrong type or out of range, nested ones included.
                _ => {
                    let keys: Vec<String> = object.keys().cloned().collect();
                    let key = keys[index.index(keys.len())].clone();
                    match &mut object[&key] {
                        Value::Array(items) => items[0]["quantity"] = not_a_count_or_zero(not_a_count),
                        Value::Object(inner) if inner.contains_key("lat") => {
                            inner.insert("lat".into(), json!(91));
                        }
                        Value::Object(inner) => {
                            inner.insert("token".into(), json!(""));
                        }
                        Value::String(_) => object[&key] = not_a_string,
                        other => *other = not_a_count,
                    }
                }
            }
            body
        })
        .boxed()
}

/// A quantity is never valid as `not_a_count`, nor as 0 or above 1,000,000.
fn not_a_count_or_zero(not_a_count: Value) -> Value {
    match not_a_count {
        Value::Null => json!(0),
        Value::Bool(_) => json!(1_000_001),
        other => other,
    }
}

fn body() -> BoxedStrategy<Vec<u8>> {
    let truncated =
        (proptest::sample::select(valid_bodies()), any::<prop::sample::Index>()).prop_map(|((body, _), at)| {
            let text = body.to_string().into_bytes();
            text[..at.index(text.len())].to_vec()
        });
    prop_oneof![
        1 => Just(Vec::new()),
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        2 => proptest::collection::vec(any::<u8>(), 0..200),
        2 => truncated,
        4 => broken_body().prop_map(|v| v.to_string().into_bytes()),
        1 => Just(vec![b'['; 10_000]),
        1 => Just(format!("{{\"items\": {}0{}}}", "[".repeat(200), "]".repeat(200)).into_bytes()),
    ]
    .boxed()
}

fn case() -> BoxedStrategy<Case> {
    path()
        .prop_flat_map(|(route_method, admin, path)| {
            (
                method(route_method),
                Just(path),
                authorization(admin),
                customer_token(),
                idempotency_key(),
                content_type(),
                body(),
            )
        })
        .prop_map(|(method, path, authorization, customer_token, idempotency_key, content_type, body)| Case {
            method,
            path,
            authorization,
            customer_token,
            idempotency_key,
            content_type,
            body,
        })
        .boxed()
}

/// Sends one case; checks the answer and that nothing was written.
async fn throw(
    server: &TestServer,
    baseline: &Snapshot,
    case: &Case,
    seen: &Mutex<BTreeMap<String, usize>>,
) -> Result<(), TestCaseError> {
    let mut request = server.client.request(case.method.clone(), server.url(&case.path));
    for (name, value) in [
        ("authorization", &case.authorization),
        ("x-customer-token", &case.customer_token),
        ("idempotency-key", &case.idempotency_key),
        ("content-type", &case.content_type),
    ] {
        if let Some(value) = value {
            let Ok(value) = HeaderValue::from_bytes(value) else {
                return Ok(()); // not a header value at all: nothing to send
            };
            request = request.header(name, value);
        }
    }
    let request = request.body(case.body.clone());
    let answer = try_send(request).await.map_err(|e| TestCaseError::fail(format!("transport failure: {e:?}")))?;
    *seen.lock().unwrap().entry(format!("{} {}", answer.status, answer.code())).or_default() += 1;
    prop_assert!(answer.status < 500, "{} from {case:?}: {}", answer.status, answer.text());
    let write = !matches!(case.method, Method::GET | Method::HEAD | Method::OPTIONS);
    prop_assert!(
        !(write && (200..300).contains(&answer.status)),
        "an invalid write was accepted ({}): {case:?}: {}",
        answer.status,
        answer.text()
    );
    if !(200..300).contains(&answer.status) {
        prop_assert!(answer.is_json(), "content type {:?} of {} for {case:?}", answer.content_type, answer.status);
        if case.method != Method::HEAD {
            let error = &answer.json["error"];
            prop_assert!(
                error["code"].as_str().is_some_and(|c| !c.is_empty())
                    && error["message"].as_str().is_some_and(|m| !m.is_empty()),
                "not an error body ({}) for {case:?}: {}",
                answer.status,
                answer.text()
            );
        }
    }
    let now = server.snapshot();
    prop_assert!(&now == baseline, "{case:?} ({}) wrote something: {now:?}", answer.status);
    Ok(())
}

/// 300 cases; `HTTP_FUZZ_CASES=5000` for a longer hunt.
fn fuzz_cases() -> u32 {
    std::env::var("HTTP_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300)
}

#[test]
fn random_requests_never_crash_never_5xx_and_never_write() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(async {
        let server = TestServer::start().await;
        // Carts with something in them: an order wrongly accepted would show.
        for customer in ["C-1001", "C-1002", "C-1004"] {
            assert_eq!(server.put_cart(customer, &[("TV-55-OLED", 1), ("HDMI-2M", 1)]).await.status, 200);
        }
        server
    });
    let baseline = server.snapshot();
    let orders_before = server.count("orders");
    let carts_before = server.count("carts");

    let mut runner = TestRunner::new(Config {
        cases: fuzz_cases(),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let seen = Mutex::new(BTreeMap::new());
    let result = runner.run(&case(), |case| runtime.block_on(throw(&server, &baseline, &case, &seen)));
    if let Err(e) = result {
        panic!("{e}");
    }
    // What the requests got (`--nocapture` shows it): the fuzz reaches past
    // authentication into validation.
    let seen = seen.into_inner().unwrap();
    eprintln!("answers: {seen:#?}");
    for expected in ["401 UNAUTHENTICATED", "400 INVALID_REQUEST", "404 NOT_FOUND"] {
        assert!(seen.contains_key(expected), "no {expected} in {seen:?}");
    }

    runtime.block_on(async {
        assert_eq!(server.count("orders"), orders_before);
        assert_eq!(server.count("carts"), carts_before);
        assert_eq!(server.snapshot(), baseline);
        assert!(server.charges().is_empty());
        // Still serving, and still taking orders.
        assert_eq!(send(server.request(Method::GET, "/healthz")).await.status, 200);
        let order = server
            .post_order(&json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}}), Some("after-fuzz"))
            .await;
        assert_eq!(order.status, 201, "{}", order.text());
        tokio::time::timeout(Duration::from_secs(30), server.stop()).await.expect("the server stops");
    });
}
