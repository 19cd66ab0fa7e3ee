//! Mounts through the JSON API (`/api/v1/mounts…`, behind `tidecast mount`): list, show,
//! create, edit, delete, signed URLs and listener lists. A request is applied to a mount by
//! `model/edit.rs` (pure); here it is checked against what only a node knows (the files each
//! node reads, a station's capacity, plugins), its password hashed, and the mount stored.

use serde_json::json;
use tracing::info;

use super::Control;
use crate::auth::{generate_password, hash_password};
use crate::hooks::HookEvent;
use crate::http::{RequestHead, Response};
use crate::model::edit::Known;
use crate::model::{MountConfig, MountSettings};

/// Answers an admitted `/api/v1/mounts…` request; `None` if it is not one.
pub async fn route(state: &Control, req: &RequestHead, body: &[u8]) -> Option<Response> {
    let between = super::between;
    Some(match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/api/v1/mounts") => Response::json(
            200,
            &json!(state
                .coordinator
                .mounts()
                .iter()
                .map(|m| mount_view(state, m))
                .collect::<Vec<_>>()),
        ),
        ("POST", "/api/v1/mounts") => create_mount(state, body).await,
        ("POST", p) if between(p, "/api/v1/mounts/", "/token").is_some() => {
            let mount = format!(
                "/{}",
                between(p, "/api/v1/mounts/", "/token").unwrap_or_default()
            );
            signed_url(state, req, &mount, body)
        }
        ("GET", p) if between(p, "/api/v1/mounts/", "/listeners").is_some() => {
            let mount = between(p, "/api/v1/mounts/", "/listeners").unwrap_or_default();
            listeners(state, &format!("/{mount}"))
        }
        (method, p) if p.starts_with("/api/v1/mounts/") => {
            let mount = format!("/{}", p.strip_prefix("/api/v1/mounts/").unwrap_or_default());
            match method {
                "GET" => match state.coordinator.mount(&mount) {
                    Some(m) => Response::json(200, &mount_view(state, &m)),
                    None => Response::error(404, format!("no such mount: {mount}")),
                },
                "PATCH" => edit_mount(state, &mount, body).await,
                "DELETE" => delete_mount(state, &mount).await,
                _ => Response::error(405, "use GET, PATCH or DELETE"),
            }
        }
        _ => return None,
    })
}

