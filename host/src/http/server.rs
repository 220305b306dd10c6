//! The connection loop: accepts TCP connections and serves the router on
//! each over HTTP/1.1, with the limits `axum::serve` has no knobs for.
//!
//! - **Header-read timeout.** A request head (request line and headers)
//!   must arrive whole within `header_read_timeout` of its first byte, and a
//!   new connection must deliver its first head within that time of being
//!   accepted: silent and trickling (slowloris) connections are closed.
//! - **Idle timeout.** A keep-alive connection with no request in flight is
//!   closed after `idle_timeout` without a new request.
//!
//! hyper's own `header_read_timeout` cannot express both: its timer starts
//! whenever hyper waits for a head, so it also bounds the idle gap between
//! keep-alive requests. The deadlines are therefore kept here, in
//! [`Activity`], fed by the bytes read and by the requests starting and
//! finishing. A connection is only ever closed while no request is in
//! flight, so no answer is cut off.
//!
//! **Out of descriptors.** When `accept` fails for want of resources
//! (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop pauses with a growing
//! back-off (1 ms … 1 s) instead of spinning or giving up; the connections
//! already open are served meanwhile and, as the timeouts close the silent
//! ones, accepting resumes.

use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::{AppState, app};

/// Connection-level limits (config: `header_read_timeout_ms`, `idle_timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest a request head may take from its first byte (or from the
    /// accept, for a connection's first request).
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits { header_read_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) }
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
    let router = app(state);
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (open_tx, open_rx) = watch::channel(());
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // Small JSON answers: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let open = open_rx.clone();
                tokio::spawn(serve_connection(stream, router.clone(), limits, shutdown.clone(), open));
            }
            // The peer gave up before we accepted: nothing to wait for.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; pausing before the next accept");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
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

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// One connection until the peer closes it, a limit closes it, or shutdown
/// (graceful: the request in flight is answered first).
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    _open: watch::Receiver<()>,
) {
    let activity = Arc::new(Activity::new(limits));
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
                tracing::debug!("closing a silent or idle connection");
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection stands, for its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight: close at `deadline` unless a request starts.
    /// `head_started`: the deadline is the header-read one (bytes of a head
    /// arrived, or the connection is new), else the idle one.
    Waiting { deadline: Instant, head_started: bool },
    /// Requests in flight (several only when pipelined): no deadline here;
    /// the request timeout bounds them.
    Busy { requests: usize },
}

/// The deadline of one connection, moved by reads and requests.
struct Activity {
    limits: ConnectionLimits,
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new(limits: ConnectionLimits) -> Activity {
        Activity {
            limits,
            phase: Mutex::new(Phase::Waiting {
                deadline: Instant::now() + limits.header_read_timeout,
                head_started: true,
            }),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: on an idle connection they begin a request head.
    fn on_read(&self) {
        let mut phase = self.phase();
        if let Phase::Waiting { head_started: false, .. } = *phase {
            *phase = Phase::Waiting { deadline: Instant::now() + self.limits.header_read_timeout, head_started: true };
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request head was read whole; the guard marks the request finished when dropped.
    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Waiting { .. } => Phase::Busy { requests: 1 },
            Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
        };
        drop(phase);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn request_finished(&self) {
        let mut phase = self.phase();
        if let Phase::Busy { requests } = *phase {
            *phase = if requests > 1 {
                Phase::Busy { requests: requests - 1 }
            } else {
                Phase::Waiting { deadline: Instant::now() + self.limits.idle_timeout, head_started: false }
            };
        }
        drop(phase);
        self.changed.notify_one();
    }

    /// Resolves once the connection has waited past its deadline.
    async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = pin!(changed);
            // Registered before the phase is read, so no change is missed.
            changed.as_mut().enable();
            let deadline = match *self.phase() {
                Phase::Waiting { deadline, .. } => Some(deadline),
                Phase::Busy { .. } => None,
            };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A request in flight on its connection.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The TCP stream, reporting the bytes it reads to the connection's [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
