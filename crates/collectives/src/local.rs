//! [`Local`]: a world of one process. Collectives are identities; no system dependency.

use crate::communicator::{check_float, check_root, host_name, Backend, Communicator, StepCounter};
use crate::error::Result;

/// The single-process communicator.
#[derive(Debug, Default)]
pub struct Local {
    step: StepCounter,
}

impl Local {
    /// A world of one.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Communicator for Local {
    fn backend(&self) -> Backend {
        Backend::Local
    }
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_world_size(&self) -> usize {
        1
    }
    fn host(&self) -> String {
        host_name()
    }
    fn device(&self) -> String {
        "cpu".to_owned()
    }
    fn set_step(&self, step: u64) {
        self.step.set(step);
    }
    fn step(&self) -> u64 {
        self.step.get()
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    /// The identity, without a copy: the tensor stays where it is (a single-GPU run moves
    /// no gradient through host memory). Integer dtypes are refused as on every backend.
    fn all_reduce_sum_tensor(&self, buf: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        check_float("all_reduce_sum_tensor", 0, buf.dtype())?;
        Ok(buf.clone())
    }
    fn broadcast_bytes(&self, _buf: &mut Vec<u8>, root: usize) -> Result<()> {
        check_root("broadcast_bytes", root, 0, 1)
    }
    fn broadcast_f64(&self, _buf: &mut [f64], root: usize) -> Result<()> {
        check_root("broadcast_f64", root, 0, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_comes_back_unchanged_and_integers_are_refused() {
        use candle_core::{DType, Device, Tensor};
        let c = Local::new();
        let t = Tensor::from_slice(&[0.5f32, -3.0, 7.25], 3, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::BF16))
            .unwrap();
        let r = c.all_reduce_sum_tensor(&t).unwrap();
        assert_eq!(r.dtype(), DType::BF16);
        let values = |x: &Tensor| x.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&r), [0.5, -3.0, 7.25]);
        let ids = Tensor::from_slice(&[1u32], 1, &Device::Cpu).unwrap();
        let e = c.all_reduce_sum_tensor(&ids).unwrap_err().to_string();
        assert!(e.contains("dtype U32"), "{e}");
    }

    #[test]
    fn world_of_one_keeps_data() {
        let c = Local::new();
        assert_eq!((c.rank(), c.world_size()), (0, 1));
        assert_eq!((c.local_rank(), c.local_world_size()), (0, 1));
        let mut a = vec![1.5f32, -2.0];
        c.all_reduce_sum_f32(&mut a).unwrap();
        assert_eq!(a, [1.5, -2.0]);
        let mut b = b"abc".to_vec();
        c.broadcast_bytes(&mut b, 0).unwrap();
        assert_eq!(b, b"abc");
        c.set_step(42);
        assert_eq!(c.step(), 42);
    }

    #[test]
    fn root_out_of_range_is_an_error() {
        let c = Local::new();
        let err = c.broadcast_f64(&mut [1.0], 1).unwrap_err().to_string();
        assert!(
            err.contains("broadcast_f64") && err.contains("root 1"),
            "{err}"
        );
    }
}
