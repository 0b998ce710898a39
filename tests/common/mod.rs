//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use zamba::safetensors_file::SafetensorsFile;

pub mod gpu;

/// The tiny golden checkpoint. Found through `ZAMBA_FIXTURES`, else `tests/fixtures` under the
/// current directory (the GPU machine runs test binaries from the repository root), else under
/// the build machine's checkout.
pub fn tiny_a() -> PathBuf {
    fixtures_dir().join("tiny-a")
}

pub fn fixtures_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ZAMBA_FIXTURES") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("tests/fixtures");
    if local.join("tiny-a").is_dir() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The golden outputs of HF transformers for tiny-a.
pub fn golden() -> SafetensorsFile {
    SafetensorsFile::open(&tiny_a().join("golden.safetensors")).expect("golden.safetensors")
}

/// `[rows, cols]` token ids from an I64 golden tensor.
pub fn golden_ids(g: &SafetensorsFile, key: &str) -> Vec<Vec<u32>> {
    let t = g.get(key).expect(key);
    let cols = t.shape[1];
    t.to_i64()
        .unwrap()
        .chunks(cols)
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect()
}

/// Max and mean absolute difference.
pub fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "diff: lengths");
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        assert!(!d.is_nan(), "NaN in comparison");
        max = max.max(d);
        sum += d as f64;
    }
    (max, (sum / a.len().max(1) as f64) as f32)
}

/// A temp folder unique to this test process and name.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zamba-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A deterministic xorshift generator for test inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in [lo, hi), rounded to bf16 (so both sides see the same inputs).
    pub fn bf16_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| half::bf16::from_f32(lo + (hi - lo) * self.next_f32()).to_f32())
            .collect()
    }

    pub fn f32_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next_f32()).collect()
    }
}

/// The GPU, or None (with a note on stderr) when this machine has none: GPU tests then skip.
pub fn gpu_or_skip(test: &str) -> Option<zamba::gpu::Gpu> {
    if let Some(why) = zamba::gpu::unavailable_reason() {
        skip_note(test, &why);
        return None;
    }
    Some(zamba::gpu::Gpu::new(0).expect("GPU present but failed to open"))
}

/// True when a GPU can be used; prints why not otherwise.
pub fn have_gpu(test: &str) -> bool {
    match zamba::gpu::unavailable_reason() {
        Some(why) => {
            skip_note(test, &why);
            false
        }
        None => true,
    }
}

/// Relative check: every |a - b| ≤ atol + rtol·|b|. Reports the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i}: got {}, want {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
    let (max, mean) = diff(got, want);
    eprintln!(
        "{what}: max abs diff {max:.3e}, mean {mean:.3e} over {} values",
        got.len()
    );
}

/// Says that a GPU test was skipped, on the real stderr (the test harness captures eprintln!).
pub fn skip_note(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED (no GPU) {test}: {why}");
}
