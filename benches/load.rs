//! HTTP load against the real service (issue: "HTTP load"): the router and
//! server of `smartmart serve` started in-process on 127.0.0.1:0 with the
//! bundled WASM rules, the sandbox gateway and a fresh data dir; a small
//! reqwest load generator in another runtime of the same process.
//!
//! Each order is UC1-like and goes over HTTP as a customer would place it:
//! `PUT /v1/carts/{id}` (TV-55-OLED + HDMI-2M) then `POST /v1/orders`
//! (GOLD and SILVER customers, half with WELCOME10). Customers are created
//! and stock is made plentiful through the admin API first.
//!
//! (a) closed loop: N clients (16, 64), each placing one order after the
//!     other: the maximum orders/s;
//! (b) open loop: 500, 1000, 2000 orders/s for ~5 s each. Every order has
//!     an intended send time for its POST (its cart is PUT just before);
//!     the POST latency is measured from that intended time, so a server
//!     that falls behind is charged for the queue (no coordinated omission).
//!
//! Bounded: fixed durations, at most `MAX_IN_FLIGHT` open-loop orders, a
//! 10 s client timeout; loopback only.
//!
//! Run: `cargo bench -p smartmart --bench load` (release build). Figures
//! go to BENCHMARKS.md ("HTTP load"). `LOAD_SECS=2` shortens every phase;
//! `LOAD_CLIENTS=1,16` and `LOAD_RATES=500` choose the phases (empty: none).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smartmart::app::{Dataset, Engine, EngineSettings};
use smartmart::http::Credentials;
use smartmart::http::{AppState, ConnectionLimits, serve_with};
use smartmart::test_support::mint_token;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "load-bench-identity-secret-0123";
const WEB_KEY: &str = "load-bench-web-channel-key-0123";
const ADMIN_KEY: &str = "load-bench-admin-key-0123456789";
/// Customers created for the run (each in-flight order needs its own cart).
const CUSTOMERS: usize = 1024;
const MAX_IN_FLIGHT: usize = 1000;
const SKUS: [&str; 2] = ["TV-55-OLED", "HDMI-2M"];
const WAREHOUSES: [(&str, f64, f64); 4] =
    [("WH-BLR", 12.97, 77.59), ("WH-BOM", 19.07, 72.87), ("WH-DEL", 28.61, 77.20), ("WH-MAA", 13.08, 80.27)];

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A comma-separated list from the environment (`LOAD_CLIENTS=16`, `LOAD_RATES=`), else `default`.
fn list_from_env(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(text) => text.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

fn phase_secs() -> f64 {
    std::env::var("LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0)
}

/// One customer of the run: token, cart URL, order body.
struct Customer {
    token: String,
    cart_url: String,
    order_body: Vec<u8>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    cart_body: Vec<u8>,
}

/// CPU seconds used so far by this process's threads: (server runtime,
/// load generator runtime, other threads such as the rule engine's epoch
/// ticker), from /proc/self/task/*/stat (Linux; zeros elsewhere).
fn cpu_seconds() -> (f64, f64, f64) {
    let mut split = (0.0, 0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return split;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after `state`.
        let ticks: f64 = fields.get(11).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        let seconds = ticks / 100.0;
        match comm {
            c if c.starts_with("srv") => split.0 += seconds,
            c if c.starts_with("load") => split.1 += seconds,
            _ => split.2 += seconds,
        }
    }
    split
}

fn cpu_delta(before: (f64, f64, f64)) -> (f64, f64, f64) {
    let now = cpu_seconds();
    (now.0 - before.0, now.1 - before.1, now.2 - before.2)
}

/// What one order measured.
enum Outcome {
    Placed { post: Duration, timings: Option<Value> },
    Failed(String),
}

impl Client {
    /// PUT the cart, then (at `post_at` if given) POST the order.
    async fn order(&self, customer: &Customer, post_at: Option<tokio::time::Instant>, sample: bool) -> Outcome {
        let cart = self
            .http
            .put(&customer.cart_url)
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", &customer.token)
            .header("content-type", "application/json")
            .body(self.cart_body.clone())
            .send()
            .await;
        match cart {
            Ok(r) if r.status() == 200 => {
                let _ = r.bytes().await;
            }
            Ok(r) => return Outcome::Failed(format!("cart {}", r.status())),
            Err(e) => return Outcome::Failed(format!("cart: {e}")),
        }
        let started = match post_at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                at.into_std()
            }
            None => Instant::now(),
        };
        let answer = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", &customer.token)
            .header("content-type", "application/json")
            .body(customer.order_body.clone())
            .send()
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Outcome::Failed(format!("order: {e}")),
        };
        let status = answer.status();
        let bytes = answer.bytes().await;
        let post = started.elapsed();
        match bytes {
            Ok(bytes) if status == 201 => {
                let timings = sample
                    .then(|| serde_json::from_slice::<Value>(&bytes).ok().map(|v| v["timings_ms"].clone()))
                    .flatten();
                Outcome::Placed { post, timings }
            }
            Ok(bytes) => Outcome::Failed(format!("order {status}: {}", String::from_utf8_lossy(&bytes))),
            Err(e) => Outcome::Failed(format!("order body: {e}")),
        }
    }
}

