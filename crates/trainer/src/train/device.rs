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

/// `runtime.backend` with `auto` settled for a rank that will train on `device`: NCCL when
/// several processes were `launched`, the binary has NCCL and the ranks train on GPUs
/// (`runtime.device` is not `cpu` and `gpus` are visible), so gradients stay on the device;
/// otherwise `choice` unchanged, which [`collectives::init`] turns into MPI under a launcher
/// and the local backend alone. An explicit backend is never changed.
pub fn resolve_backend(
    choice: collectives::BackendChoice,
    device: DeviceChoice,
    launched: bool,
    nccl_compiled: bool,
    gpus: usize,
) -> collectives::BackendChoice {
    use collectives::BackendChoice;
    let on_gpus = device != DeviceChoice::Cpu && gpus > 0;
    match choice {
        BackendChoice::Auto if launched && nccl_compiled && on_gpus => BackendChoice::Nccl,
        other => other,
    }
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
    let count = visible_gpus();
    if count == 0 {
        bail!(
            "runtime.device (or --device) = \"cuda\": no GPU visible (CUDA_VISIBLE_DEVICES={}; \
             is the NVIDIA driver loaded?)",
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "<unset>".into())
        );
    }
    let ordinal = local_rank % count;
    let device = Device::new_cuda(ordinal)
        .with_context(|| format!("opening GPU {ordinal} of {count} visible"))?;
    Ok((device, format!("cuda:{ordinal}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_local_rank: usize) -> Result<(Device, String)> {
    bail!(
        "runtime.device (or --device) = \"cuda\": this binary was built without CUDA; build one \
         with scripts/build-cuda.sh (README, \"GPU\"), or use the CPU (\"cpu\")"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_backend_is_nccl_only_for_launched_gpu_ranks_of_an_nccl_build() {
        use collectives::BackendChoice::{Auto, Local, Mpi, Nccl};
        use DeviceChoice::{Auto as AnyDevice, Cpu, Cuda};
        assert_eq!(resolve_backend(Auto, AnyDevice, true, true, 8), Nccl);
        assert_eq!(resolve_backend(Auto, Cuda, true, true, 1), Nccl);
        // The CPU asked for, no GPU visible, no NCCL in the binary, or a world of one: auto.
        assert_eq!(resolve_backend(Auto, Cpu, true, true, 8), Auto);
        assert_eq!(resolve_backend(Auto, AnyDevice, true, true, 0), Auto);
        assert_eq!(resolve_backend(Auto, Cuda, true, false, 8), Auto);
        assert_eq!(resolve_backend(Auto, Cuda, false, true, 8), Auto);
        // An explicit choice stays.
        for b in [Local, Mpi, Nccl] {
            assert_eq!(resolve_backend(b, Cuda, true, true, 8), b);
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
