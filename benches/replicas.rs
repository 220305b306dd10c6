//! Replicas on PostgreSQL (issue 10): orders/s of the real `smartmart serve`
//! binary, started as child processes, in three configurations measured in
//! the same run:
//!
//! - (a) baseline: one replica on SQLite (the default store, its data dir);
//! - (b) one replica on PostgreSQL;
//! - (c) two replicas on one PostgreSQL schema, the load generator sending
//!   each order (cart PUT and POST) to the next replica in turn (a
//!   client-side round robin, as a load balancer would).
//!
//! Every (configuration, run) starts from nothing: fresh data dirs and, on
//! PostgreSQL, a schema of its own on the local server (created, and
//! dropped at the end; `SMARTMART_TEST_DATABASE_URL` overrides
//! `postgres://root@127.0.0.1:5432/test`). Events go to the JSON Lines
//! sink in every configuration (per replica files for (c)) so that the
//! store and the replica count are the only differences. The
//! configurations alternate run by run (a b c a b c …) so that the noise of
//! a shared machine falls on all of them alike.
//!
//! Seeding is through the admin API (the demo data set gives the
//! warehouses): a product with plenty of stock in the four demo warehouses
//! (and HDMI-2M restocked), one GOLD or SILVER customer per client. Load: a
//! closed loop of N clients, each placing one UC1-like order after the
//! other (`PUT /v1/carts/{id}` with two lines, then `POST /v1/orders` with
//! an `Idempotency-Key`, half with WELCOME10) for a fixed time after a
//! warm-up. Reported per configuration: the median orders/s of the runs,
//! the ratio to the baseline of this run, POST p50/p99 (medians of the
//! runs), every non-2xx answer or transport error, the CPU per order of the
//! service, PostgreSQL and the load generator (from /proc), and a check that
//! the store holds one CONFIRMED order per 201.
//!
//! Also per configuration, per order of the measured run: the store's work
//! from the replicas' `/metrics`, read right before and right after the run
//! and summed over the replicas (SQLite: the writer's group commits and
//! commands; PostgreSQL: the store's round trips and transactions, "–" while
//! a binary does not export them), and on PostgreSQL the database's
//! transactions from `pg_stat_database` (see `PG_STATS_SETTLE`). Then a
//! block per configuration: the durability in force (the service's
//! `SMARTMART_DURABILITY`, PostgreSQL's `synchronous_commit` and `fsync`),
//! the figures of each run, and one `SUMMARY config=… key=value …` line
//! (`grep '^SUMMARY'`), the same keys for every configuration.
//!
//! Bounded: fixed durations, a 10 s client timeout, 120 s to start; loopback
//! only. No timing is asserted.
//!
//! Run: `cargo bench -p smartmart --bench replicas` (release build; needs
//! `cargo xtask guests` and the local PostgreSQL). `REPLICAS_CLIENTS=32`,
//! `REPLICAS_SECS=10`, `REPLICAS_WARMUP_SECS=2`, `REPLICAS_RUNS=3`,
//! `REPLICAS_CONFIGS=sqlite,pg1,pg2` change the run. Figures go to
//! BENCHMARKS.md ("Replicas on PostgreSQL").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use smartmart::test_support::mint_token;

const SECRET: &str = "replicas-bench-identity-secret-0123";
const WEB_KEY: &str = "replicas-bench-web-channel-key-0123";
const ADMIN_KEY: &str = "replicas-bench-admin-key-0123456789";
/// The product made for the run, and a demo product restocked: the cart's two lines.
const SKUS: [&str; 2] = ["BENCH-SOUNDBAR", "HDMI-2M"];
const WAREHOUSES: [(&str, f64, f64); 4] =
    [("WH-BLR", 12.97, 77.59), ("WH-BOM", 19.07, 72.87), ("WH-DEL", 28.61, 77.20), ("WH-MAA", 13.08, 80.27)];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Linux's USER_HZ: the unit of the CPU times in /proc/*/stat.
