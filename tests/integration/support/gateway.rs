//! A real payment gateway for the tests: an HTTP or HTTPS server on
//! `127.0.0.1` that speaks SmartMart's gateway wire protocol (v1 and the v2
//! cancel; see `host/src/payment/http.rs`) and produces the faults real
//! gateways have, deterministically given a seed. The real `smartmart
//! serve` binary is pointed at it with `SMARTMART_PAYMENT_GATEWAY_URL` (and
//! `SMARTMART_PAYMENT_GATEWAY_CA_FILE`, see `support::tls`), and the tests
//! then read what it captured (`charges`, `cancelled_keys`, `stats`).
//!
//! The gateway runs on a tokio runtime of its own (a thread per gateway), so
//! it keeps answering while the test blocks (waiting for a child process,
//! `std::thread::sleep`, a current-thread runtime busy elsewhere), and its
//! clocks are real even if the test pauses tokio's time. Everything here
//! can be called from sync or async code, from any runtime.
//!
//! # Protocol
//!
//! Bodies are JSON; keys are one percent-encoded path segment.
//!
//! - `POST /v1/charges`, header `Idempotency-Key` equal to the body's
//!   `idempotency_key` (else `400`), body `{idempotency_key, order_id,
//!   amount_cents, currency, token}`. The ledger decides, under one lock:
//!   a cancelled key → `409 {"error": "idempotency key cancelled"}`; a key
//!   captured with the same amount → `200` and the same charge (nothing
//!   captured); with another amount → `409`; token `tok_decline` → `402
//!   {"error": "card declined"}` (nothing recorded); otherwise it captures →
//!   `201 {"transaction_id", "amount_cents", "status": "CAPTURED"}`.
//! - `GET /v1/charges/{key}` → `200` and the capture body; `200 {"status":
//!   "CANCELLED", "idempotency_key"}` for a cancelled key; `404 {"error":
//!   "no charge"}` otherwise.
//! - `POST /v1/charges/{key}/cancel` → atomically, under the ledger's lock:
//!   the capture body (`200`) if captured, else the key is dead for good
//!   and the answer is `200 {"status": "CANCELLED", "idempotency_key"}`.
//!   Idempotent. A capture is decided at the moment it would happen (for a
//!   stalled request: after its stall), so a cancel that wins the lock
//!   makes every later capture of the key impossible.
//!
//! # Faults
//!
//! [`Faults`] apply to every well-formed `POST /v1/charges` (one random
//! draw each, from an RNG seeded with `Faults::seed`, in arrival order):
//! the ledger step above still happens, and then its answer is delayed
//! (stall), lost (reset) or replaced (`503`). Bursts of `503` and
//! [`GatewayServer::go_down`] hit every endpoint; outside them lookups and
//! cancels answer normally.

// The API serves the tests that drive the real binary; not each of them
// uses every item.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::tls::ServerCert;

/// The token the gateway declines (`402`).
pub const DECLINED_TOKEN: &str = "tok_decline";

/// The largest charge body read; a bigger one is answered `400`.
const MAX_BODY: usize = 64 * 1024;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long re-binding the port after [`GatewayServer::go_down`] is retried.
const REBIND_PATIENCE: Duration = Duration::from_secs(5);

/// The faults a gateway produces. Probabilities are per `POST /v1/charges`
/// and mutually exclusive (one draw picks at most one), so they must sum
/// to at most 1.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Seeds the fault draws: the same requests in the same order meet the
    /// same faults.
    pub seed: u64,
    /// Probability a POST stalls `stall`, then goes to the ledger (captures
    /// unless the key was cancelled meanwhile) and answers: too late for a
    /// client with a shorter timeout. The stalled capture runs in a task of
    /// its own: it happens even if the client has hung up.
    pub stall_then_capture: f64,
    /// How long a stalled POST waits before capturing.
    pub stall: Duration,
    /// Probability a POST goes to the ledger (captures) and then its
    /// connection is closed without any answer.
    pub reset_after_capture: f64,
    /// Probability a POST goes to the ledger (captures) and then answers
    /// `503 {"error": "service unavailable"}`.
    pub capture_then_503: f64,
    /// `(every, len)`: in each period of `every` since the gateway started,
    /// the LAST `len` are a burst in which every request (all endpoints)
    /// answers `503 {"error": "overloaded"}` without doing anything. So the
    /// first `every - len` after start are calm. `None`: no bursts.
    pub burst_503: Option<(Duration, Duration)>,
    /// `Retry-After` (seconds) on the burst `503`s.
    pub burst_retry_after: Option<u32>,
}

