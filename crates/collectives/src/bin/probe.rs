//! `collectives-probe`: a small driver for the multi-process tests and for manual checks.
//!
//! Run under a launcher, e.g. `mpirun -n 3 collectives-probe basic`. Modes:
//! `basic`, `tensors`, `mismatch`, `fail RANK STEP`, `panic RANK`, `hang`, `doctor MAX_BYTES`,
//! `bench MIN_BYTES MAX_BYTES` (feature `mpi`). The collective timeout comes from the env var
//! `COBA_COLLECTIVE_TIMEOUT_S` (default 600). Exit status 0 means every check passed.

use std::collections::HashMap;
use std::io::Write;

use candle_core::{DType, Device, Tensor};
use collectives::{
    all_reduce_map, doctor, exit_on_error, launch, BucketOptions, Communicator, Error, InitOptions,
};

type Outcome = Result<(), String>;

fn arg(args: &[String], index: usize, default: usize) -> Result<usize, String> {
    args.get(index).map_or(Ok(default), |s| {
        s.parse()
            .map_err(|_| format!("argument {index} `{s}` is not a non-negative integer"))
    })
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn basic(comm: &dyn Communicator) -> Outcome {
    let (r, n) = (comm.rank(), comm.world_size());
    ensure(r < n, || format!("rank {r} outside world {n}"))?;
    // All ranks run on this host in the tests; the shared-memory split must agree.
    ensure(
        comm.local_world_size() == n && comm.local_rank() == r,
        || {
            format!(
                "local {}/{} differs from world {r}/{n} on one host",
                comm.local_rank(),
                comm.local_world_size()
            )
        },
    )?;
    let mut ints: Vec<f32> = (0..100_003).map(|i| ((r + 1) * (i % 17)) as f32).collect();
    comm.all_reduce_sum_f32(&mut ints)
        .map_err(|e| e.to_string())?;
    let tri = n * (n + 1) / 2;
    for (i, x) in ints.iter().enumerate() {
        let want = (tri * (i % 17)) as f32;
        ensure(*x == want, || format!("f32 sum[{i}] = {x}, want {want}"))?;
    }
    let mut floats: Vec<f64> = (0..4099)
        .map(|i| 0.1 * (r + 1) as f64 + 1e-3 * i as f64)
        .collect();
    comm.all_reduce_sum_f64(&mut floats)
        .map_err(|e| e.to_string())?;
    for (i, x) in floats.iter().enumerate() {
        let want = 0.1 * tri as f64 + n as f64 * 1e-3 * i as f64;
        ensure((x - want).abs() <= 1e-6, || {
            format!("f64 sum[{i}] = {x}, want {want}")
        })?;
    }
    comm.all_reduce_sum_f32(&mut [])
        .map_err(|e| e.to_string())?;
    for root in 0..n {
        let payload = format!("root {root} says hello ")
            .repeat(root + 1)
            .into_bytes();
        let mut bytes = if r == root {
            payload.clone()
        } else {
            vec![7; 5]
        };
        comm.broadcast_bytes(&mut bytes, root)
            .map_err(|e| e.to_string())?;
        ensure(bytes == payload, || {
            format!("broadcast_bytes from {root} differs")
        })?;
        let values: Vec<f64> = (0..1000)
            .map(|i| root as f64 * 1000.0 + i as f64 / 3.0)
            .collect();
        let mut got = if r == root {
            values.clone()
        } else {
            vec![0.0; 1000]
        };
        comm.broadcast_f64(&mut got, root)
            .map_err(|e| e.to_string())?;
        ensure(got == values, || {
            format!("broadcast_f64 from {root} differs")
        })?;
    }
    comm.barrier().map_err(|e| e.to_string())?;
    println!("rank {r}/{n}: basic ok");
    Ok(())
}

/// (name, shape) of the tensors the `tensors` mode reduces; the largest (1200 elements, 4800
/// bytes) is bigger than the 1 KiB bucket used.
const SHAPES: &[(&str, &[usize])] = &[
    ("model.layers.0.attn.weight", &[3, 5]),
    ("model.layers.0.mlp.weight", &[1200]),
    ("model.layers.1.attn.weight", &[7]),
    ("model.norm", &[2, 2, 2]),
    ("lm_head", &[600, 2]),
    ("bias", &[1]),
];

/// Element `i` of tensor `k` on rank `r`: small integers, exact in f32, bf16 and f64.
fn value(r: usize, k: usize, i: usize) -> f32 {
    ((r + 1) * (k + 1) + i % 11) as f32
}

fn make_tensors(r: usize) -> Result<HashMap<String, Tensor>, String> {
    let mut map = HashMap::new();
    for (k, (name, shape)) in SHAPES.iter().enumerate() {
        let len: usize = shape.iter().product();
        let data: Vec<f32> = (0..len).map(|i| value(r, k, i)).collect();
        let t = Tensor::from_vec(data, *shape, &Device::Cpu).map_err(|e| e.to_string())?;
        map.insert((*name).to_owned(), t);
    }
    let k = SHAPES.len();
    let f64s: Vec<f64> = (0..9).map(|i| f64::from(value(r, k, i))).collect();
    let t = Tensor::from_vec(f64s, (3, 3), &Device::Cpu).map_err(|e| e.to_string())?;
    map.insert("scale_f64".to_owned(), t);
    let bf: Vec<f32> = (0..5).map(|i| value(r, k + 1, i)).collect();
    let t = Tensor::from_vec(bf, 5, &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::BF16))
        .map_err(|e| e.to_string())?;
    map.insert("embed_bf16".to_owned(), t);
    Ok(map)
}

