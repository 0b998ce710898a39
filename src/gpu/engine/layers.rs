//! The layer graph of one forward: every Mamba layer, and the shared transformer block at the
//! hybrid ones, as kernel launches and cuBLAS GEMMs over the preallocated workspaces.

use super::GpuModel;
use crate::error::Result;
use crate::gpu::attention;
use crate::gpu::batch::Entry;
use crate::gpu::gemm::{self, Gemm};
use crate::gpu::kernels::{ssm_decode_dt_fits, MambaStepArgs, ScanArgs};

impl GpuModel {
    /// Runs `entries` (`m` tokens in all, already uploaded with `self.batch.upload`) through the
    /// layers and leaves the final hidden states in `ws.h`. Updates every state the entries
    /// touch. A decode step (one token per entry) passes `decode_splits`, the number of key
    /// splits of its attention; it then makes no host call but kernel and cuBLAS launches, so
    /// that it can be captured in a CUDA graph. Returns true when the final RMSNorm of `ws.h` is
    /// already in `ws.n` (the last layer's fused `mamba_step` computed it).
    pub(super) fn run_layers(
        &self,
        entries: &[Entry],
        m: usize,
        decode_splits: Option<usize>,
    ) -> Result<bool> {
        let decode = decode_splits.is_some();
        let (cfg, ws, w, g) = (&self.cfg, &self.ws, &self.w, &self.gpu);
        let meta = self.batch.meta;
        let (h, di, nh, dh) = (
            cfg.hidden_size,
            cfg.d_inner(),
            cfg.n_mamba_heads,
            cfg.mamba_head_dim(),
        );
        let (r, xr, k, eps) = (
            cfg.mamba_dt_rank,
            cfg.x_proj_rows(),
            cfg.mamba_d_conv,
            cfg.rms_norm_eps,
        );
        g.embed_gather(
            meta.tok_ids,
            w.embed,
            ws.e.ptr(),
            ws.h.ptr(),
            m,
            h,
            cfg.vocab_size,
        )?;
        let mut hybrid = 0;
        // ws.n already holds this layer's input norm (the fused mamba_step before computed it).
        let mut normed = false;
        for (i, lw) in w.layers.iter().enumerate() {
            if lw.linear != 0 {
                self.shared_block(hybrid, entries, m, decode_splits)?;
                let (ws, g) = (&self.ws, &self.gpu);
                gemm::run(
                    &self.gpu,
                    &self.blas,
                    &Gemm::linear(ws.t.ptr(), lw.linear, ws.tl.ptr(), m, h, h),
                )?;
                g.rmsnorm(
                    ws.h.ptr(),
                    true,
                    ws.tl.ptr(),
                    0,
                    0,
                    lw.ln,
                    ws.n.ptr(),
                    m,
                    h,
                    0,
                    eps,
                )?;
                hybrid += 1;
            } else if !normed {
                g.rmsnorm(ws.h.ptr(), true, 0, 0, 0, lw.ln, ws.n.ptr(), m, h, 0, eps)?;
            }
            normed = false;
            let (ws, g, blas) = (&self.ws, &self.gpu, &self.blas);
            // in_proj (rows permuted at load): xz = [x | z], each DI wide.
            gemm::run(
                g,
                blas,
                &Gemm::linear(ws.n.ptr(), lw.in_proj, ws.xz.ptr(), m, 2 * di, h),
            )?;
            let conv = self.states.conv_at(i);
            if let (true, 1, Some(dims)) = (decode, m, &self.step_dims) {
                // One sequence, one token: everything after in_proj in one kernel, and the norm
                // that follows where it is the plain one (before a Mamba layer, or the final
                // norm; a hybrid layer's norm is of concat(h, e)).
                let norm_w = match w.layers.get(i + 1) {
                    None => w.final_norm,
                    Some(next) if next.linear == 0 => next.ln,
                    Some(_) => 0,
                };
                let norm_w = if self.step_norm { norm_w } else { 0 };
                let args = MambaStepArgs {
                    xz: ws.xz.ptr(),
                    conv_state: conv,
                    conv_w: lw.conv_w,
                    conv_b: lw.conv_b,
                    xc: ws.xc.ptr(),
                    x_proj: lw.x_proj,
                    xdbl: ws.xdbl.ptr(),
                    dt_proj: lw.dt_proj,
                    a: lw.a,
                    d: lw.d,
                    dt_bias: lw.dt_bias,
                    ssm_state: self.states.ssm_at(i),
                    y: ws.y.ptr(),
                    out_proj: lw.out_proj,
                    h: ws.h.ptr(),
                    barrier: ws.grid_sync.ptr(),
                    norm_w,
                    norm_out: ws.n.ptr(),
                    eps,
                };
                g.mamba_step(&args, dims, &meta)?;
                normed = norm_w != 0;
                continue;
            }
            if decode {
                g.conv1d_update(
                    ws.xz.ptr(),
                    2 * di,
                    &meta,
                    conv,
                    lw.conv_w,
                    lw.conv_b,
                    ws.xc.ptr(),
                    m,
                    di,
                    k,
                )?;
            } else {
                g.conv1d_prefill(
                    ws.xz.ptr(),
                    2 * di,
                    &meta,
                    conv,
                    lw.conv_w,
                    lw.conv_b,
                    ws.xc.ptr(),
                    m,
                    di,
                    k,
                )?;
                g.conv_state_update(ws.xz.ptr(), 2 * di, &meta, conv, entries.len(), di, k)?;
            }
            // x_proj per head: xdbl[:, hh, :] = xc[:, hh·DH..] · x_proj[hh]ᵀ.
            gemm::run(
                g,
                blas,
                &Gemm {
                    ldx: di,
                    ldw: dh,
                    ldy: nh * xr,
                    batch: nh,
                    stride_x: dh,
                    stride_w: xr * dh,
                    stride_y: xr,
                    ..Gemm::linear(ws.xc.ptr(), lw.x_proj, ws.xdbl.ptr(), m, xr, dh)
                },
            )?;
            // dt_proj per head: dtr[:, hh·DH..] = dt_low[hh] · dt_proj[hh]ᵀ (bias added in the scan).
            // Small decode batches skip it: ssm_decode_dt computes dtr itself (larger ones are
            // faster through cuBLAS and ssm_decode; a tensor-core form of the fused kernel for them
            // measured slower, BENCHMARKS.md, thirteenth session).
            let fused_dt = decode && m <= 8 && ssm_decode_dt_fits(r);
            if !fused_dt {
                gemm::run(
                    g,
                    blas,
                    &Gemm {
                        ldx: nh * xr,
                        ldw: r,
                        ldy: di,
                        batch: nh,
                        stride_x: xr,
                        stride_w: dh * r,
                        stride_y: dh,
                        ..Gemm::linear(ws.xdbl.ptr(), lw.dt_proj, ws.dtr.ptr(), m, dh, r)
                    },
                )?;
            }
            let scan = ScanArgs {
                u: ws.xc.ptr(),
                dtr: ws.dtr.ptr(),
                z: ws.xz.at::<half::bf16>(di),
                ldz: (2 * di) as i32,
                _pad: 0,
                xdbl: ws.xdbl.ptr(),
                a: lw.a,
                d: lw.d,
                dt_bias: lw.dt_bias,
                di: di as i32,
                dh: dh as i32,
                nh: nh as i32,
                r: r as i32,
            };
            let ssm = self.states.ssm_at(i);
            if fused_dt {
                g.ssm_decode_dt(&scan, lw.dt_proj, &meta, ssm, ws.y.ptr(), m)?;
            } else if decode {
                g.ssm_decode(&scan, &meta, ssm, ws.y.ptr(), m)?;
            } else {
                g.scan_seq(&scan, &meta, ssm, ws.y.ptr(), entries.len())?;
            }
            // out_proj, added onto the fp32 residual stream: h = h + y · out_projᵀ.
            gemm::run(
                g,
                blas,
                &Gemm {
                    beta: 1.0,
                    y_f32: true,
                    ..Gemm::linear(ws.y.ptr(), lw.out_proj, ws.h.ptr(), m, h, di)
                },
            )?;
        }
        Ok(normed)
    }

