//! Plug-in directories built by hand in a temp dir (hot reload, experiment,
//! shadow and signature tests): module files copied in, a manifest written,
//! files replaced atomically (temp name, then rename) or slowly in place;
//! and waiting for what the reloader does about it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smartmart::app::Engine;
use smartmart::domain::customer::{AccountStatus, Customer, Tier};
use smartmart::domain::geo::GeoPoint;
use smartmart::pipeline::{OrderError, Pipeline, Placed};
use smartmart::rules::ModuleIdentity;
use smartmart::store::catalog::{CartItem, Product};
use smartmart::test_support::ReloadStatus;
use tempfile::TempDir;

use super::{bundled_plugins, order_request, wasm};

/// The warehouse and fraud slots of the bundled set, to follow the
/// discount entries of a test manifest. Like every entry of the test
/// manifests, with a roomy wall-clock budget: the tests share two cores,
/// and a call preempted past the default 50 ms would fail on time.
pub const BASE_SLOTS: &str = r#"
[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 10000 }

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
budgets = { time_ms = 10000 }
"#;

/// Every warehouse of the demo data set.
pub const WAREHOUSES: [&str; 4] = ["WH-BLR", "WH-BOM", "WH-DEL", "WH-MAA"];

/// A plug-in directory in a temp dir of its own.
pub struct PluginDir {
    pub dir: TempDir,
}

impl PluginDir {
    /// An empty directory.
    pub fn empty() -> PluginDir {
        PluginDir { dir: tempfile::tempdir().expect("a temp plug-in dir") }
    }

