//! HTTP/1.1 by hand on a TCP stream the test holds (connection tests: the
//! test decides which connection a request goes on, and sees it closed).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A backstop for reads that must end: far beyond any timeout the tests
/// configure, so it only turns a hang into a failure.
pub const BACKSTOP: Duration = Duration::from_secs(60);

/// Reads until the peer closes the connection; panics if it sends anything
/// or stays open past the backstop.
pub async fn assert_closed_by_server(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(BACKSTOP, stream.read(&mut buf)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Ok(n)) => panic!("{what}: the server sent {:?} instead of closing", String::from_utf8_lossy(&buf[..n])),
        Ok(Err(e)) => panic!("{what}: reading failed: {e}"),
        Err(_) => panic!("{what}: still open after {BACKSTOP:?}"),
    }
}

/// One `GET path` on `stream` (keep-alive); the status and the body, or
/// `None` when the server closed the connection before answering.
pub async fn try_get_on(stream: &mut TcpStream, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        assert!(is_closed(&e), "writing a request: {e}");
        return None;
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(BACKSTOP, stream.read(&mut byte)).await.expect("an answer within the backstop") {
            Ok(0) if head.is_empty() => return None,
            Ok(0) => panic!("the connection closed mid-answer: {}", String::from_utf8_lossy(&head)),
            Ok(_) => head.push(byte[0]),
            Err(e) if head.is_empty() && is_closed(&e) => return None,
            Err(e) => panic!("reading an answer: {e}"),
        }
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("reading the body");
    let status = head.split_whitespace().nth(1).expect("a status").parse().expect("a numeric status");
    Some((status, String::from_utf8(body).expect("a UTF-8 body")))
}

/// One `GET path` on `stream`, answered: the status and the body.
pub async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    try_get_on(stream, path).await.unwrap_or_else(|| panic!("GET {path}: the server closed the connection"))
}

/// One `GET /healthz` on `stream`; returns the status.
pub async fn healthz_on(stream: &mut TcpStream) -> u16 {
    get_on(stream, "/healthz").await.0
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionAborted
    )
}
