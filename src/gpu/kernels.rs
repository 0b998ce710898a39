//! Typed launchers for the kernels in `csrc/`, one function per kernel. Each mirrors its kernel's
//! signature exactly; the math and launch shape of each are documented beside the kernel.
//! Device addresses are `u64`; sizes are passed as the kernels' `int`s.

#![allow(clippy::too_many_arguments)]

use super::device::{Args, GemvMode, Gpu};
use super::gemm::Gemm;
use crate::error::{Result, ZambaError};

/// Mirrors `ScanArgs` in csrc/scan.cu (field order and C layout must match).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ScanArgs {
    pub u: u64,
    pub dtr: u64,
    pub z: u64,
    pub ldz: i32,
    pub _pad: i32,
    pub xdbl: u64,
    pub a: u64,
    pub d: u64,
    pub dt_bias: u64,
    pub di: i32,
    pub dh: i32,
    pub nh: i32,
    pub r: i32,
}

/// Device addresses of the per-forward batch description (see csrc/conv.cu).
#[derive(Clone, Copy, Debug)]
pub struct BatchMeta {
    pub tok_ids: u64,
    pub tok_entry: u64,
    pub entry_start: u64,
    pub entry_len: u64,
    pub entry_past: u64,
    pub entry_slot: u64,
    /// Keys per entry after this step (past + len).
    pub entry_seq_len: u64,
    pub entry_chunk0: u64,
    pub entry_nchunks: u64,
    pub chunk_entry: u64,
    pub chunk_t0: u64,
    pub chunk_len: u64,
    pub chunk_flags: u64,
}

/// Queries per block and threads of flash_attn_prefill (FA_BQ and 32·FA_WARPS in
/// csrc/flash_attn.cu), and the largest head_dim it takes (FA_MAX_HD).
const FLASH_BQ: usize = 64;
const FLASH_THREADS: u32 = 256;
pub const FLASH_MAX_HD: usize = 512;

/// The flash prefill kernels and their keys per tile: 64-key tiles where the GPU lets a block
/// have the shared memory (H100/H200), 32-key tiles otherwise (A100), or when
/// [`Gpu::flash_small_tiles`] asks for them.
pub const FLASH_PREFILL_KERNELS: [(&str, usize); 2] =
    [("flash_attn_prefill", 64), ("flash_attn_prefill_k32", 32)];

/// Dynamic shared memory of a flash prefill kernel with `bk`-key tiles (`fa_smem_bytes` in
/// csrc/flash_attn.cu): the Q block and one K and one V tile, rows of HD + 8 bf16; each warp
/// pair's P (one 16-byte A fragment per lane per 16-key step); the warps' row maxima and row sums
/// (16 fp32 each).
pub const fn flash_smem_bytes(hd: usize, bk: usize) -> usize {
    let pairs = FLASH_THREADS as usize / 64;
    (FLASH_BQ + 2 * bk) * (hd + 8) * 2 + pairs * (bk / 16) * 32 * 16 + 2 * pairs * 2 * 16 * 4
}

/// Single-row GEMMs with fewer weight bytes than this go to csrc/gemv.cu by default: on the H200
/// it beat cuBLAS on x_proj (3.9 against 7.8 µs) and lost on every large matrix, where cuBLAS
/// reaches 72–100% of copy bandwidth (BENCHMARKS.md, `zamba-run bench --gemv-ab`).
pub const SMALL_GEMV_BYTES: usize = 16 << 20;

/// Warps per block of `gemv_pipe` (PIPE_WARPS in csrc/gemv.cu).
const PIPE_WARPS: u32 = 16;

/// The most dynamic shared memory `gemv_pipe` launches with (it is not opted in to more than the
/// default 48 KB, less its static part).
pub const PIPE_MAX_SMEM: usize = 47 << 10;

