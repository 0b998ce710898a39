//! The Mamba-1 mixer with `n_mamba_heads` heads, in fp32 (ZAMBA.md section 4).
//!
//! Layouts (shared with the GPU kernels, so tests can feed both the same arrays):
//! - activations are row-major `[T, channels]`;
//! - the conv state is `[K-1, DI]`: the last K-1 conv inputs, oldest first;
//! - the SSM state is `[DI, N]`;
//! - x_proj's output `xdbl` is `[T, NH, R + 2N]`: per head, dt_low (R), then B (N), then C (N).

use super::ops::{dot, matmul, silu, softplus, Mat};

/// Depthwise causal conv over time plus SiLU, continuing from `state`, which is updated in place:
/// `out[t, c] = silu(b[c] + Σ_k w[c, k] · x[t - (K-1) + k, c])`, where inputs before t = 0 come
/// from the state. `w` is `[C, K]`.
pub fn causal_conv1d_silu(xs: &[f32], t_len: usize, w: &[f32], b: &[f32], state: &mut [f32]) -> Vec<f32> {
    let c_len = b.len();
    let k_len = w.len() / c_len;
    // The conv input with its history in front: [hist + T, C].
    let mut ext = state.to_vec();
    ext.extend_from_slice(&xs[..t_len * c_len]);
    let mut out = vec![0f32; t_len * c_len];
    for t in 0..t_len {
        for c in 0..c_len {
            let mut acc = b[c];
            for k in 0..k_len {
                acc += w[c * k_len + k] * ext[(t + k) * c_len + c];
            }
            out[t * c_len + c] = silu(acc);
        }
    }
    state.copy_from_slice(&ext[t_len * c_len..]);
    out
}

/// Per-channel parameters of the selective scan, all fp32, indexed by channel `c = head·DH + d`.
pub struct ScanParams<'a> {
    /// `A = -exp(A_log)`, `[DI, N]`.
    pub a: &'a [f32],
    /// The skip term `D`, `[DI]`.
    pub d: &'a [f32],
    /// `dt_proj_bias`, `[DI]`.
    pub dt_bias: &'a [f32],
    pub n_heads: usize,
    pub d_state: usize,
    pub dt_rank: usize,
}

/// The selective scan with D skip and SiLU(z) gate, continuing from `state` (`[DI, N]`, updated):
/// ```text
/// dt[t,c]    = softplus(dtr[t,c] + dt_bias[c])
/// state[c,n] = exp(dt·A[c,n]) · state[c,n] + dt · B[t,h,n] · u[t,c]
/// y[t,c]     = (Σ_n state[c,n] · C[t,h,n] + D[c] · u[t,c]) · silu(z[t,c])
/// ```
/// with `h = c / DH`. `u`, `dtr`, `z` are `[T, DI]`; `xdbl` is `[T, NH, R + 2N]`.
pub fn selective_scan(
    u: &[f32],
    dtr: &[f32],
    xdbl: &[f32],
    z: &[f32],
    t_len: usize,
    p: &ScanParams,
    state: &mut [f32],
) -> Vec<f32> {
    let di = p.d.len();
    let (n, dh) = (p.d_state, di / p.n_heads);
    let xr = p.dt_rank + 2 * n;
    let mut y = vec![0f32; t_len * di];
    for c in 0..di {
        let h = c / dh;
        let st = &mut state[c * n..(c + 1) * n];
        for t in 0..t_len {
            let dt = softplus(dtr[t * di + c] + p.dt_bias[c]);
            let uu = u[t * di + c];
            let row = &xdbl[(t * p.n_heads + h) * xr..(t * p.n_heads + h + 1) * xr];
            let (bv, cv) = (&row[p.dt_rank..p.dt_rank + n], &row[p.dt_rank + n..]);
            let mut acc = 0f32;
            for k in 0..n {
                st[k] = (dt * p.a[c * n + k]).exp() * st[k] + dt * bv[k] * uu;
                acc += st[k] * cv[k];
            }
            y[t * di + c] = (acc + p.d[c] * uu) * silu(z[t * di + c]);
        }
    }
    y
}

