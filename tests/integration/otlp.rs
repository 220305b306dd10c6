//! Traces over OTLP: the real `smartmart serve` binary with
//! `SMARTMART_OTLP_ENDPOINT` pointed at an OTLP/HTTP receiver of the test's
//! own, and the HTTP payment gateway. One order is placed with a
//! `traceparent`, then the service is stopped (SIGTERM) with the batch delay
//! set to an hour, so that the order's spans arrive with the shutdown flush. The
//! receiver decodes the protobuf bodies (`opentelemetry-proto`), and the
//! trace must be the caller's: the request span (a server span, its parent
//! the caller's span), the order below it, each pipeline stage below the
//! order, each rule call below its stage with the module's name, version and
//! digest as loaded; and the gateway heard that same trace, its parent the
//! exported request span.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::gateway::{Faults, GatewayServer};
use crate::support::server::{ADMIN_KEY, WEB_KEY, send, token};
use crate::support::service::{Service, free_port};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// The stages of an order, each a span below the order's.
const STAGES: [&str; 7] = ["validate", "cart", "discount", "inventory", "payment", "invoice", "settle"];

/// What the receiver got: the spans with their resource's attributes, and
/// every request it could not take (with why).
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    refused: Vec<String>,
}

/// An OTLP/HTTP trace receiver on a loopback port: `POST /v1/traces` with a
/// protobuf `ExportTraceServiceRequest`, answered `200` with an empty
/// `ExportTraceServiceResponse`. It listens on 127.0.0.2, not 127.0.0.1:
/// the services of other tests bind a `free_port()` on 127.0.0.1 some time
/// after it was free, and when those ports came from the kernel's
/// ephemeral range a port-0 bind in between could take one (seen once:
/// another test's readiness probes reached this receiver; `support::ports`
/// now takes them from below that range). A port of 127.0.0.2 never stands
/// in their way whatever the range.
struct Receiver {
    url: String,
    received: Arc<Mutex<Received>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.2:0").await.expect("binding the receiver on 127.0.0.2");
        let url = format!("http://{}", listener.local_addr().expect("the receiver's address"));
        let received = Arc::new(Mutex::new(Received::default()));
        let kept = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| receive(request, kept.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Receiver { url, received }
    }
}

async fn receive(
    request: Request<Incoming>,
    received: Arc<Mutex<Received>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: Vec<u8>| {
        let response = Response::builder().status(status).header("content-type", "application/x-protobuf");
        Ok(response.body(Full::new(Bytes::from(body))).expect("a response"))
    };
    let what = format!("{} {}", request.method(), request.uri().path());
    let protobuf = request.headers().get("content-type").is_some_and(|t| t == "application/x-protobuf");
    if request.method() != Method::POST || request.uri().path() != "/v1/traces" || !protobuf {
        received.lock().unwrap().refused.push(format!("{what} {:?}", request.headers()));
        return answer(StatusCode::NOT_FOUND, Vec::new());
    }
    let decoded = match request.into_body().collect().await {
        Ok(body) => ExportTraceServiceRequest::decode(body.to_bytes()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut received = received.lock().unwrap();
    match decoded {
        Ok(export) => {
            for resource_spans in export.resource_spans {
                let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                    received.spans.push((resource.clone(), span));
                }
            }
            answer(StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
        }
        Err(why) => {
            received.refused.push(format!("{what}: {why}"));
            answer(StatusCode::BAD_REQUEST, Vec::new())
        }
    }
}

/// A string attribute of a span or resource.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(text) => Some(text),
        _ => None,
    }
}

