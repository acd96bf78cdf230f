//! The HTTP side: the router ([`router`]) with every route of the server, what its handlers
//! share ([`AppState`]), the extractors they read requests with ([`extract`]), and one module
//! per API area: documents ([`docs`]), events ([`events`]), the dashboard's other endpoints
//! ([`dashboard`]), monitoring and administration ([`admin`]), development tokens ([`dev`]) and
//! the browser page ([`web`]). The two WebSocket endpoints are served by their own layers
//! (`docs::socket`, `dashboard::session`).

pub mod admin;
pub mod dashboard;
pub mod dev;
pub mod docs;
pub mod events;
pub mod extract;
mod refusals;
pub mod state;
pub mod web;
pub mod webhooks;

use axum::routing::{delete, get, post, MethodRouter};
use axum::{Extension, Json, Router};

use crate::error::ApiError;
use extract::RouteLabel;
pub use state::AppState;

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    web::prepare();
    Router::new()
        .route("/ws/{*doc}", get(crate::docs::socket::upgrade))
        .route("/ws", get(crate::dashboard::session::upgrade))
        .route("/hocuspocus", get(crate::docs::hocuspocus::upgrade))
        .route("/healthz", get(healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route(
            "/api/v1/admin/connections",
            labelled("admin_connections", get(admin::connections)),
        )
        .route(
            "/api/v1/admin/connections/{id}",
            labelled("admin_kick", delete(admin::kick)),
        )
        .route(
            "/api/v1/admin/nodes",
            labelled("admin_nodes", get(admin::nodes)),
        )
        .route(
            "/api/v1/admin/rooms",
            labelled("admin_rooms", get(admin::rooms)),
        )
        .route(
            "/api/v1/admin/rooms/{*doc}",
            labelled("admin_compact", post(admin::compact)),
        )
        .route(
            "/api/v1/admin/webhooks",
            labelled("admin_webhooks", get(webhooks::list).post(webhooks::create)),
        )
        .route(
            "/api/v1/admin/webhooks/{id}",
            labelled("admin_webhooks", delete(webhooks::delete)),
        )
        .route(
            "/api/v1/admin/webhooks/{id}/deliveries",
            labelled("admin_webhooks", get(webhooks::deliveries)),
        )
        .route(
            "/api/v1/client-errors",
            labelled("http_client_errors", post(admin::client_error)),
        )
        .route("/api/v1/dev/token", post(dev::token))
        .route("/api/v1/docs/{*doc}", get(docs::get).post(docs::post))
        .route(
            "/api/v1/events",
            labelled("http_events_publish", post(events::publish))
                .merge(labelled("http_events_poll", get(events::poll))),
        )
        .route(
            "/api/v1/presence",
            labelled(
                "http_presence",
                get(dashboard::get_presence).post(dashboard::post_presence),
            ),
        )
        .route(
            "/api/v1/activity",
            labelled("http_activity", get(dashboard::get_activity)),
        )
        .route(
            "/api/v1/editing",
            labelled("http_editing", get(dashboard::get_editing)),
        )
        .route(
            "/api/v1/notifications",
            labelled("http_notifications", get(dashboard::get_notifications)),
        )
        .route(
            "/api/v1/preferences",
            labelled(
                "http_preferences",
                get(dashboard::get_preferences).put(dashboard::put_preferences),
            ),
        )
        .route(
            "/api/v1/badges",
            labelled("http_badges", get(dashboard::get_badges)),
        )
        .route(
            "/api/v1/badges/read",
            labelled("http_badges", post(dashboard::post_badges_read)),
        )
        .route(
            "/api/v1/approvals/{approval_id}/decision",
            labelled("http_approvals", post(dashboard::post_approval_decision)),
        )
        .route("/", get(web::page))
        .route("/queries/{id}", get(web::page))
        .route("/assets/{file}", get(web::file))
        .fallback(not_found)
        .layer(cors(&state.config.cors_origins))
        .with_state(state)
}

/// `route`, whose refusals are counted and logged as `label`.
fn labelled(label: &'static str, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(Extension(RouteLabel(label)))
}

/// `GET /healthz`: the process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Any other path.
async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// The CORS policy: pages of `origins` may call the API (with a bearer token; no cookies are
/// used); without any, no CORS headers at all, so browsers keep other origins' pages out.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if allowed.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}
