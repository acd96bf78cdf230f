//! Documents' version history in PostgreSQL (table `doc_versions`): a version is one row,
//! written by one statement, committed before `put` returns.

use async_trait::async_trait;

use super::{big, no_nul, unsigned, Db};
use crate::{NewVersion, StoreError, Version, VersionReason, VersionRetention, VersionStore};

/// Versions in PostgreSQL.
#[derive(Clone)]
pub struct PgVersionStore {
    db: Db,
}

const INSERT: &str = "INSERT INTO doc_versions (doc, at_ms, authors, label, reason, content)
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

const LIST: &str = "SELECT id, at_ms, authors, label, reason, octet_length(content)
     FROM doc_versions WHERE doc = $1 AND id < $2 ORDER BY id DESC LIMIT $3";

const GET: &str = "SELECT id, at_ms, authors, label, reason, octet_length(content), content
     FROM doc_versions WHERE doc = $1 AND id = $2";

/// Everything but the newest `$2`, and what is older than `$3` except the newest one.
const PRUNE: &str = "WITH ranked AS (
         SELECT id, at_ms, row_number() OVER (ORDER BY id DESC) AS n
         FROM doc_versions WHERE doc = $1
     )
     DELETE FROM doc_versions d USING ranked r
     WHERE d.doc = $1 AND d.id = r.id AND r.n > 1 AND (r.n > $2 OR r.at_ms < $3)";

impl PgVersionStore {
    pub(super) fn new(db: Db) -> PgVersionStore {
        PgVersionStore { db }
    }

    fn version(doc: &str, row: &tokio_postgres::Row) -> Result<Version, StoreError> {
        let reason: String = row.get(4);
        Ok(Version {
            id: unsigned(row.get(0)),
            at_ms: row.get(1),
            authors: row.get(2),
            label: row.get(3),
            reason: VersionReason::parse(&reason)
                .ok_or_else(|| crate::keys::corrupt(doc, "version reason"))?,
            bytes: u64::try_from(row.get::<_, i32>(5)).unwrap_or(0),
        })
    }

    async fn prune_now(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError> {
        let keep = big(retention.keep.max(1) as u64);
        let not_before = retention.not_before_ms.unwrap_or(i64::MIN);
        let client = self.db.client().await?;
        let statement = client.prepare_cached(PRUNE).await.map_err(super::backend)?;
        let removed = client
            .execute(&statement, &[&doc, &keep, &not_before])
            .await
            .map_err(super::backend)?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }
}

#[async_trait]
impl VersionStore for PgVersionStore {
    async fn put(
        &self,
        doc: &str,
        version: NewVersion,
        content: &[u8],
        retention: VersionRetention,
    ) -> Result<Version, StoreError> {
        no_nul("document", doc)?;
        for author in &version.authors {
            no_nul("author", author)?;
        }
        if let Some(label) = &version.label {
            no_nul("label", label)?;
        }
        let reason = version.reason.as_str();
        let row = self
            .db
            .query_one(
                INSERT,
                &[
                    &doc,
                    &version.at_ms,
                    &version.authors,
                    &version.label,
                    &reason,
                    &content,
                ],
            )
            .await?;
        let stored = Version {
            id: unsigned(row.get(0)),
            at_ms: version.at_ms,
            authors: version.authors,
            bytes: content.len() as u64,
            label: version.label,
            reason: version.reason,
        };
        self.db
            .run(|_| async move { self.prune_now(doc, retention).await })
            .await?;
        Ok(stored)
    }

    async fn list(
        &self,
        doc: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>, StoreError> {
        let before = before.map_or(i64::MAX, big);
        let limit = big(limit as u64);
        self.db
            .query(LIST, &[&doc, &before, &limit])
            .await?
            .iter()
            .map(|row| Self::version(doc, row))
            .collect()
    }

    async fn get(&self, doc: &str, id: u64) -> Result<Option<(Version, Vec<u8>)>, StoreError> {
        let id = big(id);
        let rows = self.db.query(GET, &[&doc, &id]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some((Self::version(doc, row)?, row.get(6))))
    }

    async fn prune(&self, doc: &str, retention: VersionRetention) -> Result<usize, StoreError> {
        self.db
            .run(|_| async move { self.prune_now(doc, retention).await })
            .await
    }
}
