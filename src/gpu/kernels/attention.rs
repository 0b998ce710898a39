//! Launchers of the attention kernels: KV-cache append and flash-decoding (csrc/attention.cu), and
//! the flash prefill (csrc/flash_wgmma.cu on the H100/H200 at head_dim 464, else csrc/flash_attn.cu).

#![allow(clippy::too_many_arguments)]

use super::*;
use crate::gpu::device::{Args, FlashKernel, Gpu};

/// Widest head flash-decoding takes (MAX_HD in csrc/attention.cu).
const DECODE_MAX_HD: usize = 512;

/// Largest decode batch that runs the 8-warp `attn_decode_w8`.
const DECODE_W8_MAX_BATCH: usize = 4;

impl Gpu {
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
        // 8 elements per thread, 16-byte accesses (csrc/attention.cu).
        if hd % 8 != 0 || q_width % 8 != 0 || ldqkv % 8 != 0 || (qkv | kc | vc) % 16 != 0 {
            return Err(crate::error::ZambaError::InvalidInput(format!(
                "kv_append needs head_dim, q_width and ldqkv % 8 == 0 and 16-byte aligned buffers (head_dim {hd}, q_width {q_width}, ldqkv {ldqkv})"
            )));
        }
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
        self.launch("kv_append", (blocks(nkv * hd / 8, 256), m as u32, 1), 256, &mut a)
    }

    /// Causal attention of one entry's `len` new queries (qkv rows `row0..row0 + len`, at
    /// positions `past..past + len` of cache slot `slot`) over its K/V cache, on the tensor cores
    /// with an online softmax (csrc/flash_wgmma.cu or csrc/flash_attn.cu: see [`FlashKernel`]).
    /// Writes `out` rows `row0..` (row stride `ldo`), head h at columns h·HD.
    /// `dims` = (NA, NKV, HD, ctx); HD % 16 == 0 and HD ≤ [`FLASH_MAX_HD`].
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
        let [big, small] = FLASH_PREFILL_KERNELS;
        let wg_ok = self.sm90a && hd == FLASH_WG_HD && FLASH_WG_SMEM <= self.smem_limit(FLASH_WG_KERNEL);
        let big_ok = flash_smem_bytes(hd, big.1) <= self.smem_limit(big.0);
        let kernel = match self.flash {
            FlashKernel::Auto if wg_ok => FlashKernel::Wgmma,
            FlashKernel::Auto if big_ok => FlashKernel::Mma64,
            FlashKernel::Auto => FlashKernel::Mma32,
            FlashKernel::Wgmma if !wg_ok => {
                return Err(ZambaError::InvalidInput(format!(
                    "ZAMBA_FLASH=wgmma: the wgmma flash kernel needs compute capability 9.0 and head_dim \
                     {FLASH_WG_HD} (head_dim {hd})"
                )))
            }
            FlashKernel::Mma64 if !big_ok => {
                return Err(ZambaError::InvalidInput(format!(
                    "ZAMBA_FLASH=k64: {} bytes of shared memory per block do not fit this GPU",
                    flash_smem_bytes(hd, big.1)
                )))
            }
            k => k,
        };
        let mut a = Args::new();
        a.push(qkv)
            .push(i(ldqkv))
            .push(i(row0))
            .push(kc)
            .push(vc)
            .push(out)
            .push(i(ldo))
            .push(i(len));
        a.push(i(past)).push(i(slot)).push(i(na)).push(i(nkv));
        let grid = (na as u32, blocks(len, FLASH_BQ), 1);
        if kernel == FlashKernel::Wgmma {
            a.push(i(ctx)).push(scale);
            return self.launch_smem(FLASH_WG_KERNEL, grid, FLASH_THREADS, FLASH_WG_SMEM as u32, &mut a);
        }
        a.push(i(hd)).push(i(ctx)).push(scale);
        let (name, bk) = if kernel == FlashKernel::Mma64 { big } else { small };
        self.launch_smem(name, grid, FLASH_THREADS, flash_smem_bytes(hd, bk) as u32, &mut a)
    }

    /// Flash-decoding, both steps in one launch (csrc/attention.cu): partials into `s`, then the
    /// last split block of each (sequence, head) writes `out` (row stride `ldo`).
    pub fn attn_decode(
        &self,
        qkv: u64,
        ldqkv: usize,
        kc: u64,
        vc: u64,
        meta: &BatchMeta,
        s: &crate::gpu::attention::Scratch,
        out: u64,
        ldo: usize,
        dims: (usize, usize, usize, usize),
        n_splits: usize,
        b: usize,
        scale: f32,
    ) -> Result<()> {
        let (na, nkv, hd, ctx) = dims;
        // The combine's threads each take 4 columns of a head: HD / 4 must fit a block.
        if hd % 8 != 0 || hd > DECODE_MAX_HD || s.count % 4 != 0 {
            return Err(ZambaError::InvalidInput(format!(
                "flash-decoding needs head_dim % 8 == 0 and <= {DECODE_MAX_HD} (not {hd}) and an aligned count buffer"
            )));
        }
        let mut a = Args::new();
        a.push(qkv)
            .push(i(ldqkv))
            .push(kc)
            .push(vc)
            .push(meta.entry_slot)
            .push(meta.entry_seq_len);
        a.push(s.part_acc)
            .push(s.part_ml)
            .push(s.count)
            .push(out)
            .push(i(ldo))
            .push(i(na))
            .push(i(nkv))
            .push(i(hd))
            .push(i(ctx))
            .push(i(s.split_len))
            .push(scale);
        // A few sequences get 8 warps per block (a warp's keys take half the round trips); many
        // get 4 (H200, tg at context 512: batch 1 7.19–7.22 ms against 7.24–7.25; batch 64
        // 4,241 tokens/s against 4,263).
        let (name, threads) = if b <= DECODE_W8_MAX_BATCH && !self.decode_4_warps {
            ("attn_decode_w8", 256)
        } else {
            ("attn_decode", 128)
        };
        self.launch(name, (na as u32, n_splits as u32, b as u32), threads, &mut a)
    }
}
