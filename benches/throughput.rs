//! `cargo bench`: decode and prefill throughput at the Zamba-7B shape on the GPU, plus per-kernel
//! benches, through criterion.
//!
//! With `ZAMBA_MODEL=DIR` it loads that checkpoint; otherwise it makes random weights with
//! Zamba-7B-v1's shapes on the GPU. Without a GPU it says so and measures nothing.
//! Criterion reports decode as bytes of weights read per second (compare with the copy bandwidth
//! that `zamba-run bench` measures), prefill as tokens per second, the in_proj GEMV (cuBLAS and our
//! two kernels) and the fused one-token Mamba mixer (`mamba_step`, sm_90) as bytes of weights per
//! second, and the flash prefill attention as FLOPs ("elements") per second.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zamba::bench::decode_weight_bytes;
use zamba::gpu::attention::{self, Dims};
use zamba::gpu::batch::{BatchBuffers, Entry};
use zamba::gpu::gemm::{self, Blas, Gemm};
use zamba::gpu::kernels::{MambaStepArgs, StepDims};
use zamba::gpu::mem::DeviceBuf;
use zamba::gpu::{GemvMode, GpuModel, GpuOptions};
use zamba::model::{Model, SeqInput};
use zamba::weights::Checkpoint;
use zamba::ZambaConfig;

const PROMPT: usize = 512;

fn load() -> GpuModel {
    let opts = GpuOptions {
        slots: 1,
        max_context: Some(4096),
        max_tokens: 2048,
        device: 0,
    };
    match std::env::var("ZAMBA_MODEL") {
        Ok(dir) => {
            let ck = Checkpoint::open(std::path::Path::new(&dir)).expect("open ZAMBA_MODEL");
            GpuModel::load(&ck, opts, &mut |_, _| {}).expect("load")
        }
        Err(_) => {
            let cfg = ZambaConfig::from_json_str(r#"{"model_type": "zamba"}"#).expect("config");
            GpuModel::random(&cfg, opts, 1).expect("random model")
        }
    }
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 3) % 31997 + 3) as u32).collect()
}

