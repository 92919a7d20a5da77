//! One training step of a randomly initialised Llama (forward, backward, AdamW) on a fixed
//! batch: the Rust side of `scripts/bench-step.sh`, which runs it alternately with the PyTorch
//! peer (`scripts/bench/torch_llama_step.py`) on the same shape. The benchmark itself is
//! [`trainer::bench_step`] (also `coba-dist bench-step`).
//!
//! `cargo bench -p trainer --bench step -- [--threads 2 --steps 5 --vocab 8192 --d 256
//! --layers 8 --heads 8 --ffn 688 --batch 8 --seq 256 --lora R --quant q8_0]` prints one line
//! (`--help` lists every flag).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    trainer::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = trainer::bench_step::parse(&args).and_then(|parsed| match parsed {
        None => Ok(trainer::bench_step::usage()),
        Some(bench) => trainer::bench_step::run(&bench),
    });
    match result {
        Ok(text) => {
            println!("{}", text.trim_end());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("step bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
