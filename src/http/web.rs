//! The browser dashboard: `web/dist` (built from `web/src` by `npm run build` in `web/`),
//! embedded in the binary, so running the server needs no Node.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use flate2::Compression;
use include_dir::{include_dir, Dir};

use super::state::AppState;
use crate::error::ApiError;

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/web/dist");

/// `GET /` and `GET /queries/{id}`: the page; the script picks the view from the path. Only
/// the origins of `--frame-ancestors` may frame it.
pub async fn page(State(app): State<AppState>, request: HeaderMap) -> Response {
    let mut page = asset("index.html", &request);
    if let Ok(policy) =
        HeaderValue::from_str(&format!("frame-ancestors {}", app.config.frame_ancestors))
    {
        page.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    page
}

/// `GET /assets/{file}`.
pub async fn file(Path(name): Path<String>, request: HeaderMap) -> Response {
    asset(&name, &request)
}

/// An embedded file. Browsers revalidate it on every load (it changes with the binary and its
/// name carries no hash) and get 304 while its ETag holds; those that take gzip get it gzipped.
fn asset(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = assets().get(name) else {
        return ApiError::not_found(format!("no asset {name:?}")).into_response();
    };
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let headers = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::ETAG, asset.etag.as_str()),
        (header::VARY, "accept-encoding"),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    match asset.gzipped.as_deref().filter(|_| accepts_gzip(request)) {
        Some(gzipped) => (
            StatusCode::OK,
            headers,
            [
                (header::CONTENT_TYPE, asset.kind),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            gzipped,
        )
            .into_response(),
        None => (
            StatusCode::OK,
            headers,
            [(header::CONTENT_TYPE, asset.kind)],
            asset.body,
        )
            .into_response(),
    }
}

/// An embedded file as it is served.
struct Asset {
    body: &'static [u8],
    /// The body gzipped, for the text files it makes smaller.
    gzipped: Option<Vec<u8>>,
    kind: &'static str,
    /// A weak validator of the body (the same for its gzipped copy).
    etag: String,
}

/// Prepares the embedded files (compressing them takes some tens of milliseconds), so that no
/// request waits for it.
pub fn prepare() {
    assets();
}

/// The embedded files by name, prepared once for all.
fn assets() -> &'static HashMap<&'static str, Asset> {
    static ASSETS: OnceLock<HashMap<&'static str, Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        DIST.files()
            .filter_map(|file| {
                let name = file.path().to_str()?;
                let body = file.contents();
                let (kind, text) = match name.rsplit_once('.').map(|(_, ext)| ext) {
                    Some("html") => ("text/html; charset=utf-8", true),
                    Some("js") => ("text/javascript; charset=utf-8", true),
                    Some("css") => ("text/css; charset=utf-8", true),
                    _ => ("application/octet-stream", false),
                };
                let mut hasher = std::hash::DefaultHasher::new();
                body.hash(&mut hasher);
                let asset = Asset {
                    body,
                    gzipped: text.then(|| gzip(body)).flatten(),
                    kind,
                    etag: format!("W/\"{:016x}\"", hasher.finish()),
                };
                Some((name, asset))
            })
            .collect()
    })
}

/// `bytes` gzipped at the best compression, if that makes them smaller.
fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).ok()?;
    let gzipped = encoder.finish().ok()?;
    (gzipped.len() < bytes.len()).then_some(gzipped)
}

/// Whether an `Accept-Encoding` header takes gzip: named with a weight above zero, or not named
/// and `*` is.
fn accepts_gzip(request: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let weight = parts
            .find_map(|p| p.strip_prefix("q="))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        if name.eq_ignore_ascii_case("gzip") {
            gzip = Some(weight);
        } else if name == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|weight| weight > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_unless_refused() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&headers)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(with("*"));
        assert!(!with("gzip;q=0, br"));
        assert!(!with("gzip;q=0, *"));
        assert!(!with("*;q=0"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_bundle_is_embedded() {
        for name in ["index.html", "app.js", "style.css"] {
            assert!(
                DIST.get_file(name).is_some(),
                "{name} missing from web/dist"
            );
        }
    }

    #[test]
    fn text_assets_are_served_gzipped_and_unchanged_by_it() {
        use std::io::Read;
        for name in ["index.html", "app.js", "style.css"] {
            let asset = &assets()[name];
            let gzipped = asset.gzipped.as_deref().expect("text is compressible");
            assert!(gzipped.len() < asset.body.len());
            let mut unzipped = Vec::new();
            flate2::read::GzDecoder::new(gzipped)
                .read_to_end(&mut unzipped)
                .expect("valid gzip");
            assert_eq!(unzipped, asset.body, "{name}");
        }
    }
}
