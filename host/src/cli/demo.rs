//! `smartmart demo`: the demo data set in a fresh data dir, then the five
//! use cases of the product brief through the real pipeline, printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::app::{Dataset, Engine, EngineSettings};
use crate::domain::invoice::Invoice;
use crate::pipeline::validate::mint_token;
use crate::pipeline::{OrderError, OrderRequest};
use crate::store::catalog::CartItem;

/// One scripted order.
struct UseCase {
    title: &'static str,
    customer: &'static str,
    cart: &'static [(&'static str, u32)],
    coupon: Option<&'static str>,
    payment_token: &'static str,
}

const USE_CASES: &[UseCase] = &[
    UseCase {
        title: "UC1 GOLD customer: 10 % loyalty, nearest warehouse, captured",
        customer: "C-1001",
        cart: &[("TV-55-OLED", 1), ("HDMI-2M", 2)],
        coupon: None,
        payment_token: "tok_ok",
    },
    UseCase {
        title: "UC2 SILVER customer: no discount line, total = subtotal",
        customer: "C-1002",
        cart: &[("WASHER-8KG", 1)],
        coupon: None,
        payment_token: "tok_ok",
    },
    UseCase {
        title: "UC3 out of stock: nothing reserved, nothing charged",
        customer: "C-1003",
        cart: &[("LIMITED-CONSOLE", 2)],
        coupon: None,
        payment_token: "tok_ok",
    },
    UseCase {
        title: "UC4a payment declined: stock released exactly",
        customer: "C-1005",
        cart: &[("PHONE-X12", 1)],
        coupon: None,
        payment_token: "tok_decline",
    },
    UseCase {
        title: "UC4b gateway down through every retry",
        customer: "C-1005",
        cart: &[("PHONE-X12", 1)],
        coupon: None,
        payment_token: "tok_down",
    },
    UseCase {
        title: "UC4c two transient failures, captured on attempt 3 (+ coupon WELCOME10)",
        customer: "C-1005",
        cart: &[("PHONE-X12", 1), ("PHONE-CASE-X12", 1)],
        coupon: Some("welcome10"),
        payment_token: "tok_transient_2",
    },
    UseCase {
        title: "UC4d the gateway's answer is lost after it captured: a lookup finds the charge, confirmed",
        customer: "C-1005",
        cart: &[("PHONE-CASE-X12", 1)],
        coupon: None,
        payment_token: "tok_lost",
    },
    UseCase {
        title: "UC4e the gateway stalls and captures nothing: the key is cancelled, failed, nothing charged",
        customer: "C-1005",
        cart: &[("PHONE-CASE-X12", 1)],
        coupon: None,
        payment_token: "tok_stall",
    },
    UseCase {
        title: "UC5 high-value order: confirmed, then fraud review ESCALATE",
        customer: "C-1003",
        cart: &[("LAPTOP-PRO-16", 3)],
        coupon: None,
        payment_token: "tok_ok",
    },
    UseCase {
        title: "Blocked customer",
        customer: "C-1004",
        cart: &[("HDMI-2M", 1)],
        coupon: None,
        payment_token: "tok_ok",
    },
];

/// A data dir for the demo: the one given (which must be empty or absent),
/// or a new one under the system's temp dir.
pub fn fresh_data_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => std::env::temp_dir().join(format!("smartmart-demo-{}", uuid::Uuid::now_v7().simple())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} is not empty: the demo needs a fresh data dir", dir.display());
    }
    Ok(dir)
}

fn dollars(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn print_invoice(invoice: &Invoice) {
    println!("   order {} {} — {}", invoice.order_id, invoice.status, invoice.customer.tier.as_str());
    println!("   subtotal {} {}", dollars(invoice.subtotal_cents), invoice.currency);
    for d in &invoice.discounts {
        println!(
            "   − {} {} ({} {}@{}, {})",
            dollars(d.amount_cents),
            d.description,
            d.rule,
            d.module,
            d.version,
            &d.digest[..19]
        );
    }
    println!("   total {} {}", dollars(invoice.total_cents), invoice.currency);
    for a in &invoice.allocations {
        let lines: Vec<String> = a.lines.iter().map(|l| format!("{}×{}", l.quantity, l.sku)).collect();
        println!("   ships from {} ({} km): {}", a.warehouse_name, a.distance_km, lines.join(", "));
    }
    let p = &invoice.payment;
    println!(
        "   payment {} via {} after {} attempt(s){}",
        p.status,
        p.gateway,
        p.attempts,
        p.transaction_id.as_deref().map(|t| format!(", {t}")).unwrap_or_default()
    );
    println!("   timings (ms): {:?}", invoice.timings_ms);
}

/// Runs the demo in `data_dir` with the rules of `plugins_dir`.
pub async fn run(data_dir: &Path, plugins_dir: &Path, dataset: &Path) -> anyhow::Result<()> {
    let secret = b"demo-identity-secret-not-for-production".to_vec();
    let mut settings = EngineSettings::new(data_dir, plugins_dir, &secret);
    settings.retry.base_delay = Duration::from_millis(10);
    let engine = Engine::start(settings).await?;
    Dataset::read(dataset)?.load_into(engine.store()).await?;
    println!("SmartMart demo — data dir {}", data_dir.display());
    println!("rules: {}", plugins_dir.display());
    for (slot, rule) in engine.rules().all() {
        println!("  {slot:<9} {}", rule.module_label());
    }
    println!();
    let mut escalation_candidates = Vec::new();
    for case in USE_CASES {
        println!("▶ {}", case.title);
        let items: Vec<CartItem> =
            case.cart.iter().map(|(sku, q)| CartItem { sku: sku.to_string(), quantity: *q }).collect();
        engine.store().replace_cart(case.customer, items).await.context("filling the cart")?;
        let request = OrderRequest {
            channel: "web".into(),
            customer_id: case.customer.into(),
            customer_token: mint_token(&secret, case.customer, Duration::from_secs(600)),
            coupon_code: case.coupon.map(str::to_string),
            payment_token: case.payment_token.into(),
            ship_to: None,
            idempotency: None,
            request_id: None,
            traceparent: None,
        };
        match engine.pipeline().place_order(request).await {
            Ok(invoice) => {
                println!("   → 201 CONFIRMED");
                print_invoice(&invoice);
                escalation_candidates.push(invoice.order_id.clone());
            }
            Err(OrderError::PaymentFailed { reason, order, .. }) => {
                println!("   → 402 PAYMENT_FAILED: {reason}");
                print_invoice(&order);
            }
            Err(e) => {
                println!("   → {} {}: {}", e.status(), e.code(), e);
                if let Some(details) = e.details() {
                    println!("   details: {details}");
                }
            }
        }
        println!();
    }
    engine.drain().await?;
    println!("▶ Fraud reviews (run after the answers)");
    for order_id in escalation_candidates {
        let stored = engine.store().order(&order_id).await?;
        if let Some(review) = stored.and_then(|o| o.fraud_review) {
            println!("   {order_id}: {} score {} flags {}", review["action"], review["score"], review["flags"]);
        }
    }
    println!();
    println!("▶ Events delivered (JSON Lines in {}):", data_dir.join("events").display());
    for kind in ["audit", "analytics", "fraud"] {
        let path = data_dir.join("events").join(format!("{kind}.jsonl"));
        let lines = std::fs::read_to_string(&path).map(|t| t.lines().count()).unwrap_or(0);
        println!("   {kind:<9} {lines} events");
    }
    engine.shutdown().await;
    Ok(())
}
