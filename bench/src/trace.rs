//! Editing traces (`{startContent, endContent, txns: [{patches: [[pos, del, text]]}]}`, gzipped
//! JSON) replayed into yrs updates, for the benchmarks and the bench tool.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use yrs::{Doc, GetString, Text, Transact};

/// One editing trace.
#[derive(Debug, Deserialize)]
pub struct Trace {
    #[serde(rename = "startContent")]
    pub start_content: String,
    #[serde(rename = "endContent")]
    pub end_content: String,
    pub txns: Vec<TraceTxn>,
}

/// One transaction of a trace: patches applied together.
#[derive(Debug, Deserialize)]
pub struct TraceTxn {
    pub patches: Vec<Patch>,
}

/// `(position, characters deleted, text inserted)`.
#[derive(Debug, Deserialize)]
pub struct Patch(pub u32, pub u32, pub String);

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a trace: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("replaying the trace gave a different text than its endContent")]
    Diverged,
}

impl Trace {
    /// Reads a trace, gzipped (`.gz`) or plain JSON.
    ///
    /// # Errors
    /// The file is missing, not gzip, or not a trace.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let io = |source| TraceError::Io {
            path: path.display().to_string(),
            source,
        };
        let raw = std::fs::read(path).map_err(io)?;
        let mut json = Vec::with_capacity(raw.len() * 8);
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut json)
                .map_err(io)?;
        } else {
            json = raw;
        }
        serde_json::from_slice(&json).map_err(|source| TraceError::Json {
            path: path.display().to_string(),
            source,
        })
    }

    /// How many patches (edits) the trace holds.
    pub fn edit_count(&self) -> usize {
        self.txns.iter().map(|t| t.patches.len()).sum()
    }

    /// Replays the trace into a yrs text named `text` of a document with `client_id`, returning
    /// one v1 update per edit, in order, checking the result against `endContent`.
    ///
    /// # Errors
    /// [`TraceError::Diverged`] when the replay does not end at `endContent`.
    pub fn updates(&self, client_id: u64, text: &str) -> Result<Vec<Vec<u8>>, TraceError> {
        self.updates_batched(client_id, text, 1)
    }

    /// Like [`Trace::updates`], with `batch` consecutive edits per update.
    ///
    /// # Errors
    /// [`TraceError::Diverged`] when the replay does not end at `endContent`.
    pub fn updates_batched(
        &self,
        client_id: u64,
        text: &str,
        batch: usize,
    ) -> Result<Vec<Vec<u8>>, TraceError> {
        let doc = Doc::with_client_id(client_id);
        let field = doc.get_or_insert_text(text);
        let mut updates = Vec::with_capacity(self.edit_count() + 1);
        if !self.start_content.is_empty() {
            let mut txn = doc.transact_mut();
            field.insert(&mut txn, 0, &self.start_content);
            updates.push(txn.encode_update_v1());
        }
        let patches: Vec<&Patch> = self.txns.iter().flat_map(|t| &t.patches).collect();
        for chunk in patches.chunks(batch.max(1)) {
            let mut t = doc.transact_mut();
            for Patch(pos, del, ins) in chunk {
                if *del > 0 {
                    field.remove_range(&mut t, *pos, *del);
                }
                if !ins.is_empty() {
                    field.insert(&mut t, *pos, ins);
                }
            }
            updates.push(t.encode_update_v1());
        }
        if field.get_string(&doc.transact()) != self.end_content {
            return Err(TraceError::Diverged);
        }
        Ok(updates)
    }
}