/// The one span named `name` among `spans`.
fn only<'a>(spans: &[&'a Span], name: &str) -> &'a Span {
    let named: Vec<&Span> = spans.iter().copied().filter(|s| s.name == name).collect();
    assert_eq!(named.len(), 1, "one `{name}` span in the trace, got {}: {spans:#?}", named.len());
    named[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_trace_is_exported_with_its_stages_and_rule_calls_and_the_gateway_hears_it() {
    let receiver = Receiver::start().await;
    let gateway = GatewayServer::start_http(Faults::none());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SMARTMART_PAYMENT_GATEWAY_URL", gateway.url()),
        ("SMARTMART_OTLP_ENDPOINT", receiver.url.clone()),
        // An hour: the order's spans can only leave with the shutdown flush.
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000".to_string()),
    ];
    let mut service = Service::spawn(dir.path(), free_port(), &env);
    let client = reqwest::Client::new();
    service.wait_ready(&client).await;

    let plugins = send(client.get(service.url("/v1/admin/plugins")).bearer_auth(ADMIN_KEY)).await;
    assert_eq!(plugins.status, 200, "{}", plugins.text());
    let cart = client
        .put(service.url("/v1/carts/C-1001"))
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token("C-1001"))
        .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}));
    assert_eq!(send(cart).await.status, 200);
    let order = client
        .post(service.url("/v1/orders"))
        .bearer_auth(WEB_KEY)
        .header("X-Customer-Token", token("C-1001"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}}));
    let order = send(order).await;
    assert_eq!(order.status, 201, "{}", order.text());
    let order_id = order.json["order_id"].as_str().expect("an order id").to_string();

    service.stop();

    let received = receiver.received.lock().unwrap();
    assert!(received.refused.is_empty(), "requests the receiver could not take: {:?}", received.refused);
    let (resource, _) = received.spans.first().expect("spans were exported at shutdown");
    assert_eq!(attribute(resource, "service.name"), Some("smartmart"));
    let trace: Vec<&Span> =
        received.spans.iter().map(|(_, s)| s).filter(|s| hex::encode(&s.trace_id) == TRACE_ID).collect();
    let id = |span: &Span| hex::encode(&span.span_id);
    let parent = |span: &Span| hex::encode(&span.parent_span_id);

    // The request: the server span, child of the caller's span.
    let request = only(&trace, "request");
    assert_eq!(request.kind, SpanKind::Server as i32, "{request:#?}");
    assert_eq!(parent(request), CALLER_SPAN);
    assert_eq!(attribute(&request.attributes, "route"), Some("/v1/orders"));
    // The order below it, the stages below the order.
    let order_span = only(&trace, "order");
    assert_eq!(parent(order_span), id(request));
    assert_eq!(attribute(&order_span.attributes, "order_id"), Some(order_id.as_str()));
    let stages: BTreeMap<&str, &Span> = STAGES.iter().map(|stage| (*stage, only(&trace, stage))).collect();
    for (stage, span) in &stages {
        assert_eq!(parent(span), id(order_span), "the {stage} stage is the order's");
    }

    // A rule span per loaded discount rule and the warehouse selector, below
    // its stage, naming the module as the service loaded it.
    let rules: Vec<&Span> = trace.iter().copied().filter(|s| s.name == "rule").collect();
    let loaded: Vec<Value> = plugins.json["plugins"].as_array().expect("the plugin list").clone();
    let mut expected = 0;
    for plugin in loaded.iter().filter(|p| p["slot"] != "fraud") {
        let file = plugin["file"].as_str().expect("a file");
        let stage = if plugin["slot"] == "discount" { "discount" } else { "inventory" };
        let call = rules
            .iter()
            .find(|span| attribute(&span.attributes, "rule.file") == Some(file))
            .unwrap_or_else(|| panic!("no rule span of {file}: {rules:#?}"));
        for (key, field) in [("rule.name", "name"), ("rule.version", "version"), ("rule.digest", "digest")] {
            assert_eq!(attribute(&call.attributes, key), plugin[field].as_str(), "{key} of {file}");
        }
        assert!(plugin["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{plugin}");
        assert_eq!(attribute(&call.attributes, "rule.outcome"), Some("ok"), "{file}");
        assert_eq!(parent(call), id(stages[stage]), "{file} is called in the {stage} stage");
        expected += 1;
    }
    assert_eq!(rules.len(), expected, "one span per rule call: {rules:#?}");
    assert!(expected >= 2, "the bundled rules have discount rules and a warehouse selector: {loaded:?}");

    // The gateway heard the exported trace, from the request span.
    let seen = gateway.requests_for(&format!("pay_{order_id}"));
    assert!(!seen.is_empty(), "the gateway never heard of {order_id}");
    for request_seen in &seen {
        let traceparent = request_seen.headers.get("traceparent").and_then(|v| v.to_str().ok());
        assert_eq!(traceparent, Some(format!("00-{TRACE_ID}-{}-01", id(request)).as_str()), "{:?}", request_seen.kind);
    }
}
