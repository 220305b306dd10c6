//! `smartmart rules replay`: a candidate rule run on the inputs the active
//! rule at the same place saw in the last stored orders, compared with what
//! the active rule answered.
//!
//! The inputs are rebuilt from each settled order's stored invoice, the way
//! the fraud worker rebuilds an order for its checks ([`order_context`]),
//! and, for a warehouse selector, from the candidates it saw, kept on the
//! order's row ([`selector_input`]); nothing beyond what the order holds is
//! involved.
//!
//! - **Discount.** The rules stack: each sees what is left to pay after the
//!   ones before it. The input at a place of the stack is the order with
//!   `payable_cents` = subtotal − the invoice's discount lines granted by the
//!   rules before that place. Which rule granted a line is the line's
//!   `module`; where each module sits is the plug-in manifest's stack (a rule
//!   that granted nothing leaves no line, so the invoice alone cannot say
//!   where it was). The active result is what the replaced rule granted on
//!   the invoice (0 if nothing, or if the candidate is a new rule); the
//!   candidate's answer is capped as the pipeline caps it
//!   ([`capped_lines`]). Later rules are not re-run: the difference
//!   is the candidate's discount minus the active rule's, in cents, positive
//!   when the customer pays less with the candidate.
//! - **Fraud.** Every check sees the same order; the active result is the
//!   stored `fraud_review` (all checks combined, as stored).
//! - **Warehouse.** The selector sees the order (payable = subtotal, as in
//!   the pipeline, where it runs beside the discounts) and the candidates
//!   its order was offered, with their stock then (the order's kept
//!   `selector_input`). Its plan is checked as the pipeline checks it
//!   ([`validate_plan`]: offered warehouses only, within their stock,
//!   every ordered unit exactly once): a plan the host would refuse is a
//!   failure (`invalid_plan`), as a trap or an error is. A valid plan is
//!   compared with what the order's selector allocated (the row's `holds`):
//!   the same holds, or a difference (reported, like a discount's money
//!   difference, and not a failure: the candidate may ship otherwise). A
//!   `cannot-fulfil` answer is a refusal of the order (reported, not a
//!   failure, as a discount rule's refusal of a coupon). Orders without a
//!   kept input (placed before schema version 15, or whose input was over
//!   the bound) are skipped, saying which.
//!
//! This lives in `pipeline` because the inputs are pipeline facts (the
//! invoice, the stack's capping, the fraud worker's reconstruction); the
//! rules layer knows nothing of invoices.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::invoice::{Invoice, InvoiceDiscount};
use crate::domain::status::{Channel, Slot};
use crate::pipeline::inventory::{requested_quantities, validate_plan};
use crate::pipeline::rule_io::{capped_lines, order_context, payment_summary};
use crate::pipeline::selector_input::{self, Kept};
use crate::rules::manifest::{Manifest, RuleEntry};
use crate::rules::types::OrderContext;
use crate::rules::{
    Budgets, Channels, ModuleConfig, ModuleIdentity, OrderScope, RuleError, RuleModule, Scope, Traced, Usage, World,
    text,
};
use crate::store::orders::StoredOrder;
use crate::store::{Store, StoreError};

/// Where the candidate goes, as the command line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Instead of the rule whose module file is this (`gold_loyalty.wasm`;
    /// the `.wasm` may be left out).
    Replace(String),
    /// A new rule at this 1-based position of the slot (before the rule now
    /// there; one past the last = the end).
    Position(usize),
    /// A new rule at the end of the slot.
    End,
}

/// The candidate's place, resolved against the manifest.
#[derive(Debug, Clone)]
pub struct Target {
    pub world: World,
    /// 0-based position in the slot's stack.
    pub position: usize,
    /// The manifest entry the candidate replaces, if any.
    pub replaced: Option<RuleEntry>,
    /// The sales channels whose orders are replayed: the replaced entry's
    /// (or those asked for), since only their orders ran it.
    pub channels: Channels,
    /// Each position of the stack.
    stack: Vec<StackEntry>,
}

/// One position of a slot's stack: the module files that may have granted
/// its lines (the rule's own, its experiment variants' and its canary's),
/// and the orders that ran it.
#[derive(Debug, Clone)]
struct StackEntry {
    files: Vec<String>,
    scope: Scope,
}

impl Target {
    /// The configuration the candidate starts from: the replaced rule's
    /// (the command line's `--config` goes over it).
    pub fn base_config(&self) -> ModuleConfig {
        self.replaced.as_ref().map(|e| e.config.clone()).unwrap_or_default()
    }

    /// The budgets the candidate starts from: the replaced rule's.
    pub fn base_budgets(&self) -> Budgets {
        self.replaced.as_ref().map(|e| e.budgets).unwrap_or_default()
    }