/// The results of one phase.
#[derive(Default)]
struct Phase {
    name: String,
    target_rate: Option<f64>,
    elapsed: Duration,
    placed: Vec<Duration>,
    failures: Vec<String>,
    timings: Vec<Value>,
    /// CPU seconds of the phase: server runtime, load generator, other threads.
    cpu: (f64, f64, f64),
}

impl Phase {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Placed { post, timings } => {
                self.placed.push(post);
                self.timings.extend(timings);
            }
            Outcome::Failed(why) => self.failures.push(why),
        }
    }

    fn rate(&self) -> f64 {
        self.placed.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn pct_ms(&mut self, p: f64) -> f64 {
        self.placed.sort();
        if self.placed.is_empty() {
            return f64::NAN;
        }
        self.placed[((self.placed.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
    }

    fn row(&mut self) -> String {
        let target = self.target_rate.map_or("max".to_string(), |r| format!("{r:.0}"));
        let (p50, p90, p99, max) = (self.pct_ms(0.50), self.pct_ms(0.90), self.pct_ms(0.99), self.pct_ms(1.0));
        let per_order = |seconds: f64| seconds * 1e3 / self.placed.len().max(1) as f64;
        let (server, load, other) = (per_order(self.cpu.0), per_order(self.cpu.1), per_order(self.cpu.2));
        format!(
            "| {} | {target} | {:.0} | {} | {} | {p50:.2} | {p90:.2} | {p99:.2} | {max:.2} | {server:.2} | {load:.2} | {other:.2} |",
            self.name,
            self.rate(),
            self.placed.len(),
            self.failures.len(),
        )
    }
}

/// Runs the service in its own runtime (like `smartmart serve`); returns its base URL.
fn start_service(
    dir: &std::path::Path,
    shutdown: CancellationToken,
) -> (String, Arc<Engine>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    let thread = std::thread::Builder::new().name("srv-main".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("srv")
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let settings = EngineSettings::new(&dir, &repo().join("plugins/bundled"), SECRET.as_bytes());
            let engine = Arc::new(Engine::start(settings).await.expect("the engine starts"));
            Dataset::read(&repo().join("examples/demo/dataset.json"))
                .expect("the demo data set")
                .load_into(engine.store())
                .await
                .expect("loading the demo data set");
            let credentials = Credentials {
                channel_keys: [("web".to_string(), WEB_KEY.to_string())].into_iter().collect(),
                admin_key: ADMIN_KEY.into(),
                identity_secret: SECRET.into(),
            };
            let state = AppState::new(engine.clone(), credentials, 256 * 1024, Duration::from_secs(10));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
            let base = format!("http://{}", listener.local_addr().unwrap());
            tx.send((base, engine.clone())).unwrap();
            // Every simulated customer connects from 127.0.0.1: no per-client cap (the
            // open loop may hold up to MAX_IN_FLIGHT connections).
            let limits = ConnectionLimits { max_connections_per_client: Some(0), ..ConnectionLimits::default() };
            serve_with(listener, state, shutdown, Duration::from_secs(10), limits).await.expect("the server runs");
        });
    });
    let thread = thread.expect("spawning the server thread");
    let (base, engine) = rx.recv().expect("the service started");
    (base, engine, thread)
}

