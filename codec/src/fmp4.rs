//! Fragmented MP4 (ISO BMFF) for one H.264 video track: the viewer's MP4 recordings
//! ([`Fmp4Writer`]) and the server's LL-HLS (an [`init_segment`] alone, then a [`fragment`] per
//! part).
//!
//! The boxes are built and serialised by the `mp4-atom` crate; this file only decides what goes
//! in them. The layout is what a browser's `<video>` and ffmpeg play, and what survives a crash:
//!
//! ```text
//! ftyp  iso5, with iso6 mp41 avc1 compatible
//! moov  mvhd (duration 0: unknown, fragments follow)
//!         trak  tkhd, mdia (mdhd timescale 90 kHz, hdlr vide, minf: vmhd, dinf, stbl with
//!               avc1 + avcC (SPS, PPS) and empty sample tables)
//!         mvex  trex (track 1)
//! moof  mfhd (sequence number), traf: tfhd (default-base-is-moof), tfdt (decode time of the
//!       first sample), trun (data offset; per sample: duration, size, flags)
//! mdat  the samples of that fragment: length-prefixed NAL units
//! moof/mdat ...  one pair per fragment
//! ```
//!
//! Every fragment is complete on its own, and its `tfdt` states where it sits on the timeline, so
//! a file cut after any fragment (a killed process) plays up to there, and a gap in capture time
//! between fragments stays a gap instead of pulling later frames early. The same property makes
//! an HLS segment the concatenation of its parts, each part one fragment.

use std::io::{self, Write};

use mp4_atom::{
    Avc1, Avcc, Dinf, Dref, Encode, FourCC, Ftyp, Hdlr, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mvex,
    Mvhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry,
    TrunSamples, Url, Visual, Vmhd,
};

/// Media time units per second: the usual video clock, fine enough for µs capture times.
pub const TIMESCALE: u32 = 90_000;

/// `trun` sample flags of a sync sample (an IDR picture): depends on no other sample.
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// `trun` sample flags of any other picture: depends on others, not a sync sample.
const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// One coded picture, ready for a fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct Sample {
    /// NAL units, each preceded by its length as a big-endian u32 (what `avcC` with
    /// `length_size` 4 says), SPS and PPS excluded (they are in the `avcC`).
    pub data: Vec<u8>,
    /// Decode time, in [`TIMESCALE`] units from the start of the file.
    pub dts: u64,
    /// How long the picture shows, in [`TIMESCALE`] units.
    pub duration: u32,
    /// An IDR picture: playback can start here.
    pub sync: bool,
}

impl std::fmt::Debug for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("bytes", &self.data.len())
            .field("dts", &self.dts)
            .field("duration", &self.duration)
            .field("sync", &self.sync)
            .finish()
    }
}

/// Writes a fragmented MP4 file: [`new`](Self::new) writes the init segment, each
/// [`write_fragment`](Self::write_fragment) appends one `moof` + `mdat` and flushes.
pub struct Fmp4Writer<W: Write> {
    out: W,
    /// `mfhd` sequence number of the next fragment, from 1.
    sequence: u32,
    /// Bytes written so far.
    len: u64,
    /// Samples written so far.
    samples: u64,
}

