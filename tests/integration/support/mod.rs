//! Shared helpers of the integration tests.

/// Holds (one per warehouse and sku) of the orders still PENDING: the
/// units the store holds (an order's holds live on its row, `orders.holds`;
/// their state follows the order's status). SQLite's SQL; PostgreSQL's is
/// [`HELD_HOLDS_PG`].
pub const HELD_HOLDS: &str =
    "SELECT count(*) FROM orders o, json_each(o.holds) h WHERE o.status = 'PENDING' AND o.holds IS NOT NULL";
/// [`HELD_HOLDS`] on PostgreSQL.
pub const HELD_HOLDS_PG: &str =
    "SELECT count(*) FROM orders o, json_array_elements(o.holds::json) h WHERE o.status = 'PENDING'";

pub mod alloc_meter;
pub mod clients;
pub mod gateway;
pub mod kafka;
pub mod nats_jwt;
pub mod nats_server;
pub mod plugin_dir;
pub mod plugin_service;
pub mod ports;
pub mod raw_http;
pub mod server;
pub mod service;
pub mod tls;

use std::path::PathBuf;
use std::sync::OnceLock;

use smartmart::rules::{Budgets, ModuleConfig, RuleModule, RuleRuntime, RuntimeOptions, World};
use smartmart::test_support::runner::RunInput;

/// The repository root (the host crate lives one level below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `<repo>/target/wasm/<name>.wasm`, built by `cargo xtask guests`.
pub fn wasm(name: &str) -> PathBuf {
    let path = repo_root().join("target/wasm").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run `cargo xtask guests` first", path.display());
    path
}

