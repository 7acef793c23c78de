//! Picking a compiled-in Burn backend at run time.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{ModelError, Result};

/// The backends a user can ask for with `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// Burn's flex backend (gemm matrix products, AVX-512 where the CPU has it) with kiln's
    /// fused kernels: the default CPU backend.
    #[default]
    Cpu,
    /// Burn's ndarray backend (SIMD + rayon), deprecated in Burn 0.22 and kept selectable: it
    /// runs kiln's kernels through their primitive-op bodies.
    NdArray,
    /// Burn's wgpu backend, compiled in with the `wgpu` cargo feature.
    Wgpu,
}

impl DeviceChoice {
    /// Backends this build of kiln contains.
    pub fn compiled_in() -> &'static [&'static str] {
        if cfg!(feature = "wgpu") {
            &["cpu", "ndarray", "wgpu"]
        } else {
            &["cpu", "ndarray"]
        }
    }

    /// The Burn device for this choice, or an error naming the missing cargo feature.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::flex()),
            #[allow(deprecated)]
            DeviceChoice::NdArray => Ok(Device::ndarray()),
            DeviceChoice::Wgpu => wgpu_device(),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device> {
    Err(ModelError::BackendNotCompiled {
        name: "wgpu".into(),
    })
}

impl FromStr for DeviceChoice {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" | "flex" => Ok(DeviceChoice::Cpu),
            "ndarray" => Ok(DeviceChoice::NdArray),
            "wgpu" | "gpu" => Ok(DeviceChoice::Wgpu),
            other => Err(ModelError::InvalidInput(format!(
                "unknown device `{other}`: expected `cpu` (flex), `ndarray` or `wgpu` (compiled in: {})",
                Self::compiled_in().join(", ")
            ))),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::NdArray => "ndarray",
            DeviceChoice::Wgpu => "wgpu",
        })
    }
}
