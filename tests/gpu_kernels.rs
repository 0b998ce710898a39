//! Every CUDA kernel (and the cuBLAS wrappers) against the CPU reference at Zamba-7B's sizes:
//! hidden 3712, d_inner 7424 in 2 mamba heads, d_state 16, dt_rank 232, 16 heads of 464, MLP
//! 14848; prefill lengths 1, 7, 333 and 2049 in one batch. Inputs are random bf16 values, the
//! same on both sides. Skips (and says so) on a machine without a GPU.

mod common;

use common::{assert_close, gpu_or_skip, Rng};
use half::bf16;
use zamba::cpu::attention::causal_attention;
use zamba::cpu::mamba::{causal_conv1d_silu, selective_scan, ScanParams};
use zamba::cpu::ops::{gelu, matmul, silu, Mat};
use zamba::gpu::attention::{self, Dims, Scratch};
use zamba::gpu::batch::{BatchBuffers, Entry};
use zamba::gpu::gemm::{Blas, Gemm};
use zamba::gpu::kernels::ScanArgs;
use zamba::gpu::mem::DeviceBuf;
use zamba::gpu::{GemvMode, Gpu};

const H: usize = 3712;
const DI: usize = 7424;
const NH: usize = 2;
const DH: usize = 3712;
const N: usize = 16;
const R: usize = 232;
const XR: usize = R + 2 * N;
const K: usize = 4;
const NA: usize = 16;
const HD: usize = 464;
const F: usize = 14848;
const EPS: f32 = 1e-5;
/// One ulp of bf16 relative to the value: what a single rounding of the output may cost.
const BF16_RTOL: f32 = 1.0 / 128.0;

