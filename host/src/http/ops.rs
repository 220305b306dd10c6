//! Endpoints without a key: liveness, readiness, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// The store answered.
    pub store: bool,
    /// Rules in the serving rule set.
    pub rules_loaded: u64,
    pub shutting_down: bool,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "the process is up", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok".into() })
}

/// The store answers and the rules are loaded.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "ready to take orders", body = Readiness),
              (status = 503, description = "not ready (store down, no rules, or shutting down)", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.engine.store().ping().await;
    let rules = state.engine.rules().all().count();
    let shutting_down = state.shutting_down.is_cancelled();
    let ready = store && rules > 0 && !shutting_down;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, store, rules_loaded: rules as u64, shutting_down }))
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format (OpenMetrics)", body = String,
               content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = state.engine.metrics();
    if let Ok((depth, lag_ms)) = state.engine.store().outbox_backlog().await {
        metrics.outbox_depth.set(depth as i64);
        metrics.outbox_lag_seconds.set(lag_ms as f64 / 1000.0);
    }
    if let Some(totals) = state.engine.store().writer_totals() {
        metrics.store_writer(totals);
    }
    if let Some(totals) = state.engine.store().wire_totals() {
        metrics.store_wire(totals);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.render())
}

/// This API as OpenAPI 3, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json((*state.openapi).clone())
}