fn model_benches(c: &mut Criterion) {
    if let Some(why) = zamba::gpu::unavailable_reason() {
        eprintln!("SKIPPED (no GPU): {why}");
        return;
    }
    let mut m = load();
    let cfg = m.config().clone();

    let mut g = c.benchmark_group("decode_batch1");
    g.throughput(Throughput::Bytes(decode_weight_bytes(&cfg) as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("ctx512", |b| {
        b.iter_custom(|iters| {
            m.reset(0).unwrap();
            let mut next = m
                .forward_greedy(&[SeqInput {
                    slot: 0,
                    tokens: &prompt(PROMPT),
                }])
                .unwrap()[0];
            let t = Instant::now();
            for _ in 0..iters.min(3000) {
                next = m
                    .forward_greedy(&[SeqInput {
                        slot: 0,
                        tokens: &[next],
                    }])
                    .unwrap()[0];
            }
            t.elapsed() * (iters as u32) / (iters.min(3000) as u32)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("prefill");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for len in [512usize, 2048] {
        let p = prompt(len);
        g.throughput(Throughput::Elements(len as u64));
        g.bench_function(format!("pp{len}"), |b| {
            b.iter(|| {
                m.reset(0).unwrap();
                m.forward_greedy(&[SeqInput { slot: 0, tokens: &p }]).unwrap()
            })
        });
    }
    g.finish();
}

fn kernel_benches(c: &mut Criterion) {
    if zamba::gpu::unavailable_reason().is_some() {
        return;
    }
    let mut gpu = zamba::gpu::Gpu::new(0).unwrap();
    let blas = Blas::new(&gpu).unwrap();
    // The in_proj GEMV of one decode step: [1, 3712] x [14848, 3712]^T, 110 MB of weights, through
    // cuBLAS and our two kernels. Eight weight copies rotate so that L2 never holds the matrix.
    let (n, k) = (14848, 3712);
    let ws: Vec<DeviceBuf> = (0..8)
        .map(|_| DeviceBuf::new(n * k * 2, "bench").unwrap())
        .collect();
    for (i, w) in ws.iter().enumerate() {
        gpu.fill_uniform_bf16(w.ptr(), n * k, i as u64, 0.0, 0.02)
            .unwrap();
    }
    let x = DeviceBuf::new(k * 2, "bench").unwrap();
    let y = DeviceBuf::new(n * 2, "bench").unwrap();
    gpu.fill_uniform_bf16(x.ptr(), k, 99, 0.0, 1.0).unwrap();
    let mut g = c.benchmark_group("kernels");
    g.throughput(Throughput::Bytes((n * k * 2) as u64));
    for (name, mode) in [
        ("in_proj_gemv_cublas", GemvMode::Cublas),
        ("in_proj_gemv_m1", GemvMode::UpTo8),
        ("in_proj_gemv_pipe", GemvMode::Pipe),
    ] {
        gpu.gemv_mode = mode;
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % ws.len();
                gemm::run(&gpu, &blas, &Gemm::linear(x.ptr(), ws[i].ptr(), y.ptr(), 1, n, k)).unwrap();
                gpu.sync().unwrap();
            })
        });
    }
    drop(ws);
    // Flash prefill attention of one 512-token prompt, 16 heads of 464 (criterion's "elements"
    // are the causal FLOPs: 4 · heads · hd · T(T+1)/2).
    let (t, na, hd, ctx) = (512, 16, 464, 1024);
    let q = na * hd;
    let ld = 3 * q;
    let qkv = DeviceBuf::new(t * ld * 2, "bench").unwrap();
    let (kc, vc) = (
        DeviceBuf::new(na * ctx * hd * 2, "bench").unwrap(),
        DeviceBuf::new(na * ctx * hd * 2, "bench").unwrap(),
    );
    let out = DeviceBuf::new(t * q * 2, "bench").unwrap();
    for (i, b) in [&qkv, &kc, &vc].iter().enumerate() {
        gpu.fill_uniform_bf16(b.ptr(), b.bytes() / 2, 7 + i as u64, 0.0, 1.0)
            .unwrap();
    }
    let dims = Dims {
        na,
        nkv: na,
        hd,
        ldqkv: ld,
        ctx,
        scale: (hd as f32 / 2.0).powf(-0.5),
    };
    let e = Entry {
        slot: 0,
        start: 0,
        len: t,
        past: 0,
    };
    g.throughput(Throughput::Elements((4 * na * hd * t * (t + 1) / 2) as u64));
    g.bench_function("flash_attn_prefill_512", |b| {
        b.iter(|| {
            attention::prefill(&gpu, &dims, qkv.ptr(), &e, kc.ptr(), vc.ptr(), out.ptr()).unwrap();
            gpu.sync().unwrap();
        })
    });
    mamba_step_bench(&gpu, &mut g);
    g.finish();
}

/// `mamba_step` at the 7B widths (one Mamba layer's conv update, x_proj, dt_proj, state update and
/// out_proj for one token): throughput in bytes of the weights it reads (x_proj, dt_proj,
/// out_proj: 62.4 MB), four weight sets rotating so that L2 never holds them. Skipped where the
/// kernel does not run (before sm_90).
fn mamba_step_bench(
    gpu: &zamba::gpu::Gpu,
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
) {
    let cfg = ZambaConfig::from_json_str(r#"{"model_type": "zamba"}"#).expect("config");
    let d = StepDims::of(&cfg);
    if !gpu.mamba_step_runs(&d) {
        eprintln!("mamba_step bench skipped: the kernel needs sm_90");
        return;
    }
    let xrows = d.nh * (d.r + 2 * d.d_state);
    let weight_elems = [xrows * d.dh, d.di * d.r, d.h * d.di];
    let bf16 = |n: usize, seed: u64, scale: f32| {
        let b = DeviceBuf::new(n * 2, "bench").unwrap();
        gpu.fill_uniform_bf16(b.ptr(), n, seed, 0.0, scale).unwrap();
        b
    };
    let f32b = |n: usize, seed: u64, offset: f32, scale: f32| {
        let b = DeviceBuf::new(n * 4, "bench").unwrap();
        gpu.fill_uniform_f32(b.ptr(), n, seed, offset, scale).unwrap();
        b
    };
    let sets: Vec<[DeviceBuf; 3]> = (0..4u64)
        .map(|i| {
            [
                bf16(weight_elems[0], 10 * i + 1, 0.02),
                bf16(weight_elems[1], 10 * i + 2, 0.05),
                bf16(weight_elems[2], 10 * i + 3, 0.02),
            ]
        })
        .collect();
    let (xz, conv_state) = (bf16(2 * d.di, 41, 1.0), bf16((d.k - 1) * d.di, 42, 1.0));
    let (conv_w, conv_b) = (f32b(d.di * d.k, 43, 0.0, 0.5), f32b(d.di, 44, 0.0, 0.1));
    // A = -exp(A_log) in [-15, -1], D about 1, dt_bias in [-5, -2]: the 7B model's ranges.
    let (a, dd, dt_bias) = (
        f32b(d.di * 16, 45, -8.0, 7.0),
        f32b(d.di, 46, 1.0, 0.2),
        f32b(d.di, 47, -3.5, 1.5),
    );
    let (ssm_state, h) = (f32b(d.di * 16, 48, 0.0, 0.5), f32b(d.h, 49, 0.0, 1.0));
    let (xc, xdbl, y) = (
        DeviceBuf::new(d.di * 2, "bench").unwrap(),
        DeviceBuf::new(xrows * 2, "bench").unwrap(),
        DeviceBuf::new(d.di * 2, "bench").unwrap(),
    );
    let barrier = DeviceBuf::zeroed(8, "bench").unwrap();
    // The next layer's input norm, fused in as in the engine.
    let (norm_w, norm_out) = (bf16(d.h, 50, 1.0), DeviceBuf::new(d.h * 2, "bench").unwrap());
    let mut batch = BatchBuffers::new(1, 1).unwrap();
    let e = Entry {
        slot: 0,
        start: 0,
        len: 1,
        past: 0,
    };
    batch.upload(gpu, &[e], &[0]).unwrap();
    let bytes: usize = weight_elems.iter().sum::<usize>() * 2;
    g.throughput(Throughput::Bytes(bytes as u64));
    let mut i = 0;
    g.bench_function("mamba_step_7b", |b| {
        b.iter(|| {
            i = (i + 1) % sets.len();
            let args = MambaStepArgs {
                xz: xz.ptr(),
                conv_state: conv_state.ptr(),
                conv_w: conv_w.ptr(),
                conv_b: conv_b.ptr(),
                xc: xc.ptr(),
                x_proj: sets[i][0].ptr(),
                xdbl: xdbl.ptr(),
                dt_proj: sets[i][1].ptr(),
                a: a.ptr(),
                d: dd.ptr(),
                dt_bias: dt_bias.ptr(),
                ssm_state: ssm_state.ptr(),
                y: y.ptr(),
                out_proj: sets[i][2].ptr(),
                h: h.ptr(),
                barrier: barrier.ptr(),
                norm_w: norm_w.ptr(),
                norm_out: norm_out.ptr(),
                eps: 1e-5,
            };
            gpu.mamba_step(&args, &d, &batch.meta).unwrap();
            gpu.sync().unwrap();
        })
    });
}

criterion_group!(benches, model_benches, kernel_benches);
criterion_main!(benches);
