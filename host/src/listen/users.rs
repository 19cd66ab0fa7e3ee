//! Listener user files: a mount with `htpasswd` admits listeners whose Basic credentials match an
//! entry of that file, as Apache's and Icecast's htpasswd authentication do.
//!
//! The file is read on each node that serves listeners (deploy it to every node, like the TLS
//! certificates), looked at again at most once a second, and re-read when its modification time
//! or size changed. A file with any bad line is refused whole, with every problem named in the
//! log, and the entries read before stay in use; with none read before, listeners are refused
//! (503), never let in. Entries are `user:hash` lines (`#` comments and blank lines skipped) with
//! the hashes `auth::check_hash` accepts: bcrypt, argon2, SHA-crypt, MD5-crypt/apr1 or `{SHA}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::sync::Locked;

/// The largest user file read (about 40 000 bcrypt entries).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// How often a file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// User names and their hashes, as one file declares them.
pub type Users = HashMap<String, String>;

/// Why a user file gives no entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge(PathBuf),
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

struct Loaded {
    /// Modification time and size of the file as last read (or last failed to read).
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    /// The last good entries, if any.
    users: Option<Arc<Users>>,
    /// Why the current file is not in use, if it is not.
    error: Option<UsersError>,
}

/// The user files of this node's mounts, each read when it changes.
#[derive(Default)]
pub struct UserFiles {
    files: Mutex<HashMap<PathBuf, Loaded>>,
}

impl UserFiles {
    /// The entries of the file at `path`: the last good ones, re-read first if the file changed.
    pub async fn users(&self, path: &Path) -> Result<Arc<Users>, UsersError> {
        let now = Instant::now();
        let previous = self.files.with(|f| {
            f.get(path).map(|l| {
                (
                    l.stamp,
                    l.checked + RECHECK > now,
                    l.users.clone(),
                    l.error.clone(),
                )
            })
        });
        let (old_stamp, old_users, old_error) = match previous {
            Some((_, true, users, error)) => {
                return users.ok_or_else(|| error_or_read(path, error))
            }
            Some((stamp, false, users, error)) => (stamp, users, error),
            None => (None, None, None),
        };
        let stamp = tokio::fs::metadata(path)
            .await
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let (users, error) = if stamp.is_some() && stamp == old_stamp {
            (old_users, old_error)
        } else {
            match read(path).await {
                Ok(users) => {
                    info!(file = %path.display(), users = users.len(), "listener user file loaded");
                    (Some(Arc::new(users)), None)
                }
                Err(e) => {
                    let kept = if old_users.is_some() {
                        "the entries read before stay in use"
                    } else {
                        "its mounts refuse listeners until it is fixed"
                    };
                    warn!(error = %e, "listener user file refused; {kept}");
                    (old_users, Some(e))
                }
            }
        };
        self.files.locked().insert(
            path.to_owned(),
            Loaded {
                stamp,
                checked: now,
                users: users.clone(),
                error: error.clone(),
            },
        );
        users.ok_or_else(|| error_or_read(path, error))
    }
}

fn error_or_read(path: &Path, e: Option<UsersError>) -> UsersError {
    e.unwrap_or_else(|| UsersError::Read(path.to_owned(), "not read yet".to_owned()))
}

/// Reads and parses the file at `path` (at most [`MAX_FILE_BYTES`]).
pub async fn read(path: &Path) -> Result<Users, UsersError> {
    let failed = |e: std::io::Error| UsersError::Read(path.to_owned(), e.to_string());
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .await
        .map_err(failed)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(UsersError::TooLarge(path.to_owned()));
    }
    parse(&String::from_utf8_lossy(&text)).map_err(|problems| UsersError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// The entries of an htpasswd file's text, or every problem in it (by line number).
pub fn parse(text: &str) -> Result<Users, Vec<String>> {
    let mut users = Users::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = n + 1;
        let Some((user, hash)) = line.split_once(':') else {
            problems.push(format!("line {n}: not user:hash"));
            continue;
        };
        let user = user.trim();
        if user.is_empty() {
            problems.push(format!("line {n}: no user name"));
            continue;
        }
        if let Err(e) = crate::auth::check_hash(hash.trim()) {
            problems.push(format!("line {n} ({user}): {e}"));
            continue;
        }
        if users
            .insert(user.to_owned(), hash.trim().to_owned())
            .is_some()
        {
            problems.push(format!("line {n}: {user} is listed twice"));
        }
    }
    if problems.is_empty() {
        Ok(users)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BCRYPT: &str = "$2y$05$muIOgVN.FS.l9/fTkVrv3uHyloEmr19ke0m1fJ8NWp/JvRwqOFhdu";

    #[test]
    fn every_bad_line_is_named() {
        let ok =
            format!("# listeners\n\nalice:{BCRYPT}\r\nbob:{{SHA}}W8r/fyL/UzygmbNAjq2HbA67qac=\n");
        let users = parse(&ok).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice"], BCRYPT);
        let bad = format!("alice:{BCRYPT}\nno colon\n:{BCRYPT}\ncarol:secret\nalice:{BCRYPT}\n");
        let problems = parse(&bad).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 2:"), "{problems:?}");
        assert!(
            problems[2].contains("line 4 (carol): not a supported hash"),
            "{problems:?}"
        );
        assert!(
            problems[3].contains("alice is listed twice"),
            "{problems:?}"
        );
    }

    /// A file that turns bad keeps the entries read before; one that never was good refuses.
    #[tokio::test]
    async fn a_bad_new_file_keeps_the_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let files = UserFiles::default();
        assert!(matches!(
            files.users(&path).await,
            Err(UsersError::Read(..))
        ));
        std::fs::write(&path, format!("alice:{BCRYPT}\n")).unwrap();
        // Within a second of the last look the file is not looked at again.
        assert!(files.users(&path).await.is_err());
        files.files.locked().clear();
        assert_eq!(files.users(&path).await.unwrap().len(), 1);
        std::fs::write(&path, format!("alice:{BCRYPT}\nbob:clear-text\n")).unwrap();
        {
            let mut l = files.files.locked();
            let entry = l.get_mut(&path).unwrap();
            entry.checked = entry.checked.checked_sub(RECHECK).unwrap();
        }
        let users = files.users(&path).await.unwrap();
        assert_eq!(users.len(), 1, "the old entries stay");
        std::fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(read(&path).await, Err(UsersError::TooLarge(_))));
    }
}
