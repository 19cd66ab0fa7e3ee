//! Files a mount names that each node reads from its own disk: listener user files
//! (`htpasswd`, [`parse_users`]) and intro files (`intro`, [`parse_intro`]). Deploy them to every
//! node, like the TLS certificates, into the directory the operator names (`--files-dir`,
//! default `DATA_DIR/files`): a mount names a file in it, relative or absolute, and nothing
//! outside it is ever opened (the admin API must not read `/proc/self/environ`). A problem in a
//! file is named by its line, never by what the line holds.
//!
//! A file is looked at again at most once a second, when a listener needs it, and re-read when
//! its modification time or size changed. A file that does not parse is refused whole, with every
//! problem named in the log, and what was read before stays in use; with nothing read before, the
//! caller gets the error (a user file then refuses listeners, 503; an intro is skipped).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tidecast_codecs::StreamFormat;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use crate::sync::Locked;

/// How often a file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a file gives nothing to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("{0:?} is not a file in the files directory {1} (--files-dir)")]
    Outside(String, PathBuf),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} is larger than {1} bytes")]
    TooLarge(PathBuf, u64),
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// What a kind of file is: its name in logs, its size bound and its parser.
pub struct Kind<T> {
    pub what: &'static str,
    pub max_bytes: u64,
    /// The file's contents, or every problem in it.
    pub parse: fn(Vec<u8>) -> Result<T, Vec<String>>,
}

struct Loaded<T> {
    /// Modification time and size of the file as last read (or last failed to read).
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    /// The last good contents, if any.
    good: Option<Arc<T>>,
    /// Why the current file is not in use, if it is not.
    error: Option<FileError>,
}

/// The files of one kind this node's mounts name, each read when it changes.
pub struct Watched<T> {
    kind: Kind<T>,
    /// The only directory files are read from.
    dir: PathBuf,
    files: Mutex<HashMap<PathBuf, Loaded<T>>>,
}

/// The file `name` (relative to `dir`, or absolute) stands for, if it is inside `dir`: no `..`,
/// and no link inside that leads out of it.
pub fn resolve(dir: &Path, name: &str) -> Result<PathBuf, FileError> {
    use std::path::Component;
    let outside = || FileError::Outside(name.to_owned(), dir.to_owned());
    let given = Path::new(name);
    let relative = if given.is_absolute() {
        given.strip_prefix(dir).map_err(|_| outside())?
    } else {
        given
    };
    if name.is_empty()
        || relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(outside());
    }
    let path = dir.join(relative);
    // A link inside the directory that leads out of it is outside too.
    if let (Ok(real), Ok(real_dir)) = (path.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
    }
    Ok(path)
}

impl<T> Watched<T> {
    /// Files of `kind`, read from `dir` only.
    pub fn new(kind: Kind<T>, dir: PathBuf) -> Watched<T> {
        Watched {
            kind,
            dir,
            files: Mutex::default(),
        }
    }

    /// Reads and parses file `name` now, as a mount being created or changed is checked.
    pub async fn check(&self, name: &str) -> Result<T, FileError> {
        read(&self.kind, &resolve(&self.dir, name)?).await
    }

    /// The contents of file `name`: the last good ones, re-read first if it changed.
    pub async fn get(&self, name: &str) -> Result<Arc<T>, FileError> {
        let path = resolve(&self.dir, name)?;
        let path = path.as_path();
        let now = Instant::now();
        let previous = self.files.with(|f| {
            f.get(path).map(|l| {
                let fresh = l.checked + RECHECK > now;
                (l.stamp, fresh, l.good.clone(), l.error.clone())
            })
        });
        let (old_stamp, old_good, old_error) = match previous {
            Some((_, true, good, error)) => return good.ok_or_else(|| unread(path, error)),
            Some((stamp, false, good, error)) => (stamp, good, error),
            None => (None, None, None),
        };
        let stamp = tokio::fs::metadata(path)
            .await
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let (good, error) = if stamp.is_some() && stamp == old_stamp {
            (old_good, old_error)
        } else {
            match read(&self.kind, path).await {
                Ok(contents) => {
                    info!(file = %path.display(), "{} loaded", self.kind.what);
                    (Some(Arc::new(contents)), None)
                }
                Err(e) => {
                    let kept = if old_good.is_some() {
                        "what was read before stays in use"
                    } else {
                        "it is not used until it is fixed"
                    };
                    warn!(error = %e, "{} refused; {kept}", self.kind.what);
                    (old_good, Some(e))
                }
            }
        };
        self.files.locked().insert(
            path.to_owned(),
            Loaded {
                stamp,
                checked: now,
                good: good.clone(),
                error: error.clone(),
            },
        );
        good.ok_or_else(|| unread(path, error))
    }
}

