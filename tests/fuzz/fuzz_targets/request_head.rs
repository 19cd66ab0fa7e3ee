//! The hand-written request-head reader every connection starts with, and what is derived from a
//! head: query pairs (re-encoded as redirects do), Basic credentials, media types.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidecast::http;

fuzz_target!(|data: &[u8]| {
    match http::parse_request(data) {
        Ok(Some((head, body_start))) => {
            assert!(body_start <= data.len());
            let pairs = head.query_bytes();
            // Rebuilt queries are safe in a header: no control characters, no spaces.
            let rebuilt = http::encode_form(&pairs);
            assert!(rebuilt.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(http::parse_form(&rebuilt), pairs);
            let _ = head.basic_auth();
            for (_, value) in &head.headers {
                assert!(!value.contains(['\r', '\n', '\0']));
                let _ = http::is_media_type(value);
            }
        }
        Ok(None) => assert!(data.len() < http::MAX_HEAD),
        Err(_) => {}
    }
});
