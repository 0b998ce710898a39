//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use zamba::safetensors_file::SafetensorsFile;

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
    t.to_i64().unwrap().chunks(cols).map(|r| r.iter().map(|&v| v as u32).collect()).collect()
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
