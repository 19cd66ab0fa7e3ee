//! A playlist mount's M3U or PLS file from the media library: every entry it yields is a valid
//! media key of a playable file, and there are never more than the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let keys = tidecast::playlist::parse_playlist(&text, "shows/night");
    assert!(keys.len() <= 10_000);
    for k in keys {
        assert!(tidecast::media::validate_key(&k).is_ok(), "{k:?}");
        assert!(tidecast::media::is_audio(&k));
    }
});