/// One layer's mixer weights, in the checkpoint's layout (in_proj rows still interleaved).
pub struct MambaWeights {
    pub input_layernorm: Vec<f32>,
    /// `[2·DI, H]`, row 2c = x_c and row 2c+1 = z_c.
    pub in_proj: Mat,
    /// `[DI, K]`.
    pub conv_w: Vec<f32>,
    pub conv_b: Vec<f32>,
    /// Per head `[R + 2N, DH]`.
    pub x_proj: Vec<Mat>,
    /// Per head `[DH, R]`.
    pub dt_proj: Vec<Mat>,
    pub dt_bias: Vec<f32>,
    /// `-exp(A_log)`, `[DI, N]`.
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    /// `[H, DI]`.
    pub out_proj: Mat,
}

/// Recurrent state of one mixer for one sequence.
#[derive(Clone, Debug)]
pub struct MambaState {
    /// `[K-1, DI]`, bf16-exact values in fp32.
    pub conv: Vec<f32>,
    /// `[DI, N]`.
    pub ssm: Vec<f32>,
}

impl MambaState {
    pub fn zeros(di: usize, d_conv: usize, d_state: usize) -> Self {
        MambaState {
            conv: vec![0.0; (d_conv - 1) * di],
            ssm: vec![0.0; di * d_state],
        }
    }
}

impl MambaWeights {
    /// The mixer on `x` (`[T, H]`, already normalised), continuing from and updating `state`.
    pub fn forward(
        &self,
        x: &[f32],
        t_len: usize,
        n_heads: usize,
        d_state: usize,
        state: &mut MambaState,
    ) -> Vec<f32> {
        let di = self.d.len();
        let dh = di / n_heads;
        let dt_rank = self.dt_proj[0].cols;
        let xz = matmul(x, t_len, &self.in_proj);
        // De-interleave: row 2c is x, row 2c+1 is z (ZAMBA.md 4.1).
        let (mut xs, mut z) = (vec![0f32; t_len * di], vec![0f32; t_len * di]);
        for t in 0..t_len {
            for c in 0..di {
                xs[t * di + c] = xz[t * 2 * di + 2 * c];
                z[t * di + c] = xz[t * 2 * di + 2 * c + 1];
            }
        }
        let u = causal_conv1d_silu(&xs, t_len, &self.conv_w, &self.conv_b, &mut state.conv);
        let xr = dt_rank + 2 * d_state;
        let mut xdbl = vec![0f32; t_len * n_heads * xr];
        let mut dtr = vec![0f32; t_len * di];
        for h in 0..n_heads {
            let uh: Vec<f32> = (0..t_len)
                .flat_map(|t| u[t * di + h * dh..t * di + (h + 1) * dh].to_vec())
                .collect();
            let proj = matmul(&uh, t_len, &self.x_proj[h]);
            for t in 0..t_len {
                xdbl[(t * n_heads + h) * xr..(t * n_heads + h + 1) * xr]
                    .copy_from_slice(&proj[t * xr..(t + 1) * xr]);
                let dtl = &proj[t * xr..t * xr + dt_rank];
                for d in 0..dh {
                    let wr = &self.dt_proj[h].data[d * dt_rank..(d + 1) * dt_rank];
                    let wr: Vec<f32> = wr.iter().map(|v| v.to_f32()).collect();
                    dtr[t * di + h * dh + d] = dot(dtl, &wr);
                }
            }
        }
        let params = ScanParams {
            a: &self.a,
            d: &self.d,
            dt_bias: &self.dt_bias,
            n_heads,
            d_state,
            dt_rank,
        };
        let y = selective_scan(&u, &dtr, &xdbl, &z, t_len, &params, &mut state.ssm);
        matmul(&y, t_len, &self.out_proj)
    }
}
