//! The CUDA engine: the static layer graph over preallocated workspaces.
//!
//! A forward runs the tokens of all its sequences as one batch of M rows through every layer
//! (ZAMBA.md section 3): GEMMs on all rows at once, and the sequence-aware kernels (conv, scan,
//! attention) guided by the batch description. When every sequence brings exactly one token the
//! decode kernels run (conv update, one-step state update with dt_proj fused in, flash-decoding;
//! for one sequence on sm_90, `mamba_step` runs everything from the conv to out_proj in one kernel);
//! otherwise the prefill kernels run (conv, one-pass scan, flash attention per sequence),
//! continuing from each slot's state, so prefill, decode and chunked prefill are one code path.
//! Nothing is allocated after [`GpuModel::load`].
//!
//! This file holds the engine's state, loading and the general forward; `layers` the layer graph;
//! `decode` the CUDA-graph decode step.
//!
//! Numerics: bf16 weights and activations with fp32 accumulation, like HF's bf16 model, except
//! that the residual stream is kept in fp32 (each layer's output is added to it unrounded), the
//! SSM state is fp32, and the scan, softmax and norms compute in fp32.

mod decode;
mod layers;

use cudarc::driver::CudaGraph;

use super::batch::{BatchBuffers, Entry};
use super::cache::SlotStates;
use super::device::Gpu;
use super::gemm::{self, Blas, Gemm};
use super::kernels::{StepDims, FLASH_MAX_HD, SCAN_SEQ_CHANNELS};
use super::loader::{check_free, GpuWeights};
use super::workspace::Workspace;
use crate::config::ZambaConfig;
use crate::error::{Result, ZambaError};
use crate::model::{check_batch, check_out_len, check_slot, Logits, Model, SeqInput};
use crate::weights::Checkpoint;

/// Sizes the engine is built for.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Sequence slots (the largest decode batch).
    pub slots: usize,
    /// Context limit per sequence (None: the config's max_position_embeddings).
    pub max_context: Option<usize>,
    /// Most tokens in one forward; longer prompts are prefilled in pieces of this size.
    pub max_tokens: usize,
    /// CUDA device ordinal.
    pub device: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            slots: 1,
            max_context: None,
            max_tokens: 2048,
            device: 0,
        }
    }
}

/// Receives (batch index, row) pairs whose logits a round produced.
type Collect<'a> = dyn FnMut(&mut GpuModel, &[(usize, usize)]) -> Result<()> + 'a;

/// Zamba on one GPU.
pub struct GpuModel {
    // Field order is drop order: everything that owns device memory goes before `gpu`.
    /// Captured decode steps, by batch size − 1 (built on first use; see `decode_step`).
    graphs: Vec<Option<CudaGraph>>,
    /// Replay decode steps as CUDA graphs (default; `ZAMBA_GRAPH=0` launches them one by one).
    use_graphs: bool,
    /// The widths of the fused one-token Mamba mixer (`mamba_step`) where this GPU runs it for
    /// this config; a batch-1 decode step then uses it (`ZAMBA_FUSED_STEP=0` turns it off).
    step_dims: Option<StepDims>,
    /// `mamba_step` also computes the RMSNorm after it where that is a plain one
    /// (`ZAMBA_STEP_NORM=0` turns it off: the rmsnorm kernel runs instead).
    step_norm: bool,
    /// Host scratch for a decode step, sized at load so that the step allocates nothing.
    step_entries: Vec<Entry>,
    step_tokens: Vec<u32>,
    step_ids: Vec<i32>,
    ws: Workspace,
    batch: BatchBuffers,
    states: SlotStates,
    w: GpuWeights,
    blas: Blas,
    cfg: ZambaConfig,
    opts: GpuOptions,
    ctx: usize,
    gpu: Gpu,
}

impl GpuModel {
    /// Uploads a checkpoint and allocates everything for `opts`.
    pub fn load(ck: &Checkpoint, opts: GpuOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let cfg = ck.config().clone();
        check_supported(&cfg)?;
        let gpu = Gpu::new(opts.device)?;
        let w = GpuWeights::load(&gpu, ck, progress)?;
        Self::assemble(gpu, w, cfg, opts)
    }

