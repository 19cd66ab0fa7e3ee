//! Writes through etcd: a JSON value put if a comparison holds, compare-and-swap of one
//! configuration entry, deletes; each waits briefly for the watch to bring its change into the
//! cache, so a reader right after the write sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::cache::Cache;
use super::{unavailable, Etcd};
use crate::cluster::coordinator::CoordError;
use crate::sync::Locked;

impl Etcd {
    /// Writes `value` as JSON at `key` if `compare` holds (always without one); whether it did.
    pub(super) async fn put_if(
        &self,
        key: String,
        value: &impl serde::Serialize,
        compare: Option<Compare>,
    ) -> Result<bool, CoordError> {
        let bytes = serde_json::to_vec(value).map_err(|e| unavailable("encode", e))?;
        let txn = Txn::new()
            .when(compare.into_iter().collect::<Vec<_>>())
            .and_then([TxnOp::put(key, bytes, None)]);
        Ok(self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| unavailable("write", e))?
            .succeeded())
    }

    /// Compare-and-swap of the configuration key `rel` (without the prefix): writes `value` only
    /// if the cache still shows what the change was based on (`unchanged`) and etcd still holds
    /// that very revision (`existed`), or nothing (`!existed`). Else [`CoordError::Conflict`]
    /// naming `what`.
    pub(super) async fn swap(
        &self,
        rel: &str,
        value: &impl serde::Serialize,
        existed: bool,
        unchanged: impl Fn(&Cache) -> bool,
        what: impl Fn() -> String,
    ) -> Result<(), CoordError> {
        let key = format!("{}{rel}", self.prefix);
        let compare = {
            let c = self.cache.locked();
            if !unchanged(&c) {
                return Err(CoordError::Conflict(what()));
            }
            match c.revisions.get(rel) {
                Some(&rev) if existed => Compare::mod_revision(key.clone(), CompareOp::Equal, rev),
                _ => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            }
        };
        if self.put_if(key, value, Some(compare)).await? {
            Ok(())
        } else {
            Err(CoordError::Conflict(what()))
        }
    }

    /// Deletes the configuration key `rel` (without the prefix) and waits until the cache shows
    /// it `gone`; whether it existed.
    pub(super) async fn delete(
        &self,
        rel: &str,
        gone: impl Fn(&Cache) -> bool,
    ) -> Result<bool, CoordError> {
        let resp = self
            .client
            .clone()
            .delete(format!("{}{rel}", self.prefix), None)
            .await
            .map_err(|e| unavailable("write", e))?;
        self.settle(gone).await;
        Ok(resp.deleted() > 0)
    }

    /// Waits (briefly) until the watch has brought a write back into the cache, so a caller
    /// that reads right after its own write sees it.
    /// Writes `value` as entry `id` of one of the cached maps (mounts, stations) at `rel`, only
    /// if the store still holds `base` there, then waits for the cache to show it.
    pub(super) async fn put_entry<T: serde::Serialize + PartialEq>(
        &self,
        rel: &str,
        kind: &str,
        id: &str,
        value: &T,
        base: Option<&T>,
        map: fn(&Cache) -> &BTreeMap<String, T>,
    ) -> Result<(), CoordError> {
        let unchanged = |c: &Cache| map(c).get(id) == base;
        self.swap(rel, value, base.is_some(), unchanged, || {
            format!("{kind} {id}")
        })
        .await?;
        self.settle(|c| map(c).get(id) == Some(value)).await;
        Ok(())
    }

    pub(super) async fn settle(&self, done: impl Fn(&Cache) -> bool) {
        for _ in 0..100 {
            if done(&self.cache.locked()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