/// Reads `examples/orders/<name>.json` (the `rules run` input format).
pub fn example_order(name: &str) -> RunInput {
    let path = repo_root().join("examples/orders").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A rule runtime of its own (its own engine, pool and epoch thread), no
/// artifact cache, a pool small enough for many tests side by side.
pub fn new_rule_runtime() -> RuleRuntime {
    RuleRuntime::new(RuntimeOptions { cache_dir: None, max_instances: 32 }).expect("creating the rule runtime")
}

/// The rule runtime shared by the tests of this binary (cheap to clone).
pub fn rule_runtime() -> RuleRuntime {
    static RUNTIME: OnceLock<RuleRuntime> = OnceLock::new();
    RUNTIME.get_or_init(new_rule_runtime).clone()
}

/// Loads `target/wasm/<name>.wasm` as `world` in `runtime`, panicking with the
/// load error's text if it is refused.
pub fn load_rule(
    runtime: &RuleRuntime,
    name: &str,
    world: World,
    config: &[(&str, &str)],
    budgets: Budgets,
) -> RuleModule {
    let config: ModuleConfig = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    runtime.load(&wasm(name), world, config, budgets).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

// ---------------------------------------------------------------------------
// The engine on a real data dir (pipeline and crash tests).
// ---------------------------------------------------------------------------

use std::path::Path;
use std::time::Duration;

use smartmart::app::{Dataset, Engine, EngineSettings};
use smartmart::pipeline::{OrderError, OrderRequest, Placed};
use smartmart::store::catalog::{CartItem, StockLevel};
use smartmart::test_support::mint_token;
use tempfile::TempDir;

/// The identity secret of the test engines.
pub const SECRET: &[u8] = b"integration-test-identity-secret";

/// `<repo>/plugins/bundled`: the bundled rules and their manifest.
pub fn bundled_plugins() -> PathBuf {
    repo_root().join("plugins/bundled")
}

/// The body of `POST /v1/orders` for `customer` paying with `payment_token`.
pub fn order_body(customer: &str, payment_token: &str) -> serde_json::Value {
    serde_json::json!({ "customer_id": customer, "payment": {"token": payment_token} })
}

/// `<repo>/examples/demo/dataset.json`.
pub fn demo_dataset() -> PathBuf {
    repo_root().join("examples/demo/dataset.json")
}

/// Settings for a test engine on `data_dir`: the test secret, retries that
/// wait milliseconds within a 300 ms budget; everything else as deployed.
pub fn engine_settings(data_dir: &Path, plugins_dir: &Path) -> EngineSettings {
    let mut settings = EngineSettings::new(data_dir, plugins_dir, SECRET);
    settings.retry.budget = Duration::from_millis(300);
    settings.retry.base_delay = Duration::from_millis(1);
    settings.retry.max_delay = Duration::from_millis(5);
    settings
}

/// An engine on a fresh temp data dir with the demo data set loaded. The
/// dir lives as long as this value.
pub struct TestEngine {
    pub engine: Engine,
    pub dir: TempDir,
}

impl TestEngine {
    /// The bundled rules, default settings (short retry waits).
    pub async fn start() -> TestEngine {
        TestEngine::start_with(&bundled_plugins(), |_| {}).await
    }

    /// Rules of `plugins_dir`; `adjust` may change the settings first.
    pub async fn start_with(plugins_dir: &Path, adjust: impl FnOnce(&mut EngineSettings)) -> TestEngine {
        let dir = tempfile::tempdir().expect("a temp data dir");
        let mut settings = engine_settings(dir.path(), plugins_dir);
        adjust(&mut settings);
        let engine = Engine::start(settings).await.expect("starting the engine");
        Dataset::read(&demo_dataset())
            .expect("reading the demo data set")
            .load_into(engine.store())
            .await
            .expect("loading the demo data set");
        TestEngine { engine, dir }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `f` on a connection of the test's own to the engine's database
    /// (to look at what the store did, or to reach around it on purpose).
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> T {
        let path = self.data_dir().join("smartmart.sqlite");
        tokio::task::spawn_blocking(move || {
            let mut conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            f(&mut conn)
        })
        .await
        .expect("the query task")
        .expect("querying the store")
    }

    /// Replaces `customer`'s cart with `items` (sku, quantity).
    pub async fn fill_cart(&self, customer: &str, items: &[(&str, u32)]) {
        let customer = customer.to_string();
        let items: Vec<CartItem> =
            items.iter().map(|(sku, quantity)| CartItem { sku: sku.to_string(), quantity: *quantity }).collect();
        self.engine.store().replace_cart(&customer, items).await.expect("filling the cart");
    }

    /// `customer`'s cart as (sku, quantity).
    pub async fn cart(&self, customer: &str) -> Vec<(String, u32)> {
        let customer = customer.to_string();
        let (lines, _) = self.engine.store().cart(&customer).await.expect("reading the cart");
        lines.into_iter().map(|l| (l.sku, l.quantity)).collect()
    }

    /// Places an order from `customer`'s current cart with a valid token.
    pub async fn place(&self, customer: &str, payment_token: &str, coupon: Option<&str>) -> Result<Placed, OrderError> {
        self.engine.pipeline().place_order(order_request(customer, payment_token, coupon)).await
    }

    /// Fills the cart, then places the order.
    pub async fn order(
        &self,
        customer: &str,
        items: &[(&str, u32)],
        payment_token: &str,
        coupon: Option<&str>,
    ) -> Result<Placed, OrderError> {
        self.fill_cart(customer, items).await;
        self.place(customer, payment_token, coupon).await
    }

    /// Stock of `sku` in every warehouse that lists it.
    pub async fn stock(&self, sku: &str) -> Vec<StockLevel> {
        let sku = sku.to_string();
        self.engine.store().stock_of_sku(&sku).await.expect("reading stock")
    }

    /// Stock of `sku` in `warehouse_id`.
    pub async fn stock_in(&self, warehouse_id: &str, sku: &str) -> StockLevel {
        self.stock(sku)
            .await
            .into_iter()
            .find(|s| s.warehouse_id == warehouse_id)
            .unwrap_or_else(|| panic!("{warehouse_id} does not list {sku}"))
    }

    /// Reservations still HELD, all orders together.
    pub async fn held_reservations(&self) -> i64 {
        self.query(|c| c.query_row(HELD_HOLDS, [], |r| r.get(0))).await
    }

    /// Sum of `reserved` over all stock rows.
    pub async fn reserved_units(&self) -> i64 {
        self.query(|c| c.query_row("SELECT coalesce(sum(reserved), 0) FROM stock", [], |r| r.get(0))).await
    }

    /// Order rows, all statuses.
    pub async fn order_rows(&self) -> i64 {
        self.query(|c| c.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))).await
    }

    /// The sandbox gateway's captured charges: (idempotency key, amount).
    pub fn charges(&self) -> Vec<(String, u64)> {
        let charges = self.engine.sandbox_charges().expect("the engine runs the sandbox gateway");
        charges.into_iter().map(|(key, charge)| (key, charge.amount_cents)).collect()
    }

    /// The parsed lines of `events/<kind>.jsonl` (none if absent).
    pub fn event_lines(&self, kind: &str) -> Vec<serde_json::Value> {
        event_lines(self.data_dir(), kind)
    }

    /// Reviews and delivers everything pending (`Engine::drain`).
    pub async fn drain(&self) {
        self.engine.drain().await.expect("draining the engine");
    }
}

/// An order request from `customer`'s cart with a fresh valid token.
pub fn order_request(customer: &str, payment_token: &str, coupon: Option<&str>) -> OrderRequest {
    OrderRequest {
        channel: "web".into(),
        customer_id: customer.into(),
        customer_token: mint_token(SECRET, customer, Duration::from_secs(600)),
        coupon_code: coupon.map(str::to_string),
        payment_token: payment_token.into(),
        ship_to: None,
        idempotency: None,
        request_id: None,
        traceparent: None,
    }
}

/// The parsed lines of `<data_dir>/events/<kind>.jsonl` (none if absent).
/// A line that is not JSON fails the test.
pub fn event_lines(data_dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let path = data_dir.join("events").join(format!("{kind}.jsonl"));
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display())))
        .collect()
}
