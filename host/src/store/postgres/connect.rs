//! Opening the pool's connections with their bytes counted ([`wire`]).
//!
//! The socket is made here, as `tokio_postgres::Config::connect` makes it
//! (each host in turn, or shuffled with `load_balance_hosts=random`, each
//! of its addresses, within `connect_timeout`; `TCP_NODELAY`, keepalives,
//! `tcp_user_timeout`, `target_session_attrs` honoured), wrapped in
//! [`Counted`], and the session started over it with `Config::connect_raw`
//! and the TLS connector `sslmode` asks for ([`tls`]), whose stream is
//! counted too: the socket's counter counts a session in the clear, the
//! TLS stream's an encrypted one. Counting only inside the connector would
//! miss every session the server declines TLS for (the driver then talks
//! over the bare socket and never hands it to the connector).
//!
//! [`wire`]: super::wire
//! [`tls`]: super::tls

use std::io;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Connect;
use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs};
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};
use tokio_util::either::Either;

use super::super::stats::WireStats;
use super::tls::Tls;
use super::wire::Counted;

#[cfg(unix)]
type Socket = Either<TcpStream, tokio::net::UnixStream>;
/// No socket files off Unix: the right side is never made.
#[cfg(not(unix))]
type Socket = Either<TcpStream, TcpStream>;

/// What the pool makes its connections with: each one counted into
/// `stats`, over TLS as `tls` says (`None`: never).
pub(super) struct CountingConnect {
    pub(super) stats: Arc<WireStats>,
    pub(super) tls: Option<Tls>,
}

impl Connect for CountingConnect {
    fn connect(&self, config: &Config) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        let config = config.clone();
        Box::pin(async move {
            let mut last = Failure::Io(io::Error::new(io::ErrorKind::InvalidInput, "no host to connect to"));
            match targets(&config) {
                Ok(targets) => {
                    for target in targets {
                        match session(self, &config, target).await {
                            Ok(session) => return Ok(session),
                            Err(e) => last = e,
                        }
                    }
                }
                Err(e) => last = Failure::Io(e),
            }
            Err(match last {
                Failure::Driver(e) => e,
                Failure::Io(e) => driver_error(&config, e).await,
            })
        })
    }
}

/// Why a place to connect to did not give a session.
enum Failure {
    /// Making the socket failed.
    Io(io::Error),
    /// Starting the session on it failed.
    Driver(tokio_postgres::Error),
}

/// Where a session may be opened.
enum Target {
    /// A host name or address, resolved when its turn comes.
    Tcp {
        address: String,
        port: u16,
        /// The name TLS verifies: the host's, also when its `hostaddr` is
        /// where to connect (libpq's rule).
        name: String,
    },
    /// The server's socket file.
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// Every place to try, in order (see `tokio_postgres::connect`): each
/// host, or its `hostaddr` when given, with its port (or the only port).
fn targets(config: &Config) -> io::Result<Vec<Target>> {
    let (hosts, addrs, ports) = (config.get_hosts(), config.get_hostaddrs(), config.get_ports());
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(invalid("the numbers of hosts and hostaddrs differ"));
    }
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err(invalid("both host and hostaddr are missing"));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(invalid("invalid number of ports"));
    }
    let mut targets: Vec<Target> = (0..count)
        .filter_map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match (addrs.get(i), hosts.get(i)) {
                (Some(addr), host) => {
                    let name = match host {
                        Some(Host::Tcp(host)) => host.clone(),
                        _ => addr.to_string(),
                    };
                    Some(Target::Tcp { address: addr.to_string(), port, name })
                }
                (None, Some(Host::Tcp(host))) => Some(Target::Tcp { address: host.clone(), port, name: host.clone() }),
                #[cfg(unix)]
                (None, Some(Host::Unix(dir))) => Some(Target::Unix(dir.join(format!(".s.PGSQL.{port}")))),
                (None, None) => None,
            }
        })
        .collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        targets.shuffle(&mut rand::rng());
    }
    Ok(targets)
}

