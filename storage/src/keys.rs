//! The key layout of the sled trees. A name (document, workspace, scope) never holds `0x00`
//! (the server refuses control characters), so `name + 0x00 + suffix` keeps each name's keys one
//! prefix scan apart, even from names that begin with it.

use crate::StoreError;

/// `name` + `0x00`: the prefix of every key of `name`.
pub(crate) fn prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

/// The first key after every key that starts with `prefix` (which ends in `0x00`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    end
}

/// `name`'s key numbered `n` (big-endian, so keys sort by number).
pub(crate) fn numbered(name: &str, n: u64) -> Vec<u8> {
    let mut key = prefix(name);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The number of a key made by [`numbered`].
///
/// # Errors
/// A key too short to hold one: corruption.
pub(crate) fn number_of(name: &str, key: &[u8], what: &'static str) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(name, what))
}

/// A record of `name` that does not read back as written.
pub(crate) fn corrupt(name: &str, what: &'static str) -> StoreError {
    StoreError::Corrupt {
        doc: name.to_owned(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_apart_and_numbers_sort() {
        let (a, ab) = (prefix("a"), prefix("a/b"));
        assert!(!ab.starts_with(&a));
        assert!(numbered("a", 2) < numbered("a", 256));
        assert!(numbered("a", u64::MAX) < prefix_end(&a));
        assert_eq!(number_of("a", &numbered("a", 7), "key").unwrap(), 7);
        assert!(number_of("a", b"short", "key").is_err());
    }
}