const TICKS_PER_SEC: f64 = 100.0;
/// The service's commit durability: its default, set explicitly so that a
/// `SMARTMART_DURABILITY` in the bench's own environment cannot change what
/// is measured, and so that the report says what ran. SQLite's `PRAGMA
/// synchronous` (`full`: an fdatasync per group commit); PostgreSQL ignores
/// it (its durability is the server's `synchronous_commit` and `fsync`).
const SERVICE_DURABILITY: &str = "full";
/// How long PostgreSQL's statistics are left to settle before
/// `pg_stat_database` is read, after the warm-up and after the run.
/// PostgreSQL 15+ keeps a backend's counts pending and flushes them at most
/// once a second while it is busy; a backend that goes idle with counts
/// pending flushes them only after 10 s of idleness (`PGSTAT_IDLE_INTERVAL`
/// in pgstat.c; seen on 15.20: 500 transactions run within a second of a
/// flush showed ~10 s after their connection went idle), so a pause of
/// 1.5 s would miss the last second of the run. `pg_stat_force_next_flush()`
/// does not help: it flushes the calling backend's counts, not those of the
/// replicas' pool connections.
const PG_STATS_SETTLE: Duration = Duration::from_secs(11);
/// The store's work counters each configuration reports (see `Config::store_counters`),
/// in the order of the summary line.
const STORE_COUNTERS: [&str; 4] = ["commits", "commands", "round_trips", "transactions"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn number_from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

fn postgres_url() -> String {
    std::env::var("SMARTMART_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    Sqlite,
    Postgres1,
    Postgres2,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::Sqlite => "sqlite",
            Config::Postgres1 => "pg1",
            Config::Postgres2 => "pg2",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::Sqlite => "(a) 1 replica, SQLite (baseline)",
            Config::Postgres1 => "(b) 1 replica, PostgreSQL",
            Config::Postgres2 => "(c) 2 replicas, PostgreSQL, round robin",
        }
    }

    fn replicas(self) -> usize {
        if self == Config::Postgres2 { 2 } else { 1 }
    }

    fn on_postgres(self) -> bool {
        self != Config::Sqlite
    }

    /// The store's work counters in `/metrics` (as named in the report, the
    /// metric): the SQLite writer's, or the PostgreSQL store's. The
    /// PostgreSQL ones are new; a binary without them shows "–".
    fn store_counters(self) -> [(&'static str, &'static str); 2] {
        if self.on_postgres() {
            [
                ("round_trips", "smartmart_store_round_trips_total"),
                ("transactions", "smartmart_store_transactions_total"),
            ]
        } else {
            [("commits", "smartmart_store_commits_total"), ("commands", "smartmart_store_commands_total")]
        }
    }
}

/// A schema of its own on the PostgreSQL server, dropped with this value.
struct Schema {
    name: String,
    url: String,
}

impl Schema {
    async fn create() -> Schema {
        let base = postgres_url();
        let name = format!("bench_{:016x}", rand::random::<u64>());
        connect(&base).await.batch_execute(&format!("CREATE SCHEMA {name}")).await.expect("creating the schema");
        let separator = if base.contains('?') { '&' } else { '?' };
        // The application name marks the replicas' connections, to find their backends.
        let url = format!("{base}{separator}options=-c%20search_path%3D{name}&application_name={name}");
        Schema { name, url }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (postgres_url(), self.name.clone());
        // Drop may run inside the load runtime: a thread with a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: schema {} was not dropped", self.name);
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(e) => panic!("the PostgreSQL server at {url} does not answer ({e}); start it with .ci/services.sh"),
    }
}

/// One `smartmart serve` child process.
struct Replica {
    child: Child,
    base: String,
}