async fn admin_put(http: &reqwest::Client, base: &str, path: &str, body: Value) {
    let answer = http.put(format!("{base}{path}")).bearer_auth(ADMIN_KEY).json(&body).send().await.expect("admin call");
    let status = answer.status();
    assert!(status.is_success(), "PUT {path}: {status} {}", answer.text().await.unwrap_or_default());
}

/// Customers (GOLD and SILVER, in the four cities) and plentiful stock, through the admin API.
async fn prepare(http: &reqwest::Client, base: &str) -> Vec<Arc<Customer>> {
    let mut customers = Vec::new();
    {
        for i in 0..CUSTOMERS {
            let id = format!("L-{i:05}");
            let (_, lat, lon) = WAREHOUSES[i % WAREHOUSES.len()];
            let body = json!({
                "name": format!("Load customer {i}"), "email": format!("load{i}@example.com"), "phone": "+91-80-5550-0000",
                "tier": if i % 2 == 0 { "GOLD" } else { "SILVER" }, "status": "ACTIVE",
                "location": {"lat": lat + 0.01, "lon": lon + 0.01},
            });
            admin_put(http, base, &format!("/v1/admin/customers/{id}"), body).await;
            let order = if i % 4 < 2 {
                json!({"customer_id": id, "coupon_code": "WELCOME10", "payment": {"token": "tok_ok"}})
            } else {
                json!({"customer_id": id, "payment": {"token": "tok_ok"}})
            };
            customers.push(Arc::new(Customer {
                token: mint_token(SECRET.as_bytes(), &id, Duration::from_secs(3600)),
                cart_url: format!("{base}/v1/carts/{id}"),
                order_body: order.to_string().into_bytes(),
            }));
        }
    }
    for (warehouse, _, _) in WAREHOUSES {
        for sku in SKUS {
            admin_put(http, base, &format!("/v1/admin/stock/{warehouse}/{sku}"), json!({"on_hand": 4_000_000_000u64}))
                .await;
        }
    }
    customers
}

/// (a) `clients` concurrent clients, each one order after the other, for `secs`.
async fn closed_loop(client: Arc<Client>, customers: &[Arc<Customer>], clients: usize, secs: f64) -> Phase {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for customer in &customers[..clients] {
        let (client, customer) = (client.clone(), customer.clone());
        tasks.push(tokio::spawn(async move {
            let mut phase = Phase::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                phase.record(client.order(&customer, None, n.is_multiple_of(8)).await);
            }
            phase
        }));
    }
    let mut phase = Phase {
        name: format!("closed loop, {clients} client{}", if clients == 1 { "" } else { "s" }),
        ..Phase::default()
    };
    for task in tasks {
        let part = task.await.expect("a client task");
        phase.placed.extend(part.placed);
        phase.failures.extend(part.failures);
        phase.timings.extend(part.timings);
    }
    phase.elapsed = started.elapsed();
    phase
}

/// (b) orders at `rate`/s for `secs`; POST latency from each order's intended send time.
async fn open_loop(client: Arc<Client>, customers: &[Arc<Customer>], rate: f64, secs: f64) -> Phase {
    // Free customers: an order takes one for its cart and gives it back.
    let (free_tx, free_rx) = tokio::sync::mpsc::unbounded_channel::<Arc<Customer>>();
    for customer in customers {
        free_tx.send(customer.clone()).unwrap();
    }
    let free_rx = Arc::new(Mutex::new(free_rx));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let dropped = Arc::new(AtomicU64::new(0));
    let total = (rate * secs).round() as u64;
    // The cart is PUT up to LEAD before the POST's intended time.
    const LEAD: Duration = Duration::from_millis(5);
    let origin = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let post_at = origin + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(post_at - LEAD).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            // More than MAX_IN_FLIGHT behind: the order counts as failed.
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, free_rx, free_tx) = (client.clone(), free_rx.clone(), free_tx.clone());
        tasks.push(tokio::spawn(async move {
            let customer = free_rx.lock().await.recv().await.expect("customers");
            let outcome = client.order(&customer, Some(post_at), i.is_multiple_of(8)).await;
            free_tx.send(customer).unwrap();
            drop(permit);
            outcome
        }));
    }
    let mut phase = Phase { name: "open loop".into(), target_rate: Some(rate), ..Phase::default() };
    for task in tasks {
        phase.record(task.await.expect("an order task"));
    }
    phase.elapsed = origin.elapsed();
    for _ in 0..dropped.load(Ordering::Relaxed) {
        phase.failures.push(format!("not sent: more than {MAX_IN_FLIGHT} orders in flight"));
    }
    phase
}

