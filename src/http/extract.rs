//! The extractors that let a handler read as what it does: who is calling ([`Caller`],
//! [`Publisher`], [`Admin`], [`Authenticated`]), which document and route ([`DocGet`], [`DocPost`]), the
//! query string ([`Params`]) and a body read only once the caller checked out, within its limit
//! ([`Limited`], [`JsonObject`]). Each refuses with the JSON [`ApiError`] the API documents.
//!
//! Axum runs the parts extractors (the caller, the document) before the body: an
//! unauthenticated client can never make the server buffer an upload.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use tandem_crdt::Access;

use super::state::AppState;
use crate::auth::identity::Plan;
use crate::auth::{AuthError, Identity, IdentityParams, Principal, Role};
use crate::config::Config;
use crate::docname::DocName;
use crate::error::ApiError;

/// The name a route's refusals are counted and logged under
/// (`tandem_auth_refusals_total{route=...}`), set on the route by the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

fn route_label(parts: &Parts) -> &'static str {
    parts
        .extensions
        .get::<RouteLabel>()
        .map_or("http", |label| label.0)
}

/// The token of an `Authorization: Bearer` header, if any.
///
/// # Errors
/// An `Authorization` header that is not a bearer token.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| Some(t.trim()))
        .ok_or_else(|| {
            ApiError::refusal(
                AuthError::InvalidToken("the Authorization header must be `Bearer <token>`".into()),
                "http",
                None,
            )
        })
}

/// The query string as `T`: 400 `bad_query` when it does not parse.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// Who a dashboard request speaks for: the token of `Authorization: Bearer` or `?token=` (or,
/// without authentication, `?workspace=`, `?user=`, `?name=`), on a real-time plan.
pub struct Caller(pub Identity);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        identify(parts, app, Plan::Realtime).await.map(Caller)
    }
}

async fn identify(parts: &mut Parts, app: &AppState, plan: Plan) -> Result<Identity, ApiError> {
    let Params(params) = Params::<IdentityParams>::from_request_parts(parts, app).await?;
    let route = route_label(parts);
    let token = bearer(&parts.headers)?.or(params.token.as_deref());
    app.auth
        .identify(token, &params, plan)
        .map_err(|e| ApiError::identity(e, route))
}

/// A backend that may publish now: a `service` token (any token in open mode), within the
/// publishing rates of its workspace and its own (429 with `Retry-After` past them).
pub struct Publisher(pub Identity);

impl FromRequestParts<AppState> for Publisher {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let who = identify(parts, app, Plan::Any)
            .await
            .map_err(IntoResponse::into_response)?;
        if !app.auth.is_open() && who.role != Role::Service {
            let refused = AuthError::RoleRequired(Role::Service);
            return Err(ApiError::refusal(refused, route_label(parts), None).into_response());
        }
        if let Err(wait) = app.hub.admit(&who.workspace, &who.user) {
            tracing::debug!(workspace = %who.workspace, user = %who.user, "publishing rate exceeded");
            return Err(too_many("too many events", wait));
        }
        Ok(Publisher(who))
    }
}

/// 429 `rate_limited`: "`what`; retry in N s", with `Retry-After: N` (whole seconds, at least
/// one) and `retry_after_ms` in the body.
pub fn too_many(what: &str, wait: std::time::Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let message = format!("{what}; retry in {secs} s");
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        .with_detail("retry_after_ms", serde_json::json!(wait.as_millis()))
        .retry_after(secs)
        .into_response()
}

/// 429 `too_many_connections` (a cap of `--max-connections-per-ip` or `-per-user`) or
/// `too_many_documents` (`--max-docs-per-user`), with `Retry-After`.
pub fn crowded(why: crate::net::registry::Crowded) -> Response {
    crowded_error(why).into_response()
}

/// The refusal of a request over a cap on what one client or user holds open: 429 with
/// `Retry-After`, counted as `limited`.
pub fn crowded_error(why: crate::net::registry::Crowded) -> ApiError {
    crate::metrics::get().failed(crate::metrics::Failure::Limited);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        why.code(),
        format!("{why}; close one, or retry later"),
    )
    .retry_after(10)
}

/// Any valid token (`Authorization: Bearer`).
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        app.auth
            .authenticate(bearer(&parts.headers)?)
            .map(Authenticated)
            .map_err(|e| ApiError::refusal(e, route_label(parts), None))
    }
}

/// An administrator (the `admin` role; anyone in open mode), and the workspace it may see
/// (`None`: every one, in open mode).
pub struct Admin(pub Option<String>);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, app).await?;
        if !app.auth.is_open() && principal.role != Role::Admin {
            let refused = AuthError::RoleRequired(Role::Admin);
            return Err(ApiError::refusal(refused, route_label(parts), None));
        }
        Ok(Admin(principal.workspace))
    }
}