fn expected(n: usize, k: usize, i: usize) -> f64 {
    (0..n).map(|r| f64::from(value(r, k, i))).sum()
}

fn check_tensors(map: &HashMap<String, Tensor>, n: usize, scale: f64, tol: f64) -> Outcome {
    let mut names: Vec<(String, usize, Vec<usize>)> = SHAPES
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| ((*name).to_owned(), k, shape.to_vec()))
        .collect();
    names.push(("scale_f64".to_owned(), SHAPES.len(), vec![3, 3]));
    names.push(("embed_bf16".to_owned(), SHAPES.len() + 1, vec![5]));
    ensure(map.len() == names.len(), || {
        format!("{} tensors came back", map.len())
    })?;
    for (name, k, shape) in names {
        let t = map.get(&name).ok_or_else(|| format!("`{name}` missing"))?;
        ensure(t.dims() == shape.as_slice(), || {
            format!("`{name}` has shape {:?}", t.dims())
        })?;
        let got = t
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| e.to_string())?;
        for (i, g) in got.iter().enumerate() {
            let want = expected(n, k, i) * scale;
            ensure((g - want).abs() <= tol, || {
                format!("`{name}`[{i}] = {g}, want {want}")
            })?;
        }
    }
    Ok(())
}

fn tensors(comm: &dyn Communicator) -> Outcome {
    let (r, n) = (comm.rank(), comm.world_size());
    let mut map = make_tensors(r)?;
    let sums = BucketOptions {
        bucket_bytes: 1024,
        average: false,
        check_layout: true,
    };
    all_reduce_map(comm, &mut map, &sums).map_err(|e| e.to_string())?;
    check_tensors(&map, n, 1.0, 0.0)?;
    let mut map = make_tensors(r)?;
    let mean = BucketOptions {
        average: true,
        ..BucketOptions::default()
    };
    all_reduce_map(comm, &mut map, &mean).map_err(|e| e.to_string())?;
    // bf16 keeps 8 significant bits: compare relative to the magnitude (< 64 here).
    check_tensors(&map, n, 1.0 / n as f64, 0.25)?;
    tensor_path_equals_host_path(comm)?;
    println!("rank {r}/{n}: tensors ok");
    Ok(())
}