    fn describe(&self) -> String {
        let n = self.stack.len();
        let place = match &self.replaced {
            Some(entry) if entry.has_no_stable_rule() => {
                format!("at the place of a new rule with no stable version (position {} of {n})", self.position + 1)
            }
            Some(entry) => format!("replacing {} (position {} of {n})", entry.module, self.position + 1),
            None if self.world == World::FraudCheck => format!("a new fraud check beside the {n} configured"),
            None if self.position == n => format!("a new rule at the end of the stack (position {})", n + 1),
            None => format!(
                "a new rule at position {} of {} (before {})",
                self.position + 1,
                n,
                self.stack[self.position].files[0]
            ),
        };
        if self.channels.is_all() { place } else { format!("{place}, on {} orders", self.channels) }
    }
}

fn same_file(name: &str, file: &str) -> bool {
    name == file || format!("{name}.wasm") == file
}

/// Each position of a slot's stack: the module files that may have granted
/// a line there, and the entry's scope.
fn stack_of(entries: &[RuleEntry]) -> Vec<StackEntry> {
    entries
        .iter()
        .map(|entry| {
            let mut files = vec![entry.module.clone()];
            if let Some(experiment) = &entry.experiment {
                files.extend(experiment.variants.iter().filter_map(|v| v.module_file().map(str::to_string)));
            }
            files.extend(entry.canary.as_ref().and_then(|c| c.module.clone()));
            files.dedup();
            StackEntry { files, scope: entry.scope() }
        })
        .collect()
}

/// The entries of `world`'s slot (the warehouse slot: its one selector).
fn slot_entries(manifest: &Manifest, world: World) -> &[RuleEntry] {
    match world {
        World::DiscountRule => &manifest.discount,
        World::FraudCheck => &manifest.fraud,
        World::WarehouseSelector => std::slice::from_ref(&manifest.warehouse),
    }
}

/// The place of the `index`-th rule of `world`'s slot in `manifest` (the
/// stack the stored orders ran on), as a reload's replay gate takes it:
/// instead of the rule there, or a new rule at the end when the slot is
/// shorter; replayed on the orders of `channels` (the new rule's). A
/// warehouse selector replaces the manifest's selector.
pub fn gate_target(manifest: &Manifest, world: World, index: usize, channels: Channels) -> anyhow::Result<Target> {
    let entries = slot_entries(manifest, world);
    let position = index.min(entries.len());
    Ok(Target { world, position, replaced: entries.get(index).cloned(), channels, stack: stack_of(entries) })
}

/// Resolves `place` in the manifest's slot for `world`. `channels` (the
/// command line's `--channel`) limits the replay to those channels' orders
/// and says which entry `--replace` means when the slot holds its module
/// once per channel; by default, the replaced entry's channels (every
/// channel for a new rule).
pub fn resolve(manifest: &Manifest, world: World, place: &Place, channels: Option<Channels>) -> anyhow::Result<Target> {
    let entries = slot_entries(manifest, world);
    let stack = stack_of(entries);
    let asked = channels.unwrap_or(Channels::ALL);
    let (position, replaced) = match place {
        // One selector plans every order: a candidate can only take its place.
        Place::Position(_) if world == World::WarehouseSelector => bail!(
            "--slot-position: the warehouse slot holds one selector; a candidate selector replaces it \
             (--replace {} or neither)",
            manifest.warehouse.module
        ),
        Place::End if world == World::WarehouseSelector => (0, Some(manifest.warehouse.clone())),
        Place::Replace(name) => {
            let found: Vec<usize> = (0..entries.len())
                .filter(|&i| stack[i].files.iter().any(|file| same_file(name, file)))
                .filter(|&i| stack[i].scope.channels.intersects(asked))
                .collect();
            match found.as_slice() {
                [i] => (*i, Some(entries[*i].clone())),
                [] if channels.is_some() => bail!(
                    "--replace {name} --channel {asked}: no {} rule of the manifest with that module serves \
                     those channels",
                    world.slot()
                ),
                [] => bail!(
                    "--replace {name}: no {} rule of the manifest has that module (the slot has: {})",
                    world.slot(),
                    if entries.is_empty() {
                        "none".to_string()
                    } else {
                        entries.iter().map(|e| e.module.as_str()).collect::<Vec<_>>().join(", ")
                    }
                ),
                _ => bail!(
                    "--replace {name}: the {} slot holds it more than once ({}); say which with --channel",
                    world.slot(),
                    found
                        .iter()
                        .map(|&i| format!("{}[{}] for {}", world.slot(), i + 1, stack[i].scope.channels))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
        }
        Place::Position(_) if world == World::FraudCheck => bail!(
            "--slot-position: every fraud check sees the same order, so a position changes nothing; \
             use --replace NAME, or neither for a new check"
        ),
        Place::Position(n) => {
            if *n == 0 || *n > entries.len() + 1 {
                bail!(
                    "--slot-position {n}: the discount stack has {} rule(s); a new rule goes at 1..={}",
                    entries.len(),
                    entries.len() + 1
                );
            }
            (n - 1, None)
        }
        Place::End => (entries.len(), None),
    };
    let channels = match &replaced {
        Some(entry) => entry.scope().channels.intersection(asked),
        None => asked,
    };
    if world == World::DiscountRule {
        ambiguous_lines(&stack, channels)?;
    }
    Ok(Target { world, position, replaced, channels, stack })
}

/// A line names its module: a module at two places of the stack that one
/// replayed order could have run both of (a channel in common, windows that
/// overlap) cannot be told apart.
fn ambiguous_lines(stack: &[StackEntry], channels: Channels) -> anyhow::Result<()> {
    for (first, a) in stack.iter().enumerate() {
        for (offset, b) in stack[first + 1..].iter().enumerate() {
            let same_orders =
                a.scope.overlaps(&b.scope) && a.scope.channels.intersection(b.scope.channels).intersects(channels);
            if let Some(file) = a.files.iter().find(|file| b.files.contains(file))
                && same_orders
            {
                bail!(
                    "the discount stack names {file} at positions {} and {} for the same orders: its invoice \
                     lines cannot be attributed to one place",
                    first + 1,
                    first + offset + 2
                );
            }
        }
    }
    Ok(())
}

/// The whole replay: the candidate, its place, one entry per order, the
/// totals and the candidate's budget use.
#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub candidate: ModuleIdentity,
    pub slot: Slot,
    /// The replaced rule's module file, if any.
    pub replaces: Option<String>,
    /// 1-based position in the slot's stack.
    pub position: usize,
    /// The sales channels whose orders were replayed.
    pub channels: Vec<Channel>,
    pub orders: Vec<OrderReplay>,
    pub summary: Summary,
    pub usage: UsagePercentiles,
}

/// What became of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The candidate answered as the active rule did.
    Same,
    /// The candidate answered otherwise.
    Differs,
    /// The candidate refused the order (an invalid coupon): the order would
    /// have been refused.
    Refused,
    /// The candidate trapped, ran out of a budget or returned an error.
    Failed,
    /// The stored order cannot be replayed (see `skipped`).
    Skipped,
    /// No active result to compare with (a fraud review not yet stored).
    NoActiveResult,
}

