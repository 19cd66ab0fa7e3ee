//! The admin API's mount request bodies: parsed, validated and applied to a mount.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = tidecast::model::check_mount_json(data) {
        // What is accepted is a valid mount path.
        assert!(tidecast::model::validate_mount_path(&m.path).is_ok());
    }
});
