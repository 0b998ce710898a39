//! `zamba-run bench`: prefill and decode throughput, next to the roofline measured in the same
//! run (device-to-device copy bandwidth and a large bf16 GEMM's rate), as a llama-bench-style
//! table or JSON.

use std::time::Instant;

use clap::Args;

use crate::config::ZambaConfig;
use crate::error::{Result, ZambaError};
use crate::gpu::gemm::{Blas, Gemm};
use crate::gpu::mem::DeviceBuf;
use crate::gpu::{Gpu, GpuModel, GpuOptions};
use crate::model::{Model, SeqInput};
use crate::weights::Checkpoint;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A checkpoint folder; or use --random.
    #[arg(long, conflicts_with = "random")]
    pub model: Option<std::path::PathBuf>,
    /// Random weights with Zamba-7B-v1's shapes, made on the GPU.
    #[arg(long)]
    pub random: bool,
    /// Layers of the random model (default: all 76).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Prompt length.
    #[arg(short = 'p', long, default_value_t = 512)]
    pub prompt: usize,
    /// Decode steps.
    #[arg(short = 'n', long, default_value_t = 128)]
    pub gen: usize,
    /// Sequences per batch.
    #[arg(short = 'b', long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Most tokens per forward (longer prompts are prefilled in pieces); default: the whole
    /// batch's prompts, at most 8192.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Instead of the model bench: time every decode GEMM shape through cuBLAS, through
    /// csrc/gemv.cu's gemv_m1/gemv_m8 and (batch 1) its gemv_pipe (batch rows `-b`), next to the
    /// copy bandwidth.
    #[arg(long)]
    pub gemv_ab: bool,
    /// Instead of the model bench: time every decode GEMM shape (batch rows `-b`) through
    /// cublasGemmEx and through each algorithm cuBLASLt's heuristic offers for it.
    #[arg(long)]
    pub gemm_lt: bool,
}