#[derive(Debug, Serialize)]
pub struct OrderReplay {
    pub order_id: String,
    pub status: String,
    pub created_at: String,
    pub currency: String,
    pub outcome: Outcome,
    /// What was left to pay when the candidate's place came (discount).
    pub input_payable_cents: Option<u64>,
    pub active: Value,
    pub candidate: Value,
    /// Candidate minus active discount, in cents: positive = the customer
    /// pays this much less with the candidate (discount; otherwise absent).
    pub difference_cents: Option<i64>,
    pub failure: Option<Failure>,
    /// Why the order was not replayed.
    pub skipped: Option<String>,
}

/// A failed candidate call: the cause kind and its message, escaped.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub orders: usize,
    pub replayed: usize,
    pub same: usize,
    pub differs: usize,
    pub refused: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Sum of the differences per currency (discount).
    pub difference_cents: BTreeMap<String, i64>,
    /// Orders the candidate failed on.
    pub failed_orders: Vec<String>,
}

/// p50/p90/p99/max of the candidate's calls, beside the budget.
#[derive(Debug, Serialize)]
pub struct UsagePercentiles {
    pub calls: usize,
    pub fuel: Percentiles<u64>,
    pub peak_memory_bytes: Percentiles<u64>,
    pub wall_time_ms: Percentiles<f64>,
    /// What the output budget charged for each answer (calls that produced
    /// one), as `rules run` and the budget itself count it.
    pub output_bytes: Percentiles<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles<T> {
    pub p50: T,
    pub p90: T,
    pub p99: T,
    pub max: T,
    pub limit: T,
}

/// Nearest-rank percentiles of `values` (zeros when there are none).
fn percentiles<T: Copy + Default + PartialOrd>(mut values: Vec<T>, limit: T) -> Percentiles<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let at = |p: usize| -> T {
        if values.is_empty() {
            return T::default();
        }
        let rank = (p * values.len()).div_ceil(100).max(1);
        values[rank - 1]
    };
    Percentiles { p50: at(50), p90: at(90), p99: at(99), max: at(100), limit }
}

/// The last `limit` settled orders a rule of `channels` ran on, newest
/// first: every order for a rule of every channel (an embedder's channels
/// too), else those channels' orders only.
pub fn recent_orders(store: &Store, limit: usize, channels: Channels) -> Result<Vec<StoredOrder>, StoreError> {
    if channels.is_all() {
        store.recent_settled_orders(limit)
    } else {
        store.recent_settled_orders_of(limit, &channels.list())
    }
}

