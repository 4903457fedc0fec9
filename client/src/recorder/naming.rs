//! Segment file names, the one place that knows their format: built here for the recorder,
//! parsed here for retention.
//!
//! ```text
//! surv-YYYYmmdd-HHMMSS[-N].avi|mp4[.part]
//!      local time of the segment's first frame (its capture time)
//!                      -N: the Nth other segment starting in that second (N >= 1)
//!                               .part: still being written, or left by a killed run
//! ```

use chrono::{DateTime, Local, Utc};

use super::Format;

/// Every segment name starts with this.
const PREFIX: &str = "surv-";

/// Added to a segment's name while it is written.
const PART_SUFFIX: &str = ".part";

/// `YYYYmmdd-HHMMSS`: digits, with a dash after the 8th.
const STAMP_LEN: usize = 15;

/// `surv-YYYYmmdd-HHMMSS` in local time, for a segment whose first frame was captured at
/// `capture_unix_us`. A capture time chrono cannot represent (a corrupt or far-future clock)
/// falls back to the current time so that recording goes on.
pub(super) fn stem(capture_unix_us: u64) -> String {
    let utc = i64::try_from(capture_unix_us)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .unwrap_or_else(Utc::now);
    format!(
        "{PREFIX}{}",
        utc.with_timezone(&Local).format("%Y%m%d-%H%M%S")
    )
}

/// The name of a closed segment: `stem`, then `-n` unless `n` is 0, then the extension.
pub(super) fn closed(stem: &str, n: u32, format: Format) -> String {
    let ext = format.extension();
    match n {
        0 => format!("{stem}.{ext}"),
        n => format!("{stem}-{n}.{ext}"),
    }
}

/// The name of a segment while it is written.
pub(super) fn part(closed: &str) -> String {
    format!("{closed}{PART_SUFFIX}")
}

/// Whether `name` looks like a closed segment's: `surv-*.avi` or `surv-*.mp4`. Retention
/// deletes only these.
pub(crate) fn is_closed(name: &str) -> bool {
    name.starts_with(PREFIX) && [Format::Avi, Format::Mp4].iter().any(|f| has_ext(name, *f))
}

/// Whether `name` is a segment being written, or left unfinished by a killed run.
pub(super) fn is_part(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(PART_SUFFIX)
}

fn has_ext(name: &str, format: Format) -> bool {
    name.strip_suffix(format.extension())
        .is_some_and(|rest| rest.ends_with('.'))
}

/// A closed segment's name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentName {
    /// `YYYYmmdd-HHMMSS`, local time.
    pub stamp: String,
    /// The `-N` suffix, 0 without one.
    pub n: u32,
    pub format: Format,
}

impl SegmentName {
    /// A key that orders segments oldest first: by the time stamp, then by `n` as a number
    /// (`-10` after `-9`).
    pub(crate) fn into_age(self) -> (String, u32) {
        (self.stamp, self.n)
    }
}

/// Takes apart the name [`closed`] gives; `None` for anything else (a `.part` included).
pub(crate) fn parse(name: &str) -> Option<SegmentName> {
    let rest = name.strip_prefix(PREFIX)?;
    let (rest, format) = [Format::Avi, Format::Mp4].into_iter().find_map(|f| {
        let rest = rest.strip_suffix(f.extension())?.strip_suffix('.')?;
        Some((rest, f))
    })?;
    let stamp = rest.get(..STAMP_LEN)?;
    let stamp_ok = stamp.char_indices().all(|(i, c)| match i {
        8 => c == '-',
        _ => c.is_ascii_digit(),
    });
    if !stamp_ok {
        return None;
    }
    let n = match &rest[STAMP_LEN..] {
        "" => 0,
        suffix => {
            let digits = suffix.strip_prefix('-')?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
                return None;
            }
            digits.parse().ok()?
        }
    };
    Some(SegmentName {
        stamp: stamp.to_string(),
        n,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_built_parse_back() {
        let t0_us = 1_700_000_000_000_000;
        let local = DateTime::from_timestamp_micros(t0_us as i64)
            .unwrap()
            .with_timezone(&Local)
            .format("%Y%m%d-%H%M%S")
            .to_string();
        assert_eq!(stem(t0_us), format!("surv-{local}"));
        for format in [Format::Avi, Format::Mp4] {
            for n in [0, 1, 9, 10, 999, u32::MAX] {
                let name = closed(&stem(t0_us), n, format);
                assert!(is_closed(&name), "{name}");
                assert!(!is_part(&name), "{name}");
                let parsed = parse(&name);
                assert_eq!(
                    parsed,
                    Some(SegmentName {
                        stamp: local.clone(),
                        n,
                        format
                    }),
                    "{name}"
                );
                let part = part(&name);
                assert!(is_part(&part) && !is_closed(&part), "{part}");
                assert_eq!(parse(&part), None, "{part}");
            }
        }
        // A clock chrono cannot represent still gives a name that parses.
        assert!(parse(&closed(&stem(u64::MAX), 0, Format::Avi)).is_some());
    }

    #[test]
    fn other_names_do_not_parse() {
        for name in [
            "notes.avi",
            "surv-.avi",
            "surv-20260101-000000",
            "surv-20260101-000000.mkv",
            "surv-20260101-000000avi",
            "surv-20260101-00000.avi",
            "surv-20260101x000000.avi",
            "surv-2026010a-000000.avi",
            "surv-20260101-000000-.avi",
            "surv-20260101-000000-0.avi",
            "surv-20260101-000000-01.avi",
            "surv-20260101-000000-1x.avi",
            "surv-20260101-000000_1.avi",
            "surv-20260101-000000-99999999999.avi",
            "surv-20260101-000000.avi.part",
            "surv-२०२६0101-000000.avi",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
    }

    #[test]
    fn names_order_oldest_first_with_numbers_as_numbers() {
        let names = [
            "surv-20260101-000100.avi",
            "surv-20260101-000200.mp4",
            "surv-20260101-000200-9.avi",
            "surv-20260101-000200-10.avi",
            "surv-20260102-000000.avi",
        ];
        let ages: Vec<(String, u32)> = names.iter().map(|n| parse(n).unwrap().into_age()).collect();
        assert!(ages.windows(2).all(|w| w[0] < w[1]), "{ages:?}");
    }
}