/// The bucketed all-reduce (through `all_reduce_sum_tensor`, 1 KiB buckets that tensors span)
/// equals the host path (`all_reduce_sum_f32` of each tensor's values, one call per tensor),
/// bit for bit, on non-integer values whose sums are exact in any order (multiples of 2^-8);
/// and `all_reduce_sum_tensor` of a transposed (non-contiguous) f32 tensor and of an f64
/// tensor equals the host path too.
fn tensor_path_equals_host_path(comm: &dyn Communicator) -> Outcome {
    let r = comm.rank();
    let err = |e: candle_core::Error| e.to_string();
    let values = |k: usize, len: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((r * 131 + k * 7 + i * 17) % 997) as f32 / 256.0 - 1.5)
            .collect()
    };
    let mut named = Vec::new();
    let mut host = Vec::new();
    for (k, (name, shape)) in SHAPES.iter().enumerate() {
        let len: usize = shape.iter().product();
        let v = values(k, len);
        named.push((
            (*name).to_owned(),
            Tensor::from_vec(v.clone(), *shape, &Device::Cpu).map_err(err)?,
        ));
        host.push(((*name).to_owned(), v));
    }
    let options = BucketOptions {
        bucket_bytes: 1024,
        average: false,
        check_layout: true,
    };
    collectives::all_reduce_named(comm, &mut named, &options).map_err(|e| e.to_string())?;
    for ((name, t), (_, want)) in named.iter().zip(host.iter_mut()) {
        comm.all_reduce_sum_f32(want).map_err(|e| e.to_string())?;
        let got = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)?;
        ensure(got == *want, || {
            format!("`{name}`: bucketed {got:?} != host {want:?}")
        })?;
    }
    let m = Tensor::from_vec(values(99, 12), (3, 4), &Device::Cpu)
        .and_then(|t| t.t())
        .map_err(err)?;
    let got = comm.all_reduce_sum_tensor(&m).map_err(|e| e.to_string())?;
    let mut want = m
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)?;
    comm.all_reduce_sum_f32(&mut want)
        .map_err(|e| e.to_string())?;
    ensure(got.dims() == [4, 3], || {
        format!("transposed: shape {:?}", got.dims())
    })?;
    let got = got
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)?;
    ensure(got == want, || format!("transposed: {got:?} != {want:?}"))?;
    let d: Vec<f64> = values(7, 5)
        .into_iter()
        .map(|x| f64::from(x) / 3.0)
        .collect();
    let t = Tensor::from_vec(d.clone(), 5, &Device::Cpu).map_err(err)?;
    let got = comm.all_reduce_sum_tensor(&t).map_err(|e| e.to_string())?;
    let mut want = d;
    comm.all_reduce_sum_f64(&mut want)
        .map_err(|e| e.to_string())?;
    let got = got.to_vec1::<f64>().map_err(err)?;
    ensure(got == want, || format!("f64: {got:?} != {want:?}"))
}

