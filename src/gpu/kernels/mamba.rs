//! Launchers of the Mamba kernels: causal conv1d (csrc/conv.cu) and the selective scan
//! (csrc/scan.cu: prefill; csrc/ssm_decode.cu: one token per sequence).

#![allow(clippy::too_many_arguments)]

use super::{blocks, i, ssm_decode_dt_fits, BatchMeta, ScanArgs, SCAN_SEQ_CHANNELS};
use crate::error::Result;
use crate::gpu::device::{Args, Gpu};

/// The layout conv1d_prefill and conv1d_update need (csrc/conv.cu: 8 channels per thread, in
/// 16-byte loads and stores): d_inner and ldx multiples of 8, every buffer 16-byte aligned (`addrs`
/// is their bitwise or) and 1 ≤ K ≤ 8.
fn check_conv_layout(kernel: &str, di: usize, ldx: usize, addrs: u64, k: usize) -> Result<()> {
    if di % 8 != 0 || ldx % 8 != 0 || addrs % 16 != 0 || !(1..=8).contains(&k) {
        return Err(crate::error::ZambaError::InvalidInput(format!(
            "{kernel} needs d_inner and ldx multiples of 8, 16-byte aligned xs, conv_state, out, \
             weights and bias, and 1 ≤ K ≤ 8; got d_inner {di}, ldx {ldx}, K {k}"
        )));
    }
    Ok(())
}

impl Gpu {
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
        check_conv_layout("conv1d_prefill", di, ldx, xs | conv_state | out | w | bias, k)?;
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
        // CONV_THREADS threads of 8 channels and CONV_ROWS rows each per block (csrc/conv.cu).
        let (threads, rows) = (64, 8);
        let kernel = if k <= 4 {
            "conv1d_prefill"
        } else {
            "conv1d_prefill_k8"
        };
        self.launch(
            kernel,
            (blocks(di / 8, threads), blocks(m, rows), 1),
            threads as u32,
            &mut a,
        )
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
        check_conv_layout("conv1d_update", di, ldx, xs | conv_state | out | w | bias, k)?;
        let mut a = Args::new();
        a.push(xs)
            .push(i(ldx))
            .push(meta.entry_slot)
            .push(conv_state)
            .push(w)
            .push(bias)
            .push(out);
        a.push(i(di)).push(i(k));
        // CONV_UPD_THREADS threads of 8 channels per block (csrc/conv.cu).
        let threads = 128;
        let kernel = if k <= 4 {
            "conv1d_update"
        } else {
            "conv1d_update_k8"
        };
        self.launch(
            kernel,
            (blocks(di / 8, threads), b as u32, 1),
            threads as u32,
            &mut a,
        )
    }

    /// The prefill scan (`scan_seq`): each entry's tokens in one pass from its slot's state, which
    /// it updates. Needs DH % 16 (SEQ_CH in csrc/scan.cu) == 0 and an even R.
    pub fn scan_seq(
        &self,
        s: &ScanArgs,
        meta: &BatchMeta,
        ssm_state: u64,
        y: u64,
        n_entries: usize,
    ) -> Result<()> {
        if s.dh % SCAN_SEQ_CHANNELS as i32 != 0 || s.r % 2 != 0 {
            return Err(crate::error::ZambaError::InvalidInput(format!(
                "the prefill scan needs a Mamba head dim divisible by {SCAN_SEQ_CHANNELS} and an even dt_rank, not {} and {}",
                s.dh, s.r
            )));
        }
        let mut a = Args::new();
        a.push(*s)
            .push(meta.entry_start)
            .push(meta.entry_len)
            .push(meta.entry_slot)
            .push(ssm_state)
            .push(y);
        self.launch(
            "scan_seq",
            (s.di as u32 / SCAN_SEQ_CHANNELS, n_entries as u32, 1),
            128,
            &mut a,
        )
    }

    pub fn ssm_decode(&self, s: &ScanArgs, meta: &BatchMeta, ssm_state: u64, y: u64, b: usize) -> Result<()> {
        let mut a = Args::new();
        a.push(*s).push(meta.entry_slot).push(ssm_state).push(y);
        // 2 lanes per channel, 128 channels per block (csrc/ssm_decode.cu).
        self.launch(
            "ssm_decode",
            (blocks(s.di as usize, 128), b as u32, 1),
            256,
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
        // DEC_WARPS channels and DEC_EB entries per block (csrc/ssm_decode.cu).
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
}
