//! The linear layers against the CPU matmul at Zamba-7B's shapes: cuBLAS (in_proj at 7 rows, its
//! fp32 accumulation onto a residual, x_proj batched over the 2 mamba heads with strides); the
//! skinny GEMV (M ≤ 8) and the pipelined single-row GEMV on every decode projection (in_proj,
//! out_proj, qkv, gate_up and down_proj of MLP 14848, lm_head of 32000; for the pipelined one also
//! N of 1000, 5 and 777, K = 232 with and without row padding, and K = 8), with bf16 output and
//! fp32 accumulation, and x_proj/dt_proj batched over the mamba heads; shapes they do not take
//! fall back to cuBLAS; cuBLASLt without split-K (decode batches of 9–96 rows) on out_proj and
//! o_proj. Inputs are random bf16 values, the same on both sides. Skips (and says so) on a
//! machine without a GPU.

mod common;

use common::gpu::{down_bf16, down_f32, poisoned, up_bf16, up_f32, BF16_RTOL, DH, DI, F, H, NH, R, XR};
use common::{assert_close, gpu_or_skip, Rng};
use half::bf16;
use zamba::cpu::ops::{matmul, Mat};
use zamba::gpu::gemm::{Blas, Gemm};
use zamba::gpu::gemm_nosplit::NoSplitK;
use zamba::gpu::{GemvMode, Gpu};

/// A `rows × cols` weight of the given values (already bf16-representable).
fn to_mat(rows: usize, cols: usize, v: &[f32]) -> Mat {
    Mat::new(rows, cols, v.iter().map(|&x| bf16::from_f32(x)).collect())
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
    let wm = to_mat(2 * DI, H, &w);
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
        let wh = to_mat(XR, DH, &wx[hh * XR * DH..(hh + 1) * XR * DH]);
        let want = matmul(&xh, m, &wh);
        let goth: Vec<f32> = (0..m)
            .flat_map(|t| got[t * NH * XR + hh * XR..t * NH * XR + (hh + 1) * XR].to_vec())
            .collect();
        assert_close("x_proj batched", &goth, &want, 1e-3, BF16_RTOL);
    }
}

/// cuBLASLt without split-K (zamba::gpu::gemm_nosplit) at decode batches: out_proj onto an fp32
/// residual (64 × 3712 × 7424 with beta = 1, and 24 rows), o_proj at 12 rows with bf16 output.
/// Each is checked against the CPU; out_proj at 64 rows must be taken by the route (its
/// split-K-free pick fills 0.88 waves on the H200), so the test runs the cuBLASLt path and not
/// only cublasGemmEx. 16 rows of out_proj, which the route declines there (0.11 waves), must still
/// be right through `gemm::run`.
#[test]
fn split_k_free_cublaslt_route_matches_cpu() {
    let Some(g) = gpu_or_skip("cuBLASLt without split-K") else {
        return;
    };
    let route = NoSplitK::new(&g)
        .unwrap()
        .expect("ZAMBA_GEMM_LT=0 is set: unset it to test the route");
    let blas = Blas::new(&g).unwrap();
    let mut rng = Rng(21);
    let w_out = rng.bf16_vec(H * DI, -0.05, 0.05);
    let w_o = rng.bf16_vec(H * H, -0.05, 0.05);
    let (dw_out, dw_o) = (up_bf16(&g, &w_out), up_bf16(&g, &w_o));
    let (m_out, m_o) = (to_mat(H, DI, &w_out), to_mat(H, H, &w_o));
    for (m, residual, taken) in [
        (64, true, Some(true)),
        (24, true, None),
        (12, false, None),
        (16, true, None),
    ] {
        let k = if residual { DI } else { H };
        let x = rng.bf16_vec(m * k, -1.0, 1.0);
        let dx = up_bf16(&g, &x);
        let want = matmul(&x, m, if residual { &m_out } else { &m_o });
        let what = format!("{m} × {H} × {k}");
        // The route if it takes the shape, else gemm::run (which then declines it too).
        let run = |gm: &Gemm| -> bool {
            let took = route.run(&g, gm).unwrap();
            if let Some(t) = taken {
                assert_eq!(took, t, "{what}: taken by the route");
            }
            if !took {
                zamba::gpu::gemm::run(&g, &blas, gm).unwrap();
            }
            took
        };
        if residual {
            let y0 = rng.f32_vec(m * H, -1.0, 1.0);
            let dy = up_f32(&g, &y0);
            let gm = Gemm {
                beta: 1.0,
                y_f32: true,
                ..Gemm::linear(dx.ptr(), dw_out.ptr(), dy.ptr(), m, H, DI)
            };
            let took = run(&gm);
            let want2: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
            assert_close(
                &format!("{what} + fp32 residual (route {took})"),
                &down_f32(&g, dy.ptr(), m * H),
                &want2,
                1e-4,
                1e-4,
            );
        } else {
            let y = poisoned(&g, m * H * 2);
            let gm = Gemm::linear(dx.ptr(), dw_o.ptr(), y.ptr(), m, H, H);
            let took = run(&gm);
            assert_close(
                &format!("{what} (route {took})"),
                &down_bf16(&g, y.ptr(), m * H),
                &want,
                1e-3,
                BF16_RTOL,
            );
        }
    }
}

#[test]
fn skinny_gemv_matches_cpu_for_every_decode_shape() {
    let Some(mut g) = gpu_or_skip("gemv") else { return };
    g.gemv_mode = GemvMode::UpTo8;
    let mut rng = Rng(12);
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
