//! A stochastic stand-in for a learned policy, for the privacy audit: it samples each action
//! slot from a softmax over per-device logits plus the device's private bias and noise, and
//! records the probability of every slot it chose. Those probabilities exist only on the device;
//! the audit then proves they appear nowhere on the server or the wire.
//!
//! Each recorded probability carries a 12-bit watermark in its lowest mantissa bits (the value
//! the policy acts on), so that a value found anywhere can be told for one of the probe's.

use irec_model::loader::{LoadError, LoadedPolicy, PolicyLoader};
use irec_world::catalog::{Action, NUM_ATTRS};
use irec_world::policy::{DeviceProfile, Policy, SessionHint};
use irec_world::rng::{self, Rng};
use irec_world::sim::Observation;
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use std::sync::{Arc, Mutex};

/// The watermark in the low 12 mantissa bits of every recorded probability.
pub const WATERMARK: u32 = 0xA5C;
const MASK: u32 = 0xFFF;

/// Whether `p` carries the watermark.
pub fn watermarked(p: f32) -> bool {
    p.to_bits() & MASK == WATERMARK
}

/// Loads any checkpoint as the probe (and runs it before any arrives).
#[derive(Clone, Debug)]
pub struct ProbeLoader {
    pub heads: [usize; NUM_ATTRS],
    /// The probabilities of the chosen slots (one per action head) of every turn any probe
    /// policy acted on, in order.
    pub record: Arc<Mutex<Vec<[f32; NUM_ATTRS]>>>,
}

impl ProbeLoader {
    pub fn new(heads: [usize; NUM_ATTRS]) -> ProbeLoader {
        ProbeLoader { heads, record: Arc::new(Mutex::new(Vec::new())) }
    }

    pub fn recorded(&self) -> Vec<[f32; NUM_ATTRS]> {
        self.record.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl PolicyLoader for ProbeLoader {
    fn load(&self, blob: &[u8]) -> Result<Arc<dyn LoadedPolicy>, LoadError> {
        if blob.is_empty() {
            return Err(LoadError::Invalid("empty checkpoint".to_string()));
        }
        Ok(Arc::new(self.clone()))
    }

    fn fallback(&self) -> Option<Arc<dyn LoadedPolicy>> {
        Some(Arc::new(self.clone()))
    }
}

impl LoadedPolicy for ProbeLoader {
    fn instantiate(&self, device: &DeviceProfile) -> Box<dyn Policy + Send> {
        let mut r = rng::rng(rng::derive(device.seed, 0x9e0b));
        let total: usize = self.heads.iter().sum();
        let mut logits: Vec<f32> = (0..total).map(|_| r.random_range(-1.0..1.0)).collect();
        for (l, b) in logits.iter_mut().zip(device.bias.values()) {
            *l += b;
        }
        Box::new(ProbePolicy { heads: self.heads, logits, sigma: device.noise_sigma, record: self.record.clone() })
    }
}

struct ProbePolicy {
    heads: [usize; NUM_ATTRS],
    logits: Vec<f32>,
    sigma: f32,
    record: Arc<Mutex<Vec<[f32; NUM_ATTRS]>>>,
}

impl Policy for ProbePolicy {
    fn begin(&mut self, _: &SessionHint) {}

    fn observe(&mut self, _: &Observation) {}

    fn act(&mut self, rng: &mut Rng) -> Action {
        let mut action = Action::default();
        let mut chosen = [0f32; NUM_ATTRS];
        let mut off = 0;
        for (d, &n) in self.heads.iter().enumerate() {
            let z: Vec<f32> = self.logits[off..off + n]
                .iter()
                .map(|l| l + self.sigma * <StandardNormal as Distribution<f32>>::sample(&StandardNormal, rng))
                .collect();
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f64> = z.iter().map(|x| ((x - m) as f64).exp()).collect();
            let slot = rng::weighted_index(&w, rng).unwrap_or(0);
            let p = (w[slot] / w.iter().sum::<f64>()) as f32;
            chosen[d] = f32::from_bits((p.to_bits() & !MASK) | WATERMARK);
            action.0[d] = slot as u8;
            off += n;
        }
        if let Ok(mut r) = self.record.lock() {
            r.push(chosen);
        }
        action
    }
}
