//! HDR histograms of microseconds (1 µs .. 60 s, 3 significant digits) that travel
//! between processes as JSON: a list of `[value, count]` pairs, one per non-empty
//! bucket, where `value` is the bucket's highest equivalent value. Recording those
//! pairs into a histogram of the same configuration lands every count in its original
//! bucket, so merging across workers is exact.

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Highest trackable value: 60 s in µs (larger values are clamped to it).
pub const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    /// Records one value (µs), clamped to [0, 60 s].
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.min(MAX_US));
    }

    /// Records `count` occurrences of `us`.
    pub fn record_n(&mut self, us: u64, count: u64) {
        // Within bounds after the clamp, so this cannot fail.
        let _ = self.0.record_n(us.min(MAX_US), count);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at percentile `p` (0..100), 0 when empty.
    pub fn pct(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_percentile(p)
        }
    }

    /// The largest recorded value (its bucket's highest equivalent), 0 when empty.
    pub fn max(&self) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.max()
        }
    }

    /// The non-empty buckets as `(highest equivalent value, count)`.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.buckets().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs: Vec<(u64, u64)> = Vec::deserialize(d)?;
        let mut h = Hist::default();
        for (v, n) in pairs {
            h.record_n(v, n);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_through_json_is_exact() {
        let (mut a, mut b, mut all) = (Hist::default(), Hist::default(), Hist::default());
        for i in 0..10_000u64 {
            let v = (i * 7919) % 2_000_000 + 1;
            if i % 3 == 0 { &mut a } else { &mut b }.record(v);
            all.record(v);
        }
        a.record(u64::MAX); // clamped, not lost
        all.record(MAX_US);
        let a2: Hist = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let b2: Hist = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut merged = Hist::default();
        merged.merge(&a2);
        merged.merge(&b2);
        assert_eq!(merged.len(), all.len());
        for p in [50.0, 90.0, 99.0, 99.9, 100.0] {
            assert_eq!(merged.pct(p), all.pct(p), "p{p}");
        }
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.buckets(), all.buckets());
    }

    #[test]
    fn percentiles_are_monotone_and_precise() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 100);
        }
        let (p50, p99, max) = (h.pct(50.0), h.pct(99.0), h.max());
        assert!(p50 <= p99 && p99 <= max);
        assert!((49_900..=50_100).contains(&p50), "{p50}");
        assert!((99_800..=100_100).contains(&max), "{max}");
        assert_eq!(Hist::default().pct(99.0), 0);
    }
}
