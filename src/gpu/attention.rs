//! The shared block's causal attention on the device.
//!
//! - Prefill (any number of new queries per sequence): S = scale·Q·Kᵀ through cuBLAS with fp32
//!   output, the masked softmax kernel (fp32, P rounded to bf16 as HF's eager path does), and
//!   O = P·V through cuBLAS. The tensor cores do the products; the queries go in chunks so that
//!   S fits its workspace (the upper triangle is computed and masked: it costs FLOPs, not memory).
//! - Decode (one query per sequence): flash-decoding over the KV cache, split along the keys,
//!   then a combine kernel.
//!
//! GQA: query head h reads kv head h / (NA / NKV). The products run batched over the kv heads,
//! once per query head of each group.

use super::batch::Entry;
use super::device::Gpu;
use super::gemm::{Blas, Gemm};
use super::kernels::BatchMeta;
use crate::config::ZambaConfig;
use crate::error::Result;

/// Attention geometry.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub na: usize,
    pub nkv: usize,
    pub hd: usize,
    /// Row stride of qkv: Q + 2·KV.
    pub ldqkv: usize,
    /// Cache positions per (slot, kv head).
    pub ctx: usize,
    pub scale: f32,
}

impl Dims {
    pub fn of(cfg: &ZambaConfig, ctx: usize) -> Self {
        Dims {
            na: cfg.num_attention_heads,
            nkv: cfg.num_key_value_heads,
            hd: cfg.attention_head_dim,
            ldqkv: cfg.q_width() + 2 * cfg.kv_width(),
            ctx,
            scale: cfg.attention_scale(),
        }
    }

    fn q_width(&self) -> usize {
        self.na * self.hd
    }
}

/// Workspace addresses the attention uses.
#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    /// fp32 scores and bf16 probabilities, `scores_elems` elements each.
    pub scores: u64,
    pub probs: u64,
    pub scores_elems: usize,
    /// Flash-decoding partials `[B, NA, splits, HD]` fp32 and `[B, NA, splits, 2]` fp32.
    pub part_acc: u64,
    pub part_ml: u64,
    pub split_len: usize,
}

/// Causal attention of entry `e`'s new queries (rows e.start.. of `qkv`) over its cache, whose
/// positions 0..e.past+e.len are already written. Writes `out` rows (row stride NA·HD).
#[allow(clippy::too_many_arguments)]
pub fn prefill(
    gpu: &Gpu,
    blas: &Blas,
    d: &Dims,
    qkv: u64,
    e: &Entry,
    kc: u64,
    vc: u64,
    s: &Scratch,
    out: u64,
) -> Result<()> {
    let q = d.q_width();
    let rep = d.na / d.nkv;
    let head_stride = d.ctx * d.hd;
    let cache0 = (e.slot * d.nkv * head_stride * 2) as u64;
    let rows_fit = (s.scores_elems / (d.na * (e.past + e.len))).max(1);
    let mut q0 = 0;
    while q0 < e.len {
        let tq = rows_fit.min(e.len - q0);
        let nk = e.past + q0 + tq;
        for rr in 0..rep {
            // Query heads h = g·rep + rr, batched over the kv heads g: S_h = scale · Q_h · K_gᵀ.
            blas.gemm(&Gemm {
                m: tq,
                n: nk,
                k: d.hd,
                x: qkv + (((e.start + q0) * d.ldqkv + rr * d.hd) * 2) as u64,
                ldx: d.ldqkv,
                w: kc + cache0,
                ldw: d.hd,
                w_rows_are_outputs: true,
                y: s.scores + ((rr * tq * nk) * 4) as u64,
                ldy: nk,
                alpha: d.scale,
                beta: 0.0,
                y_f32: true,
                batch: d.nkv,
                stride_x: rep * d.hd,
                stride_w: head_stride,
                stride_y: rep * tq * nk,
            })?;
        }
        gpu.softmax_causal(s.scores, s.probs, d.na * tq, tq, nk, e.past + q0)?;
        for rr in 0..rep {
            // O_h = P_h · V_g, written into the head's columns of `out`.
            blas.gemm(&Gemm {
                m: tq,
                n: d.hd,
                k: nk,
                x: s.probs + ((rr * tq * nk) * 2) as u64,
                ldx: nk,
                w: vc + cache0,
                ldw: d.hd,
                w_rows_are_outputs: false,
                y: out + (((e.start + q0) * q + rr * d.hd) * 2) as u64,
                ldy: q,
                alpha: 1.0,
                beta: 0.0,
                y_f32: false,
                batch: d.nkv,
                stride_x: rep * tq * nk,
                stride_w: head_stride,
                stride_y: rep * d.hd,
            })?;
        }
        q0 += tq;
    }
    Ok(())
}

/// One query per sequence (row b of `qkv` for entry b) over its cache, whose length after this
/// step is `meta.entry_seq_len[b]` (at most `n_splits · split_len`; splits past a sequence's
/// length see no keys and drop out of the combine). Writes `out` rows (stride NA·HD).
#[allow(clippy::too_many_arguments)]
pub fn decode(
    gpu: &Gpu,
    d: &Dims,
    qkv: u64,
    kc: u64,
    vc: u64,
    meta: &BatchMeta,
    s: &Scratch,
    n_splits: usize,
    b: usize,
    out: u64,
) -> Result<()> {
    gpu.attn_decode(
        qkv,
        d.ldqkv,
        kc,
        vc,
        meta,
        s.part_acc,
        s.part_ml,
        (d.na, d.nkv, d.hd, d.ctx),
        s.split_len,
        n_splits.max(1),
        b,
        d.scale,
    )?;
    gpu.attn_decode_combine(
        s.part_acc,
        s.part_ml,
        out,
        d.q_width(),
        d.na,
        d.hd,
        n_splits.max(1),
        b,
    )
}
