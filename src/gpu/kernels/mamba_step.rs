//! The launcher of `mamba_step` (csrc/mamba_step.cu): the one-token Mamba mixer after in_proj
//! (conv1d update, x_proj, dt_proj, the state update, out_proj onto the residual) as one
//! persistent kernel, for decode at batch 1 on sm_90.

use super::{i, BatchMeta};
use crate::config::ZambaConfig;
use crate::error::{Result, ZambaError};
use crate::gpu::device::{Args, Gpu};

/// Threads per block, worker threads (all but the producer warp) and warps per x_proj row of
/// the kernel (MS_THREADS, MS_WORKERS, MS_XSEG).
const THREADS: usize = 1024;
const WORKERS: usize = THREADS - 32;
const XSEG: usize = 7;
/// out_proj rows in flight (MS_STAGES).
const STAGES: usize = 10;
/// The kernel's state width (MS_N) and widest conv (MS_MAX_K).
const D_STATE: usize = 16;
const MAX_CONV: usize = 8;
/// Residual values per worker thread of the fused RMSNorm (MS_NORM_HELD).
const NORM_HELD: usize = 8;

/// The widths the kernel is launched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepDims {
    /// d_inner (DI), Mamba head dim (DH), Mamba heads (NH), dt_rank (R), conv width (K), hidden
    /// size (H), and the SSM state width.
    pub di: usize,
    pub dh: usize,
    pub nh: usize,
    pub r: usize,
    pub k: usize,
    pub h: usize,
    pub d_state: usize,
}

impl StepDims {
    /// The widths of `cfg`'s Mamba layers.
    pub fn of(cfg: &ZambaConfig) -> Self {
        StepDims {
            di: cfg.d_inner(),
            dh: cfg.mamba_head_dim(),
            nh: cfg.n_mamba_heads,
            r: cfg.mamba_dt_rank,
            k: cfg.mamba_d_conv,
            h: cfg.hidden_size,
            d_state: cfg.mamba_d_state,
        }
    }
}

/// The buffers of one `mamba_step` launch (device addresses; shapes as in csrc/mamba_step.cu).
#[derive(Clone, Copy, Debug)]
pub struct MambaStepArgs {
    /// in_proj's output `[2·DI]` (x, then z).
    pub xz: u64,
    /// The conv states `[slots, K-1, DI]` (bf16), weight `[DI, K]` and bias `[DI]` (fp32).
    pub conv_state: u64,
    pub conv_w: u64,
    pub conv_b: u64,
    /// Scratch: the conv output `[DI]`, x_proj's output `[NH, XR]` and the mixer output `[DI]`.
    pub xc: u64,
    pub xdbl: u64,
    pub y: u64,
    /// Weights: x_proj `[NH, XR, DH]`, dt_proj `[DI, R]`, out_proj `[H, DI]` (bf16).
    pub x_proj: u64,
    pub dt_proj: u64,
    pub out_proj: u64,
    /// A `[DI, N]`, D `[DI]`, dt_bias `[DI]` (fp32); the SSM states `[slots, DI, N]` (fp32).
    pub a: u64,
    pub d: u64,
    pub dt_bias: u64,
    pub ssm_state: u64,
    /// The fp32 residual stream `[H]`, added to.
    pub h: u64,
    /// The 8-byte grid-barrier counter (zeroed once, then only used by launches of one grid).
    pub barrier: u64,
    /// The RMSNorm that follows, fused in: its weight `[H]` (bf16; 0 for none), its output `[H]`
    /// (bf16) and epsilon. The kernel's last block computes it over the updated residual.
    pub norm_w: u64,
    pub norm_out: u64,
    pub eps: f32,
}

/// The kernel's argument: mirrors `MambaStepArgs` in csrc/mamba_step.cu (field order and C
/// layout must match).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct KernelArgs {
    xz: u64,
    conv_state: u64,
    conv_w: u64,
    conv_b: u64,
    xc: u64,
    x_proj: u64,
    xdbl: u64,
    dt_proj: u64,
    a: u64,
    d: u64,
    dt_bias: u64,
    ssm_state: u64,
    y: u64,
    out_proj: u64,
    h: u64,
    entry_slot: u64,
    barrier: u64,
    norm_w: u64,
    norm_out: u64,
    di: i32,
    dh: i32,
    nh: i32,
    r: i32,
    k: i32,
    hsize: i32,
    eps: f32,
    pad: i32,
}

/// The dynamic shared memory of `mamba_step` over `grid` blocks: the ring of STAGES out_proj
/// rows, the block's x_proj rows and dt_proj rows (bf16), xc and xdbl staged, its conv outputs
/// (fp32, rounded up to 4), the x_proj and out_proj partial sums, and the mbarriers of the TMA
/// copies (x_proj, dt_proj, each ring row). The same carve-up as the kernel's.
pub fn mamba_step_smem(d: &StepDims, grid: usize) -> usize {
    let g = grid.max(1);
    let xrows = d.nh * (d.r + 2 * D_STATE);
    let (nch, nxr, nout) = (d.di.div_ceil(g), xrows.div_ceil(g), d.h.div_ceil(g));
    STAGES * d.di * 2
        + nxr * d.dh * 2
        + nch * d.r * 2
        + d.di * 2
        + xrows * 2
        + nch.next_multiple_of(4) * 4
        + nxr * XSEG * 4
        + nout * (THREADS / 32) * 4
        + (2 + STAGES) * 8
}

