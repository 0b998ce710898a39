//! Every activation buffer of a forward, allocated once for the largest batch the engine takes
//! (max_tokens rows, `slots` sequences, contexts up to `ctx`).

use super::mem::DeviceBuf;
use crate::config::ZambaConfig;
use crate::error::Result;

/// Keys per flash-decoding split.
pub const SPLIT_LEN: usize = 128;

/// Budget for one lm_head piece (fp32 logits).
const LOGITS_BYTES: usize = 128 << 20;

pub struct Workspace {
    /// Embeddings of the current tokens, `[M, H]` bf16.
    pub e: DeviceBuf,
    /// The residual stream, `[M, H]` fp32.
    pub h: DeviceBuf,
    /// Normed mixer input (also the final norm's output), `[M, H]`.
    pub n: DeviceBuf,
    /// in_proj output `[M, 2·DI]`: x then z.
    pub xz: DeviceBuf,
    /// Conv output (the scan's u), `[M, DI]`.
    pub xc: DeviceBuf,
    /// x_proj output `[M, NH, R + 2N]`.
    pub xdbl: DeviceBuf,
    /// dt_proj output `[M, DI]`.
    pub dtr: DeviceBuf,
    /// Scan output `[M, DI]`.
    pub y: DeviceBuf,
    /// Shared block: normed concat `[M, 2H]`, qkv `[M, Q + 2KV]`, attention output `[M, Q]`,
    /// o_proj output, its norm, gate|up `[M, 2F]`, the GELU product `[M, F]`, the block output,
    /// and the per-layer linear's output (all bf16).
    pub a: DeviceBuf,
    pub qkv: DeviceBuf,
    pub attn: DeviceBuf,
    pub o: DeviceBuf,
    pub mo: DeviceBuf,
    pub gu: DeviceBuf,
    pub act: DeviceBuf,
    pub t: DeviceBuf,
    pub tl: DeviceBuf,
    /// Flash-decoding partials: `[slots, NA, splits, HD]` and `[slots, NA, splits, 2]`.
    pub part_acc: DeviceBuf,
    pub part_ml: DeviceBuf,
    pub split_len: usize,
    /// Rows whose logits are wanted (i32), the logits (`[logit_rows, V]` fp32), and argmax (i32).
    pub rows: DeviceBuf,
    pub logits: DeviceBuf,
    pub logit_rows: usize,
    pub argmax: DeviceBuf,
    /// The grid-barrier counter of `mamba_step` (8 bytes, zeroed here, then only grown by it).
    pub grid_sync: DeviceBuf,
    /// Flash-decoding's finished-split counts, `[slots, NA]` u32 (zeroed here; each decode
    /// attention leaves them zero).
    pub attn_count: DeviceBuf,
}

/// Buffers that start zeroed: counters that the kernels leave as they need them next time.
const ZEROED: &[&str] = &["grid_sync", "attn_count"];

/// (name, bytes) of every buffer, in one place so that `bytes` and `new` agree: `new` takes
/// them in order and checks each name.
fn sizes(cfg: &ZambaConfig, m: usize, slots: usize, ctx: usize) -> Vec<(&'static str, usize)> {
    let (h, di) = (cfg.hidden_size, cfg.d_inner());
    let xd = cfg.n_mamba_heads * cfg.x_proj_rows();
    let (q, kv, f, na, hd) = (
        cfg.q_width(),
        cfg.kv_width(),
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
    );
    let splits = ctx.div_ceil(SPLIT_LEN);
    let rows = logit_rows(cfg, m.max(slots));
    let bf = 2;
    vec![
        ("e", m * h * bf),
        ("h", m * h * 4),
        ("n", m.max(slots) * h * bf),
        ("xz", m * 2 * di * bf),
        ("xc", m * di * bf),
        ("xdbl", m * xd * bf),
        ("dtr", m * di * bf),
        ("y", m * di * bf),
        ("a", m * 2 * h * bf),
        ("qkv", m * (q + 2 * kv) * bf),
        ("attn", m * q * bf),
        ("o", m * h * bf),
        ("mo", m * h * bf),
        ("gu", m * 2 * f * bf),
        ("act", m * f * bf),
        ("t", m * h * bf),
        ("tl", m * h * bf),
        ("part_acc", slots * na * splits * hd * 4),
        ("part_ml", slots * na * splits * 2 * 4),
        ("rows", m.max(slots) * 4),
        ("logits", rows * cfg.vocab_size * 4),
        ("argmax", m.max(slots) * 4),
        ("grid_sync", 8),
        ("attn_count", slots * na * 4),
    ]
}

/// Rows per lm_head piece.
fn logit_rows(cfg: &ZambaConfig, want: usize) -> usize {
    (LOGITS_BYTES / (cfg.vocab_size * 4)).clamp(1, want.max(1))
}

impl Workspace {
    /// Device bytes for a workspace of `m` rows, `slots` sequences and contexts up to `ctx`.
    pub fn bytes(cfg: &ZambaConfig, m: usize, slots: usize, ctx: usize) -> usize {
        sizes(cfg, m, slots, ctx).iter().map(|s| s.1).sum()
    }

    pub fn new(cfg: &ZambaConfig, m: usize, slots: usize, ctx: usize) -> Result<Self> {
        let s = sizes(cfg, m, slots, ctx);
        let mut it = s.iter();
        let mut next = |what: &str| {
            let (name, bytes) = it.next().expect("one size per buffer");
            assert_eq!(*name, what, "workspace buffers out of order");
            if ZEROED.contains(name) {
                DeviceBuf::zeroed(*bytes, what)
            } else {
                DeviceBuf::new(*bytes, what)
            }
        };
        Ok(Workspace {
            e: next("e")?,
            h: next("h")?,
            n: next("n")?,
            xz: next("xz")?,
            xc: next("xc")?,
            xdbl: next("xdbl")?,
            dtr: next("dtr")?,
            y: next("y")?,
            a: next("a")?,
            qkv: next("qkv")?,
            attn: next("attn")?,
            o: next("o")?,
            mo: next("mo")?,
            gu: next("gu")?,
            act: next("act")?,
            t: next("t")?,
            tl: next("tl")?,
            part_acc: next("part_acc")?,
            part_ml: next("part_ml")?,
            split_len: SPLIT_LEN,
            rows: next("rows")?,
            logits: next("logits")?,
            logit_rows: logit_rows(cfg, m.max(slots)),
            argmax: next("argmax")?,
            grid_sync: next("grid_sync")?,
            attn_count: next("attn_count")?,
        })
    }
}
