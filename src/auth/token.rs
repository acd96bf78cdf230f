//! Tokens: the claims a Tandem token carries ([`Claims`], with its [`Role`] and document grants),
//! minting ([`mint`], for `tandem token`, tests and scripts), and the [`Secret`] that signs them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::config::Secret;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person using the product.
    #[default]
    Member,
    /// An administrator of the workspace: every document, and the admin endpoints.
    Admin,
    /// A backend: writes documents and publishes events of its own workspace.
    Service,
}

/// Access a `docs` pattern grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocPermission {
    Read,
    Write,
}

/// The claims of a Tandem token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id; a number or a string in the token.
    #[serde(deserialize_with = "string_or_number")]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default)]
    pub role: Role,
    /// Document-name globs (`*` matches anything, `/` included) → access. Absent: every
    /// document of the workspace, read-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docs: Option<BTreeMap<String, DocPermission>>,
    /// Expiry, seconds since the epoch. Required.
    pub exp: u64,
    /// When it was issued, seconds since the epoch: one issued in the future (beyond the
    /// leeway) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    })
}

/// How long a development token lasts, in seconds.
pub(super) const DEV_TOKEN_SECS: u64 = 7 * 24 * 3600;

/// A secret nobody can guess from outside the process, without a dependency: the standard
/// library's randomly keyed hasher, four times.
pub(super) fn random_secret() -> Secret {
    use std::hash::{BuildHasher, Hasher};
    let mut text = String::new();
    for i in 0..4u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(i);
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        text.push_str(&format!("{:016x}", hasher.finish()));
    }
    text.parse().expect("64 hex digits are a secret")
}

/// Mints a token, for `tandem token`, tests and scripts.
///
/// # Errors
/// The claims could not be signed.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
