//! Per-sequence state on the device, for a fixed number of slots: the conv and SSM state of every
//! Mamba layer, and one KV cache per hybrid layer (the 13 uses of the shared block each keep their
//! own keys and values).

use super::device::Gpu;
use super::mem::DeviceBuf;
use crate::config::ZambaConfig;
use crate::error::Result;

/// All slots' state. Layouts:
/// - conv: bf16 `[layer][slot][K-1][DI]`;
/// - ssm: fp32 `[layer][slot][DI][N]`;
/// - k, v: bf16 `[hybrid use][slot][NKV][ctx][HD]`.
pub struct SlotStates {
    pub conv: DeviceBuf,
    pub ssm: DeviceBuf,
    pub k: DeviceBuf,
    pub v: DeviceBuf,
    pub slots: usize,
    pub ctx: usize,
    conv_per_slot: usize,
    ssm_per_slot: usize,
    kv_per_slot: usize,
    layers: usize,
    /// Tokens held by each slot.
    pub len: Vec<usize>,
}

impl SlotStates {
    /// Bytes needed for `slots` sequences of up to `ctx` tokens.
    pub fn bytes(cfg: &ZambaConfig, slots: usize, ctx: usize) -> usize {
        let l = cfg.num_hidden_layers;
        let conv = l * slots * (cfg.mamba_d_conv - 1) * cfg.d_inner() * 2;
        let ssm = l * slots * cfg.d_inner() * cfg.mamba_d_state * 4;
        let kv = 2 * cfg.hybrid_layers().len() * slots * cfg.kv_width() * ctx * 2;
        conv + ssm + kv
    }

    pub fn new(cfg: &ZambaConfig, slots: usize, ctx: usize) -> Result<Self> {
        let l = cfg.num_hidden_layers;
        let j = cfg.hybrid_layers().len();
        let conv_per_slot = (cfg.mamba_d_conv - 1) * cfg.d_inner() * 2;
        let ssm_per_slot = cfg.d_inner() * cfg.mamba_d_state * 4;
        let kv_per_slot = cfg.kv_width() * ctx * 2;
        Ok(SlotStates {
            conv: DeviceBuf::zeroed(l * slots * conv_per_slot, "the conv states")?,
            ssm: DeviceBuf::zeroed(l * slots * ssm_per_slot, "the SSM states")?,
            k: DeviceBuf::new(j * slots * kv_per_slot, "the key cache")?,
            v: DeviceBuf::new(j * slots * kv_per_slot, "the value cache")?,
            slots,
            ctx,
            conv_per_slot,
            ssm_per_slot,
            kv_per_slot,
            layers: l,
            len: vec![0; slots],
        })
    }

    /// Conv state of layer `layer` for slot 0 (kernels add slot × per-slot size themselves).
    pub fn conv_at(&self, layer: usize) -> u64 {
        self.conv.ptr() + (layer * self.slots * self.conv_per_slot) as u64
    }

    pub fn ssm_at(&self, layer: usize) -> u64 {
        self.ssm.ptr() + (layer * self.slots * self.ssm_per_slot) as u64
    }

    pub fn k_at(&self, hybrid: usize) -> u64 {
        self.k.ptr() + (hybrid * self.slots * self.kv_per_slot) as u64
    }

    pub fn v_at(&self, hybrid: usize) -> u64 {
        self.v.ptr() + (hybrid * self.slots * self.kv_per_slot) as u64
    }

    /// Empties `slot`: zero conv and SSM state (the KV cache needs no clearing: only positions
    /// below the sequence length are ever read).
    pub fn reset(&mut self, gpu: &Gpu, slot: usize) -> Result<()> {
        for l in 0..self.layers {
            gpu.zero(
                self.conv_at(l) + (slot * self.conv_per_slot) as u64,
                self.conv_per_slot,
            )?;
            gpu.zero(
                self.ssm_at(l) + (slot * self.ssm_per_slot) as u64,
                self.ssm_per_slot,
            )?;
        }
        self.len[slot] = 0;
        Ok(())
    }
}
