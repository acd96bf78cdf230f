//! Who a dashboard request speaks for ([`Identity`]): the token's user and workspace, or, on a
//! server running without authentication, the `?workspace=`, `?user=` and `?name=` it names.

use std::time::Duration;

use serde::Deserialize;

use super::{Auth, AuthError, Role};
use crate::docname::DocName;

/// Who a dashboard request speaks for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub workspace: String,
    pub user: String,
    pub name: Option<String>,
    pub role: Role,
    pub expires_in: Option<Duration>,
}

/// The query parameters that name who is asking.
#[derive(Debug, Default, Deserialize)]
pub struct IdentityParams {
    /// The token, for WebSocket URLs (browsers cannot set headers).
    pub token: Option<String>,
    /// The workspace; a token's own workspace when it has one.
    pub workspace: Option<String>,
    /// Without authentication only: who to act as.
    pub user: Option<String>,
    /// Without authentication only: the display name.
    pub name: Option<String>,
}

/// Why a request names nobody the server serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("a workspace name is one segment of a document name (no `/`)")]
    BadWorkspace,
    #[error("a user id is 1 to {MAX_USER_BYTES} bytes")]
    BadUser,
}

/// The workspace a server without authentication uses when none is named.
pub const OPEN_WORKSPACE: &str = "default";

/// The longest user id accepted.
const MAX_USER_BYTES: usize = 256;

/// Whether `realtime` features (a plan of `--realtime-plans`) are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The dashboard's live features: a real-time plan.
    Realtime,
    /// Anything a valid token may do (a backend publishing, say).
    Any,
}

impl Auth {
    /// Checks the token of a dashboard request and says who it speaks for.
    ///
    /// # Errors
    /// The token's refusal, a workspace other than the token's, or a malformed name.
    pub fn identify(
        &self,
        token: Option<&str>,
        params: &IdentityParams,
        plan: Plan,
    ) -> Result<Identity, IdentityError> {
        let principal = self.authenticate(token)?;
        if plan == Plan::Realtime {
            self.check_plan(&principal)?;
        }
        let workspace = match (&principal.workspace, &params.workspace) {
            (Some(own), None) => own.clone(),
            (Some(own), Some(asked)) if own == asked => own.clone(),
            (Some(_), Some(_)) => return Err(AuthError::WrongWorkspace.into()),
            (None, Some(asked)) if valid_workspace(asked) => asked.clone(),
            (None, Some(_)) => return Err(IdentityError::BadWorkspace),
            (None, None) => OPEN_WORKSPACE.to_owned(),
        };
        let open = self.is_open();
        let expires_in = principal.expires_in();
        let user = match (&params.user, open) {
            (Some(user), true) => user.clone(),
            _ => principal.user,
        };
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(IdentityError::BadUser);
        }
        let name = match (principal.name, open) {
            (Some(name), _) => Some(name),
            (None, true) => params.name.clone(),
            (None, false) => None,
        };
        Ok(Identity {
            workspace,
            user,
            name,
            role: principal.role,
            expires_in,
        })
    }
}

/// A workspace name as the first segment of a document name may be.
fn valid_workspace(name: &str) -> bool {
    !name.contains('/') && DocName::parse(name).is_ok()
}
