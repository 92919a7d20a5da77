//! `scripts/install-deps.sh` decides whether libclang is present the way bindgen (clang-sys
//! 1.9, `runtime` feature, as rsmpi's build uses it) decides, on fake library directories.
//!
//! Regression (issue "first hour", item 1): a fresh Debian image has `libclang-cpp.so.14`
//! (pulled in by other packages) but no `libclang.so`; the old check took any `libclang*.so*`
//! as libclang, skipped installing libclang-dev, and bindgen then failed in `mpi-sys`.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-deps.sh")
}

/// Writes a file starting with the ELF magic (what clang-sys checks before loading).
fn elf(path: &Path) {
    std::fs::write(path, b"\x7fELF\x02\x01\x01\0").unwrap();
}

/// `find_bindgen_libclang DIR...` from the sourced script: `Some(path)` it printed, or `None`
/// when it reported that there is none.
fn found(dirs: &[&Path]) -> Option<String> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "source {:?}; find_bindgen_libclang \"$@\" || echo NONE",
            script()
        ))
        .arg("bash");
    for d in dirs {
        cmd.arg(d);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8(o.stdout).unwrap().trim().to_string();
    (out != "NONE").then_some(out)
}

#[test]
fn fresh_machine_libclang_cpp_alone_is_not_libclang() {
    let d = tempfile::tempdir().unwrap();
    // What a fresh Debian 12 image has: the C++ library and static archives, no libclang.so.
    elf(&d.path().join("libclang-cpp.so.14"));
    elf(&d.path().join("libclang-cpp.so"));
    std::fs::write(d.path().join("libclangBasic.a"), b"!<arch>\n").unwrap();
    assert_eq!(found(&[d.path()]), None);
}

#[test]
fn fresh_machine_libclang_names_bindgen_loads_are_found() {
    for name in [
        "libclang.so",
        "libclang-14.so",
        "libclang.so.1",
        "libclang-14.so.1",
    ] {
        let d = tempfile::tempdir().unwrap();
        elf(&d.path().join("libclang-cpp.so.14"));
        let lib = d.path().join(name);
        elf(&lib);
        assert_eq!(
            found(&[d.path()]),
            Some(lib.display().to_string()),
            "{name}"
        );
    }
}

#[test]
fn fresh_machine_libclang_must_be_a_loadable_elf_file() {
    let d = tempfile::tempdir().unwrap();
    // A dangling link (the package that owned the target was removed) and a text file.
    std::os::unix::fs::symlink(d.path().join("gone.so.1"), d.path().join("libclang.so")).unwrap();
    std::fs::write(d.path().join("libclang-14.so"), b"INPUT(-lclang)\n").unwrap();
    assert_eq!(found(&[d.path()]), None);
    // A link to a real library is fine.
    let real = d.path().join("libclang.so.1");
    elf(&real);
    assert_eq!(found(&[d.path()]), Some(real.display().to_string()));
}

#[test]
fn fresh_machine_libclang_search_goes_through_every_directory() {
    let empty = tempfile::tempdir().unwrap();
    let cpp_only = tempfile::tempdir().unwrap();
    elf(&cpp_only.path().join("libclang-cpp.so.14"));
    let llvm = tempfile::tempdir().unwrap();
    let lib = llvm.path().join("libclang-14.so.1");
    elf(&lib);
    assert_eq!(
        found(&[empty.path(), cpp_only.path(), llvm.path()]),
        Some(lib.display().to_string())
    );
    assert_eq!(found(&[empty.path(), &empty.path().join("missing")]), None);
}
