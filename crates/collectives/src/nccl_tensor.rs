//! [`Communicator::all_reduce_sum_tensor`] for NCCL on candle CUDA tensors (features `nccl` and
//! `candle-cuda`): the tensor's device buffer goes to NCCL as it is, on candle's CUDA stream,
//! and the sum comes back as a new tensor on the same device, in the same dtype. Tensors on
//! other devices take the host path.

use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};
use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::NcclType;

use crate::communicator::{check_float, host_all_reduce_tensor, Communicator};
use crate::error::{Error, Result};
use crate::nccl_backend::Nccl;

const WHAT: &str = "all_reduce_sum_tensor";

fn tensor_err(source: candle_core::Error) -> Error {
    Error::Tensor {
        name: WHAT.to_owned(),
        source,
    }
}

/// The NCCL sum of `buf` (f32, bf16, f16 or f64; any shape) over all ranks, on `buf`'s GPU.
pub(crate) fn all_reduce_sum_tensor(nccl: &Nccl, buf: &Tensor) -> Result<Tensor> {
    let Device::Cuda(device) = buf.device() else {
        return host_all_reduce_tensor(nccl, buf);
    };
    check_float(WHAT, nccl.rank(), buf.dtype())?;
    let buf = buf.contiguous().map_err(tensor_err)?;
    let reduced = {
        let (storage, layout) = buf.storage_and_layout();
        let Storage::Cuda(cuda) = &*storage else {
            return Err(invalid(
                nccl,
                "a CUDA device tensor without CUDA storage".to_owned(),
            ));
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(invalid(nccl, "a non-contiguous buffer".to_owned()));
        };
        match buf.dtype() {
            DType::F32 => reduce::<f32>(nccl, device, cuda, start, end)?,
            DType::F64 => reduce::<f64>(nccl, device, cuda, start, end)?,
            DType::BF16 => reduce::<half::bf16>(nccl, device, cuda, start, end)?,
            // F16, the one dtype left that check_float admits.
            _ => reduce::<half::f16>(nccl, device, cuda, start, end)?,
        }
    };
    Ok(Tensor::from_storage(
        Storage::Cuda(reduced),
        buf.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

fn reduce<T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits>(
    nccl: &Nccl,
    device: &candle_core::CudaDevice,
    storage: &CudaStorage,
    start: usize,
    end: usize,
) -> Result<CudaStorage> {
    let slice = storage.as_cuda_slice::<T>().map_err(tensor_err)?;
    let view = slice.slice(start..end);
    let sum = nccl.all_reduce_sum_slice(&device.cuda_stream(), &view)?;
    Ok(CudaStorage::wrap_cuda_slice(sum, device.clone()))
}

fn invalid(nccl: &Nccl, reason: String) -> Error {
    Error::InvalidArgument {
        collective: WHAT,
        rank: nccl.rank(),
        reason,
    }
}
