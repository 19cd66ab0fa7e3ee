//! Codec-level building blocks of tidecast, free of IO and of tokio.
//!
//! Today this crate holds the frame-boundary splitters that the ingest path uses to cut a source's
//! byte stream into chunks a listener can join on ([`framing`]). Decoders, resamplers and encoders
//! for transcoded mounts will live here too, so that a codec never learns about sockets.

pub mod framing;
mod ogg_crc;

pub use framing::{Piece, SplitStats, Splitter, StreamFormat};
