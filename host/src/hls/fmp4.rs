//! Opus HLS segments as fragmented MP4 (CMAF, RFC 8216 §3.3): an init segment per Opus link
//! header, and a fragment per segment. The boxes are encoded by `mp4-atom`.
//!
//! - The init segment (`ftyp`, `moov`) holds one audio track whose `Opus` sample entry carries
//!   the link's `OpusHead` as a `dOps` box ("Encapsulation of Opus in ISO Base Media File
//!   Format"). Its timescale is HLS's 90 kHz rather than Opus's 48 kHz: a fragment's `tfdt` is
//!   then the very timestamp a packed-audio rendition of the same source carries in its ID3
//!   tag, and a player switching between them sees one timeline. Opus packets last multiples
//!   of 2.5 ms, which 90 kHz counts exactly.
//! - A fragment is an `emsg` with the title as an ID3 tag (the `https://aomedia.org/emsg/ID3`
//!   scheme, which hls.js turns into metadata cues), then `moof` (`tfdt`: the first sample's
//!   time; `trun`: each packet's duration and size) and `mdat`.

use bytes::Bytes;
use mp4_atom::{
    Audio, Dinf, Dops, Dref, Emsg, EmsgTimestamp, Encode, Ftyp, Hdlr, Mdhd, Mdia, Mfhd, Minf, Moof,
    Moov, Mvex, Mvhd, OpusChannelMapping, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf, Trak,
    Trex, Trun, TrunEntry, TrunSamples, Url,
};
use tidecast_codecs::ogg_opus::OpusHead;

/// The track's timescale: HLS's 90 kHz clock.
pub const TIMESCALE: u32 = 90_000;

/// Opus decodes at 48 kHz.
const OPUS_RATE: u16 = 48_000;

/// Samples at 48 kHz on the 90 kHz clock (exact for Opus's multiples of 2.5 ms).
fn ticks(samples: u32) -> u32 {
    (u64::from(samples) * u64::from(TIMESCALE) / u64::from(OPUS_RATE)) as u32
}

/// The scheme of `emsg` boxes that carry an ID3 tag.
const ID3_SCHEME: &str = "https://aomedia.org/emsg/ID3";