impl Replica {
    fn spawn(data_dir: &Path, database_url: Option<&str>) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_smartmart"));
        command
            .args(["serve", "--demo-data"])
            .arg(repo().join("examples/demo/dataset.json"))
            .env("SMARTMART_LISTEN", format!("127.0.0.1:{port}"))
            .env("SMARTMART_DATA_DIR", data_dir)
            .env("SMARTMART_PLUGINS_DIR", repo().join("plugins/bundled"))
            .env("SMARTMART_CHANNEL_KEYS", format!("web:{WEB_KEY}"))
            .env("SMARTMART_ADMIN_KEY", ADMIN_KEY)
            .env("SMARTMART_IDENTITY_SECRET", SECRET)
            .env("SMARTMART_WATCH_PLUGINS", "false")
            .env("SMARTMART_EVENT_SINK", "jsonl")
            .env("SMARTMART_DURABILITY", SERVICE_DURABILITY)
            // Every simulated client connects from 127.0.0.1 (REPLICAS_CLIENTS may exceed the cap).
            .env("SMARTMART_HTTP_MAX_CONNECTIONS_PER_CLIENT", "0")
            .env("RUST_LOG", "error")
            .env_remove("SMARTMART_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(url) = database_url {
            command.env("SMARTMART_DATABASE_URL", url);
        }
        let child = command.spawn().expect("starting smartmart serve");
        Replica { child, base: format!("http://127.0.0.1:{port}") }
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(answer) = http.get(format!("{}/readyz", self.base)).send().await
                && answer.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("polling the service") {
                panic!("the service exited while starting: {status}");
            }
            assert!(Instant::now() < deadline, "the service was not ready within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (graceful: its events delivered, connections closed), SIGKILL after 15 s.
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of a process from its /proc stat line.
fn process_cpu(pid: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after `state`.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((comm, ticks / TICKS_PER_SEC))
}

/// CPU seconds of each PostgreSQL process serving `schema`: the backends of
/// the replicas' pools (their application name is the schema's) and the
/// server's own processes (WAL writer, checkpointer, autovacuum), not the
/// backends of other users of the shared server.
async fn postgres_processes(schema: Option<&Schema>) -> BTreeMap<u32, f64> {
    let Some(schema) = schema else { return BTreeMap::new() };
    let rows = connect(&postgres_url())
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 OR backend_type <> 'client backend'",
            &[&schema.name],
        )
        .await
        .expect("listing PostgreSQL processes");
    rows.iter()
        .filter_map(|row| {
            let pid = u32::try_from(row.get::<_, i32>(0)).ok()?;
            Some((pid, process_cpu(&pid.to_string())?.1))
        })
        .collect()
}

/// The sum of the samples of the counter `name` (whatever their labels) in
/// a Prometheus text exposition; `None` when it has none (not exported).
fn counter(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // Exactly this name: labels or the value follow, not a longer name.
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once('}')?.1,
                None if rest.starts_with(' ') => rest,
                None => return None,
            };
            value.split_whitespace().next()?.parse().ok()
        })
        .collect();
    if values.is_empty() { None } else { Some(values.iter().sum()) }
}

