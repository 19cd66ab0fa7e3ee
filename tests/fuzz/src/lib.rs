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
