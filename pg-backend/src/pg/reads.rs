//! Read-side queries for the runtime's client: custom status, KV, stats,
//! and the commit status used to resolve lost COMMIT replies.

use super::batch::Answers;
use super::error::{col, int, uint};
use super::{PgStore, Stmt};
use duropg_core::codec::StoredEvent;
use duropg_core::StoreFault;
use duropg_engine::store::{CommitStatus, RawStats};
use std::collections::HashMap;
use tokio_postgres::Row;

/// A custom status and its version.
pub(crate) type CustomStatus = (Option<String>, u64);

/// Parse `custom_statuses` rows, per instance: a row that does not decode
/// fails only its own instance's read.
pub(crate) fn custom_statuses(rows: &[Row]) -> Answers<String, Result<CustomStatus, StoreFault>> {
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let instance: String = col(r, 0, "instances", &|| "a batched custom-status read".into())?;
        let key = || format!("instance {instance:?}");
        let status = col(r, 1, "instances", &key).and_then(|s| Ok((s, uint(col(r, 2, "instances", &key)?))));
        out.insert(instance, status);
    }
    Ok(out)
}

impl PgStore {
    pub(super) async fn read_custom_status(
        &self,
        instance: &str,
        last_seen_version: u64,
    ) -> Result<Option<(Option<String>, u64)>, StoreFault> {
        let status = self.statuses.get(instance.to_string()).await?.transpose()?;
        Ok(status.filter(|(_, version)| *version > last_seen_version))
    }

    pub(super) async fn read_kv_value(&self, instance: &str, key: &str) -> Result<Option<String>, StoreFault> {
        let rows = self
            .run(&[Stmt::new(&self.sql.kv_value).bind(instance).bind(key)])
            .await?;
        let k = || format!("instance {instance:?} key {key:?}");
        match rows[0].first() {
            Some(r) => col(r, 0, "kv_delta", &k),
            None => Ok(None),
        }
    }

    pub(super) async fn read_kv_all(&self, instance: &str) -> Result<Vec<(String, String)>, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.kv_all).bind(instance)]).await?;
        let k = || format!("instance {instance:?}");
        rows[0]
            .iter()
            .map(|r| Ok((col(r, 0, "kv_store", &k)?, col(r, 1, "kv_store", &k)?)))
            .collect()
    }

    pub(super) async fn read_instance_stats(&self, instance: &str) -> Result<Option<RawStats>, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.instance_stats).bind(instance)]).await?;
        let k = || format!("instance {instance:?}");
        let Some(r) = rows[0].first() else {
            return Ok(None);
        };
        let first: Option<String> = col(r, 3, "history", &k)?;
        Ok(Some(RawStats {
            history_event_count: uint(col(r, 1, "history", &k)?),
            history_size_bytes: uint(col(r, 2, "history", &k)?),
            first_event: first.map(|data| StoredEvent { event_id: 1, data }),
            kv_key_count: uint(col(r, 4, "kv_store", &k)?),
            kv_value_bytes: uint(col(r, 5, "kv_store", &k)?),
        }))
    }

    pub(super) async fn read_commit_status(&self, xid: u64) -> Result<CommitStatus, StoreFault> {
        let rows = self.run(&[Stmt::new(&self.sql.txid_status).bind(int(xid))]).await?;
        let status: Option<String> = match rows[0].first() {
            Some(r) => col(r, 0, "txid_status", &|| format!("xid {xid}"))?,
            None => None,
        };
        Ok(match status.as_deref() {
            Some("committed") => CommitStatus::Committed,
            Some("aborted") => CommitStatus::Aborted,
            Some("in progress") => CommitStatus::InProgress,
            _ => CommitStatus::Unknown,
        })
    }
}
