//! How long frames take to encode: a fixed-bucket histogram of atomics, fed by the sink at each
//! encode and read by `/metrics` at scrape time.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Upper bounds of the buckets, seconds; a last bucket takes the rest.
pub const BUCKET_BOUNDS_S: [f64; 10] = [
    0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
];

/// Encode times seen so far.
#[derive(Debug, Default)]
pub struct EncodeTimes {
    /// Per bucket, not cumulative; the last one is above every bound.
    buckets: [AtomicU64; BUCKET_BOUNDS_S.len() + 1],
    sum_ns: AtomicU64,
}

/// A consistent-enough copy for one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeTimesSnapshot {
    /// `(upper bound s, frames in that bucket)`, the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_s: f64,
}

impl EncodeTimes {
    pub fn record(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BUCKET_BOUNDS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKET_BOUNDS_S.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> EncodeTimesSnapshot {
        let buckets: Vec<(f64, u64)> = BUCKET_BOUNDS_S
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Relaxed)))
            .collect();
        EncodeTimesSnapshot {
            // The count is the buckets' sum, so that the two always agree in one scrape.
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum_s: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_land_in_the_bucket_of_their_bound() {
        let t = EncodeTimes::default();
        t.record(Duration::from_micros(300));
        t.record(Duration::from_micros(500));
        t.record(Duration::from_millis(3));
        t.record(Duration::from_secs(2));
        let s = t.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), BUCKET_BOUNDS_S.len() + 1);
        let counts: Vec<u64> = s.buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        assert!(s.buckets.last().unwrap().0.is_infinite());
        assert!((s.sum_s - 2.0038).abs() < 1e-9, "{}", s.sum_s);
    }
}
