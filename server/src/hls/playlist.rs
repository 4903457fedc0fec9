//! The LL-HLS media playlist's text (RFC 8216bis, with the low-latency tags) and the
//! blocking-reload query (`_HLS_msn`, `_HLS_part`). Sans-IO: a [`Window`] in, text out; a
//! query string in, a [`Reload`] or a reason for the 400 out. The fuzz target `hls_query`
//! runs [`examine`].
//!
//! ```text
//! #EXTM3U
//! #EXT-X-VERSION:6
//! #EXT-X-TARGETDURATION:1
//! #EXT-X-PART-INF:PART-TARGET=0.2
//! #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6
//! #EXT-X-MEDIA-SEQUENCE:3
//! #EXT-X-MAP:URI="hls/ID/init.mp4"
//! #EXT-X-PROGRAM-DATE-TIME:2026-12-05T13:00:00.000Z      (each segment)
//! #EXT-X-PART:DURATION=0.200,URI="hls/ID/3.0.m4s",INDEPENDENT=YES   (newest segments only)
//! #EXTINF:1.000,
//! hls/ID/3.m4s
//! …                                                         (the segment in progress: parts)
//! #EXT-X-PRELOAD-HINT:TYPE=PART,URI="hls/ID/9.2.m4s"
//! ```

use std::fmt::Write as _;

use super::segmenter::{Edge, Window, PART_TARGET_90K};

/// A query longer than this is refused unread.
pub const MAX_QUERY_BYTES: usize = 1024;
/// Highest `_HLS_part` taken (a segment has 5 parts; a long one, 30).
pub const MAX_PART_INDEX: usize = 1000;
/// How far past the newest part a blocking request may ask (the spec's Advance Part Limit).
const ADVANCE_PARTS: usize = 3;

/// What a playlist request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reload {
    /// `_HLS_msn`: hold the answer until this segment (or, with `part`, its part) exists.
    pub msn: Option<u64>,
    /// `_HLS_part`.
    pub part: Option<usize>,
}

/// Why a playlist query is answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("query over {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("{0} is not a number in range")]
    NotANumber(&'static str),
    #[error("{0} given twice")]
    Repeated(&'static str),
    #[error("_HLS_part without _HLS_msn")]
    PartWithoutMsn,
    #[error("_HLS_msn/_HLS_part too far past the live edge (segment {}, part {})", .0.msn, .0.parts)]
    TooFarAhead(Edge),
}

impl Reload {
    /// Reads `_HLS_msn` and `_HLS_part` from a query string; other keys (`token`, `_HLS_skip`,
    /// which this server does not offer) are ignored.
    pub fn parse(query: Option<&str>) -> Result<Reload, QueryError> {
        let Some(query) = query else {
            return Ok(Reload::default());
        };
        if query.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong);
        }
        let mut reload = Reload::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "_HLS_msn" => {
                    let msn = value
                        .parse::<u64>()
                        .map_err(|_| QueryError::NotANumber("_HLS_msn"))?;
                    if reload.msn.replace(msn).is_some() {
                        return Err(QueryError::Repeated("_HLS_msn"));
                    }
                }
                "_HLS_part" => {
                    let part = value
                        .parse::<usize>()
                        .ok()
                        .filter(|p| *p <= MAX_PART_INDEX)
                        .ok_or(QueryError::NotANumber("_HLS_part"))?;
                    if reload.part.replace(part).is_some() {
                        return Err(QueryError::Repeated("_HLS_part"));
                    }
                }
                _ => {}
            }
        }
        if reload.part.is_some() && reload.msn.is_none() {
            return Err(QueryError::PartWithoutMsn);
        }
        Ok(reload)
    }

    /// Whether it asks to wait.
    pub fn blocks(&self) -> bool {
        self.msn.is_some()
    }

    /// The spec's 400: a segment more than two past the last complete one, or a part more
    /// than [`ADVANCE_PARTS`] past the newest.
    pub fn check_ahead(&self, edge: Edge) -> Result<(), QueryError> {
        let Some(msn) = self.msn else { return Ok(()) };
        let part = self.part.unwrap_or(0);
        let ok = if msn < edge.msn {
            true
        } else if msn == edge.msn {
            part < edge.parts.saturating_add(ADVANCE_PARTS)
        } else {
            Some(msn) == edge.msn.checked_add(1) && part < ADVANCE_PARTS
        };
        if ok {
            Ok(())
        } else {
            Err(QueryError::TooFarAhead(edge))
        }
    }
}