/// A document name from the path: 400 `bad_document_name` when it is none.
fn doc_name(raw: &str) -> Result<DocName, ApiError> {
    DocName::parse(raw).map_err(|e| ApiError::bad_request("bad_document_name", e.to_string()))
}

/// The rest of the path after `/api/v1/docs/`.
async fn doc_path(parts: &mut Parts, app: &AppState) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, app)
        .await
        .map(|Path(raw)| raw)
        .map_err(|e| ApiError::bad_request("bad_document_name", e.body_text()))
}

/// What a path under `/api/v1/docs/` names after its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocRoute<'a> {
    Doc,
    Update,
    Sync,
    Stateless,
    Versions,
    Version(&'a str),
    Restore(&'a str),
    /// `…/versions/` followed by something no route takes.
    Unknown,
}

/// Splits a path under `/api/v1/docs/` into the document's name and the route after it. No
/// document name holds a segment `versions` or ends in another route's segment
/// ([`DocName::parse`] refuses them), so the split is never ambiguous.
fn doc_route(raw: &str) -> (&str, DocRoute<'_>) {
    let versions = raw
        .match_indices("/versions")
        .find(|&(at, found)| matches!(raw.as_bytes().get(at + found.len()), None | Some(b'/')));
    if let Some((at, found)) = versions {
        let doc = &raw[..at];
        let route = match raw[at + found.len()..].strip_prefix('/') {
            None => DocRoute::Versions,
            Some(rest) => match rest.split_once('/') {
                None if !rest.is_empty() => DocRoute::Version(rest),
                Some((id, "restore")) if !id.is_empty() => DocRoute::Restore(id),
                _ => DocRoute::Unknown,
            },
        };
        return (doc, route);
    }
    for (suffix, route) in [
        ("/update", DocRoute::Update),
        ("/sync", DocRoute::Sync),
        ("/stateless", DocRoute::Stateless),
    ] {
        if let Some(doc) = raw.strip_suffix(suffix) {
            return (doc, route);
        }
    }
    (raw, DocRoute::Doc)
}

/// A version id from the path: 404 when it is none.
fn version_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no version {raw:?}: version ids are numbers")))
}

const DOC_ROUTES: &str = "documents are read with GET /api/v1/docs/{doc}, written with POST …/update, synced with POST …/sync, told of with POST …/stateless; their versions are listed and taken at …/versions, read at GET …/versions/{id} and restored with POST …/versions/{id}/restore";

/// `GET /api/v1/docs/{doc}` and its version routes, readable by the caller.
pub enum DocGet {
    /// The document.
    Doc(DocName),
    /// `…/versions`: its versions.
    Versions(DocName),
    /// `…/versions/{id}`: one version's content.
    Version(DocName, u64),
}

impl FromRequestParts<AppState> for DocGet {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let raw = doc_path(parts, app).await?;
        let (doc, route) = doc_route(&raw);
        let name = doc_name(doc)?;
        let (get, label) = match route {
            DocRoute::Doc => (DocGet::Doc(name.clone()), "http_doc_read"),
            DocRoute::Versions => (DocGet::Versions(name.clone()), "http_doc_versions"),
            DocRoute::Version(id) => (
                DocGet::Version(name.clone(), version_id(id)?),
                "http_doc_versions",
            ),
            _ => return Err(ApiError::not_found(DOC_ROUTES)),
        };
        app.auth
            .authorize_doc(bearer(&parts.headers)?, &name)
            .map_err(|e| ApiError::refusal(e, label, Some(&name)))?;
        Ok(get)
    }
}

/// `POST /api/v1/docs/{doc}/update`, `…/sync`, `…/stateless`, `…/versions` and
/// `…/versions/{id}/restore`, authorized, with their bodies.
pub enum DocPost {
    /// A v1 update (non-empty) from a caller who may write.
    Update {
        name: DocName,
        principal: Principal,
        update: Bytes,
    },
    /// One round of an HTTP poller: its JSON body, the caller and what it may do.
    Sync {
        name: DocName,
        principal: Principal,
        access: Access,
        body: Bytes,
    },
    /// A stateless message for the document's Hocuspocus clients, from a backend (a service
    /// token that may write the document).
    Stateless { name: DocName, payload: String },
    /// A version to take now, with an optional label, by a caller who may write.
    TakeVersion {
        name: DocName,
        principal: Principal,
        label: Option<String>,
    },
    /// A version to restore, by a caller who may write.
    Restore {
        name: DocName,
        principal: Principal,
        id: u64,
    },
}

