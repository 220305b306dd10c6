//! The connection loop: accepts TCP connections and serves the router on
//! each over HTTP/1.1, with the limits `axum::serve` has no knobs for.
//!
//! - **Header-read timeout.** A request head (request line and headers)
//!   must arrive whole within `header_read_timeout` of its first byte, and a
//!   new connection must deliver its first head within that time of being
//!   accepted: silent and trickling (slowloris) connections are closed.
//! - **Idle timeout.** A keep-alive connection with no request in flight is
//!   closed after `idle_timeout` without a new request.
//! - **Connection budget and per-client cap** ([`connections`]): at most
//!   `max_connections` open at once (by default derived from the descriptor
//!   limit, [`descriptors`]); past it the oldest connection without a
//!   request is closed to make room, so that a flood of silent connections
//!   cannot starve probes and real clients even before the timeouts close
//!   them. A client address holding `max_connections_per_client` has the
//!   next one closed at once.
//!
//! hyper's own `header_read_timeout` cannot express both timeouts: its timer
//! starts whenever hyper waits for a head, so it also bounds the idle gap
//! between keep-alive requests. The deadlines are therefore kept here, in
//! [`activity::Activity`], fed by the bytes read and by the requests
//! starting and finishing. A connection is only ever closed while no
//! request is in flight, so no answer is cut off.
//!
//! **Out of descriptors.** When `accept` fails with EMFILE or ENFILE anyway
//! (descriptors taken elsewhere, or a budget set above the limit), one
//! connection is shed as above and the loop accepts again once it has
//! closed. When none can be shed, and for other resource errors (ENOBUFS,
//! ENOMEM), the loop pauses with a growing back-off (1 ms … 1 s) instead of
//! spinning or giving up; the connections already open are served meanwhile.

mod activity;
mod connections;
mod descriptors;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use self::activity::{Activity, Watched};
use self::connections::{Admission, Connections, Registration};
use super::{AppState, app};

/// Connection-level limits (config: `header_read_timeout_ms`,
/// `idle_timeout_ms`, `http_max_connections`, `http_max_connections_per_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest a request head may take from its first byte (or from the
    /// accept, for a connection's first request).
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Most connections open at once; `None`: derived from the descriptor
    /// limit when serving starts (the soft `RLIMIT_NOFILE` less a reserve).
    pub max_connections: Option<usize>,
    /// Most connections one client address (an IPv6 one by its /64) may
    /// hold at once; `Some(0)`: no cap; `None`: half the connection budget,
    /// so that no one address can take the service whole, while a load
    /// balancer or reverse proxy in front (every connection its own, from
    /// one address) is never cut below what a fixed small cap would allow.
    pub max_connections_per_client: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_client: None,
        }
    }
}

/// Pauses of the accept loop after a resource error: doubled each time.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves until `shutdown` is cancelled, then lets in-flight requests
/// finish within `grace`; the default connection limits.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    serve_with(listener, state, shutdown, grace, ConnectionLimits::default()).await
}

/// [`serve`] with the given connection limits.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    grace: Duration,
    limits: ConnectionLimits,
) -> anyhow::Result<()> {
    let shutting_down = state.shutting_down.clone();
    let shed_total = state.engine.metrics().http_connections_shed.clone();
    let router = app(state);
    let budget = connection_budget(limits.max_connections);
    let per_client = limits.max_connections_per_client.unwrap_or(budget / 2);
    let connections = Arc::new(Connections::new(budget, per_client, shed_total));
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (open_tx, open_rx) = watch::channel(());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let activity = Arc::new(Activity::new(limits));
                let Admission::Admitted(registration) = connections.admit(peer.ip(), activity.clone()) else {
                    // Dropping the stream closes it.
                    continue;
                };
                // Small JSON answers: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let open = open_rx.clone();
                let connection = Connection { stream, activity, registration, _open: open };
                tokio::spawn(serve_connection(connection, router.clone(), shutdown.clone()));
            }
            // The peer gave up before we accepted: nothing to wait for.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                if !recover_from_accept_error(&e, &connections, &mut backoff, &shutdown).await {
                    break;
                }
            }
        }
    }
    shutting_down.cancel();
    drop(listener);
    drop(open_rx);
    if tokio::time::timeout(grace, open_tx.closed()).await.is_err() {
        tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests outlasted the shutdown grace");
    }
    Ok(())
}