    /// The bundled warehouse selector and fraud check (and gold loyalty),
    /// `files` as (test guest name in `target/wasm`, file name here), and a
    /// manifest of `discounts` (TOML `[[discount]]` entries) + [`BASE_SLOTS`].
    pub fn new(files: &[(&str, &str)], discounts: &str) -> PluginDir {
        let plugins = PluginDir::empty();
        for file in ["gold_loyalty.wasm", "nearest_warehouse.wasm", "high_value.wasm"] {
            plugins.copy_in(&bundled_plugins().join(file), file);
        }
        for (guest, file) in files {
            plugins.copy_in(&wasm(guest), file);
        }
        plugins.write_manifest(discounts);
        plugins
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies `source` to `<dir>/<name>`.
    pub fn copy_in(&self, source: &Path, name: &str) {
        std::fs::copy(source, self.file(name))
            .unwrap_or_else(|e| panic!("copying {} to {name}: {e}", source.display()));
    }

    /// Writes `manifest.toml`: `discounts` followed by [`BASE_SLOTS`].
    pub fn write_manifest(&self, discounts: &str) {
        std::fs::write(self.file("manifest.toml"), format!("{discounts}\n{BASE_SLOTS}")).expect("writing the manifest");
    }

    /// Replaces `<dir>/<name>` with `bytes` the way a deployment should:
    /// written whole under a temp name in the same directory, then renamed
    /// into place (atomic: the name always holds a complete file).
    pub fn replace(&self, name: &str, bytes: &[u8]) {
        let temp = self.file(&format!(".{name}.incoming"));
        std::fs::write(&temp, bytes).expect("writing the incoming file");
        std::fs::rename(&temp, self.file(name)).expect("renaming the incoming file into place");
    }
}

/// Overwrites `file` in place, `chunk` bytes at a time with a flush and
/// `pause` after each: a slow copy, half-written meanwhile (blocking).
pub fn write_slowly(file: &Path, bytes: &[u8], chunk: usize, pause: Duration) {
    let mut out = std::fs::OpenOptions::new().write(true).truncate(true).open(file).expect("opening the module");
    for part in bytes.chunks(chunk) {
        out.write_all(part).expect("writing a chunk");
        out.flush().expect("flushing a chunk");
        std::thread::sleep(pause);
    }
}

/// The bytes of `target/wasm/<name>.wasm`.
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(wasm(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The `sha256:…` digest of `target/wasm/<name>.wasm`, as invoices show it.
pub fn guest_digest(name: &str) -> String {
    smartmart::test_support::signing::digest_of(&wasm(name)).expect("digesting a guest")
}

/// Polls `condition` every 10 ms until it holds; panics naming `what`
/// after a generous deadline (60 s: the tests share two cores).
pub async fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_or(what, condition, String::new).await;
}

/// [`wait_until`], with `state()` in the panic message.
pub async fn wait_until_or(what: &str, mut condition: impl FnMut() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}; {}", state());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A copy of the reloader's status.
pub fn reload_status(engine: &Engine) -> ReloadStatus {
    engine.reload_status()
}

/// The identity of the module serving the `index`-th discount rule now.
pub fn discount_identity(engine: &Engine, index: usize) -> Arc<ModuleIdentity> {
    let rules = engine.rules();
    let module = rules.discount[index].module.as_ref();
    module.unwrap_or_else(|| panic!("discount rule {index} has no stable module")).identity().clone()
}

/// The discount modules serving now, for failure messages.
pub fn serving_discounts(engine: &Engine) -> String {
    let rules = engine.rules();
    rules.discount.iter().map(|r| r.module_label()).collect::<Vec<_>>().join(", ")
}

/// Waits until the reloader has swapped in a set (more than `reloads_before`
/// reloads) whose `index`-th discount rule is the module with `digest`.
pub async fn wait_for_served(engine: &Engine, reloads_before: u64, index: usize, digest: &str) {
    wait_until_or(
        &format!("discount rule {index} is {digest} after a reload"),
        || reload_status(engine).reloads > reloads_before && discount_identity(engine, index).digest == digest,
        || format!("serving {}; {:?}", serving_discounts(engine), reload_status(engine)),
    )
    .await;
}

/// Waits until the reloader has refused more than `refused_before` reloads;
/// returns the status then.
pub async fn wait_for_refusal(engine: &Engine, refused_before: u64) -> ReloadStatus {
    wait_until_or(
        "the reloader refuses the directory",
        || reload_status(engine).refused > refused_before,
        || format!("serving {}; {:?}", serving_discounts(engine), reload_status(engine)),
    )
    .await;
    reload_status(engine)
}

/// Customers `<prefix>-000`.. with the given tiers (cycled), all active, in Bangalore.
pub async fn add_customers(pipeline: &Pipeline, prefix: &str, count: usize, tiers: &[Tier]) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n:03}")).collect();
    let customers = ids
        .iter()
        .enumerate()
        .map(|(n, id)| Customer {
            id: id.clone(),
            name: format!("Test customer {n}"),
            email: format!("test{n}@example.com"),
            phone: format!("+91-80-0000-{n:04}"),
            tier: tiers[n % tiers.len()],
            status: AccountStatus::Active,
            location: GeoPoint { lat: 12.9716, lon: 77.5946 },
        })
        .collect();
    pipeline.store().load_catalog(customers, vec![], vec![], vec![]).await.expect("adding customers");
    ids
}

/// Products (sku, unit price) in the "test" category.
pub async fn add_products(pipeline: &Pipeline, products: &[(&str, u64)]) {
    let products: Vec<Product> = products
        .iter()
        .map(|(sku, price)| Product {
            sku: sku.to_string(),
            name: format!("Test product {sku}"),
            category: "test".into(),
            unit_price_cents: *price,
        })
        .collect();
    pipeline.store().load_catalog(vec![], products, vec![], vec![]).await.expect("adding products");
}

/// Ten million units of each sku in every warehouse.
pub async fn plenty_of_stock(pipeline: &Pipeline, skus: &[&str]) {
    let stock = WAREHOUSES
        .iter()
        .flat_map(|warehouse| skus.iter().map(move |sku| (warehouse.to_string(), sku.to_string(), 10_000_000)))
        .collect();
    pipeline.store().load_catalog(vec![], vec![], vec![], stock).await.expect("stocking up");
}

/// Fills `customer`'s cart with `items`, then places the order (tok_ok, no coupon).
pub async fn order_on(pipeline: &Pipeline, customer: &str, items: &[(&str, u32)]) -> Result<Placed, OrderError> {
    let items: Vec<CartItem> =
        items.iter().map(|(sku, quantity)| CartItem { sku: sku.to_string(), quantity: *quantity }).collect();
    pipeline.store().replace_cart(customer, items).await.expect("filling the cart");
    pipeline.place_order(order_request(customer, "tok_ok", None)).await
}