/// Reads and parses the file of `kind` at `path` (at most the kind's size bound), now.
async fn read<T>(kind: &Kind<T>, path: &Path) -> Result<T, FileError> {
    let failed = |e: std::io::Error| FileError::Read(path.to_owned(), e.to_string());
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let max = kind.max_bytes;
    let mut data = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut data)
        .await
        .map_err(failed)?;
    if data.len() as u64 > max {
        return Err(FileError::TooLarge(path.to_owned(), max));
    }
    (kind.parse)(data).map_err(|problems| FileError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

fn unread(path: &Path, e: Option<FileError>) -> FileError {
    e.unwrap_or_else(|| FileError::Read(path.to_owned(), "not read yet".to_owned()))
}

/// User names and their password hashes, as one htpasswd file declares them.
pub type Users = HashMap<String, String>;

/// Listener user files: `user:hash` lines (`#` comments and blank lines skipped) with the hashes
/// `auth::check_hash` accepts (bcrypt, argon2, SHA-crypt, MD5-crypt/apr1 or `{SHA}`); at most
/// 4 MiB (about 40 000 bcrypt entries).
pub const USERS: Kind<Users> = Kind {
    what: "listener user file",
    max_bytes: 4 << 20,
    parse: parse_users,
};

/// The entries of an htpasswd file, or every problem in it (by line number).
pub fn parse_users(data: Vec<u8>) -> Result<Users, Vec<String>> {
    let text = String::from_utf8_lossy(&data);
    let mut users = Users::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = n + 1;
        // No problem quotes the line: the file may not be what the operator thinks it is.
        let Some((user, hash)) = line.split_once(':') else {
            problems.push(format!("line {n}: not user:hash"));
            continue;
        };
        let (user, hash) = (user.trim(), hash.trim());
        if user.is_empty() {
            problems.push(format!("line {n}: no user name"));
            continue;
        }
        if crate::auth::check_hash(hash).is_err() {
            problems.push(format!(
                "line {n}: not a supported hash (bcrypt, argon2, SHA-crypt, MD5-crypt/apr1 or {{SHA}}) within the cost bounds"
            ));
            continue;
        }
        if users.insert(user.to_owned(), hash.to_owned()).is_some() {
            problems.push(format!("line {n}: a user listed before"));
        }
    }
    if problems.is_empty() {
        Ok(users)
    } else {
        Err(problems)
    }
}

/// An intro: audio every new listener of a mount hears before the live stream, in the mount's
/// own format (checked as each listener joins: a mount's format is its source's).
pub struct Intro {
    pub format: StreamFormat,
    pub data: Bytes,
}

/// Intro files: MP3, AAC (ADTS) or Ogg audio, at most 8 MiB (four minutes at 256 kbit/s).
pub const INTROS: Kind<Intro> = Kind {
    what: "intro file",
    max_bytes: 8 << 20,
    parse: parse_intro,
};

