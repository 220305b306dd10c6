//! `/admin`: the operators' dashboard — one HTML page, one script, one style
//! sheet, compiled into the binary (no build step, nothing fetched from
//! elsewhere). The page holds no secret and needs no key to load: it asks
//! for the admin key, keeps it in the tab's memory and sends it as a Bearer
//! header on its same-origin fetches of the admin JSON endpoints
//! (`/v1/admin/plugins`, `/v1/admin/experiments`, `/v1/admin/rollouts`).
//!
//! Every answer carries a Content-Security-Policy that allows scripts,
//! styles and connections to this origin only (no inline script or style,
//! no frames, no form posts), `nosniff` and `no-referrer`.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the page may load and reach: its own script, style sheet and JSON
/// endpoints; nothing inline, nothing from another origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The dashboard page (HTML; it asks for the admin key itself).
#[utoipa::path(get, path = "/admin", tag = "dashboard",
    responses((status = 200, description = "the dashboard page; it asks for the admin key and calls the admin JSON endpoints with it",
               body = String, content_type = "text/html")))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", PAGE)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/admin/dashboard.js", tag = "dashboard",
    responses((status = 200, description = "the dashboard's script", body = String, content_type = "text/javascript")))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/admin/dashboard.css", tag = "dashboard",
    responses((status = 200, description = "the dashboard's style sheet", body = String, content_type = "text/css")))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}
