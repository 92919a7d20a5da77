//! `coba-dist`: a thin dispatcher; all logic lives in the library crates and `cli/`.

use std::process::ExitCode;

// glibc malloc spends about half of a CPU training step in page faults on freshly allocated
// activation buffers; mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    trainer::alloc::keep_freed_memory();
    trainer::cli::main()
}
