//! Parameters: a store of named candle `Var`s whose initial values depend only on (seed, name),
//! so a model initialises identically whatever order its layers are built in. candle's own CPU
//! random generator cannot be seeded, hence this backend for `VarBuilder`.

use irec_world::rng;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Named trainable variables.
#[derive(Clone, Debug)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
    device: Device,
}

fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl ParamStore {
    pub fn new(seed: u64, device: &Device) -> ParamStore {
        ParamStore { vars: Arc::new(Mutex::new(BTreeMap::new())), seed, device: device.clone() }
    }

    /// A store holding the given tensors as variables (to continue training a checkpoint).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, seed: u64, device: &Device) -> Result<ParamStore> {
        let store = ParamStore::new(seed, device);
        {
            let mut vars = store.lock();
            for (k, t) in tensors {
                vars.insert(k, Var::from_tensor(&t.to_device(device)?.to_dtype(DType::F32)?)?);
            }
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock means a panic mid-insert elsewhere; the map itself is still usable.
        self.vars.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A `VarBuilder` that creates missing variables with seeded initial values.
    pub fn builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, self.device.clone())
    }

    /// Variables whose names start with `prefix`.
    pub fn vars(&self, prefix: &str) -> Vec<Var> {
        self.lock().iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect()
    }

    /// Variables whose names start with `prefix`, with their names, in name order.
    pub fn named_vars(&self, prefix: &str) -> Vec<(String, Var)> {
        self.lock().iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// A snapshot of the variables whose names start with `prefix`. The values are copied:
    /// optimiser steps update variables in place, and a snapshot must not move with them.
    pub fn tensors(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, v)| v.as_tensor().detach().copy().ok().map(|t| (k.clone(), t)))
            .collect()
    }

    /// Sets every variable under `to` to (1 − τ)·itself + τ·its namesake under `from`
    /// (τ = 1 copies). Used for target networks.
    pub fn soft_update(&self, from: &str, to: &str, tau: f64) -> Result<()> {
        let vars = self.lock();
        for (k, dst) in vars.iter().filter(|(k, _)| k.starts_with(to)) {
            let src_name = format!("{from}{}", &k[to.len()..]);
            if let Some(src) = vars.get(&src_name) {
                let next = if tau >= 1.0 {
                    src.as_tensor().detach()
                } else if matches!(dst.device(), Device::Cpu) {
                    // In one pass on the CPU, with the tensor ops' exact arithmetic (`t * c` is
                    // `t·c + 0` in f32).
                    let host = crate::kernels::host;
                    let (keep, take) = ((1.0 - tau) as f32, tau as f32);
                    let d: Vec<f32> = host(dst.as_tensor())?.iter().zip(host(src.as_tensor())?).map(|(d, s)| (d * keep + 0.0) + (s * take + 0.0)).collect();
                    Tensor::from_vec(d, dst.shape(), dst.device())?
                } else {
                    ((dst.as_tensor() * (1.0 - tau))? + (src.as_tensor() * tau)?)?
                };
                dst.set(&next)?;
            }
        }
        Ok(())
    }

    /// Copies values of `other`'s variables into same-named variables here (creating missing ones).
    pub fn load_from(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        let mut vars = self.lock();
        for (k, t) in tensors {
            match vars.get(k) {
                Some(v) if v.shape() == t.shape() => v.set(t)?,
                _ => {
                    vars.insert(k.clone(), Var::from_tensor(&t.to_device(&self.device)?)?);
                }
            }
        }
        Ok(())
    }

    fn init(&self, shape: &Shape, name: &str, init: Init) -> Result<Tensor> {
        let mut r = rng::rng(rng::derive(self.seed, fnv(name)));
        let n = shape.elem_count();
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n).map(|_| r.random_range(lo..=up) as f32).collect(),
            Init::Randn { mean, stdev } => {
                (0..n).map(|_| (mean + stdev * { let e: f64 = StandardNormal.sample(&mut r); e }) as f32).collect()
            }
            Init::Kaiming { dist, fan, non_linearity } => {
                let fan: FanInOut = fan;
                let fan = fan.for_shape(shape);
                let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
                match dist {
                    NormalOrUniform::Uniform => {
                        let b = 3f64.sqrt() * std;
                        (0..n).map(|_| r.random_range(-b..=b) as f32).collect()
                    }
                    NormalOrUniform::Normal => (0..n).map(|_| (std * { let e: f64 = StandardNormal.sample(&mut r); e }) as f32).collect(),
                }
            }
        };
        Tensor::from_vec(data, shape.clone(), &self.device)
    }
}

impl SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(v) = self.lock().get(name) {
            if v.shape() != &s {
                candle_core::bail!("parameter {name}: shape {:?} where {:?} was asked for", v.shape(), s);
            }
            return Ok(v.as_tensor().clone());
        }
        let t = self.init(&s, name, h)?.to_dtype(dtype)?.to_device(dev)?;
        let v = Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        self.lock().insert(name.to_string(), v);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_do_not_follow_later_updates() {
        let store = ParamStore::new(1, &Device::Cpu);
        let _ = store.builder().get_with_hints(3, "w", Init::Const(1.0)).unwrap();
        let snap = store.tensors("w");
        store.vars("w")[0].set(&Tensor::new(&[5f32, 5., 5.], &Device::Cpu).unwrap()).unwrap();
        assert_eq!(snap["w"].to_vec1::<f32>().unwrap(), vec![1.0, 1.0, 1.0]);
        assert_eq!(store.tensors("w")["w"].to_vec1::<f32>().unwrap(), vec![5.0, 5.0, 5.0]);
    }

    #[test]
    fn initial_values_depend_on_seed_and_name_only() {
        let a = ParamStore::new(7, &Device::Cpu);
        let b = ParamStore::new(7, &Device::Cpu);
        let _ = b.builder().get_with_hints((2, 2), "other", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
        let x = a.builder().get_with_hints((2, 2), "x", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
        let y = b.builder().get_with_hints((2, 2), "x", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
        assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
    }
}
