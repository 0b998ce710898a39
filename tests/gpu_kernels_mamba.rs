//! The Mamba kernels against the CPU reference at Zamba-7B's sizes (d_inner 7424 in 2 mamba heads
//! of 3712, d_state 16, dt_rank 232, conv width 4): the causal conv1d over prefill lengths 1, 2,
//! 7, 3, 65, 333, 509 and 2049 in one batch (from non-zero states; the kernel's runs of 8 rows
//! cross entries), its state update, then a one-token update for three sequences; the selective
//! scan over 1, 7, 333 and 2049 (one pass per sequence), then one-token SSM decode for six
//! sequences, four of them from the states it wrote; SSM decode with dt_proj fused in, at batch
//! 11 over 16 state slots and then batch 1.
//! Inputs are random bf16 values, the same on both sides. Skips (and says so) on a machine
//! without a GPU.

mod common;

use common::gpu::{
    batch_buffers, down_bf16, down_f32, entries, poisoned, rb, scan_params, up_bf16, up_f32, BF16_RTOL, DH,
    DI, K, N, NH, R, XR,
};
use common::{assert_close, gpu_or_skip, Rng};
use half::bf16;
use zamba::cpu::mamba::{causal_conv1d_silu, selective_scan};
use zamba::gpu::batch::Entry;
use zamba::gpu::kernels::ScanArgs;

#[test]
fn causal_conv1d_prefill_update_and_state() {
    let Some(g) = gpu_or_skip("conv1d") else {
        return;
    };
    let mut rng = Rng(3);
    let es = entries(&[
        (2, 1, 0),
        (5, 2, 3),
        (0, 7, 4),
        (4, 3, 0),
        (6, 65, 1),
        (3, 333, 9),
        (7, 509, 0),
        (1, 2049, 0),
    ]);
    let slots = es.len();
    let m: usize = es.iter().map(|e| e.len).sum();
    let xz = rng.bf16_vec(m * 2 * DI, -2.0, 2.0);
    let state0 = rng.bf16_vec(slots * (K - 1) * DI, -2.0, 2.0);
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
    // 8 channels per thread: d_inner and the row stride must be multiples of 8.
    for (ldx, di) in [(2 * DI, DI - 4), (2 * DI - 4, DI)] {
        let r = g.conv1d_prefill(
            dxz.ptr(),
            ldx,
            &bb.meta,
            dstate.ptr(),
            dw.ptr(),
            db.ptr(),
            out.ptr(),
            m,
            di,
            K,
        );
        assert!(r.is_err(), "conv1d_prefill accepted ldx {ldx}, d_inner {di}");
        let r = g.conv1d_update(
            dxz.ptr(),
            ldx,
            &bb.meta,
            dstate.ptr(),
            dw.ptr(),
            db.ptr(),
            out.ptr(),
            1,
            di,
            K,
        );
        assert!(r.is_err(), "conv1d_update accepted ldx {ldx}, d_inner {di}");
    }
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
    let got_state = down_bf16(&g, dstate.ptr(), slots * (K - 1) * DI);
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
    let state1 = down_bf16(&g, dstate.ptr(), slots * sz);
    let mut states = got_state.clone();
    check_conv_tokens("conv update", &x1, &es1, (&w, &b), &mut states, &got1, &state1);
}

/// One-token conv results against the CPU: entry bi of `es` has its input in row bi of `xz`
/// (rows of 2·DI, x first); `causal_conv1d_silu` from its slot's state in `states` (which it
/// advances) must give row bi of `got` within bf16 rounding, and exactly its slot's state in
/// `got_state`.
fn check_conv_tokens(
    what: &str,
    xz: &[f32],
    es: &[Entry],
    (w, b): (&[f32], &[f32]),
    states: &mut [f32],
    got: &[f32],
    got_state: &[f32],
) {
    let sz = (K - 1) * DI;
    for (bi, e) in es.iter().enumerate() {
        let st = &mut states[e.slot * sz..(e.slot + 1) * sz];
        let want = causal_conv1d_silu(&xz[bi * 2 * DI..bi * 2 * DI + DI], 1, w, b, st);
        assert_close(
            &format!("{what}: conv output"),
            &got[bi * DI..(bi + 1) * DI],
            &want,
            1e-3,
            BF16_RTOL,
        );
        assert_eq!(
            &got_state[e.slot * sz..(e.slot + 1) * sz],
            &st[..],
            "{what}: conv state of slot {}",
            e.slot
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

/// The prefill scan (`scan_seq`) over four sequences from random states, then one-token decode
/// from the states it wrote.
#[test]
fn selective_scan_prefill_and_decode() {
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
    let state0 = rng.f32_vec(6 * DI * N, -0.5, 0.5);
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
    // The kernel's blocks take 16 channels of one head: other head widths are refused.
    assert!(g
        .scan_seq(
            &ScanArgs {
                dh: (DH - 8) as i32,
                ..args
            },
            &bb.meta,
            dstate.ptr(),
            y.ptr(),
            es.len()
        )
        .is_err());
    g.scan_seq(&args, &bb.meta, dstate.ptr(), y.ptr(), es.len())
        .unwrap();
    let got = down_bf16(&g, y.ptr(), m * DI);
    let got_state = down_f32(&g, dstate.ptr(), 6 * DI * N);
    let p = scan_params(&a, &d, &dt_bias);
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

    // One-token decode for six sequences, four from the states just written and two (slots 4
    // and 5) from their initial ones.
    let es1 = entries(&[
        (1, 1, 2049),
        (3, 1, 334),
        (2, 1, 1),
        (5, 1, 9),
        (0, 1, 7),
        (4, 1, 3),
    ]);
    let b1 = es1.len();
    let bb1 = batch_buffers(&g, &es1);
    let inp1 = scan_inputs(&mut rng, b1);
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
    let y1 = poisoned(&g, b1 * DI * 2);
    g.ssm_decode(&args1, &bb1.meta, dstate.ptr(), y1.ptr(), b1)
        .unwrap();
    let got1 = down_bf16(&g, y1.ptr(), b1 * DI);
    let got_state1 = down_f32(&g, dstate.ptr(), 6 * sz);
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
    let p = scan_params(&a, &d, &dt_bias);
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
