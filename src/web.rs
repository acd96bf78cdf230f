//! The browser dashboard: `web/dist` (built from `web/src` by `npm run build` in `web/`),
//! embedded in the binary, so running the server needs no Node.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use include_dir::{include_dir, Dir};

use crate::error::ApiError;
use crate::AppState;

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/web/dist");

/// `GET /` and `GET /queries/{id}`: the page; the script picks the view from the path. Only
/// the origins of `--frame-ancestors` may frame it.
pub async fn page(State(app): State<AppState>) -> Response {
    let mut page = asset("index.html");
    if let Ok(policy) =
        HeaderValue::from_str(&format!("frame-ancestors {}", app.config.frame_ancestors))
    {
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    page
}

/// `GET /assets/{file}`.
pub async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

fn asset(name: &str) -> Response {
    let Some(file) = DIST.get_file(name) else {
        return ApiError::not_found(format!("no asset {name:?}")).into_response();
    };
    let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            // Assets change with the binary and carry no hash in their names.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        file.contents(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_embedded() {
        for name in ["index.html", "app.js", "style.css"] {
            assert!(
                DIST.get_file(name).is_some(),
                "{name} missing from web/dist"
            );
        }
    }
}
