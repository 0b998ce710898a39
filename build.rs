//! Compiles every `csrc/*.cu` with nvcc into one fatbin (sm_80 and sm_90a machine code, plus
//! compute_90 PTX for newer GPUs; sm_90a, the H100/H200's arch-specific target, has the wgmma
//! instructions of csrc/flash_wgmma.cu and runs every other kernel as sm_90 would) that
//! `src/gpu/device.rs` embeds with `include_bytes!`.
//!
//! nvcc is found through `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`, then /usr/local/cuda.
//! Without nvcc the crate still builds, with an empty fatbin: the CPU reference works and asking
//! for the GPU returns a clear error. `ZAMBA_REQUIRE_CUDA=1` (set by .ci/run) turns a missing nvcc
//! or a kernel that fails to compile into a build failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "ZAMBA_REQUIRE_CUDA",
        "ZAMBA_NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(zamba_no_kernels)");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let fatbin = out_dir.join("zamba.fatbin");
    let require = std::env::var("ZAMBA_REQUIRE_CUDA").is_ok_and(|v| v == "1");

    let mut sources: Vec<PathBuf> = std::fs::read_dir("csrc")
        .expect("csrc/ is missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let Some(nvcc) = find_nvcc() else {
        let msg = "nvcc not found: building without CUDA kernels (the CPU reference still works). \
                   Install a CUDA toolkit, or the pinned PyPI wheels (see README.md, \"Building the kernels\"), \
                   and set NVCC or CUDA_HOME.";
        if require {
            panic!("ZAMBA_REQUIRE_CUDA=1 but {msg}");
        }
        println!("cargo:warning={msg}");
        std::fs::write(&fatbin, []).expect("write empty fatbin");
        println!("cargo:rustc-cfg=zamba_no_kernels");
        return;
    };

    // One translation unit that includes every kernel file, so nvcc emits one fatbin.
    let unity = out_dir.join("zamba_all.cu");
    let csrc = std::fs::canonicalize("csrc").expect("canonicalize csrc");
    let body: String = sources
        .iter()
        .map(|s| {
            format!(
                "#include \"{}\"\n",
                std::fs::canonicalize(s).expect("canonicalize").display()
            )
        })
        .collect();
    std::fs::write(&unity, body).expect("write unity file");

    let mut cmd = Command::new(&nvcc);
    cmd.args(["-fatbin", "-O3", "-std=c++17", "-lineinfo"])
        .args(["-gencode", "arch=compute_80,code=sm_80"])
        .args(["-gencode", "arch=compute_90a,code=sm_90a"])
        .args(["-gencode", "arch=compute_90,code=compute_90"])
        .arg("-I")
        .arg(&csrc)
        .arg("-o")
        .arg(&fatbin)
        .arg(&unity);
    if let Ok(extra) = std::env::var("ZAMBA_NVCC_FLAGS") {
        cmd.args(extra.split_whitespace());
    }
    let result = cmd.output();
    let ok = match &result {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            if require {
                panic!("nvcc failed to compile the kernels:\n{text}");
            }
            for line in text.lines().take(40) {
                println!("cargo:warning={line}");
            }
            false
        }
        Err(e) => {
            if require {
                panic!("could not run {}: {e}", nvcc.display());
            }
            println!("cargo:warning=could not run {}: {e}", nvcc.display());
            false
        }
    };
    if !ok {
        println!("cargo:warning=building without CUDA kernels");
        std::fs::write(&fatbin, []).expect("write empty fatbin");
        println!("cargo:rustc-cfg=zamba_no_kernels");
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = std::env::var(var) {
            let p = Path::new(&home).join("bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    p.is_file().then_some(p)
}
