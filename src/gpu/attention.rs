//! The shared block's causal attention on the device.
//!
//! - Prefill (any number of new queries per sequence): one flash-attention kernel per sequence
//!   (csrc/flash_attn.cu): Q·Kᵀ and P·V on the tensor cores (bf16 inputs, fp32 accumulation) and
//!   an online softmax in fp32. The unnormalised P is rounded to bf16 for P·V (HF's eager path
//!   also feeds bf16 probabilities to P·V) and the row sum divides the output in fp32 at the end.
//!   Key tiles past the causal limit are skipped, and no score matrix is stored.
//! - Decode (one query per sequence): flash-decoding over the KV cache, split along the keys;
//!   the last split block of each (sequence, head) combines the splits, in the same kernel.
//!
//! GQA: query head h reads kv head h / (NA / NKV).

use super::batch::Entry;
use super::device::Gpu;
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

/// Workspace addresses the decode attention uses (prefill needs none).
#[derive(Clone, Copy, Debug)]
pub struct Scratch {
    /// Flash-decoding partials `[B, NA, splits, HD]` fp32 and `[B, NA, splits, 2]` fp32.
    pub part_acc: u64,
    pub part_ml: u64,
    pub split_len: usize,
    /// `[B, NA]` u32 finished-split counts, zero before the call (the kernel leaves them zero).
    pub count: u64,
}

/// Causal attention of entry `e`'s new queries (rows e.start.. of `qkv`) over its cache, whose
/// positions 0..e.past+e.len are already written. Writes `out` rows (row stride NA·HD). One
/// launch of the flash kernel for all heads and queries of the entry.
pub fn prefill(gpu: &Gpu, d: &Dims, qkv: u64, e: &Entry, kc: u64, vc: u64, out: u64) -> Result<()> {
    gpu.flash_attn_prefill(
        qkv,
        d.ldqkv,
        e.start,
        kc,
        vc,
        out,
        d.q_width(),
        e.len,
        e.past,
        e.slot,
        (d.na, d.nkv, d.hd, d.ctx),
        d.scale,
    )
}

/// One query per sequence (row b of `qkv` for entry b) over its cache, whose length after this
/// step is `meta.entry_seq_len[b]` (at most `n_splits · split_len`; splits past a sequence's
/// length see no keys and drop out of the combine). Writes `out` rows (stride NA·HD). One
/// kernel: the last split block of each (sequence, head) combines the splits.
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
        s,
        out,
        d.q_width(),
        (d.na, d.nkv, d.hd, d.ctx),
        n_splits.max(1),
        b,
        d.scale,
    )
}
