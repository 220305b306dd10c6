//! The order pipeline: a saga of six stages, each in its own file.
//!
//! ```text
//! validate ─► cart ─┬─► discount  (pure rules) ──┬─► payment ─► settle (order + events, one tx) ─► invoice
//!                   └─► inventory (plan + hold) ─┘        │
//!                       undone if discount fails          └─ releases the hold when payment finally fails
//! ```
//!
//! - [`validate`], [`cart`], [`discount`], [`inventory`], [`payment`]: the stages (the
//!   events of stage 5 are built by `crate::events::envelope`);
//! - [`placed`]: a placed order's invoice with its JSON text, serialised once;
//! - [`fraud`]: fraud checks, run after the answer;
//! - [`experiments`]: figures per A/B arm, recorded off the answer path into the store;
//! - [`recovery`]: start-up and periodic reconciliation of orders a crash
//!   interrupted, and of payments answered `PAYMENT_PENDING`;
//! - [`canary`]: canary calls with fallback to the stable version, and their automatic rollback;
//! - [`shadow`]: shadow candidates of every slot, run after the answer;
//! - [`rule_io`]: the order as rules see it, capped discount lines, call outcomes (a leaf,
//!   shared with the release tooling of `crate::release`, which the saga never calls);
//! - [`selector_input`]: what an order's warehouse selector saw, kept with the order for replay;
//! - [`rule_errors`]: the operators' list of recent rule failures (`error_id` → cause);
//! - [`error`]: every way an order can fail, and the API's error table.
//!
//! Each stage runs in a `DEBUG` span named after it (`validate`, `cart`,
//! `discount`, `inventory`, `payment`, `invoice`, `settle`) inside the
//! order's span: the traces exported with `SMARTMART_OTLP_ENDPOINT` show
//! them, the log only when `RUST_LOG` asks for `debug`.

pub(crate) mod canary;
pub(crate) mod cart;
pub(crate) mod discount;
pub(crate) mod error;
pub(crate) mod experiments;
pub(crate) mod fraud;
pub(crate) mod inventory;
pub(crate) mod payment;
pub(crate) mod placed;
pub(crate) mod recovery;
pub(crate) mod rule_errors;
pub(crate) mod rule_io;
pub(crate) mod selector_input;
pub(crate) mod shadow;
pub(crate) mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::Instrument as _;

pub use error::{OrderError, Stage};
pub use placed::Placed;
use validate::unavailable;

use crate::clock::{Clock, rfc3339_of_ms};
use crate::domain::customer::Customer;
use crate::domain::geo::GeoPoint;
use crate::domain::invoice::{
    Invoice, InvoiceAllocation, InvoiceCustomer, InvoiceDiscount, InvoiceItem, InvoicePayment, SkippedRule, Timings,
};
use crate::domain::status::{OrderStatus, PaymentStatus, Slot};
use crate::events::envelope;
use crate::metrics::Metrics;
use crate::payment::{PaymentGateway, RetryPolicy};
use crate::rules::RuleSet;
use crate::rules::types::{OrderContext, RuleCustomer};
use crate::store::catalog::OrderSnapshot;
use crate::store::orders::KeyClaim;
use crate::store::{Store, StoreError};
use canary::Canaries;
use experiments::{Arm, ExperimentFigures, Shipment};

/// Delays injected before stages, for failure drills and the latency
/// benchmark. Zero (the default) in production.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub cart_delay: Duration,
    pub discount_delay: Duration,
    pub inventory_delay: Duration,
}

