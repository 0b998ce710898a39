//! The decode fast path: one token per sequence, captured once per batch size as a CUDA graph and
//! replayed, with no host allocation.

use cudarc::driver::CudaGraph;

use super::GpuModel;
use crate::error::Result;
use crate::gpu::batch::Entry;
use crate::gpu::gemm::{self, Gemm};
use crate::gpu::mem::cu;
use crate::model::{check_batch, SeqInput};

impl GpuModel {
    /// True when `batch` takes the decode fast path: one token per entry, and the step's logits
    /// fit the logits workspace in one piece.
    pub(super) fn is_decode_step(&self, batch: &[SeqInput]) -> bool {
        batch.len() <= self.ws.logit_rows
            && batch.len() <= self.opts.max_tokens
            && batch.iter().all(|s| s.tokens.len() == 1)
    }

    /// One decode step for a `batch` of b one-token entries (checked here against the model's
    /// limits, like every forward): the layers, the final norm, lm_head and the argmax. Leaves the
    /// logits in ws.logits rows 0..b and the tokens in ws.argmax. The work is a CUDA graph captured for batch size b on first use and replayed
    /// after the step's description is uploaded; the host side allocates nothing.
    pub(super) fn decode_step(&mut self, batch: &[SeqInput]) -> Result<()> {
        check_batch(&self.cfg, batch, self.opts.slots, self.ctx, |s| {
            self.states.len[s]
        })?;
        let b = batch.len();
        self.step_entries.clear();
        self.step_tokens.clear();
        for (i, s) in batch.iter().enumerate() {
            self.step_entries.push(Entry {
                slot: s.slot,
                start: i,
                len: 1,
                past: self.states.len[s.slot],
            });
            self.step_tokens.push(s.tokens[0]);
        }
        self.batch
            .upload(&self.gpu, &self.step_entries, &self.step_tokens)?;
        if self.use_graphs {
            if self.graphs[b - 1].is_none() {
                self.graphs[b - 1] = Some(self.capture_decode(b)?);
            }
            let graph = self.graphs[b - 1].as_ref().expect("captured above");
            cu("launching the decode graph", graph.launch())?;
        } else {
            let max_keys = self.step_entries.iter().map(|e| e.past + 1).max().unwrap_or(1);
            self.decode_kernels(b, max_keys.div_ceil(self.ws.split_len))?;
        }
        for e in &self.step_entries {
            self.states.len[e.slot] += 1;
        }
        Ok(())
    }

    /// The kernels of a decode step of `b` entries with `splits` attention key splits.
    fn decode_kernels(&self, b: usize, splits: usize) -> Result<()> {
        let (cfg, ws, g) = (&self.cfg, &self.ws, &self.gpu);
        let final_normed = self.run_layers(&self.step_entries[..b], b, Some(splits))?;
        if !final_normed {
            g.rmsnorm(
                ws.h.ptr(),
                true,
                0,
                0,
                0,
                self.w.final_norm,
                ws.n.ptr(),
                b,
                cfg.hidden_size,
                0,
                cfg.rms_norm_eps,
            )?;
        }
        gemm::run(
            g,
            &self.blas,
            &Gemm {
                y_f32: true,
                ..Gemm::linear(
                    ws.n.ptr(),
                    self.w.lm_head,
                    ws.logits.ptr(),
                    b,
                    cfg.vocab_size,
                    cfg.hidden_size,
                )
            },
        )?;
        g.argmax_rows(ws.logits.ptr(), ws.argmax.ptr(), b, cfg.vocab_size)
    }

    /// Diagnostic (used by `zamba-run bench`): replays the captured decode graph of the last
    /// `b`-entry step `n` times back to back, with no upload, readback or host wait between
    /// replays, and returns the seconds per replay: the GPU's own time for that step, without the
    /// host's part of the per-token loop (readback, upload, graph launch). `None` when no
    /// step of `b` entries has run through a graph yet (or graphs are off). The last decode
    /// step's description is uploaded again first (a prefill since then replaced it on the
    /// device), so every replay is that step, within the bounds checked when it ran. Each replay
    /// rewrites the same cache positions of that step's slots, so those slots are reset (emptied)
    /// afterwards.
    pub fn time_decode_replays(&mut self, b: usize, n: usize) -> Result<Option<f64>> {
        let captured = self.use_graphs && b >= 1 && self.step_entries.len() == b;
        let Some(Some(graph)) = self.graphs.get(b.wrapping_sub(1)).filter(|_| captured) else {
            return Ok(None);
        };
        self.batch
            .upload(&self.gpu, &self.step_entries, &self.step_tokens)?;
        self.gpu.sync()?;
        let t = std::time::Instant::now();
        for _ in 0..n {
            cu("launching the decode graph", graph.launch())?;
        }
        self.gpu.sync()?;
        let per_replay = t.elapsed().as_secs_f64() / n.max(1) as f64;
        for i in 0..b {
            let slot = self.step_entries[i].slot;
            self.states.reset(&self.gpu, slot)?;
        }
        self.gpu.sync()?;
        Ok(Some(per_replay))
    }

    /// Captures the decode step for `b` entries as a CUDA graph. Every address it uses is fixed
    /// for the model's life, and everything that changes between steps (tokens, slots, lengths)
    /// is read on the device from the batch description, so one capture serves every step of
    /// that batch size. The attention runs every key split of the context; splits past a
    /// sequence's length see no keys and cost an early exit.
    fn capture_decode(&self, b: usize) -> Result<CudaGraph> {
        let splits = self.ctx.div_ceil(self.ws.split_len);
        self.gpu
            .capture("capturing the decode step", || self.decode_kernels(b, splits))
    }
}