/// The format of an intro file, from its first bytes: an Ogg page, an ID3 tag or MPEG audio
/// frame sync (MP3), or an ADTS header (AAC).
pub fn parse_intro(data: Vec<u8>) -> Result<Intro, Vec<String>> {
    let format = match data.as_slice() {
        [b'O', b'g', b'g', b'S', ..] => StreamFormat::Ogg,
        [b'I', b'D', b'3', ..] => StreamFormat::Mp3,
        // 11 sync bits; layer bits 00 are ADTS (AAC), any other layer is MPEG audio.
        [0xff, b, ..] if b & 0xe0 == 0xe0 && b & 0x06 == 0 => StreamFormat::Adts,
        [0xff, b, ..] if b & 0xe0 == 0xe0 => StreamFormat::Mp3,
        [] => return Err(vec!["the file is empty".to_owned()]),
        _ => return Err(vec!["not MP3, AAC (ADTS) or Ogg audio".to_owned()]),
    };
    Ok(Intro {
        format,
        data: Bytes::from(data),
    })
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
        let users = parse_users(ok.into_bytes()).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice"], BCRYPT);
        let bad = format!("alice:{BCRYPT}\nno colon\n:{BCRYPT}\ncarol:secret\nalice:{BCRYPT}\n");
        let problems = parse_users(bad.into_bytes()).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("line 2:"), "{problems:?}");
        assert!(
            problems[2].starts_with("line 4: not a supported hash"),
            "{problems:?}"
        );
        assert!(
            problems[3].starts_with("line 5: a user listed before"),
            "{problems:?}"
        );
        // Nothing of a line is echoed: /proc/self/environ gave back a password this way.
        let secret = b"HOME=/root\0TIDECAST_ADMIN_PASSWORD=s3cret:x\0".to_vec();
        let problems = parse_users(secret).unwrap_err();
        assert!(
            problems
                .iter()
                .all(|p| !p.contains("s3cret") && !p.contains("HOME")),
            "{problems:?}"
        );
    }

    #[test]
    fn only_files_in_the_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("users"), "").unwrap();
        assert_eq!(resolve(d, "users").unwrap(), d.join("users"));
        let abs = d.join("users");
        assert_eq!(resolve(d, abs.to_str().unwrap()).unwrap(), abs);
        for bad in ["/proc/self/environ", "../users", "a/../../x", "", "/"] {
            assert!(
                matches!(resolve(d, bad), Err(FileError::Outside(..))),
                "{bad}"
            );
        }
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        assert!(matches!(resolve(d, "link"), Err(FileError::Outside(..))));
    }

    #[test]
    fn intro_formats() {
        let kind = |b: &[u8]| parse_intro(b.to_vec()).map(|i| i.format);
        assert_eq!(kind(b"OggS\0\x02"), Ok(StreamFormat::Ogg));
        assert_eq!(kind(b"ID3\x04"), Ok(StreamFormat::Mp3));
        assert_eq!(kind(&[0xff, 0xfb, 0x90, 0x00]), Ok(StreamFormat::Mp3));
        assert_eq!(kind(&[0xff, 0xf1, 0x50, 0x80]), Ok(StreamFormat::Adts));
        assert!(kind(b"RIFF....WAVE").is_err());
        assert!(kind(b"").is_err());
    }

    /// A file that turns bad keeps what was read before; one that never was good is an error.
    #[tokio::test]
    async fn a_bad_new_file_keeps_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let files = Watched::new(USERS, dir.path().to_owned());
        assert!(matches!(files.get("users").await, Err(FileError::Read(..))));
        std::fs::write(&path, format!("alice:{BCRYPT}\n")).unwrap();
        // Within a second of the last look the file is not looked at again.
        assert!(files.get("users").await.is_err());
        files.files.locked().clear();
        assert_eq!(files.get("users").await.unwrap().len(), 1);
        std::fs::write(&path, format!("alice:{BCRYPT}\nbob:clear-text\n")).unwrap();
        {
            let mut l = files.files.locked();
            let entry = l.get_mut(&path).unwrap();
            entry.checked = entry.checked.checked_sub(RECHECK).unwrap();
        }
        assert_eq!(
            files.get("users").await.unwrap().len(),
            1,
            "the old entries stay"
        );
        std::fs::write(&path, vec![b'#'; (4 << 20) + 1]).unwrap();
        assert!(matches!(
            read(&USERS, &path).await,
            Err(FileError::TooLarge(..))
        ));
    }
}