/// Waits out an injected delay. A zero delay returns at once: tokio's
/// `sleep(Duration::ZERO)` waits for the timer wheel's next tick (about a
/// millisecond), which the order's path would pay at every stage.
async fn injected_delay(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Settings of the pipeline.
#[derive(Clone)]
pub struct PipelineConfig {
    /// ISO 4217 currency of the deployment.
    pub currency: String,
    /// HS256 secret of customer identity tokens.
    pub identity_secret: Vec<u8>,
    /// Longest lifetime a customer token may have left when checked.
    pub max_token_lifetime: Duration,
    /// Key of the customer pseudonym in analytics events.
    pub pseudonym_key: Vec<u8>,
    /// Longest a read stage (validate, cart) or a parallel leg may take.
    pub stage_timeout: Duration,
    pub retry: RetryPolicy,
    pub faults: Faults,
    /// Run the two legs of stage 3 one after the other: only the baseline
    /// of the parallel-stage benchmark; never in production.
    pub sequential_legs: bool,
    /// Where an order reads its start from (the instant its scheduled rules
    /// are asked at): the system clock, or a manual one in tests.
    pub clock: Clock,
}

impl std::fmt::Debug for PipelineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("PipelineConfig")
            .field("currency", &self.currency)
            .field("stage_timeout", &self.stage_timeout)
            .field("retry", &self.retry)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// One order as a channel places it.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    pub channel: String,
    pub customer_id: String,
    /// The customer's identity token (never logged).
    pub customer_token: String,
    pub coupon_code: Option<String>,
    /// Payment token for the gateway: never logged, kept in the store only
    /// while the payment is in flight (see `payment`).
    pub payment_token: String,
    pub ship_to: Option<GeoPoint>,
    /// The channel's `Idempotency-Key` and a hash of the request body: the
    /// answer is stored with them in the order's transaction.
    pub idempotency: Option<(String, String)>,
    /// The id of the HTTP request placing the order (`X-Request-Id`): sent
    /// to the payment gateway, and named by a `402`'s body.
    pub request_id: Option<String>,
    /// The W3C `traceparent` the gateway calls carry (the request's trace,
    /// the request's span as their parent), when the request had one.
    pub traceparent: Option<String>,
}

/// The engine: shared state of every order. Cheap to clone.
///
/// Its parts are private: callers place orders, read the store and the rule
/// set serving now, and the stages (this module's children) reach the rest.
#[derive(Clone)]
pub struct Pipeline {
    store: Store,
    rules: Arc<ArcSwap<RuleSet>>,
    gateway: Arc<dyn PaymentGateway>,
    config: Arc<PipelineConfig>,
    /// Wakes the fraud worker and the event dispatcher after a settlement.
    settled: Arc<Notify>,
    metrics: Arc<Metrics>,
    experiments: Arc<ExperimentFigures>,
    events_ready: Arc<Notify>,
    /// Canaries, rollbacks and the reload hooks.
    canaries: Arc<Canaries>,
    /// The recent rule failures operators look up by error id.
    rule_errors: Arc<rule_errors::RuleErrors>,
}

/// What an order's invoice is made of, besides its legs' results.
struct InvoiceParts<'a> {
    order_id: &'a str,
    request: &'a OrderRequest,
    customer: &'a Customer,
    cart: &'a cart::PricedCart,
    context: &'a OrderContext,
}

/// What the invoice takes from the discount leg.
struct DiscountFigures {
    lines: Vec<InvoiceDiscount>,
    total_cents: u64,
    skipped: Vec<SkippedRule>,
}

async fn within<T>(
    stage: Stage,
    limit: Duration,
    work: impl Future<Output = Result<T, OrderError>>,
) -> Result<T, OrderError> {
    tokio::time::timeout(limit, work).await.map_err(|_| OrderError::StageTimeout { stage })?
}

