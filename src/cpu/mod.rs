//! The fp32 CPU reference of Zamba: plain, readable, and the oracle for every GPU kernel.
//!
//! Weights stay in bf16 (the checkpoint's precision) and are widened to f32 as they are used; every
//! activation is f32. This reproduces HF transformers run in fp32 on the bf16 weights, which is how
//! the golden fixtures were made.

pub mod attention;
pub mod mamba;
pub mod ops;

use crate::config::{LayerKind, ZambaConfig};
use crate::error::Result;
use crate::model::{check_batch, check_slot, Logits, Model, SeqInput};
use crate::weights::{linear_name, mamba_names, shared_names, Checkpoint, EMBED, FINAL_NORM};
use attention::{AttnShape, KvCache, SharedWeights};
use mamba::{MambaState, MambaWeights};
use ops::{matmul, rmsnorm, Mat};

/// The whole model's weights plus a fixed set of sequence slots.
pub struct CpuModel {
    cfg: ZambaConfig,
    embed: Mat,
    /// `None` when lm_head is tied to the embedding.
    lm_head: Option<Mat>,
    final_norm: Vec<f32>,
    layers: Vec<MambaWeights>,
    /// The per-layer `linear` of hybrid layers (None for Mamba-only layers).
    linear: Vec<Option<Mat>>,
    shared: SharedWeights,
    slots: Vec<SeqState>,
    max_context: usize,
}

/// Everything one sequence carries between forwards.
#[derive(Clone, Debug)]
struct SeqState {
    len: usize,
    mamba: Vec<MambaState>,
    /// One cache per hybrid layer, in layer order.
    kv: Vec<KvCache>,
}

/// Hidden states of one forward, for comparison with HF's `output_hidden_states`.
pub struct Trace {
    /// `hidden[0]` is the embedding; `hidden[i]` the residual stream after layer i-1; the last
    /// entry is after the final norm (HF's convention). Each `[T, H]`.
    pub hidden: Vec<Vec<f32>>,
    /// `[T, vocab]`.
    pub logits: Vec<f32>,
}

fn mat(ck: &Checkpoint, name: &str, rows: usize, cols: usize) -> Result<Mat> {
    Ok(Mat::new(rows, cols, ck.get(name)?.to_bf16()?))
}

fn vecf(ck: &Checkpoint, name: &str) -> Result<Vec<f32>> {
    ck.get(name)?.to_f32()
}

/// Splits a `[heads, rows, cols]` tensor into one matrix per head.
fn per_head(ck: &Checkpoint, name: &str, heads: usize, rows: usize, cols: usize) -> Result<Vec<Mat>> {
    let all = ck.get(name)?.to_bf16()?;
    Ok(all
        .chunks_exact(rows * cols)
        .take(heads)
        .map(|c| Mat::new(rows, cols, c.to_vec()))
        .collect())
}

