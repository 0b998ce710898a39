//! `zamba-run bench --gemv-ab` and `--gemm-lt`: every decode GEMM shape of Zamba-7B timed alone,
//! next to the copy bandwidth measured in the same run. Each timing is 100 calls captured in one
//! CUDA graph (as the decode step runs them) and replayed, over enough rotating weight copies
//! (≥ 512 MB) that L2 never holds them.

use std::time::Instant;

use crate::bench::{measure_roofline, median, Roofline};
use crate::error::{Result, ZambaError};
use crate::gpu::gemm::{Blas, Gemm};
use crate::gpu::gemm_lt::{describe, Lt};
use crate::gpu::mem::DeviceBuf;
use crate::gpu::Gpu;

/// (name, N, K, batch, adds onto the fp32 residual): per-head x_proj and dt_proj run batched
/// over the 2 Mamba heads; out_proj accumulates into fp32 (beta 1) as in the engine.
const SHAPES: [(&str, usize, usize, usize, bool); 9] = [
    ("in_proj", 14848, 3712, 1, false),
    ("out_proj", 3712, 7424, 1, true),
    ("x_proj (2 heads)", 264, 3712, 2, false),
    ("dt_proj (2 heads)", 3712, 232, 2, false),
    ("qkv", 22272, 7424, 1, false),
    ("o_proj / linear", 3712, 3712, 1, false),
    ("gate_up", 29696, 3712, 1, false),
    ("down", 3712, 14848, 1, false),
    ("lm_head", 32000, 3712, 1, false),
];

/// One shape's buffers: rotating weight copies, X and Y.
struct ShapeBufs {
    ws: Vec<DeviceBuf>,
    x: DeviceBuf,
    y: DeviceBuf,
    bytes: usize,
}

impl ShapeBufs {
    fn new(gpu: &Gpu, m: usize, n: usize, k: usize, batch: usize) -> Result<Self> {
        let bytes = n * k * batch * 2;
        let copies = (512usize << 20).div_ceil(bytes).clamp(2, 64);
        let ws: Vec<DeviceBuf> = (0..copies)
            .map(|_| DeviceBuf::new(bytes, "the GEMM bench"))
            .collect::<Result<_>>()?;
        for (i, w) in ws.iter().enumerate() {
            gpu.fill_uniform_bf16(w.ptr(), bytes / 2, i as u64, -0.02, 0.02)?;
        }
        let x = DeviceBuf::new(m * k * batch * 2, "the GEMM bench")?;
        let y = DeviceBuf::new(m * n * batch * 4, "the GEMM bench")?;
        gpu.fill_uniform_bf16(x.ptr(), m * k * batch, 7, -1.0, 1.0)?;
        gpu.fill_uniform_bf16(y.ptr(), m * n * batch * 2, 8, -1.0, 1.0)?;
        Ok(ShapeBufs { ws, x, y, bytes })
    }

    /// The engine's GEMM of this shape on weight copy `c`.
    fn gemm(&self, c: usize, m: usize, (n, k, batch, residual): (usize, usize, usize, bool)) -> Gemm {
        Gemm {
            batch,
            ldx: k * batch,
            stride_x: k,
            stride_w: n * k,
            ldy: n * batch,
            stride_y: n,
            beta: if residual { 1.0 } else { 0.0 },
            y_f32: residual,
            ..Gemm::linear(
                self.x.ptr(),
                self.ws[c % self.ws.len()].ptr(),
                self.y.ptr(),
                m,
                n,
                k,
            )
        }
    }
}