    /// Random weights with `cfg`'s shapes, generated on the device (benchmarks, tests at 7B size).
    pub fn random(cfg: &ZambaConfig, opts: GpuOptions, seed: u64) -> Result<Self> {
        check_supported(cfg)?;
        let gpu = Gpu::new(opts.device)?;
        let w = GpuWeights::random(&gpu, cfg, seed)?;
        Self::assemble(gpu, w, cfg.clone(), opts)
    }

    fn assemble(gpu: Gpu, w: GpuWeights, cfg: ZambaConfig, opts: GpuOptions) -> Result<Self> {
        let ctx = opts.max_context.unwrap_or(cfg.max_position_embeddings);
        if opts.slots == 0 || opts.max_tokens == 0 || ctx == 0 {
            return Err(ZambaError::InvalidInput(
                "slots, max_tokens and the context must be positive".into(),
            ));
        }
        // Per-token kernels put the token on the grid's y axis (csrc: kv_append, gelu_mul).
        if opts.max_tokens > 65535 {
            return Err(ZambaError::InvalidInput(format!(
                "max_tokens {} is above the 65535 tokens one forward can take",
                opts.max_tokens
            )));
        }
        let need = SlotStates::bytes(&cfg, opts.slots, ctx)
            + Workspace::bytes(&cfg, opts.max_tokens, opts.slots, ctx);
        check_free(&gpu, need, "the caches and workspaces")?;
        let blas = Blas::new(&gpu)?;
        let states = SlotStates::new(&cfg, opts.slots, ctx)?;
        let batch = BatchBuffers::new(opts.max_tokens, opts.slots)?;
        let ws = Workspace::new(&cfg, opts.max_tokens, opts.slots, ctx)?;
        gpu.sync()?;
        let dims = StepDims::of(&cfg);
        let fused_on = std::env::var("ZAMBA_FUSED_STEP").map_or(true, |v| v != "0");
        let step_dims = (fused_on && gpu.mamba_step_runs(&dims)).then_some(dims);
        Ok(GpuModel {
            graphs: (0..opts.slots).map(|_| None).collect(),
            use_graphs: std::env::var("ZAMBA_GRAPH").map_or(true, |v| v != "0"),
            step_dims,
            step_norm: std::env::var("ZAMBA_STEP_NORM").map_or(true, |v| v != "0"),
            step_entries: Vec::with_capacity(opts.slots),
            step_tokens: Vec::with_capacity(opts.slots),
            step_ids: vec![0; opts.slots],
            ws,
            batch,
            states,
            w,
            blas,
            cfg,
            opts,
            ctx,
            gpu,
        })
    }

    /// The device, for benchmarks and tests that launch kernels directly.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Replays decode steps as CUDA graphs (`true`, the default unless `ZAMBA_GRAPH=0`) or
    /// launches their kernels one by one (for A/B tests and benchmarks).
    pub fn set_use_graphs(&mut self, on: bool) {
        self.use_graphs = on;
    }

    /// Bytes of device memory the engine allocated besides the weights: the caches, the
    /// workspaces, the batch description and the cuBLAS workspace (the CUDA context and the
    /// loaded kernels come on top).
    pub fn state_bytes(&self) -> usize {
        SlotStates::bytes(&self.cfg, self.opts.slots, self.ctx)
            + Workspace::bytes(&self.cfg, self.opts.max_tokens, self.opts.slots, self.ctx)
            + gemm::WORKSPACE
    }

    /// Bytes of device memory held by the weights.
    pub fn weight_bytes(&self) -> usize {
        self.w.bytes
    }

    /// Final norm of the chosen rows, then lm_head into ws.logits (fp32 `[rows, vocab]`).
    fn logits_rows(&mut self, rows: &[usize]) -> Result<()> {
        let rows_i32: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
        let (cfg, ws, g) = (&self.cfg, &self.ws, &self.gpu);
        g.htod(&rows_i32, ws.rows.ptr())?;
        g.rmsnorm(
            ws.h.ptr(),
            true,
            0,
            0,
            ws.rows.ptr(),
            self.w.final_norm,
            ws.n.ptr(),
            rows.len(),
            cfg.hidden_size,
            0,
            cfg.rms_norm_eps,
        )?;
        gemm::run(
            &self.gpu,
            &self.blas,
            &Gemm {
                y_f32: true,
                ..Gemm::linear(
                    ws.n.ptr(),
                    self.w.lm_head,
                    ws.logits.ptr(),
                    rows.len(),
                    cfg.vocab_size,
                    cfg.hidden_size,
                )
            },
        )?;
        // rows_i32 is pageable: the copy above completed before htod returned.
        g.sync()
    }

