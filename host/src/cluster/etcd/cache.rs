//! This node's copy of everything under the cluster's prefix: the whole configuration read once
//! ([`snapshot`]), then kept by the watch, one key at a time ([`apply`]), or replaced by a fresh
//! snapshot after the watch was cut ([`replace`], which says what changed meanwhile).

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};
use tracing::warn;

use crate::cluster::coordinator::{ConfigEvent, NodeReport};
use crate::model::{AdminCredential, MountConfig, PluginRecord, StationConfig};

#[derive(Default)]
pub(super) struct Cache {
    pub(super) admin: Option<AdminCredential>,
    pub(super) mounts: BTreeMap<String, MountConfig>,
    pub(super) stations: BTreeMap<String, StationConfig>,
    /// Each configuration key's `mod_revision` (key without the prefix), for compare-and-swap
    /// writes.
    pub(super) revisions: BTreeMap<String, i64>,
    pub(super) plugins: BTreeMap<String, PluginRecord>,
    /// Mount → the node that is its origin, and the revision at which it won the election
    /// (its key's `create_revision`): the fence a relay checks its origin against.
    pub(super) origins: BTreeMap<String, (String, i64)>,
    /// Node name → its last report.
    pub(super) nodes: BTreeMap<String, NodeReport>,
}

/// The whole configuration under `prefix`, and the revision it was read at.
pub(super) async fn snapshot(
    client: &mut Client,
    prefix: &str,
) -> Result<(Cache, i64), etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut cache = Cache::default();
    for kv in resp.kvs() {
        note_revision(&mut cache, prefix, kv.key(), Some(kv.mod_revision()));
        apply(
            &mut cache,
            prefix,
            kv.key(),
            Some(kv.value()),
            kv.create_revision(),
        );
    }
    Ok((cache, resp.header().map_or(0, |h| h.revision())))
}

/// Replaces the cache with `fresh`; the events for what differs.
pub(super) fn replace(cache: &mut Cache, fresh: Cache) -> Vec<ConfigEvent> {
    let mut events = Vec::new();
    for path in cache.mounts.keys() {
        if !fresh.mounts.contains_key(path) {
            events.push(ConfigEvent::MountDeleted(path.clone()));
        }
    }
    for (path, m) in &fresh.mounts {
        if cache.mounts.get(path) != Some(m) {
            events.push(ConfigEvent::MountChanged(path.clone()));
        }
    }
    let names: std::collections::BTreeSet<&String> =
        cache.plugins.keys().chain(fresh.plugins.keys()).collect();
    for name in names {
        if cache.plugins.get(name) != fresh.plugins.get(name) {
            events.push(ConfigEvent::PluginChanged(name.clone()));
        }
    }
    *cache = fresh;
    events
}

/// Keeps a configuration key's `mod_revision` (`None`: deleted) for compare-and-swap writes.
pub(super) fn note_revision(cache: &mut Cache, prefix: &str, key: &[u8], revision: Option<i64>) {
    let Some(key) = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(prefix))
        .filter(|k| k.starts_with("mounts/") || k.starts_with("stations/"))
    else {
        return;
    };
    match revision {
        Some(r) => cache.revisions.insert(key.to_owned(), r),
        None => cache.revisions.remove(key),
    };
}

