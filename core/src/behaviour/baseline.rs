//! One identity's baseline: what it usually does, folded interval by interval.

use std::net::IpAddr;

use super::Behaviour;

/// Distinct source networks remembered per identity (the most recent ones).
pub const SOURCES: usize = 8;
/// Bytes of one encoded [`Entry`].
pub const ENTRY_LEN: usize = 16 + 8 + 8 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 4 * SOURCES;
/// A burst must also exceed this many times the identity's decayed peak interval:
/// what it does every night is not a burst, twice that is.
pub const PEAK_FACTOR: f64 = 2.0;

/// The baseline of one identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    /// FNV-1a 128 of (issuer name, identity).
    pub fingerprint: u128,
    /// Unix seconds.
    pub first_seen: u64,
    pub last_seen: u64,
    /// The current interval (Unix seconds / `interval_seconds`).
    pub interval: u64,
    /// Requests and errors in the current interval.
    pub count: u32,
    pub errors: u32,
    /// Full intervals with requests seen so far (the warm-up).
    pub intervals: u32,
    /// EWMA of requests per interval.
    pub rate: f32,
    /// EWMA of the error ratio of intervals with requests.
    pub error_ratio: f32,
    /// The largest interval, decaying.
    pub peak: f32,
    /// Route classes used: bit `i` for route `i`, bit 63 for unmatched requests.
    pub routes: u64,
    /// Source networks used (hashes; 0 is an empty slot), oldest first.
    pub sources: [u32; SOURCES],
}

impl Entry {
    pub fn new(fingerprint: u128, now: u64, interval: u64) -> Entry {
        Entry {
            fingerprint,
            first_seen: now,
            last_seen: 0,
            interval,
            count: 0,
            errors: 0,
            intervals: 0,
            rate: 0.0,
            error_ratio: 0.0,
            peak: 0.0,
            routes: 0,
            sources: [0; SOURCES],
        }
    }

    /// Moves the entry to `interval`: the finished interval is folded into the
    /// averages, and intervals without requests between count as zero.
    pub fn roll(&mut self, interval: u64, b: &Behaviour) {
        if interval <= self.interval {
            return;
        }
        let alpha = 1.0 - 0.5f64.powf(1.0 / b.half_life_intervals);
        let peak_decay = 0.5f64.powf(1.0 / b.peak_half_life_intervals);
        let count = f64::from(self.count);
        if self.count > 0 {
            self.intervals = self.intervals.saturating_add(1);
        }
        // Until the average has seen enough intervals, it is their plain mean (an
        // EWMA started at zero would take a half-life to believe a steady caller).
        let weight = if self.count > 0 { alpha.max(1.0 / f64::from(self.intervals.max(1))) } else { alpha };
        let mut rate = f64::from(self.rate) + weight * (count - f64::from(self.rate));
        let mut peak = (f64::from(self.peak) * peak_decay).max(count);
        if self.count > 0 {
            let ratio = f64::from(self.errors) / count;
            self.error_ratio =
                (f64::from(self.error_ratio) + weight * (ratio - f64::from(self.error_ratio))) as f32;
        }
        let gap = interval.saturating_sub(self.interval).saturating_sub(1).min(1_000_000) as i32;
        rate *= (1.0 - alpha).powi(gap);
        peak *= peak_decay.powi(gap);
        self.rate = rate as f32;
        self.peak = peak as f32;
        self.interval = interval;
        self.count = 0;
        self.errors = 0;
    }

    pub fn warmed(&self, b: &Behaviour) -> bool {
        self.intervals >= b.warmup_intervals
    }

    /// Whether `total` requests in the current interval are a burst.
    pub fn is_burst(&self, total: u32, b: &Behaviour) -> bool {
        let total = f64::from(total);
        total > f64::from(b.burst_floor)
            && total > b.burst_factor * f64::from(self.rate).max(1.0)
            && total > PEAK_FACTOR * f64::from(self.peak)
    }