    /// Splits a batch into rounds of at most max_tokens tokens; each round is a list of
    /// (batch index, token range). A long prompt spans several rounds (chunked prefill).
    fn rounds(&self, batch: &[SeqInput]) -> Vec<Vec<(usize, std::ops::Range<usize>)>> {
        let cap = self.opts.max_tokens;
        let mut rounds = vec![Vec::new()];
        let mut used = 0;
        for (bi, s) in batch.iter().enumerate() {
            let mut from = 0;
            while from < s.tokens.len() {
                if used == cap {
                    rounds.push(Vec::new());
                    used = 0;
                }
                let take = (s.tokens.len() - from).min(cap - used);
                rounds
                    .last_mut()
                    .expect("non-empty")
                    .push((bi, from..from + take));
                used += take;
                from += take;
            }
        }
        rounds
    }

    /// The shared forward: runs every round, and for each one hands the rows whose logits are
    /// wanted to `collect(bi, rows)`.
    fn forward_rounds(&mut self, batch: &[SeqInput], want: Logits, collect: &mut Collect) -> Result<()> {
        check_batch(&self.cfg, batch, self.opts.slots, self.ctx, |s| {
            self.states.len[s]
        })?;
        for round in self.rounds(batch) {
            let mut entries = Vec::with_capacity(round.len());
            let mut tokens = Vec::with_capacity(self.opts.max_tokens);
            for (bi, range) in &round {
                let s = &batch[*bi];
                entries.push(Entry {
                    slot: s.slot,
                    start: tokens.len(),
                    len: range.len(),
                    past: self.states.len[s.slot],
                });
                tokens.extend_from_slice(&s.tokens[range.clone()]);
            }
            self.batch.upload(&self.gpu, &entries, &tokens)?;
            let decode_splits = entries.iter().all(|e| e.len == 1).then(|| {
                let max_keys = entries.iter().map(|e| e.past + 1).max().unwrap_or(1);
                max_keys.div_ceil(self.ws.split_len)
            });
            // (lm_head below takes its own norm of the rows it wants.)
            self.run_layers(&entries, tokens.len(), decode_splits)?;
            for e in &entries {
                self.states.len[e.slot] += e.len;
            }
            // (batch index, row) pairs whose logits this round produces.
            let mut rows = Vec::new();
            for ((bi, range), e) in round.iter().zip(&entries) {
                match want {
                    Logits::All => rows.extend((0..e.len).map(|j| (*bi, e.start + j))),
                    Logits::Last if range.end == batch[*bi].tokens.len() => {
                        rows.push((*bi, e.start + e.len - 1))
                    }
                    Logits::Last => {}
                }
            }
            // lm_head in pieces that fit the logits workspace.
            for piece in rows.chunks(self.ws.logit_rows) {
                collect(self, piece)?;
            }
            self.gpu.sync()?;
        }
        Ok(())
    }
}

/// Rejects configs the kernels were not built for.
fn check_supported(cfg: &ZambaConfig) -> Result<()> {
    let bad = |m: String| Err(ZambaError::UnsupportedConfig(m));
    if cfg.mamba_d_state != 16 {
        return bad(format!(
            "the CUDA scan is built for mamba_d_state 16, not {}",
            cfg.mamba_d_state
        ));
    }
    // (mamba_d_conv ≤ 8 = MAX_CONV in csrc/conv.cu is checked with the config.)
    let mhd = cfg.mamba_head_dim();
    if mhd % SCAN_SEQ_CHANNELS as usize != 0 || cfg.mamba_dt_rank % 2 != 0 {
        return bad(format!(
            "the CUDA scan needs a Mamba head dim (d_inner / n_mamba_heads) divisible by {SCAN_SEQ_CHANNELS} and an even mamba_dt_rank, not {mhd} and {}",
            cfg.mamba_dt_rank
        ));
    }
    if cfg.intermediate_size % 8 != 0 {
        return bad(format!(
            "the CUDA MLP needs intermediate_size % 8 == 0, not {}",
            cfg.intermediate_size
        ));
    }
    let hd = cfg.attention_head_dim;
    if hd % 16 != 0 || hd > FLASH_MAX_HD {
        return bad(format!(
            "the CUDA attention needs head_dim % 16 == 0 and ≤ {FLASH_MAX_HD}, not {hd}"
        ));
    }
    Ok(())
}

