//! The store's PostgreSQL connections counted from their bytes: every
//! connection's stream goes through [`Counted`], which follows the
//! protocol's message framing (a type byte and a 4-byte big-endian length
//! that counts itself; the client's start-up messages have no type byte)
//! and counts, exactly whatever the driver does:
//!
//! - a **round trip** for every `Sync` or simple `Query` message the
//!   client sends: the server answers each with one `ReadyForQuery`, and
//!   the client waits for it (a statement's Parse, Bind, Execute, Sync is
//!   one, as is `BEGIN` or `COMMIT`);
//! - a **transaction** for every `ReadyForQuery` saying the session is
//!   idle (status `I`): the end of an implicit transaction (a statement in
//!   autocommit) or of an explicit one. The one ending a connection's
//!   start-up is not a transaction and is not counted.
//!
//! The figures are `Store::wire_totals`, exported on `/metrics`.
//!
//! Encryption: the count follows plaintext. A session whose client asks
//! for TLS or GSS encryption and whose server accepts it is not counted
//! from there on (its bytes are ciphertext): the TLS stream carrying it is
//! counted instead, on its plaintext side, by a [`Counted`] of its own
//! (`tls::CountingTls`). A server that declines leaves the socket's
//! [`Counted`] counting the session in the clear.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::super::stats::WireStats;

/// The request codes of the start-up messages that are not `StartupMessage`.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A connection's stream, counted as its bytes pass (see the module's doc).
pub(super) struct Counted<S> {
    inner: S,
    session: Session,
    stats: Arc<WireStats>,
}

impl<S> Counted<S> {
    pub(super) fn new(inner: S, stats: Arc<WireStats>) -> Counted<S> {
        Counted { inner, session: Session::default(), stats }
    }

    /// A stream that carries ciphertext from its first byte (TLS started
    /// without asking, `sslnegotiation=direct`): passed on, never counted.
    pub(super) fn encrypted(inner: S, stats: Arc<WireStats>) -> Counted<S> {
        Counted { inner, session: Session { phase: Phase::Opaque, ..Session::default() }, stats }
    }

    /// The stream it counts.
    pub(super) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let counts = this.session.received(&buf.filled()[before..]);
            counts.add_to(&this.stats);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        // Only what the stream took: the rest comes again in a later write.
        if let Poll::Ready(Ok(written)) = poll {
            let counts = this.session.sent(&buf[..written]);
            counts.add_to(&this.stats);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What some bytes of a session added up to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    round_trips: u64,
    transactions: u64,
}

impl Counts {
    fn add_to(self, stats: &WireStats) {
        stats.add(self.round_trips, self.transactions);
    }
}

/// Where a session is in the protocol, as far as counting needs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The client's next message is a start-up message (no type byte).
    #[default]
    Startup,
    /// The client asked for encryption: the server answers with one bare byte.
    EncryptionAnswer,
    /// Start-up sent: every message both ways has a type byte.
    Running,
    /// Encrypted, a cancel request's connection, or bytes that are not the
    /// protocol: nothing more is counted.
    Opaque,
}

/// One session's two directions and where it is.
#[derive(Debug, Default)]
struct Session {
    phase: Phase,
    /// What the client sends.
    front: Framer,
    /// What the server sends.
    back: Framer,
    /// Whether the `ReadyForQuery` ending the start-up has come.
    ready: bool,
}

impl Session {
    /// Follows bytes the client sent.
    fn sent(&mut self, mut bytes: &[u8]) -> Counts {
        let mut counts = Counts::default();
        while !bytes.is_empty() {
            let shape = match self.phase {
                Phase::Opaque => break,
                // The client waits for the answer before it sends more.
                Phase::EncryptionAnswer => {
                    self.phase = Phase::Opaque;
                    break;
                }
                Phase::Startup => Shape::STARTUP,
                Phase::Running => Shape::FRONTEND,
            };
            match self.front.next(&mut bytes, shape) {
                Next::Head(head) => match head.kind {
                    None => {
                        self.phase = match head.code() {
                            Some(SSL_REQUEST | GSSENC_REQUEST) => Phase::EncryptionAnswer,
                            Some(CANCEL_REQUEST) | None => Phase::Opaque,
                            // A StartupMessage (its protocol version).
                            Some(_) => Phase::Running,
                        }
                    }
                    Some(b'S' | b'Q') => counts.round_trips += 1,
                    Some(_) => {}
                },
                Next::More => {}
                Next::Garbled => self.phase = Phase::Opaque,
            }
        }
        counts
    }

