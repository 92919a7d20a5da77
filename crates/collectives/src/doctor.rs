//! `coba-dist doctor`: who is in the job, do the collectives compute the right values, and how
//! fast is an all-reduce.
//!
//! Every rank must call [`run`]; rank 0 writes the report. The bandwidth table times the path
//! gradients take: [`Communicator::all_reduce_sum_tensor`] on f32 tensors of the training
//! device (NCCL on the GPU buffer, or host staging for MPI). Bandwidths follow nccl-tests:
//! `algbw = bytes / time`, `busbw = algbw * 2 (n - 1) / n` for an all-reduce over `n` ranks,
//! in GB/s (10^9 bytes per second); `time` is the mean over ranks of the mean per call.

use std::io::Write;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::bucket::{all_reduce_named, BucketOptions};
use crate::communicator::Communicator;
use crate::error::{Error, Result};

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// Smallest all-reduce payload, in bytes (default 1 KiB).
    pub min_bytes: usize,
    /// Largest all-reduce payload, in bytes (default 256 MiB).
    pub max_bytes: usize,
    /// CPU threads per rank, for the per-rank line (the caller sets them).
    pub threads: usize,
    /// The training device: the bucketed device check and the bandwidth table use tensors on
    /// it (this rank's GPU for NCCL).
    pub device: Device,
    /// Lines rank 0 prints first (e.g. the GPU, driver and NCCL versions).
    pub environment: Vec<String>,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        Self {
            min_bytes: 1 << 10,
            max_bytes: 256 << 20,
            threads: 1,
            device: Device::Cpu,
            environment: Vec::new(),
        }
    }
}

/// One correctness check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Number of ranks on which it failed (the same on every rank).
    pub failed_ranks: usize,
}

/// One row of the bandwidth table.
#[derive(Debug, Clone, PartialEq)]
pub struct Bandwidth {
    /// Payload per rank, in bytes.
    pub bytes: usize,
    /// Mean time of one all-reduce, in seconds.
    pub seconds: f64,
    /// Algorithm bandwidth, GB/s.
    pub algbw_gbs: f64,
    /// Bus bandwidth, GB/s.
    pub busbw_gbs: f64,
}

/// The doctor's findings (identical on every rank).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// One line per rank, in rank order.
    pub ranks: Vec<String>,
    /// Correctness checks.
    pub checks: Vec<Check>,
    /// All-reduce bandwidth by payload size.
    pub bandwidth: Vec<Bandwidth>,
}

impl Report {
    /// Whether every check passed on every rank.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failed_ranks == 0)
    }
}

/// nccl-tests' bus bandwidth of an all-reduce: `algbw * 2 (n - 1) / n`.
pub fn bus_bandwidth(algbw: f64, world_size: usize) -> f64 {
    let n = world_size.max(1) as f64;
    algbw * 2.0 * (n - 1.0) / n
}

/// Payload sizes from `min` to `max` bytes, doubling, each a multiple of 4 bytes.
pub fn sizes(min: usize, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut s = min.max(4) / 4 * 4;
    while s <= max {
        out.push(s);
        s *= 2;
    }
    out
}

/// Calls per size: enough to time small payloads, few for large ones (same on every rank).
fn iterations(bytes: usize) -> usize {
    ((1usize << 30) / bytes.max(1)).clamp(3, 100)
}

/// A correctness check: `Ok(true)` if this rank saw the expected values.
type CheckFn = fn(&dyn Communicator) -> Result<bool>;

/// Count the ranks where `ok` is false (the result is the same on every rank).
fn failures(comm: &dyn Communicator, ok: bool) -> Result<usize> {
    let mut v = [if ok { 0.0 } else { 1.0 }];
    comm.all_reduce_sum_f64(&mut v)?;
    Ok(v[0] as usize)
}

fn check_all_reduce_f32(comm: &dyn Communicator) -> Result<bool> {
    let r = comm.rank() as f32 + 1.0;
    let n = comm.world_size() as f32;
    let mut buf: Vec<f32> = (0..1031).map(|i| r * (i % 13 + 1) as f32).collect();
    comm.all_reduce_sum_f32(&mut buf)?;
    let ranks_sum = n * (n + 1.0) / 2.0;
    Ok(buf
        .iter()
        .enumerate()
        .all(|(i, &x)| x == ranks_sum * (i % 13 + 1) as f32))
}