/// A session on `target`: the first of its addresses that connects and
/// has the properties `target_session_attrs` asks for.
async fn session(
    connect: &CountingConnect,
    config: &Config,
    target: Target,
) -> Result<(Client, JoinHandle<()>), Failure> {
    let (addresses, tls_name) = match target {
        Target::Tcp { address, port, name } => {
            let resolved = tokio::net::lookup_host((address.as_str(), port)).await;
            let resolved =
                resolved.map_err(|e| Failure::Io(io::Error::new(e.kind(), format!("cannot resolve {address}: {e}"))));
            let mut addrs: Vec<_> = resolved?.collect();
            if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
                addrs.shuffle(&mut rand::rng());
            }
            (addrs.into_iter().map(SocketAddress::Tcp).collect(), name)
        }
        #[cfg(unix)]
        Target::Unix(path) => (vec![SocketAddress::Unix(path)], String::new()),
    };
    let stats = &connect.stats;
    let mut last = Failure::Io(io::Error::new(io::ErrorKind::InvalidInput, "could not resolve any addresses"));
    for address in addresses {
        let name = address.to_string();
        let socket = match open(config, &address).await {
            Ok(socket) => socket,
            Err(e) => {
                last = Failure::Io(io::Error::new(e.kind(), format!("cannot connect to {name}: {e}")));
                continue;
            }
        };
        let started = match (&connect.tls, &address) {
            (Some(tls), SocketAddress::Tcp(peer)) => {
                let connector = match tls.connector::<Counted<Socket>>(&tls_name, peer.ip(), stats.clone()) {
                    Ok(connector) => connector,
                    Err(e) => {
                        last = Failure::Io(e);
                        continue;
                    }
                };
                // Started without asking, TLS leaves nothing in the clear on the socket.
                let socket = if config.get_ssl_negotiation() == SslNegotiation::Direct {
                    Counted::encrypted(socket, stats.clone())
                } else {
                    Counted::new(socket, stats.clone())
                };
                start(config, socket, connector).await
            }
            // TLS disabled, or a Unix socket (never TLS, as in libpq).
            _ => start(&without_tls(config), Counted::new(socket, stats.clone()), NoTls).await,
        };
        let (client, task) = match started {
            Ok(started) => started,
            Err(e) => {
                last = Failure::Driver(e);
                continue;
            }
        };
        match has_session_attrs(&client, config.get_target_session_attrs()).await {
            Ok(true) => return Ok((client, task)),
            Ok(false) => {
                last = Failure::Io(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the server's session is not what target_session_attrs asks for",
                ))
            }
            Err(e) => last = Failure::Driver(e),
        }
        task.abort();
    }
    Err(last)
}

enum SocketAddress {
    Tcp(std::net::SocketAddr),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Tcp(addr) => addr.fmt(f),
            #[cfg(unix)]
            SocketAddress::Unix(path) => path.display().fmt(f),
        }
    }
}

/// Starts the session over `socket`, negotiating TLS with `tls` as the
/// config's `sslmode` says, its connection driven by a task of its own.
async fn start<T>(
    config: &Config,
    socket: Counted<Socket>,
    tls: T,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error>
where
    T: TlsConnect<Counted<Socket>>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect_raw(socket, tls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target: "deadpool.postgres", "Connection error: {e}");
        }
    });
    Ok((client, task))
}

/// `config` for a session in the clear (with `NoTls`, any other `sslmode`
/// would ask the server for TLS, and fail when it agreed).
fn without_tls(config: &Config) -> Config {
    let mut plain = config.clone();
    plain.ssl_mode(SslMode::Disable);
    plain
}

/// Connects a socket within `connect_timeout`, set up as the driver sets its own.
async fn open(config: &Config, address: &SocketAddress) -> io::Result<Socket> {
    match address {
        SocketAddress::Tcp(addr) => {
            let stream = within(config.get_connect_timeout(), TcpStream::connect(*addr)).await?;
            stream.set_nodelay(true)?;
            let socket = SockRef::from(&stream);
            #[cfg(target_os = "linux")]
            if let Some(timeout) = config.get_tcp_user_timeout() {
                socket.set_tcp_user_timeout(Some(*timeout))?;
            }
            if config.get_keepalives() {
                let mut keepalive = TcpKeepalive::new().with_time(config.get_keepalives_idle());
                if let Some(interval) = config.get_keepalives_interval() {
                    keepalive = keepalive.with_interval(interval);
                }
                if let Some(retries) = config.get_keepalives_retries() {
                    keepalive = keepalive.with_retries(retries);
                }
                socket.set_tcp_keepalive(&keepalive)?;
            }
            Ok(Either::Left(stream))
        }
        #[cfg(unix)]
        SocketAddress::Unix(path) => {
            Ok(Either::Right(within(config.get_connect_timeout(), tokio::net::UnixStream::connect(path)).await?))
        }
    }
}

async fn within<T>(timeout: Option<&Duration>, connect: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match timeout {
        Some(timeout) => tokio::time::timeout(*timeout, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))),
        None => connect.await,
    }
}

/// Whether the session has what `target_session_attrs` asks for (always,
/// unless it asks for something: then one query at connection time, the
/// driver's own).
async fn has_session_attrs(client: &Client, wanted: TargetSessionAttrs) -> Result<bool, tokio_postgres::Error> {
    let read_only = match wanted {
        TargetSessionAttrs::ReadWrite => false,
        TargetSessionAttrs::ReadOnly => true,
        _ => return Ok(true),
    };
    let answer = client.simple_query("SHOW transaction_read_only").await?;
    let on = answer.iter().any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("on")));
    Ok(on == read_only)
}

/// `e` as the driver's error type, which only the driver can make: it is
/// handed a stream that fails with `e`, and reports that as it reports a
/// socket that fails (so the store sees the database unavailable).
async fn driver_error(config: &Config, e: io::Error) -> tokio_postgres::Error {
    match without_tls(config).connect_raw(Failing(Some(e)), NoTls).await {
        Err(e) => e,
        Ok(_) => unreachable!("a session cannot start over a stream whose every read and write fails"),
    }
}

/// A stream whose every read and write fails (with the given error first).
struct Failing(Option<io::Error>);

impl Failing {
    fn error(&mut self) -> io::Error {
        self.0.take().unwrap_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))
    }
}

impl AsyncRead for Failing {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }
}

impl AsyncWrite for Failing {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(self.get_mut().error()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