/// Mean of each stage of `timings_ms` over the sampled invoices.
fn stage_means(timings: &[Value]) -> Vec<(&'static str, f64)> {
    ["validate", "cart", "discount", "inventory", "payment", "total"]
        .into_iter()
        .map(|stage| {
            let values: Vec<f64> = timings.iter().filter_map(|t| t[stage].as_f64()).collect();
            (stage, values.iter().sum::<f64>() / values.len().max(1) as f64)
        })
        .collect()
}

fn main() {
    let secs = phase_secs();
    let dir = tempfile::tempdir().expect("a temp data dir");
    let shutdown = CancellationToken::new();
    let (base, engine, server) = start_service(dir.path(), shutdown.clone());

    let runtime =
        tokio::runtime::Builder::new_multi_thread().thread_name("load").enable_all().build().expect("client runtime");
    let mut phases = runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .build()
            .expect("a client");
        let customers = prepare(&http, &base).await;
        let cart_body = json!({"items": [{"sku": SKUS[0], "quantity": 1}, {"sku": SKUS[1], "quantity": 1}]});
        let client = Arc::new(Client { http, base: base.clone(), cart_body: cart_body.to_string().into_bytes() });

        // Warm-up: connections, SQLite pages, rule instances.
        closed_loop(client.clone(), &customers, 16, secs.min(2.0)).await;

        let mut phases = Vec::new();
        for clients in list_from_env("LOAD_CLIENTS", &[1, 16, 64]) {
            let cpu = cpu_seconds();
            let mut phase = closed_loop(client.clone(), &customers, clients, secs).await;
            phase.cpu = cpu_delta(cpu);
            eprintln!("{}: {:.0} orders/s", phase.name, phase.rate());
            phases.push(phase);
        }
        for rate in list_from_env("LOAD_RATES", &[500, 1000, 2000]) {
            let rate = rate as f64;
            // Let the previous phase's backlog (events, fraud reviews) drain.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu = cpu_seconds();
            let mut phase = open_loop(client.clone(), &customers, rate, secs).await;
            phase.cpu = cpu_delta(cpu);
            eprintln!("open loop {rate}/s: {:.0} orders/s", phase.rate());
            phases.push(phase);
        }
        phases
    });

    let orders: i64 = rusqlite::Connection::open(dir.path().join("smartmart.sqlite"))
        .and_then(|c| c.query_row("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'", [], |r| r.get(0)))
        .expect("counting orders");
    shutdown.cancel();
    drop(engine);
    server.join().expect("the server thread");

    println!("## HTTP load (`cargo bench -p smartmart --bench load`)");
    println!();
    println!("{secs} s per phase; POST /v1/orders latency in ms (open loop: from the intended send time)");
    println!();
    println!(
        "| phase | target orders/s | achieved orders/s | orders | failed | p50 | p90 | p99 | max \
         | server CPU ms/order | load generator CPU ms/order | other threads CPU ms/order |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in &mut phases {
        println!("{}", phase.row());
    }
    println!();
    for phase in &phases {
        let means = stage_means(&phase.timings);
        let text: Vec<String> = means.iter().map(|(s, ms)| format!("{s} {ms:.3}")).collect();
        println!(
            "- {} {}: server-side timings_ms means ({} sampled invoices): {}",
            phase.name,
            phase.target_rate.map_or(String::new(), |r| format!("{r:.0}/s")),
            phase.timings.len(),
            text.join(", ")
        );
        let mut reasons: Vec<&String> = phase.failures.iter().collect();
        reasons.sort();
        reasons.dedup();
        for reason in reasons.iter().take(3) {
            println!("  - failure: {reason}");
        }
    }
    println!();
    println!("{orders} orders CONFIRMED in the store");
}