    /// Follows bytes the server sent.
    fn received(&mut self, mut bytes: &[u8]) -> Counts {
        let mut counts = Counts::default();
        while !bytes.is_empty() {
            match self.phase {
                Phase::Opaque => break,
                Phase::EncryptionAnswer => {
                    // 'S' or 'G': encryption starts; 'N': the client sends its
                    // StartupMessage in the clear.
                    self.phase = if bytes[0] == b'N' { Phase::Startup } else { Phase::Opaque };
                    bytes = &bytes[1..];
                    continue;
                }
                Phase::Startup | Phase::Running => {}
            }
            match self.back.next(&mut bytes, Shape::BACKEND) {
                Next::Head(head) if head.kind == Some(b'Z') => {
                    if !self.ready {
                        self.ready = true;
                    } else if head.first() == Some(b'I') {
                        counts.transactions += 1;
                    }
                }
                Next::Head(_) | Next::More => {}
                Next::Garbled => self.phase = Phase::Opaque,
            }
        }
        counts
    }
}

/// How one direction's messages are laid out at a point of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// Whether each message starts with a type byte.
    typed: bool,
    /// How many bytes of the body the head keeps (a start-up message's
    /// request code, a `ReadyForQuery`'s status).
    peek: usize,
}

impl Shape {
    const STARTUP: Shape = Shape { typed: false, peek: 4 };
    const FRONTEND: Shape = Shape { typed: true, peek: 0 };
    const BACKEND: Shape = Shape { typed: true, peek: 1 };
}

/// The longest head: a type byte, the length, four bytes of body.
const MAX_HEAD: usize = 9;

/// A message's type byte (none for a start-up message) and the first bytes
/// of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    kind: Option<u8>,
    body: [u8; 4],
    body_len: usize,
}

impl Head {
    fn first(&self) -> Option<u8> {
        (self.body_len >= 1).then_some(self.body[0])
    }

    /// A start-up message's request code (or protocol version).
    fn code(&self) -> Option<u32> {
        (self.body_len >= 4).then(|| u32::from_be_bytes(self.body))
    }
}

/// What [`Framer::next`] made of the bytes it took.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A message's head is complete (its body may still be coming).
    Head(Head),
    /// The bytes are used up within a head or a body.
    More,
    /// A length no message can have.
    Garbled,
}

/// Cuts one direction's bytes into messages, whatever chunks they come
/// in: gathers each message's head, then skips the rest of its body.
#[derive(Debug, Default)]
struct Framer {
    head: [u8; MAX_HEAD],
    /// Bytes of the current head gathered so far.
    have: usize,
    /// Bytes of the current body still to skip.
    skip: usize,
}

