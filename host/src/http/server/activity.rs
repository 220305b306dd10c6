//! Where one connection stands: its deadline (header-read or idle), whether
//! it has sent a whole request yet, and whether it was chosen to be shed.
//! Fed by the bytes read ([`Watched`]) and by the requests starting and
//! finishing ([`Activity::request_started`]).

use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnectionLimits;

/// Whether a request is in flight, for the deadline.
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

#[derive(Debug)]
struct State {
    phase: Phase,
    /// A whole request head arrived on this connection at least once.
    proven: bool,
    /// Chosen to be shed: closed as soon as no request is in flight.
    shed: bool,
}

/// What kind of connection [`Activity::shed`] may close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sheddable {
    /// One that has not sent a whole request head yet.
    NoRequestYet,
    /// A keep-alive connection waiting for its next request, no byte of it arrived.
    Idle,
}

/// The deadline of one connection, moved by reads and requests.
pub(super) struct Activity {
    limits: ConnectionLimits,
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    pub(super) fn new(limits: ConnectionLimits) -> Activity {
        Activity {
            limits,
            state: Mutex::new(State {
                phase: Phase::Waiting { deadline: Instant::now() + limits.header_read_timeout, head_started: true },
                proven: false,
                shed: false,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: on an idle connection they begin a request head.
    fn on_read(&self) {
        let mut state = self.state();
        if let Phase::Waiting { head_started: false, .. } = state.phase
            && !state.shed
        {
            state.phase =
                Phase::Waiting { deadline: Instant::now() + self.limits.header_read_timeout, head_started: true };
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A request head was read whole; the guard marks the request finished when dropped.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        let mut state = self.state();
        state.proven = true;
        state.phase = match state.phase {
            Phase::Waiting { .. } => Phase::Busy { requests: 1 },
            Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
        };
        drop(state);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn request_finished(&self) {
        let mut state = self.state();
        if let Phase::Busy { requests } = state.phase {
            state.phase = if requests > 1 {
                Phase::Busy { requests: requests - 1 }
            } else {
                // A shed connection whose request slipped in is closed once answered.
                let wait = if state.shed { std::time::Duration::ZERO } else { self.limits.idle_timeout };
                Phase::Waiting { deadline: Instant::now() + wait, head_started: false }
            };
        }
        drop(state);
        self.changed.notify_one();
    }

    /// When an idle keep-alive connection will be closed by the idle timeout
    /// (the earliest went idle first); `None` unless it is idle.
    pub(super) fn idle_until(&self) -> Option<Instant> {
        let state = self.state();
        match state.phase {
            Phase::Waiting { deadline, head_started: false } if state.proven && !state.shed => Some(deadline),
            _ => None,
        }
    }

    /// Marks the connection to be closed now, if it is of the `kind` asked
    /// for and no request is in flight nor partly read; returns whether it was.
    pub(super) fn shed(&self, kind: Sheddable) -> bool {
        let mut state = self.state();
        let eligible = match (kind, state.phase) {
            (_, Phase::Busy { .. }) => false,
            (Sheddable::NoRequestYet, Phase::Waiting { .. }) => !state.proven,
            (Sheddable::Idle, Phase::Waiting { head_started, .. }) => state.proven && !head_started,
        };
        if !eligible || state.shed {
            return false;
        }
        state.shed = true;
        if let Phase::Waiting { head_started, .. } = state.phase {
            state.phase = Phase::Waiting { deadline: Instant::now(), head_started };
        }
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Whether the connection was shed (else a timeout closed it).
    pub(super) fn was_shed(&self) -> bool {
        self.state().shed
    }

    /// Resolves once the connection has waited past its deadline.
    pub(super) async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = pin!(changed);
            // Registered before the state is read, so no change is missed.
            changed.as_mut().enable();
            let deadline = match self.state().phase {
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
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The TCP stream, reporting the bytes it reads to the connection's [`Activity`].
pub(super) struct Watched {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
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