/// Whether `mamba_step` takes widths `d` over `grid` blocks with `smem_limit` bytes of shared
/// memory per block: DI, DH and R multiples of 8, R ≤ 256 and d_state 16 (the 16-lane state
/// update), K ≤ 8, at most 62 channels per block, DI ≤ 8·992 and H ≤ 8·992 (a channel's 16 lanes,
/// one out_proj chunk and 8 values of the fused norm per worker thread; the last warp issues the
/// TMA copies), DI ≥ 66 (the norm's scratch reuses the staged xc), and its shared memory within
/// the limit.
pub fn mamba_step_fits(d: &StepDims, grid: usize, smem_limit: usize) -> bool {
    grid > 0
        && d.di % 8 == 0
        && d.dh % 8 == 0
        && d.r % 8 == 0
        && d.r <= 256
        && d.d_state == D_STATE
        && (1..=MAX_CONV).contains(&d.k)
        && d.di.div_ceil(grid) <= WORKERS / 16
        && d.di / 8 <= WORKERS
        && d.h <= NORM_HELD * WORKERS
        && d.di * 2 >= (THREADS / 32 + 1) * 4
        && d.nh * d.dh == d.di
        && xrows_fit(d)
        && mamba_step_smem(d, grid) <= smem_limit
}

/// xdbl is staged in 16-byte chunks: NH·XR must be a multiple of 8 (it is when R is).
fn xrows_fit(d: &StepDims) -> bool {
    (d.nh * (d.r + 2 * D_STATE)) % 8 == 0
}

impl Gpu {
    /// Whether this GPU runs `mamba_step` (sm_90 and later) for widths `d`.
    pub fn mamba_step_runs(&self, d: &StepDims) -> bool {
        self.tma && mamba_step_fits(d, self.sm_count, self.smem_limit("mamba_step"))
    }

    /// Launches `mamba_step` for one sequence (entry 0 of `meta`) with the buffers of `args` and
    /// the widths `d`, over one block per SM. Fails with a clear error where the kernel does not
    /// apply or a buffer is misaligned.
    pub fn mamba_step(&self, args: &MambaStepArgs, d: &StepDims, meta: &BatchMeta) -> Result<()> {
        if !self.mamba_step_runs(d) {
            return Err(ZambaError::InvalidInput(format!(
                "mamba_step does not take these widths on this GPU: {d:?}"
            )));
        }
        // 16-byte loads and TMA copies of the weights, and 16-byte loads of xc, xdbl and y.
        let aligned = [
            args.xz,
            args.x_proj,
            args.dt_proj,
            args.out_proj,
            args.y,
            args.xc,
            args.xdbl,
        ]
        .iter()
        .all(|p| p % 16 == 0);
        if !aligned || args.barrier % 8 != 0 || (args.norm_w | args.norm_out) % 2 != 0 {
            return Err(ZambaError::InvalidInput(
                "mamba_step needs 16-byte aligned weights and activations".into(),
            ));
        }
        let full = KernelArgs {
            xz: args.xz,
            conv_state: args.conv_state,
            conv_w: args.conv_w,
            conv_b: args.conv_b,
            xc: args.xc,
            x_proj: args.x_proj,
            xdbl: args.xdbl,
            dt_proj: args.dt_proj,
            a: args.a,
            d: args.d,
            dt_bias: args.dt_bias,
            ssm_state: args.ssm_state,
            y: args.y,
            out_proj: args.out_proj,
            h: args.h,
            entry_slot: meta.entry_slot,
            barrier: args.barrier,
            norm_w: args.norm_w,
            norm_out: args.norm_out,
            di: i(d.di),
            dh: i(d.dh),
            nh: i(d.nh),
            r: i(d.r),
            k: i(d.k),
            hsize: i(d.h),
            eps: args.eps,
            pad: 0,
        };
        let mut a = Args::new();
        a.push(full);
        let smem = mamba_step_smem(d, self.sm_count);
        self.launch_smem(
            "mamba_step",
            (self.sm_count as u32, 1, 1),
            THREADS as u32,
            smem as u32,
            &mut a,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zamba7b() -> StepDims {
        StepDims {
            di: 7424,
            dh: 3712,
            nh: 2,
            r: 232,
            k: 4,
            h: 3712,
            d_state: 16,
        }
    }

    /// At the 7B widths on an H200 (132 SMs, 227 KB per block) the kernel fits; on fewer than
    /// 120 SMs a block would hold more than 62 channels; other widths it does not take.
    #[test]
    fn fits_at_the_7b_size() {
        let d = zamba7b();
        let limit = 227 << 10;
        assert!(mamba_step_fits(&d, 132, limit));
        assert!(mamba_step_smem(&d, 132) > 200 << 10);
        assert!(!mamba_step_fits(&d, 108, limit));
        assert!(!mamba_step_fits(&StepDims { r: 260, ..d }, 132, limit));
        assert!(!mamba_step_fits(&StepDims { d_state: 8, ..d }, 132, limit));
        assert!(!mamba_step_fits(&d, 132, 160 << 10));
    }

    /// KernelArgs is the C struct's size: 19 addresses and 8 ints or floats.
    #[test]
    fn args_layout() {
        assert_eq!(std::mem::size_of::<KernelArgs>(), 19 * 8 + 8 * 4);
    }
}
