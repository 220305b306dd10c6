//! `smartmart soak` (hidden): places orders in a loop from several
//! concurrent tasks, for crash drills. A test kills the process at random
//! moments and restarts it on the same data dir, then checks that every
//! start's reconciliation left the store, the gateway's ledger and the event
//! files consistent (tests/integration/crash.rs).
//!
//! Prints `READY` once the engine is serving, then one line per settled
//! order on stdout: `CONFIRMED <order_id>` or `FAILED <order_id>` (payment
//! failed); other refusals print `REJECTED <code>`.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;

use crate::app::{Dataset, Engine, EngineSettings};
use crate::domain::customer::{AccountStatus, Customer, Tier};
use crate::domain::geo::GeoPoint;
use crate::pipeline::validate::mint_token;
use crate::pipeline::{OrderError, OrderRequest};
use crate::store::catalog::CartItem;

/// The identity secret the soak signs its customers' tokens with.
pub const IDENTITY_SECRET: &[u8] = b"soak-identity-secret-not-for-production";

/// The skus the soak orders: plentiful, and topped up to [`SKU_ON_HAND`] in
/// every warehouse of the data set when the store is first loaded, so that
/// no run ever runs out of them.
pub const SKUS: [&str; 5] = ["HDMI-2M", "MOUSE-WIRELESS", "USB-C-CHARGER-65W", "PHONE-CASE-X12", "SURGE-PROTECTOR"];

/// Units on hand of each of [`SKUS`] in each warehouse after the first load.
pub const SKU_ON_HAND: u64 = 100_000;

/// Payment tokens, picked at random per order.
pub const TOKENS: [&str; 3] = ["tok_ok", "tok_decline", "tok_transient_1"];

/// The GOLD and SILVER customers of the demo data set; tasks beyond these
/// get customers of their own (`C-SOAK-<n>`), so that no two tasks share a cart.
const DEMO_CUSTOMERS: [&str; 3] = ["C-1001", "C-1002", "C-1005"];

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    /// Loaded only into an empty store (no customers).
    pub dataset: PathBuf,
    /// Orders to place in total, over all tasks.
    pub orders: usize,
    /// Concurrent ordering tasks.
    pub tasks: usize,
}

/// How the placed orders ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SoakSummary {
    pub confirmed: usize,
    pub failed: usize,
    pub rejected: usize,
}

/// The engine settings the soak runs with (also the ones a test should use
/// to open the same data dir).
pub fn settings(options: &SoakOptions) -> EngineSettings {
    let mut settings = EngineSettings::new(&options.data_dir, &options.plugins_dir, IDENTITY_SECRET);
    settings.retry.base_delay = Duration::from_millis(2);
    settings.retry.max_delay = Duration::from_millis(10);
    settings
}

/// Starts the engine (reconciling what an earlier run left), loads the
/// data set into an empty store, then places `options.orders` orders.
pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakSummary> {
    let engine = Engine::start(settings(options)).await?;
    seed(&engine, options).await?;
    say("READY");

    let next = Arc::new(AtomicUsize::new(0));
    let engine = Arc::new(engine);
    let mut tasks = Vec::new();
    for task in 0..options.tasks.max(1) {
        let (engine, next, total) = (engine.clone(), next.clone(), options.orders);
        tasks.push(tokio::spawn(async move { order_loop(&engine, &customer_of(task), &next, total).await }));
    }
    let mut summary = SoakSummary::default();
    for task in tasks {
        let done = task.await.context("a soak task panicked")??;
        summary.confirmed += done.confirmed;
        summary.failed += done.failed;
        summary.rejected += done.rejected;
    }
    let engine = Arc::into_inner(engine).context("the engine is still shared")?;
    engine.drain().await?;
    engine.shutdown().await;
    say(&format!("DONE confirmed={} failed={} rejected={}", summary.confirmed, summary.failed, summary.rejected));
    Ok(summary)
}

fn customer_of(task: usize) -> String {
    DEMO_CUSTOMERS.get(task).map_or_else(|| format!("C-SOAK-{}", task + 1), |id| id.to_string())
}

/// One line on stdout, flushed at once: the parent may kill us any time.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Loads the data set and tops up [`SKUS`], in one transaction, if the
/// store has no customers yet; makes sure every task's customer exists.
async fn seed(engine: &Engine, options: &SoakOptions) -> anyhow::Result<()> {
    let dataset = Dataset::read(&options.dataset)?;
    let extra: Vec<Customer> = (DEMO_CUSTOMERS.len()..options.tasks)
        .map(|task| Customer {
            id: customer_of(task),
            name: format!("Soak customer {}", task + 1),
            email: format!("soak{}@example.com", task + 1),
            phone: format!("+91-80-5550-{:04}", task + 1),
            tier: if task % 2 == 0 { Tier::Gold } else { Tier::Silver },
            status: AccountStatus::Active,
            location: GeoPoint { lat: 12.9716, lon: 77.5946 },
        })
        .collect();
    let store = engine.store();
    // A restarted soak finds its data set already loaded.
    if store.customer(&customer_of(0)).await?.is_none() {
        let stock = dataset
            .stock
            .into_iter()
            .map(|s| {
                let on_hand = if SKUS.contains(&s.sku.as_str()) { SKU_ON_HAND } else { s.on_hand };
                (s.warehouse_id, s.sku, on_hand)
            })
            .collect();
        store.load_catalog(dataset.customers, dataset.products, dataset.warehouses, stock).await?;
    }
    store.load_catalog(extra, Vec::new(), Vec::new(), Vec::new()).await?;
    Ok(())
}

async fn order_loop(engine: &Engine, customer: &str, next: &AtomicUsize, total: usize) -> anyhow::Result<SoakSummary> {
    let mut summary = SoakSummary::default();
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let (items, token, coupon) = {
            let mut rng = rand::rng();
            let lines = rng.random_range(1..=2);
            let mut items: Vec<CartItem> = Vec::new();
            while items.len() < lines {
                let sku = SKUS[rng.random_range(0..SKUS.len())];
                if !items.iter().any(|i| i.sku == sku) {
                    items.push(CartItem { sku: sku.into(), quantity: rng.random_range(1..=2) });
                }
            }
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let coupon = rng.random_bool(0.25).then(|| "WELCOME10".to_string());
            (items, token, coupon)
        };
        engine.store().replace_cart(customer, items).await?;
        let request = OrderRequest {
            channel: "soak".into(),
            customer_id: customer.into(),
            customer_token: mint_token(IDENTITY_SECRET, customer, Duration::from_secs(3600)),
            coupon_code: coupon,
            payment_token: token.into(),
            ship_to: None,
            idempotency: None,
            request_id: None,
            traceparent: None,
        };
        match engine.pipeline().place_order(request).await {
            Ok(invoice) => {
                summary.confirmed += 1;
                say(&format!("CONFIRMED {}", invoice.order_id));
            }
            Err(OrderError::PaymentFailed { order, .. }) => {
                summary.failed += 1;
                say(&format!("FAILED {}", order.order_id));
            }
            Err(e) => {
                summary.rejected += 1;
                say(&format!("REJECTED {}", e.code()));
            }
        }
    }
    Ok(summary)
}