/// Runs `candidate` at `target` on `orders` (newest first, as stored).
pub fn replay(candidate: &RuleModule, target: &Target, orders: &[StoredOrder]) -> ReplayReport {
    let mut usages: Vec<Usage> = Vec::new();
    let mut replays = Vec::with_capacity(orders.len());
    for order in orders {
        let (replay, usage) = replay_order(candidate, target, order);
        usages.extend(usage);
        replays.push(replay);
    }
    let mut summary = Summary { orders: replays.len(), ..Summary::default() };
    for r in &replays {
        match r.outcome {
            Outcome::Same => summary.same += 1,
            Outcome::Differs => summary.differs += 1,
            Outcome::Refused => summary.refused += 1,
            Outcome::Failed => {
                summary.failed += 1;
                summary.failed_orders.push(r.order_id.clone());
            }
            Outcome::Skipped => summary.skipped += 1,
            Outcome::NoActiveResult => {}
        }
        if r.outcome != Outcome::Skipped {
            summary.replayed += 1;
        }
        if let Some(d) = r.difference_cents {
            *summary.difference_cents.entry(r.currency.clone()).or_default() += d;
        }
    }
    let budgets = candidate.budgets();
    let usage = UsagePercentiles {
        calls: usages.len(),
        fuel: percentiles(usages.iter().map(|u| u.fuel).collect(), budgets.fuel),
        peak_memory_bytes: percentiles(
            usages.iter().map(|u| u.peak_memory_bytes as u64).collect(),
            budgets.memory_bytes as u64,
        ),
        wall_time_ms: percentiles(
            usages.iter().map(|u| u.elapsed.as_secs_f64() * 1e3).collect(),
            budgets.time_ms as f64,
        ),
        output_bytes: percentiles(
            usages.iter().filter_map(|u| u.output_bytes.map(|b| b as u64)).collect(),
            budgets.output_bytes as u64,
        ),
    };
    ReplayReport {
        candidate: (**candidate.identity()).clone(),
        slot: target.world.slot(),
        replaces: target.replaced.as_ref().map(|e| e.module.clone()),
        position: target.position + 1,
        channels: target.channels.list(),
        orders: replays,
        summary,
        usage,
    }
}

fn replay_order(candidate: &RuleModule, target: &Target, order: &StoredOrder) -> (OrderReplay, Option<Usage>) {
    let mut replay = OrderReplay {
        order_id: order.id.clone(),
        status: order.status.as_str().to_string(),
        created_at: order.created_at.clone(),
        currency: order.currency.clone(),
        outcome: Outcome::Skipped,
        input_payable_cents: None,
        active: Value::Null,
        candidate: Value::Null,
        difference_cents: None,
        failure: None,
        skipped: None,
    };
    let served = order.channel.parse::<Channel>().is_ok_and(|c| target.channels.contains(c));
    if !served && !target.channels.is_all() {
        replay.skipped = Some(format!("a {} order: the rule serves {} orders", order.channel, target.channels));
        return (replay, None);
    }
    let invoice = match order.invoice.as_deref().map(serde_json::from_str::<Invoice>) {
        Some(Ok(invoice)) => invoice,
        Some(Err(e)) => {
            replay.skipped = Some(format!("unreadable invoice: {e}"));
            return (replay, None);
        }
        None => {
            replay.skipped = Some("no invoice stored".into());
            return (replay, None);
        }
    };
    match target.world {
        World::DiscountRule => replay_discount(candidate, target, &invoice, replay),
        World::FraudCheck => replay_fraud(candidate, order, &invoice, replay),
        World::WarehouseSelector => replay_warehouse(candidate, order, &invoice, replay),
    }
}

/// Where each discount line of an order (of the scope `order`) sits in the
/// stack, among the positions that order ran, or why the invoice does not
/// fit the manifest's stack.
fn line_positions(target: &Target, order: OrderScope, lines: &[InvoiceDiscount]) -> Result<Vec<usize>, String> {
    let mut positions = Vec::with_capacity(lines.len());
    for line in lines {
        let ran = |entry: &StackEntry| entry.scope.serves(order) && entry.files.contains(&line.module);
        let Some(position) = target.stack.iter().position(ran) else {
            return Err(format!(
                "its discount line from {} has no place in the manifest's discount stack (the stack changed since)",
                text::escape(&line.module)
            ));
        };
        if positions.last().is_some_and(|&last| last > position) {
            return Err("its discount lines are not in the manifest's stack order (the stack changed since)".into());
        }
        positions.push(position);
    }
    Ok(positions)
}

