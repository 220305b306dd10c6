//! Loopback ports for the servers the tests start (the service, brokers,
//! chromedriver) and for ports nothing listens on.
//!
//! A port from `bind("127.0.0.1:0")`, let go at once, comes from the
//! kernel's ephemeral range, the same range every outgoing connection takes
//! its source port from: between the test letting it go and its server
//! binding it, any of the many connections the tests open may take it, and
//! the server then fails to start. So ports come from below that range,
//! where the kernel never hands one out by itself, each at most once per
//! test process (a counter, offset by the process id so that two test
//! processes at once start apart), and only if binding it works now.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range the tests take from.
const WINDOW: u32 = 10_000;
/// The lowest port considered: above the ports services usually listen on.
const FLOOR: u32 = 10_000;

/// A loopback port free now that no other caller in this process gets again
/// and that the kernel does not give out as an outgoing connection's source port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some((low, span)) = window() else {
        // No room below the ephemeral range on this machine: the kernel's pick.
        return TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    };
    let offset = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + offset.wrapping_add(n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + span);
}

/// The ports below the kernel's ephemeral range (`ip_local_port_range`):
/// the first and how many, at most [`WINDOW`], never below [`FLOOR`]. Read
/// once per process.
fn window() -> Option<(u32, u32)> {
    static WINDOW_OF_THIS_MACHINE: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *WINDOW_OF_THIS_MACHINE.get_or_init(read_window)
}

fn read_window() -> Option<(u32, u32)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let ephemeral_low: u32 = range.as_deref().and_then(|r| r.split_whitespace().next()?.parse().ok()).unwrap_or(32_768);
    let low = ephemeral_low.saturating_sub(WINDOW).max(FLOOR);
    let span = ephemeral_low.saturating_sub(low);
    (span >= 1_000).then_some((low, span))
}

#[test]
fn ports_are_below_the_ephemeral_range_and_never_given_twice() {
    let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "a port given twice: {ports:?}");
    if let Some((low, span)) = window() {
        assert!(
            ports.iter().all(|&p| (low..low + span).contains(&u32::from(p))),
            "{ports:?} outside {low}..{}",
            low + span
        );
    }
    for port in ports {
        TcpListener::bind(("127.0.0.1", port)).expect("a given port is free");
    }
}