impl Model for GpuModel {
    fn config(&self) -> &ZambaConfig {
        &self.cfg
    }

    fn num_slots(&self) -> usize {
        self.opts.slots
    }

    fn max_context(&self) -> usize {
        self.ctx
    }

    fn seq_len(&self, slot: usize) -> usize {
        self.states.len.get(slot).copied().unwrap_or(0)
    }

    fn reset(&mut self, slot: usize) -> Result<()> {
        check_slot(slot, self.opts.slots)?;
        self.states.reset(&self.gpu, slot)
    }

    fn forward(&mut self, batch: &[SeqInput], logits: Logits) -> Result<Vec<Vec<f32>>> {
        let v = self.cfg.vocab_size;
        if self.is_decode_step(batch) {
            // One position per entry: Last and All are the same rows.
            let mut flat = vec![0f32; batch.len() * v];
            self.forward_last_into(batch, &mut flat)?;
            return Ok(flat.chunks(v).map(|c| c.to_vec()).collect());
        }
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); batch.len()];
        self.forward_rounds(batch, logits, &mut |me, piece| {
            let rows: Vec<usize> = piece.iter().map(|p| p.1).collect();
            me.logits_rows(&rows)?;
            let mut host = vec![0f32; rows.len() * v];
            me.gpu.dtoh(me.ws.logits.ptr(), &mut host)?;
            for (k, (bi, _)) in piece.iter().enumerate() {
                out[*bi].extend_from_slice(&host[k * v..(k + 1) * v]);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn forward_greedy(&mut self, batch: &[SeqInput]) -> Result<Vec<u32>> {
        let mut out = vec![0u32; batch.len()];
        self.forward_greedy_into(batch, &mut out)?;
        Ok(out)
    }

    fn forward_greedy_into(&mut self, batch: &[SeqInput], next: &mut [u32]) -> Result<()> {
        check_out_len("next", next.len(), batch.len())?;
        if self.is_decode_step(batch) {
            self.decode_step(batch)?;
            let ids = &mut self.step_ids[..batch.len()];
            self.gpu.dtoh(self.ws.argmax.ptr(), ids)?;
            for (n, &id) in next.iter_mut().zip(ids.iter()) {
                *n = id as u32;
            }
            return Ok(());
        }
        let v = self.cfg.vocab_size;
        self.forward_rounds(batch, Logits::Last, &mut |me, piece| {
            let rows: Vec<usize> = piece.iter().map(|p| p.1).collect();
            me.logits_rows(&rows)?;
            me.gpu
                .argmax_rows(me.ws.logits.ptr(), me.ws.argmax.ptr(), rows.len(), v)?;
            let mut ids = vec![0i32; rows.len()];
            me.gpu.dtoh(me.ws.argmax.ptr(), &mut ids)?;
            for (k, (bi, _)) in piece.iter().enumerate() {
                next[*bi] = ids[k] as u32;
            }
            Ok(())
        })
    }

    fn forward_last_into(&mut self, batch: &[SeqInput], out: &mut [f32]) -> Result<()> {
        let v = self.cfg.vocab_size;
        check_out_len("out", out.len(), batch.len() * v)?;
        if !self.is_decode_step(batch) {
            for (o, l) in out.chunks_mut(v).zip(self.forward(batch, Logits::Last)?) {
                o.copy_from_slice(&l);
            }
            return Ok(());
        }
        self.decode_step(batch)?;
        self.gpu.dtoh(self.ws.logits.ptr(), out)
    }
}