fn replay_discount(
    candidate: &RuleModule,
    target: &Target,
    invoice: &Invoice,
    mut replay: OrderReplay,
) -> (OrderReplay, Option<Usage>) {
    let context = order_context(invoice);
    let scope = OrderScope::of(&context.channel, context.ordered_at_ms);
    let positions = match line_positions(target, scope, &invoice.discounts) {
        Ok(positions) => positions,
        Err(why) => {
            replay.skipped = Some(why);
            return (replay, None);
        }
    };
    let before: u64 = invoice
        .discounts
        .iter()
        .zip(&positions)
        .filter(|(_, p)| **p < target.position)
        .map(|(l, _)| l.amount_cents)
        .sum();
    let active_lines: Vec<&InvoiceDiscount> = if target.replaced.is_some() {
        invoice.discounts.iter().zip(&positions).filter(|(_, p)| **p == target.position).map(|(l, _)| l).collect()
    } else {
        Vec::new()
    };
    let active_cents: u64 = active_lines.iter().map(|l| l.amount_cents).sum();
    let payable = invoice.subtotal_cents.saturating_sub(before);
    let context = OrderContext { payable_cents: payable, ..context };
    replay.input_payable_cents = Some(payable);
    replay.active = json!({ "discount_cents": active_cents, "lines": active_lines });
    let traced = candidate.apply_discount_traced(&context);
    let usage = traced.usage;
    match traced.result {
        Ok(granted) => {
            let mut left = payable;
            let lines = capped_lines(granted, &crate::rules::Rule::Wasm(candidate.clone()), None, None, &mut left);
            let candidate_cents = payable - left;
            let difference = candidate_cents as i64 - active_cents as i64;
            replay.candidate = json!({ "discount_cents": candidate_cents, "lines": lines });
            replay.difference_cents = Some(difference);
            replay.outcome = if difference == 0 { Outcome::Same } else { Outcome::Differs };
        }
        Err(error) => failed(&mut replay, error),
    }
    (replay, Some(usage))
}

fn replay_fraud(
    candidate: &RuleModule,
    order: &StoredOrder,
    invoice: &Invoice,
    mut replay: OrderReplay,
) -> (OrderReplay, Option<Usage>) {
    let context = order_context(invoice);
    let payment = payment_summary(invoice);
    let traced: Traced<_> = candidate.check_fraud_traced(&context, &payment);
    let usage = traced.usage;
    replay.active = match &order.fraud_review {
        Some(review) => json!({
            "action": review["action"], "score": review["score"], "flags": review["flags"], "module": review["module"],
        }),
        None => Value::Null,
    };
    match traced.result {
        Ok(verdict) => {
            replay.candidate = json!({
                "action": verdict.action.as_str(), "score": verdict.score, "flags": verdict.flags,
                "reasons": verdict.reasons,
            });
            replay.outcome = match &order.fraud_review {
                None => Outcome::NoActiveResult,
                Some(review)
                    if review["action"].as_str() == Some(verdict.action.as_str())
                        && review["score"].as_u64() == Some(u64::from(verdict.score)) =>
                {
                    Outcome::Same
                }
                Some(_) => Outcome::Differs,
            };
        }
        Err(error) => failed(&mut replay, error),
    }
    (replay, Some(usage))
}

/// A stored order's holds (`[[warehouse_id, sku, quantity], …]`, sorted).
type HoldRows = Vec<(String, String, u64)>;

fn replay_warehouse(
    candidate: &RuleModule,
    order: &StoredOrder,
    invoice: &Invoice,
    mut replay: OrderReplay,
) -> (OrderReplay, Option<Usage>) {
    let candidates = match order.selector_input.as_deref().map(selector_input::decode) {
        Some(Ok(Kept::Candidates(candidates))) => candidates,
        Some(Ok(Kept::TooLarge { bytes })) => {
            replay.skipped = Some(format!(
                "its selector's input ({bytes} bytes) was over the {} bytes kept per order: not kept",
                selector_input::MAX_BYTES
            ));
            return (replay, None);
        }
        Some(Err(e)) => {
            replay.skipped = Some(format!("unreadable selector input: {e}"));
            return (replay, None);
        }
        None => {
            replay.skipped = Some("no selector input kept (placed before schema version 15)".into());
            return (replay, None);
        }
    };
    let active: HoldRows = match order.holds.as_deref().map(serde_json::from_str::<HoldRows>) {
        Some(Ok(holds)) => holds,
        Some(Err(e)) => {
            replay.skipped = Some(format!("unreadable holds: {e}"));
            return (replay, None);
        }
        None => {
            replay.skipped = Some("no holds stored".into());
            return (replay, None);
        }
    };
    // As the pipeline asks it: beside the discounts, so before any of them.
    let context = OrderContext { payable_cents: invoice.subtotal_cents, ..order_context(invoice) };
    replay.active = json!({ "holds": active });
    let traced = candidate.select_warehouses_traced(&context, &candidates);
    let usage = traced.usage;
    match traced.result {
        Ok(plan) => match validate_plan(&plan, &requested_quantities(&context), &candidates) {
            Ok(holds) => {
                let holds: HoldRows =
                    holds.into_iter().map(|h| (h.warehouse_id, h.sku, u64::from(h.quantity))).collect();
                replay.outcome = if holds == active { Outcome::Same } else { Outcome::Differs };
                replay.candidate = escape_json(json!({ "holds": holds, "reasons": plan.reasons }));
            }
            Err(why) => {
                let failure = Failure { kind: "invalid_plan", message: text::escape(&why).into_owned() };
                replay.candidate = json!({ "failed": failure, "plan": escape_json(json!(plan)) });
                replay.failure = Some(failure);
                replay.outcome = Outcome::Failed;
            }
        },
        Err(error) => failed(&mut replay, error),
    }
    (replay, Some(usage))
}