impl Faults {
    /// No faults at all: a well-behaved gateway.
    pub fn none() -> Self {
        Faults {
            seed: 0,
            stall_then_capture: 0.0,
            stall: Duration::ZERO,
            reset_after_capture: 0.0,
            capture_then_503: 0.0,
            burst_503: None,
            burst_retry_after: None,
        }
    }

    fn validate(&self) {
        let probabilities = [self.stall_then_capture, self.reset_after_capture, self.capture_then_503];
        assert!(
            probabilities.iter().all(|p| (0.0..=1.0).contains(p)),
            "fault probabilities must be in [0, 1]: {self:?}"
        );
        assert!(probabilities.iter().sum::<f64>() <= 1.0 + 1e-9, "fault probabilities must sum to at most 1: {self:?}");
        if let Some((every, len)) = self.burst_503 {
            assert!(!every.is_zero() && len < every, "a burst must be shorter than its period: {self:?}");
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Faults::none()
    }
}

/// A charge the gateway captured: money moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCharge {
    pub idempotency_key: String,
    pub order_id: String,
    pub transaction_id: String,
    pub amount_cents: u64,
    pub currency: String,
    /// When it was captured (the moment of the ledger step).
    pub captured_at: Instant,
    /// `captured_at` relative to the gateway's start.
    pub after_start: Duration,
}

/// Which endpoint a request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `POST /v1/charges`
    Charge,
    /// `GET /v1/charges/{key}`
    Lookup,
    /// `POST /v1/charges/{key}/cancel`
    Cancel,
}

/// A request the gateway received, recorded on arrival (before bursts and
/// faults), under its idempotency key (the `Idempotency-Key` header for a
/// charge, the path's key otherwise).
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub kind: RequestKind,
    /// All its headers (`X-Request-Id`, `traceparent`, `User-Agent`, …).
    pub headers: HeaderMap,
    pub at: Instant,
}

/// Counts of what the gateway did. Requests are counted on arrival, burst
/// `503`s included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// `POST /v1/charges` received.
    pub posts: u64,
    /// `GET /v1/charges/{key}` received.
    pub lookups: u64,
    /// `POST /v1/charges/{key}/cancel` received.
    pub cancels: u64,
    /// Requests answered `400` (bad body, key header missing or different
    /// from the body's, bad percent-encoding) or `404`/`405`.
    pub bad_requests: u64,
    /// New captures (money moved).
    pub captures: u64,
    /// POSTs answered with an existing capture of their key (`200`).
    pub replays: u64,
    /// POSTs declined (`402`).
    pub declines: u64,
    /// POSTs whose amount differed from their key's capture (`409`).
    pub amount_conflicts: u64,
    /// Captures refused because the key was cancelled (`409`), stalled
    /// ones whose key was cancelled during the stall included.
    pub refused_cancelled: u64,
    /// Keys cancelled (first cancel of a key not captured).
    pub keys_cancelled: u64,
    /// Stall faults injected.
    pub stalls: u64,
    /// New captures made by a stalled POST after its stall.
    pub stalled_captures: u64,
    /// Reset faults injected (the connection closed, no answer).
    pub resets: u64,
    /// Capture-then-503 faults injected.
    pub captures_then_503: u64,
    /// Requests answered `503` by a burst.
    pub burst_503s: u64,
    /// Times the gateway went down.
    pub downs: u64,
}