/// The longest version label, in characters.
const MAX_VERSION_LABEL_CHARS: usize = 200;

impl FromRequest<AppState> for DocPost {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let raw = doc_path(&mut parts, app).await?;
        let (doc, route) = doc_route(&raw);
        let route_label = match route {
            DocRoute::Update => "http_doc_write",
            DocRoute::Sync => "http_doc_sync",
            DocRoute::Stateless => return stateless(doc, &parts, body, app).await,
            DocRoute::Versions | DocRoute::Restore(_) => "http_doc_versions",
            DocRoute::Doc | DocRoute::Version(_) | DocRoute::Unknown => {
                return Err(ApiError::not_found(DOC_ROUTES));
            }
        };
        let name = doc_name(doc)?;
        let (principal, access) = app
            .auth
            .authorize_doc(bearer(&parts.headers)?, &name)
            .map_err(|e| ApiError::refusal(e, route_label, Some(&name)))?;
        let config = &app.config;
        if route == DocRoute::Sync {
            // base64 takes 4 bytes for 3, and the update and awareness share the body.
            let limit = config.max_frame_bytes / 3 * 4 + 64 * 1024;
            let body = read(body, limit, config).await?;
            return Ok(DocPost::Sync {
                name,
                principal,
                access,
                body,
            });
        }
        if access != Access::ReadWrite {
            return Err(ApiError::refusal(
                AuthError::ReadOnly,
                route_label,
                Some(&name),
            ));
        }
        match route {
            DocRoute::Versions => {
                let body = read(body, config.max_dashboard_frame_bytes, config).await?;
                let label = version_label(&body)?;
                Ok(DocPost::TakeVersion {
                    name,
                    principal,
                    label,
                })
            }
            DocRoute::Restore(id) => Ok(DocPost::Restore {
                id: version_id(id)?,
                name,
                principal,
            }),
            _ => {
                let update = read(body, config.max_frame_bytes, config).await?;
                if update.is_empty() {
                    return Err(ApiError::bad_request(
                        "bad_update",
                        "the body must be a Yjs v1 update",
                    ));
                }
                Ok(DocPost::Update {
                    name,
                    principal,
                    update,
                })
            }
        }
    }
}

/// The label of `POST …/versions`: an empty body, or `{"label": "…"}` (at most 200
/// characters, no control characters; `null` or blank is none).
fn version_label(body: &[u8]) -> Result<Option<String>, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Take {
        #[serde(default)]
        label: Option<String>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let take: Take = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "bad_version",
            format!("the body is {{\"label\": \"…\"}} or nothing: {e}"),
        )
    })?;
    let label = take
        .label
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty());
    if let Some(label) = &label {
        if label.chars().count() > MAX_VERSION_LABEL_CHARS || label.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "bad_version",
                format!(
                    "a label is at most {MAX_VERSION_LABEL_CHARS} characters, without control characters"
                ),
            ));
        }
    }
    Ok(label)
}

/// `POST /api/v1/docs/{doc}/stateless`: a service token that may write `doc`, and a UTF-8 body
/// of at most `--max-stateless-bytes`.
async fn stateless(
    doc: &str,
    parts: &Parts,
    body: axum::body::Body,
    app: &AppState,
) -> Result<DocPost, ApiError> {
    const ROUTE: &str = "http_doc_stateless";
    let name = doc_name(doc)?;
    let (principal, access) = app
        .auth
        .authorize_doc(bearer(&parts.headers)?, &name)
        .map_err(|e| ApiError::refusal(e, ROUTE, Some(&name)))?;
    if !app.auth.is_open() && principal.role != Role::Service {
        let refused = AuthError::RoleRequired(Role::Service);
        return Err(ApiError::refusal(refused, ROUTE, Some(&name)));
    }
    if access != Access::ReadWrite {
        return Err(ApiError::refusal(AuthError::ReadOnly, ROUTE, Some(&name)));
    }
    let body = read(body, app.config.max_stateless_bytes, &app.config).await?;
    let payload = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("bad_payload", "a stateless message is UTF-8 text"))?;
    Ok(DocPost::Stateless { name, payload })
}

/// How large a body may be, from the configuration.
pub trait BodyLimit {
    fn bytes(config: &Config) -> usize;
}

/// `--max-dashboard-frame-bytes`: presence, preferences, badges, client errors, dev tokens.
pub struct SmallBody;

impl BodyLimit for SmallBody {
    fn bytes(config: &Config) -> usize {
        config.max_dashboard_frame_bytes
    }
}

/// `--max-event-bytes`: a published event.
pub struct EventBody;

impl BodyLimit for EventBody {
    fn bytes(config: &Config) -> usize {
        config.max_event_bytes
    }
}