/// `WH-BLR: HDMI-2M×2, TV-55-OLED×1; WH-DEL: …` (each warehouse once).
fn holds_text(holds: &Value) -> String {
    let Ok(rows) = serde_json::from_value::<HoldRows>(holds.clone()) else { return "?".into() };
    let mut by_warehouse: Vec<(String, Vec<String>)> = Vec::new();
    for (warehouse, sku, quantity) in rows {
        let line = format!("{sku}×{quantity}");
        match by_warehouse.last_mut() {
            Some((w, lines)) if *w == warehouse => lines.push(line),
            _ => by_warehouse.push((warehouse, vec![line])),
        }
    }
    by_warehouse.into_iter().map(|(w, lines)| format!("{w}: {}", lines.join(", "))).collect::<Vec<_>>().join("; ")
}

fn failed(replay: &mut OrderReplay, error: RuleError) {
    match error {
        RuleError::Refused { refusal, .. } => {
            let refusal = serde_json::to_value(&refusal).unwrap_or(Value::Null);
            replay.candidate = json!({ "refused": escape_json(refusal) });
            replay.outcome = Outcome::Refused;
        }
        RuleError::Failed { cause, .. } => {
            let failure = Failure { kind: cause.kind(), message: text::escape(&cause.to_string()).into_owned() };
            replay.candidate = json!({ "failed": failure });
            replay.failure = Some(failure);
            replay.outcome = Outcome::Failed;
        }
    }
}

/// Every string of `value` escaped (a refusal's message is the rule's text).
fn escape_json(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(text::escape(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(escape_json).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, escape_json(v))).collect()),
        other => other,
    }
}

/// `+120 = the customer pays 1.20 USD less with the candidate` (cents are
/// hundredths of the currency unit, as everywhere in the engine).
pub fn explain_difference(cents: i64, currency: &str) -> String {
    explain(cents, currency, "the customer pays")
}

/// [`explain_difference`] for a sum over orders.
pub fn explain_total(cents: i64, currency: &str) -> String {
    explain(cents, currency, "customers pay")
}