fn ms(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

impl Pipeline {
    /// A pipeline over its parts. `rules` is shared with the reloader, which
    /// swaps in each new set; `experiments` with the worker that flushes it.
    pub(crate) fn new(
        store: Store,
        rules: Arc<ArcSwap<RuleSet>>,
        gateway: Arc<dyn PaymentGateway>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
        experiments: Arc<ExperimentFigures>,
        canaries: Arc<Canaries>,
    ) -> Pipeline {
        Pipeline {
            store,
            rules,
            gateway,
            config: Arc::new(config),
            settled: Arc::new(Notify::new()),
            metrics,
            experiments,
            events_ready: Arc::new(Notify::new()),
            // One list of the engine's rule failures: the canaries record
            // their failed calls in it too.
            rule_errors: canaries.rule_errors().clone(),
            canaries,
        }
    }

    /// The recent rule failures (`GET /v1/admin/rule-errors`).
    pub fn rule_errors(&self) -> &rule_errors::RuleErrors {
        &self.rule_errors
    }

    /// The store orders are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The rule set serving orders now. A snapshot: a reload swaps in a new
    /// set without changing this one.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the event dispatcher needs of the engine: the store, the key of
    /// customer pseudonyms, and the signal that settled orders' events are ready.
    pub(crate) fn outbox(&self) -> crate::events::Outbox {
        crate::events::Outbox {
            store: self.store.clone(),
            pseudonym_key: Arc::from(self.config.pseudonym_key.as_slice()),
            ready: self.events_ready.clone(),
        }
    }

    /// Records the pending experiment figures now, rather than at the
    /// flusher's next pass (so that a read counts every answered order).
    pub(crate) async fn flush_experiments(&self) -> Result<(), StoreError> {
        self.experiments.flush(&self.store).await
    }

    /// Runs one order through every stage. `Ok` is the confirmed invoice, or
    /// the `PAYMENT_PENDING` one of an order whose payment outcome is not
    /// known yet; `Err(OrderError::PaymentFailed)` carries the recorded
    /// failed order.
    // At ERROR level, as the HTTP edge's `request` span: enabled whenever
    // any line of the order is, so that every line names the order.
    #[tracing::instrument(name = "order", level = "error", skip_all,
        fields(order_id = tracing::field::Empty, channel = %request.channel))]
    async fn run_order(&self, request: OrderRequest) -> Result<Placed, OrderError> {
        // The warehouse arm is known once the order reaches stage 3; where
        // the order shipped from (or why not) only once it has ended.
        let mut warehouse_arm = None;
        let result = self.run_stages(request, &mut warehouse_arm).await;
        if let Some(arm) = warehouse_arm {
            self.experiments.shipment(&arm, shipment_of(&result));
        }
        result
    }

    /// The stages of [`Pipeline::run_order`]; sets `warehouse_arm` to the
    /// selector's A/B arm, if the order reaches stage 3 and has one.
    async fn run_stages(&self, request: OrderRequest, warehouse_arm: &mut Option<Arm>) -> Result<Placed, OrderError> {
        let started = Instant::now();
        let config = &self.config;
        // The rule set this order runs on, whatever is reloaded meanwhile,
        // and the instant its rules' windows are asked at (its start).
        let rules = self.rules.load_full();
        let started_ms = config.clock.now_ms();
        let order_id = format!("ord_{}", uuid::Uuid::now_v7().simple());
        tracing::Span::current().record("order_id", order_id.as_str());
        let mut timings = Timings::default();

        // Stage 1, then the order's one read (customer, cart, stock), then
        // stage 2 on what it read.
        let stage_started = Instant::now();
        let validated = async {
            validate::check_token(
                &config.identity_secret,
                config.max_token_lifetime,
                &request.customer_id,
                &request.customer_token,
            )?;
            let key = request.idempotency.as_ref().map(|(key, _)| (request.channel.as_str(), key.as_str()));
            let snapshot = within(Stage::Validate, config.stage_timeout, async {
                self.store.order_snapshot(&request.customer_id, key).await.map_err(|e| unavailable(Stage::Validate, e))
            })
            .await?;
            let OrderSnapshot { customer, cart, unknown_skus, stocked, key_used } = snapshot;
            if key_used {
                // An earlier request's order: the caller answers from its record.
                return Err(OrderError::IdempotencyInProgress);
            }
            let customer = validate::check_customer(&request.customer_id, customer)?;
            Ok((customer, cart, unknown_skus, stocked))
        };
        let (customer, cart, unknown_skus, stocked) = validated.instrument(tracing::debug_span!("validate")).await?;
        timings.validate = ms(stage_started);

        let stage_started = Instant::now();
        let cart = within(Stage::Cart, config.stage_timeout, async {
            injected_delay(config.faults.cart_delay).await;
            cart::price(cart, unknown_skus)
        })
        .instrument(tracing::debug_span!("cart"))
        .await?;
        timings.cart = ms(stage_started);

        let context = Arc::new(OrderContext {
            order_id: order_id.clone(),
            channel: request.channel.clone(),
            currency: config.currency.clone(),
            customer: RuleCustomer { id: customer.id.clone(), tier: customer.tier, status: customer.status },
            lines: cart.lines.clone(),
            subtotal_cents: cart.subtotal_cents,
            payable_cents: cart.subtotal_cents,
            coupon_code: request.coupon_code.clone().filter(|c| !c.trim().is_empty()),
            ship_to: request.ship_to.unwrap_or(customer.location),
            ordered_at_ms: started_ms,
        });

        // The customer's selector (A/B arm, canary share), picked once: the
        // plans, the allocations' variant and the arm's figures all use it.
        let inventory_books = inventory::Books {
            canaries: self.canaries.clone(),
            experiments: self.experiments.clone(),
            picked: rules.warehouse.pick(&context.customer.id),
        };
        *warehouse_arm = Arm::picked(Slot::Warehouse, &inventory_books.picked);

        // Stage 3: both legs at once, their rule calls on this task (no hop
        // to another thread: a call yields at every epoch tick, so a slow
        // rule does not hold the worker). Neither writes: a failed leg
        // leaves nothing to undo. Once both have
        // succeeded, phase 1 holds the stock with the payment intent. The
        // inventory stage's span covers its leg and the hold, as its timing does.
        let inventory_span = tracing::debug_span!("inventory");
        let inventory_leg = within(Stage::Inventory, config.stage_timeout, async {
            let leg_started = Instant::now();
            injected_delay(config.faults.inventory_delay).await;
            inventory::plan(&rules, &inventory_books, &context, &stocked).await.map(|p| (p, leg_started))
        })
        .instrument(inventory_span.clone());
        let discount_leg = within(Stage::Discount, config.stage_timeout, async {
            let leg_started = Instant::now();
            injected_delay(config.faults.discount_delay).await;
            let books = discount::Books {
                experiments: &self.experiments,
                canaries: &self.canaries,
                rule_errors: &self.rule_errors,
            };
            let discounts = discount::apply_discounts(&rules, &context, &books).await?;
            Ok((discounts, ms(leg_started)))
        })
        .instrument(tracing::debug_span!("discount"));
        let (planned, discounted) = if config.sequential_legs {
            let planned = inventory_leg.await;
            (planned, discount_leg.await)
        } else {
            tokio::join!(inventory_leg, discount_leg)
        };
        // The discount leg's error first: a refused coupon is the client's to fix.
        let (discounts, discount_ms) = discounted?;
        let (planned, inventory_started) = planned?;
        let discount::Discounts { lines, total_cents, skipped, mut shadows, mut arms } = discounts;
        // How the order ends counts for the selector's arm too.
        arms.extend(warehouse_arm.clone());
        let figures = DiscountFigures { lines, total_cents, skipped };
        timings.discount = discount_ms;

        // Phase 1: the key claim, the order, the holds and the payment
        // intent with the draft invoice reconciliation settles from.
        let claim = request.idempotency.as_ref().map(|(key, hash)| KeyClaim {
            channel: request.channel.clone(),
            key: key.clone(),
            request_hash: hash.clone(),
        });
        let keys = inventory::OrderKeys {
            order_id: &order_id,
            customer_id: &customer.id,
            channel: &request.channel,
            currency: &config.currency,
            claim: claim.as_ref(),
        };
        let parts = InvoiceParts {
            order_id: &order_id,
            request: &request,
            customer: &customer,
            cart: &cart,
            context: &context,
        };
        let intent_for = |allocations: &[InvoiceAllocation]| {
            let timings = Timings { inventory: ms(inventory_started), ..timings.clone() };
            let invoice = self.pending_invoice(&parts, &figures, allocations.to_vec(), timings);
            (payment::intent_of(&invoice, self.gateway.name(), &request.payment_token), invoice)
        };
        let held = within(
            Stage::Inventory,
            config.stage_timeout,
            inventory::hold(&self.store, &rules, &inventory_books, &context, &keys, planned, &intent_for),
        )
        .instrument(inventory_span)
        .await;
        let held = match held {
            Ok(held) => held,
            Err(e) => {
                if matches!(e, OrderError::StageTimeout { .. }) {
                    // The hold may still land: the cancel is idempotent, and
                    // the janitor sweeps a late arrival.
                    self.cancel(&order_id, "inventory stage timed out").await;
                }
                return Err(e);
            }
        };
        let inventory::Held { shadow: warehouse_shadow, mut invoice } = held;
        timings.inventory = ms(inventory_started);
        // The draft the intent recorded, with the legs' final timings.
        invoice.timings_ms = timings;

        shadows.extend(warehouse_shadow);
        let stage_started = Instant::now();
        let result = payment::pay_and_settle(self, invoice, &request, stage_started, started).await;
        // A payment still pending counts nowhere yet: its order settles later.
        let confirmed = matches!(&result, Ok(placed) if placed.invoice.status == OrderStatus::Confirmed);
        if !arms.is_empty() {
            let settled = match &result {
                Ok(placed) if confirmed => {
                    Some(experiments::Settled::Confirmed { total_cents: placed.invoice.total_cents })
                }
                Ok(_) => None,
                Err(OrderError::PaymentFailed { .. }) => Some(experiments::Settled::PaymentFailed),
                Err(_) => None,
            };
            if let Some(settled) = settled {
                self.experiments.settled(&arms, settled);
            }
        }
        if !shadows.is_empty() && confirmed {
            run_shadows(self.store.clone(), order_id.clone(), shadows);
        }
        self.settled.notify_one();
        self.events_ready.notify_one();
        let invoice = match &result {
            Ok(placed) => Some(&placed.invoice),
            Err(OrderError::PaymentFailed { order, .. }) => Some(&**order),
            Err(_) => None,
        };
        if let Some(invoice) = invoice {
            let metrics = &self.metrics;
            let t = &invoice.timings_ms;
            for (stage, ms) in [
                ("validate", t.validate),
                ("cart", t.cart),
                ("discount", t.discount),
                ("inventory", t.inventory),
                ("payment", t.payment),
                ("total", t.total),
            ] {
                metrics.stage(stage, ms / 1e3);
            }
            metrics.payment_attempts(invoice.payment.status.as_str(), invoice.payment.attempts);
        }
        result
    }

    /// The order's invoice before payment (PENDING): what the payment
    /// intent records as the draft, and what the settlement completes.
    fn pending_invoice(
        &self,
        parts: &InvoiceParts<'_>,
        discounts: &DiscountFigures,
        allocations: Vec<InvoiceAllocation>,
        timings: Timings,
    ) -> Invoice {
        let InvoiceParts { order_id, request, customer, cart, context } = parts;
        Invoice {
            order_id: order_id.to_string(),
            status: OrderStatus::Pending,
            channel: request.channel.clone(),
            customer: InvoiceCustomer {
                id: customer.id.clone(),
                name: customer.name.clone(),
                tier: customer.tier,
                status: customer.status,
            },
            items: cart.lines.iter().map(InvoiceItem::from).collect(),
            currency: self.config.currency.clone(),
            subtotal_cents: cart.subtotal_cents,
            discounts: discounts.lines.clone(),
            discount_cents: discounts.total_cents,
            total_cents: cart.subtotal_cents.saturating_sub(discounts.total_cents),
            allocations,
            payment: InvoicePayment {
                status: PaymentStatus::Pending,
                transaction_id: None,
                attempts: 0,
                gateway: self.gateway.name().into(),
                failure: None,
            },
            events: envelope::event_refs(),
            timings_ms: timings,
            // The order's start: a fraud check rebuilt from the invoice asks
            // its window at the instant the discounts did.
            created_at: rfc3339_of_ms(context.ordered_at_ms),
            ship_to: context.ship_to,
            coupon_code: context.coupon_code.clone(),
            skipped_rules: discounts.skipped.clone(),
            fraud_review: None,
        }
    }

    /// Runs one order (see [`Pipeline::run_order`]) and counts its outcome.
    pub async fn place_order(&self, request: OrderRequest) -> Result<Placed, OrderError> {
        let mut result = self.run_order(request).await;
        // A failed rule's cause is the guest's text: it goes to the log and
        // the operators' list under an error id, and the client gets the id.
        if let Err(OrderError::RuleFailed { slot, module, cause, error_id: error_id @ None }) = &mut result {
            let handling = rule_errors::Handling::RuleFailed;
            *error_id = Some(self.rule_errors.record(*slot, module, cause, handling, None, None));
        }
        // A request whose key an earlier order holds is answered by that
        // order, and counted there.
        if !matches!(result, Err(OrderError::IdempotencyInProgress)) {
            self.metrics.order(match &result {
                Ok(placed) => placed.invoice.status.as_str(),
                Err(e) => e.code().as_str(),
            });
        }
        result
    }

    async fn cancel(&self, order_id: &str, reason: &'static str) {
        if let Err(e) = self.store.cancel(order_id, reason).await {
            // Left PENDING: the janitor retries the release (see recovery).
            tracing::error!(order_id, error = %e, "could not release the order's stock; the janitor will");
        }
    }
}

/// Where an order that ended as `result` shipped from, for its warehouse arm.
fn shipment_of(result: &Result<Placed, OrderError>) -> Shipment {
    match result {
        Ok(placed) => Shipment::of(&placed.invoice.allocations),
        Err(OrderError::PaymentFailed { order, .. }) => Shipment::of(&order.allocations),
        Err(OrderError::OutOfStock { .. }) => Shipment::StockOut,
        Err(OrderError::RuleFailed { slot: Slot::Warehouse, .. }) => Shipment::RuleFailed,
        Err(_) => Shipment::NotShipped,
    }
}

/// Runs shadow candidates after the answer and records how they differ,
/// in the order's span (what they log names the order and its request).
fn run_shadows(store: Store, order_id: String, jobs: Vec<shadow::ShadowJob>) {
    let shadows = async move {
        let runs =
            crate::rules::run_blocking(move || jobs.iter().map(|job| shadow::run(job, &order_id)).collect::<Vec<_>>())
                .await;
        if let Err(e) = store.record_shadow_runs(runs).await {
            tracing::warn!(error = %e, "could not record shadow runs");
        }
    };
    tokio::spawn(tracing::Instrument::instrument(shadows, tracing::Span::current()));
}