/// Measured ceilings of this GPU.
#[derive(Clone, Copy, Debug)]
pub struct Roofline {
    /// Device-to-device copy, bytes read + written per second.
    pub copy_bytes_per_s: f64,
    /// bf16 GEMM (8192³, fp32 accumulate) FLOP per second.
    pub gemm_flops_per_s: f64,
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures copy bandwidth (2 GiB buffers) and the GEMM rate (8192³ on random bf16 data).
pub fn measure_roofline(gpu: &Gpu) -> Result<Roofline> {
    let bytes = 2usize << 30;
    let (a, b) = (DeviceBuf::new(bytes, "bench")?, DeviceBuf::new(bytes, "bench")?);
    gpu.fill_uniform_bf16(a.ptr(), bytes / 2, 1, 0.0, 1.0)?;
    let mut t = Vec::new();
    for _ in 0..6 {
        gpu.sync()?;
        let s = Instant::now();
        gpu.dtod(a.ptr(), b.ptr(), bytes)?;
        gpu.sync()?;
        t.push(s.elapsed().as_secs_f64());
    }
    let copy = 2.0 * bytes as f64 / median(t[1..].to_vec());
    drop((a, b));
    let n = 8192;
    let blas = Blas::new(gpu)?;
    let bufs: Vec<DeviceBuf> = (0..3)
        .map(|_| DeviceBuf::new(n * n * 2, "bench"))
        .collect::<Result<_>>()?;
    gpu.fill_uniform_bf16(bufs[0].ptr(), n * n, 2, 0.0, 1.0)?;
    gpu.fill_uniform_bf16(bufs[1].ptr(), n * n, 3, 0.0, 1.0)?;
    let g = Gemm::linear(bufs[0].ptr(), bufs[1].ptr(), bufs[2].ptr(), n, n, n);
    let mut t = Vec::new();
    for _ in 0..8 {
        gpu.sync()?;
        let s = Instant::now();
        blas.gemm(&g)?;
        gpu.sync()?;
        t.push(s.elapsed().as_secs_f64());
    }
    let flops = 2.0 * (n as f64).powi(3) / median(t[2..].to_vec());
    Ok(Roofline {
        copy_bytes_per_s: copy,
        gemm_flops_per_s: flops,
    })
}

/// Bytes of weights one decode step reads: every matrix once, the shared block at each hybrid
/// layer (ZAMBA.md 9.2), plus lm_head.
pub fn decode_weight_bytes(cfg: &ZambaConfig) -> f64 {
    let (h, di, f) = (
        cfg.hidden_size as f64,
        cfg.d_inner() as f64,
        cfg.intermediate_size as f64,
    );
    let (nh, xr, dh, r) = (
        cfg.n_mamba_heads as f64,
        cfg.x_proj_rows() as f64,
        cfg.mamba_head_dim() as f64,
        cfg.mamba_dt_rank as f64,
    );
    let mamba = 2.0 * di * h + nh * xr * dh + nh * dh * r + h * di;
    let (ah, q, kv) = (
        cfg.attention_hidden_size as f64,
        cfg.q_width() as f64,
        cfg.kv_width() as f64,
    );
    let shared = (q + 2.0 * kv) * ah + h * q + 3.0 * f * h;
    let j = cfg.hybrid_layers().len() as f64;
    2.0 * (cfg.num_hidden_layers as f64 * mamba + j * (shared + h * h) + cfg.vocab_size as f64 * h)
}

/// FLOPs of a prefill of `t` tokens (matrix products only, causal attention counted in full).
pub fn prefill_flops(cfg: &ZambaConfig, t: usize) -> f64 {
    let per_token = decode_weight_bytes(cfg); // 2 FLOP per weight, 2 bytes per weight
    let j = cfg.hybrid_layers().len() as f64;
    let attn = 4.0 * j * cfg.q_width() as f64 * (t as f64) * (t as f64) / 2.0;
    per_token * t as f64 + attn
}

/// One benchmark row.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub test: String,
    pub batch: usize,
    pub ms: f64,
    pub tokens_per_s: f64,
    pub roofline_pct: f64,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.prompt == 0 || a.batch == 0 || a.reps == 0 {
        return Err(ZambaError::InvalidInput(
            "prompt, batch and reps must be positive".into(),
        ));
    }
    if a.gemv_ab {
        return crate::bench_gemm::gemv_ab(a.batch);
    }
    if a.gemm_lt {
        return crate::bench_gemm::gemm_lt(a.batch);
    }
    let ctx = a.prompt + a.gen + 1;
    let opts = GpuOptions {
        slots: a.batch,
        max_context: Some(ctx),
        // Longer batched prompts are prefilled in rounds of at most 8192 tokens.
        max_tokens: a
            .max_tokens
            .unwrap_or((a.prompt * a.batch).clamp(a.batch, 8192.max(a.batch))),
        device: 0,
    };
    let t_load = Instant::now();
    let mut model = match (&a.model, a.random) {
        (Some(dir), _) => GpuModel::load(&Checkpoint::open(dir)?, opts, &mut |_, _| {})?,
        (None, true) => {
            let mut cfg = ZambaConfig::from_json_str(r#"{"model_type": "zamba"}"#)?;
            if let Some(l) = a.layers {
                cfg = ZambaConfig::from_json_str(&format!(
                    r#"{{"model_type": "zamba", "num_hidden_layers": {l}}}"#
                ))?;
            }
            cfg.max_position_embeddings = cfg.max_position_embeddings.max(ctx);
            GpuModel::random(&cfg, opts, 1)?
        }
        (None, false) => return Err(ZambaError::InvalidInput("give --model DIR or --random".into())),
    };
    let load_s = t_load.elapsed().as_secs_f64();
    let cfg = model.config().clone();
    let roof = measure_roofline(model.gpu())?;
    let (free, total) = model.gpu().mem_info()?;
    let prompts: Vec<Vec<u32>> = (0..a.batch)
        .map(|b| {
            (0..a.prompt)
                .map(|i| ((i * 7919 + b * 104729 + 3) % (cfg.vocab_size - 3) + 3) as u32)
                .collect()
        })
        .collect();
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for rep in 0..=a.reps {
        for s in 0..a.batch {
            model.reset(s)?;
        }
        let batch: Vec<SeqInput> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| SeqInput { slot: i, tokens: p })
            .collect();
        let t = Instant::now();
        let mut next = model.forward_greedy(&batch)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..a.gen {
            let steps: Vec<[u32; 1]> = next.iter().map(|&x| [x]).collect();
            let batch: Vec<SeqInput> = steps
                .iter()
                .enumerate()
                .map(|(i, x)| SeqInput { slot: i, tokens: x })
                .collect();
            model.forward_greedy_into(&batch, &mut next)?;
        }
        let decode = t.elapsed().as_secs_f64();
        if rep > 0 {
            // The first round warms up (module load, cuBLAS heuristics).
            pp.push(prefill);
            tg.push(decode / a.gen.max(1) as f64);
        }
    }
    let (pp_s, tg_s) = (median(pp), median(tg));
    // The GPU's own time for one step (that step's graph replayed back to back), next to the tg
    // loop's time per step. The loop's first few steps after its prefill run slower (on the H200
    // ~5-8 steps, 1-5%: the same steps run at full speed after a pause; BENCHMARKS.md), so the
    // difference shrinks with -n. Runs after the last round, so the slots' caches it overwrites
    // are not used again.
    let replay_s = if a.gen > 0 {
        model.time_decode_replays(a.batch, a.gen.max(16))?
    } else {
        None
    };
    let pp_tokens = (a.prompt * a.batch) as f64;
    let pp_flops = prefill_flops(&cfg, a.prompt) * a.batch as f64;
    let step_bytes = decode_weight_bytes(&cfg);
    let rows = vec![
        BenchRow {
            test: format!("pp{}", a.prompt),
            batch: a.batch,
            ms: pp_s * 1e3,
            tokens_per_s: pp_tokens / pp_s,
            roofline_pct: 100.0 * pp_flops / pp_s / roof.gemm_flops_per_s,
        },
        BenchRow {
            test: format!("tg{}", a.gen),
            batch: a.batch,
            ms: tg_s * 1e3,
            tokens_per_s: a.batch as f64 / tg_s,
            roofline_pct: 100.0 * step_bytes / tg_s / roof.copy_bytes_per_s,
        },
    ];
    if a.json {
        let j = serde_json::json!({
            "layers": cfg.num_hidden_layers,
            "load_s": load_s,
            "gpu_mem_used_gb": (total - free) as f64 / 1e9,
            "engine_state_gb": model.state_bytes() as f64 / 1e9,
            "weights_gb": model.weight_bytes() as f64 / 1e9,
            "copy_tb_s": roof.copy_bytes_per_s / 1e12,
            "gemm_tflop_s": roof.gemm_flops_per_s / 1e12,
            "decode_weight_gb": step_bytes / 1e9,
            "tg_graph_replay_ms": replay_s.map(|s| s * 1e3),
            "rows": rows.iter().map(|r| serde_json::json!({
                "test": r.test, "batch": r.batch, "ms": r.ms, "tokens_per_s": r.tokens_per_s, "roofline_pct": r.roofline_pct
            })).collect::<Vec<_>>(),
        });
        println!("{j}");
    } else {
        println!(
            "roofline (measured now): copy {:.2} TB/s, bf16 GEMM {:.0} TFLOP/s; decode reads {:.2} GB of weights/step; GPU memory used {:.2} GB (weights {:.2} GB, caches + workspaces {:.2} GB, loaded in {:.2} s)",
            roof.copy_bytes_per_s / 1e12,
            roof.gemm_flops_per_s / 1e12,
            step_bytes / 1e9,
            (total - free) as f64 / 1e9,
            model.weight_bytes() as f64 / 1e9,
            model.state_bytes() as f64 / 1e9,
            load_s
        );
        println!("| test | batch | ms | tokens/s | % of roofline |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        for r in &rows {
            let ms = if r.test.starts_with("tg") {
                format!("{:.3} /token", r.ms)
            } else {
                format!("{:.1}", r.ms)
            };
            println!(
                "| {} | {} | {ms} | {:.1} | {:.1} |",
                r.test, r.batch, r.tokens_per_s, r.roofline_pct
            );
        }
        if let Some(r) = replay_s {
            println!(
                "one decode step's graph replayed back to back: {:.3} ms/step; the tg loop took {:.1} µs more per step",
                r * 1e3,
                (tg_s - r) * 1e6
            );
        }
    }
    Ok(())
}