/// The counters `names` of every replica's `/metrics`, summed over the
/// replicas: `None` for one that a replica does not export (or when its
/// `/metrics` does not answer), so that a missing metric is reported, not fatal.
async fn store_counters(http: &reqwest::Client, bases: &[String], names: [&str; 2]) -> [Option<f64>; 2] {
    let mut sums = [Some(0.0); 2];
    for base in bases {
        let text = match http.get(format!("{base}/metrics")).send().await {
            Ok(answer) if answer.status().is_success() => answer.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        for (sum, name) in sums.iter_mut().zip(names) {
            *sum = sum.zip(counter(&text, name)).map(|(sum, value)| sum + value);
        }
    }
    sums
}

/// Transactions committed and rolled back in the bench's database so far,
/// as PostgreSQL's statistics have them (see `PG_STATS_SETTLE`): the whole
/// database's, so other users of it and the bench's own few queries count too.
async fn postgres_xacts() -> Option<f64> {
    connect(&postgres_url())
        .await
        .query_one(
            "SELECT (xact_commit + xact_rollback)::float8 FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .ok()?
        .try_get(0)
        .ok()
}

/// PostgreSQL's `synchronous_commit` and `fsync` (what `SHOW` prints), read
/// on a connection made like the replicas' (same URL, so the same server,
/// database, role and options); the service sets neither itself.
async fn postgres_durability(schema: &Schema) -> (String, String) {
    let row = connect(&schema.url)
        .await
        .query_one("SELECT current_setting('synchronous_commit'), current_setting('fsync')", &[])
        .await
        .expect("reading PostgreSQL's durability settings");
    (row.get(0), row.get(1))
}

/// Where the machine's CPU went, in seconds since boot (Linux; zeros elsewhere).
#[derive(Clone, Copy, Default)]
struct Cpu {
    service: f64,
    postgres: f64,
    load: f64,
    /// Busy time of all cores (everything but idle and iowait).
    machine: f64,
}

impl Cpu {
    /// All but PostgreSQL's share (see `postgres_processes`).
    fn now(service_pids: &[u32]) -> Cpu {
        let service = service_pids.iter().filter_map(|pid| process_cpu(&pid.to_string())).map(|(_, s)| s).sum();
        let load = process_cpu("self").map_or(0.0, |(_, s)| s);
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let line = stat.lines().next()?.to_string();
                let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal …
                let busy: f64 = ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
                Some(busy / TICKS_PER_SEC)
            })
            .unwrap_or(0.0);
        Cpu { service, postgres: 0.0, load, machine }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            service: self.service - before.service,
            postgres: self.postgres - before.postgres,
            load: self.load - before.load,
            machine: self.machine - before.machine,
        }
    }
}

struct Customer {
    id: String,
    token: String,
    order_body: String,
}

/// What the clients saw in one closed loop.
#[derive(Default)]
struct Tally {
    placed: Vec<Duration>,
    /// Non-2xx answers and transport errors, with what they said.
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.placed.extend(other.placed);
        self.failures.extend(other.failures);
    }
}

struct Load {
    http: reqwest::Client,
    bases: Vec<String>,
    next: AtomicUsize,
    cart_body: String,
}

impl Load {
    /// One order: the cart PUT and the POST go to the next replica in turn.
    async fn order(&self, customer: &Customer, key: &str, tally: &mut Tally) {
        let base = &self.bases[self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()];
        let cart = self
            .http
            .put(format!("{base}/v1/carts/{}", customer.id))
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", &customer.token)
            .header("content-type", "application/json")
            .body(self.cart_body.clone())
            .send()
            .await;
        match cart {
            Ok(answer) if answer.status().is_success() => {
                let _ = answer.bytes().await;
            }
            Ok(answer) => {
                let status = answer.status();
                let body = answer.text().await.unwrap_or_default();
                return tally.failures.push(format!("cart {status}: {body}"));
            }
            Err(e) => return tally.failures.push(format!("cart: {e}")),
        }
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("x-customer-token", &customer.token)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(customer.order_body.clone())
            .send()
            .await;
        match answer {
            Ok(answer) => {
                let status = answer.status();
                let body = answer.bytes().await;
                match body {
                    Ok(_) if status == 201 => tally.placed.push(started.elapsed()),
                    Ok(body) => tally.failures.push(format!("order {status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => tally.failures.push(format!("order body: {e}")),
                }
            }
            Err(e) => tally.failures.push(format!("order: {e}")),
        }
    }

    /// Every customer a client placing one order after the other for `secs`.
    async fn closed_loop(self: &Arc<Load>, customers: &[Arc<Customer>], tag: &str, secs: f64) -> (Tally, Duration) {
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let clients: Vec<_> = customers
            .iter()
            .map(|customer| {
                let (load, customer, tag) = (self.clone(), customer.clone(), tag.to_string());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        n += 1;
                        load.order(&customer, &format!("{tag}-{}-{n}", customer.id), &mut tally).await;
                    }
                    tally
                })
            })
            .collect();
        let mut tally = Tally::default();
        for client in clients {
            tally.add(client.await.expect("a client task"));
        }
        (tally, started.elapsed())
    }
}

async fn admin_put(http: &reqwest::Client, base: &str, path: &str, body: Value) {
    let answer = http.put(format!("{base}{path}")).bearer_auth(ADMIN_KEY).json(&body).send().await.expect("admin call");
    let status = answer.status();
    assert!(status.is_success(), "PUT {path}: {status} {}", answer.text().await.unwrap_or_default());
}

