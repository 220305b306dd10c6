//! Connections that cannot be starved: a flood of silent connections past
//! the descriptor limit closes the oldest of them, not the door (the real
//! binary under `ulimit -n 256`, by the connection budget and, when the
//! budget is set too high, by running out of descriptors); the idle
//! keep-alive connection is shed when no silent one is left; and a client
//! address over its connection cap is refused while another is served.
//! The header-read timeout is an hour throughout, so that only shedding can
//! make room.
#![cfg(unix)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use smartmart::http::ConnectionLimits;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::raw_http::{BACKSTOP, assert_closed_by_server, get_on, healthz_on, try_get_on};
use crate::support::server::{TestServer, WEB_KEY, token};
use crate::support::service::{Service, free_port};

/// The service's descriptor limit, and the connection budget it derives
/// from it (the limit less an eighth of it, at least 64).
const DESCRIPTOR_LIMIT: u64 = 256;
const DERIVED_BUDGET: usize = 192;
/// Silent connections the flood opens: more than the limit.
const SILENT: usize = 300;
/// Long enough that no silent connection times out while a test runs.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3600);

/// The value of `smartmart_http_connections_shed_total{reason}` in a metrics page (0 when absent).
fn shed(metrics: &str, reason: &str) -> u64 {
    let series = format!("smartmart_http_connections_shed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap_or_else(|e| panic!("{series}{value}: {e}")))
}

/// Raises this process's soft descriptor limit to its hard one: the flood
/// holds hundreds of sockets here while other tests run beside it.
fn raise_own_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) })
            .expect("raising the test process's descriptor limit to its hard limit");
    }
    let current = getrlimit(Resource::Nofile).current;
    assert!(current.is_none_or(|n| n >= 1024), "the flood tests need 1024 descriptors (ulimit -n is {current:?})");
}

/// What a flood run saw.
struct Flood {
    service: Service,
    client: reqwest::Client,
    /// The silent connections, in the order they were opened.
    silent: Vec<TcpStream>,
    log: PathBuf,
}

/// The service under `ulimit -n 256` with `env`, no per-client cap (the
/// flood comes from one address); [`SILENT`] silent connections are opened
/// and held; then `/healthz` must answer while they are held (the client's
/// timeout is only a hang guard).
async fn flood(dir: &std::path::Path, env: &[(&str, String)]) -> Flood {
    raise_own_descriptor_limit();
    let port = free_port();
    let log = dir.join("service.log");
    let mut settings = vec![
        ("SMARTMART_HEADER_READ_TIMEOUT_MS", HEADER_READ_TIMEOUT.as_millis().to_string()),
        ("SMARTMART_HTTP_MAX_CONNECTIONS_PER_CLIENT", "0".to_string()),
        ("RUST_LOG", "warn,smartmart::http::server=info".to_string()),
    ];
    settings.extend(env.iter().cloned());
    let mut service = Service::spawn_with_descriptor_limit(&dir.join("data"), port, &settings, &log, DESCRIPTOR_LIMIT);
    // A new connection per request, accepted behind the flood: a kept-alive
    // one would be answered whatever happened to the accepts.
    let client = reqwest::Client::builder().timeout(BACKSTOP).pool_max_idle_per_host(0).build().unwrap();
    service.wait_ready(&client).await;

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.expect("connecting (the backlog takes the rest)"));
    }
    let answer = client.get(service.url("/healthz")).send().await;
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "/healthz during the flood: {e}; the service's log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(answer.status(), 200);
    assert!(service.child.try_wait().unwrap().is_none(), "the service died");
    Flood { service, client, silent, log }
}

