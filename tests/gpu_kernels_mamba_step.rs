//! The fused one-token Mamba mixer (`mamba_step`: conv update, x_proj, dt_proj, state update,
//! out_proj onto the residual) at Zamba-7B's sizes, stage by stage against the CPU reference:
//! each stage's reference starts from the kernel's own bf16 output of the stage before (read back
//! from its scratch buffers), so that a one-ulp difference in one stage does not blur the next.
//! Two steps in a row on different slots (the grid barrier's counter carries over, the states of
//! the first step feed nothing of the second), then the first slot again; the first and last
//! also compute the RMSNorm that follows (the middle one must leave its output alone). Skips (and
//! says so) on a machine without a GPU, and on GPUs without TMA bulk copies (before sm_90).

mod common;

use common::gpu::{
    batch_buffers, down_bf16, down_f32, entries, poisoned, rb, scan_params, up_bf16, up_f32, BF16_RTOL, DH,
    DI, H, K, N, NH, R, XR,
};
use common::{assert_close, gpu_or_skip, skip_note, Rng};
use zamba::cpu::mamba::{causal_conv1d_silu, selective_scan};
use zamba::gpu::kernels::{MambaStepArgs, StepDims};
use zamba::gpu::mem::DeviceBuf;

/// dt_proj's dot as the kernel sums it, so that its bf16 rounding (before the bias and softplus)
/// is the kernel's bit for bit: lane n of 16 takes the 8-wide chunks n and n + 16, each chunk an
/// fma chain over its 4 pairs, then a butterfly over the 16 lanes (xor 8, 4, 2, 1).
fn dt_dot_as_kernel(w: &[f32], x: &[f32]) -> f32 {
    let chunk = |j: usize| {
        let mut s = 0f32;
        for i in 0..4 {
            let (a, b) = (2 * i + 8 * j, 2 * i + 1 + 8 * j);
            s = w[a].mul_add(x[a], w[b].mul_add(x[b], s));
        }
        s
    };
    let mut lanes = [0f32; 16];
    for (n, l) in lanes.iter_mut().enumerate() {
        let mut j = n;
        while j < R / 8 {
            *l += chunk(j);
            j += 16;
        }
    }
    for o in [8, 4, 2, 1] {
        let prev = lanes;
        for n in 0..16 {
            lanes[n] = prev[n] + prev[n ^ o];
        }
    }
    lanes[0]
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum::<f64>() as f32
}