/// Seconds per call of `launch(c)` for c in 0..100, captured in one graph and replayed (median
/// of 4 replays after a warm-up).
fn time_calls(gpu: &Gpu, launch: impl Fn(usize) -> Result<()>) -> Result<f64> {
    let calls = 100;
    let graph = gpu.capture("capturing the GEMM bench", || (0..calls).try_for_each(&launch))?;
    let mut t = Vec::new();
    for _ in 0..5 {
        gpu.sync()?;
        let s = Instant::now();
        crate::gpu::mem::cu("replaying the GEMM bench", graph.launch())?;
        gpu.sync()?;
        t.push(s.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(median(t[1..].to_vec()))
}

fn cell(time: f64, bytes: usize, roof: &Roofline) -> String {
    let pct = 100.0 * bytes as f64 / time / roof.copy_bytes_per_s;
    format!("{:.1} | {pct:.1}", time * 1e6)
}

/// The head of a per-shape table: the shape's three columns, then `cols` (right-aligned).
fn table_head(cols: &[&str]) {
    println!("| GEMM | N × K × batch | MB | {} |", cols.join(" | "));
    println!("| --- | ---: | ---: |{}", " ---: |".repeat(cols.len()));
}

fn header(gpu: &Gpu, roof: &Roofline, m: usize) {
    println!(
        "copy bandwidth (measured now): {:.2} TB/s; M = {m}; {} SMs",
        roof.copy_bytes_per_s / 1e12,
        gpu.sm_count
    );
}

/// Times each decode GEMM (M = `m` activation rows) through cuBLAS, through our skinny kernel
/// (`gemv_m1` / `gemv_m8`) and, for M = 1, through the persistent pipelined one (`gemv_pipe`).
/// Prints µs per call and the weight bytes per second as a percentage of the copy bandwidth; "—"
/// where a kernel does not take the shape.
pub fn gemv_ab(m: usize) -> Result<()> {
    use crate::gpu::GemvMode;
    if m > 8 {
        return Err(ZambaError::InvalidInput("--gemv-ab takes -b 1..=8".into()));
    }
    let mut gpu = Gpu::new(0)?;
    let roof = measure_roofline(&gpu)?;
    let blas = Blas::new(&gpu)?;
    header(&gpu, &roof, m);
    table_head(&[
        "cuBLAS µs",
        "cuBLAS % of copy",
        "ours µs",
        "ours % of copy",
        "pipe µs",
        "pipe % of copy",
    ]);
    for (name, n, k, batch, residual) in SHAPES {
        let b = ShapeBufs::new(&gpu, m, n, k, batch)?;
        let shape = (n, k, batch, residual);
        let mut cells = Vec::new();
        for mode in [GemvMode::Cublas, GemvMode::UpTo8, GemvMode::Pipe] {
            gpu.gemv_mode = mode;
            // One call outside the graph: a warm-up, and the check that the kernel takes the shape
            // (else the column would time cuBLAS again).
            if mode != GemvMode::Cublas && !gpu.gemv(&b.gemm(0, m, shape))? {
                cells.push("— | —".to_string());
                continue;
            }
            let t = time_calls(&gpu, |c| crate::gpu::gemm::run(&gpu, &blas, &b.gemm(c, m, shape)))?;
            cells.push(cell(t, b.bytes, &roof));
        }
        println!(
            "| {name} | {n} × {k} × {batch} | {:.1} | {} |",
            b.bytes as f64 / 1e6,
            cells.join(" | ")
        );
    }
    Ok(())
}

/// Times each decode GEMM (M = `m` activation rows) through cublasGemmEx (its heuristic's pick)
/// and through every algorithm cuBLASLt's heuristic returns for the shape (up to 24): the first
/// one (the heuristic's pick), the fastest, and how many there were; on stderr, each algorithm's
/// configuration.
pub fn gemm_lt(m: usize) -> Result<()> {
    let gpu = Gpu::new(0)?;
    let roof = measure_roofline(&gpu)?;
    let (blas, lt) = (Blas::new(&gpu)?, Lt::new(&gpu)?);
    header(&gpu, &roof, m);
    table_head(&[
        "GemmEx µs",
        "% of copy",
        "Lt first µs",
        "% of copy",
        "Lt best µs",
        "% of copy",
        "best of",
    ]);
    for (name, n, k, batch, residual) in SHAPES {
        let b = ShapeBufs::new(&gpu, m, n, k, batch)?;
        let shape = (n, k, batch, residual);
        let t_ex = time_calls(&gpu, |c| blas.gemm(&b.gemm(c, m, shape)))?;
        let plan = lt.plan(&b.gemm(0, m, shape), 24)?;
        let mut times = Vec::new();
        for i in 0..plan.algos.len() {
            // A warm-up outside the graph (an algorithm that fails here is skipped).
            if lt
                .run(&gpu, &plan, i, &b.gemm(0, m, shape))
                .and_then(|()| gpu.sync())
                .is_err()
            {
                continue;
            }
            times.push((
                i,
                time_calls(&gpu, |c| lt.run(&gpu, &plan, i, &b.gemm(c, m, shape)))?,
            ));
        }
        // The heuristic's first pick under each split-K reduction mask.
        for mask in [0u32, 1, 2, 4] {
            let p = lt.plan_with(&b.gemm(0, m, shape), 1, Some(mask))?;
            if p.algos.is_empty()
                || lt
                    .run(&gpu, &p, 0, &b.gemm(0, m, shape))
                    .and_then(|()| gpu.sync())
                    .is_err()
            {
                eprintln!("  {name}: mask {mask}: none");
                continue;
            }
            let t = time_calls(&gpu, |c| lt.run(&gpu, &p, 0, &b.gemm(c, m, shape)))?;
            eprintln!(
                "  {name}: mask {mask}: {:.1} us ({})",
                t * 1e6,
                describe(&p.algos[0])
            );
        }
        for &(i, t) in &times {
            eprintln!("  {name}: #{i}: {:.1} us ({})", t * 1e6, describe(&plan.algos[i]));
        }
        let first = times.iter().find(|t| t.0 == 0).map(|t| cell(t.1, b.bytes, &roof));
        let best = times.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        println!(
            "| {name} | {n} × {k} × {batch} | {:.1} | {} | {} | {} | #{} of {} |",
            b.bytes as f64 / 1e6,
            cell(t_ex, b.bytes, &roof),
            first.unwrap_or_else(|| "— | —".into()),
            best.map_or_else(|| "— | —".into(), |t| cell(t.1, b.bytes, &roof)),
            best.map_or(0, |t| t.0),
            plan.algos.len()
        );
    }
    Ok(())
}