fn mismatch(comm: &dyn Communicator) -> Outcome {
    let r = comm.rank();
    let mut map = make_tensors(0)?;
    if r == 1 {
        let t = Tensor::zeros(4, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
        map.insert("bias".to_owned(), t);
    }
    match all_reduce_map(comm, &mut map, &BucketOptions::default()) {
        Err(Error::LayoutMismatch { .. }) => {
            println!("rank {r}: layout mismatch detected");
            Ok(())
        }
        other => Err(format!("expected a layout mismatch, got {other:?}")),
    }
}

fn fail(comm: &dyn Communicator, fail_rank: usize, fail_step: u64) -> Outcome {
    for step in 0..1000 {
        comm.set_step(step);
        let mut buf = vec![1.0f32; 1024];
        comm.all_reduce_sum_f32(&mut buf)
            .map_err(|e| e.to_string())?;
        if comm.rank() == fail_rank && step == fail_step {
            return Err(format!("injected failure at step {step}"));
        }
    }
    Ok(())
}

fn hang(comm: &dyn Communicator) -> Outcome {
    comm.set_step(7);
    if comm.rank() + 1 == comm.world_size() {
        // This rank never joins: its peers' watchdogs must end the job.
        std::thread::sleep(std::time::Duration::from_secs(3600));
        return Err("the watchdog did not end the job".to_owned());
    }
    let mut buf = vec![1.0f32; 16];
    comm.all_reduce_sum_f32(&mut buf).map_err(|e| e.to_string())
}

fn run_doctor(comm: &dyn Communicator, max_bytes: usize) -> Result<bool, String> {
    let options = doctor::DoctorOptions {
        min_bytes: 1024,
        max_bytes,
        threads: launch::default_threads(comm),
        ..doctor::DoctorOptions::default()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let report = doctor::run(comm, &options, &mut out).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(report.passed())
}

#[cfg(feature = "mpi")]
mod bench {
    //! Wrapper (`Communicator::all_reduce_sum_f32`, in place) vs a raw rsmpi
    //! `all_reduce_into` (separate receive buffer), same payloads, interleaved.
    use collectives::{Communicator, Mpi};
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use std::time::Instant;

    fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    }

    pub fn run(comm: &Mpi, min: usize, max: usize) -> Result<(), String> {
        let world = comm.world();
        let lead = comm.rank() == 0;
        if lead {
            println!(
                "{:>12} {:>12} {:>12} {:>10}",
                "size(B)", "raw(GB/s)", "ours(GB/s)", "overhead"
            );
        }
        let mut bytes = min.max(4);
        while bytes <= max {
            let n = bytes / 4;
            let send = vec![1.0f32; n];
            let mut recv = vec![0.0f32; n];
            let mut ours = vec![1.0f32; n];
            let reps = ((1usize << 31) / bytes).clamp(5, 50);
            let (mut raw_t, mut our_t) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..3 {
                comm.barrier().map_err(|e| e.to_string())?;
                raw_t = raw_t.min(best_of(reps, || {
                    world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum())
                }));
                comm.barrier().map_err(|e| e.to_string())?;
                let mut err = None;
                our_t = our_t.min(best_of(reps, || {
                    if let Err(e) = comm.all_reduce_sum_f32(&mut ours) {
                        err = Some(e.to_string());
                    }
                }));
                if let Some(e) = err {
                    return Err(e);
                }
            }
            // Rank 0's view; both ranks see the same collective completion times +- skew.
            if lead {
                let gbs = |t: f64| bytes as f64 / t / 1e9;
                println!(
                    "{bytes:>12} {:>12.3} {:>12.3} {:>9.1}%",
                    gbs(raw_t),
                    gbs(our_t),
                    (our_t / raw_t - 1.0) * 100.0
                );
            }
            bytes *= 4;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("basic", String::as_str).to_owned();
    let timeout = std::env::var("COBA_COLLECTIVE_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(collectives::DEFAULT_COLLECTIVE_TIMEOUT_S);
    #[cfg(feature = "mpi")]
    if mode == "bench" {
        let outcome = collectives::Mpi::init(Some(std::time::Duration::from_secs(timeout)))
            .map_err(|e| e.to_string())
            .and_then(|comm| {
                let min = arg(&args, 1, 1 << 20)?;
                let max = arg(&args, 2, 256 << 20)?;
                bench::run(&comm, min, max)
            });
        if let Err(e) = outcome {
            eprintln!("collectives-probe: {e}");
            std::process::exit(1);
        }
        return;
    }
    let options = InitOptions {
        collective_timeout_s: timeout,
        ..InitOptions::default()
    };
    let comm = match collectives::init(&options) {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("collectives-probe: {e}");
            std::process::exit(2);
        }
    };
    let comm: &dyn Communicator = &*comm;
    let outcome = match mode.as_str() {
        "basic" => basic(comm),
        "tensors" => tensors(comm),
        "mismatch" => mismatch(comm),
        "fail" => arg(&args, 1, 1)
            .and_then(|rank| Ok((rank, arg(&args, 2, 3)? as u64)))
            .and_then(|(rank, step)| fail(comm, rank, step)),
        "panic" => {
            let rank = exit_on_error(comm, arg(&args, 1, 1));
            comm.set_step(2);
            comm.barrier().map_err(|e| e.to_string()).and_then(|()| {
                if comm.rank() == rank {
                    panic!("injected panic on rank {rank}");
                }
                comm.barrier().map_err(|e| e.to_string())
            })
        }
        "hang" => hang(comm),
        "doctor" => arg(&args, 1, 256 << 20)
            .and_then(|max| run_doctor(comm, max))
            .and_then(|passed| ensure(passed, || "doctor checks failed".to_owned())),
        other => Err(format!("unknown mode `{other}`")),
    };
    exit_on_error(comm, outcome);
}
