//! The hand-written request-head reader every connection starts with, and what is derived from a
//! head: query pairs (re-encoded as redirects do), Basic credentials, media types, and the
//! canonical form the control plane replays to hyper, which hyper's parser (httparse, then
//! `http::Uri` for the target) must take whole and which must mean the same request.
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
            let canonical = head.to_http1();
            if canonical.len() > http::server::MAX_REPLAYED_HEAD {
                // Refused with a 431 before hyper sees it.
                return;
            }
            let mut slots = [httparse::EMPTY_HEADER; http::MAX_HEADERS + 1];
            let mut parsed = httparse::Request::new(&mut slots);
            match parsed.parse(&canonical) {
                Ok(httparse::Status::Complete(n)) => assert_eq!(n, canonical.len()),
                other => panic!("hyper's parser refuses {canonical:?}: {other:?}"),
            }
            let target = parsed.path.unwrap_or_default();
            assert!(target.parse::<::http::Uri>().is_ok(), "{target:?}");
            if canonical.len() > http::MAX_HEAD {
                return;
            }
            let (again, _) = http::parse_request(&canonical)
                .expect("the canonical form parses")
                .expect("complete");
            assert_eq!(again.method, head.method);
            assert_eq!(again.path, head.path);
            assert_eq!(again.query_bytes(), head.query_bytes());
            assert_eq!(again.headers, head.headers);
        }
        Ok(None) => assert!(data.len() < http::MAX_HEAD),
        Err(_) => {}
    }
});