/// Seconds with three decimals, from 90 kHz units.
fn secs(d_90k: u64) -> String {
    let ms = (d_90k + 45) / 90;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// RFC 3339 in UTC with milliseconds, from µs since the Unix epoch.
fn date_time(unix_us: u64) -> String {
    let at = i64::try_from(unix_us)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .unwrap_or_default();
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The playlist of `window`, its URIs under `base` (relative to the playlist, ending in `/`).
pub fn render(window: &Window, base: &str) -> String {
    let mut out = String::with_capacity(2048);
    let target = window.target_duration_s();
    let first = window.segments.front().map_or(0, |s| s.msn);
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-PART-INF:PART-TARGET={}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={}\n\
         #EXT-X-MEDIA-SEQUENCE:{first}\n#EXT-X-MAP:URI=\"{base}init.mp4\"\n",
        secs(PART_TARGET_90K),
        secs(3 * PART_TARGET_90K),
    );
    for s in &window.segments {
        if s.part_count > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                date_time(s.capture_unix_us)
            );
        }
        for (i, p) in s.parts.iter().enumerate() {
            let _ = writeln!(
                out,
                "#EXT-X-PART:DURATION={},URI=\"{base}{}.{i}.m4s\"{}",
                secs(p.duration_90k),
                s.msn,
                if p.independent {
                    ",INDEPENDENT=YES"
                } else {
                    ""
                }
            );
        }
        if s.bytes.is_some() {
            let _ = write!(
                out,
                "#EXTINF:{},\n{base}{}.m4s\n",
                secs(s.duration_90k),
                s.msn
            );
        }
    }
    let edge = window.edge();
    if !window.segments.is_empty() {
        let _ = writeln!(
            out,
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{base}{}.{}.m4s\"",
            edge.msn, edge.parts
        );
    }
    out
}