    /// The shared transformer block for hybrid use `j`: reads ws.h and ws.e, writes ws.t.
    fn shared_block(
        &self,
        j: usize,
        entries: &[Entry],
        m: usize,
        decode_splits: Option<usize>,
    ) -> Result<()> {
        let (cfg, ws, sw, g, blas) = (&self.cfg, &self.ws, self.w.shared, &self.gpu, &self.blas);
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let (q, kvw, hd, nkv) = (
            cfg.q_width(),
            cfg.kv_width(),
            cfg.attention_head_dim,
            cfg.num_key_value_heads,
        );
        let ldqkv = q + 2 * kvw;
        let meta = self.batch.meta;
        // a = rms(concat(h, e)); qkv = a · [Wq; Wk; Wv]ᵀ.
        g.rmsnorm(
            ws.h.ptr(),
            true,
            0,
            ws.e.ptr(),
            0,
            sw.ln_in,
            ws.a.ptr(),
            m,
            h,
            h,
            eps,
        )?;
        gemm::run(
            g,
            blas,
            &Gemm::linear(ws.a.ptr(), sw.qkv, ws.qkv.ptr(), m, ldqkv, 2 * h),
        )?;
        let (kc, vc) = (self.states.k_at(j), self.states.v_at(j));
        g.kv_append(ws.qkv.ptr(), ldqkv, q, &meta, kc, vc, m, nkv, hd, self.ctx)?;
        let dims = attention::Dims::of(cfg, self.ctx);
        let scratch = attention::Scratch {
            part_acc: ws.part_acc.ptr(),
            part_ml: ws.part_ml.ptr(),
            split_len: ws.split_len,
            count: ws.attn_count.ptr(),
        };
        if let Some(n_splits) = decode_splits {
            attention::decode(
                g,
                &dims,
                ws.qkv.ptr(),
                kc,
                vc,
                &meta,
                &scratch,
                n_splits,
                m,
                ws.attn.ptr(),
            )?;
        } else {
            for e in entries {
                attention::prefill(g, &dims, ws.qkv.ptr(), e, kc, vc, ws.attn.ptr())?;
            }
        }
        let (ws, g, blas) = (&self.ws, &self.gpu, &self.blas);
        gemm::run(g, blas, &Gemm::linear(ws.attn.ptr(), sw.o, ws.o.ptr(), m, h, q))?;
        g.rmsnorm(ws.o.ptr(), false, 0, 0, 0, sw.ln_ff, ws.mo.ptr(), m, h, 0, eps)?;
        let f = cfg.intermediate_size;
        gemm::run(
            g,
            blas,
            &Gemm::linear(ws.mo.ptr(), sw.gate_up, ws.gu.ptr(), m, 2 * f, h),
        )?;
        g.gelu_mul(ws.gu.ptr(), ws.act.ptr(), m, f)?;
        gemm::run(g, blas, &Gemm::linear(ws.act.ptr(), sw.down, ws.t.ptr(), m, h, f))
    }
}