/// A signed URL for a mount that needs one: body `{"seconds": N, "ip": "A"}` (both optional:
/// an hour, not bound to an address).
fn signed_url(state: &Control, req: &RequestHead, mount: &str, body: &[u8]) -> Response {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Ask {
        seconds: Option<u64>,
        ip: Option<std::net::IpAddr>,
    }
    let ask: Ask = match crate::control::optional_json_body(body) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(m) = state.coordinator.mount(mount) else {
        return Response::error(404, format!("no such mount: {mount}"));
    };
    let Some(key) = &m.token_key else {
        return Response::error(
            409,
            format!("{mount} takes listeners without signed URLs; set --token-key first"),
        );
    };
    let seconds = ask.seconds.unwrap_or(3600);
    if !(1..=31_536_000).contains(&seconds) {
        return Response::error(400, "seconds must be between 1 and 31536000");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires = now + seconds;
    let token = crate::listen::access::sign(key, mount, expires, ask.ip);
    let bind = if ask.ip.is_some() { "&bind=1" } else { "" };
    let url = format!(
        "{}{mount}?expires={expires}&token={token}{bind}",
        state.config.base_url(Some(req))
    );
    Response::json(
        200,
        &json!({ "url": url, "expires": expires, "token": token }),
    )
}

/// This node's listeners of `mount`: id, address (the client's, behind trusted proxies), the
/// user name it authenticated with, its player and how long it has listened.
fn listeners(state: &Control, mount: &str) -> Response {
    if state.coordinator.mount(mount).is_none() && state.hubs.hub(mount).is_none() {
        return Response::error(404, format!("no such mount: {mount}"));
    }
    let rows: Vec<_> = state
        .hubs
        .listeners_of(mount)
        .into_iter()
        .map(|l| {
            json!({
                "id": l.id,
                "ip": l.ip,
                "user": l.user,
                "user_agent": l.user_agent,
                "connected_secs": l.connected_secs,
            })
        })
        .collect();
    Response::json(200, &json!(rows))
}

pub(crate) fn mount_view(state: &Control, m: &MountConfig) -> serde_json::Value {
    let hub = state.hubs.hub(&m.path);
    // What routes this mount's listeners: its own, its station's, or the node's.
    let (policy, routing) = state.router.for_mount(m);
    json!({
        "path": m.path,
        "source_user": m.source_user,
        "max_listeners": m.max_listeners,
        "fallback": m.fallback,
        "silence_secs": m.silence_secs,
        "charset": m.charset.clone().unwrap_or_else(|| "ISO-8859-1".to_owned()),
        "icy_metaint": m.icy_metaint.map_or(crate::listen::ICY_METAINT, |n| n as usize),
        "signed_urls": m.token_key.is_some(),
        "max_listener_secs": m.max_listener_secs,
        "allow_agents": m.allow_agents,
        "deny_agents": m.deny_agents,
        "auth_url": m.auth_url,
        "htpasswd": m.htpasswd,
        "max_user_connections": m.max_user_connections,
        "intro": m.intro,
        "live": hub.is_some(),
        // Whether this node produces the mount (its source, transcoder, playlist or puller is
        // here), not relays it from another node.
        "produced_here": hub.as_ref().is_some_and(|h| !h.is_cluster_relay()),
        "content_type": hub.as_ref().map(|h| h.content_type.clone()),
        "listeners": hub.as_ref().map_or(0, |h| h.listeners.load(std::sync::atomic::Ordering::Relaxed)),
        "title": hub.as_ref().map(|h| h.meta().title),
        "transcode": m.transcode(),
        "relay": m.relay(),
        "playlist": m.playlist(),
        "filters": m.filters.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "filter_status": state
            .plugins
            .filter_status(&m.path)
            .map(|v| v.iter().map(|s| s.json()).collect::<Vec<_>>()),
        "policy": policy.as_ref().map(ToString::to_string),
        "routing": routing.to_string(),
        "station": m.station,
        "origin": state.coordinator.origin_node(&m.path),
    })
}

/// A mount's htpasswd and intro files, read on this node when the mount is created or changed,
/// so a missing or bad file is named at once rather than found by the first listener.
async fn check_files(state: &Control, m: &MountConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(p) = &m.htpasswd {
        if let Err(e) = state.listen.users.check(p).await {
            problems.push(format!("htpasswd: {e}"));
        }
    }
    if let Some(p) = &m.intro {
        if let Err(e) = state.listen.intros.check(p).await {
            problems.push(format!("intro: {e}"));
        }
    }
    problems
}

/// The mount request `r` creates, checked as `mount create` checks it (references against
/// `known`, then what only a node knows), with the password it gave; or every problem.
pub(crate) async fn build_mount(
    state: &Control,
    r: MountSettings,
    known: &Known<'_>,
) -> Result<(MountConfig, Option<String>), Vec<String>> {
    let applied = crate::model::edit::create(r, known);
    node_checks(state, applied, None).await
}

/// What only a node can check of an applied request: the files each node reads, then (once all
/// else is right) its plugins.
async fn node_checks(
    state: &Control,
    applied: crate::model::edit::Applied,
    before: Option<&MountConfig>,
) -> Result<(MountConfig, Option<String>), Vec<String>> {
    let crate::model::edit::Applied {
        mount: m,
        password,
        mut problems,
    } = applied;
    problems.extend(check_files(state, &m).await);
    if problems.is_empty() {
        problems.extend(state.plugins.check_attachments(&m, before));
    }
    if problems.is_empty() {
        Ok((m, password))
    } else {
        Err(problems)
    }
}

/// The stored configuration, as [`Known`] references.
type Lookups<'a> = (
    Box<dyn Fn(&str) -> Option<bool> + Send + Sync + 'a>,
    Box<dyn Fn(&str) -> bool + Send + Sync + 'a>,
);

fn stored(state: &Control) -> Lookups<'_> {
    (
        Box::new(|p: &str| state.coordinator.mount(p).map(|m| m.transcode().is_some())),
        Box::new(|s: &str| state.coordinator.station(s).is_some()),
    )
}

