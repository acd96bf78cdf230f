//! [`DocName`]: a validated document name.

use std::fmt;

/// The longest document name, in bytes.
pub const MAX_DOC_NAME_BYTES: usize = 512;

/// A document name: 1 to 512 bytes of UTF-8 without control characters. Slashes are allowed
/// (`acme/queries/456`); the first segment names the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(String);

/// The second segment of a workspace's presence room.
pub const PRESENCE_SEGMENT: &str = "__presence__";

/// The second segment of the users' inbox rooms.
pub const INBOX_SEGMENT: &str = "__inbox__";

/// What a document is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind<'a> {
    /// A document of the product (a query, say).
    Document,
    /// `{workspace}/__presence__`.
    Presence,
    /// `{workspace}/__inbox__/{user}`.
    Inbox { user: &'a str },
}

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocNameError {
    #[error("document name is empty")]
    Empty,
    #[error("document name is {0} bytes; the limit is {MAX_DOC_NAME_BYTES}")]
    TooLong(usize),
    #[error("document name contains a control character")]
    ControlCharacter,
    #[error(
        "a document name may not end in /update, /sync, /stateless or /versions, nor hold a \
         segment \"versions\": the document API's routes end in them ({0:?})"
    )]
    Reserved(String),
}

/// The last segments of the document API's routes (`POST /api/v1/docs/{doc}/update`…): no
/// document name ends in one, so a route is never read as a document's name.
pub const RESERVED_LAST_SEGMENTS: [&str; 4] = ["update", "sync", "stateless", "versions"];

/// The segment version routes start with (`…/{doc}/versions/{id}/restore`): no document name
/// holds it anywhere.
pub const VERSIONS_SEGMENT: &str = "versions";

impl DocName {
    /// Validates an already URL-decoded name.
    ///
    /// # Errors
    /// The name is empty, longer than 512 bytes, or holds a control character.
    pub fn parse(name: &str) -> Result<DocName, DocNameError> {
        if name.is_empty() {
            return Err(DocNameError::Empty);
        }
        if name.len() > MAX_DOC_NAME_BYTES {
            return Err(DocNameError::TooLong(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(DocNameError::ControlCharacter);
        }
        let name = DocName(name.to_owned());
        // The server's own rooms are named after users, whatever their ids; the API does not
        // write them.
        let reserved = name.kind() == RoomKind::Document
            && (name.0.split('/').any(|s| s == VERSIONS_SEGMENT)
                || name
                    .0
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| RESERVED_LAST_SEGMENTS.contains(&last)));
        if reserved {
            return Err(DocNameError::Reserved(name.0));
        }
        Ok(name)
    }

    /// The presence room of `workspace`: every user's presence as awareness states.
    ///
    /// # Errors
    /// The workspace name makes no valid document name.
    pub fn presence(workspace: &str) -> Result<DocName, DocNameError> {
        DocName::parse(&format!("{workspace}/{PRESENCE_SEGMENT}"))
    }

    /// The inbox room of `user` in `workspace`: the server's awareness state there carries the
    /// user's latest notifications and chat badges.
    ///
    /// # Errors
    /// The names make no valid document name.
    pub fn inbox(workspace: &str, user: &str) -> Result<DocName, DocNameError> {
        DocName::parse(&format!("{workspace}/{INBOX_SEGMENT}/{user}"))
    }

    /// What kind of room this document is.
    pub fn kind(&self) -> RoomKind<'_> {
        let rest = self.0.split_once('/').map_or("", |(_, rest)| rest);
        if rest == PRESENCE_SEGMENT {
            return RoomKind::Presence;
        }
        match rest
            .strip_prefix(INBOX_SEGMENT)
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(user) if !user.is_empty() => RoomKind::Inbox { user },
            _ => RoomKind::Document,
        }
    }

    /// The query id of a query document, `{workspace}/queries/{id}`.
    pub fn query_id(&self) -> Option<&str> {
        let (_, rest) = self.0.split_once('/')?;
        rest.strip_prefix("queries/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The workspace the document belongs to: the first segment of its name.
    pub fn workspace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_apis_route_segments_are_reserved() {
        for name in [
            "acme/q/update",
            "acme/sync",
            "acme/q/stateless",
            "acme/q/versions",
            "acme/versions/3",
            "versions",
        ] {
            assert!(
                matches!(DocName::parse(name), Err(DocNameError::Reserved(_))),
                "{name}"
            );
        }
        for name in [
            "acme/update/q",
            "acme/q/updates",
            "acme/sync-notes",
            "acme/version",
        ] {
            assert!(DocName::parse(name).is_ok(), "{name}");
        }
        // A user's inbox is named after the user, whatever the id.
        assert!(DocName::inbox("acme", "update").is_ok());
    }

    #[test]
    fn special_rooms_are_recognised() {
        let kind = |name: &str| format!("{:?}", DocName::parse(name).unwrap().kind());
        assert_eq!(kind("acme/__presence__"), "Presence");
        assert_eq!(kind("acme/__inbox__/u-7"), r#"Inbox { user: "u-7" }"#);
        assert_eq!(kind("acme/__inbox__/"), "Document");
        assert_eq!(kind("acme/queries/456"), "Document");
        assert_eq!(kind("__presence__"), "Document");
        let query = DocName::parse("acme/queries/456").unwrap();
        assert_eq!(query.query_id(), Some("456"));
        assert_eq!(DocName::parse("acme/queries/4/5").unwrap().query_id(), None);
        assert_eq!(
            DocName::presence("acme").unwrap().as_str(),
            "acme/__presence__"
        );
        assert_eq!(
            DocName::inbox("acme", "7").unwrap().kind(),
            RoomKind::Inbox { user: "7" }
        );
    }

    #[test]
    fn accepts_paths_and_unicode_and_refuses_the_rest() {
        assert!(DocName::parse("acme/queries/456").is_ok());
        assert!(DocName::parse("über doc ✓").is_ok());
        assert_eq!(DocName::parse(""), Err(DocNameError::Empty));
        assert_eq!(
            DocName::parse(&"x".repeat(513)),
            Err(DocNameError::TooLong(513))
        );
        assert!(DocName::parse(&"x".repeat(512)).is_ok());
        assert_eq!(
            DocName::parse("a\u{0}b"),
            Err(DocNameError::ControlCharacter)
        );
        assert_eq!(DocName::parse("a\nb"), Err(DocNameError::ControlCharacter));
    }
}