impl Flood {
    /// Places an order while the silent connections are held.
    async fn place_order(&self) {
        let (client, service) = (&self.client, &self.service);
        let customer = "C-1001";
        let cart = client
            .put(service.url(&format!("/v1/carts/{customer}")))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(customer))
            .json(&json!({"items": [{"sku": "HDMI-2M", "quantity": 1}]}))
            .send()
            .await
            .expect("the cart is filled during the flood");
        assert_eq!(cart.status(), 200);
        let order = client
            .post(service.url("/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(customer))
            .json(&json!({"customer_id": customer, "payment": {"token": "tok_ok"}}))
            .send()
            .await
            .expect("an order is placed during the flood");
        let status = order.status();
        assert_eq!(status, 201, "{}", order.text().await.unwrap_or_default());
    }

    async fn metrics(&self) -> String {
        let answer = self.client.get(self.service.url("/metrics")).send().await.expect("/metrics answers");
        answer.text().await.unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_descriptor_limit_sheds_the_oldest_silent_connections_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut flood = flood(dir.path(), &[]).await;
    flood.place_order().await;
    let log = flood.log();
    assert!(log.contains(&format!("max_connections={DERIVED_BUDGET}")), "the budget was not derived from 256: {log}");
    // Past the budget the oldest silent connections were closed, first to last.
    let over = SILENT - DERIVED_BUDGET;
    for (i, stream) in flood.silent[..over].iter_mut().enumerate() {
        assert_closed_by_server(stream, &format!("silent connection {i}")).await;
    }
    let metrics = flood.metrics().await;
    assert!(shed(&metrics, "no_request") >= over as u64, "{metrics}");
    assert!(!log.contains("os error 24"), "the budget should have kept the service off EMFILE: {log}");
    assert!(log.contains("closed connections to keep room"), "no warn line: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_oldest_silent_connection_is_shed_instead_of_pausing() {
    // A budget above the limit: accepting runs into EMFILE first, and the
    // probe queued behind the flood must still be accepted and answered.
    let dir = tempfile::tempdir().unwrap();
    let mut flood = flood(dir.path(), &[("SMARTMART_HTTP_MAX_CONNECTIONS", "100000".to_string())]).await;
    let log = flood.log();
    assert!(log.contains("os error 24"), "the descriptors never ran out, so this tested nothing: {log}");
    assert_closed_by_server(&mut flood.silent[0], "the oldest silent connection").await;
    let metrics = flood.metrics().await;
    assert!(shed(&metrics, "no_request") >= 1, "{metrics}");
}

/// Connects to `server` from the loopback address `source` (Linux routes all of 127/8 to `lo`).
async fn connect_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).expect("binding a loopback source address");
    socket.connect(server).await.expect("connecting")
}

fn address_of(server: &TestServer) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test]
async fn a_client_over_its_connection_cap_is_closed_while_another_client_is_served() {
    const CAP: usize = 20;
    const OVER: usize = 5;
    const CLIENT: [u8; 4] = [127, 0, 0, 1];
    const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 2];
    let server = TestServer::start_with_limits(ConnectionLimits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_connections_per_client: Some(CAP),
        ..ConnectionLimits::default()
    })
    .await;
    let address = address_of(&server);
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect_from(CLIENT, address).await);
    }
    for i in 0..OVER {
        let mut over = connect_from(CLIENT, address).await;
        assert_closed_by_server(&mut over, &format!("connection {} of 127.0.0.1", CAP + 1 + i)).await;
    }
    let mut other = connect_from(OTHER_CLIENT, address).await;
    assert_eq!(healthz_on(&mut other).await, 200);
    let (status, metrics) = get_on(&mut other, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(shed(&metrics, "per_client"), OVER as u64, "{metrics}");

    // The cap counts the connections open now: once one closes, the client gets one more.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + BACKSTOP;
    loop {
        let mut again = connect_from(CLIENT, address).await;
        if let Some((status, _)) = try_get_on(&mut again, "/healthz").await {
            assert_eq!(status, 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "127.0.0.1 was never let in again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn with_no_silent_connection_left_the_longest_idle_keep_alive_one_is_shed() {
    const BUDGET: usize = 5;
    let server = TestServer::start_with_limits(ConnectionLimits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_connections: Some(BUDGET),
        // All from one address: the per-client cap (half the budget by default) is not the subject.
        max_connections_per_client: Some(0),
        ..ConnectionLimits::default()
    })
    .await;
    let address = address_of(&server);
    // The budget full of keep-alive connections, each idle after one request.
    let mut idle = Vec::new();
    for _ in 0..BUDGET {
        let mut stream = TcpStream::connect(address).await.unwrap();
        assert_eq!(healthz_on(&mut stream).await, 200);
        idle.push(stream);
    }
    // A newcomer is served; the one idle the longest made room for it.
    let mut newcomer = TcpStream::connect(address).await.unwrap();
    assert_eq!(healthz_on(&mut newcomer).await, 200);
    assert_closed_by_server(&mut idle[0], "the longest idle connection").await;
    for (i, stream) in idle.iter_mut().enumerate().skip(1) {
        assert_eq!(healthz_on(stream).await, 200, "idle connection {i} was shed too");
    }
    let (_, metrics) = get_on(&mut newcomer, "/metrics").await;
    assert_eq!(shed(&metrics, "idle"), 1, "{metrics}");
    assert_eq!(shed(&metrics, "no_request"), 0, "{metrics}");
    server.stop().await;
}

/// A soft descriptor limit below the hard one is raised to it at start, and
/// the connection budget is derived from the raised limit: a default
/// `ulimit -Sn` of 1024 does not cap a host allowed far more.
#[tokio::test]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one_and_the_budget_follows() {
    const SOFT: u64 = 256;
    const HARD: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("service.log");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let env = [("RUST_LOG", "warn,smartmart::http::server=info".to_string())];
    let mut service =
        Service::spawn_with_descriptor_limits(&dir.path().join("data"), free_port(), &env, &log, (SOFT, HARD));
    service.wait_ready(&client).await;
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    service.stop();
    assert!(
        logged.contains("raised the soft descriptor limit") && logged.contains(&format!("from={SOFT} to={HARD}")),
        "no line saying the limit was raised from {SOFT} to {HARD}: {logged}"
    );
    // HARD less an eighth of it.
    let budget = HARD - HARD / 8;
    assert!(
        logged.contains(&format!("max_connections={budget} descriptor_limit={HARD}")),
        "the budget was not derived from the raised limit: {logged}"
    );
}