/// Whether the gateway is listening.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listening {
    Up,
    Down,
    /// The port could not be bound again after going down.
    Failed(String),
}

enum Command {
    /// Go down for this long; answer once down.
    Down(Duration, oneshot::Sender<()>),
    /// End the outage now; answer once listening (or failed to).
    Up(oneshot::Sender<()>),
}

/// A running gateway. Dropping it stops it (its listener, connections and
/// in-flight stalled captures); what it recorded goes with it.
pub struct GatewayServer {
    inner: Arc<Inner>,
    scheme: &'static str,
    commands: mpsc::UnboundedSender<Command>,
    listening: watch::Receiver<Listening>,
}

struct Inner {
    faults: Faults,
    started: Instant,
    addr: SocketAddr,
    /// Distinguishes this gateway's transaction ids from other gateways'.
    id: u64,
    state: Mutex<State>,
}

struct State {
    rng: StdRng,
    /// Every capture, in capture order.
    charges: Vec<GatewayCharge>,
    /// Key → index in `charges`.
    by_key: HashMap<String, usize>,
    /// Cancelled keys, in order; and as a set.
    cancelled: Vec<String>,
    dead: HashSet<String>,
    requests: HashMap<String, Vec<SeenRequest>>,
    /// Keys a POST of which met a fault (stall, reset, capture-then-503).
    faulted: HashSet<String>,
    stats: GatewayStats,
}

impl GatewayServer {
    /// A plain-HTTP gateway at `http://127.0.0.1:PORT`.
    pub fn start_http(faults: Faults) -> GatewayServer {
        GatewayServer::start(None, faults)
    }

    /// An HTTPS gateway serving `cert` at `https://localhost:PORT` (listening
    /// on 127.0.0.1); clients must trust the CA that issued `cert`.
    pub fn start_https(cert: ServerCert, faults: Faults) -> GatewayServer {
        GatewayServer::start(Some(cert), faults)
    }