#[test]
fn fused_mamba_step_matches_the_reference() {
    let Some(g) = gpu_or_skip("fused mamba step") else {
        return;
    };
    let dims = StepDims {
        di: DI,
        dh: DH,
        nh: NH,
        r: R,
        k: K,
        h: H,
        d_state: N,
    };
    if !g.mamba_step_runs(&dims) {
        skip_note(
            "fused mamba step",
            "it needs sm_90 or later and at least 120 SMs at these widths",
        );
        return;
    }
    let mut rng = Rng(21);
    const SLOTS: usize = 3;
    let conv_w = rng.f32_vec(DI * K, -0.5, 0.5);
    let conv_b = rng.f32_vec(DI, -0.3, 0.3);
    let x_proj = rng.bf16_vec(NH * XR * DH, -0.05, 0.05);
    let dt_proj = rng.bf16_vec(DI * R, -0.1, 0.1);
    let a = rng.f32_vec(DI * N, -16.0, -1.0);
    let d = rng.f32_vec(DI, 0.5, 1.5);
    let dt_bias = rng.f32_vec(DI, -5.0, -2.0);
    let out_proj = rng.bf16_vec(H * DI, -0.02, 0.02);
    let mut conv_state = rng.bf16_vec(SLOTS * (K - 1) * DI, -2.0, 2.0);
    let mut ssm_state = rng.f32_vec(SLOTS * DI * N, -0.5, 0.5);
    let mut h = rng.f32_vec(H, -1.0, 1.0);
    let up = |v: &[f32]| up_bf16(&g, v);
    let (dcw, dcb, dxp, ddt) = (
        up_f32(&g, &conv_w),
        up_f32(&g, &conv_b),
        up(&x_proj),
        up(&dt_proj),
    );
    let (da, dd, dbias, dout) = (
        up_f32(&g, &a),
        up_f32(&g, &d),
        up_f32(&g, &dt_bias),
        up(&out_proj),
    );
    let (dconv, dssm, dh) = (up(&conv_state), up_f32(&g, &ssm_state), up_f32(&g, &h));
    let (xc, xdbl, y) = (
        poisoned(&g, DI * 2),
        poisoned(&g, NH * XR * 2),
        poisoned(&g, DI * 2),
    );
    let barrier = DeviceBuf::zeroed(8, "barrier").unwrap();
    let norm_w = rng.bf16_vec(H, 0.5, 1.5);
    let dnorm_w = up(&norm_w);
    let norm_out = poisoned(&g, H * 2);
    let eps = 1e-5f32;
    let mut norm_before = down_bf16(&g, norm_out.ptr(), H);
    let p = scan_params(&a, &d, &dt_bias);
    let mut args0: Option<MambaStepArgs> = None;
    let mut bb_last = None;
    for (step, slot, with_norm) in [(0, 2usize, true), (1, 0, false), (2, 2, true)] {
        let xz = rng.bf16_vec(2 * DI, -3.0, 3.0);
        let dxz = up(&xz);
        let bb = batch_buffers(&g, &entries(&[(slot, 1, 5)]));
        let args = MambaStepArgs {
            xz: dxz.ptr(),
            conv_state: dconv.ptr(),
            conv_w: dcw.ptr(),
            conv_b: dcb.ptr(),
            xc: xc.ptr(),
            x_proj: dxp.ptr(),
            xdbl: xdbl.ptr(),
            dt_proj: ddt.ptr(),
            a: da.ptr(),
            d: dd.ptr(),
            dt_bias: dbias.ptr(),
            ssm_state: dssm.ptr(),
            y: y.ptr(),
            out_proj: dout.ptr(),
            h: dh.ptr(),
            barrier: barrier.ptr(),
            norm_w: if with_norm { dnorm_w.ptr() } else { 0 },
            norm_out: norm_out.ptr(),
            eps,
        };
        g.mamba_step(&args, &dims, &bb.meta).unwrap();
        args0 = Some(args);
        bb_last = Some(bb);
        let what = |s: &str| format!("step {step} (slot {slot}): {s}");

        // Conv: output and state (the state is bf16 copies: exact).
        let cs = &mut conv_state[slot * (K - 1) * DI..(slot + 1) * (K - 1) * DI];
        let want_xc: Vec<f32> = causal_conv1d_silu(&xz[..DI], 1, &conv_w, &conv_b, cs)
            .into_iter()
            .map(rb)
            .collect();
        let got_xc = down_bf16(&g, xc.ptr(), DI);
        assert_close(&what("conv output"), &got_xc, &want_xc, 1e-3, BF16_RTOL);
        let got_conv = down_bf16(&g, dconv.ptr(), SLOTS * (K - 1) * DI);
        assert_eq!(got_conv, conv_state, "{}", what("conv states"));

        // x_proj from the kernel's xc.
        let want_xdbl: Vec<f32> = (0..NH * XR)
            .map(|row| {
                let hh = row / XR;
                rb(dot(
                    &got_xc[hh * DH..(hh + 1) * DH],
                    &x_proj[row * DH..(row + 1) * DH],
                ))
            })
            .collect();
        let got_xdbl = down_bf16(&g, xdbl.ptr(), NH * XR);
        assert_close(&what("x_proj"), &got_xdbl, &want_xdbl, 1e-3, BF16_RTOL);

        // dt_proj and the state update from the kernel's xc and xdbl.
        let dtr: Vec<f32> = (0..DI)
            .map(|c| {
                let hh = c / DH;
                rb(dt_dot_as_kernel(
                    &dt_proj[c * R..(c + 1) * R],
                    &got_xdbl[hh * XR..hh * XR + R],
                ))
            })
            .collect();
        let st = &mut ssm_state[slot * DI * N..(slot + 1) * DI * N];
        let want_y = selective_scan(&got_xc, &dtr, &got_xdbl, &xz[DI..], 1, &p, st);
        let got_y = down_bf16(&g, y.ptr(), DI);
        assert_close(&what("y"), &got_y, &want_y, 2e-3, 2.0 * BF16_RTOL);
        let got_ssm = down_f32(&g, dssm.ptr(), SLOTS * DI * N);
        assert_close(&what("ssm states"), &got_ssm, &ssm_state, 1e-5, 1e-3);

        // out_proj from the kernel's y, onto the residual.
        for (o, ho) in h.iter_mut().enumerate() {
            *ho += dot(&got_y, &out_proj[o * DI..(o + 1) * DI]);
        }
        let got_h = down_f32(&g, dh.ptr(), H);
        assert_close(&what("residual"), &got_h, &h, 1e-4, 1e-4);

        // The norm of the kernel's residual: bf16(w · bf16(h · rsqrt(mean(h²) + eps))). The
        // kernel's fp32 sum of squares may move a product across a bf16 rounding boundary.
        let got_norm = down_bf16(&g, norm_out.ptr(), H);
        if with_norm {
            let ms = got_h.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / H as f64;
            let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
            let want: Vec<f32> = got_h
                .iter()
                .zip(&norm_w)
                .map(|(x, w)| rb(w * rb(x * r)))
                .collect();
            assert_close(&what("next norm"), &got_norm, &want, 1e-6, 2.0 * BF16_RTOL);
        } else {
            assert_eq!(got_norm, norm_before, "{}", what("norm output untouched"));
        }
        norm_before = got_norm;
    }
    // Every launch arrived three times per block on the grid barrier, and once more where it
    // computed the norm.
    let count = down_u64(&g, barrier.ptr());
    assert_eq!(count, (4 + 3 + 4) * g.sm_count as u64);
    // Widths it does not take are an error, not a launch.
    let odd = StepDims { r: 260, ..dims };
    let (args0, bb) = (args0.unwrap(), bb_last.unwrap());
    let meta = bb.meta;
    assert!(g.mamba_step(&args0, &odd, &meta).is_err());
    // So are buffers its 16-byte loads and copies cannot take; the barrier count shows that
    // nothing was launched.
    for bad in [
        MambaStepArgs {
            xz: args0.xz + 2,
            ..args0
        },
        MambaStepArgs {
            out_proj: args0.out_proj + 8,
            ..args0
        },
        MambaStepArgs {
            xdbl: args0.xdbl + 4,
            ..args0
        },
        MambaStepArgs {
            barrier: args0.barrier + 4,
            ..args0
        },
        MambaStepArgs {
            norm_out: args0.norm_out + 1,
            ..args0
        },
    ] {
        assert!(g.mamba_step(&bad, &dims, &meta).is_err());
    }
    assert_eq!(down_u64(&g, barrier.ptr()), count);
}

fn down_u64(g: &zamba::gpu::Gpu, d: u64) -> u64 {
    let mut v = [0u32; 2];
    g.dtoh(d, &mut v).unwrap();
    v[0] as u64 | (v[1] as u64) << 32
}
