//! A client that wants a final answer: it sends one order under one
//! `Idempotency-Key` again and again (through kills of the service,
//! `202 PAYMENT_PENDING`, `IDEMPOTENCY_IN_PROGRESS` and 503s) until it gets
//! 201 or 402, as a real client retrying a lost answer would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use super::server::{WEB_KEY, token};

/// What a client finally got for its key.
#[derive(Debug, Clone)]
pub struct Final {
    pub status: u16,
    pub body: String,
    /// Whether the order was answered `202 PAYMENT_PENDING` before this.
    pub was_pending: bool,
}

/// What the clients met on the way, for the test's log line.
#[derive(Debug, Default)]
pub struct Seen {
    pub connection_errors: AtomicUsize,
    pub pending: AtomicUsize,
    pub in_progress: AtomicUsize,
    pub unavailable: AtomicUsize,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection errors, {} PAYMENT_PENDING, {} IDEMPOTENCY_IN_PROGRESS, {} unavailable on the way",
            self.connection_errors.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
            self.in_progress.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
        )
    }
}

/// Sends `body` for `customer` on the web channel to the service on `port`
/// under `key` until a final answer (201 or 402); panics on any other
/// answer, or after 300 s.
pub async fn order_until_final(
    client: &reqwest::Client,
    port: u16,
    customer: &str,
    key: &str,
    body: &str,
    seen: &Seen,
) -> Final {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut was_pending = false;
    loop {
        assert!(Instant::now() < deadline, "no final answer for {customer}");
        let sent = client
            .post(format!("http://127.0.0.1:{port}/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(customer))
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let Ok(answer) = sent else {
            // The service is down (killed): ask again, same key.
            seen.connection_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        };
        let status = answer.status().as_u16();
        let retry_after = answer.headers().get("retry-after").cloned();
        let Ok(text) = answer.text().await else {
            seen.connection_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match status {
            201 | 402 => return Final { status, body: text, was_pending },
            202 => {
                let invoice: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(invoice["status"], "PAYMENT_PENDING", "{text}");
                assert_eq!(invoice["payment"]["status"], "PENDING", "{text}");
                seen.pending.fetch_add(1, Ordering::Relaxed);
                was_pending = true;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            409 if text.contains("IDEMPOTENCY_IN_PROGRESS") => {
                assert!(retry_after.is_some(), "409 IDEMPOTENCY_IN_PROGRESS without Retry-After");
                seen.in_progress.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Shutting down or the store briefly unavailable: retryable.
            503 => {
                seen.unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{customer}: unexpected {other} {text}"),
        }
    }
}

/// The final answers so far, by customer number.
pub type Finals = Arc<Mutex<BTreeMap<usize, Final>>>;

/// `clients` tasks each take the next customer number (`0..customers`) and
/// run `order` for it, until none is left; meanwhile `disturb` runs (kills
/// of the service, a gateway outage) with the answers so far. Returns every
/// customer's final answer and what the clients met on the way.
pub async fn run_clients<O, F>(
    clients: usize,
    customers: usize,
    order: O,
    disturb: impl AsyncFnOnce(Finals),
) -> (BTreeMap<usize, Final>, Arc<Seen>)
where
    O: Fn(usize, Arc<Seen>) -> F + Clone + Send + 'static,
    F: Future<Output = Final> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let finals: Finals = Arc::default();
    let seen = Arc::new(Seen::default());
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (order, next, finals, seen) = (order.clone(), next.clone(), finals.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= customers {
                        return;
                    }
                    let answer = order(n, seen.clone()).await;
                    finals.lock().await.insert(n, answer);
                }
            })
        })
        .collect();
    disturb(finals.clone()).await;
    for task in tasks {
        task.await.expect("a client task");
    }
    let finals = finals.lock().await.clone();
    assert_eq!(finals.len(), customers, "every customer has a final answer");
    (finals, seen)
}
