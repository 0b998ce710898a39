//! The shared transformer block in fp32 (ZAMBA.md 3.1): RMSNorm over concat(h, e), RoPE-free causal
//! attention with scale 1/sqrt(head_dim/2) and a KV cache, o_proj, RMSNorm, and the GELU-gated MLP.
//! There is no residual connection inside the block.

use super::ops::{gelu, matmul, par_rows, rmsnorm, Mat};

/// Causal attention of `q` (`[T, NA·HD]`) over cached keys/values (`[P, NKV·HD]`, where the last T
/// rows belong to the queries): query t sits at position `P - T + t` and sees positions `0..=` that.
/// Heads share kv head `head / (NA / NKV)` (GQA). Returns `[T, NA·HD]`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    t_len: usize,
    k: &[f32],
    v: &[f32],
    n_pos: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let (qw, kw) = (n_heads * hd, n_kv * hd);
    let rep = n_heads / n_kv;
    let p0 = n_pos - t_len;
    let mut out = vec![0f32; t_len * qw];
    // One output row per (query, head), spread over threads.
    par_rows(&mut out, hd, |row, o| {
        let (t, h) = (row / n_heads, row % n_heads);
        let visible = p0 + t + 1;
        let g = h / rep;
        let qh = &q[t * qw + h * hd..t * qw + (h + 1) * hd];
        let scores: Vec<f32> = (0..visible)
            .map(|p| {
                qh.iter()
                    .zip(&k[p * kw + g * hd..p * kw + (g + 1) * hd])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    * scale
            })
            .collect();
        let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let sum: f32 = e.iter().sum();
        for (p, ep) in e.iter().enumerate() {
            let w = ep / sum;
            for (od, vd) in o.iter_mut().zip(&v[p * kw + g * hd..p * kw + (g + 1) * hd]) {
                *od += w * vd;
            }
        }
    });
    out
}

/// The shared block's weights (one set for all hybrid layers).
pub struct SharedWeights {
    /// `[2H]`, over concat(h, e).
    pub input_layernorm: Vec<f32>,
    pub q_proj: Mat,
    pub k_proj: Mat,
    pub v_proj: Mat,
    pub o_proj: Mat,
    pub pre_ff_layernorm: Vec<f32>,
    pub gate_proj: Mat,
    pub up_proj: Mat,
    pub down_proj: Mat,
}

/// Attention geometry of the shared block.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub eps: f32,
}

/// One hybrid layer's KV cache for one sequence: `[positions, NKV·HD]` each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl SharedWeights {
    /// The block on residual stream `h` and embeddings `e` (both `[T, H]`), appending this step's
    /// keys and values to `cache`. Returns the MLP output `[T, H]`.
    pub fn forward(&self, h: &[f32], e: &[f32], t_len: usize, s: AttnShape, cache: &mut KvCache) -> Vec<f32> {
        let hs = h.len() / t_len.max(1);
        let mut cat = Vec::with_capacity(2 * h.len());
        for t in 0..t_len {
            cat.extend_from_slice(&h[t * hs..(t + 1) * hs]);
            cat.extend_from_slice(&e[t * hs..(t + 1) * hs]);
        }
        let a = rmsnorm(&cat, &self.input_layernorm, s.eps);
        let q = matmul(&a, t_len, &self.q_proj);
        cache.k.extend(matmul(&a, t_len, &self.k_proj));
        cache.v.extend(matmul(&a, t_len, &self.v_proj));
        let n_pos = cache.k.len() / (s.n_kv * s.head_dim);
        let o = causal_attention(
            &q, t_len, &cache.k, &cache.v, n_pos, s.n_heads, s.n_kv, s.head_dim, s.scale,
        );
        let o = matmul(&o, t_len, &self.o_proj);
        let m = rmsnorm(&o, &self.pre_ff_layernorm, s.eps);
        let g = matmul(&m, t_len, &self.gate_proj);
        let u = matmul(&m, t_len, &self.up_proj);
        let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| gelu(*g) * u).collect();
        matmul(&act, t_len, &self.down_proj)
    }
}