    /// Whether `errors` of `total` in the current interval are a spike.
    pub fn is_error_spike(&self, errors: u32, total: u32, b: &Behaviour) -> bool {
        if total < b.error_min_requests || total == 0 {
            return false;
        }
        let ratio = f64::from(errors) / f64::from(total);
        ratio > b.error_ratio && ratio > 2.0 * f64::from(self.error_ratio)
    }

    pub fn knows_route(&self, bit: u64) -> bool {
        self.routes & bit != 0
    }

    pub fn knows_source(&self, network: u32) -> bool {
        self.sources.contains(&network)
    }

    /// Remembers `network`, forgetting the oldest when all slots are taken.
    pub fn learn_source(&mut self, network: u32) {
        if network == 0 || self.knows_source(network) {
            return;
        }
        if let Some(slot) = self.sources.iter_mut().find(|s| **s == 0) {
            *slot = network;
            return;
        }
        self.sources.rotate_left(1);
        if let Some(last) = self.sources.last_mut() {
            *last = network;
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.fingerprint.to_be_bytes());
        for v in [self.first_seen, self.last_seen, self.interval] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for v in [self.count, self.errors, self.intervals] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for v in [self.rate, self.error_ratio, self.peak] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.routes.to_be_bytes());
        for s in self.sources {
            out.extend_from_slice(&s.to_be_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let (fingerprint, rest) = bytes.split_first_chunk::<16>()?;
        let (first_seen, rest) = rest.split_first_chunk::<8>()?;
        let (last_seen, rest) = rest.split_first_chunk::<8>()?;
        let (interval, rest) = rest.split_first_chunk::<8>()?;
        let (count, rest) = rest.split_first_chunk::<4>()?;
        let (errors, rest) = rest.split_first_chunk::<4>()?;
        let (intervals, rest) = rest.split_first_chunk::<4>()?;
        let (rate, rest) = rest.split_first_chunk::<4>()?;
        let (error_ratio, rest) = rest.split_first_chunk::<4>()?;
        let (peak, rest) = rest.split_first_chunk::<4>()?;
        let (routes, mut rest) = rest.split_first_chunk::<8>()?;
        let mut sources = [0u32; SOURCES];
        for slot in &mut sources {
            let (s, tail) = rest.split_first_chunk::<4>()?;
            *slot = u32::from_be_bytes(*s);
            rest = tail;
        }
        let finite = |v: f32| if v.is_finite() && v >= 0.0 { Some(v) } else { None };
        Some(Entry {
            fingerprint: u128::from_be_bytes(*fingerprint),
            first_seen: u64::from_be_bytes(*first_seen),
            last_seen: u64::from_be_bytes(*last_seen),
            interval: u64::from_be_bytes(*interval),
            count: u32::from_be_bytes(*count),
            errors: u32::from_be_bytes(*errors),
            intervals: u32::from_be_bytes(*intervals),
            rate: finite(f32::from_be_bytes(*rate))?,
            error_ratio: finite(f32::from_be_bytes(*error_ratio))?,
            peak: finite(f32::from_be_bytes(*peak))?,
            routes: u64::from_be_bytes(*routes),
            sources,
        })
    }
}

/// The bit of route `index` (routes beyond 62, and unmatched requests, share bit 63).
pub fn route_bit(index: Option<usize>) -> u64 {
    1u64 << index.filter(|i| *i < 63).unwrap_or(63)
}

/// The network a source address belongs to (its /prefix), as a non-zero hash.
pub fn network(source: IpAddr, b: &Behaviour) -> u32 {
    let (bytes, prefix): (Vec<u8>, u8) = match source {
        IpAddr::V4(v4) => (v4.octets().to_vec(), b.source_prefix_v4),
        IpAddr::V6(v6) => (v6.octets().to_vec(), b.source_prefix_v6),
    };
    let mut masked = bytes;
    let keep = usize::from(prefix);
    for (i, byte) in masked.iter_mut().enumerate() {
        let bits_before = i * 8;
        if bits_before >= keep {
            *byte = 0;
        } else if bits_before + 8 > keep {
            *byte &= 0xFFu8 << (8 - (keep - bits_before));
        }
    }
    masked.push(prefix);
    (crate::hash::fnv1a64(&masked) as u32) | 1
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn behaviour() -> Behaviour {
        super::super::compile(
            crate::json::FromJson::from_json(
                json!({"half_life_intervals": 10, "peak_half_life_intervals": 100,
                       "warmup_intervals": 3, "anomalies": {}}),
                "b",
            )
            .unwrap(),
            "b",
        )
        .unwrap()
    }

    #[test]
    fn entries_round_trip_and_refuse_garbage() {
        let mut e = Entry::new(7, 100, 1);
        e.count = 3;
        e.rate = 2.5;
        e.learn_source(9);
        let mut out = Vec::new();
        e.encode(&mut out);
        assert_eq!(out.len(), ENTRY_LEN);
        assert_eq!(Entry::decode(&out), Some(e));
        assert_eq!(Entry::decode(&out[..ENTRY_LEN - 1]), None);
        let mut nan = out.clone();
        nan[16 + 24 + 12..16 + 24 + 16].copy_from_slice(&f32::NAN.to_be_bytes());
        assert_eq!(Entry::decode(&nan), None);
    }

    #[test]
    fn the_rate_follows_its_half_life_and_empty_intervals_decay_it() {
        let b = behaviour();
        let mut e = Entry::new(1, 0, 0);
        for interval in 1..=200 {
            e.count = 10;
            e.roll(interval, &b);
        }
        assert!((e.rate - 10.0).abs() < 0.01, "{}", e.rate);
        assert!(e.warmed(&b));
        // Ten silent intervals (one half-life: 200 to 209) halve it.
        e.roll(210, &b);
        assert!((e.rate - 5.0).abs() < 0.1, "{}", e.rate);
        assert_eq!(e.intervals, 200, "silent intervals are not warm-up");
    }

    #[test]
    fn bursts_are_judged_against_rate_peak_and_floor() {
        let b = behaviour();
        let mut e = Entry::new(1, 0, 0);
        e.rate = 10.0;
        e.peak = 30.0;
        assert!(!e.is_burst(99, &b), "under the floor");
        assert!(e.is_burst(101, &b), "over 10x rate, 2x peak and the floor");
        e.peak = 80.0;
        assert!(!e.is_burst(150, &b), "a usual peak");
        assert!(e.is_burst(161, &b));
    }

    #[test]
    fn error_spikes_need_enough_requests_and_a_jump() {
        let b = behaviour();
        let mut e = Entry::new(1, 0, 0);
        assert!(!e.is_error_spike(10, 10, &b), "too few requests");
        assert!(e.is_error_spike(11, 20, &b));
        e.error_ratio = 0.4;
        assert!(!e.is_error_spike(15, 20, &b), "not twice the usual");
        assert!(e.is_error_spike(17, 20, &b));
    }

    #[test]
    fn sources_are_networks_and_the_oldest_is_forgotten() {
        let b = behaviour();
        let a = network("203.0.113.7".parse().unwrap(), &b);
        assert_eq!(a, network("203.0.113.200".parse().unwrap(), &b), "same /24");
        assert_ne!(a, network("203.0.114.7".parse().unwrap(), &b));
        assert_eq!(
            network("2001:db8::1".parse().unwrap(), &b),
            network("2001:db8::ffff:1".parse().unwrap(), &b),
            "same /64"
        );
        let mut e = Entry::new(1, 0, 0);
        for n in 1..=(SOURCES as u32 + 1) {
            e.learn_source(n * 2 + 1);
        }
        assert!(!e.knows_source(3), "the oldest went");
        assert!(e.knows_source(SOURCES as u32 * 2 + 3));
        assert_eq!(route_bit(Some(0)), 1);
        assert_eq!(route_bit(None), 1 << 63);
        assert_eq!(route_bit(Some(100)), 1 << 63);
    }
}
