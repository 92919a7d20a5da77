//! The device a rank trains on (`runtime.device`): the CPU, or with a CUDA build the GPU
//! `local_rank % visible GPUs` (the CUDA driver applies a pre-set `CUDA_VISIBLE_DEVICES`, so
//! a scheduler's GPU binding is respected), as the NCCL backend picks its GPU.

use super::config::DeviceChoice;
use anyhow::{bail, Result};
use candle_core::Device;

/// The device of `choice` for the rank with `local_rank` on its host, and its name for logs
/// (`cpu`, `cuda:1 (NVIDIA H200)`).
///
/// # Errors
/// `cuda` in a binary built without CUDA, or no GPU visible, or the GPU fails to open.
pub fn select(choice: DeviceChoice, local_rank: usize) -> Result<(Device, String)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, "cpu".into())),
        DeviceChoice::Cuda => cuda(local_rank),
        DeviceChoice::Auto if visible_gpus() > 0 => cuda(local_rank),
        DeviceChoice::Auto => Ok((Device::Cpu, "cpu".into())),
    }
}

/// Whether ranks with this `runtime.device` compute on GPUs (`cpu` never; `auto` and `cuda`
/// when a GPU is visible): [`collectives::InitOptions::gpu_ranks`], under which
/// `runtime.backend = "auto"` takes NCCL when every rank has a GPU of its own.
pub fn gpu_ranks(choice: DeviceChoice) -> bool {
    choice != DeviceChoice::Cpu && visible_gpus() > 0
}

/// What this binary was built with, for `doctor`: `build: mpi yes, nccl no, cuda no (GPU
/// builds: scripts/build-cuda.sh)`.
pub fn build_line() -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let cuda = cfg!(feature = "cuda");
    format!(
        "build: mpi {}, nccl {}, cuda {}{}",
        yes(collectives::MPI_COMPILED),
        yes(collectives::NCCL_COMPILED),
        yes(cuda),
        if cuda {
            ""
        } else {
            " (GPU builds: scripts/build-cuda.sh)"
        }
    )
}

/// GPUs the CUDA driver shows this process (0 in a CPU build or without a driver).
pub fn visible_gpus() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// One line on the GPU stack of `device`, for `doctor` and the device check: the GPU's name,
/// the CUDA version its driver supports and the NCCL library's version; `None` on the CPU.
pub fn gpu_environment(device: &Device) -> Option<String> {
    let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
        return None;
    };
    let nccl = collectives::nccl_version().unwrap_or_else(|why| format!("none ({why})"));
    Some(format!(
        "gpu: cuda:{gpu_id} {}; NCCL {nccl}",
        cuda_details(gpu_id)
    ))
}

/// The GPU's name and the driver's CUDA version, e.g. `NVIDIA H200, driver CUDA 13.0`.
#[cfg(feature = "cuda")]
fn cuda_details(ordinal: usize) -> String {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext};
    let name = CudaContext::new(ordinal)
        .and_then(|ctx| ctx.name())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let mut version: std::os::raw::c_int = 0;
    // SAFETY: cuDriverGetVersion only writes one int through the valid pointer given.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    let driver = if status == sys::CUresult::CUDA_SUCCESS {
        format!("{}.{}", version / 1000, (version % 1000) / 10)
    } else {
        format!("unknown ({status:?})")
    };
    format!("{name}, driver CUDA {driver}")
}

#[cfg(not(feature = "cuda"))]
fn cuda_details(_ordinal: usize) -> String {
    "(CPU build)".to_owned()
}

#[cfg(feature = "cuda")]
fn cuda(local_rank: usize) -> Result<(Device, String)> {
    use anyhow::Context;
    let count = cuda_visible()?;
    let ordinal = local_rank % count;
    let device = Device::new_cuda(ordinal)
        .with_context(|| format!("opening GPU {ordinal} of {count} visible"))?;
    Ok((device, format!("cuda:{ordinal}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_local_rank: usize) -> Result<(Device, String)> {
    bail!(NOT_BUILT)
}

#[cfg(not(feature = "cuda"))]
const NOT_BUILT: &str = "runtime.device (or --device) = \"cuda\": this binary was built without \
                         CUDA; build one with scripts/build-cuda.sh (README, \"GPU\"), or use \
                         the CPU (\"cpu\")";

/// Whether `choice` can be honoured on this machine, checked before any work (a run should
/// not load its data to find out): `cuda` needs a CUDA build and a visible GPU. The errors are
/// [`select`]'s; `auto` and `cpu` always pass.
///
/// # Errors
/// `cuda` in a binary built without CUDA, or with no GPU visible.
pub fn check(choice: DeviceChoice) -> Result<()> {
    if choice != DeviceChoice::Cuda {
        return Ok(());
    }
    cuda_visible().map(|_| ())
}

/// The number of visible GPUs, or why `cuda` cannot be used.
#[cfg(feature = "cuda")]
fn cuda_visible() -> Result<usize> {
    let count = visible_gpus();
    if count == 0 {
        bail!(
            "runtime.device (or --device) = \"cuda\": no GPU visible (CUDA_VISIBLE_DEVICES={}; \
             is the NVIDIA driver loaded?)",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into())
        );
    }
    Ok(count)
}

#[cfg(not(feature = "cuda"))]
fn cuda_visible() -> Result<usize> {
    bail!(NOT_BUILT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_ranks_need_a_visible_gpu_and_never_come_from_cpu() {
        assert!(!gpu_ranks(DeviceChoice::Cpu));
        for choice in [DeviceChoice::Auto, DeviceChoice::Cuda] {
            assert_eq!(gpu_ranks(choice), visible_gpus() > 0, "{choice:?}");
        }
    }

    #[test]
    fn the_early_check_agrees_with_select() {
        for choice in [DeviceChoice::Cpu, DeviceChoice::Auto, DeviceChoice::Cuda] {
            let early = check(choice).map_err(|e| e.to_string());
            let late = select(choice, 0).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(early, late, "{choice:?}");
        }
    }

    #[test]
    fn cpu_and_auto_without_a_gpu_give_the_cpu_and_cuda_explains_itself() {
        assert!(select(DeviceChoice::Cpu, 3).unwrap().0.is_cpu());
        if visible_gpus() == 0 {
            let (d, name) = select(DeviceChoice::Auto, 0).unwrap();
            assert!(d.is_cpu() && name == "cpu");
            let e = select(DeviceChoice::Cuda, 0).unwrap_err().to_string();
            assert!(e.contains("runtime.device"), "{e}");
        }
    }
}
