//! `/v1/admin/*`: operations staff load the catalog, stock and customers,
//! and watch the rules and fraud escalations. Admin key only.

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use super::json::{ApiJson, ApiPath};
use super::validate::{MAX_PRICE_CENTS, check_id, check_location, check_text};
use crate::clock::rfc3339_of_ms;
use crate::domain::customer::{AccountStatus, Customer, Tier};
use crate::domain::geo::GeoPoint;
use crate::domain::status::{Channel, ErrorCode, Slot};
use crate::pipeline::experiments::Arm;
use crate::pipeline::rule_errors;
use crate::release::welch::{Difference, Moments, welch_interval};
use crate::release::wilson::{Rate, wilson_interval};
use crate::rules::Scope;
use crate::store::catalog::{Product, StockLevel, Warehouse};
use crate::store::experiments::{ArmFigures, ArmRow, ArmRowView, WarehouseRowView};
use crate::store::shadows::ShadowSummary;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub email: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub phone: String,
    #[serde(deserialize_with = "super::json::string_enum")]
    pub tier: Tier,
    #[serde(deserialize_with = "super::json::string_enum")]
    pub status: AccountStatus,
    #[serde(deserialize_with = "super::json::object")]
    pub location: GeoPoint,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub category: String,
    #[serde(deserialize_with = "super::json::integer")]
    #[schema(maximum = 1000000000000_u64)]
    pub unit_price_cents: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WarehouseBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub name: String,
    #[serde(deserialize_with = "super::json::object")]
    pub location: GeoPoint,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockBody {
    #[serde(deserialize_with = "super::json::integer")]
    #[schema(maximum = 4294967295_u64)]
    pub on_hand: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StockAnswer {
    pub warehouse_id: String,
    pub sku: String,
    pub on_hand: u64,
    pub available: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkuStock {
    pub sku: String,
    pub on_hand: u64,
    pub available: u64,
    pub warehouses: Vec<WarehouseStock>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WarehouseStock {
    pub warehouse_id: String,
    pub warehouse_name: String,
    pub on_hand: u64,
    pub available: u64,
}

/// Create or replace a customer.
#[utoipa::path(put, path = "/v1/admin/customers/{id}", tag = "admin", params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = CustomerBody, responses((status = 200, description = "the stored customer", body = Customer), (status = 400), (status = 401)),
    security(("admin_key" = [])))]
pub async fn put_customer(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CustomerBody>,
) -> Result<Json<Customer>, ApiError> {
    check_id("id", &id)?;
    check_text("name", &body.name)?;
    check_text("email", &body.email)?;
    check_text("phone", &body.phone)?;
    check_location("location", &body.location)?;
    let customer = Customer {
        id,
        name: body.name,
        email: body.email,
        phone: body.phone,
        tier: body.tier,
        status: body.status,
        location: body.location,
    };
    state.engine.store().upsert_customer(customer.clone()).await?;
    Ok(Json(customer))
}

/// Create or replace a product.
#[utoipa::path(put, path = "/v1/admin/products/{sku}", tag = "admin", params(("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = ProductBody, responses((status = 200, description = "the stored product", body = Product), (status = 400), (status = 401)),
    security(("admin_key" = [])))]
pub async fn put_product(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
    ApiJson(body): ApiJson<ProductBody>,
) -> Result<Json<Product>, ApiError> {
    check_id("sku", &sku)?;
    check_text("name", &body.name)?;
    check_text("category", &body.category)?;
    if body.unit_price_cents > MAX_PRICE_CENTS {
        return Err(ApiError::invalid(format!("unit_price_cents: at most {MAX_PRICE_CENTS}")));
    }
    let product = Product { sku, name: body.name, category: body.category, unit_price_cents: body.unit_price_cents };
    state.engine.store().upsert_product(product.clone()).await?;
    Ok(Json(product))
}

/// Create or replace a warehouse.
#[utoipa::path(put, path = "/v1/admin/warehouses/{id}", tag = "admin", params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = WarehouseBody, responses((status = 200, description = "the stored warehouse", body = Warehouse), (status = 400), (status = 401)),
    security(("admin_key" = [])))]