/// The fuzz target `hls_query`: any query string, parsed, checked against a few live edges;
/// none may panic.
pub fn examine(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reload) = Reload::parse(Some(query)) {
        for edge in [
            Edge::default(),
            Edge { msn: 5, parts: 2 },
            Edge {
                msn: u64::MAX,
                parts: usize::MAX,
            },
        ] {
            let _ = reload.check_ahead(edge);
            if let Some(msn) = reload.msn {
                let _ = edge.reached(msn, reload.part);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::segmenter::{Segmenter, Unit};

    #[test]
    fn the_playlist_of_two_segments_and_a_part() {
        let mut seg = Segmenter::new();
        // 2 s at 30 fps, a keyframe a second, then 7 frames: the third segment's first part.
        for i in 0..67u64 {
            seg.push(Unit {
                avc: vec![0, 0, 0, 1, 0x41],
                dts_90k: i * 3000,
                sync: i % 30 == 0,
                capture_unix_us: 1_764_939_600_000_000 + i * 33_333,
            });
        }
        let text = render(seg.window(), "hls/abc/");
        let part = |msn: u64, i: usize| {
            format!(
                "#EXT-X-PART:DURATION=0.200,URI=\"hls/abc/{msn}.{i}.m4s\"{}\n",
                if i == 0 { ",INDEPENDENT=YES" } else { "" }
            )
        };
        let mut expected = String::from(
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-TARGETDURATION:1\n\
             #EXT-X-PART-INF:PART-TARGET=0.200\n\
             #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600\n\
             #EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-MAP:URI=\"hls/abc/init.mp4\"\n\
             #EXT-X-PROGRAM-DATE-TIME:2025-12-05T13:00:00.000Z\n",
        );
        for i in 0..5 {
            expected += &part(0, i);
        }
        expected +=
            "#EXTINF:1.000,\nhls/abc/0.m4s\n#EXT-X-PROGRAM-DATE-TIME:2025-12-05T13:00:00.999Z\n";
        for i in 0..5 {
            expected += &part(1, i);
        }
        expected +=
            "#EXTINF:1.000,\nhls/abc/1.m4s\n#EXT-X-PROGRAM-DATE-TIME:2025-12-05T13:00:01.999Z\n";
        expected += &part(2, 0);
        expected += "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"hls/abc/2.1.m4s\"\n";
        assert_eq!(text, expected);
        assert_eq!(render(&Window::default(), "x/").lines().count(), 7);
    }

    #[test]
    fn blocking_queries_parse_and_bad_ones_are_refused() {
        assert_eq!(Reload::parse(None), Ok(Reload::default()));
        assert_eq!(
            Reload::parse(Some("_HLS_msn=7&_HLS_part=2&token=x&_HLS_skip=YES")),
            Ok(Reload {
                msn: Some(7),
                part: Some(2)
            })
        );
        assert!(Reload::parse(Some("_HLS_msn=7")).unwrap().blocks());
        assert!(!Reload::parse(Some("token=a")).unwrap().blocks());
        for (query, error) in [
            ("_HLS_part=1", QueryError::PartWithoutMsn),
            ("_HLS_msn=-1", QueryError::NotANumber("_HLS_msn")),
            (
                "_HLS_msn=99999999999999999999999",
                QueryError::NotANumber("_HLS_msn"),
            ),
            ("_HLS_msn=", QueryError::NotANumber("_HLS_msn")),
            (
                "_HLS_msn=1&_HLS_part=1001",
                QueryError::NotANumber("_HLS_part"),
            ),
            ("_HLS_msn=1&_HLS_msn=2", QueryError::Repeated("_HLS_msn")),
            (
                "_HLS_msn=1&_HLS_part=0&_HLS_part=0",
                QueryError::Repeated("_HLS_part"),
            ),
        ] {
            assert_eq!(Reload::parse(Some(query)), Err(error), "{query}");
        }
        let long = "a=b&".repeat(300);
        assert_eq!(Reload::parse(Some(&long)), Err(QueryError::TooLong));
    }

    #[test]
    fn far_ahead_is_400_near_ahead_waits() {
        let edge = Edge { msn: 10, parts: 2 };
        let at = |msn, part| Reload {
            msn: Some(msn),
            part,
        };
        assert!(at(3, None).check_ahead(edge).is_ok());
        assert!(at(10, Some(4)).check_ahead(edge).is_ok());
        assert!(at(10, Some(5)).check_ahead(edge).is_err());
        assert!(at(11, None).check_ahead(edge).is_ok());
        assert!(at(11, Some(2)).check_ahead(edge).is_ok());
        assert!(at(11, Some(3)).check_ahead(edge).is_err());
        assert!(at(12, None).check_ahead(edge).is_err());
        assert!(at(u64::MAX, Some(0)).check_ahead(edge).is_err());
        assert!(Reload::default().check_ahead(edge).is_ok());
        let huge = Edge {
            msn: u64::MAX,
            parts: usize::MAX,
        };
        assert!(at(u64::MAX, Some(MAX_PART_INDEX)).check_ahead(huge).is_ok());
        examine(b"_HLS_msn=18446744073709551615&_HLS_part=1000");
        examine(&[0xff, 0xfe]);
    }

    /// The fuzz corpus (fuzz/corpus/hls_query), replayed: what libFuzzer found stays fixed.
    #[test]
    fn the_fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/hls_query");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            examine(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= 6, "the corpus went missing: {n} files");
        let seed = std::fs::read_to_string(dir.join("blocking")).unwrap();
        assert_eq!(
            Reload::parse(Some(&seed)),
            Ok(Reload {
                msn: Some(1_764_939_600),
                part: Some(2)
            })
        );
    }
}
