//! Typed launchers for the kernels in `csrc/`, one function per kernel. Each mirrors its kernel's
//! signature exactly; the math and launch shape of each are documented beside the kernel.
//! Device addresses are `u64`; sizes are passed as the kernels' `int`s. This file has the shared
//! types and the glue kernels' launchers; `mamba`, `mamba_step`, `attention` and `gemv` the
//! others.

#![allow(clippy::too_many_arguments)]

use super::device::{Args, Gpu};
use crate::error::{Result, ZambaError};

/// Mirrors `ScanArgs` in csrc/ssm_common.cuh (field order and C layout must match).
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
}

/// Queries per block and threads of flash_attn_prefill (FA_BQ and 32·FA_WARPS in
/// csrc/flash_attn.cu), and the largest head_dim it takes (FA_MAX_HD).
const FLASH_BQ: usize = 64;
const FLASH_THREADS: u32 = 256;
pub const FLASH_MAX_HD: usize = 512;

/// The mma.sync flash prefill kernels and their keys per tile: 64-key tiles where the GPU lets a
/// block have the shared memory, 32-key tiles otherwise (A100); [`Gpu::flash`] can force either.
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

/// The wgmma flash prefill (csrc/flash_wgmma.cu): sm_90a machine code only (compute capability
/// 9.0), for head_dim 464 only (the instruction shapes are built in), 256 threads per block.
pub const FLASH_WG_KERNEL: &str = "flash_attn_prefill_wg";
pub const FLASH_WG_HD: usize = 464;
/// Its dynamic shared memory (FW_SMEM): Q, K and V tiles of 64 × 464 bf16, each pair of warps' P
/// fragments (4 16-key steps × 32 lanes × 16 bytes), the row maxima and sums (16 fp32 per warp).
pub const FLASH_WG_SMEM: usize = 3 * 64 * FLASH_WG_HD * 2 + 4 * 4 * 32 * 16 + 2 * 4 * 2 * 16 * 4;

/// Channels per block of the prefill scan `scan_seq` (SEQ_CH in csrc/scan.cu); the Mamba head
/// dim must be a multiple of it (the engine checks).
pub const SCAN_SEQ_CHANNELS: u32 = 16;

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

mod attention;
mod gemv;
mod mamba;
mod mamba_step;

pub use mamba_step::{mamba_step_fits, mamba_step_smem, MambaStepArgs, StepDims};

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
        // One block per row. A few long rows (decode) get 1024 threads holding 8 values each, so
        // that one row is not a long serial loop; many rows (prefill) get the fewest threads that
        // hold the row at 16 values each (256 for 3712, 512 for the 7424-wide concat), so that
        // more rows run at once. Rows past what the block holds take the kernel's two-pass path.
        let d = d1 + d2;
        let (held, threads) = if d >= 2048 && n_rows <= 64 {
            (8, 1024)
        } else if d <= 16 * 256 {
            (16, 256)
        } else {
            (16, 512)
        };
        // The same held values in 4-value chunks where the layout allows (csrc/norm.cu,
        // rmsnorm_row_v4): 16-byte fp32 and 8-byte bf16 loads, fewer registers.
        let bf16_bits = add | b | w | out;
        let vec = (d1 | d2) % 4 == 0
            && bf16_bits % 8 == 0
            && x % (if x_f32 { 16 } else { 8 }) == 0
            && d <= held * threads as usize;
        let name = match (held, vec) {
            (8, false) => "rmsnorm",
            (8, true) => "rmsnorm_v4",
            (_, false) => "rmsnorm_h16",
            (_, true) => "rmsnorm_h16_v4",
        };
        self.launch(name, (n_rows as u32, 1, 1), threads, &mut a)
    }

    /// 8 elements per thread with 16-byte accesses: needs F % 8 == 0 and aligned buffers.
    pub fn gelu_mul(&self, gu: u64, out: u64, m: usize, f: usize) -> Result<()> {
        if f % 8 != 0 || (gu | out) % 16 != 0 {
            return Err(crate::error::ZambaError::InvalidInput(format!(
                "gelu_mul needs intermediate_size % 8 == 0 and 16-byte aligned buffers, not {f}"
            )));
        }
        let mut a = Args::new();
        a.push(gu).push(out).push(i(f));
        self.launch("gelu_mul", (blocks(f / 8, 256), m as u32, 1), 256, &mut a)
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
}
