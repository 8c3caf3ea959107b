//! Seeded randomness. Every random choice in irec flows from a `u64` seed through [`derive`], so a
//! session, a user or a device can be replayed on its own, independent of the order work ran in.

use rand::SeedableRng;

/// The generator used everywhere: ChaCha8 is fast, portable and stable across platforms.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator from a seed.
pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// A child seed for stream `stream` of `seed` (SplitMix64 finaliser over both), so that
/// `derive(s, 0)`, `derive(s, 1)`, … are independent streams.
pub fn derive(seed: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Named seed streams, so two subsystems never draw from the same stream by accident.
pub mod stream {
    pub const CATALOG: u64 = 1;
    pub const SPLIT: u64 = 2;
    pub const FEATURES: u64 = 3;
    pub const SESSIONS: u64 = 4;
    pub const TRAINING: u64 = 5;
    pub const DEVICES: u64 = 6;
    pub const PRETRAIN: u64 = 7;
    pub const EVALUATION: u64 = 8;
}

/// Draws an index from unnormalised non-negative weights; `None` when they sum to zero.
pub fn weighted_index(weights: &[f64], rng: &mut impl rand::Rng) -> Option<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(i);
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_streams_differ_and_repeat() {
        assert_eq!(derive(7, 1), derive(7, 1));
        assert_ne!(derive(7, 1), derive(7, 2));
        assert_ne!(derive(7, 1), derive(8, 1));
    }

    #[test]
    fn weighted_index_respects_zero_weights() {
        let mut r = rng(3);
        for _ in 0..1000 {
            let i = weighted_index(&[0.0, 2.0, 0.0, 1.0], &mut r);
            assert!(matches!(i, Some(1) | Some(3)));
        }
        assert_eq!(weighted_index(&[0.0, 0.0], &mut r), None);
    }
}
