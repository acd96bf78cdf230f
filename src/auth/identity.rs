//! Who a dashboard request speaks for ([`Identity`]): the token's user and workspace, or, on a
//! server running without authentication, the `?workspace=`, `?user=` and `?name=` it names.

use std::time::Duration;

use serde::Deserialize;

use super::error::AuthError;
use super::token::Role;
use crate::docname::DocName;

/// Who a dashboard request speaks for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub workspace: String,
    pub user: String,
    pub name: Option<String>,
    pub role: Role,
    pub expires_in: Option<Duration>,
    /// The token's document globs (`None`: the whole workspace, read-write).
    pub docs: Option<Vec<(String, super::DocPermission)>>,
}

impl Identity {
    /// Whether the caller may write `doc` (a document of its workspace; any other name is
    /// refused).
    pub fn may_write(&self, doc: &DocName) -> bool {
        doc.workspace() == self.workspace
            && matches!(doc.kind(), crate::docname::RoomKind::Document)
            && super::granted(self.docs.as_deref(), doc)
                .is_ok_and(|access| access == tandem_crdt::Access::ReadWrite)
    }

    /// Whether the caller may read `doc` (a document of its workspace).
    pub fn may_read(&self, doc: &DocName) -> bool {
        doc.workspace() == self.workspace && super::granted(self.docs.as_deref(), doc).is_ok()
    }
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
    #[error("a user id is 1 to {MAX_USER_BYTES} bytes, without control characters")]
    BadUser,
}

/// The workspace a server without authentication uses when none is named.
pub const OPEN_WORKSPACE: &str = "default";

/// The longest user id accepted.
pub(super) const MAX_USER_BYTES: usize = 256;

/// Whether `realtime` features (a plan of `--realtime-plans`) are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The dashboard's live features: a real-time plan.
    Realtime,
    /// Anything a valid token may do (a backend publishing, say).
    Any,
}

/// A workspace name as the first segment of a document name may be.
pub(super) fn valid_workspace(name: &str) -> bool {
    !name.contains('/') && DocName::parse(name).is_ok()
}
