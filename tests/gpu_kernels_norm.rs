//! RMSNorm, the embedding gather, gelu_mul and argmax against the CPU reference at Zamba-7B's
//! sizes: RMSNorm over 7 rows of hidden 3712 (bf16 input, bf16 or fp32 residual add, the
//! 7424-wide norm over concat(h, e), gathered rows; in 4-value chunks), over rows of 3710 and a
//! misaligned input (the scalar path) and over rows of 9001 (the two-pass path);
//! the embedding gather from a 32000 × 3712 table; gelu_mul over 7 rows of MLP 14848; argmax over
//! rows of 32000 with a tie. Inputs are random bf16 values, the same on both sides. Skips (and
//! says so) on a machine without a GPU.

mod common;

use common::gpu::{down_bf16, down_f32, poisoned, rb, up_bf16, up_f32, up_i32, BF16_RTOL, F, H};
use common::{assert_close, gpu_or_skip, Rng};
use zamba::cpu::ops::{gelu, silu};

const EPS: f32 = 1e-5;

/// HF's bf16 RMSNorm of one row: bf16(w · bf16(x · r)).
fn rms_hf(x: &[f32], w: &[f32]) -> Vec<f32> {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + EPS).sqrt();
    x.iter().zip(w).map(|(x, w)| rb(w * rb(x * r))).collect()
}

#[test]
fn rmsnorm_plain_residual_add_concat_and_row_gather() {
    let Some(g) = gpu_or_skip("rmsnorm") else {
        return;
    };
    // 7 rows take the decode path (1024 threads, 8 values each held in registers); 130 the
    // prefill one (16 values each: 256 threads for rows of 3712, 512 for the 7424-wide concat).
    for m in [7, 130] {
        rmsnorm_cases(&g, m);
    }
}

fn rmsnorm_cases(g: &zamba::gpu::Gpu, m: usize) {
    let mut rng = Rng(1 + m as u64);
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
        up_bf16(g, &a),
        up_bf16(g, &add),
        up_bf16(g, &e),
        up_bf16(g, &w),
        up_f32(g, &af),
    );
    let out = poisoned(g, m * 2 * H * 2);
    let rows_of =
        |f: &dyn Fn(usize) -> Vec<f32>, ts: &[usize]| -> Vec<f32> { ts.iter().flat_map(|&t| f(t)).collect() };
    let all: Vec<usize> = (0..m).collect();
    // Two roundings (inside and after the weight product) can each land one ulp apart.
    let tol = 2.0 * BF16_RTOL;

    g.rmsnorm(da.ptr(), false, 0, 0, 0, dw.ptr(), out.ptr(), m, H, 0, EPS)
        .unwrap();
    let want = rows_of(&|t| rms_hf(&a[t * H..(t + 1) * H], &w[..H]), &all);
    assert_close("bf16 rmsnorm", &down_bf16(g, out.ptr(), m * H), &want, 1e-6, tol);

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
        &down_bf16(g, out.ptr(), m * H),
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
    let want_f32_add = rows_of(
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
        &down_bf16(g, out.ptr(), m * H),
        &want_f32_add,
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
        &down_bf16(g, out.ptr(), m * 2 * H),
        &want,
        1e-6,
        tol,
    );

    // Gathered rows (each sequence's last token, for the logits).
    let rows = up_i32(g, &[6, 2]);
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
        &down_bf16(g, out.ptr(), 2 * H),
        &want,
        1e-6,
        tol,
    );

    // Rows the 4-value chunks cannot take: a width that is not a multiple of 4, and a 3712-wide
    // input one value off 16-byte alignment (fp32, with a bf16 add: the aligned case's values
    // and reference above) take the scalar held path.
    let d = H - 2;
    let (dn, dwn) = (up_bf16(g, &a[..m * d]), up_bf16(g, &w[..d]));
    g.rmsnorm(dn.ptr(), false, 0, 0, 0, dwn.ptr(), out.ptr(), m, d, 0, EPS)
        .unwrap();
    let want = rows_of(&|t| rms_hf(&a[t * d..(t + 1) * d], &w[..d]), &all);
    assert_close(
        "rmsnorm of width 3710",
        &down_bf16(g, out.ptr(), m * d),
        &want,
        1e-6,
        tol,
    );
    let shifted = up_f32(g, &[vec![0.0f32], af.clone()].concat());
    g.rmsnorm(
        shifted.ptr() + 4,
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
    assert_close(
        "misaligned fp32 rmsnorm with an add",
        &down_bf16(g, out.ptr(), m * H),
        &want_f32_add,
        1e-6,
        tol,
    );

    // Rows longer than the kernel holds in registers (8 per thread) take the two-pass path.
    let d = 9001;
    let long = rng.bf16_vec(2 * d, -3.0, 3.0);
    let wl = rng.bf16_vec(d, 0.8, 1.2);
    let (dl, dwl) = (up_bf16(g, &long), up_bf16(g, &wl));
    let outl = poisoned(g, 2 * d * 2);
    g.rmsnorm(dl.ptr(), false, 0, 0, 0, dwl.ptr(), outl.ptr(), 2, d, 0, EPS)
        .unwrap();
    let want: Vec<f32> = (0..2)
        .flat_map(|t| rms_hf(&long[t * d..(t + 1) * d], &wl))
        .collect();
    assert_close(
        "long-row rmsnorm",
        &down_bf16(g, outl.ptr(), 2 * d),
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
    // The kernel takes 8 elements per thread: a width that is not a multiple of 8 is refused.
    assert!(g.gelu_mul(dgu.ptr(), out.ptr(), m, F - 4).is_err());
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