/// Applies one key's new value (`None`: deleted), created at revision `created`, to the cache;
/// the event to publish, if any.
pub(super) fn apply(
    cache: &mut Cache,
    prefix: &str,
    key: &[u8],
    value: Option<&[u8]>,
    created: i64,
) -> Option<ConfigEvent> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    if key == "admin" {
        cache.admin = value.and_then(|v| serde_json::from_slice(v).ok());
        return None;
    }
    if let Some(path) = key.strip_prefix("mounts") {
        return match value.map(serde_json::from_slice::<MountConfig>) {
            Some(Ok(m)) => {
                cache.mounts.insert(path.to_owned(), m);
                Some(ConfigEvent::MountChanged(path.to_owned()))
            }
            Some(Err(e)) => {
                warn!(key, error = %e, "unreadable mount in etcd; ignored");
                None
            }
            None => {
                cache.mounts.remove(path);
                Some(ConfigEvent::MountDeleted(path.to_owned()))
            }
        };
    }
    if let Some(mount) = key.strip_prefix("origins") {
        match value.map(|v| String::from_utf8_lossy(v).into_owned()) {
            Some(v) => cache.origins.insert(mount.to_owned(), (v, created)),
            None => cache.origins.remove(mount),
        };
        return None;
    }
    if let Some(name) = key.strip_prefix("nodes/") {
        match value.map(serde_json::from_slice::<NodeReport>) {
            // A node's URL goes into redirects' Location and relay requests: only a plain
            // http(s)://HOST:PORT is believed, whoever wrote it into etcd.
            Some(Ok(r)) if crate::cluster::peer::node_authority(&r.url).is_none() => {
                warn!(key, url = %r.url.escape_debug(), "node report with an invalid URL in etcd; ignored");
            }
            Some(Ok(r)) => {
                cache.nodes.insert(name.to_owned(), r);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable node report in etcd; ignored"),
            None => {
                cache.nodes.remove(name);
            }
        }
        return None;
    }
    if let Some(name) = key.strip_prefix("stations/") {
        match value.map(serde_json::from_slice::<StationConfig>) {
            Some(Ok(s)) => {
                cache.stations.insert(name.to_owned(), s);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable station in etcd; ignored"),
            None => {
                cache.stations.remove(name);
            }
        }
        return None;
    }
    if let Some(name) = key.strip_prefix("plugins/") {
        match value.map(serde_json::from_slice::<PluginRecord>) {
            Some(Ok(p)) => {
                cache.plugins.insert(name.to_owned(), p);
            }
            Some(Err(e)) => warn!(key, error = %e, "unreadable plugin record in etcd; ignored"),
            None => {
                cache.plugins.remove(name);
            }
        }
        return Some(ConfigEvent::PluginChanged(name.to_owned()));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mount_json(path: &str, max: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "path": path, "source_user": "source", "source_password_hash": "x",
            "max_listeners": max,
        }))
        .unwrap()
    }

    #[test]
    fn keys_become_cache_entries_and_events() {
        let mut c = Cache::default();
        let p = "/t/";
        assert_eq!(
            apply(
                &mut c,
                p,
                b"/t/mounts/a.mp3",
                Some(&mount_json("/a.mp3", 1)),
                7
            ),
            Some(ConfigEvent::MountChanged("/a.mp3".into()))
        );
        assert_eq!(c.mounts["/a.mp3"].max_listeners, Some(1));
        assert_eq!(apply(&mut c, p, b"/t/mounts/bad", Some(b"{oops"), 8), None);
        assert_eq!(apply(&mut c, p, b"/other/mounts/x", Some(b"{}"), 9), None);
        assert_eq!(
            apply(&mut c, p, b"/t/origins/a.mp3", Some(b"node"), 10),
            None
        );
        assert_eq!(c.origins["/a.mp3"], ("node".to_owned(), 10));
        assert_eq!(
            apply(&mut c, p, b"/t/mounts/a.mp3", None, 0),
            Some(ConfigEvent::MountDeleted("/a.mp3".into()))
        );
        assert!(c.mounts.is_empty());
    }

    #[test]
    fn a_fresh_snapshot_publishes_what_changed_while_the_watch_was_down() {
        let p = "/t/";
        let mut old = Cache::default();
        apply(&mut old, p, b"/t/mounts/a", Some(&mount_json("/a", 1)), 1);
        apply(&mut old, p, b"/t/mounts/b", Some(&mount_json("/b", 1)), 1);
        let mut fresh = Cache::default();
        apply(&mut fresh, p, b"/t/mounts/b", Some(&mount_json("/b", 2)), 1);
        apply(&mut fresh, p, b"/t/mounts/c", Some(&mount_json("/c", 1)), 1);
        let events = replace(&mut old, fresh);
        assert_eq!(
            events,
            vec![
                ConfigEvent::MountDeleted("/a".into()),
                ConfigEvent::MountChanged("/b".into()),
                ConfigEvent::MountChanged("/c".into()),
            ]
        );
        assert_eq!(old.mounts.len(), 2);
    }
}