/// The product, plentiful stock and one customer per client, through the admin API.
async fn seed(http: &reqwest::Client, base: &str, clients: usize) -> Vec<Arc<Customer>> {
    admin_put(
        http,
        base,
        &format!("/v1/admin/products/{}", SKUS[0]),
        json!({"name": "Bench soundbar", "category": "electronics", "unit_price_cents": 24_900}),
    )
    .await;
    for (warehouse, _, _) in WAREHOUSES {
        for sku in SKUS {
            admin_put(http, base, &format!("/v1/admin/stock/{warehouse}/{sku}"), json!({"on_hand": 1_000_000_000u64}))
                .await;
        }
    }
    let mut customers = Vec::with_capacity(clients);
    for i in 0..clients {
        let id = format!("B-{i:04}");
        let (_, lat, lon) = WAREHOUSES[i % WAREHOUSES.len()];
        admin_put(
            http,
            base,
            &format!("/v1/admin/customers/{id}"),
            json!({"name": format!("Bench customer {i}"), "email": format!("bench{i}@example.com"),
                   "phone": "+91-80-5550-0000", "tier": if i % 2 == 0 { "GOLD" } else { "SILVER" },
                   "status": "ACTIVE", "location": {"lat": lat + 0.01, "lon": lon + 0.01}}),
        )
        .await;
        let order = if i % 4 < 2 {
            json!({"customer_id": id, "coupon_code": "WELCOME10", "payment": {"token": "tok_ok"}})
        } else {
            json!({"customer_id": id, "payment": {"token": "tok_ok"}})
        };
        customers.push(Arc::new(Customer {
            token: mint_token(SECRET.as_bytes(), &id, Duration::from_secs(3600)),
            order_body: order.to_string(),
            id,
        }));
    }
    customers
}

