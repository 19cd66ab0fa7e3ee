//! Reading a stream from an HTTP upstream into a hub: another node's (`ingest/relay.rs`) or an
//! outside server's (`ingest/pull.rs`, relay mounts). ICY metadata blocks are taken out of the
//! audio and their titles go to the hub; the audio is split into frames as a source's is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tidecast_codecs::Splitter;

use crate::hub::Hub;

/// Why a copy of an upstream's stream (another node's, or an outside server's) stopped.
pub(crate) enum Stop {
    /// Nobody has used the hub for the pump's linger (20 s for relays between nodes, 5 s for
    /// on-demand relay mounts): the pull ends.
    NoListeners,
    /// The upstream's stream ended or stalled (this is why): a relay looks for the mount's next
    /// origin, a relay mount's puller tries its URLs again.
    Origin(&'static str),
}

/// Copies the origin's stream into `hub`, taking ICY metadata blocks out (their titles go to
/// the hub). Returns why it stopped: the origin's stream ended or stalled, or (with a
/// `linger`) nobody used the hub for that long.
pub(crate) async fn pump(
    body: &mut Incoming,
    metaint: Option<usize>,
    hub: &Arc<Hub>,
    charset: Option<&str>,
    linger: Option<Duration>,
) -> Stop {
    let mut splitter = Splitter::new(hub.format);
    let mut pieces = Vec::new();
    let mut icy = IcyDemux::new(metaint);
    let mut audio = Vec::with_capacity(16 * 1024);
    let mut idle_since: Option<Instant> = None;
    loop {
        let data = match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Err(_) => return Stop::Origin("origin sent nothing for 5 s"),
            Ok(Some(Err(_))) => return Stop::Origin("read error"),
            Ok(None) => return Stop::Origin("origin ended the stream"),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: nothing to relay.
                Err(_) => continue,
            },
        };
        audio.clear();
        if let Some(title) = icy.feed(&data, &mut audio) {
            hub.set_title(&decode_title(&title, charset));
        }
        splitter.push(&audio, &mut pieces);
        hub.push_pieces(&mut pieces);
        // Unused: no listener, no transcoder reading it (told by the hub's counts, not by who
        // holds it: its HLS cutter does, for as long as it lives).
        match linger {
            Some(linger) if !hub.in_use() => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > linger {
                    return Stop::NoListeners;
                }
            }
            _ => idle_since = None,
        }
    }
}

fn decode_title(raw: &[u8], charset: Option<&str>) -> String {
    if charset.is_some_and(|c| c.eq_ignore_ascii_case("UTF-8")) {
        String::from_utf8_lossy(raw).into_owned()
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    }
}

/// Separates an ICY stream (`metaint` audio bytes, a length byte, that many 16-byte blocks of
/// metadata, and so on) into audio and titles.
pub struct IcyDemux {
    metaint: Option<usize>,
    /// Audio bytes until the next length byte.
    audio_left: usize,
    /// Metadata bytes still to collect, once the length byte is read.
    meta_left: Option<usize>,
    meta: Vec<u8>,
}

impl IcyDemux {
    pub fn new(metaint: Option<usize>) -> IcyDemux {
        IcyDemux {
            metaint,
            audio_left: metaint.unwrap_or(0),
            meta_left: None,
            meta: Vec::new(),
        }
    }

    /// Appends the audio of `data` to `audio`; the last complete title in it, if any.
    pub fn feed(&mut self, mut data: &[u8], audio: &mut Vec<u8>) -> Option<Vec<u8>> {
        let Some(metaint) = self.metaint else {
            audio.extend_from_slice(data);
            return None;
        };
        let mut title = None;
        while !data.is_empty() {
            match self.meta_left {
                None if self.audio_left > 0 => {
                    let n = self.audio_left.min(data.len());
                    audio.extend_from_slice(&data[..n]);
                    self.audio_left -= n;
                    data = &data[n..];
                }
                None => {
                    self.meta_left = Some(usize::from(data[0]) * 16);
                    self.meta.clear();
                    data = &data[1..];
                }
                Some(left) => {
                    let n = left.min(data.len());
                    self.meta.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if left == n {
                        self.meta_left = None;
                        self.audio_left = metaint;
                        if let Some(t) = stream_title(&self.meta) {
                            title = Some(t);
                        }
                    } else {
                        self.meta_left = Some(left - n);
                    }
                }
            }
        }
        title
    }
}

/// The value of `StreamTitle='…';` in a metadata block.
fn stream_title(block: &[u8]) -> Option<Vec<u8>> {
    let start = block.windows(13).position(|w| w == b"StreamTitle='")? + 13;
    let rest = &block[start..];
    let end = rest.windows(2).position(|w| w == b"';")?;
    Some(rest[..end].to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn icy_metadata_is_taken_out_at_any_read_size() {
        let mut stream = Vec::new();
        let meta = |t: &str| {
            let body = format!("StreamTitle='{t}';");
            let blocks = body.len().div_ceil(16);
            let mut m = vec![blocks as u8];
            m.extend_from_slice(body.as_bytes());
            m.resize(1 + blocks * 16, 0);
            m
        };
        stream.extend_from_slice(&[1u8; 10]);
        stream.extend(meta("One"));
        stream.extend_from_slice(&[2u8; 10]);
        stream.push(0);
        stream.extend_from_slice(&[3u8; 10]);
        stream.extend(meta("Two"));
        for size in [1, 3, 7, 100] {
            let mut d = IcyDemux::new(Some(10));
            let mut audio = Vec::new();
            let mut titles = Vec::new();
            for chunk in stream.chunks(size) {
                if let Some(t) = d.feed(chunk, &mut audio) {
                    titles.push(String::from_utf8(t).unwrap());
                }
            }
            let mut want = vec![1u8; 10];
            want.extend_from_slice(&[2u8; 10]);
            want.extend_from_slice(&[3u8; 10]);
            assert_eq!(audio, want, "read size {size}");
            assert_eq!(titles.last().map(String::as_str), Some("Two"));
            if size == 1 {
                assert_eq!(titles, ["One", "Two"]);
            }
        }
    }
}
