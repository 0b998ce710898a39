//! The fp32 building blocks of the CPU reference. Every function is written for clarity, takes
//! plain row-major slices, and uses the same memory layouts as the GPU kernels so that tests can
//! feed both the same arrays.

use half::bf16;

/// A row-major matrix `[rows, cols]` kept in bf16 (the checkpoint's precision), widened to f32 as
/// it is used. This keeps a 7B model's reference at its checkpoint size.
#[derive(Clone, Debug)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<bf16>,
}

impl Mat {
    /// Wraps row-major bf16 data; `data.len()` must be rows × cols.
    pub fn new(rows: usize, cols: usize, data: Vec<bf16>) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat::new: data length");
        Mat { rows, cols, data }
    }

    /// Row `r` widened to f32.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        self.data[r * self.cols..(r + 1) * self.cols]
            .iter()
            .map(|v| v.to_f32())
            .collect()
    }
}

/// Number of worker threads for the CPU reference.
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(64)
}

/// Runs `f(row_index, out_row)` for every row of `out` (`[n_rows, row_len]`), spread over threads.
pub fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n_rows = out.len().checked_div(row_len).unwrap_or(0);
    let per = n_rows.div_ceil(threads()).max(1);
    std::thread::scope(|s| {
        for (ci, chunk) in out.chunks_mut(per * row_len.max(1)).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, row) in chunk.chunks_mut(row_len).enumerate() {
                    f(ci * per + j, row);
                }
            });
        }
    });
}

/// `y[t, o] = Σ_i x[t, i] · w[o, i]` for `x` `[t_len, w.cols]`: the nn.Linear convention, fp32
/// accumulation. Returns `[t_len, w.rows]`.
pub fn matmul(x: &[f32], t_len: usize, w: &Mat) -> Vec<f32> {
    assert_eq!(x.len(), t_len * w.cols, "matmul: input shape");
    // Work is split over output features (the weight rows), so each weight row is widened once.
    let mut yt = vec![0f32; w.rows * t_len];
    par_rows(&mut yt, t_len, |o, out| {
        let wr = w.row_f32(o);
        for (t, y) in out.iter_mut().enumerate() {
            *y = dot(&x[t * w.cols..(t + 1) * w.cols], &wr);
        }
    });
    transpose(&yt, w.rows, t_len)
}

/// Dot product with four partial sums (fp32).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for k in 0..4 {
            acc[k] += a[4 * i + k] * b[4 * i + k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// Transposes `[rows, cols]` to `[cols, rows]`.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            y[c * rows + r] = x[r * cols + c];
        }
    }
    y
}

/// HF/Llama RMSNorm of each row of `x` (`[rows, w.len()]`): `w · x / sqrt(mean(x²) + eps)`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..d {
            yr[i] = w[i] * (xr[i] * r);
        }
    }
    y
}

/// SiLU: `v · sigmoid(v)`.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The exact (erf) GELU: `v · Φ(v)`.
pub fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v as f64 / std::f64::consts::SQRT_2) as f32)
}

/// softplus with PyTorch's threshold: `x` above 20, else `log(1 + eˣ)`.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// erf(x) with an absolute error below 1.2e-7 (the Chebyshev fit of erfc from Numerical Recipes,
/// evaluated in f64): below the f32 rounding of the results it feeds.
pub fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let ans = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    let erf_abs = 1.0 - ans;
    if x >= 0.0 {
        erf_abs
    } else {
        -erf_abs
    }
}
