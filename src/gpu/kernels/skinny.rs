//! The tensor-core skinny GEMM (csrc/skinny.cu) for 1 to 64 rows, and its routing against cuBLAS.

use super::*;
use crate::gpu::device::SkinnyMode;
use crate::gpu::gemm::Gemm;

/// W rows per block, X rows at most, K per chunk, ring stages, padded row (SK_BN, SK_BM, SK_BK,
/// SK_STAGES, SK_LD in csrc/skinny.cu).
const BN: usize = 128;
const BM: usize = 64;
const BK: usize = 128;
const STAGES: usize = 4;
const LD: usize = 136;
/// The kernel's dynamic shared memory: the ring of (W 128 × 128, X 64 × 128) chunks with padded
/// rows, and the stages' mbarriers.
pub const SKINNY_SMEM: usize = STAGES * (BN + BM) * LD * 2 + 64;
/// One block's fp32 partial tile (split-K).
pub const SKINNY_TILE_BYTES: usize = BM * BN * 4;
/// N tiles the counters cover (N ≤ 128 · this).
pub const SKINNY_MAX_TILES: usize = 1024;

impl Gpu {
    /// Runs `g` with `skinny_gemm` when [`SkinnyMode`] picks it and it fits: a GPU with TMA, 1 to
    /// 64 rows (where `gemv` did not take them: it runs first), one (unbatched) Linear weight
    /// `[N, K]`, N and K multiples of 128, ldx and ldw of 8, 16-byte aligned X and W, alpha 1, and beta 0 (bf16 or fp32 Y) or 1 (fp32 Y). Returns
    /// false (and does nothing) otherwise. K is split over `sm_count / (N / 128)` blocks per N
    /// tile (at most 8, at most K / 128), so that the grid fills the GPU once.
    pub fn skinny(&self, g: &Gemm) -> Result<bool> {
        // The workspace exists where the GPU has TMA.
        let Some(ws) = &self.skinny_ws else {
            return Ok(false);
        };
        let fits = (1..=BM).contains(&g.m)
            && g.batch <= 1
            && g.w_rows_are_outputs
            && g.n % BN == 0
            && g.n / BN <= SKINNY_MAX_TILES
            && g.k % BK == 0
            && g.k > 0
            && g.ldx % 8 == 0
            && g.ldw % 8 == 0
            && g.ldx >= g.k
            && g.ldw >= g.k
            && g.ldy >= g.n
            && g.x % 16 == 0
            && g.w % 16 == 0
            && g.alpha == 1.0
            && (g.beta == 0.0 || (g.beta == 1.0 && g.y_f32));
        let wanted = match self.skinny_mode {
            SkinnyMode::Off => false,
            SkinnyMode::SmallN => g.n <= 4096,
            SkinnyMode::All => true,
        };
        if !fits || !wanted {
            return Ok(false);
        }
        let tiles = g.n / BN;
        // tiles · splits ≤ sm_count: the workspace holds one partial tile per SM.
        let splits = (self.sm_count / tiles).clamp(1, 8).min(g.k / BK);
        let mut a = Args::new();
        a.push(g.x)
            .push(i(g.ldx))
            .push(g.w)
            .push(i(g.ldw))
            .push(g.y)
            .push(i(g.ldy))
            .push(i(g.m))
            .push(i(g.k))
            .push(i32::from(g.y_f32))
            .push(i32::from(g.beta == 1.0))
            .push(ws.partials.ptr())
            .push(ws.counters.ptr());
        self.launch_smem(
            "skinny_gemm",
            (tiles as u32, splits as u32, 1),
            256,
            SKINNY_SMEM as u32,
            &mut a,
        )?;
        Ok(true)
    }
}