impl<W: Write> Fmp4Writer<W> {
    /// Writes `ftyp` and `moov` for a `width` x `height` H.264 track described by `sps` and `pps`
    /// (NAL units without start code or length prefix).
    pub fn new(mut out: W, width: u16, height: u16, sps: &[u8], pps: &[u8]) -> io::Result<Self> {
        let init = init_segment(width, height, sps, pps)?;
        out.write_all(&init)?;
        out.flush()?;
        Ok(Fmp4Writer {
            out,
            sequence: 1,
            len: init.len() as u64,
            samples: 0,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written (never: the init segment is written by `new`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Samples written so far, in all fragments.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Appends one fragment holding `samples` (in decode order, the first at its own `dts`)
    /// and flushes it, so that it is in the file once this returns.
    pub fn write_fragment(&mut self, samples: &[Sample]) -> io::Result<()> {
        let Some(made) = fragment(self.sequence, samples)? else {
            return Ok(());
        };
        self.out.write_all(&made.bytes)?;
        self.out.flush()?;
        self.sequence = self.sequence.wrapping_add(1);
        self.len += made.bytes.len() as u64;
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// The underlying writer, flushed.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One `moof` + `mdat`, as [`fragment`] makes it.
pub struct Fragment {
    pub bytes: Vec<u8>,
    /// Its first sample is a sync sample (an IDR picture): a player can start decoding here
    /// (an LL-HLS part's `INDEPENDENT=YES`).
    pub independent: bool,
    /// The sum of its samples' durations, in [`TIMESCALE`] units.
    pub duration: u64,
}

impl std::fmt::Debug for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fragment")
            .field("bytes", &self.bytes.len())
            .field("independent", &self.independent)
            .field("duration", &self.duration)
            .finish()
    }
}

/// One fragment (`moof` with `mfhd` number `sequence`, then `mdat`) holding `samples`, in
/// decode order, the first at its own `dts`; `None` for no samples.
pub fn fragment(sequence: u32, samples: &[Sample]) -> io::Result<Option<Fragment>> {
    let Some(first) = samples.first() else {
        return Ok(None);
    };
    let payload_bytes: usize = samples.iter().map(|s| s.data.len()).sum();
    let entries = samples
        .iter()
        .map(|s| {
            Ok(TrunEntry {
                duration: Some(s.duration),
                size: Some(u32::try_from(s.data.len()).map_err(io::Error::other)?),
                flags: Some(if s.sync {
                    SYNC_SAMPLE_FLAGS
                } else {
                    NON_SYNC_SAMPLE_FLAGS
                }),
                cts: None,
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut moof = Moof {
        mfhd: Mfhd {
            sequence_number: sequence,
        },
        traf: vec![Traf {
            tfhd: Tfhd {
                track_id: 1,
                default_base_is_moof: true,
                ..Default::default()
            },
            tfdt: Some(Tfdt {
                base_media_decode_time: first.dts,
            }),
            trun: vec![Trun {
                data_offset: Some(0),
                samples: TrunSamples::Explicit(entries),
            }],
            ..Default::default()
        }],
    };
    // The data offset counts from the start of the moof to the first sample byte, past the
    // mdat header; the offset field has a fixed width, so one trial encoding gives the size.
    let moof_bytes = encode(&moof)?.len();
    let data_offset = i32::try_from(moof_bytes + 8).map_err(io::Error::other)?;
    moof.traf[0].trun[0].data_offset = Some(data_offset);
    let mut buf = encode(&moof)?;
    debug_assert_eq!(buf.len(), moof_bytes);
    let mdat_bytes = u32::try_from(payload_bytes + 8).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "fragment over 4 GiB; write shorter fragments",
        )
    })?;
    buf.reserve(8 + payload_bytes);
    buf.extend_from_slice(&mdat_bytes.to_be_bytes());
    buf.extend_from_slice(b"mdat");
    for s in samples {
        buf.extend_from_slice(&s.data);
    }
    Ok(Some(Fragment {
        bytes: buf,
        independent: first.sync,
        duration: samples.iter().map(|s| u64::from(s.duration)).sum(),
    }))
}

fn encode<T: Encode>(atom: &T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    atom.encode(&mut buf)
        .map_err(|e| io::Error::other(format!("encoding an mp4 box: {e}")))?;
    Ok(buf)
}

/// `ftyp` + `moov` of a fragmented file with one `width` x `height` H.264 track described by
/// `sps` and `pps` (NAL units without start code or length prefix): a file's start, or an
/// HLS init segment (`EXT-X-MAP`).
pub fn init_segment(width: u16, height: u16, sps: &[u8], pps: &[u8]) -> io::Result<Vec<u8>> {
    // avcC copies profile, compatibility and level from the SPS (bytes 1..4 after the NAL header).
    let &[_, profile, compat, level, ..] = sps else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("H.264 SPS of {} bytes is too short", sps.len()),
        ));
    };
    let ftyp = Ftyp {
        major_brand: FourCC::new(b"iso5"),
        minor_version: 512,
        compatible_brands: [b"iso5", b"iso6", b"mp41", b"avc1"]
            .map(FourCC::new)
            .to_vec(),
    };
    let avc1 = Avc1 {
        visual: Visual {
            data_reference_index: 1,
            width,
            height,
            depth: 24,
            ..Default::default()
        },
        avcc: Avcc {
            configuration_version: 1,
            avc_profile_indication: profile,
            profile_compatibility: compat,
            avc_level_indication: level,
            length_size: 4,
            sequence_parameter_sets: vec![sps.to_vec()],
            picture_parameter_sets: vec![pps.to_vec()],
            ext: None,
        },
        btrt: None,
        colr: None,
        pasp: None,
        taic: None,
        fiel: None,
        spatial: None,
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
                width: width.into(),
                height: height.into(),
                ..Default::default()
            },
            mdia: Mdia {
                mdhd: Mdhd {
                    timescale: TIMESCALE,
                    language: "und".into(),
                    ..Default::default()
                },
                hdlr: Hdlr {
                    handler: FourCC::new(b"vide"),
                    name: "surv video".into(),
                },
                minf: Minf {
                    vmhd: Some(Vmhd::default()),
                    dinf: Dinf {
                        dref: Dref {
                            entries: vec![Url::default().into()],
                        },
                    },
                    stbl: Stbl {
                        stsd: Stsd {
                            codecs: vec![avc1.into()],
                        },
                        stts: Stts::default(),
                        stsc: Stsc::default(),
                        stsz: Stsz::default(),
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
    let mut buf = encode(&ftyp)?;
    buf.extend_from_slice(&encode(&moov)?);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp4_atom::{Any, Decode};
    use std::io::Cursor;

    #[test]
    fn fragments_parse_back_with_their_timing() {
        let sps = [0x67, 0x42, 0xC0, 0x1E, 0xAB];
        let pps = [0x68, 0xCE, 0x3C, 0x80];
        let mut w = Fmp4Writer::new(Cursor::new(Vec::new()), 320, 240, &sps, &pps).unwrap();
        let sample = |dts: u64, sync: bool| Sample {
            data: vec![0, 0, 0, 2, 0x65, dts as u8],
            dts,
            duration: 3000,
            sync,
        };
        w.write_fragment(&[sample(0, true), sample(3000, false)])
            .unwrap();
        w.write_fragment(&[]).unwrap();
        // A gap: the second fragment starts at its own time.
        w.write_fragment(&[sample(90_000, true)]).unwrap();
        assert_eq!(w.samples(), 3);
        let len = w.len();
        let buf = w.into_inner().unwrap().into_inner();
        assert_eq!(buf.len() as u64, len);

        let mut c = Cursor::new(&buf[..]);
        let ftyp = Ftyp::decode(&mut c).unwrap();
        assert_eq!(ftyp.major_brand, FourCC::new(b"iso5"));
        let moov = Moov::decode(&mut c).unwrap();
        assert_eq!(moov.mvhd.timescale, TIMESCALE);
        let trak = &moov.trak[0];
        assert_eq!(trak.mdia.mdhd.timescale, TIMESCALE);
        let Some(mp4_atom::Codec::Avc1(avc1)) = trak.mdia.minf.stbl.stsd.codecs.first() else {
            panic!("no avc1: {:?}", trak.mdia.minf.stbl.stsd)
        };
        assert_eq!((avc1.visual.width, avc1.visual.height), (320, 240));
        assert_eq!(avc1.avcc.sequence_parameter_sets, [sps.to_vec()]);
        assert_eq!(avc1.avcc.picture_parameter_sets, [pps.to_vec()]);
        assert_eq!(avc1.avcc.avc_profile_indication, 0x42);
        assert_eq!(avc1.avcc.avc_level_indication, 0x1E);

        let mut fragments = Vec::new();
        while (c.position() as usize) < buf.len() {
            let moof_at = c.position() as usize;
            let Any::Moof(moof) = Any::decode(&mut c).unwrap() else {
                panic!("expected moof at {moof_at}")
            };
            let Any::Mdat(mdat) = Any::decode(&mut c).unwrap() else {
                panic!("expected mdat after the moof at {moof_at}")
            };
            let traf = &moof.traf[0];
            let trun = &traf.trun[0];
            // The data offset points at the first byte of the mdat payload.
            let offset = trun.data_offset.unwrap() as usize;
            assert_eq!(&buf[moof_at + offset..][..4], &mdat.data[..4]);
            let entries: Vec<TrunEntry> = trun.samples.iter().collect();
            fragments.push((
                moof.mfhd.sequence_number,
                traf.tfdt.as_ref().unwrap().base_media_decode_time,
                entries.len(),
                mdat.data.len(),
                entries[0].flags,
            ));
        }
        assert_eq!(
            fragments,
            [
                (1, 0, 2, 12, Some(SYNC_SAMPLE_FLAGS)),
                (2, 90_000, 1, 6, Some(SYNC_SAMPLE_FLAGS))
            ]
        );
    }

    #[test]
    fn a_fragment_says_whether_it_starts_with_a_sync_sample() {
        let sample = |sync: bool| Sample {
            data: vec![0, 0, 0, 1, 0x41],
            dts: 6000,
            duration: 3000,
            sync,
        };
        assert!(fragment(7, &[]).unwrap().is_none());
        let key = fragment(7, &[sample(true), sample(false)])
            .unwrap()
            .unwrap();
        assert!(key.independent);
        assert_eq!(key.duration, 6000);
        let not = fragment(8, &[sample(false), sample(true)])
            .unwrap()
            .unwrap();
        assert!(!not.independent);
        // A fragment alone parses, with its sequence number.
        let mut c = Cursor::new(&key.bytes[..]);
        let Any::Moof(moof) = Any::decode(&mut c).unwrap() else {
            panic!("not a moof")
        };
        assert_eq!(moof.mfhd.sequence_number, 7);
        let Any::Mdat(mdat) = Any::decode(&mut c).unwrap() else {
            panic!("no mdat")
        };
        assert_eq!(mdat.data.len(), 10);
        assert_eq!(c.position() as usize, key.bytes.len());
    }

    #[test]
    fn a_short_sps_is_an_error_not_a_panic() {
        for sps in [&[][..], &[0x67], &[0x67, 1, 2]] {
            assert!(Fmp4Writer::new(Vec::new(), 16, 16, sps, &[0x68]).is_err());
        }
    }
}
