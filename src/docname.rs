//! [`DocName`]: a validated document name.

use std::fmt;

/// The longest document name, in bytes.
pub const MAX_DOC_NAME_BYTES: usize = 512;

/// A document name: 1 to 512 bytes of UTF-8 without control characters. Slashes are allowed
/// (`acme/queries/456`); the first segment names the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(String);

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocNameError {
    #[error("document name is empty")]
    Empty,
    #[error("document name is {0} bytes; the limit is {MAX_DOC_NAME_BYTES}")]
    TooLong(usize),
    #[error("document name contains a control character")]
    ControlCharacter,
}

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
        Ok(DocName(name.to_owned()))
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
