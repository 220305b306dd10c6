//! Endpoints without a key: liveness, readiness, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The store answers and the rules are loaded.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200), (status = 503)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.engine.pipeline.store.ping().await;
    let rules = state.engine.pipeline.rules.load().all().count();
    let ready = store && rules > 0 && !state.shutting_down.is_cancelled();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(
            json!({ "ready": ready, "store": store, "rules_loaded": rules, "shutting_down": state.shutting_down.is_cancelled() }),
        ),
    )
}

/// Prometheus metrics (text format).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pipeline = &state.engine.pipeline;
    if let Ok((depth, lag_ms)) = pipeline.store.outbox_backlog().await {
        pipeline.metrics.outbox_depth.set(depth as i64);
        pipeline.metrics.outbox_lag_seconds.set(lag_ms as f64 / 1000.0);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], pipeline.metrics.render())
}

/// This API as OpenAPI 3, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi(State(state): State<AppState>) -> impl IntoResponse {
    Json((*state.openapi).clone())
}
