//! [`SpaceGuard`]: keeps sled off a disk that is nearly full.
//!
//! sled records an IO error as permanent: once a write of its fails for want of space, every
//! later operation of that database fails too, until the process restarts. So the sled store
//! refuses writes itself while less than a reserve is free on the data directory's disk (with
//! a clear error, answered 503), and takes them again as soon as space returns: the server
//! recovers by itself. The journal's own file survives running out of space, and so does the
//! rest of the store while the reserve holds.

use std::path::PathBuf;

use crate::StoreError;

/// The check every sled write passes.
#[derive(Debug, Clone)]
pub struct SpaceGuard {
    dir: PathBuf,
    reserve: u64,
}

impl SpaceGuard {
    /// A guard keeping `reserve` bytes free on the disk of `dir` (0: none).
    pub fn new(dir: PathBuf, reserve: u64) -> SpaceGuard {
        SpaceGuard { dir, reserve }
    }

    /// Whether a write may go ahead.
    ///
    /// # Errors
    /// [`StoreError::DiskFull`] while less than the reserve is free. When the free space cannot
    /// be read, the write goes ahead (and fails on its own if it must).
    pub fn check(&self) -> Result<(), StoreError> {
        if self.reserve == 0 {
            return Ok(());
        }
        match fs4::available_space(&self.dir) {
            Ok(free) if free < self.reserve => Err(StoreError::DiskFull {
                free,
                reserve: self.reserve,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs4::available_space(dir.path()).unwrap();
        assert!(SpaceGuard::new(dir.path().into(), 0).check().is_ok());
        assert!(SpaceGuard::new(dir.path().into(), 1).check().is_ok());
        assert!(matches!(
            SpaceGuard::new(dir.path().into(), free.saturating_mul(2).max(1 << 40)).check(),
            Err(StoreError::DiskFull { .. })
        ));
    }
}