/// What one (configuration, run) measured.
struct Run {
    config: Config,
    elapsed: Duration,
    /// POST latencies of the 201s, sorted.
    placed: Vec<Duration>,
    failures: Vec<String>,
    cpu: Cpu,
    /// CONFIRMED orders in the store against 201s (warm-up included).
    confirmed: i64,
    answered_201: usize,
    /// The store's work over the run, summed over the replicas, in the
    /// order of `Config::store_counters` (`None`: not exported).
    store: [Option<f64>; 2],
    /// The database's transactions over the run (PostgreSQL only).
    xacts: Option<f64>,
    /// PostgreSQL's `synchronous_commit` and `fsync` (PostgreSQL only).
    pg_durability: Option<(String, String)>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.placed.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn pct_ms(&self, p: f64) -> f64 {
        if self.placed.is_empty() {
            return f64::NAN;
        }
        self.placed[((self.placed.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
    }

    fn per_order_ms(&self, seconds: f64) -> f64 {
        seconds * 1e3 / self.placed.len().max(1) as f64
    }

    /// The store counter `name` (one of `STORE_COUNTERS`) per order of the
    /// run; `None` when this configuration does not report it or the
    /// replicas do not export it.
    fn store_per_order(&self, name: &str) -> Option<f64> {
        let i = self.config.store_counters().iter().position(|(n, _)| *n == name)?;
        Some(self.store[i]? / self.placed.len().max(1) as f64)
    }

    fn xacts_per_order(&self) -> Option<f64> {
        Some(self.xacts? / self.placed.len().max(1) as f64)
    }
}

struct Settings {
    clients: usize,
    secs: f64,
    warmup_secs: f64,
}

/// Starts `config` from nothing, seeds it, warms it up and measures one closed loop.
async fn measure(config: Config, round: usize, settings: &Settings) -> Run {
    let dirs = tempfile::tempdir().expect("a temp dir");
    // Declared before the replicas, so dropped after them.
    let schema = if config.on_postgres() { Some(Schema::create().await) } else { None };
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(settings.clients * 2)
        .build()
        .expect("an HTTP client");
    let mut replicas: Vec<Replica> = (0..config.replicas())
        .map(|i| Replica::spawn(&dirs.path().join(format!("replica-{i}")), schema.as_ref().map(|s| s.url.as_str())))
        .collect();
    for replica in &mut replicas {
        replica.wait_ready(&http).await;
    }
    let customers = seed(&http, &replicas[0].base, settings.clients).await;
    let cart_body = json!({"items": [{"sku": SKUS[0], "quantity": 1}, {"sku": SKUS[1], "quantity": 1}]}).to_string();
    let load = Arc::new(Load {
        http,
        bases: replicas.iter().map(|r| r.base.clone()).collect(),
        next: AtomicUsize::new(0),
        cart_body,
    });
    let tag = format!("{}-r{round}", config.key());

    // Warm-up: connections (HTTP and the database pools), rule instances, caches.
    let (warmup, _) = load.closed_loop(&customers, &format!("{tag}-warm"), settings.warmup_secs).await;
    // The warm-up's transactions reach pg_stat_database before the run's
    // first reading (see PG_STATS_SETTLE). The same pause in every
    // configuration, so that each run starts alike (its outbox drained).
    tokio::time::sleep(PG_STATS_SETTLE).await;
    let pids: Vec<u32> = replicas.iter().map(|r| r.child.id()).collect();
    let counters = config.store_counters().map(|(_, metric)| metric);
    let xacts_before = if schema.is_some() { postgres_xacts().await } else { None };
    // The scrapes are just outside the CPU readings: the figures are the load's alone.
    let store_before = store_counters(&load.http, &load.bases, counters).await;
    let postgres_before = postgres_processes(schema.as_ref()).await;
    let before = Cpu::now(&pids);
    let (mut tally, elapsed) = load.closed_loop(&customers, &tag, settings.secs).await;
    let mut cpu = Cpu::now(&pids).since(before);
    let store_after = store_counters(&load.http, &load.bases, counters).await;
    let postgres_after = postgres_processes(schema.as_ref()).await;
    // Of each process, what it used since the first look (all of it if it started since).
    cpu.postgres =
        postgres_after.iter().map(|(pid, seconds)| seconds - postgres_before.get(pid).copied().unwrap_or(0.0)).sum();
    let store = std::array::from_fn(|i| Some(store_after[i]? - store_before[i]?));
    // The run's last transactions reach pg_stat_database (see PG_STATS_SETTLE);
    // the replicas' idle work meanwhile (janitor, outbox polls) counts too,
    // a few transactions a second against thousands of orders.
    let (xacts, pg_durability) = match &schema {
        Some(schema) => {
            tokio::time::sleep(PG_STATS_SETTLE).await;
            let xacts = postgres_xacts().await.zip(xacts_before).map(|(after, before)| after - before);
            (xacts, Some(postgres_durability(schema).await))
        }
        None => (None, None),
    };

    let confirmed = match &schema {
        Some(schema) => connect(&schema.url)
            .await
            .query_one("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'", &[])
            .await
            .expect("counting orders")
            .get(0),
        None => rusqlite::Connection::open(dirs.path().join("replica-0/smartmart.sqlite"))
            .and_then(|c| c.query_row("SELECT count(*) FROM orders WHERE status = 'CONFIRMED'", [], |r| r.get(0)))
            .expect("counting orders"),
    };
    for replica in &mut replicas {
        replica.stop();
    }
    drop(replicas);
    drop(schema);
    tally.placed.sort();
    let answered_201 = warmup.placed.len() + tally.placed.len();
    tally.failures.extend(warmup.failures.into_iter().map(|f| format!("(warm-up) {f}")));
    Run {
        config,
        elapsed,
        placed: tally.placed,
        failures: tally.failures,
        cpu,
        confirmed,
        answered_201,
        store,
        xacts,
        pg_durability,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of the runs' figures that exist; `None` when none does.
fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    if values.is_empty() { None } else { Some(median(values)) }
}

/// A figure to `decimals` places, or "–" when there is none.
fn figure(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value:.decimals$}"),
        _ => "–".to_string(),
    }
}

/// Each run's figure, comma-separated.
fn runs_of(values: impl Iterator<Item = Option<f64>>, decimals: usize) -> String {
    values.map(|value| figure(value, decimals)).collect::<Vec<_>>().join(", ")
}

/// The distinct values in their order, joined by `/` (one value unless a
/// server setting changed between runs); "–" when there is none.
fn distinct(values: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    if seen.is_empty() { "–".to_string() } else { seen.join("/") }
}

/// The time of day in UTC, to the second (RFC 3339).
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn configs_from_env() -> Vec<Config> {
    let all = [Config::Sqlite, Config::Postgres1, Config::Postgres2];
    match std::env::var("REPLICAS_CONFIGS") {
        Ok(text) => all.into_iter().filter(|c| text.split(',').any(|k| k.trim() == c.key())).collect(),
        Err(_) => all.to_vec(),
    }
}

fn main() {
    let settings = Settings {
        clients: number_from_env("REPLICAS_CLIENTS", 32usize).max(1),
        secs: number_from_env("REPLICAS_SECS", 10.0f64),
        warmup_secs: number_from_env("REPLICAS_WARMUP_SECS", 2.0f64),
    };
    let rounds: usize = number_from_env("REPLICAS_RUNS", 3usize).max(1);
    let configs = configs_from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
        .expect("the load runtime");

    let started_at = utc_now();
    let mut runs: Vec<Run> = Vec::new();
    for round in 1..=rounds {
        for &config in &configs {
            let run = runtime.block_on(measure(config, round, &settings));
            eprintln!(
                "run {round} {}: {:.1} orders/s, p50 {:.2} ms, p99 {:.2} ms, {} failed, {} CONFIRMED for {} × 201",
                config.key(),
                run.rate(),
                run.pct_ms(0.5),
                run.pct_ms(0.99),
                run.failures.len(),
                run.confirmed,
                run.answered_201
            );
            runs.push(run);
        }
    }
    let finished_at = utc_now();

    println!("## Replicas on PostgreSQL (`cargo bench -p smartmart --bench replicas`)");
    println!();
    println!(
        "{} clients, closed loop, {} s per run after {} s of warm-up, runs per configuration: {rounds} \
         (alternating); {started_at} – {finished_at}. POST /v1/orders latency in ms, medians of the runs.",
        settings.clients, settings.secs, settings.warmup_secs
    );
    println!();
    println!(
        "| configuration | orders/s per run | **median orders/s** | × (a) | POST p50 | POST p99 | non-2xx / errors \
         | CPU ms/order: service | PostgreSQL | load generator | cores busy (of 2) | of which other processes \
         | store work/order (/metrics) | PostgreSQL xacts/order | CONFIRMED = 201s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
    let of = |config: Config| runs.iter().filter(move |r| r.config == config);
    // Medians of the runs, shared by the table and the summary lines.
    let rate = |config: Config| median(of(config).map(Run::rate).collect());
    let p50 = |config: Config| median(of(config).map(|r| r.pct_ms(0.5)).collect());
    let p99 = |config: Config| median(of(config).map(|r| r.pct_ms(0.99)).collect());
    let service_ms = |config: Config| median(of(config).map(|r| r.per_order_ms(r.cpu.service)).collect());
    let postgres_ms = |config: Config| {
        config.on_postgres().then(|| median(of(config).map(|r| r.per_order_ms(r.cpu.postgres)).collect()))
    };
    let store = |config: Config, name: &str| median_of(of(config).map(|r| r.store_per_order(name)));
    let xacts = |config: Config| median_of(of(config).map(Run::xacts_per_order));
    let baseline = rate(Config::Sqlite);
    for &config in &configs {
        let per_run: Vec<String> = of(config).map(|r| format!("{:.0}", r.rate())).collect();
        let ratio = if baseline.is_nan() { "–".to_string() } else { format!("{:.2}×", rate(config) / baseline) };
        let cores: Vec<f64> = of(config).map(|r| r.cpu.machine / r.elapsed.as_secs_f64()).collect();
        let other: Vec<f64> = of(config)
            .map(|r| (r.cpu.machine - r.cpu.service - r.cpu.postgres - r.cpu.load) / r.elapsed.as_secs_f64())
            .collect();
        let store_work: Vec<String> = config
            .store_counters()
            .iter()
            .map(|(name, _)| format!("{} {}", figure(store(config, name), 2), name.replace('_', " ")))
            .collect();
        let consistent = of(config).all(|r| r.confirmed == r.answered_201 as i64);
        println!(
            "| {} | {} | **{:.0}** | {ratio} | {:.2} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            config.label(),
            per_run.join(", "),
            rate(config),
            p50(config),
            p99(config),
            of(config).map(|r| r.failures.len()).sum::<usize>(),
            service_ms(config),
            figure(postgres_ms(config), 2),
            median(of(config).map(|r| r.per_order_ms(r.cpu.load)).collect()),
            median(cores),
            median(other),
            store_work.join(", "),
            figure(xacts(config), 2),
            if consistent { "yes" } else { "**no**" },
        );
    }
    println!();
    // A block per configuration: what durability ran, each run's figures, and
    // one summary line of fixed keys ("–" where a figure does not apply or is
    // not exported), for scripts comparing runs: `grep '^SUMMARY'`.
    for &config in &configs {
        let synchronous_commit = distinct(of(config).filter_map(|r| Some(r.pg_durability.as_ref()?.0.clone())));
        let fsync = distinct(of(config).filter_map(|r| Some(r.pg_durability.as_ref()?.1.clone())));
        println!("**{}**", config.label());
        println!();
        if config.on_postgres() {
            println!(
                "- durability: PostgreSQL `synchronous_commit={synchronous_commit}`, `fsync={fsync}` \
                 (`SMARTMART_DURABILITY={SERVICE_DURABILITY}` set, not used on PostgreSQL)"
            );
        } else {
            println!(
                "- durability: `SMARTMART_DURABILITY={SERVICE_DURABILITY}` (SQLite `synchronous={}`)",
                SERVICE_DURABILITY.to_uppercase()
            );
        }
        let mut per_run = vec![format!("orders/s {}", runs_of(of(config).map(|r| Some(r.rate())), 0))];
        for (name, metric) in config.store_counters() {
            let values = runs_of(of(config).map(|r| r.store_per_order(name)), 2);
            per_run.push(format!("{}/order ({metric}) {values}", name.replace('_', " ")));
        }
        if config.on_postgres() {
            per_run.push(format!("PostgreSQL xacts/order {}", runs_of(of(config).map(Run::xacts_per_order), 2)));
        }
        println!("- per run: {}", per_run.join("; "));
        println!();
        let store_keys: Vec<String> =
            STORE_COUNTERS.iter().map(|name| format!("{name}_per_order={}", figure(store(config, name), 3))).collect();
        println!(
            "SUMMARY config={} runs={} orders_per_s={:.1} p50_ms={:.2} p99_ms={:.2} service_cpu_ms_per_order={:.3} \
             pg_cpu_ms_per_order={} {} xact_per_order={} durability={SERVICE_DURABILITY} \
             synchronous_commit={synchronous_commit} fsync={fsync}",
            config.key(),
            of(config).count(),
            rate(config),
            p50(config),
            p99(config),
            service_ms(config),
            figure(postgres_ms(config), 3),
            store_keys.join(" "),
            figure(xacts(config), 3),
        );
        println!();
    }
    for run in &runs {
        let mut reasons: Vec<&String> = run.failures.iter().collect();
        reasons.sort();
        reasons.dedup();
        for reason in reasons.iter().take(3) {
            println!("- {} failure: {reason}", run.config.key());
        }
        if run.confirmed != run.answered_201 as i64 {
            println!(
                "- {}: {} CONFIRMED orders in the store for {} answers 201",
                run.config.key(),
                run.confirmed,
                run.answered_201
            );
        }
    }
}