/// The init segment of an Opus link with `head`; `None` if the crate refuses the box (a
/// header [`OpusHead::parse`] let through never is).
pub fn init(head: &OpusHead) -> Option<Bytes> {
    let channel_mapping = (head.mapping_family != 0).then(|| OpusChannelMapping {
        family: head.mapping_family,
        stream_count: head.mapping[0],
        coupled_count: head.mapping[1],
        channel_mapping: head.mapping[2..].to_vec(),
    });
    let opus = mp4_atom::Opus {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(head.channels),
            sample_size: 16,
            sample_rate: OPUS_RATE.into(),
        },
        dops: Dops {
            output_channel_count: head.channels,
            pre_skip: head.pre_skip,
            input_sample_rate: head.input_rate,
            output_gain: head.output_gain,
            channel_mapping,
        },
        btrt: None,
    };
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: TIMESCALE,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: 2,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: vec![Trex {
                track_id: 1,
                default_sample_description_index: 1,
                ..Default::default()
            }],
        }),
        trak: vec![Trak {
            tkhd: Tkhd {
                track_id: 1,
                enabled: true,
                in_movie: true,
                volume: 1.into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: TIMESCALE,
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr: Hdlr {
                    handler: b"soun".into(),
                    name: "SoundHandler".into(),
                },
                minf: Minf {
                    smhd: Some(Smhd::default()),
                    dinf: Dinf {
                        dref: Dref {
                            entries: vec![Url {
                                location: String::new(),
                            }
                            .into()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd {
                            codecs: vec![opus.into()],
                        },
                        stco: Some(Stco::default()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut out = Vec::new();
    ftyp.encode(&mut out).ok()?;
    moov.encode(&mut out).ok()?;
    Some(out.into())
}

/// A fragment: `seq` (its media sequence number), the packets' bytes back to back with each
/// one's (samples at 48 kHz, size), the first sample's time on the 90 kHz clock, and its ID3
/// tag (the title), if any.
pub fn fragment(
    seq: u64,
    packets: &[u8],
    sizes: &[(u32, u32)],
    start: u64,
    id3: Option<&[u8]>,
) -> Option<Bytes> {
    let mut out = Vec::with_capacity(packets.len() + 64 + sizes.len() * 8);
    if let Some(tag) = id3 {
        Emsg {
            timescale: TIMESCALE,
            presentation_time: EmsgTimestamp::Absolute(start),
            event_duration: 0,
            id: seq as u32,
            scheme_id_uri: ID3_SCHEME.into(),
            value: String::new(),
            message_data: tag.to_vec(),
        }
        .encode(&mut out)
        .ok()?;
    }
    let mut moof = Moof {
        mfhd: Mfhd {
            sequence_number: seq as u32,
        },
        traf: vec![Traf {
            tfhd: Tfhd {
                track_id: 1,
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(Tfdt {
                base_media_decode_time: start,
            }),
            trun: vec![Trun {
                data_offset: Some(0),
                samples: TrunSamples::Explicit(
                    sizes
                        .iter()
                        .map(|&(samples, size)| TrunEntry {
                            duration: Some(ticks(samples)),
                            size: Some(size),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }],
            ..Default::default()
        }],
    };
    // The samples start after the moof and the mdat header: measure the moof, then say so.
    let mut probe = Vec::new();
    moof.encode(&mut probe).ok()?;
    let offset = i32::try_from(probe.len() + 8).ok()?;
    moof.traf[0].trun[0].data_offset = Some(offset);
    moof.encode(&mut out).ok()?;
    let mdat_len = u32::try_from(packets.len() + 8).ok()?;
    out.extend_from_slice(&mdat_len.to_be_bytes());
    out.extend_from_slice(b"mdat");
    out.extend_from_slice(packets);
    Some(out.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mp4_atom::{Any, Decode};

    #[test]
    fn an_init_and_a_fragment_decode_as_written() {
        let head = OpusHead {
            channels: 2,
            pre_skip: 312,
            input_rate: 44_100,
            output_gain: 0,
            mapping_family: 0,
            mapping: vec![],
        };
        let init = init(&head).unwrap();
        let buf = &mut std::io::Cursor::new(&init[..]);
        let _ftyp = mp4_atom::Ftyp::decode(buf).unwrap();
        let moov = Moov::decode(buf).unwrap();
        let stsd = &moov.trak[0].mdia.minf.stbl.stsd;
        match &stsd.codecs[0] {
            mp4_atom::Codec::Opus(o) => {
                assert_eq!(o.dops.pre_skip, 312);
                assert_eq!(o.dops.output_channel_count, 2);
            }
            other => panic!("{other:?}"),
        }

        let packets = [1u8, 2, 3, 4, 5];
        let frag = fragment(7, &packets, &[(960, 2), (960, 3)], 180_000, Some(b"ID3tag")).unwrap();
        let buf = &mut std::io::Cursor::new(&frag[..]);
        let Any::Emsg(emsg) = Any::decode(buf).unwrap() else {
            panic!("no emsg first")
        };
        assert_eq!(emsg.message_data, b"ID3tag");
        let Any::Moof(moof) = Any::decode(buf).unwrap() else {
            panic!("no moof")
        };
        let traf = &moof.traf[0];
        assert_eq!(traf.tfdt.as_ref().unwrap().base_media_decode_time, 180_000);
        let durations: Vec<_> = traf.trun[0].samples.iter().map(|e| e.duration).collect();
        assert_eq!(durations, [Some(1800), Some(1800)]);
        // The data offset points at the packets, counted from the moof's first byte.
        let moof_at = frag.windows(4).position(|w| w == b"moof").unwrap() - 4;
        let data = moof_at + traf.trun[0].data_offset.unwrap() as usize;
        assert_eq!(&frag[data..], &packets);
    }
}
