//! HTTP hardening: connection timeouts, customer-token lifetime, exact JSON
//! types of bodies, the channel on every event, `--dev` keys that survive a
//! restart, and an OpenAPI document that a real validator accepts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use smartmart::http::ConnectionLimits;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::SECRET;
use crate::support::raw_http::{assert_closed_by_server, healthz_on};
use crate::support::server::{MOBILE_KEY, TestServer, now_secs, send, signed_token};

fn address(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_string()
}

// ---------------------------------------------------------------------------
// Connection timeouts.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn silent_and_trickling_connections_are_closed_while_probes_keep_answering() {
    let server = TestServer::start_with_limits(ConnectionLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(3600),
        ..ConnectionLimits::default()
    })
    .await;
    let address = address(&server);
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(&address).await.expect("connecting"));
    }
    // A slowloris: half a request head, then nothing.
    let mut trickling = TcpStream::connect(&address).await.expect("connecting");
    trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").await.unwrap();

    // The probes answer while the silent connections are open.
    for path in ["/healthz", "/readyz"] {
        let answer = send(server.request(Method::GET, path)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    // And the server closes every silent connection and the trickling one.
    for (i, stream) in silent.iter_mut().enumerate() {
        assert_closed_by_server(stream, &format!("silent connection {i}")).await;
    }
    assert_closed_by_server(&mut trickling, "the trickling connection").await;
    let answer = send(server.request(Method::GET, "/healthz")).await;
    assert_eq!(answer.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_connections_are_bounded_by_the_idle_timeout_not_the_header_timeout() {
    // A short header timeout and a long idle timeout: a kept-alive
    // connection waits longer than the header timeout and still serves.
    let server = TestServer::start_with_limits(ConnectionLimits {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(3600),
        ..ConnectionLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    assert_eq!(healthz_on(&mut stream).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(healthz_on(&mut stream).await, 200, "the idle keep-alive connection was closed early");
    server.stop().await;

    // A short idle timeout: the connection is closed after its request.
    let server = TestServer::start_with_limits(ConnectionLimits {
        header_read_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_millis(500),
        ..ConnectionLimits::default()
    })
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    assert_eq!(healthz_on(&mut stream).await, 200);
    assert_closed_by_server(&mut stream, "the idle keep-alive connection").await;
    server.stop().await;
}

#[tokio::test]
async fn many_concurrent_keep_alive_connections_are_served() {
    // 200 clients, all on 127.0.0.1: no per-client cap.
    let server = TestServer::start_with_limits(ConnectionLimits {
        max_connections_per_client: Some(0),
        ..ConnectionLimits::default()
    })
    .await;
    let address = address(&server);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let address = address.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(&address).await.expect("connecting");
            for _ in 0..3 {
                assert_eq!(healthz_on(&mut stream).await, 200);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a keep-alive client");
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Customer-token lifetime.
// ---------------------------------------------------------------------------

fn token_valid_for(customer: &str, seconds: u64) -> String {
    let now = now_secs();
    signed_token(SECRET, &json!({ "sub": customer, "iat": now, "exp": now + seconds }))
}

#[tokio::test]
async fn tokens_valid_for_longer_than_the_maximum_lifetime_are_refused() {
    let server = TestServer::start().await;
    let far_future = signed_token(SECRET, &json!({ "sub": "C-1001", "exp": 253_402_300_799u64 })); // 9999-12-31
    let a_year = token_valid_for("C-1001", 365 * 24 * 3600);
    for token in [&far_future, &a_year] {
        let cart = send(server.web(Method::GET, "/v1/carts/C-1001").header("x-customer-token", token)).await;
        cart.assert_error(401, "INVALID_CUSTOMER_TOKEN").assert_names("lifetime");
        let order = send(
            server
                .web(Method::POST, "/v1/orders")
                .header("x-customer-token", token)
                .json(&json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}})),
        )
        .await;
        order.assert_error(401, "INVALID_CUSTOMER_TOKEN").assert_names("lifetime");
        let read = send(server.web(Method::GET, "/v1/orders/ord_x").header("x-customer-token", token)).await;
        read.assert_error(401, "INVALID_CUSTOMER_TOKEN").assert_names("lifetime");
    }
    // Within the default maximum (24 h): accepted.
    let day = token_valid_for("C-1001", 23 * 3600);
    let cart = send(server.web(Method::GET, "/v1/carts/C-1001").header("x-customer-token", &day)).await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    server.stop().await;

    // The maximum is configurable (e.g. for long-lived load-test tokens).
    let server = TestServer::start_with(&crate::support::bundled_plugins(), |s| {
        s.max_token_lifetime = Duration::from_secs(400 * 24 * 3600)
    })
    .await;
    let cart = send(server.web(Method::GET, "/v1/carts/C-1001").header("x-customer-token", &a_year)).await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Exact JSON types of request bodies.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn arrays_and_maps_are_refused_where_objects_and_strings_belong() {
    let server = TestServer::start().await;
    let before = server.snapshot();
    let token = crate::support::server::token("C-1001");
    let web = |method: Method, path: &str, body: &str| {
        server
            .web(method, path)
            .header("x-customer-token", &token)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let admin = |path: &str, body: String| {
        server.admin(Method::PUT, path).header("content-type", "application/json").body(body)
    };
    let customer = json!({
        "name": "X", "email": "x@example.com", "phone": "1", "tier": "GOLD", "status": "ACTIVE",
        "location": {"lat": 1.0, "lon": 2.0}
    });
    let with = |field: &str, value: Value| {
        let mut body = customer.clone();
        body[field] = value;
        body.to_string()
    };
    let cases = vec![
        (
            web(
                Method::POST,
                "/v1/orders",
                r#"{"customer_id": "C-1001", "payment": {"token": "tok_ok"}, "ship_to": [12.97, 77.59]}"#,
            ),
            "ship_to",
        ),
        (web(Method::POST, "/v1/orders", r#"{"customer_id": "C-1001", "payment": ["tok_ok"]}"#), "payment"),
        (web(Method::POST, "/v1/orders", r#"["C-1001", null, {"token": "tok_ok"}, null]"#), "body"),
        (web(Method::PUT, "/v1/carts/C-1001", r#"{"items": [["TV-55-OLED", 1]]}"#), "items[0]"),
        (web(Method::PUT, "/v1/carts/C-1001", r#"[[{"sku": "TV-55-OLED", "quantity": 1}]]"#), "body"),
        (admin("/v1/admin/customers/C-1001", with("location", json!([12.97, 77.59]))), "location"),
        (admin("/v1/admin/customers/C-1001", with("tier", json!({"GOLD": null}))), "tier"),
        (admin("/v1/admin/customers/C-1001", with("status", json!({"ACTIVE": null}))), "status"),
        (
            admin("/v1/admin/customers/C-1001", r#"["X", "x@example.com", "1", "GOLD", "ACTIVE", [1, 2]]"#.into()),
            "body",
        ),
        (admin("/v1/admin/products/TV-55-OLED", r#"["X", "x", 1]"#.into()), "body"),
        (admin("/v1/admin/warehouses/WH-BLR", r#"{"name": "X", "location": [12.97, 77.59]}"#.into()), "location"),
        (admin("/v1/admin/warehouses/WH-BLR", r#"["X", {"lat": 1, "lon": 2}]"#.into()), "body"),
        (admin("/v1/admin/stock/WH-BLR/TV-55-OLED", "[5]".into()), "body"),
    ];
    for (request, field) in cases {
        let answer = send(request).await;
        answer.assert_error(400, "INVALID_REQUEST").assert_names(field);
    }
    assert_eq!(server.snapshot(), before, "a refused body wrote something");
    assert!(server.charges().is_empty());

    // The objects themselves are still taken.
    let answer = send(admin("/v1/admin/customers/C-2001", customer.to_string())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // JSON Schema counts `25.0` as an integer: so does the service; `2.5` is no integer.
    let answer = send(admin("/v1/admin/stock/WH-BLR/HDMI-2M", r#"{"on_hand": 25.0}"#.into())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json["on_hand"], 25);
    let answer =
        send(web(Method::PUT, "/v1/carts/C-1001", r#"{"items": [{"sku": "HDMI-2M", "quantity": 2.0}]}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json["items"][0]["quantity"], 2);
    let answer = send(admin("/v1/admin/stock/WH-BLR/HDMI-2M", r#"{"on_hand": 2.5}"#.into())).await;
    answer.assert_error(400, "INVALID_REQUEST").assert_names("on_hand");
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The channel on every event.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_event_of_an_order_carries_its_channel() {
    let server = TestServer::start().await;
    let token = crate::support::server::token("C-1001");
    let cart = send(
        server
            .keyed(Method::PUT, "/v1/carts/C-1001", MOBILE_KEY)
            .header("x-customer-token", &token)
            .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]})),
    )
    .await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    let order = send(
        server
            .keyed(Method::POST, "/v1/orders", MOBILE_KEY)
            .header("x-customer-token", &token)
            .json(&json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}})),
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.text());
    assert_eq!(order.json["channel"], "mobile");
    let order_id = order.json["order_id"].as_str().unwrap().to_string();

    let events_dir = server.dir.path().join("events");
    let mut lines: Vec<Value> = Vec::new();
    for _ in 0..2400 {
        lines = ["audit", "analytics", "fraud"]
            .iter()
            .flat_map(|kind| {
                std::fs::read_to_string(events_dir.join(format!("{kind}.jsonl")))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|e| e["order_id"] == order_id.as_str())
                    .collect::<Vec<_>>()
            })
            .collect();
        if lines.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(lines.len(), 3, "the three events of {order_id} were not delivered: {lines:?}");
    for event in &lines {
        assert_eq!(event["channel"], "mobile", "{event}");
        for key in ["id", "type", "order_id", "channel", "occurred_at", "payload"] {
            assert!(event.get(key).is_some(), "{key} missing from {event}");
        }
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------
// `--dev` keys across restarts.
// ---------------------------------------------------------------------------

#[test]
fn dev_keys_are_the_same_after_a_restart_on_the_same_data_dir() {
    use smartmart::config::ServeConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = || ServeConfig { data_dir: Some(dir.path().to_path_buf()), ..ServeConfig::default() };
    let (first, generated) = smartmart::test_support::resolve_settings(config(), true).unwrap();
    assert!(generated);
    let (second, _) = smartmart::test_support::resolve_settings(config(), true).unwrap();
    let (a, b) = (&first.engine.0, &second.engine.0);
    assert_eq!(a.identity_secret, b.identity_secret);
    assert_eq!(a.experiment_key, b.experiment_key, "A/B assignment would change at every restart");
    assert_eq!(a.pseudonym_key, b.pseudonym_key);
    // Every key comes from the kept identity secret, not the throw-away one.
    let kept = first.credentials.identity_secret.as_bytes();
    assert_eq!(a.identity_secret, kept);
    assert!(a.experiment_key.starts_with(kept));

    // A configured pseudonym key is kept as configured.
    let configured = ServeConfig { pseudonym_key: Some("configured-pseudonym-key-0123".into()), ..config() };
    let (third, _) = smartmart::test_support::resolve_settings(configured, true).unwrap();
    assert_eq!(third.engine.0.pseudonym_key, b"configured-pseudonym-key-0123");
    assert_eq!(third.engine.0.experiment_key, a.experiment_key);

    // Sticky assignment: the same customers land in the same variants with the kept key.
    let other = tempfile::tempdir().unwrap();
    let (elsewhere, _) = smartmart::test_support::resolve_settings(
        ServeConfig { data_dir: Some(other.path().to_path_buf()), ..ServeConfig::default() },
        true,
    )
    .unwrap();
    assert_ne!(elsewhere.engine.0.experiment_key, a.experiment_key, "another data dir, other dev credentials");
}

// ---------------------------------------------------------------------------
// The OpenAPI document.
// ---------------------------------------------------------------------------

/// Makes sure `import <module>` works in python3, installing `package` with
/// pip if needed; panics with what to do when it cannot.
pub fn ensure_python_module(module: &str, package: &str) {
    let has = |m: &str| {
        std::process::Command::new("python3")
            .args(["-c", &format!("import {m}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has(module) {
        return;
    }
    let install = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", package])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to validate the OpenAPI document: {e}"));
    assert!(
        install.status.success() && has(module),
        "the OpenAPI document cannot be validated: `python3 -m pip install {package}` failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3_1_and_documents_every_answer() {
    let server = TestServer::start().await;
    let answer = send(server.request(Method::GET, "/openapi.json")).await;
    assert_eq!(answer.status, 200);
    let doc = answer.json.clone();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);

    // A real validator.
    ensure_python_module("openapi_spec_validator", "openapi-spec-validator");
    let file = server.dir.path().join("openapi.json");
    std::fs::write(&file, &answer.bytes).unwrap();
    let validated = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .expect("running python3");
    assert!(validated.status.success(), "invalid OpenAPI 3.1: {}", String::from_utf8_lossy(&validated.stderr));

    // Every response described; every error body the one schema.
    let error_ref = json!({"$ref": "#/components/schemas/ErrorBody"});
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    response["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
                if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                    let schema = &response["content"]["application/json"]["schema"];
                    let payment_failed = status == "402";
                    assert!(
                        *schema == error_ref || payment_failed,
                        "{method} {path} {status}: not the ErrorBody schema: {schema}"
                    );
                }
            }
            assert!(responses.contains_key("504"), "{method} {path}: 504 (the request timeout) undocumented");
            for (status, response) in responses {
                assert!(response["headers"]["X-Request-Id"].is_object(), "{method} {path} {status}: no X-Request-Id");
            }
            let headers: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| ps.iter().filter(|p| p["in"] == "header").filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            assert!(headers.contains(&"X-Request-Id") && headers.contains(&"traceparent"), "{method} {path}");
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status} undocumented");
                }
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}: 401 undocumented");
            }
        }
    }

    // The error body names its request.
    assert!(doc["components"]["schemas"]["ErrorDetail"]["properties"]["request_id"].is_object());

    // POST /v1/orders: 402 with the order, 409 with Retry-After.
    let post = &doc["paths"]["/v1/orders"]["post"]["responses"];
    assert_eq!(post["402"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/PaymentFailedBody");
    assert!(post["409"]["headers"]["Retry-After"].is_object(), "{}", post["409"]);
    assert!(post["409"]["description"].as_str().unwrap().contains("IDEMPOTENCY_IN_PROGRESS"));

    // The escalations' limit is a query parameter with its range.
    let limit = &doc["paths"]["/v1/admin/fraud/escalations"]["get"]["parameters"][0];
    assert_eq!(limit["name"], "limit");
    assert_eq!(limit["in"], "query");
    assert_eq!(limit["schema"]["maximum"], 1000);

    // The limits the server enforces are in the schemas.
    let schemas = &doc["components"]["schemas"];
    let item = &schemas["CartItemBody"]["properties"];
    assert_eq!(item["quantity"]["minimum"], 1);
    assert_eq!(item["quantity"]["maximum"], 1_000_000);
    assert!(item["sku"]["pattern"].is_string());
    assert_eq!(schemas["CartBody"]["properties"]["items"]["maxItems"], 200);
    assert!(schemas["OrderBody"]["properties"]["customer_id"]["pattern"].is_string());
    assert_eq!(schemas["PaymentBody"]["properties"]["token"]["maxLength"], 255);
    assert_eq!(schemas["CustomerBody"]["properties"]["name"]["maxLength"], 200);
    assert_eq!(schemas["CustomerBody"]["properties"]["name"]["minLength"], 1);
    assert_eq!(schemas["StockBody"]["properties"]["on_hand"]["maximum"], 4_294_967_295u64);
    assert_eq!(schemas["GeoPoint"]["properties"]["lat"]["maximum"], 90);
    for body in ["OrderBody", "PaymentBody", "CartBody", "CartItemBody", "CustomerBody", "ProductBody", "StockBody"] {
        assert_eq!(schemas[body]["additionalProperties"], false, "{body} allows unknown fields");
    }
    server.stop().await;
}