fn up_bf16(g: &Gpu, v: &[f32]) -> DeviceBuf {
    let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
    let d = DeviceBuf::new(b.len() * 2, "test").unwrap();
    g.htod(&b, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

fn up_f32(g: &Gpu, v: &[f32]) -> DeviceBuf {
    let d = DeviceBuf::new(v.len() * 4, "test").unwrap();
    g.htod(v, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

fn up_i32(g: &Gpu, v: &[i32]) -> DeviceBuf {
    let d = DeviceBuf::new(v.len() * 4, "test").unwrap();
    g.htod(v, d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

/// A buffer filled with NaN bytes, so that an element the kernel forgets to write shows up.
fn poisoned(g: &Gpu, bytes: usize) -> DeviceBuf {
    let d = DeviceBuf::new(bytes, "test").unwrap();
    g.htod(&vec![0xFFu8; bytes], d.ptr()).unwrap();
    g.sync().unwrap();
    d
}

fn down_bf16(g: &Gpu, d: u64, n: usize) -> Vec<f32> {
    let mut b = vec![bf16::ZERO; n];
    g.dtoh(d, &mut b).unwrap();
    b.iter().map(|x| x.to_f32()).collect()
}

fn down_f32(g: &Gpu, d: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0f32; n];
    g.dtoh(d, &mut b).unwrap();
    b
}

fn rb(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// HF's bf16 RMSNorm of one row: bf16(w · bf16(x · r)).
fn rms_hf(x: &[f32], w: &[f32]) -> Vec<f32> {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + EPS).sqrt();
    x.iter().zip(w).map(|(x, w)| rb(w * rb(x * r))).collect()
}

/// A batch of entries with the given (slot, len, past), tokens concatenated.
fn entries(spec: &[(usize, usize, usize)]) -> Vec<Entry> {
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

fn batch_buffers(g: &Gpu, es: &[Entry]) -> BatchBuffers {
    let m: usize = es.iter().map(|e| e.len).sum();
    let mut b = BatchBuffers::new(m, es.len().max(4)).unwrap();
    b.upload(g, es, &vec![0u32; m]).unwrap();
    g.sync().unwrap();
    b
}

#[test]
fn rmsnorm_plain_residual_add_concat_and_row_gather() {
    let Some(g) = gpu_or_skip("rmsnorm") else {
        return;
    };
    let mut rng = Rng(1);
    let m = 7;
    let a = rng.bf16_vec(m * H, -3.0, 3.0);
    let add = rng.bf16_vec(m * H, -3.0, 3.0);
    let e = rng.bf16_vec(m * H, -0.1, 0.1);
    let w = rng.bf16_vec(2 * H, 0.8, 1.2);
    // The engine's residual stream is fp32: values with more bits than bf16 holds.
    let af: Vec<f32> = a
        .iter()
        .enumerate()
        .map(|(i, v)| v + 1e-3 * ((i % 7) as f32 - 3.0))
        .collect();
    let (da, dadd, de, dw, daf) = (
        up_bf16(&g, &a),
        up_bf16(&g, &add),
        up_bf16(&g, &e),
        up_bf16(&g, &w),
        up_f32(&g, &af),
    );
    let out = poisoned(&g, m * 2 * H * 2);
    let rows_of =
        |f: &dyn Fn(usize) -> Vec<f32>, ts: &[usize]| -> Vec<f32> { ts.iter().flat_map(|&t| f(t)).collect() };
    let all: Vec<usize> = (0..m).collect();
    // Two roundings (inside and after the weight product) can each land one ulp apart.
    let tol = 2.0 * BF16_RTOL;

    g.rmsnorm(da.ptr(), false, 0, 0, 0, dw.ptr(), out.ptr(), m, H, 0, EPS)
        .unwrap();
    let want = rows_of(&|t| rms_hf(&a[t * H..(t + 1) * H], &w[..H]), &all);
    assert_close("bf16 rmsnorm", &down_bf16(&g, out.ptr(), m * H), &want, 1e-6, tol);

    // bf16 residual add (rounded to bf16 first, like HF), then norm.
    g.rmsnorm(
        da.ptr(),
        false,
        dadd.ptr(),
        0,
        0,
        dw.ptr(),
        out.ptr(),
        m,
        H,
        0,
        EPS,
    )
    .unwrap();
    let want = rows_of(
        &|t| {
            rms_hf(
                &(0..H)
                    .map(|i| rb(a[t * H + i] + add[t * H + i]))
                    .collect::<Vec<_>>(),
                &w[..H],
            )
        },
        &all,
    );
    assert_close(
        "bf16 add+rmsnorm",
        &down_bf16(&g, out.ptr(), m * H),
        &want,
        1e-6,
        tol,
    );

    // fp32 residual + bf16 branch, added without rounding (the engine's mixer input).
    g.rmsnorm(
        daf.ptr(),
        true,
        dadd.ptr(),
        0,
        0,
        dw.ptr(),
        out.ptr(),
        m,
        H,
        0,
        EPS,
    )
    .unwrap();
    let want = rows_of(
        &|t| {
            rms_hf(
                &(0..H).map(|i| af[t * H + i] + add[t * H + i]).collect::<Vec<_>>(),
                &w[..H],
            )
        },
        &all,
    );
    assert_close(
        "fp32 add+rmsnorm",
        &down_bf16(&g, out.ptr(), m * H),
        &want,
        1e-6,
        tol,
    );

    // The 7424-wide norm over concat(h, e), h fp32.
    g.rmsnorm(daf.ptr(), true, 0, de.ptr(), 0, dw.ptr(), out.ptr(), m, H, H, EPS)
        .unwrap();
    let want = rows_of(
        &|t| {
            rms_hf(
                &af[t * H..(t + 1) * H]
                    .iter()
                    .chain(&e[t * H..(t + 1) * H])
                    .cloned()
                    .collect::<Vec<_>>(),
                &w,
            )
        },
        &all,
    );
    assert_close(
        "concat rmsnorm",
        &down_bf16(&g, out.ptr(), m * 2 * H),
        &want,
        1e-6,
        tol,
    );

    // Gathered rows (each sequence's last token, for the logits).
    let rows = up_i32(&g, &[6, 2]);
    g.rmsnorm(
        daf.ptr(),
        true,
        0,
        0,
        rows.ptr(),
        dw.ptr(),
        out.ptr(),
        2,
        H,
        0,
        EPS,
    )
    .unwrap();
    let want = rows_of(&|t| rms_hf(&af[t * H..(t + 1) * H], &w[..H]), &[6, 2]);
    assert_close(
        "row-gather rmsnorm",
        &down_bf16(&g, out.ptr(), 2 * H),
        &want,
        1e-6,
        tol,
    );

    // Rows longer than the kernel holds in registers (8 per thread) take the two-pass path.
    let d = 9001;
    let long = rng.bf16_vec(2 * d, -3.0, 3.0);
    let wl = rng.bf16_vec(d, 0.8, 1.2);
    let (dl, dwl) = (up_bf16(&g, &long), up_bf16(&g, &wl));
    let outl = poisoned(&g, 2 * d * 2);
    g.rmsnorm(dl.ptr(), false, 0, 0, 0, dwl.ptr(), outl.ptr(), 2, d, 0, EPS)
        .unwrap();
    let want: Vec<f32> = (0..2)
        .flat_map(|t| rms_hf(&long[t * d..(t + 1) * d], &wl))
        .collect();
    assert_close(
        "long-row rmsnorm",
        &down_bf16(&g, outl.ptr(), 2 * d),
        &want,
        1e-6,
        tol,
    );
}

#[test]
fn embedding_gather_and_gelu_mul() {
    let Some(g) = gpu_or_skip("embed/gelu") else {
        return;
    };
    let mut rng = Rng(2);
    let v = 32000;
    let table = rng.bf16_vec(v * H, -1.0, 1.0);
    let dt = up_bf16(&g, &table);
    let ids = [5i32, 31999, 0, 77];
    let di = up_i32(&g, &ids);
    let (e, h) = (poisoned(&g, 4 * H * 2), poisoned(&g, 4 * H * 4));
    g.embed_gather(di.ptr(), dt.ptr(), e.ptr(), h.ptr(), 4, H, v)
        .unwrap();
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * H..(i as usize + 1) * H].to_vec())
        .collect();
    assert_eq!(down_bf16(&g, e.ptr(), 4 * H), want);
    assert_eq!(down_f32(&g, h.ptr(), 4 * H), want);

    let m = 7;
    let gu = rng.bf16_vec(m * 2 * F, -4.0, 4.0);
    let dgu = up_bf16(&g, &gu);
    let out = poisoned(&g, m * F * 2);
    g.gelu_mul(dgu.ptr(), out.ptr(), m, F).unwrap();
    let want: Vec<f32> = (0..m * F)
        .map(|i| rb(gelu(gu[(i / F) * 2 * F + i % F]) * gu[(i / F) * 2 * F + F + i % F]))
        .collect();
    assert_close(
        "gelu_mul",
        &down_bf16(&g, out.ptr(), m * F),
        &want,
        1e-6,
        BF16_RTOL,
    );
}

#[test]
fn causal_conv1d_prefill_update_and_state() {
    let Some(g) = gpu_or_skip("conv1d") else {
        return;
    };
    let mut rng = Rng(3);
    let es = entries(&[(2, 1, 0), (0, 7, 4), (3, 333, 9), (1, 2049, 0)]);
    let m: usize = es.iter().map(|e| e.len).sum();
    let xz = rng.bf16_vec(m * 2 * DI, -2.0, 2.0);
    let state0 = rng.bf16_vec(4 * (K - 1) * DI, -2.0, 2.0);
    let w = rng.f32_vec(DI * K, -0.5, 0.5);
    let b = rng.f32_vec(DI, -0.3, 0.3);
    let (dxz, dstate, dw, db) = (
        up_bf16(&g, &xz),
        up_bf16(&g, &state0),
        up_f32(&g, &w),
        up_f32(&g, &b),
    );
    let out = poisoned(&g, m * DI * 2);
    let bb = batch_buffers(&g, &es);
    g.conv1d_prefill(
        dxz.ptr(),
        2 * DI,
        &bb.meta,
        dstate.ptr(),
        dw.ptr(),
        db.ptr(),
        out.ptr(),
        m,
        DI,
        K,
    )
    .unwrap();
    g.conv_state_update(dxz.ptr(), 2 * DI, &bb.meta, dstate.ptr(), es.len(), DI, K)
        .unwrap();
    let got = down_bf16(&g, out.ptr(), m * DI);
    let got_state = down_bf16(&g, dstate.ptr(), 4 * (K - 1) * DI);
    let sz = (K - 1) * DI;
    for e in &es {
        let xs: Vec<f32> = (0..e.len)
            .flat_map(|t| xz[(e.start + t) * 2 * DI..(e.start + t) * 2 * DI + DI].to_vec())
            .collect();
        let mut st = state0[e.slot * sz..(e.slot + 1) * sz].to_vec();
        let want = causal_conv1d_silu(&xs, e.len, &w, &b, &mut st);
        assert_close(
            &format!("conv prefill len {}", e.len),
            &got[e.start * DI..(e.start + e.len) * DI],
            &want,
            1e-3,
            BF16_RTOL,
        );
        assert_eq!(
            &got_state[e.slot * sz..(e.slot + 1) * sz],
            &st[..],
            "conv state of len {}",
            e.len
        );
    }

    // One-token update for three sequences, continuing from the states just written.
    let es1 = entries(&[(1, 1, 2049), (3, 1, 342), (0, 1, 11)]);
    let bb1 = batch_buffers(&g, &es1);
    let x1 = rng.bf16_vec(3 * 2 * DI, -2.0, 2.0);
    let dx1 = up_bf16(&g, &x1);
    let out1 = poisoned(&g, 3 * DI * 2);
    g.conv1d_update(
        dx1.ptr(),
        2 * DI,
        &bb1.meta,
        dstate.ptr(),
        dw.ptr(),
        db.ptr(),
        out1.ptr(),
        3,
        DI,
        K,
    )
    .unwrap();
    let got1 = down_bf16(&g, out1.ptr(), 3 * DI);
    let state1 = down_bf16(&g, dstate.ptr(), 4 * sz);
    for (bi, e) in es1.iter().enumerate() {
        let mut st = got_state[e.slot * sz..(e.slot + 1) * sz].to_vec();
        let want = causal_conv1d_silu(&x1[bi * 2 * DI..bi * 2 * DI + DI], 1, &w, &b, &mut st);
        assert_close(
            "conv update",
            &got1[bi * DI..(bi + 1) * DI],
            &want,
            1e-3,
            BF16_RTOL,
        );
        assert_eq!(
            &state1[e.slot * sz..(e.slot + 1) * sz],
            &st[..],
            "conv state after update"
        );
    }
}

/// Random scan inputs for `m` rows.
struct ScanInputs {
    u: Vec<f32>,
    dtr: Vec<f32>,
    xz: Vec<f32>,
    xdbl: Vec<f32>,
}

fn scan_inputs(rng: &mut Rng, m: usize) -> ScanInputs {
    ScanInputs {
        u: rng.bf16_vec(m * DI, -0.5, 2.0),
        dtr: rng.bf16_vec(m * DI, -2.0, 2.0),
        xz: rng.bf16_vec(m * 2 * DI, -3.0, 3.0),
        xdbl: rng.bf16_vec(m * NH * XR, -1.0, 1.0),
    }
}

fn rows(v: &[f32], width: usize, start: usize, len: usize) -> Vec<f32> {
    v[start * width..(start + len) * width].to_vec()
}

#[test]
fn selective_scan_prefill_chunked_and_decode() {
    let Some(g) = gpu_or_skip("selective scan") else {
        return;
    };
    let mut rng = Rng(4);
    let es = entries(&[(2, 1, 0), (0, 7, 3), (3, 333, 1), (1, 2049, 0)]);
    let m: usize = es.iter().map(|e| e.len).sum();
    let inp = scan_inputs(&mut rng, m);
    let a = rng.f32_vec(DI * N, -16.0, -1.0);
    let d = rng.f32_vec(DI, 0.5, 1.5);
    let dt_bias = rng.f32_vec(DI, -5.0, -2.0);
    let state0 = rng.f32_vec(4 * DI * N, -0.5, 0.5);
    let (du, ddtr, dxz, dxd) = (
        up_bf16(&g, &inp.u),
        up_bf16(&g, &inp.dtr),
        up_bf16(&g, &inp.xz),
        up_bf16(&g, &inp.xdbl),
    );
    let (da, dd, dbias, dstate) = (
        up_f32(&g, &a),
        up_f32(&g, &d),
        up_f32(&g, &dt_bias),
        up_f32(&g, &state0),
    );
    let bb = batch_buffers(&g, &es);
    let nc = bb.n_chunks;
    assert!(bb.multi_chunk && nc > 30);
    let (h_loc, s_in, dtsum) = (
        poisoned(&g, nc * DI * N * 4),
        poisoned(&g, nc * DI * N * 4),
        poisoned(&g, nc * DI * 4),
    );
    let y = poisoned(&g, m * DI * 2);
    let args = ScanArgs {
        u: du.ptr(),
        dtr: ddtr.ptr(),
        z: dxz.at::<bf16>(DI),
        ldz: (2 * DI) as i32,
        _pad: 0,
        xdbl: dxd.ptr(),
        a: da.ptr(),
        d: dd.ptr(),
        dt_bias: dbias.ptr(),
        di: DI as i32,
        dh: DH as i32,
        nh: NH as i32,
        r: R as i32,
    };
    g.scan_chunk_local(&args, &bb.meta, h_loc.ptr(), dtsum.ptr(), nc)
        .unwrap();
    g.scan_chunk_combine(
        da.ptr(),
        &bb.meta,
        dstate.ptr(),
        h_loc.ptr(),
        dtsum.ptr(),
        s_in.ptr(),
        es.len(),
        DI,
        N,
    )
    .unwrap();
    g.scan_chunk_output(&args, &bb.meta, dstate.ptr(), s_in.ptr(), y.ptr(), nc)
        .unwrap();
    let got = down_bf16(&g, y.ptr(), m * DI);
    let got_state = down_f32(&g, dstate.ptr(), 4 * DI * N);
    let p = ScanParams {
        a: &a,
        d: &d,
        dt_bias: &dt_bias,
        n_heads: NH,
        d_state: N,
        dt_rank: R,
    };
    let sz = DI * N;
    let mut states = state0.clone();
    for e in &es {
        let z: Vec<f32> = (0..e.len)
            .flat_map(|t| rows(&inp.xz, 2 * DI, e.start + t, 1)[DI..].to_vec())
            .collect();
        let st = &mut states[e.slot * sz..(e.slot + 1) * sz];
        let want = selective_scan(
            &rows(&inp.u, DI, e.start, e.len),
            &rows(&inp.dtr, DI, e.start, e.len),
            &rows(&inp.xdbl, NH * XR, e.start, e.len),
            &z,
            e.len,
            &p,
            st,
        );
        assert_close(
            &format!("scan y len {}", e.len),
            &got[e.start * DI..(e.start + e.len) * DI],
            &want,
            2e-3,
            2.0 * BF16_RTOL,
        );
        assert_close(
            &format!("scan final state len {}", e.len),
            &got_state[e.slot * sz..(e.slot + 1) * sz],
            st,
            1e-5,
            1e-3,
        );
    }

    // One-token decode for three sequences from the states just written.
    let es1 = entries(&[(1, 1, 2049), (3, 1, 334), (2, 1, 1)]);
    let bb1 = batch_buffers(&g, &es1);
    let inp1 = scan_inputs(&mut rng, 3);
    let (du1, ddtr1, dxz1, dxd1) = (
        up_bf16(&g, &inp1.u),
        up_bf16(&g, &inp1.dtr),
        up_bf16(&g, &inp1.xz),
        up_bf16(&g, &inp1.xdbl),
    );
    let args1 = ScanArgs {
        u: du1.ptr(),
        dtr: ddtr1.ptr(),
        z: dxz1.at::<bf16>(DI),
        xdbl: dxd1.ptr(),
        ..args
    };
    let y1 = poisoned(&g, 3 * DI * 2);
    g.ssm_decode(&args1, &bb1.meta, dstate.ptr(), y1.ptr(), 3)
        .unwrap();
    let got1 = down_bf16(&g, y1.ptr(), 3 * DI);
    let got_state1 = down_f32(&g, dstate.ptr(), 4 * sz);
    for (bi, e) in es1.iter().enumerate() {
        let st = &mut states[e.slot * sz..(e.slot + 1) * sz];
        let z = rows(&inp1.xz, 2 * DI, bi, 1)[DI..].to_vec();
        let want = selective_scan(
            &rows(&inp1.u, DI, bi, 1),
            &rows(&inp1.dtr, DI, bi, 1),
            &rows(&inp1.xdbl, NH * XR, bi, 1),
            &z,
            1,
            &p,
            st,
        );
        assert_close(
            "ssm decode y",
            &got1[bi * DI..(bi + 1) * DI],
            &want,
            2e-3,
            2.0 * BF16_RTOL,
        );
        assert_close(
            "ssm decode state",
            &got_state1[e.slot * sz..(e.slot + 1) * sz],
            st,
            1e-5,
            1e-3,
        );
    }
}

/// `n` values `scale · j` with j a uniform integer in [-lim, lim]: bf16-exact, and small enough
/// that a dot product of R of them is exact in fp32 whatever the summation order.
fn grid_vec(rng: &mut Rng, n: usize, lim: i32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let j = ((rng.next_f32() * (2 * lim + 1) as f32) as i32).min(2 * lim) - lim;
            j as f32 * scale
        })
        .collect()
}

#[test]
fn ssm_decode_with_fused_dt_proj() {
    let Some(g) = gpu_or_skip("ssm decode with fused dt_proj") else {
        return;
    };
    let mut rng = Rng(11);
    const SLOTS: usize = 16;
    let sz = DI * N;
    let a = rng.f32_vec(DI * N, -16.0, -1.0);
    let d = rng.f32_vec(DI, 0.5, 1.5);
    let dt_bias = rng.f32_vec(DI, -5.0, -2.0);
    // dt_proj weights j/256 and dt_low values j/16 (|j| ≤ 64 and 16): every product is a multiple
    // of 2^-12 and |Σ| < 2^24 · 2^-12, so the fp32 dot is exact on both sides and its bf16 rounding
    // (the value the kernel adds the bias to) is the same. dtr then spans about ±3, like the
    // existing scan test's.
    let wdt = grid_vec(&mut rng, NH * DH * R, 64, 1.0 / 256.0);
    let dwdt = up_bf16(&g, &wdt);
    let (da, dd, dbias) = (up_f32(&g, &a), up_f32(&g, &d), up_f32(&g, &dt_bias));
    let mut states = rng.f32_vec(SLOTS * sz, -0.5, 0.5);
    let dstate = up_f32(&g, &states);
    let p = ScanParams {
        a: &a,
        d: &d,
        dt_bias: &dt_bias,
        n_heads: NH,
        d_state: N,
        dt_rank: R,
    };
    // Two entry groups of the kernel (8 per block), an odd count, scattered slots; then batch 1
    // continuing from the states the first step wrote.
    let steps: [&[usize]; 2] = [&[5, 0, 12, 3, 9, 1, 14, 7, 2, 10, 6], &[12]];
    for slots in steps {
        let b = slots.len();
        let spec: Vec<(usize, usize, usize)> = slots.iter().map(|&s| (s, 1, 4)).collect();
        let es = entries(&spec);
        let bb = batch_buffers(&g, &es);
        let mut inp = scan_inputs(&mut rng, b);
        for row in inp.xdbl.chunks_mut(XR) {
            row[..R].copy_from_slice(&grid_vec(&mut rng, R, 16, 1.0 / 16.0));
        }
        // dtr as the unfused path stores it: dt_low · dt_projᵀ per head, rounded to bf16.
        let mut dtr = vec![0f32; b * DI];
        for t in 0..b {
            for c in 0..DI {
                let hh = c / DH;
                let dtl = &inp.xdbl[(t * NH + hh) * XR..(t * NH + hh) * XR + R];
                let wr = &wdt[c * R..(c + 1) * R];
                dtr[t * DI + c] = rb(dtl.iter().zip(wr).map(|(x, w)| x * w).sum());
            }
        }
        let (du, dxz, dxd) = (up_bf16(&g, &inp.u), up_bf16(&g, &inp.xz), up_bf16(&g, &inp.xdbl));
        let args = ScanArgs {
            u: du.ptr(),
            dtr: 0, // not read by ssm_decode_dt
            z: dxz.at::<bf16>(DI),
            ldz: (2 * DI) as i32,
            _pad: 0,
            xdbl: dxd.ptr(),
            a: da.ptr(),
            d: dd.ptr(),
            dt_bias: dbias.ptr(),
            di: DI as i32,
            dh: DH as i32,
            nh: NH as i32,
            r: R as i32,
        };
        let y = poisoned(&g, b * DI * 2);
        g.ssm_decode_dt(&args, dwdt.ptr(), &bb.meta, dstate.ptr(), y.ptr(), b)
            .unwrap();
        let got = down_bf16(&g, y.ptr(), b * DI);
        let got_state = down_f32(&g, dstate.ptr(), SLOTS * sz);
        for (bi, e) in es.iter().enumerate() {
            let st = &mut states[e.slot * sz..(e.slot + 1) * sz];
            let z = rows(&inp.xz, 2 * DI, bi, 1)[DI..].to_vec();
            let want = selective_scan(
                &rows(&inp.u, DI, bi, 1),
                &rows(&dtr, DI, bi, 1),
                &rows(&inp.xdbl, NH * XR, bi, 1),
                &z,
                1,
                &p,
                st,
            );
            assert_close(
                &format!("fused decode y (batch {b}, slot {})", e.slot),
                &got[bi * DI..(bi + 1) * DI],
                &want,
                2e-3,
                2.0 * BF16_RTOL,
            );
        }
        // Every slot: the entries' slots updated, the others untouched.
        assert_close("fused decode states", &got_state, &states, 1e-5, 1e-3);
    }
}

/// Writes random keys/values for the `past` positions of each entry's slot and NaN at every later
/// position (so that a kernel reading a cache row it should not, or multiplying it by a zero
/// weight, fails), appends the new rows through kv_append, then checks prefill or decode
/// attention against the CPU.
fn attention_case(g: &Gpu, nkv: usize, spec: &[(usize, usize, usize)], seed: u64) {
    let mut rng = Rng(seed);
    let ctx = 4096;
    let slots = 4;
    let (q, kvw) = (NA * HD, nkv * HD);
    let ld = q + 2 * kvw;
    let es = entries(spec);
    let m: usize = es.iter().map(|e| e.len).sum();
    let decode = es.iter().all(|e| e.len == 1);
    let qkv = rng.bf16_vec(m * ld, -1.0, 1.0);
    let mut kc = rng.bf16_vec(slots * kvw * ctx, -1.0, 1.0);
    let mut vc = rng.bf16_vec(slots * kvw * ctx, -1.0, 1.0);
    for e in &es {
        for gi in 0..nkv {
            let head = ((e.slot * nkv + gi) * ctx) * HD;
            kc[head + e.past * HD..head + ctx * HD].fill(f32::NAN);
            vc[head + e.past * HD..head + ctx * HD].fill(f32::NAN);
        }
    }
    let (dqkv, dk, dv) = (up_bf16(g, &qkv), up_bf16(g, &kc), up_bf16(g, &vc));
    let bb = batch_buffers(g, &es);
    g.kv_append(dqkv.ptr(), ld, q, &bb.meta, dk.ptr(), dv.ptr(), m, nkv, HD, ctx)
        .unwrap();
    let dims = Dims {
        na: NA,
        nkv,
        hd: HD,
        ldqkv: ld,
        ctx,
        scale: (HD as f32 / 2.0).powf(-0.5),
    };
    let splits = ctx / 128;
    let (pa, pm) = (
        poisoned(g, 4 * NA * splits * HD * 4),
        poisoned(g, 4 * NA * splits * 2 * 4),
    );
    let scratch = Scratch {
        part_acc: pa.ptr(),
        part_ml: pm.ptr(),
        split_len: 128,
    };
    let out = poisoned(g, m * q * 2);
    // Decode runs twice: with just enough key splits, and with every split of the context (what
    // a captured CUDA graph uses), whose extra splits see no keys; both must agree exactly.
    let mut got_all_splits = None;
    if decode {
        let max_keys = es.iter().map(|e| e.past + 1).max().unwrap();
        for n_splits in [splits, max_keys.div_ceil(128)] {
            attention::decode(
                g,
                &dims,
                dqkv.ptr(),
                dk.ptr(),
                dv.ptr(),
                &bb.meta,
                &scratch,
                n_splits,
                m,
                out.ptr(),
            )
            .unwrap();
            if n_splits == splits {
                got_all_splits = Some(down_bf16(g, out.ptr(), m * q));
            }
        }
    } else {
        for e in &es {
            attention::prefill(g, &dims, dqkv.ptr(), e, dk.ptr(), dv.ptr(), out.ptr()).unwrap();
        }
    }
    let got = down_bf16(g, out.ptr(), m * q);
    if let Some(all) = got_all_splits {
        assert_eq!(all, got, "decode with empty key splits");
    }
    let got_k = down_bf16(g, dk.ptr(), slots * kvw * ctx);
    for e in &es {
        // The cache as the CPU wants it: [positions, NKV·HD], old positions then the new rows.
        let n_pos = e.past + e.len;
        let (mut kk, mut vv) = (vec![0f32; n_pos * kvw], vec![0f32; n_pos * kvw]);
        for p in 0..n_pos {
            for gi in 0..nkv {
                for dd in 0..HD {
                    let (kv_k, kv_v) = if p < e.past {
                        let i = ((e.slot * nkv + gi) * ctx + p) * HD + dd;
                        (kc[i], vc[i])
                    } else {
                        let row = e.start + p - e.past;
                        (
                            qkv[row * ld + q + gi * HD + dd],
                            qkv[row * ld + q + kvw + gi * HD + dd],
                        )
                    };
                    kk[p * kvw + gi * HD + dd] = kv_k;
                    vv[p * kvw + gi * HD + dd] = kv_v;
                    if p >= e.past {
                        assert_eq!(
                            got_k[((e.slot * nkv + gi) * ctx + p) * HD + dd],
                            kv_k,
                            "kv_append wrote the key"
                        );
                    }
                }
            }
        }
        let qe: Vec<f32> = (0..e.len)
            .flat_map(|t| qkv[(e.start + t) * ld..(e.start + t) * ld + q].to_vec())
            .collect();
        let want = causal_attention(&qe, e.len, &kk, &vv, n_pos, NA, nkv, HD, dims.scale);
        let what = format!(
            "attention {} nkv {nkv} len {} past {}",
            if decode { "decode" } else { "prefill" },
            e.len,
            e.past
        );
        // Prefill rounds P to bf16 (as HF's eager path does): allow a little more than one ulp.
        assert_close(
            &what,
            &got[e.start * q..(e.start + e.len) * q],
            &want,
            2e-3,
            2.0 * BF16_RTOL,
        );
    }
}

#[test]
fn attention_prefill_and_decode_with_kv_cache() {
    let Some(g) = gpu_or_skip("attention") else {
        return;
    };
    // Prefill: fresh sequences, a continuation (chunked prefill) and a long one.
    attention_case(&g, NA, &[(2, 1, 0), (0, 7, 5), (3, 333, 100), (1, 700, 1349)], 5);
    // A long prompt (33 query blocks of the flash kernel, the last one with a single query), and
    // continuations whose length and past are multiples of neither the query block (64) nor the
    // key tile (len 64·k + 1, past 32·k + 31).
    attention_case(
        &g,
        NA,
        &[(0, 2049, 0), (3, 65, 31), (2, 129, 95), (1, 193, 127)],
        9,
    );
    // Decode: one query each, up to 2049 keys.
    attention_case(&g, NA, &[(1, 1, 2048), (3, 1, 332), (0, 1, 0)], 6);
    // GQA: 16 query heads over 4 kv heads.
    attention_case(&g, 4, &[(0, 9, 3), (2, 200, 57), (1, 130, 95)], 7);
    attention_case(&g, 4, &[(0, 1, 129), (2, 1, 1000)], 8);
}

/// The 32-key-tile flash prefill kernel (what GPUs with less shared memory per block than the
/// H100's run) on the prefill cases above; the test above runs the 64-key one on such GPUs.
#[test]
fn attention_prefill_32_key_tiles() {
    let Some(mut g) = gpu_or_skip("attention with 32-key tiles") else {
        return;
    };
    g.flash_small_tiles = true;
    attention_case(&g, NA, &[(2, 1, 0), (0, 7, 5), (3, 333, 100), (1, 700, 1349)], 5);
    attention_case(&g, NA, &[(3, 65, 31), (2, 129, 95), (1, 193, 127)], 9);
    attention_case(&g, 4, &[(0, 9, 3), (2, 200, 57), (1, 130, 95)], 7);
}

#[test]
fn cublas_linear_batched_and_accumulate() {
    let Some(g) = gpu_or_skip("gemm") else { return };
    let blas = Blas::new(&g).unwrap();
    let mut rng = Rng(9);
    let m = 7;
    // in_proj-shaped: [7, 3712] x [14848, 3712]^T.
    let x = rng.bf16_vec(m * H, -1.0, 1.0);
    let w = rng.bf16_vec(2 * DI * H, -0.05, 0.05);
    let (dx, dw) = (up_bf16(&g, &x), up_bf16(&g, &w));
    let y = poisoned(&g, m * 2 * DI * 2);
    blas.gemm(&Gemm::linear(dx.ptr(), dw.ptr(), y.ptr(), m, 2 * DI, H))
        .unwrap();
    let wm = Mat::new(2 * DI, H, w.iter().map(|&v| bf16::from_f32(v)).collect());
    let want = matmul(&x, m, &wm);
    assert_close(
        "linear 7x14848x3712",
        &down_bf16(&g, y.ptr(), m * 2 * DI),
        &want,
        1e-3,
        BF16_RTOL,
    );
    // beta = 1 accumulates onto an fp32 Y (the residual add of out_proj), without rounding.
    let y0 = rng.f32_vec(m * 2 * DI, -1.0, 1.0);
    let dy = up_f32(&g, &y0);
    blas.gemm(&Gemm {
        beta: 1.0,
        y_f32: true,
        ..Gemm::linear(dx.ptr(), dw.ptr(), dy.ptr(), m, 2 * DI, H)
    })
    .unwrap();
    let want2: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
    assert_close(
        "linear + fp32 residual",
        &down_f32(&g, dy.ptr(), m * 2 * DI),
        &want2,
        1e-4,
        1e-4,
    );
    // x_proj-shaped, batched over the 2 mamba heads with strided input and output.
    let xc = rng.bf16_vec(m * DI, -1.0, 1.0);
    let wx = rng.bf16_vec(NH * XR * DH, -0.05, 0.05);
    let (dxc, dwx) = (up_bf16(&g, &xc), up_bf16(&g, &wx));
    let xd = poisoned(&g, m * NH * XR * 2);
    blas.gemm(&Gemm {
        ldx: DI,
        ldw: DH,
        ldy: NH * XR,
        batch: NH,
        stride_x: DH,
        stride_w: XR * DH,
        stride_y: XR,
        ..Gemm::linear(dxc.ptr(), dwx.ptr(), xd.ptr(), m, XR, DH)
    })
    .unwrap();
    let got = down_bf16(&g, xd.ptr(), m * NH * XR);
    for hh in 0..NH {
        let xh: Vec<f32> = (0..m)
            .flat_map(|t| xc[t * DI + hh * DH..t * DI + (hh + 1) * DH].to_vec())
            .collect();
        let wh = Mat::new(
            XR,
            DH,
            wx[hh * XR * DH..(hh + 1) * XR * DH]
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect(),
        );
        let want = matmul(&xh, m, &wh);
        let goth: Vec<f32> = (0..m)
            .flat_map(|t| got[t * NH * XR + hh * XR..t * NH * XR + (hh + 1) * XR].to_vec())
            .collect();
        assert_close("x_proj batched", &goth, &want, 1e-3, BF16_RTOL);
    }
}

#[test]
fn argmax_takes_the_first_maximum() {
    let Some(g) = gpu_or_skip("argmax") else {
        return;
    };
    let mut rng = Rng(10);
    let v = 32000;
    let mut x = rng.f32_vec(3 * v, -5.0, 5.0);
    x[17] = 9.0;
    x[v + 31999] = 7.0;
    x[2 * v + 100] = 8.0;
    x[2 * v + 20000] = 8.0; // a tie: the first index wins
    let dx = up_f32(&g, &x);
    let out = up_i32(&g, &[-1, -1, -1]);
    g.argmax_rows(dx.ptr(), out.ptr(), 3, v).unwrap();
    let mut ids = [0i32; 3];
    g.dtoh(out.ptr(), &mut ids).unwrap();
    assert_eq!(ids, [17, 31999, 100]);
    // silu is used by the conv and gate; a sanity anchor for the CPU side of these tests.
    assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
}

#[test]
fn skinny_gemv_matches_cpu_for_every_decode_shape() {
    let Some(mut g) = gpu_or_skip("gemv") else { return };
    g.gemv_mode = GemvMode::UpTo8;
    let mut rng = Rng(12);
    let to_mat = |rows: usize, cols: usize, v: &[f32]| {
        Mat::new(rows, cols, v.iter().map(|&x| bf16::from_f32(x)).collect())
    };
    // (M, N, K): in_proj, out_proj, qkv, gate_up, down_proj, lm_head — at batch 1, 3 and 8.
    for (m, n, k) in [
        (1, 2 * DI, H),
        (3, H, DI),
        (1, 3 * 2 * H, 2 * H),
        (8, 2 * F, H),
        (2, H, F),
        (1, H, F),
        (1, 32000, H),
    ] {
        let x = rng.bf16_vec(m * k, -1.0, 1.0);
        let w = rng.bf16_vec(n * k, -0.05, 0.05);
        let (dx, dw) = (up_bf16(&g, &x), up_bf16(&g, &w));
        let want = matmul(&x, m, &to_mat(n, k, &w));
        let y = poisoned(&g, m * n * 2);
        assert!(
            g.gemv(&Gemm::linear(dx.ptr(), dw.ptr(), y.ptr(), m, n, k))
                .unwrap(),
            "gemv path taken"
        );
        assert_close(
            &format!("gemv {m}x{n}x{k}"),
            &down_bf16(&g, y.ptr(), m * n),
            &want,
            1e-3,
            BF16_RTOL,
        );
        // fp32 output accumulated onto the residual stream.
        let y0 = rng.f32_vec(m * n, -1.0, 1.0);
        let dy = up_f32(&g, &y0);
        let acc = Gemm {
            beta: 1.0,
            y_f32: true,
            ..Gemm::linear(dx.ptr(), dw.ptr(), dy.ptr(), m, n, k)
        };
        assert!(g.gemv(&acc).unwrap());
        let want2: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_close(
            &format!("gemv+residual {m}x{n}x{k}"),
            &down_f32(&g, dy.ptr(), m * n),
            &want2,
            1e-4,
            1e-4,
        );
    }
    // Batched over the two mamba heads: x_proj (K = 3712) and dt_proj (K = 232) with strides,
    // through the single-row kernel and the M ≤ 8 one (gemv_pipe: the test below).
    for m in [1, 3] {
        gemv_batched_heads(&g, &mut rng, m);
    }
    // Shapes it does not take go to cuBLAS.
    let d = poisoned(&g, 16);
    assert!(!g
        .gemv(&Gemm::linear(d.ptr(), d.ptr(), d.ptr(), 9, XR, DH))
        .unwrap());
}

#[test]
fn pipelined_gemv_matches_cpu_for_every_decode_shape() {
    let Some(mut g) = gpu_or_skip("gemv_pipe") else {
        return;
    };
    g.gemv_mode = GemvMode::Pipe;
    let mut rng = Rng(13);
    let to_mat = |rows: usize, cols: usize, v: &[f32]| {
        Mat::new(rows, cols, v.iter().map(|&x| bf16::from_f32(x)).collect())
    };
    // (N, K, ldw): in_proj, out_proj, qkv, o_proj / linear, gate_up, down, lm_head; then N that
    // divides by nothing, K = 232 (29 chunks a row, as dt_proj), a padded weight (ldw > K), fewer
    // rows than SMs, and one 16-byte chunk a row.
    for (n, k, ldw) in [
        (2 * DI, H, H),
        (H, DI, DI),
        (3 * 2 * H, 2 * H, 2 * H),
        (H, H, H),
        (2 * F, H, H),
        (H, F, F),
        (32000, H, H),
        (1000, H, H),
        (1000, R, R),
        (1000, R, R + 24),
        (5, H, H),
        (777, 8, 8),
    ] {
        let x = rng.bf16_vec(k, -1.0, 1.0);
        let mut w = rng.bf16_vec(n * ldw, -0.05, 0.05);
        // Padding past K is NaN: a kernel that reads it poisons its row.
        for row in w.chunks_mut(ldw) {
            row[k..].fill(f32::NAN);
        }
        let dense: Vec<f32> = w.chunks(ldw).flat_map(|row| row[..k].to_vec()).collect();
        let want = matmul(&x, 1, &to_mat(n, k, &dense));
        let (dx, dw) = (up_bf16(&g, &x), up_bf16(&g, &w));
        let y = poisoned(&g, n * 2);
        let lin = Gemm {
            ldw,
            ..Gemm::linear(dx.ptr(), dw.ptr(), y.ptr(), 1, n, k)
        };
        assert!(g.gemv(&lin).unwrap(), "gemv_pipe taken for {n}x{k}");
        assert_close(
            &format!("gemv_pipe {n}x{k} (ldw {ldw})"),
            &down_bf16(&g, y.ptr(), n),
            &want,
            1e-3,
            BF16_RTOL,
        );
        // fp32 output accumulated onto the residual stream.
        let y0 = rng.f32_vec(n, -1.0, 1.0);
        let dy = up_f32(&g, &y0);
        let acc = Gemm {
            y: dy.ptr(),
            beta: 1.0,
            y_f32: true,
            ..lin
        };
        assert!(g.gemv(&acc).unwrap());
        let want2: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_close(
            &format!("gemv_pipe+residual {n}x{k} (ldw {ldw})"),
            &down_f32(&g, dy.ptr(), n),
            &want2,
            1e-4,
            1e-4,
        );
    }
    // Batched over the two mamba heads with strides: x_proj (K = 3712) and dt_proj (K = 232).
    gemv_batched_heads(&g, &mut rng, 1);
    // It takes single rows only: M = 3 goes to cuBLAS.
    let d = poisoned(&g, 16);
    assert!(!g
        .gemv(&Gemm::linear(d.ptr(), d.ptr(), d.ptr(), 3, XR, DH))
        .unwrap());
}

fn gemv_batched_heads(g: &Gpu, rng: &mut Rng, m: usize) {
    let to_mat = |rows: usize, cols: usize, v: &[f32]| {
        Mat::new(rows, cols, v.iter().map(|&x| bf16::from_f32(x)).collect())
    };
    let xc = rng.bf16_vec(m * DI, -1.0, 1.0);
    let wx = rng.bf16_vec(NH * XR * DH, -0.05, 0.05);
    let (dxc, dwx) = (up_bf16(g, &xc), up_bf16(g, &wx));
    let xd = poisoned(g, m * NH * XR * 2);
    let xproj = Gemm {
        ldx: DI,
        ldw: DH,
        ldy: NH * XR,
        batch: NH,
        stride_x: DH,
        stride_w: XR * DH,
        stride_y: XR,
        ..Gemm::linear(dxc.ptr(), dwx.ptr(), xd.ptr(), m, XR, DH)
    };
    assert!(g.gemv(&xproj).unwrap());
    let got = down_bf16(g, xd.ptr(), m * NH * XR);
    let wdt = rng.bf16_vec(NH * DH * R, -0.1, 0.1);
    let dwdt = up_bf16(g, &wdt);
    let dtr = poisoned(g, m * DI * 2);
    let dtproj = Gemm {
        ldx: NH * XR,
        ldw: R,
        ldy: DI,
        batch: NH,
        stride_x: XR,
        stride_w: DH * R,
        stride_y: DH,
        ..Gemm::linear(xd.ptr(), dwdt.ptr(), dtr.ptr(), m, DH, R)
    };
    assert!(g.gemv(&dtproj).unwrap());
    let got_dt = down_bf16(g, dtr.ptr(), m * DI);
    for hh in 0..NH {
        let xh: Vec<f32> = (0..m)
            .flat_map(|t| xc[t * DI + hh * DH..t * DI + (hh + 1) * DH].to_vec())
            .collect();
        let want = matmul(&xh, m, &to_mat(XR, DH, &wx[hh * XR * DH..(hh + 1) * XR * DH]));
        let goth: Vec<f32> = (0..m)
            .flat_map(|t| got[t * NH * XR + hh * XR..t * NH * XR + (hh + 1) * XR].to_vec())
            .collect();
        assert_close("gemv x_proj batched", &goth, &want, 1e-3, BF16_RTOL);
        // dt_proj reads the dt_low columns of what the GPU wrote.
        let dtl: Vec<f32> = (0..m)
            .flat_map(|t| got[t * NH * XR + hh * XR..t * NH * XR + hh * XR + R].to_vec())
            .collect();
        let want = matmul(&dtl, m, &to_mat(DH, R, &wdt[hh * DH * R..(hh + 1) * DH * R]));
        let goth: Vec<f32> = (0..m)
            .flat_map(|t| got_dt[t * DI + hh * DH..t * DI + (hh + 1) * DH].to_vec())
            .collect();
        assert_close("gemv dt_proj batched", &goth, &want, 1e-3, BF16_RTOL);
    }
}