/// After `accept` failed for want of resources: when descriptors ran out,
/// sheds a connection and waits until one has closed (at most
/// [`ACCEPT_BACKOFF_MAX`]); when none can be shed, or for other errors,
/// pauses for `backoff` and doubles it. Returns false if shutdown came meanwhile.
async fn recover_from_accept_error(
    e: &std::io::Error,
    connections: &Connections,
    backoff: &mut Duration,
    shutdown: &CancellationToken,
) -> bool {
    let room = if descriptors::is_out_of_descriptors(e) {
        connections.out_of_descriptors(e);
        connections.make_room()
    } else {
        None
    };
    let pause = match room {
        Some(closed) => {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = closed => return true,
                _ = tokio::time::sleep(ACCEPT_BACKOFF_MAX) => return true,
            }
        }
        None => *backoff,
    };
    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing before the next accept");
    *backoff = (pause * 2).min(ACCEPT_BACKOFF_MAX);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

/// The connection budget: `configured`, else derived from the descriptor
/// limit (raised to the hard limit first); logged, with a warning when it
/// leaves less than the reserve.
fn connection_budget(configured: Option<usize>) -> usize {
    if let Some((from, to)) = descriptors::raise_to_hard_limit() {
        tracing::info!(from, to, "raised the soft descriptor limit to the hard limit");
    }
    let limit = descriptors::descriptor_limit();
    let budget = match (configured, limit) {
        (Some(budget), _) => budget,
        (None, Some(limit)) => descriptors::budget_under(limit),
        (None, None) => descriptors::UNBOUNDED,
    };
    let over_reserve =
        |limit: u64| u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(descriptors::RESERVE_MIN) > limit;
    match limit {
        Some(limit) if configured.is_some() && over_reserve(limit) => tracing::warn!(
            max_connections = budget,
            descriptor_limit = limit,
            "SMARTMART_HTTP_MAX_CONNECTIONS leaves fewer than {} descriptors of the limit for everything else: \
             accepting may run out of descriptors first (a connection is then shed to make room)",
            descriptors::RESERVE_MIN
        ),
        Some(limit) => tracing::info!(max_connections = budget, descriptor_limit = limit, "HTTP connection budget"),
        None if configured.is_some() => tracing::info!(max_connections = budget, "HTTP connection budget"),
        None => tracing::info!("no descriptor limit: no HTTP connection budget"),
    }
    budget
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// An accepted connection and what it is tracked by.
struct Connection {
    stream: TcpStream,
    activity: Arc<Activity>,
    registration: Registration,
    /// Held while the connection is open (the shutdown waits for every one).
    _open: watch::Receiver<()>,
}

/// One connection until the peer closes it, a limit closes it, or shutdown
/// (graceful: the request in flight is answered first). It leaves the
/// registry only once its socket is closed, so that an accept waiting for
/// a free descriptor is woken when there is one.
async fn serve_connection(connection: Connection, router: Router, shutdown: CancellationToken) {
    let Connection { stream, activity, registration, _open } = connection;
    drive(stream, activity, router, shutdown).await;
    drop(registration);
}

/// Serves HTTP/1.1 on `stream` until it ends; the socket is closed on return.
async fn drive(stream: TcpStream, activity: Arc<Activity>, router: Router, shutdown: CancellationToken) {
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = requests.request_started();
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(Body::new)).await?;
            // The request counts as in flight until its body is sent (or dropped).
            Ok::<_, std::convert::Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    // hyper's own header timeout off: `Activity` keeps both deadlines (see the module comment).
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut connection = pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            // Dropping the connection closes the socket; nothing is in flight.
            _ = activity.expired() => {
                if activity.was_shed() {
                    tracing::debug!("closing a connection shed to make room");
                } else {
                    tracing::debug!("closing a silent or idle connection");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