pub async fn put_warehouse(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<WarehouseBody>,
) -> Result<Json<Warehouse>, ApiError> {
    check_id("id", &id)?;
    check_text("name", &body.name)?;
    check_location("location", &body.location)?;
    let warehouse = Warehouse { id, name: body.name, location: body.location };
    state.engine.store().upsert_warehouse(warehouse.clone()).await?;
    Ok(Json(warehouse))
}

/// Set the units on hand of a sku in a warehouse.
#[utoipa::path(put, path = "/v1/admin/stock/{warehouse_id}/{sku}", tag = "admin",
    params(("warehouse_id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$"), ("sku" = String, Path, pattern = "^[A-Za-z0-9._-]{1,64}$")),
    request_body = StockBody,
    responses((status = 200, description = "the stock level", body = StockAnswer), (status = 400), (status = 401),
              (status = 404, description = "`NOT_FOUND`: no such warehouse or sku"),
              (status = 409, description = "`CONFLICT`: fewer units than orders in flight hold")),
    security(("admin_key" = [])))]
pub async fn put_stock(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath((warehouse_id, sku)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<StockBody>,
) -> Result<Json<StockAnswer>, ApiError> {
    check_id("warehouse_id", &warehouse_id)?;
    check_id("sku", &sku)?;
    if body.on_hand > u64::from(u32::MAX) {
        return Err(ApiError::invalid(format!("on_hand: at most {}", u32::MAX)));
    }
    let level: StockLevel = state.engine.store().set_stock(&warehouse_id, &sku, body.on_hand).await?;
    Ok(Json(StockAnswer {
        warehouse_id: level.warehouse_id,
        sku: level.sku,
        on_hand: level.on_hand,
        available: level.available,
    }))
}

/// Stock of one sku across warehouses.
#[utoipa::path(get, path = "/v1/admin/stock/{sku}", tag = "admin", params(("sku" = String, Path)),
    responses((status = 200, description = "the sku's stock across warehouses", body = SkuStock), (status = 401),
              (status = 404, description = "`NOT_FOUND`: no such sku")),
    security(("admin_key" = [])))]
pub async fn get_stock(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
) -> Result<Json<SkuStock>, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, format!("sku {sku} not found"));
    check_id("sku", &sku).map_err(|_| not_found())?;
    let store = state.engine.store();
    if store.product(&sku).await?.is_none() {
        return Err(not_found());
    }
    let levels = store.stock_of_sku(&sku).await?;
    Ok(Json(SkuStock {
        on_hand: levels.iter().map(|l| l.on_hand).sum(),
        available: levels.iter().map(|l| l.available).sum(),
        warehouses: levels
            .into_iter()
            .map(|l| WarehouseStock {
                warehouse_id: l.warehouse_id,
                warehouse_name: l.warehouse_name,
                on_hand: l.on_hand,
                available: l.available,
            })
            .collect(),
        sku,
    }))
}

/// One loaded module: an active rule, an experiment's variant, or a shadow candidate.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginEntry {
    /// `discount`, `warehouse` or `fraud`.
    pub slot: Slot,
    pub name: String,
    pub version: String,
    /// `sha256:` and the hex digest of the file.
    pub digest: String,
    /// `sha256:…` of the module's configuration from the manifest (with
    /// the host's defaults), so two configurations of one module differ.
    pub config_hash: String,
    pub file: String,
    /// When the rule set holding it was loaded (RFC 3339).
    pub loaded_at: String,
    pub experiment: Option<String>,
    /// The experiment's variant, `shadow` for a shadow candidate, or
    /// `canary` for a canary (see `GET /v1/admin/rollouts`).
    pub variant: Option<String>,
    /// `closed` or `open`.
    pub fail_mode: String,
    /// The sales channels whose orders run it (every channel unless the
    /// manifest entry lists `channels`).
    pub channels: Vec<Channel>,
    /// Start of its activation window (RFC 3339, UTC), if scheduled.
    pub from: Option<String>,
    /// End of its activation window (exclusive; RFC 3339, UTC), if scheduled.
    pub until: Option<String>,
    /// Whether an order starting now runs it (inside its window).
    pub active: bool,
}

/// A refused load of the plug-in directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginError {
    pub file: String,
    pub error: String,
    pub at: String,
    /// The manifest entry the replay gate refused (`discount[2] flat.wasm / shadow flat_v3.wasm`).
    pub entry: Option<String>,
    /// The stored order (or `examples/…` file) it failed on.
    pub order_id: Option<String>,
}