fn check_all_reduce_f64(comm: &dyn Communicator) -> Result<bool> {
    let r = comm.rank() as f64;
    let n = comm.world_size() as f64;
    let mut buf: Vec<f64> = (0..517).map(|i| 0.1 * r + 1e-3 * i as f64).collect();
    comm.all_reduce_sum_f64(&mut buf)?;
    Ok(buf.iter().enumerate().all(|(i, &x)| {
        let want = 0.1 * n * (n - 1.0) / 2.0 + n * 1e-3 * i as f64;
        (x - want).abs() <= 1e-6 * want.abs().max(1.0)
    }))
}

fn check_broadcasts(comm: &dyn Communicator) -> Result<bool> {
    let root = comm.world_size() - 1;
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut bytes = if comm.rank() == root {
        payload.clone()
    } else {
        vec![0xAA; 3]
    };
    comm.broadcast_bytes(&mut bytes, root)?;
    let values: Vec<f64> = (0..257).map(|i| f64::from(i) * 0.25 - 3.0).collect();
    let mut floats = if comm.rank() == 0 {
        values.clone()
    } else {
        vec![f64::NAN; values.len()]
    };
    comm.broadcast_f64(&mut floats, 0)?;
    Ok(bytes == payload && floats == values)
}

/// The bucketed all-reduce of device tensors: f32 (spanning 1 KiB buckets), bf16 and f64
/// tensors of small integers (exact in every dtype) sum to the closed form on every rank.
fn check_device_buckets(comm: &dyn Communicator, device: &Device) -> Result<bool> {
    let r = comm.rank() as f64 + 1.0;
    let n = comm.world_size() as f64;
    let ranks_sum = n * (n + 1.0) / 2.0;
    let specs = [
        ("a_f32", DType::F32, 700),
        ("b_bf16", DType::BF16, 33),
        ("c_f64", DType::F64, 9),
    ];
    let err = |name: &str| {
        let name = name.to_owned();
        move |source| Error::Tensor { name, source }
    };
    let mut list = Vec::new();
    for (name, dtype, len) in specs {
        let values: Vec<f64> = (0..len).map(|i| r * (i % 7 + 1) as f64).collect();
        let t = Tensor::from_vec(values, len, device)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(err(name))?;
        list.push((name.to_owned(), t));
    }
    let options = BucketOptions {
        bucket_bytes: 1024,
        ..BucketOptions::default()
    };
    all_reduce_named(comm, &mut list, &options)?;
    let mut ok = true;
    for ((name, t), (_, dtype, len)) in list.iter().zip(specs) {
        let got = t
            .to_dtype(DType::F64)
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(err(name))?;
        ok &= t.dtype() == dtype
            && t.device().same_device(device)
            && got.len() == len
            && got
                .iter()
                .enumerate()
                .all(|(i, &x)| x == ranks_sum * (i % 7 + 1) as f64);
    }
    Ok(ok)
}

fn measure(comm: &dyn Communicator, device: &Device, bytes: usize) -> Result<Bandwidth> {
    let buf = Tensor::ones(bytes / 4, DType::F32, device).map_err(|source| Error::Tensor {
        name: "doctor bandwidth buffer".to_owned(),
        source,
    })?;
    comm.all_reduce_sum_tensor(&buf)?; // warm-up: page faults, connection set-up
    comm.barrier()?;
    let iters = iterations(bytes);
    let start = Instant::now();
    for _ in 0..iters {
        comm.all_reduce_sum_tensor(&buf)?;
    }
    let mut seconds = [start.elapsed().as_secs_f64() / iters as f64];
    comm.all_reduce_sum_f64(&mut seconds)?;
    let seconds = seconds[0] / comm.world_size() as f64;
    let algbw_gbs = bytes as f64 / seconds / 1e9;
    Ok(Bandwidth {
        bytes,
        seconds,
        algbw_gbs,
        busbw_gbs: bus_bandwidth(algbw_gbs, comm.world_size()),
    })
}

