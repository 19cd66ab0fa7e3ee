//! Plugins as the configuration knows them: uploaded versions (by content hash) and references
//! with parameters attached to mounts and stations.

use serde::{Deserialize, Serialize};

/// Largest accepted plugin upload (and stored blob).
pub const MAX_PLUGIN_BYTES: usize = 16 * 1024 * 1024;

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Filter,
    Policy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Policy => "policy",
        }
    }
}

/// An uploaded plugin: its versions, oldest first. The newest one runs; older ones are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRecord {
    pub name: String,
    pub versions: Vec<PluginVersion>,
}

impl PluginRecord {
    /// A plugin with no version yet.
    pub fn new(name: &str) -> PluginRecord {
        PluginRecord {
            name: name.to_owned(),
            versions: Vec::new(),
        }
    }

    pub fn current(&self) -> Option<&PluginVersion> {
        self.versions.last()
    }

    /// Makes `version` the current (last) one; an old build pushed again moves there.
    pub fn push(&mut self, version: PluginVersion) {
        self.versions.retain(|v| v.hash != version.hash);
        self.versions.push(version);
    }
}

/// One uploaded build of a plugin; the bytes are stored under `hash` (SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginVersion {
    pub hash: String,
    pub size: u64,
    pub kind: Kind,
    /// The `tidecast:plugin` version it implements.
    pub wit_version: String,
    /// Unix seconds.
    pub uploaded_at: u64,
}

/// A plugin attached to a mount, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
}

impl std::fmt::Display for PluginRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { ":" } else { "," })?;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Parses `NAME[:key=value,...]`. A value may contain commas: a segment without `=` continues
/// the previous value.
pub fn parse_ref(spec: &str) -> Result<PluginRef, String> {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    validate_name(name)?;
    let mut params: Vec<(String, String)> = Vec::new();
    for seg in rest
        .split(',')
        .filter(|s| !rest.is_empty() || !s.is_empty())
    {
        match seg.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let k = k.trim().to_owned();
                if params.iter().any(|(pk, _)| *pk == k) {
                    return Err(format!("{spec:?}: parameter {k} given twice"));
                }
                params.push((k, v.to_owned()));
            }
            _ => match params.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(seg);
                }
                None => {
                    return Err(format!(
                        "{spec:?}: parameters are key=value pairs after the name, e.g. gain:db=-6"
                    ))
                }
            },
        }
    }
    Ok(PluginRef {
        name: name.to_owned(),
        params,
    })
}

/// Plugin names: 1–64 of `a-z0-9-_`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid plugin name {name:?}: use 1 to 64 of a-z, 0-9, '-' and '_'"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plugin_refs() {
        let r = parse_ref("gain:db=-6").unwrap();
        assert_eq!(r.name, "gain");
        assert_eq!(r.params, vec![("db".to_owned(), "-6".to_owned())]);
        let r = parse_ref("rw:template={title}, live,uppercase=yes").unwrap();
        assert_eq!(r.params[0].1, "{title}, live");
        assert_eq!(r.params[1].1, "yes");
        assert_eq!(r.to_string(), "rw:template={title}, live,uppercase=yes");
        assert!(parse_ref("gain").unwrap().params.is_empty());
        assert!(parse_ref("Gain").is_err());
        assert!(parse_ref("gain:-6").is_err());
        assert!(parse_ref("gain:db=1,db=2").is_err());
    }
}
