//! Why a request was refused ([`AuthError`], with the label it is counted under and the
//! connection failure it counts as), and why the auth configuration is unusable
//! ([`AuthConfigError`]). No HTTP here: `crate::error` answers them.

use super::token::Role;

/// Why a request was refused. Its text never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (?token= on WebSocket URLs, Authorization: Bearer on HTTP)")]
    MissingToken,
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
    #[error("the token has expired")]
    Expired,
    #[error("real-time features need one of these plans: {}", required.join(", "))]
    PlanRequired {
        plan: Option<String>,
        required: Vec<String>,
    },
    #[error("the token's workspace has no access to this document")]
    WrongWorkspace,
    #[error("the token does not grant access to this document")]
    DocumentForbidden,
    #[error("the token grants read-only access to this document")]
    ReadOnly,
    #[error("this needs a token with the {0:?} role")]
    RoleRequired(Role),
}

impl AuthError {
    /// The connection failure this refusal counts as.
    pub fn failure(&self) -> crate::metrics::Failure {
        match self {
            AuthError::PlanRequired { .. } => crate::metrics::Failure::Plan,
            _ => crate::metrics::Failure::Auth,
        }
    }

    /// A bounded label for counting refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::PlanRequired { .. } => "plan_required",
            AuthError::WrongWorkspace | AuthError::DocumentForbidden => "forbidden",
            AuthError::ReadOnly => "read_only",
            AuthError::RoleRequired(_) => "role_required",
        }
    }

    /// Whether the refusal is about the token itself (none, malformed, expired: HTTP 401)
    /// rather than what it may do (403).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::MissingToken | AuthError::InvalidToken(_) | AuthError::Expired
        )
    }
}

/// Why the auth configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read the public key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is neither an Ed25519 nor an RSA public key in PEM form")]
    BadKey { path: String },
    #[error("cannot read or make the key of development tokens {path}: {source}")]
    DevKey {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no key of development tokens (delete it to make a new one)")]
    BadDevKey { path: String },
}