/// Run the doctor on every rank; rank 0 prints to `out` as it goes. Returns the report (the
/// same on every rank); check [`Report::passed`] for the exit status.
pub fn run(
    comm: &dyn Communicator,
    options: &DoctorOptions,
    out: &mut dyn Write,
) -> Result<Report> {
    if options.max_bytes < options.min_bytes {
        return Err(Error::InvalidArgument {
            collective: "doctor",
            rank: comm.rank(),
            reason: format!(
                "max_bytes {} is below min_bytes {}",
                options.max_bytes, options.min_bytes
            ),
        });
    }
    let lead = comm.rank() == 0;
    let own = format!(
        "rank {:>4}/{}  local {:>3}/{}  host {}  backend {}  device {}  threads {}",
        comm.rank(),
        comm.world_size(),
        comm.local_rank(),
        comm.local_world_size(),
        comm.host(),
        comm.backend(),
        comm.device(),
        options.threads
    );
    let ranks = crate::gather_lines(comm, &own)?;
    if lead {
        options
            .environment
            .iter()
            .chain(&ranks)
            .try_for_each(|line| writeln!(out, "{line}"))?;
    }
    let mut checks = Vec::new();
    let tests: [(&'static str, CheckFn); 3] = [
        ("all_reduce_sum_f32 (exact integers)", check_all_reduce_f32),
        ("all_reduce_sum_f64 (to 1e-6)", check_all_reduce_f64),
        ("broadcast_bytes and broadcast_f64", check_broadcasts),
    ];
    let device_check = (
        "bucketed all_reduce of f32/bf16/f64 device tensors (exact integers)",
        check_device_buckets(comm, &options.device)?,
    );
    let results = tests
        .into_iter()
        .map(|(name, test)| Ok((name, test(comm)?)))
        .collect::<Result<Vec<_>>>()?;
    for (name, ok) in results.into_iter().chain([device_check]) {
        let failed_ranks = failures(comm, ok)?;
        if lead {
            let verdict = if failed_ranks == 0 {
                "ok".to_owned()
            } else {
                format!("FAILED on {failed_ranks} rank(s)")
            };
            writeln!(out, "check {name}: {verdict}")?;
        }
        checks.push(Check { name, failed_ranks });
    }
    if lead {
        if comm.world_size() == 1 {
            // Nothing crosses a link: the rows time the local path (a copy, or nothing).
            writeln!(
                out,
                "one rank: no link to measure (start doctor under mpirun/srun for bandwidth)"
            )?;
        }
        writeln!(
            out,
            "{:>12} {:>12} {:>12} {:>12}",
            "size(B)", "time(us)", "algbw(GB/s)", "busbw(GB/s)"
        )?;
    }
    let mut bandwidth = Vec::new();
    for bytes in sizes(options.min_bytes, options.max_bytes) {
        let row = measure(comm, &options.device, bytes)?;
        if lead {
            writeln!(
                out,
                "{:>12} {:>12.1} {:>12.3} {:>12.3}",
                row.bytes,
                row.seconds * 1e6,
                row.algbw_gbs,
                row.busbw_gbs
            )?;
            out.flush()?;
        }
        bandwidth.push(row);
    }
    let report = Report {
        ranks,
        checks,
        bandwidth,
    };
    if lead {
        let verdict = if report.passed() { "PASSED" } else { "FAILED" };
        writeln!(out, "doctor: {verdict}")?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Local;

    #[test]
    fn busbw_matches_nccl_tests() {
        assert_eq!(bus_bandwidth(10.0, 1), 0.0);
        assert_eq!(bus_bandwidth(10.0, 2), 10.0);
        assert_eq!(bus_bandwidth(12.0, 4), 18.0);
    }

    #[test]
    fn sizes_double_from_1_kib_to_256_mib() {
        let s = sizes(1 << 10, 256 << 20);
        assert_eq!(s.len(), 19);
        assert_eq!((s[0], s[18]), (1024, 256 << 20));
        assert_eq!(sizes(6, 20), [4, 8, 16]);
    }

    #[test]
    fn local_doctor_passes_and_prints() {
        let opts = DoctorOptions {
            min_bytes: 1024,
            max_bytes: 4096,
            threads: 2,
            environment: vec!["gpu: none".to_owned()],
            ..DoctorOptions::default()
        };
        let mut out = Vec::new();
        let report = run(&Local::new(), &opts, &mut out).unwrap();
        assert!(report.passed());
        assert_eq!(report.bandwidth.len(), 3);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("backend local  device cpu  threads 2"),
            "{text}"
        );
        assert!(text.starts_with("gpu: none\n"), "{text}");
        assert!(
            text.contains("device tensors (exact integers): ok"),
            "{text}"
        );
        assert!(text.contains("doctor: PASSED"), "{text}");
    }

    #[test]
    fn inverted_sizes_are_rejected() {
        let opts = DoctorOptions {
            min_bytes: 4096,
            max_bytes: 1024,
            threads: 1,
            ..DoctorOptions::default()
        };
        assert!(run(&Local::new(), &opts, &mut Vec::new()).is_err());
    }
}