/// A body of at most `L`'s bytes: 413 `too_large` past it.
pub struct Limited<L> {
    pub bytes: Bytes,
    limit: PhantomData<L>,
}

impl<L: BodyLimit> FromRequest<AppState> for Limited<L> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        Ok(Limited {
            bytes: read(request.into_body(), L::bytes(&app.config), &app.config).await?,
            limit: PhantomData,
        })
    }
}

/// A JSON object body of at most `--max-dashboard-frame-bytes` (an empty body is `{}`): 400
/// `bad_json` when it is no object.
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &AppState) -> Result<Self, ApiError> {
        let body = Limited::<SmallBody>::from_request(request, app).await?;
        if body.bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonObject(Map::new()));
        }
        match serde_json::from_slice(&body.bytes) {
            Ok(Value::Object(fields)) => Ok(JsonObject(fields)),
            Ok(_) => Err(ApiError::bad_request(
                "bad_json",
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "bad_json",
                format!("the body is not JSON: {e}"),
            )),
        }
    }
}

/// Reads a request body of at most `limit` bytes: 413 `too_large` past it, 408 `body_timeout`
/// when it has not all arrived within `--http-body-timeout-ms`.
async fn read(body: axum::body::Body, limit: usize, config: &Config) -> Result<Bytes, ApiError> {
    let within = config.http_body_timeout();
    let Ok(read) = tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {} ms", within.as_millis()),
        ));
    };
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {limit} bytes"),
            )
        } else {
            ApiError::bad_request("bad_body", "the body could not be read")
        }
    })
}

/// `?limit=` of a history request (`GET /api/v1/activity`, `/notifications`): 1 to
/// [`MAX_HISTORY`], 50 by default.
pub struct HistoryLimit(pub usize);

/// The most events one history request returns.
pub const MAX_HISTORY: usize = 500;

impl<S: Send + Sync> FromRequestParts<S> for HistoryLimit {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        #[derive(Deserialize)]
        struct Limit {
            limit: Option<usize>,
        }
        let Params(Limit { limit }) = Params::from_request_parts(parts, state).await?;
        let limit = limit.unwrap_or(50);
        if !(1..=MAX_HISTORY).contains(&limit) {
            return Err(ApiError::bad_request(
                "bad_limit",
                format!("limit is 1 to {MAX_HISTORY}"),
            ));
        }
        Ok(HistoryLimit(limit))
    }
}

/// A server without authentication: 404 on one that checks tokens (what only open mode serves,
/// such as development tokens, does not exist there).
pub struct OpenMode;

impl FromRequestParts<AppState> for OpenMode {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        if app.auth.is_open() {
            Ok(OpenMode)
        } else {
            Err(ApiError::not_found(
                "development tokens exist only on a server without authentication",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_splits_into_its_document_and_route() {
        assert_eq!(doc_route("acme/q/1"), ("acme/q/1", DocRoute::Doc));
        assert_eq!(doc_route("acme/q/1/update"), ("acme/q/1", DocRoute::Update));
        assert_eq!(doc_route("acme/q/1/sync"), ("acme/q/1", DocRoute::Sync));
        assert_eq!(
            doc_route("acme/q/1/versions"),
            ("acme/q/1", DocRoute::Versions)
        );
        assert_eq!(
            doc_route("acme/q/1/versions/42"),
            ("acme/q/1", DocRoute::Version("42"))
        );
        assert_eq!(
            doc_route("acme/q/1/versions/42/restore"),
            ("acme/q/1", DocRoute::Restore("42"))
        );
        assert_eq!(
            doc_route("acme/q/1/versions/42/undo"),
            ("acme/q/1", DocRoute::Unknown)
        );
        assert_eq!(
            doc_route("acme/q/1/versions/"),
            ("acme/q/1", DocRoute::Unknown)
        );
        // Not the segment `versions`: part of the name.
        assert_eq!(
            doc_route("acme/versions2/x"),
            ("acme/versions2/x", DocRoute::Doc)
        );
    }

    #[test]
    fn a_version_label_is_optional_and_bounded() {
        assert_eq!(version_label(b"").unwrap(), None);
        assert_eq!(version_label(b"{}").unwrap(), None);
        assert_eq!(
            version_label(br#"{"label":" before release "}"#).unwrap(),
            Some("before release".into())
        );
        assert!(version_label(br#"{"label":"a\nb"}"#).is_err());
        assert!(version_label(br#"{"name":"x"}"#).is_err());
        let long = format!(r#"{{"label":"{}"}}"#, "x".repeat(201));
        assert!(version_label(long.as_bytes()).is_err());
    }
}