/// The launch geometry of `gemv_pipe` for `batch` members of N rows of K over `grid` blocks:
/// (rows_cap, dynamic shared memory bytes). rows_cap = ⌈R / grid⌉ bounds the rows of one block;
/// the shared memory holds their row sums (rounded up to 16 bytes) and the x rows of the batch
/// members they belong to, of which there are at most ⌈rows_cap / N⌉ + 1 (csrc/gemv.cu).
pub fn gemv_pipe_smem(n: usize, k: usize, batch: usize, grid: usize) -> (usize, usize) {
    let rows_cap = (n * batch).div_ceil(grid.max(1));
    let members = batch.min(rows_cap.div_ceil(n.max(1)) + 1);
    (rows_cap, rows_cap.div_ceil(4) * 16 + members * k * 2)
}

/// Whether the fused dt_proj + state update (`ssm_decode_dt`) handles dt_rank `r`: one 16-byte
/// chunk per lane covers a row.
pub fn ssm_decode_dt_fits(r: usize) -> bool {
    r % 8 == 0 && r <= 256
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

fn i(v: usize) -> i32 {
    v as i32
}

impl Gpu {
    pub fn embed_gather(
        &self,
        ids: u64,
        table: u64,
        e: u64,
        h: u64,
        m: usize,
        hdim: usize,
        vocab: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(ids)
            .push(table)
            .push(e)
            .push(h)
            .push(i(hdim))
            .push(i(vocab));
        self.launch("embed_gather", (i(m) as u32, 1, 1), 256, &mut a)
    }

    /// RMSNorm of rows assembled from `x` (+ `add`) and `b` (see csrc/norm.cu); 0 means null.
    /// `x_f32`: x is fp32 (the residual stream), else bf16.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &self,
        x: u64,
        x_f32: bool,
        add: u64,
        b: u64,
        rows: u64,
        w: u64,
        out: u64,
        n_rows: usize,
        d1: usize,
        d2: usize,
        eps: f32,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(x)
            .push(i32::from(x_f32))
            .push(add)
            .push(b)
            .push(rows)
            .push(w)
            .push(out)
            .push(i(d1))
            .push(i(d2))
            .push(eps);
        // One block per row. A few long rows (decode) get wide blocks, so that one row is not a
        // long serial loop; many rows (prefill) get 256 threads, so that more rows run at once
        // (rows longer than NORM_HELD · 256 = 2048 then take the kernel's two-pass path).
        let threads = if d1 + d2 >= 2048 && n_rows <= 64 {
            1024
        } else {
            256
        };
        self.launch("rmsnorm", (n_rows as u32, 1, 1), threads, &mut a)
    }

    pub fn gelu_mul(&self, gu: u64, out: u64, m: usize, f: usize) -> Result<()> {
        let mut a = Args::new();
        a.push(gu).push(out).push(i(m)).push(i(f));
        self.launch("gelu_mul", (blocks(m * f, 256), 1, 1), 256, &mut a)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_prefill(
        &self,
        xs: u64,
        ldx: usize,
        meta: &BatchMeta,
        conv_state: u64,
        w: u64,
        bias: u64,
        out: u64,
        m: usize,
        di: usize,
        k: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(xs)
            .push(i(ldx))
            .push(meta.tok_entry)
            .push(meta.entry_start)
            .push(meta.entry_slot);
        a.push(conv_state)
            .push(w)
            .push(bias)
            .push(out)
            .push(i(m))
            .push(i(di))
            .push(i(k));
        // CONV_ROWS rows per thread (csrc/conv.cu).
        self.launch("conv1d_prefill", (blocks(di, 256), blocks(m, 8), 1), 256, &mut a)
    }

    pub fn conv_state_update(
        &self,
        xs: u64,
        ldx: usize,
        meta: &BatchMeta,
        conv_state: u64,
        n_entries: usize,
        di: usize,
        k: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(xs)
            .push(i(ldx))
            .push(meta.entry_start)
            .push(meta.entry_len)
            .push(meta.entry_slot);
        a.push(conv_state).push(i(di)).push(i(k));
        self.launch(
            "conv_state_update",
            (blocks(di, 256), n_entries as u32, 1),
            256,
            &mut a,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv1d_update(
        &self,
        xs: u64,
        ldx: usize,
        meta: &BatchMeta,
        conv_state: u64,
        w: u64,
        bias: u64,
        out: u64,
        b: usize,
        di: usize,
        k: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(xs)
            .push(i(ldx))
            .push(meta.entry_slot)
            .push(conv_state)
            .push(w)
            .push(bias)
            .push(out);
        a.push(i(di)).push(i(k));
        self.launch("conv1d_update", (blocks(di, 256), b as u32, 1), 256, &mut a)
    }

    pub fn scan_chunk_local(
        &self,
        s: &ScanArgs,
        meta: &BatchMeta,
        h_loc: u64,
        dtsum: u64,
        n_chunks: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(*s)
            .push(meta.chunk_t0)
            .push(meta.chunk_len)
            .push(meta.chunk_flags)
            .push(h_loc)
            .push(dtsum);
        self.launch(
            "scan_chunk_local",
            (blocks(s.di as usize, 128), n_chunks as u32, 1),
            128,
            &mut a,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn scan_chunk_combine(
        &self,
        a_f32: u64,
        meta: &BatchMeta,
        ssm_state: u64,
        h_loc: u64,
        dtsum: u64,
        s_in: u64,
        n_entries: usize,
        di: usize,
        n: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(a_f32)
            .push(meta.entry_slot)
            .push(meta.entry_chunk0)
            .push(meta.entry_nchunks);
        a.push(ssm_state).push(h_loc).push(dtsum).push(s_in).push(i(di));
        self.launch(
            "scan_chunk_combine",
            (blocks(di * n, 256), n_entries as u32, 1),
            256,
            &mut a,
        )
    }

    pub fn scan_chunk_output(
        &self,
        s: &ScanArgs,
        meta: &BatchMeta,
        ssm_state: u64,
        s_in: u64,
        y: u64,
        n_chunks: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(*s)
            .push(meta.chunk_entry)
            .push(meta.chunk_t0)
            .push(meta.chunk_len)
            .push(meta.chunk_flags);
        a.push(meta.entry_slot).push(ssm_state).push(s_in).push(y);
        self.launch(
            "scan_chunk_output",
            (blocks(s.di as usize, 128), n_chunks as u32, 1),
            128,
            &mut a,
        )
    }

    pub fn ssm_decode(&self, s: &ScanArgs, meta: &BatchMeta, ssm_state: u64, y: u64, b: usize) -> Result<()> {
        let mut a = Args::new();
        a.push(*s).push(meta.entry_slot).push(ssm_state).push(y);
        self.launch(
            "ssm_decode",
            (blocks(s.di as usize, 128), b as u32, 1),
            128,
            &mut a,
        )
    }

    /// `ssm_decode` with dt_proj fused in: reads dt_low from `s.xdbl` and the bf16 dt_proj weight
    /// (`[NH, DH, R]`) instead of `s.dtr`. Needs [`ssm_decode_dt_fits`]`(R)`.
    pub fn ssm_decode_dt(
        &self,
        s: &ScanArgs,
        dt_proj: u64,
        meta: &BatchMeta,
        ssm_state: u64,
        y: u64,
        b: usize,
    ) -> Result<()> {
        if !ssm_decode_dt_fits(s.r as usize) {
            return Err(crate::error::ZambaError::InvalidInput(format!(
                "ssm_decode_dt needs dt_rank % 8 == 0 and ≤ 256, not {}",
                s.r
            )));
        }
        // DEC_WARPS channels and DEC_EB entries per block (csrc/scan.cu).
        let (warps, entries_per_block) = (8, 4);
        let mut a = Args::new();
        a.push(*s)
            .push(dt_proj)
            .push(meta.entry_slot)
            .push(i(b))
            .push(ssm_state)
            .push(y);
        let grid_x = blocks(s.dh as usize, warps) * s.nh as u32;
        self.launch(
            "ssm_decode_dt",
            (grid_x, blocks(b, entries_per_block), 1),
            (warps * 32) as u32,
            &mut a,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(
        &self,
        qkv: u64,
        ldqkv: usize,
        q_width: usize,
        meta: &BatchMeta,
        kc: u64,
        vc: u64,
        m: usize,
        nkv: usize,
        hd: usize,
        ctx: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(qkv)
            .push(i(ldqkv))
            .push(i(q_width))
            .push(meta.tok_entry)
            .push(meta.entry_start);
        a.push(meta.entry_past)
            .push(meta.entry_slot)
            .push(kc)
            .push(vc)
            .push(i(nkv))
            .push(i(hd))
            .push(i(ctx));
        self.launch("kv_append", (blocks(nkv * hd, 256), m as u32, 1), 256, &mut a)
    }

    /// Causal attention of one entry's `len` new queries (qkv rows `row0..row0 + len`, at
    /// positions `past..past + len` of cache slot `slot`) over its K/V cache, on the tensor cores
    /// with an online softmax (csrc/flash_attn.cu). Writes `out` rows `row0..` (row stride `ldo`),
    /// head h at columns h·HD. `dims` = (NA, NKV, HD, ctx); HD % 16 == 0 and HD ≤ [`FLASH_MAX_HD`].
    pub fn flash_attn_prefill(
        &self,
        qkv: u64,
        ldqkv: usize,
        row0: usize,
        kc: u64,
        vc: u64,
        out: u64,
        ldo: usize,
        len: usize,
        past: usize,
        slot: usize,
        dims: (usize, usize, usize, usize),
        scale: f32,
    ) -> Result<()> {
        let (na, nkv, hd, ctx) = dims;
        // The kernel copies 16-byte pieces of Q, K and V rows and stores bf16 pairs of O.
        let fits = hd % 16 == 0
            && hd <= FLASH_MAX_HD
            && nkv > 0
            && na % nkv == 0
            && ldqkv % 8 == 0
            && ldo % 2 == 0
            && [qkv, kc, vc].iter().all(|p| p % 16 == 0)
            && out % 4 == 0
            && past + len <= ctx;
        if !fits {
            return Err(ZambaError::Cuda {
                context: "launching flash_attn_prefill".into(),
                message: format!(
                    "unsupported geometry: NA {na}, NKV {nkv}, HD {hd}, ldqkv {ldqkv}, ldo {ldo}, \
                     past {past} + len {len} vs ctx {ctx}, or misaligned buffers"
                ),
            });
        }
        let mut a = Args::new();
        a.push(qkv)
            .push(i(ldqkv))
            .push(i(row0))
            .push(kc)
            .push(vc)
            .push(out)
            .push(i(ldo))
            .push(i(len));
        a.push(i(past))
            .push(i(slot))
            .push(i(na))
            .push(i(nkv))
            .push(i(hd))
            .push(i(ctx))
            .push(scale);
        // 64-key tiles when this GPU allows their shared memory, else 32-key tiles.
        let [big, small] = FLASH_PREFILL_KERNELS;
        let (name, bk) = if !self.flash_small_tiles && flash_smem_bytes(hd, big.1) <= self.smem_limit(big.0) {
            big
        } else {
            small
        };
        self.launch_smem(
            name,
            (na as u32, blocks(len, FLASH_BQ), 1),
            FLASH_THREADS,
            flash_smem_bytes(hd, bk) as u32,
            &mut a,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attn_decode(
        &self,
        qkv: u64,
        ldqkv: usize,
        kc: u64,
        vc: u64,
        meta: &BatchMeta,
        part_acc: u64,
        part_ml: u64,
        dims: (usize, usize, usize, usize),
        split_len: usize,
        n_splits: usize,
        b: usize,
        scale: f32,
    ) -> Result<()> {
        let (na, nkv, hd, ctx) = dims;
        let mut a = Args::new();
        a.push(qkv)
            .push(i(ldqkv))
            .push(kc)
            .push(vc)
            .push(meta.entry_slot)
            .push(meta.entry_seq_len);
        a.push(part_acc)
            .push(part_ml)
            .push(i(na))
            .push(i(nkv))
            .push(i(hd))
            .push(i(ctx))
            .push(i(split_len))
            .push(scale);
        self.launch("attn_decode", (na as u32, n_splits as u32, b as u32), 128, &mut a)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn attn_decode_combine(
        &self,
        part_acc: u64,
        part_ml: u64,
        out: u64,
        ldo: usize,
        na: usize,
        hd: usize,
        n_splits: usize,
        b: usize,
    ) -> Result<()> {
        let mut a = Args::new();
        a.push(part_acc)
            .push(part_ml)
            .push(out)
            .push(i(ldo))
            .push(i(na))
            .push(i(hd))
            .push(i(n_splits));
        self.launch("attn_decode_combine", (na as u32, b as u32, 1), 128, &mut a)
    }

    pub fn argmax_rows(&self, x: u64, out: u64, rows: usize, v: usize) -> Result<()> {
        let mut a = Args::new();
        a.push(x).push(out).push(i(v));
        self.launch("argmax_rows", (rows as u32, 1, 1), 1024, &mut a)
    }

    /// Fills `n` bf16 values with `offset + scale·U(-1, 1)` from a hash of (seed, index).
    pub fn fill_uniform_bf16(&self, x: u64, n: usize, seed: u64, offset: f32, scale: f32) -> Result<()> {
        let mut a = Args::new();
        a.push(x).push(n).push(seed).push(offset).push(scale);
        self.launch(
            "fill_uniform_bf16",
            (blocks(n, 256).min(65535 * 4), 1, 1),
            256,
            &mut a,
        )
    }

    /// The fp32 version of [`Gpu::fill_uniform_bf16`].
    pub fn fill_uniform_f32(&self, x: u64, n: usize, seed: u64, offset: f32, scale: f32) -> Result<()> {
        let mut a = Args::new();
        a.push(x).push(n).push(seed).push(offset).push(scale);
        self.launch(
            "fill_uniform_f32",
            (blocks(n, 256).min(65535 * 4), 1, 1),
            256,
            &mut a,
        )
    }

    /// Runs `g` with the skinny bandwidth-bound kernel (csrc/gemv.cu) when the routing
    /// ([`GemvMode`]) picks it and it fits: at most 8 rows (exactly 1 for `gemv_pipe`, which
    /// [`GemvMode::Pipe`] picks), a Linear weight (`[N, K]`), K and every stride a multiple of 8,
    /// 16-byte aligned x and W, alpha 1 and beta 0 or 1. Returns false (and does nothing)
    /// otherwise.
    pub fn gemv(&self, g: &Gemm) -> Result<bool> {
        let aligned = |addr: u64| addr % 16 == 0;
        let fits = g.m >= 1
            && g.m <= 8
            && g.w_rows_are_outputs
            && g.k % 8 == 0
            && g.ldw % 8 == 0
            && g.ldx % 8 == 0
            && g.stride_x % 8 == 0
            && g.stride_w % 8 == 0
            && aligned(g.x)
            && aligned(g.w)
            && g.alpha == 1.0
            && (g.beta == 0.0 || g.beta == 1.0);
        let wanted = match self.gemv_mode {
            GemvMode::Cublas => false,
            GemvMode::SingleRow => g.m == 1 && g.n * g.k * g.batch.max(1) * 2 < SMALL_GEMV_BYTES,
            GemvMode::UpTo8 => true,
            GemvMode::Pipe => {
                return if fits && g.m == 1 {
                    self.gemv_pipe(g)
                } else {
                    Ok(false)
                }
            }
        };
        if !fits || !wanted {
            return Ok(false);
        }
        let warps_per_block = 4; // GEMV_WARPS in csrc/gemv.cu
                                 // Warps per output row: enough that each warp's share of K is one round of 16 loads per
                                 // lane (512 chunks of 8), and more for short matrices so that every SM gets work.
        let chunks = g.k / 8;
        let rows = g.n * g.batch.max(1);
        let mut wpr = chunks.div_ceil(512).next_power_of_two().min(warps_per_block);
        while wpr < warps_per_block && rows * wpr < 132 * 16 && chunks / (2 * wpr) >= 64 {
            wpr *= 2;
        }
        let mut a = Args::new();
        a.push(g.x)
            .push(i(g.ldx))
            .push(g.stride_x as i64)
            .push(g.w)
            .push(i(g.ldw))
            .push(g.stride_w as i64)
            .push(g.y)
            .push(i(g.ldy))
            .push(g.stride_y as i64)
            .push(i(g.m))
            .push(i(g.n))
            .push(i(g.k))
            .push(i32::from(g.y_f32))
            .push(i32::from(g.beta == 1.0))
            .push(i(wpr));
        let grid = (blocks(g.n, warps_per_block / wpr), g.batch.max(1) as u32, 1);
        let name = if g.m == 1 { "gemv_m1" } else { "gemv_m8" };
        self.launch(name, grid, 32 * warps_per_block as u32, &mut a)?;
        Ok(true)
    }

    /// Runs single-row `g` (`g.m == 1`, and the conditions of [`Gpu::gemv`]) with the persistent
    /// pipelined kernel `gemv_pipe`: one block per SM, each owning whole rows of the batch-flattened
    /// output. Returns false (and does nothing) for shapes it does not take: no rows or no K, more
    /// than 2³¹ 16-byte chunks, or x rows that do not fit its shared memory.
    fn gemv_pipe(&self, g: &Gemm) -> Result<bool> {
        let batch = g.batch.max(1);
        let grid = self.sm_count.max(1);
        let (rows_cap, smem) = gemv_pipe_smem(g.n, g.k, batch, grid);
        let fits = g.m == 1
            && g.n > 0
            && g.k > 0
            && g.k % 8 == 0
            && g.n * batch * (g.k / 8) <= i32::MAX as usize
            && smem <= PIPE_MAX_SMEM;
        if !fits {
            return Ok(false);
        }
        let mut a = Args::new();
        a.push(g.x)
            .push(i(g.ldx))
            .push(g.stride_x as i64)
            .push(g.w)
            .push(i(g.ldw))
            .push(g.stride_w as i64)
            .push(g.y)
            .push(i(g.ldy))
            .push(g.stride_y as i64)
            .push(i(g.m))
            .push(i(g.n))
            .push(i(g.k))
            .push(i32::from(g.y_f32))
            .push(i32::from(g.beta == 1.0))
            .push(i(batch))
            .push(i(rows_cap));
        self.launch_smem(
            "gemv_pipe",
            (grid as u32, 1, 1),
            32 * PIPE_WARPS,
            smem as u32,
            &mut a,
        )?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared memory gemv_pipe asks for covers every block's rows and x rows (the kernel's
    /// split: block b owns rows [R·b/G, R·(b+1)/G)), and every decode shape fits under the cap.
    #[test]
    fn gemv_pipe_shared_memory_covers_every_block() {
        for (n, k, batch) in [
            (264, 3712, 2),
            (3712, 232, 2),
            (1000, 232, 1),
            (37, 8, 3),
            (5, 3712, 1),
            (100, 40, 3),
        ] {
            for grid in [1, 2, 3, 7, 108, 132, 200] {
                let (rows_cap, smem) = gemv_pipe_smem(n, k, batch, grid);
                let r = n * batch;
                for b in 0..grid {
                    let (r0, r1) = (r * b / grid, r * (b + 1) / grid);
                    if r1 == r0 {
                        continue;
                    }
                    assert!(r1 - r0 <= rows_cap);
                    let members = (r1 - 1) / n - r0 / n + 1;
                    assert!(
                        rows_cap.div_ceil(4) * 16 + members * k * 2 <= smem,
                        "{n}x{k}x{batch} grid {grid}"
                    );
                }
            }
        }
        for (n, k, batch) in [
            (14848, 3712, 1),
            (3712, 7424, 1),
            (264, 3712, 2),
            (3712, 232, 2),
            (22272, 7424, 1),
            (3712, 3712, 1),
            (29696, 3712, 1),
            (3712, 14848, 1),
            (32000, 3712, 1),
        ] {
            for sms in [108, 132] {
                assert!(
                    gemv_pipe_smem(n, k, batch, sms).1 <= PIPE_MAX_SMEM,
                    "{n}x{k}x{batch}"
                );
            }
        }
    }
}