impl Framer {
    /// Takes bytes from the front of `bytes` up to the end of the next
    /// message head (or of `bytes`).
    fn next(&mut self, bytes: &mut &[u8], shape: Shape) -> Next {
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            *bytes = &bytes[n..];
            if self.skip > 0 || bytes.is_empty() {
                return Next::More;
            }
        }
        let length_at = usize::from(shape.typed);
        let header = length_at + 4;
        if self.have < header {
            let n = (header - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            *bytes = &bytes[n..];
            if self.have < header {
                return Next::More;
            }
        }
        let mut length = [0u8; 4];
        length.copy_from_slice(&self.head[length_at..header]);
        // The length counts itself, not the type byte.
        let Some(body_len) = (u32::from_be_bytes(length) as usize).checked_sub(4) else {
            return Next::Garbled;
        };
        let peek = shape.peek.min(body_len);
        if self.have < header + peek {
            let n = (header + peek - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            *bytes = &bytes[n..];
            if self.have < header + peek {
                return Next::More;
            }
        }
        let mut body = [0u8; 4];
        body[..peek].copy_from_slice(&self.head[header..header + peek]);
        let head = Head { kind: shape.typed.then_some(self.head[0]), body, body_len: peek };
        self.have = 0;
        self.skip = body_len - peek;
        Next::Head(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn startup(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut out = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(rest);
        out
    }

    /// A StartupMessage (protocol 3.0) with its parameters.
    fn startup_message() -> Vec<u8> {
        startup(196_608, b"user\0root\0database\0test\0\0")
    }

    /// What a statement costs the client: Parse, Bind, Describe, Execute, Sync.
    fn extended_query() -> Vec<u8> {
        [
            message(b'P', b"\0SELECT 1\0\0\0"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'D', b"P\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat()
    }

    /// The server's answer to a statement, ending with `ReadyForQuery(status)`.
    fn answer(status: u8) -> Vec<u8> {
        [
            message(b'1', b""),
            message(b'2', b""),
            message(b'T', &[0, 0]),
            message(b'C', b"SELECT 1\0"),
            message(b'Z', &[status]),
        ]
        .concat()
    }

    /// The server's side of a start-up: authentication ok, a parameter,
    /// the key data, and the first ReadyForQuery.
    fn startup_answer() -> Vec<u8> {
        [
            message(b'R', &[0, 0, 0, 0]),
            message(b'S', b"server_version\x0015.2\x00"),
            message(b'K', &[0; 8]),
            message(b'Z', b"I"),
        ]
        .concat()
    }

    /// The client's and the server's bytes of a session: start-up, then a
    /// statement in autocommit, then BEGIN, a statement, COMMIT.
    fn plain_session() -> (Vec<u8>, Vec<u8>) {
        let front = [
            startup_message(),
            extended_query(),
            message(b'Q', b"BEGIN\0"),
            extended_query(),
            message(b'Q', b"COMMIT\0"),
            message(b'X', b""),
        ]
        .concat();
        let back = [
            startup_answer(),
            answer(b'I'),
            [message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat(),
            answer(b'T'),
            [message(b'C', b"COMMIT\0"), message(b'Z', b"I")].concat(),
        ]
        .concat();
        (front, back)
    }

    fn follow(front: &[&[u8]], back: &[&[u8]]) -> Counts {
        let mut session = Session::default();
        let mut counts = Counts::default();
        for chunk in front {
            let sent = session.sent(chunk);
            counts.round_trips += sent.round_trips;
        }
        for chunk in back {
            counts.transactions += session.received(chunk).transactions;
        }
        counts
    }

    #[test]
    fn a_session_counts_its_syncs_queries_and_idle_ready_for_queries() {
        let (front, back) = plain_session();
        // Four round trips (the statement; BEGIN, the statement, COMMIT);
        // two transactions (the start-up's ReadyForQuery is not one).
        assert_eq!(follow(&[&front], &[&back]), Counts { round_trips: 4, transactions: 2 });
    }

    #[test]
    fn the_counts_do_not_depend_on_how_the_bytes_are_cut() {
        let (front, back) = plain_session();
        let whole = follow(&[&front], &[&back]);
        for size in 1..=11 {
            let front: Vec<&[u8]> = front.chunks(size).collect();
            let back: Vec<&[u8]> = back.chunks(size).collect();
            assert_eq!(follow(&front, &back), whole, "chunks of {size} bytes");
        }
        for cut in 0..front.len() {
            let (a, b) = front.split_at(cut);
            assert_eq!(follow(&[a, b], &[&back]).round_trips, whole.round_trips, "client bytes cut at {cut}");
        }
        for cut in 0..back.len() {
            let (a, b) = back.split_at(cut);
            assert_eq!(follow(&[&front], &[a, b]).transactions, whole.transactions, "server bytes cut at {cut}");
        }
    }

    #[test]
    fn a_refused_encryption_request_is_followed_by_a_counted_session() {
        let (front, back) = plain_session();
        let mut session = Session::default();
        assert_eq!(session.sent(&startup(SSL_REQUEST, b"")), Counts::default());
        assert_eq!(session.received(b"N"), Counts::default());
        assert_eq!(session.sent(&front).round_trips, 4);
        assert_eq!(session.received(&back).transactions, 2);
    }

    #[test]
    fn an_accepted_encryption_request_stops_the_count() {
        let mut session = Session::default();
        session.sent(&startup(SSL_REQUEST, b""));
        // 'S', then the TLS handshake's bytes in the same read.
        assert_eq!(session.received(&[b'S', 0x16, 0x03, 0x01, 0x02, 0x00]), Counts::default());
        let (front, back) = plain_session();
        assert_eq!(session.sent(&front), Counts::default());
        assert_eq!(session.received(&back), Counts::default());
    }

    #[test]
    fn a_cancel_request_or_a_garbled_length_counts_nothing() {
        let mut session = Session::default();
        session.sent(&startup(CANCEL_REQUEST, &[0; 8]));
        assert_eq!(session.sent(&message(b'S', b"")), Counts::default());

        let mut session = Session::default();
        session.sent(&startup_message());
        // A length of 2 is shorter than the length field itself.
        assert_eq!(session.sent(&[b'S', 0, 0, 0, 2]), Counts::default());
        assert_eq!(session.sent(&message(b'S', b"")), Counts::default());
    }

    #[test]
    fn only_idle_ready_for_queries_end_a_transaction() {
        let mut session = Session::default();
        session.sent(&startup_message());
        assert_eq!(session.received(&startup_answer()), Counts::default());
        for (status, transactions) in [(b'T', 0), (b'E', 0), (b'I', 1)] {
            assert_eq!(session.received(&message(b'Z', &[status])).transactions, transactions, "status {status}");
        }
    }
}