    fn start(cert: Option<ServerCert>, faults: Faults) -> GatewayServer {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        faults.validate();
        let scheme = if cert.is_some() { "https" } else { "http" };
        let tls = cert.map(|cert| TlsAcceptor::from(cert.server_config()));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (listening_tx, listening) = watch::channel(Listening::Up);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("test-gateway-{id}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name(format!("test-gateway-{id}"))
                    .enable_all()
                    .build()
                    .expect("the test gateway's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the test gateway");
                    let addr = listener.local_addr().expect("the test gateway's address");
                    let inner = Arc::new(Inner {
                        state: Mutex::new(State {
                            rng: StdRng::seed_from_u64(faults.seed),
                            charges: Vec::new(),
                            by_key: HashMap::new(),
                            cancelled: Vec::new(),
                            dead: HashSet::new(),
                            requests: HashMap::new(),
                            faulted: HashSet::new(),
                            stats: GatewayStats::default(),
                        }),
                        faults,
                        started: Instant::now(),
                        addr,
                        id,
                    });
                    started_tx.send(Arc::clone(&inner)).expect("the starting test waits");
                    accept_loop(inner, listener, tls, commands_rx, listening_tx).await;
                });
                // Connection tasks and stalled captures end with the runtime.
                runtime.shutdown_background();
            })
            .expect("spawning the test gateway's thread");
        let inner = started_rx.recv().expect("the test gateway started");
        GatewayServer { inner, scheme, commands, listening }
    }

    /// The base URL (no trailing slash): `http://127.0.0.1:PORT` or
    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        let host = if self.scheme == "https" { "localhost" } else { "127.0.0.1" };
        self.url_with_host(host)
    }

    /// The base URL with another host name for the same port (e.g.
    /// `127.0.0.1` for an HTTPS certificate issued for that IP).
    pub fn url_with_host(&self, host: &str) -> String {
        format!("{}://{host}:{}", self.scheme, self.inner.addr.port())
    }

    /// The listening address (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// When the gateway started (`GatewayCharge::after_start` counts from it).
    pub fn started_at(&self) -> Instant {
        self.inner.started
    }

    /// Takes the gateway down for `for_`: the listening socket is closed (new
    /// connections are refused) and every open connection is dropped, with
    /// no answer to a request in flight. Returns once it is down; after
    /// `for_` it binds the SAME port again in the background
    /// ([`GatewayServer::wait_up`] waits for that). `Duration::MAX`: down
    /// until [`GatewayServer::come_back`]. Going down while down extends the
    /// outage to the later of the two ends. Stalled captures already under
    /// way (their own tasks) still happen.
    pub async fn go_down(&self, for_: Duration) {
        let (ack, acked) = oneshot::channel();
        self.commands.send(Command::Down(for_, ack)).expect("the test gateway is running");
        acked.await.expect("the test gateway went down");
    }

    /// Ends an outage now (whatever was left of it) and returns once the
    /// gateway listens again on the same port; at once if it is up. Panics if
    /// the port could not be bound again.
    pub async fn come_back(&self) {
        let (ack, acked) = oneshot::channel();
        self.commands.send(Command::Up(ack)).expect("the test gateway is running");
        acked.await.expect("the test gateway came back");
        self.wait_up().await;
    }

    /// Waits until the gateway listens again after [`GatewayServer::go_down`]
    /// (at once if it is up); panics if the port could not be bound again.
    pub async fn wait_up(&self) {
        let mut listening = self.listening.clone();
        let state = listening
            .wait_for(|state| !matches!(state, Listening::Down))
            .await
            .expect("the test gateway is running")
            .clone();
        if let Listening::Failed(error) = state {
            panic!("the test gateway could not listen on {} again: {error}", self.inner.addr);
        }
    }

    /// Whether the gateway is listening now (not down).
    pub fn is_up(&self) -> bool {
        matches!(*self.listening.borrow(), Listening::Up)
    }

    /// Every capture ever made, in capture order (at most one per key).
    pub fn charges(&self) -> Vec<GatewayCharge> {
        self.inner.lock().charges.clone()
    }

    /// The capture under `key`, if any.
    pub fn charge(&self, key: &str) -> Option<GatewayCharge> {
        let state = self.inner.lock();
        state.by_key.get(key).map(|&i| state.charges[i].clone())
    }

    /// Every cancelled key (cancelled before any capture), in cancel order.
    pub fn cancelled_keys(&self) -> Vec<String> {
        self.inner.lock().cancelled.clone()
    }

    /// The counts so far.
    pub fn stats(&self) -> GatewayStats {
        self.inner.lock().stats.clone()
    }

    /// `POST /v1/charges` received with `Idempotency-Key: key` (retries
    /// included, burst `503`s included).
    pub fn posts_for(&self, key: &str) -> usize {
        self.requests_for(key).iter().filter(|r| r.kind == RequestKind::Charge).count()
    }

    /// Whether a POST under `key` met a fault (stall, reset, capture-then-503).
    pub fn met_a_fault(&self, key: &str) -> bool {
        self.inner.lock().faulted.contains(key)
    }

    /// Every request received for `key` (charges, lookups, cancels), in
    /// arrival order, with their headers.
    pub fn requests_for(&self, key: &str) -> Vec<SeenRequest> {
        self.inner.lock().requests.get(key).cloned().unwrap_or_default()
    }

    /// Every key any request was received for.
    pub fn keys_seen(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.inner.lock().requests.keys().cloned().collect();
        keys.sort();
        keys
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn in_burst(&self) -> bool {
        let Some((every, len)) = self.faults.burst_503 else {
            return false;
        };
        let phase = self.started.elapsed().as_nanos() % every.as_nanos();
        phase >= (every - len).as_nanos()
    }
}

// ---------------------------------------------------------------------------
// Listening, going down, connections.
// ---------------------------------------------------------------------------