impl CpuModel {
    /// Loads every weight from a validated checkpoint. `max_context` defaults to the config's
    /// max_position_embeddings.
    pub fn load(ck: &Checkpoint, num_slots: usize, max_context: Option<usize>) -> Result<Self> {
        let cfg = ck.config().clone();
        let (h, di, nh, dh) = (
            cfg.hidden_size,
            cfg.d_inner(),
            cfg.n_mamba_heads,
            cfg.mamba_head_dim(),
        );
        let (r, xr) = (cfg.mamba_dt_rank, cfg.x_proj_rows());
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut linear = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = mamba_names(&cfg, i);
            let a_log = vecf(ck, &n.a_log)?;
            layers.push(MambaWeights {
                input_layernorm: vecf(ck, &n.input_layernorm)?,
                in_proj: mat(ck, &n.in_proj, 2 * di, h)?,
                conv_w: vecf(ck, &n.conv_weight)?,
                conv_b: vecf(ck, &n.conv_bias)?,
                x_proj: per_head(ck, &n.x_proj, nh, xr, dh)?,
                dt_proj: per_head(ck, &n.dt_proj, nh, dh, r)?,
                dt_bias: vecf(ck, &n.dt_bias)?,
                a: a_log.iter().map(|v| -v.exp()).collect(),
                d: vecf(ck, &n.d)?,
                out_proj: mat(ck, &n.out_proj, h, di)?,
            });
            linear.push(match cfg.layer_kinds[i] {
                LayerKind::Hybrid => Some(mat(ck, &linear_name(i), h, h)?),
                LayerKind::Mamba => None,
            });
        }
        let s = shared_names(ck.shared_layer());
        let (q, kv, ah, f) = (
            cfg.q_width(),
            cfg.kv_width(),
            cfg.attention_hidden_size,
            cfg.intermediate_size,
        );
        let shared = SharedWeights {
            input_layernorm: vecf(ck, &s.input_layernorm)?,
            q_proj: mat(ck, &s.q_proj, q, ah)?,
            k_proj: mat(ck, &s.k_proj, kv, ah)?,
            v_proj: mat(ck, &s.v_proj, kv, ah)?,
            o_proj: mat(ck, &s.o_proj, h, q)?,
            pre_ff_layernorm: vecf(ck, &s.pre_ff_layernorm)?,
            gate_proj: mat(ck, &s.gate_proj, f, h)?,
            up_proj: mat(ck, &s.up_proj, f, h)?,
            down_proj: mat(ck, &s.down_proj, h, f)?,
        };
        let lm_head = match ck.lm_head_name() {
            EMBED => None,
            name => Some(mat(ck, name, cfg.vocab_size, h)?),
        };
        let max_context = max_context.unwrap_or(cfg.max_position_embeddings);
        let mut model = CpuModel {
            embed: mat(ck, EMBED, cfg.vocab_size, h)?,
            lm_head,
            final_norm: vecf(ck, FINAL_NORM)?,
            layers,
            linear,
            shared,
            slots: Vec::new(),
            max_context,
            cfg,
        };
        model.slots = vec![model.empty_state(); num_slots];
        Ok(model)
    }

    fn empty_state(&self) -> SeqState {
        let c = &self.cfg;
        SeqState {
            len: 0,
            mamba: vec![MambaState::zeros(c.d_inner(), c.mamba_d_conv, c.mamba_d_state); c.num_hidden_layers],
            kv: vec![KvCache::default(); c.hybrid_layers().len()],
        }
    }

    fn attn_shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.cfg.num_attention_heads,
            n_kv: self.cfg.num_key_value_heads,
            head_dim: self.cfg.attention_head_dim,
            scale: self.cfg.attention_scale(),
            eps: self.cfg.rms_norm_eps,
        }
    }

    /// One sequence's forward over `tokens`, continuing from `slot`'s state, keeping every
    /// intermediate hidden state. Token ids must already be checked.
    pub fn forward_traced(&mut self, slot: usize, tokens: &[u32]) -> Result<Trace> {
        check_batch(
            &self.cfg,
            &[SeqInput { slot, tokens }],
            self.slots.len(),
            self.max_context,
            |s| self.slots[s].len,
        )?;
        Ok(self.run(slot, tokens, true, Logits::All))
    }

    /// The forward of one checked sequence. Keeps the per-layer hidden states only when `trace`
    /// asks for them, and runs lm_head on the last position only for [`Logits::Last`].
    fn run(&mut self, slot: usize, tokens: &[u32], trace: bool, want: Logits) -> Trace {
        let cfg = &self.cfg;
        let (hs, t_len, eps) = (cfg.hidden_size, tokens.len(), cfg.rms_norm_eps);
        let shape = self.attn_shape();
        let state = &mut self.slots[slot];
        let e: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| self.embed.row_f32(t as usize))
            .collect();
        let mut h = e.clone();
        let mut hidden = Vec::new();
        if trace {
            hidden.push(h.clone());
        }
        let mut hybrid_idx = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = match &self.linear[i] {
                Some(lin) => {
                    let t = self
                        .shared
                        .forward(&h, &e, t_len, shape, &mut state.kv[hybrid_idx]);
                    hybrid_idx += 1;
                    let t = matmul(&t, t_len, lin);
                    let u: Vec<f32> = h.iter().zip(&t).map(|(a, b)| a + b).collect();
                    rmsnorm(&u, &layer.input_layernorm, eps)
                }
                None => rmsnorm(&h, &layer.input_layernorm, eps),
            };
            let out = layer.forward(
                &normed,
                t_len,
                cfg.n_mamba_heads,
                cfg.mamba_d_state,
                &mut state.mamba[i],
            );
            for (a, b) in h.iter_mut().zip(&out) {
                *a += b;
            }
            if trace {
                hidden.push(h.clone());
            }
        }
        state.len += t_len;
        let normed = rmsnorm(&h, &self.final_norm, eps);
        if trace {
            // HF's last hidden state is the normed one, in place of the last layer's raw output.
            *hidden.last_mut().expect("at least one layer") = normed.clone();
        }
        let rows = match want {
            Logits::All => &normed[..],
            Logits::Last => &normed[(t_len - 1) * hs..],
        };
        let logits = matmul(
            rows,
            rows.len() / hs,
            self.lm_head.as_ref().unwrap_or(&self.embed),
        );
        Trace { hidden, logits }
    }
}

impl Model for CpuModel {
    fn config(&self) -> &ZambaConfig {
        &self.cfg
    }

    fn num_slots(&self) -> usize {
        self.slots.len()
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn seq_len(&self, slot: usize) -> usize {
        self.slots.get(slot).map_or(0, |s| s.len)
    }

    fn reset(&mut self, slot: usize) -> Result<()> {
        check_slot(slot, self.slots.len())?;
        self.slots[slot] = self.empty_state();
        Ok(())
    }

    fn forward(&mut self, batch: &[SeqInput], logits: Logits) -> Result<Vec<Vec<f32>>> {
        check_batch(&self.cfg, batch, self.slots.len(), self.max_context, |s| {
            self.slots[s].len
        })?;
        Ok(batch
            .iter()
            .map(|s| self.run(s.slot, s.tokens, false, logits).logits)
            .collect())
    }
}
