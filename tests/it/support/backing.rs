//! [`Backing`]: where a test server keeps its data, sled in a temporary directory or a
//! PostgreSQL database of its own, as the flags of the `tandem` binary say it.

use std::ffi::OsString;

use tandem_storage::pg::testing::TempDatabase;

/// A test server's store, removed when the test ends.
pub enum Backing {
    /// sled in a temporary data directory.
    Sled(tempfile::TempDir),
    /// A fresh PostgreSQL database (on `TANDEM_TEST_DATABASE_URL`'s server).
    Postgres(TempDatabase),
}

impl Backing {
    pub fn sled() -> Backing {
        Backing::Sled(tempfile::tempdir().expect("temp dir"))
    }

    pub async fn postgres() -> Backing {
        Backing::Postgres(TempDatabase::create().await)
    }

    /// What `TANDEM_TEST_STORE` asks for (`postgres`, or sled by default): the whole suite can
    /// run on PostgreSQL with `TANDEM_TEST_STORE=postgres cargo test --test it`.
    pub async fn from_env() -> Backing {
        match std::env::var("TANDEM_TEST_STORE").as_deref() {
            Ok("postgres") => Backing::postgres().await,
            Ok("sled") | Err(_) => Backing::sled(),
            Ok(other) => panic!("TANDEM_TEST_STORE={other:?}: expected sled or postgres"),
        }
    }

    /// The `tandem serve` flags that point at it.
    pub fn args(&self) -> Vec<OsString> {
        match self {
            Backing::Sled(dir) => vec!["--data-dir".into(), dir.path().into()],
            Backing::Postgres(db) => vec!["--database-url".into(), db.url().into()],
        }
    }
}