/// `GET /v1/admin/plugins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginsAnswer {
    pub plugins: Vec<PluginEntry>,
    /// Refused reloads since the last good one.
    pub errors: Vec<PluginError>,
    pub reloads: u64,
    pub refused_reloads: u64,
    pub last_reload_at: Option<String>,
}

/// The loaded rule modules (every variant and shadow candidate), and the
/// reloads refused since the last good one.
#[utoipa::path(get, path = "/v1/admin/plugins", tag = "admin",
    responses((status = 200, description = "the loaded modules and the refused reloads", body = PluginsAnswer),
              (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_plugins(State(state): State<AppState>, _admin: Admin) -> Json<PluginsAnswer> {
    let rules = state.engine.rules();
    let now_ms = state.engine.settings().clock.now_ms();
    let entry = |slot: Slot,
                 rule: &crate::rules::Rule,
                 experiment: Option<&str>,
                 variant: Option<&str>,
                 slot_rule: &crate::rules::SlotRule| {
        let id = rule.identity();
        let Scope { channels, window } = slot_rule.scope;
        PluginEntry {
            slot,
            name: id.name.clone(),
            version: id.version.clone(),
            digest: id.digest.clone(),
            config_hash: rule.config_hash().to_string(),
            file: id.file.clone(),
            loaded_at: rules.loaded_at.clone(),
            experiment: experiment.map(str::to_string),
            variant: variant.map(str::to_string),
            fail_mode: serde_json::to_value(slot_rule.fail_mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            channels: channels.list(),
            from: window.from_ms.map(rfc3339_of_ms),
            until: window.until_ms.map(rfc3339_of_ms),
            active: window.contains(now_ms),
        }
    };
    let mut plugins = Vec::new();
    for (slot, rule) in rules.all() {
        match &rule.experiment {
            // A new rule's canary has no stable module: its canary is listed below.
            None => plugins.extend(rule.module.as_ref().map(|m| entry(slot, m, None, None, rule))),
            Some(experiment) => {
                // An "off" arm loads no module: it is listed by GET /v1/admin/experiments.
                for (variant, module) in experiment.variants.iter().filter_map(|v| v.rule.as_ref().map(|r| (v, r))) {
                    plugins.push(entry(slot, module, Some(&experiment.name), Some(&variant.name), rule));
                }
            }
        }
        if let Some(shadow) = &rule.shadow {
            plugins.push(entry(slot, shadow, None, Some("shadow"), rule));
        }
        if let Some(canary) = &rule.canary {
            plugins.push(entry(slot, &canary.rule, None, Some("canary"), rule));
        }
    }
    let status = state.engine.reload_status();
    Json(PluginsAnswer {
        plugins,
        errors: status
            .errors
            .into_iter()
            .map(|e| PluginError { file: e.file, error: e.error, at: e.at, entry: e.entry, order_id: e.order_id })
            .collect(),
        reloads: status.reloads,
        refused_reloads: status.refused,
        last_reload_at: status.last_reload_at,
    })
}

/// One arm (variant) of an A/B experiment, with its figures from the store:
/// every order it served, in this process and any other on the database,
/// since its rows were first written. The first fields keep their meaning
/// from before the figures were stored; `rows` splits them by module digest
/// and config hash. Besides the figures of every slot, an arm has those of
/// its own: `fired_orders` and `discount_cents` on a discount arm,
/// `warehouse` on a warehouse arm, `fraud` on a fraud arm.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariantFigures {
    pub name: String,
    /// The module file the arm runs now; `none` for an "off" arm.
    pub module: String,
    pub version: String,
    /// `sha256:…` of the module the arm runs now; `none` for an "off" arm.
    pub digest: String,
    pub weight: u32,
    /// Orders this arm served (its rule ran, failed, or was off); a fraud
    /// arm's are the orders it checked.
    pub orders: u64,
    /// Discount arms only: the discount the arm's rule gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discount_cents: Option<u64>,
    /// Rule calls that failed (a warehouse arm: orders it failed).
    pub errors: u64,
    /// Mean time of the arm's rule calls, in µs (0 without calls).
    pub mean_latency_us: f64,
    /// `sha256:…` of the configuration the arm runs now; `none` for an "off" arm.
    pub config_hash: String,
    /// Whether this is an "off" arm (`module = "none"`): the rule is skipped.
    pub off: bool,
    /// Discount arms only: orders where the rule fired (took a non-zero
    /// discount off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fired_orders: Option<u64>,
    /// Orders that ended CONFIRMED, and the sum of their totals.
    pub confirmed_orders: u64,
    pub revenue_cents: u64,
    /// `revenue_cents / confirmed_orders`; `null` without confirmed orders.
    pub mean_order_value_cents: Option<f64>,
    /// Orders that ended PAYMENT_FAILED.
    pub payment_failures: u64,
    /// Rule latency percentiles from the stored histogram; `null` without calls.
    pub latency_p50_us: Option<f64>,
    pub latency_p99_us: Option<f64>,
    /// This arm's mean order value minus the first (control) arm's, with its
    /// 95 % Welch confidence interval, from the stored sums; `null` for the
    /// first arm and while either arm has fewer than two confirmed orders.
    pub vs_control: Option<Difference>,
    /// Warehouse arms only: where the arm's orders shipped from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<WarehouseArmFigures>,
    /// Fraud arms only: the arm's verdicts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraud: Option<FraudArmFigures>,
    /// The figures per (module digest, config hash) ever recorded for this arm.
    pub rows: Vec<ArmRowView>,
}

/// A warehouse arm's shipments: its rates with their 95 % Wilson
/// intervals, its mean distance with Welch's interval against the control.
#[derive(Debug, Serialize, ToSchema)]
pub struct WarehouseArmFigures {
    /// Orders refused OUT_OF_STOCK on this arm's plan.
    pub stock_outs: u64,
    /// `stock_outs / orders`; `null` without orders.
    pub stock_out_rate: Option<Rate>,
    /// Orders whose plan was held (the order exists).
    pub shipped_orders: u64,
    /// Shipped orders allocated from more than one warehouse.
    pub split_orders: u64,
    /// `split_orders / shipped_orders`; `null` without shipped orders.
    pub split_rate: Option<Rate>,
    /// Mean over the shipped orders of each one's distance (km from the
    /// ship-to point to its warehouses, weighted by the units each ships);
    /// `null` without shipped orders.
    pub mean_distance_km: Option<f64>,
    /// This arm's mean distance minus the first (control) arm's, with its
    /// 95 % Welch interval; `null` for the first arm and while either arm
    /// has fewer than two shipped orders.
    pub distance_vs_control: Option<Difference>,
}

/// A fraud arm's verdicts: each check's own (not the order's combined
/// review), with their rates' 95 % Wilson intervals.
#[derive(Debug, Serialize, ToSchema)]
pub struct FraudArmFigures {
    /// Orders the arm checked (an "off" arm: orders it skipped).
    pub checks: u64,
    /// Checks whose verdict was ESCALATE.
    pub escalations: u64,
    /// `escalations / checks`; `null` without checks.
    pub escalation_rate: Option<Rate>,
    /// Checks whose verdict was REVIEW (a failed fail-closed check too: it
    /// puts the order up for review).
    pub reviews: u64,
    /// `reviews / checks`; `null` without checks.
    pub review_rate: Option<Rate>,
}

/// An A/B experiment (`kind: ab`) or a shadow candidate (`kind: shadow`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentAnswer {
    pub name: String,
    pub slot: Slot,
    /// `ab` or `shadow`.
    pub kind: String,
    /// The variants of an A/B experiment (empty for a shadow candidate).
    pub variants: Vec<VariantFigures>,
    /// Only for a shadow candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSummary>,
    /// Only for an A/B experiment: the sales channels whose orders its rule
    /// serves (its figures count those orders only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Channel>>,
}

/// The sample of confirmed order totals that `figures` sums.
fn order_values(figures: &ArmFigures) -> Moments {
    Moments { n: figures.confirmed_orders, sum: figures.revenue_cents as f64, sum_squares: figures.revenue_squares }
}

/// The sample of shipped orders' distances (km) that `figures` sums.
fn distances(figures: &ArmFigures) -> Moments {
    Moments { n: figures.shipped_orders, sum: figures.distance_km_sum, sum_squares: figures.distance_km_squares }
}

/// Welch's interval of `sample` against the control's; the first arm's
/// sample becomes the control (and has no interval).
fn against_control(control: &mut Option<Moments>, sample: Moments) -> Option<Difference> {
    match control {
        None => {
            *control = Some(sample);
            None
        }
        Some(first) => welch_interval(first, &sample, 0.95),
    }
}

impl WarehouseArmFigures {
    fn of(total: &ArmFigures, control: &mut Option<Moments>) -> WarehouseArmFigures {
        let row = WarehouseRowView::of(total);
        WarehouseArmFigures {
            stock_outs: total.stock_outs,
            stock_out_rate: wilson_interval(total.stock_outs, total.orders),
            shipped_orders: total.shipped_orders,
            split_orders: total.split_orders,
            split_rate: wilson_interval(total.split_orders, total.shipped_orders),
            mean_distance_km: row.mean_distance_km,
            distance_vs_control: against_control(control, distances(total)),
        }
    }
}

impl FraudArmFigures {
    fn of(total: &ArmFigures) -> FraudArmFigures {
        FraudArmFigures {
            checks: total.orders,
            escalations: total.escalations,
            escalation_rate: wilson_interval(total.escalations, total.orders),
            reviews: total.reviews,
            review_rate: wilson_interval(total.reviews, total.orders),
        }
    }
}

/// A/B experiments with their stored figures per arm and per (module
/// digest, config hash), and shadow candidates with their differences from
/// the active modules.
#[utoipa::path(get, path = "/v1/admin/experiments", tag = "admin",
    responses((status = 200, description = "the experiments and shadow candidates", body = Vec<ExperimentAnswer>),
              (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_experiments(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Vec<ExperimentAnswer>>, ApiError> {
    let engine = &state.engine;
    // Every order answered before this request counts in what it reads.
    if let Err(e) = engine.flush_experiments().await {
        tracing::warn!(error = %e, "could not record the pending experiment figures before reading");
    }
    let stored = engine.store().arm_rows().await?;
    let rules = engine.rules();
    let mut out = Vec::new();
    for (slot, rule) in rules.all() {
        let Some(experiment) = &rule.experiment else { continue };
        let (mut control, mut distance_control): (Option<Moments>, Option<Moments>) = (None, None);
        let mut variants = Vec::new();
        for v in &experiment.variants {
            let arm = Arm::of(slot, &experiment.name, &v.name, v.rule.as_ref());
            let rows: Vec<&ArmRow> =
                stored.iter().filter(|r| r.key.experiment == experiment.name && r.key.variant == v.name).collect();
            let mut total = ArmFigures::default();
            rows.iter().for_each(|r| total.add(&r.figures));
            let values = order_values(&total);
            let vs_control = against_control(&mut control, values);
            let discount = slot == Slot::Discount;
            variants.push(VariantFigures {
                name: v.name.clone(),
                module: arm.module,
                version: arm.version,
                digest: arm.key.module_digest,
                weight: v.weight,
                orders: total.orders,
                discount_cents: discount.then_some(total.discount_cents),
                errors: total.rule_errors,
                mean_latency_us: if total.calls == 0 { 0.0 } else { total.latency_us_sum / total.calls as f64 },
                config_hash: arm.key.config_hash,
                off: v.rule.is_none(),
                fired_orders: discount.then_some(total.fired_orders),
                confirmed_orders: total.confirmed_orders,
                revenue_cents: total.revenue_cents,
                mean_order_value_cents: values.mean(),
                payment_failures: total.payment_failures,
                latency_p50_us: total.latency_quantile_us(0.5),
                latency_p99_us: total.latency_quantile_us(0.99),
                vs_control,
                warehouse: (slot == Slot::Warehouse).then(|| WarehouseArmFigures::of(&total, &mut distance_control)),
                fraud: (slot == Slot::Fraud).then(|| FraudArmFigures::of(&total)),
                rows: rows.iter().map(|r| ArmRowView::of(slot, &r.key, &r.figures)).collect(),
            });
        }
        out.push(ExperimentAnswer {
            name: experiment.name.clone(),
            slot,
            kind: "ab".into(),
            variants,
            shadow: None,
            channels: Some(rule.scope.channels.list()),
        });
    }
    let shadows = engine.store().shadow_summaries().await?;
    for s in shadows {
        out.push(ExperimentAnswer {
            name: format!(
                "shadow:{}@{} config {}",
                s.candidate_name,
                s.candidate_version,
                &s.candidate_config_hash[..s.candidate_config_hash.len().min(19)]
            ),
            slot: s.slot,
            kind: "shadow".into(),
            variants: Vec::new(),
            shadow: Some(s),
            channels: None,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EscalationQuery {
    /// How many, newest first: 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// An order whose fraud review is ESCALATE.
#[derive(Debug, Serialize, ToSchema)]
pub struct Escalation {
    pub order_id: String,
    pub customer_id: String,
    pub status: crate::domain::status::OrderStatus,
    pub total_cents: u64,
    pub currency: String,
    pub created_at: String,
    /// `{action, score, flags, module, version, ...}` as on the order.
    #[schema(value_type = Option<Object>)]
    pub fraud_review: Option<Value>,
}

/// Orders whose fraud review is ESCALATE, newest first.
#[utoipa::path(get, path = "/v1/admin/fraud/escalations", tag = "admin", params(EscalationQuery),
    responses((status = 200, description = "the escalated orders, newest first", body = Vec<Escalation>),
              (status = 400), (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_escalations(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<EscalationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Escalation>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be 1..=1000"));
    }
    let escalated = state.engine.store().escalations(limit as usize).await?;
    Ok(Json(
        escalated
            .into_iter()
            .map(|o| Escalation {
                order_id: o.id,
                customer_id: o.customer_id,
                status: o.status,
                total_cents: o.total_cents,
                currency: o.currency,
                created_at: o.created_at,
                fraud_review: o.fraud_review,
            })
            .collect(),
    ))
}

/// The most recent rule failures answered `RULE_FAILED` or skipped by a
/// fail-open slot (at most 256, this process only), newest first, with the
/// full cause each `error_id` stands for: the guest's panic message or error
/// text, which clients never see.
#[utoipa::path(get, path = "/v1/admin/rule-errors", tag = "admin",
    responses((status = 200, body = [rule_errors::RuleErrorRecord]), (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_rule_errors(State(state): State<AppState>, _admin: Admin) -> Json<Vec<rule_errors::RuleErrorRecord>> {
    Json(state.engine.pipeline().rule_errors().recent())
}

/// An order answered `PAYMENT_PENDING` whose payment outcome the
/// reconciler has not resolved yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingPaymentView {
    pub order_id: String,
    pub customer_id: String,
    pub channel: String,
    pub amount_cents: u64,
    pub currency: String,
    /// When the order was placed (RFC 3339).
    pub created_at: String,
    /// Seconds since the order was placed.
    pub age_seconds: f64,
    /// Gateway attempts made for it.
    pub attempts: u32,
    /// When the reconciler asks the gateway again (RFC 3339).
    pub next_resolution_at: String,
}

/// The paging of `GET /v1/admin/payments/pending`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    /// How many, oldest first: 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Orders whose payment outcome is unknown (answered `PAYMENT_PENDING`),
/// oldest first, with their age: the reconciler resolves them with the
/// gateway (a lookup, then a cancel) as soon as it answers.
#[utoipa::path(get, path = "/v1/admin/payments/pending", tag = "admin", params(PendingQuery),
    responses((status = 200, description = "the pending payments, oldest first", body = Vec<PendingPaymentView>),
              (status = 400), (status = 401)),
    security(("admin_key" = [])))]
pub async fn get_pending_payments(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<PendingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<PendingPaymentView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: must be 1..=1000"));
    }
    let now = time::OffsetDateTime::now_utc();
    let pending = state.engine.store().payments_pending(limit as usize).await?;
    Ok(Json(
        pending
            .into_iter()
            .map(|p| {
                let placed = time::OffsetDateTime::parse(&p.created_at, &time::format_description::well_known::Rfc3339);
                let age_seconds = placed.map_or(0.0, |placed| ((now - placed).as_seconds_f64() * 1e3).round() / 1e3);
                PendingPaymentView {
                    order_id: p.order_id,
                    customer_id: p.customer_id,
                    channel: p.channel,
                    amount_cents: p.amount_cents,
                    currency: p.currency,
                    created_at: p.created_at,
                    age_seconds,
                    attempts: p.attempts,
                    next_resolution_at: crate::clock::rfc3339_of_ms(p.resolve_after_ms),
                }
            })
            .collect(),
    ))
}