/// Hashes a new source password on a blocking thread: argon2 takes a core for tens of
/// milliseconds and 7 MiB, never an IO worker's.
async fn hash_off_io(password: &str) -> Result<String, Response> {
    let p = password.to_owned();
    match tokio::task::spawn_blocking(move || hash_password(&p)).await {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(Response::error(500, e)),
        Err(e) => Err(Response::error(500, e)),
    }
}

async fn create_mount(state: &Control, body: &[u8]) -> Response {
    let r: MountSettings = match crate::control::json_body(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let path = r.path.clone().unwrap_or_default();
    if state.coordinator.mount(&path).is_some() {
        return Response::error(
            409,
            format!("mount {path} already exists; use `tidecast mount edit`"),
        );
    }
    let (transcoded, station) = stored(state);
    let known = Known {
        transcoded: &*transcoded,
        station: &*station,
    };
    let built = build_mount(state, r, &known).await.and_then(|(m, given)| {
        match crate::control::stations::check_capacity(state, &m) {
            Some(p) => Err(vec![p]),
            None => Ok((m, given)),
        }
    });
    let (mut m, given) = match built {
        Ok(built) => built,
        Err(problems) => {
            return Response::json(
                400,
                &json!({ "error": problems.join("; "), "problems": problems }),
            )
        }
    };
    // A transcoded or relay mount has no source password: no hash at all, so nothing can
    // verify.
    let password = (m.kind() == crate::model::ProducerKind::Source)
        .then(|| given.unwrap_or_else(|| generate_password(16)));
    if let Some(p) = &password {
        m.source_password_hash = match hash_off_io(p).await {
            Ok(h) => h,
            Err(r) => return r,
        };
    }
    if let Err(e) = state.coordinator.put_mount(m.clone(), None).await {
        return super::storage_error(e);
    }
    info!(mount = %path, "mount created");
    state.hooks.emit(
        HookEvent::MountChange,
        json!({ "mount": path, "change": "created" }),
    );
    let mut view = mount_view(state, &m);
    if let Some(p) = password {
        view["password"] = json!(p);
    }
    Response::json(201, &view)
}

async fn edit_mount(state: &Control, mount: &str, body: &[u8]) -> Response {
    let r: MountSettings = match crate::control::json_body(body) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Some(before) = state.coordinator.mount(mount) else {
        return Response::error(404, format!("no such mount: {mount}"));
    };
    let (transcoded, station) = stored(state);
    let known = Known {
        transcoded: &*transcoded,
        station: &*station,
    };
    let mut applied = crate::model::edit::edit(before.clone(), r, &known);
    applied
        .problems
        .extend(crate::control::stations::check_capacity(
            state,
            &applied.mount,
        ));
    let (mut m, new_password) = match node_checks(state, applied, Some(&before)).await {
        Ok(edited) => edited,
        Err(problems) => {
            return Response::json(
                400,
                &json!({ "error": problems.join("; "), "problems": problems }),
            )
        }
    };
    if let Some(p) = &new_password {
        m.source_password_hash = match hash_off_io(p).await {
            Ok(h) => h,
            Err(r) => return r,
        };
    }
    if let Err(e) = state.coordinator.put_mount(m.clone(), Some(&before)).await {
        return super::storage_error(e);
    }
    info!(%mount, "mount edited");
    state.hooks.emit(
        HookEvent::MountChange,
        json!({ "mount": mount, "change": "edited" }),
    );
    Response::json(200, &mount_view(state, &m))
}

async fn delete_mount(state: &Control, mount: &str) -> Response {
    match state.coordinator.delete_mount(mount).await {
        Ok(true) => {
            // The server's reconcile task disconnects a live source of the deleted mount.
            info!(%mount, "mount deleted");
            state.hooks.emit(
                HookEvent::MountChange,
                json!({ "mount": mount, "change": "deleted" }),
            );
            Response::json(200, &json!({ "deleted": mount }))
        }
        Ok(false) => Response::error(404, format!("no such mount: {mount}")),
        Err(e) => super::storage_error(e),
    }
}