async fn accept_loop(
    inner: Arc<Inner>,
    mut listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    listening: watch::Sender<Listening>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let (for_, ack) = match command {
                    Some(Command::Down(for_, ack)) => (for_, ack),
                    // Up already.
                    Some(Command::Up(ack)) => {
                        let _ = ack.send(());
                        continue;
                    }
                    // The GatewayServer was dropped.
                    None => return,
                };
                drop(listener);
                // Aborting a connection's task drops its socket.
                connections.shutdown().await;
                inner.lock().stats.downs += 1;
                listening.send_replace(Listening::Down);
                let _ = ack.send(());
                // `checked_add`: `Duration::MAX` means "until `come_back`".
                let mut until = tokio::time::Instant::now().checked_add(for_);
                let mut up_ack = None;
                loop {
                    let outage_over = async {
                        match until {
                            Some(until) => tokio::time::sleep_until(until).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = outage_over => break,
                        command = commands.recv() => match command {
                            None => return,
                            Some(Command::Down(for_, ack)) => {
                                let later = tokio::time::Instant::now().checked_add(for_);
                                until = until.zip(later).map(|(a, b)| a.max(b));
                                let _ = ack.send(());
                            }
                            Some(Command::Up(ack)) => {
                                up_ack = Some(ack);
                                break;
                            }
                        },
                    }
                }
                let rebound = rebind(inner.addr).await;
                let failed = rebound.as_ref().err().map(ToString::to_string);
                listening.send_replace(failed.map_or(Listening::Up, Listening::Failed));
                if let Some(ack) = up_ack {
                    let _ = ack.send(());
                }
                match rebound {
                    Ok(rebound) => listener = rebound,
                    Err(_) => return,
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(Arc::clone(&inner), stream, tls.clone()));
                }
                // Out of file descriptors and the like: breathe, go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Binds `addr` again (tokio sets `SO_REUSEADDR`, so the old connections'
/// `TIME_WAIT` does not stand in the way), retrying a while in case the port
/// is briefly taken.
async fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream, tls: Option<TlsAcceptor>) {
    match tls {
        None => drive(inner, stream).await,
        Some(acceptor) => {
            // A client refusing the certificate ends the handshake: nothing to serve.
            if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                drive(inner, stream).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client closes, or until a request
/// asks for the connection to be dropped (the reset fault): then the
/// connection is dropped mid-request, the socket closed with no answer.
async fn drive<I>(inner: Arc<Inner>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = CancellationToken::new();
    let service = {
        let kill = kill.clone();
        service_fn(move |request| handle(Arc::clone(&inner), kill.clone(), request))
    };
    let connection = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    tokio::select! {
        _ = connection => {}
        () = kill.cancelled() => {}
    }
}

// ---------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------

type Answer = Response<Full<Bytes>>;

enum Route {
    Charge,
    Lookup(String),
    Cancel(String),
    /// A key segment that does not percent-decode to UTF-8.
    BadKey,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    let Some(rest) = path.strip_prefix("/v1/charges") else {
        return Route::NotFound;
    };
    if rest.is_empty() {
        return if method == Method::POST { Route::Charge } else { Route::MethodNotAllowed };
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::NotFound;
    };
    let (segment, cancel) = match rest.strip_suffix("/cancel") {
        Some(segment) => (segment, true),
        None => (rest, false),
    };
    if segment.is_empty() || segment.contains('/') {
        return Route::NotFound;
    }
    let Some(key) = percent_decode(segment) else {
        return Route::BadKey;
    };
    match (cancel, method) {
        (true, &Method::POST) => Route::Cancel(key),
        (false, &Method::GET) => Route::Lookup(key),
        _ => Route::MethodNotAllowed,
    }
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

fn error_answer(status: StatusCode, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

fn capture_body(charge: &GatewayCharge) -> Value {
    json!({
        "transaction_id": charge.transaction_id,
        "amount_cents": charge.amount_cents,
        "status": "CAPTURED",
    })
}

fn cancelled_body(key: &str) -> Value {
    json!({ "status": "CANCELLED", "idempotency_key": key })
}

async fn handle(inner: Arc<Inner>, kill: CancellationToken, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let route = route(request.method(), request.uri().path());
    let seen = match &route {
        Route::Charge => Some((
            RequestKind::Charge,
            request.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned),
        )),
        Route::Lookup(key) => Some((RequestKind::Lookup, Some(key.clone()))),
        Route::Cancel(key) => Some((RequestKind::Cancel, Some(key.clone()))),
        _ => None,
    };
    let burst = inner.in_burst();
    {
        let mut state = inner.lock();
        if let Some((kind, key)) = seen {
            match kind {
                RequestKind::Charge => state.stats.posts += 1,
                RequestKind::Lookup => state.stats.lookups += 1,
                RequestKind::Cancel => state.stats.cancels += 1,
            }
            if let Some(key) = key {
                let seen = SeenRequest { kind, headers: request.headers().clone(), at: Instant::now() };
                state.requests.entry(key).or_default().push(seen);
            }
        }
        if burst {
            state.stats.burst_503s += 1;
        } else if matches!(route, Route::BadKey | Route::NotFound | Route::MethodNotAllowed) {
            state.stats.bad_requests += 1;
        }
    }
    if burst {
        let mut answer = error_answer(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
        if let Some(seconds) = inner.faults.burst_retry_after {
            answer.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        return Ok(answer);
    }
    Ok(match route {
        Route::Charge => charge(inner, kill, request).await,
        Route::Lookup(key) => lookup(&inner, &key),
        Route::Cancel(key) => cancel(&inner, &key),
        Route::BadKey => error_answer(StatusCode::BAD_REQUEST, "the key is not percent-encoded UTF-8"),
        Route::NotFound => error_answer(StatusCode::NOT_FOUND, "no such endpoint"),
        Route::MethodNotAllowed => error_answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    })
}

#[derive(Debug, Deserialize)]
struct ChargeBody {
    idempotency_key: String,
    order_id: String,
    amount_cents: u64,
    currency: String,
    token: String,
}

/// What the ledger decided for one POST.
enum Ledger {
    Captured(GatewayCharge),
    Replayed(GatewayCharge),
    AmountConflict(u64),
    Declined,
    Cancelled,
}

/// The fault one POST meets.
enum Fault {
    None,
    Stall,
    Reset,
    CaptureThen503,
}

async fn charge(inner: Arc<Inner>, kill: CancellationToken, request: Request<Incoming>) -> Answer {
    let header_key = request.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return bad_request(&inner, &format!("unreadable body: {error}")),
    };
    let body: ChargeBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => return bad_request(&inner, &format!("bad charge body: {error}")),
    };
    if header_key.as_deref() != Some(body.idempotency_key.as_str()) {
        return bad_request(&inner, "the Idempotency-Key header is missing or differs from the body's");
    }
    let fault = {
        let mut state = inner.lock();
        let draw: f64 = state.rng.random();
        let faults = &inner.faults;
        let fault = if draw < faults.stall_then_capture {
            state.stats.stalls += 1;
            Fault::Stall
        } else if draw < faults.stall_then_capture + faults.reset_after_capture {
            state.stats.resets += 1;
            Fault::Reset
        } else if draw < faults.stall_then_capture + faults.reset_after_capture + faults.capture_then_503 {
            state.stats.captures_then_503 += 1;
            Fault::CaptureThen503
        } else {
            Fault::None
        };
        if !matches!(fault, Fault::None) {
            state.faulted.insert(body.idempotency_key.clone());
        }
        fault
    };
    match fault {
        Fault::None => ledger_answer(ledger(&inner, &body, false)),
        Fault::Stall => {
            // A task of its own: the capture happens even if the client
            // hangs up and this request's future is dropped.
            let stalled = Arc::clone(&inner);
            let outcome = tokio::spawn(async move {
                tokio::time::sleep(stalled.faults.stall).await;
                ledger(&stalled, &body, true)
            });
            match outcome.await {
                Ok(outcome) => ledger_answer(outcome),
                Err(_) => error_answer(StatusCode::INTERNAL_SERVER_ERROR, "the stalled capture failed"),
            }
        }
        Fault::Reset => {
            ledger(&inner, &body, false);
            kill.cancel();
            // `drive` drops the connection; this future goes with it.
            std::future::pending::<Answer>().await
        }
        Fault::CaptureThen503 => {
            ledger(&inner, &body, false);
            error_answer(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
        }
    }
}

fn bad_request(inner: &Inner, message: &str) -> Answer {
    inner.lock().stats.bad_requests += 1;
    error_answer(StatusCode::BAD_REQUEST, message)
}

/// The ledger step of a POST, under the one lock that cancels also take:
/// the capture is decided here and now.
fn ledger(inner: &Inner, body: &ChargeBody, stalled: bool) -> Ledger {
    let mut state = inner.lock();
    if state.dead.contains(&body.idempotency_key) {
        state.stats.refused_cancelled += 1;
        return Ledger::Cancelled;
    }
    if let Some(&i) = state.by_key.get(&body.idempotency_key) {
        let existing = state.charges[i].clone();
        if existing.amount_cents != body.amount_cents {
            state.stats.amount_conflicts += 1;
            return Ledger::AmountConflict(existing.amount_cents);
        }
        state.stats.replays += 1;
        return Ledger::Replayed(existing);
    }
    if body.token == DECLINED_TOKEN {
        state.stats.declines += 1;
        return Ledger::Declined;
    }
    let now = Instant::now();
    let charge = GatewayCharge {
        idempotency_key: body.idempotency_key.clone(),
        order_id: body.order_id.clone(),
        transaction_id: format!("txn_{}_{:06}", inner.id, state.charges.len() + 1),
        amount_cents: body.amount_cents,
        currency: body.currency.clone(),
        captured_at: now,
        after_start: now - inner.started,
    };
    let index = state.charges.len();
    state.charges.push(charge.clone());
    state.by_key.insert(charge.idempotency_key.clone(), index);
    state.stats.captures += 1;
    if stalled {
        state.stats.stalled_captures += 1;
    }
    Ledger::Captured(charge)
}

fn ledger_answer(outcome: Ledger) -> Answer {
    match outcome {
        Ledger::Captured(charge) => json_answer(StatusCode::CREATED, &capture_body(&charge)),
        Ledger::Replayed(charge) => json_answer(StatusCode::OK, &capture_body(&charge)),
        Ledger::AmountConflict(captured) => error_answer(
            StatusCode::CONFLICT,
            &format!("idempotency key already captured with another amount ({captured})"),
        ),
        Ledger::Declined => error_answer(StatusCode::PAYMENT_REQUIRED, "card declined"),
        Ledger::Cancelled => error_answer(StatusCode::CONFLICT, "idempotency key cancelled"),
    }
}

fn lookup(inner: &Inner, key: &str) -> Answer {
    let state = inner.lock();
    if let Some(&i) = state.by_key.get(key) {
        json_answer(StatusCode::OK, &capture_body(&state.charges[i]))
    } else if state.dead.contains(key) {
        json_answer(StatusCode::OK, &cancelled_body(key))
    } else {
        error_answer(StatusCode::NOT_FOUND, "no charge")
    }
}

fn cancel(inner: &Inner, key: &str) -> Answer {
    let mut state = inner.lock();
    if let Some(&i) = state.by_key.get(key) {
        return json_answer(StatusCode::OK, &capture_body(&state.charges[i]));
    }
    if state.dead.insert(key.to_string()) {
        state.cancelled.push(key.to_string());
        state.stats.keys_cancelled += 1;
    }
    json_answer(StatusCode::OK, &cancelled_body(key))
}
