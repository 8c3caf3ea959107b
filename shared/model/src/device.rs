//! The compute device a user names (`cpu`, `cuda:N`), shared by every binary's `--device`.

use candle_core::Device;

/// Why a device name cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?}: use cpu or cuda:N")]
    Unknown(String),
    #[error("device {0:?}: cuda:N takes a number")]
    BadOrdinal(String),
    #[error("--device cuda:{0} needs a build with `--features cuda` (see docs/gpu.md)")]
    NotBuilt(usize),
    #[error("opening cuda:{0}: {1}")]
    Open(usize, String),
}

/// Opens the named device. `cuda` alone means `cuda:0`.
pub fn open(name: &str) -> Result<Device, DeviceError> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(rest) = name.strip_prefix("cuda") else {
        return Err(DeviceError::Unknown(name.to_string()));
    };
    let ordinal: usize = match rest.strip_prefix(':') {
        Some(n) => n.parse().map_err(|_| DeviceError::BadOrdinal(name.to_string()))?,
        None if rest.is_empty() => 0,
        None => return Err(DeviceError::Unknown(name.to_string())),
    };
    open_cuda(ordinal)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Open(ordinal, e.to_string()))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotBuilt(ordinal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        assert_eq!(open("gpu").err(), Some(DeviceError::Unknown("gpu".into())));
        assert_eq!(open("cuda:x").err(), Some(DeviceError::BadOrdinal("cuda:x".into())));
        #[cfg(not(feature = "cuda"))]
        assert_eq!(open("cuda:1").err(), Some(DeviceError::NotBuilt(1)));
    }
}
