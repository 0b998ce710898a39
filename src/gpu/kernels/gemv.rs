//! The skinny-GEMM launcher (csrc/gemv.cu) and its routing against cuBLAS.

#![allow(clippy::too_many_arguments)]

use super::*;
use crate::gpu::device::{Args, GemvMode, Gpu};
use crate::gpu::gemm::Gemm;

impl Gpu {
    /// Runs `g` with the skinny bandwidth-bound kernel (csrc/gemv.cu) when the routing
    /// ([`GemvMode`]) picks it and it fits: at most 8 rows (exactly 1 for `gemv_pipe`, which
    /// [`GemvMode::Pipe`] picks), a Linear weight (`[N, K]`), K and every stride a multiple of 8,
    /// 16-byte aligned x and W, alpha 1 and beta 0 or 1. Returns false (and does nothing)
    /// otherwise.
    pub fn gemv(&self, g: &Gemm) -> Result<bool> {
        let aligned = |addr: u64| addr % 16 == 0;
        let fits = g.m >= 1
            && g.m <= 8
            && g.w_rows_are_outputs
            && g.k % 8 == 0
            && g.ldw % 8 == 0
            && g.ldx % 8 == 0
            && g.stride_x % 8 == 0
            && g.stride_w % 8 == 0
            && aligned(g.x)
            && aligned(g.w)
            && g.alpha == 1.0
            && (g.beta == 0.0 || g.beta == 1.0);
        let wanted = match self.gemv_mode {
            GemvMode::Cublas => false,
            GemvMode::SingleRow => g.m == 1 && g.n * g.k * g.batch.max(1) * 2 < SMALL_GEMV_BYTES,
            GemvMode::UpTo8 => true,
            GemvMode::Pipe => {
                return if fits && g.m == 1 {
                    self.gemv_pipe(g)
                } else {
                    Ok(false)
                }
            }
        };
        if !fits || !wanted {
            return Ok(false);
        }
        // GEMV_WARPS in csrc/gemv.cu.
        let warps_per_block = 4;
        // Warps per output row: enough that each warp's share of K is one round of 16 loads per
        // lane (512 chunks of 8), and more for short matrices so that every SM gets ~16 warps.
        let chunks = g.k / 8;
        let rows = g.n * g.batch.max(1);
        let mut wpr = chunks.div_ceil(512).next_power_of_two().min(warps_per_block);
        while wpr < warps_per_block && rows * wpr < self.sm_count * 16 && chunks / (2 * wpr) >= 64 {
            wpr *= 2;
        }
        let mut a = gemv_args(g);
        a.push(i(wpr));
        let grid = (blocks(g.n, warps_per_block / wpr), g.batch.max(1) as u32, 1);
        let name = if g.m == 1 { "gemv_m1" } else { "gemv_m8" };
        self.launch(name, grid, 32 * warps_per_block as u32, &mut a)?;
        Ok(true)
    }

    /// Runs single-row `g` (the caller, [`Gpu::gemv`], has checked `g.m == 1` and its other
    /// conditions) with the persistent pipelined kernel `gemv_pipe`: one block per SM, each owning
    /// whole rows of the batch-flattened output. Returns false (and does nothing) for shapes it
    /// does not take: no rows or no K, more than 2³¹ 16-byte chunks, or x rows that do not fit its
    /// shared memory.
    fn gemv_pipe(&self, g: &Gemm) -> Result<bool> {
        let batch = g.batch.max(1);
        let grid = self.sm_count.max(1);
        let (rows_cap, smem) = gemv_pipe_smem(g.n, g.k, batch, grid);
        let fits =
            g.n > 0 && g.k > 0 && g.n * batch * (g.k / 8) <= i32::MAX as usize && smem <= PIPE_MAX_SMEM;
        if !fits {
            return Ok(false);
        }
        let mut a = gemv_args(g);
        a.push(i(batch)).push(i(rows_cap));
        self.launch_smem(
            "gemv_pipe",
            (grid as u32, 1, 1),
            32 * PIPE_WARPS,
            smem as u32,
            &mut a,
        )?;
        Ok(true)
    }
}

/// The arguments that gemv_m1, gemv_m8 and gemv_pipe share, in their order (csrc/gemv.cu); each
/// launcher appends its own.
fn gemv_args(g: &Gemm) -> Args {
    let mut a = Args::new();
    a.push(g.x)
        .push(i(g.ldx))
        .push(g.stride_x as i64)
        .push(g.w)
        .push(i(g.ldw))
        .push(g.stride_w as i64)
        .push(g.y)
        .push(i(g.ldy))
        .push(g.stride_y as i64)
        .push(i(g.m))
        .push(i(g.n))
        .push(i(g.k))
        .push(i32::from(g.y_f32))
        .push(i32::from(g.beta == 1.0));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared memory gemv_pipe asks for covers every block's rows and x rows (the kernel's
    /// split: block b owns rows [R·b/G, R·(b+1)/G)), and every decode shape fits under the cap.
    #[test]
    fn gemv_pipe_shared_memory_covers_every_block() {
        for (n, k, batch) in [
            (264, 3712, 2),
            (3712, 232, 2),
            (1000, 232, 1),
            (37, 8, 3),
            (5, 3712, 1),
            (100, 40, 3),
        ] {
            for grid in [1, 2, 3, 7, 108, 132, 200] {
                let (rows_cap, smem) = gemv_pipe_smem(n, k, batch, grid);
                let r = n * batch;
                for b in 0..grid {
                    let (r0, r1) = (r * b / grid, r * (b + 1) / grid);
                    if r1 == r0 {
                        continue;
                    }
                    assert!(r1 - r0 <= rows_cap);
                    let members = (r1 - 1) / n - r0 / n + 1;
                    assert!(
                        rows_cap.div_ceil(4) * 16 + members * k * 2 <= smem,
                        "{n}x{k}x{batch} grid {grid}"
                    );
                }
            }
        }
        for (n, k, batch) in [
            (14848, 3712, 1),
            (3712, 7424, 1),
            (264, 3712, 2),
            (3712, 232, 2),
            (22272, 7424, 1),
            (3712, 3712, 1),
            (29696, 3712, 1),
            (3712, 14848, 1),
            (32000, 3712, 1),
        ] {
            for sms in [108, 132] {
                assert!(
                    gemv_pipe_smem(n, k, batch, sms).1 <= PIPE_MAX_SMEM,
                    "{n}x{k}x{batch}"
                );
            }
        }
    }
}