fn explain(cents: i64, currency: &str, who: &str) -> String {
    let amount = format!("{}.{:02} {currency}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
    match cents.signum() {
        0 => format!("0 = {who} the same"),
        1 => format!("+{cents} = {who} {amount} less with the candidate"),
        _ => format!("{cents} = {who} {amount} more with the candidate"),
    }
}

impl ReplayReport {
    /// Whether the candidate failed on any order (the command exits 2).
    pub fn candidate_failed(&self) -> bool {
        self.summary.failed > 0
    }

    /// The report as a person reads it: one line per order, then totals and
    /// budget percentiles.
    pub fn to_text(&self, target: &Target) -> String {
        let mut s = String::new();
        let c = &self.candidate;
        let _ = writeln!(s, "candidate: {} {}@{} ({})", c.file, c.name, c.version, c.digest);
        let _ = writeln!(s, "slot:      {}, {}", self.slot, target.describe());
        let _ = writeln!(s, "orders:    the last {} settled, newest first", self.summary.orders);
        let _ = writeln!(s);
        for r in &self.orders {
            let _ = write!(s, "{}  {:<15}", r.order_id, r.status);
            match r.outcome {
                Outcome::Skipped => {
                    let _ = writeln!(s, "skipped: {}", r.skipped.as_deref().unwrap_or(""));
                }
                Outcome::Failed => {
                    let f = r.failure.as_ref().expect("a failed outcome has its failure");
                    let _ = writeln!(s, "FAILED {}: {}", f.kind, f.message);
                }
                Outcome::Refused => {
                    let _ = writeln!(s, "REFUSED the order: {}", r.candidate["refused"]);
                }
                _ if self.slot == Slot::Warehouse => {
                    let _ = writeln!(
                        s,
                        "active {}  candidate {}{}",
                        holds_text(&r.active["holds"]),
                        holds_text(&r.candidate["holds"]),
                        if r.outcome == Outcome::Differs { "  DIFFERS" } else { "" }
                    );
                }
                _ if self.slot == Slot::Discount => {
                    let difference = r.difference_cents.unwrap_or(0);
                    let cents = |v: &Value| v["discount_cents"].as_u64().unwrap_or(0);
                    let _ = writeln!(
                        s,
                        "payable {:>9}  active {:>8}  candidate {:>8}  {}",
                        r.input_payable_cents.unwrap_or(0),
                        cents(&r.active),
                        cents(&r.candidate),
                        explain_difference(difference, &r.currency)
                    );
                }
                _ => {
                    let verdict = |v: &Value| match v {
                        Value::Null => "(no review stored yet)".to_string(),
                        v => format!("{} score {}", v["action"].as_str().unwrap_or("?"), v["score"]),
                    };
                    let _ = writeln!(
                        s,
                        "active {:<24} candidate {:<24} {}",
                        verdict(&r.active),
                        verdict(&r.candidate),
                        if r.outcome == Outcome::Differs { "DIFFERS" } else { "" }
                    );
                }
            }
        }
        let m = &self.summary;
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "total:     {} orders, {} replayed: {} same, {} differ, {} refused, {} failed, {} skipped",
            m.orders, m.replayed, m.same, m.differs, m.refused, m.failed, m.skipped
        );
        for (currency, cents) in &m.difference_cents {
            let _ = writeln!(s, "money:     {} in total, over the orders replayed", explain_total(*cents, currency));
        }
        if !m.failed_orders.is_empty() {
            let _ = writeln!(s, "failed on: {}", m.failed_orders.join(", "));
        }
        let u = &self.usage;
        let _ = writeln!(s, "usage of {} candidate call(s) (p50 / p90 / p99 / max of budget):", u.calls);
        let _ = writeln!(
            s,
            "  fuel         {} / {} / {} / {} of {}",
            u.fuel.p50, u.fuel.p90, u.fuel.p99, u.fuel.max, u.fuel.limit
        );
        let _ = writeln!(
            s,
            "  memory       {} / {} / {} / {} of {} bytes",
            u.peak_memory_bytes.p50,
            u.peak_memory_bytes.p90,
            u.peak_memory_bytes.p99,
            u.peak_memory_bytes.max,
            u.peak_memory_bytes.limit
        );
        let _ = writeln!(
            s,
            "  wall time    {:.3} / {:.3} / {:.3} / {:.3} of {} ms",
            u.wall_time_ms.p50, u.wall_time_ms.p90, u.wall_time_ms.p99, u.wall_time_ms.max, u.wall_time_ms.limit
        );
        let _ = writeln!(
            s,
            "  output       {} / {} / {} / {} of {} bytes",
            u.output_bytes.p50, u.output_bytes.p90, u.output_bytes.p99, u.output_bytes.max, u.output_bytes.limit
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = percentiles((1..=100u64).collect(), 1000);
        assert_eq!((p.p50, p.p90, p.p99, p.max, p.limit), (50, 90, 99, 100, 1000));
        let one = percentiles(vec![7u64], 10);
        assert_eq!((one.p50, one.p99, one.max), (7, 7, 7));
        let none = percentiles(Vec::<u64>::new(), 10);
        assert_eq!((none.p50, none.max), (0, 0));
    }

    #[test]
    fn the_sign_of_a_difference_is_explained() {
        assert_eq!(explain_difference(120, "USD"), "+120 = the customer pays 1.20 USD less with the candidate");
        assert_eq!(explain_difference(-5, "USD"), "-5 = the customer pays 0.05 USD more with the candidate");
        assert_eq!(explain_difference(0, "USD"), "0 = the customer pays the same");
    }

    fn manifest(text: &str) -> Manifest {
        toml::from_str(text).expect("a manifest")
    }

    const STACK: &str = r#"
        [[discount]]
        module = "gold_loyalty.wasm"
        config = { percent = "10" }
        [[discount]]
        module = "coupons.wasm"
        [warehouse]
        module = "nearest_warehouse.wasm"
        [[fraud]]
        module = "high_value.wasm"
    "#;

    #[test]
    fn places_resolve_against_the_stack() {
        let m = manifest(STACK);
        let t = resolve(&m, World::DiscountRule, &Place::Replace("coupons".into()), None).unwrap();
        assert_eq!((t.position, t.replaced.as_ref().map(|e| e.module.as_str())), (1, Some("coupons.wasm")));
        let t = resolve(&m, World::DiscountRule, &Place::Replace("gold_loyalty.wasm".into()), None).unwrap();
        assert_eq!(t.base_config().get("percent").map(String::as_str), Some("10"));
        assert_eq!(resolve(&m, World::DiscountRule, &Place::End, None).unwrap().position, 2);
        assert_eq!(resolve(&m, World::DiscountRule, &Place::Position(2), None).unwrap().position, 1);
        for bad in [Place::Position(0), Place::Position(4), Place::Replace("nope".into())] {
            assert!(resolve(&m, World::DiscountRule, &bad, None).is_err(), "{bad:?}");
        }
        let selector = resolve(&m, World::WarehouseSelector, &Place::End, None).unwrap();
        assert_eq!(selector.replaced.map(|e| e.module), Some("nearest_warehouse.wasm".to_string()));
        assert!(resolve(&m, World::WarehouseSelector, &Place::Position(1), None).is_err());
        assert!(resolve(&m, World::FraudCheck, &Place::Position(1), None).is_err());
    }

    #[test]
    fn the_gate_replaces_the_rule_at_its_index_or_adds_one_at_the_end() {
        let m = manifest(STACK);
        let t = gate_target(&m, World::DiscountRule, 1, Channels::ALL).unwrap();
        assert_eq!((t.position, t.replaced.as_ref().map(|e| e.module.as_str())), (1, Some("coupons.wasm")));
        let t = gate_target(&m, World::DiscountRule, 5, Channels::ALL).unwrap();
        assert_eq!((t.position, t.replaced.is_none()), (2, true), "past the end: a new rule at the end");
        let t = gate_target(&m, World::FraudCheck, 0, Channels::ALL).unwrap();
        assert_eq!(t.replaced.map(|e| e.module), Some("high_value.wasm".to_string()));
        let t = gate_target(&m, World::WarehouseSelector, 0, Channels::ALL).unwrap();
        assert_eq!((t.position, t.replaced.map(|e| e.module)), (0, Some("nearest_warehouse.wasm".to_string())));
    }

    /// A discount line of one cent granted by `module`.
    fn discount_line(module: &str) -> InvoiceDiscount {
        InvoiceDiscount {
            rule: "r".into(),
            module: module.into(),
            version: "1".into(),
            digest: "d".into(),
            variant: None,
            canary: None,
            description: "x".into(),
            amount_cents: 1,
            reasons: vec![],
        }
    }

    #[test]
    fn lines_out_of_the_stack_order_are_not_attributed() {
        let t = resolve(&manifest(STACK), World::DiscountRule, &Place::End, None).unwrap();
        let web = OrderScope::of("web", 0);
        assert_eq!(
            line_positions(&t, web, &[discount_line("gold_loyalty.wasm"), discount_line("coupons.wasm")]),
            Ok(vec![0, 1])
        );
        assert!(line_positions(&t, web, &[discount_line("coupons.wasm"), discount_line("gold_loyalty.wasm")]).is_err());
        assert!(line_positions(&t, web, &[discount_line("retired.wasm")]).unwrap_err().contains("retired.wasm"));
    }

    /// The app-only coupon of the README: the coupon rule once for web and
    /// partner, once (with more codes) for mobile.
    const BY_CHANNEL: &str = r#"
        [[discount]]
        module = "gold_loyalty.wasm"
        [[discount]]
        module = "coupons.wasm"
        channels = ["web", "partner"]
        [[discount]]
        module = "coupons.wasm"
        channels = ["mobile"]
        config = { "code.APP15" = "percent:15" }
        [warehouse]
        module = "nearest_warehouse.wasm"
    "#;

    #[test]
    fn a_rule_per_channel_is_replayed_on_its_channels_orders() {
        let m = manifest(BY_CHANNEL);
        let twice = resolve(&m, World::DiscountRule, &Place::Replace("coupons".into()), None).unwrap_err();
        assert!(twice.to_string().contains("discount[2] for web, partner; discount[3] for mobile"), "{twice}");
        let mobile = Channels::of(&[Channel::Mobile]);
        let t = resolve(&m, World::DiscountRule, &Place::Replace("coupons".into()), Some(mobile)).unwrap();
        assert_eq!((t.position, t.channels), (2, mobile));
        assert_eq!(t.base_config().get("code.APP15").map(String::as_str), Some("percent:15"));
        let t = resolve(&m, World::DiscountRule, &Place::Replace("gold_loyalty".into()), Some(mobile)).unwrap();
        assert_eq!(t.channels, mobile, "an every-channel rule replayed on the channel asked for");
        let lines = [discount_line("gold_loyalty.wasm"), discount_line("coupons.wasm")];
        assert_eq!(line_positions(&t, OrderScope::of("mobile", 0), &lines), Ok(vec![0, 2]));
        assert_eq!(line_positions(&t, OrderScope::of("web", 0), &lines), Ok(vec![0, 1]));
        // The same module at two places for the same orders cannot be told apart.
        let both = BY_CHANNEL.replace(r#"channels = ["mobile"]"#, r#"channels = ["mobile", "web"]"#);
        let refused = resolve(&manifest(&both), World::DiscountRule, &Place::End, None).unwrap_err();
        assert!(refused.to_string().contains("positions 2 and 3 for the same orders"), "{refused}");
    }
}
