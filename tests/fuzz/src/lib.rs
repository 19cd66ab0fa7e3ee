//! What the fuzz targets share.

use tidecast_codecs::StreamFormat;

/// The stream format a control byte picks (its two low bits), so one input chooses the parser
/// too.
pub fn format_of(control: u8) -> StreamFormat {
    match control % 4 {
        0 => StreamFormat::Mp3,
        1 => StreamFormat::Adts,
        2 => StreamFormat::Ogg,
        _ => StreamFormat::Passthrough,
    }
}

/// Lets tidecast catch a panic inside a codec library, as it does in a node (libfuzzer-sys's
/// own hook would abort at the panic itself). A panic in tidecast's own code still aborts here,
/// and one that nothing catches still reaches libfuzzer-sys: both remain findings.
pub fn let_tidecast_catch_library_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let in_a_library = info.location().is_some_and(|l| {
                l.file().contains("/.cargo/registry/") || l.file().starts_with("/rustc/")
            });
            if !in_a_library {
                eprintln!("{info}");
                std::process::abort();
            }
        }))
    });
}
