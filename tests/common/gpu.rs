//! GPU helpers shared by the `gpu_kernels_*` tests: Zamba-7B's sizes, uploads and downloads of
//! bf16/fp32/i32 buffers, NaN-poisoned outputs, bf16 rounding, and batch entries with their
//! device-side metadata.

use half::bf16;
use zamba::cpu::mamba::ScanParams;
use zamba::gpu::batch::{BatchBuffers, Entry};
use zamba::gpu::mem::DeviceBuf;
use zamba::gpu::Gpu;

// Zamba-7B: hidden 3712, d_inner 7424 in NH mamba heads of DH, d_state N, dt_rank R (XR: the
// x_proj output per head, dt_low then B and C), conv width K, NA attention heads of HD, MLP F.
pub const H: usize = 3712;
pub const DI: usize = 7424;
pub const NH: usize = 2;
pub const DH: usize = 3712;
pub const N: usize = 16;
pub const R: usize = 232;
pub const XR: usize = R + 2 * N;
pub const K: usize = 4;
pub const NA: usize = 16;
pub const HD: usize = 464;
pub const F: usize = 14848;
/// One ulp of bf16 relative to the value: what a single rounding of the output may cost.
pub const BF16_RTOL: f32 = 1.0 / 128.0;

pub fn up_bf16(g: &Gpu, v: &[f32]) -> DeviceBuf {
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let d = DeviceBuf::new(b.len() * 2, "test").unwrap();
    g.htod(&b, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

pub fn up_f32(g: &Gpu, v: &[f32]) -> DeviceBuf {
    let d = DeviceBuf::new(v.len() * 4, "test").unwrap();
    g.htod(v, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

pub fn up_i32(g: &Gpu, v: &[i32]) -> DeviceBuf {
    let d = DeviceBuf::new(v.len() * 4, "test").unwrap();
    g.htod(v, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

/// A buffer filled with NaN bytes, so that an element the kernel forgets to write shows up.
pub fn poisoned(g: &Gpu, bytes: usize) -> DeviceBuf {
    let d = DeviceBuf::new(bytes, "test").unwrap();
    g.htod(&vec![0xFFu8; bytes], d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

pub fn down_bf16(g: &Gpu, d: u64, n: usize) -> Vec<f32> {
    let mut b = vec![bf16::ZERO; n];
    g.dtoh(d, &mut b).unwrap();
    b.iter().map(|x| x.to_f32()).collect()
}

pub fn down_f32(g: &Gpu, d: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0f32; n];
    g.dtoh(d, &mut b).unwrap();
    b
}

/// The selective-scan parameters of the CPU reference at these sizes.
pub fn scan_params<'a>(a: &'a [f32], d: &'a [f32], dt_bias: &'a [f32]) -> ScanParams<'a> {
    ScanParams {
        a,
        d,
        dt_bias,
        n_heads: NH,
        d_state: N,
        dt_rank: R,
    }
}

pub fn rb(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// A batch of entries with the given (slot, len, past), tokens concatenated.
pub fn entries(spec: &[(usize, usize, usize)]) -> Vec<Entry> {
    let mut start = 0;
    spec.iter()
        .map(|&(slot, len, past)| {
            let e = Entry {
                slot,
                start,
                len,
                past,
            };
            start += len;
            e
        })
        .collect()
}

pub fn batch_buffers(g: &Gpu, es: &[Entry]) -> BatchBuffers {
    let m: usize = es.iter().map(|e| e.len).sum();
    let mut b = BatchBuffers::new(m, es.len().max(4)).unwrap();
    b.upload(g, es, &vec![0u32; m]).unwrap();
    g.sync().unwrap();
    b
}
