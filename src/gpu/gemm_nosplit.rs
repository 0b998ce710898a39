//! Decode GEMMs of 9–96 rows through cuBLASLt with split-K ruled out, where that fills the GPU.
//!
//! At these few rows cublasGemmEx's heuristic often picks a split-K GEMM plus a separate reduce
//! kernel. Timed alone on the H200 (`zamba-run bench --gemm-lt -b M`, BENCHMARKS.md, thirteenth
//! session), cuBLASLt's own pick with split-K masked out is faster for out_proj (17–18 against
//! 20–21 µs at 20–64 rows) and o_proj / linear (~9.7 against ~12 µs at 9–32 rows), and about
//! equal for the other shapes, whenever that pick has at least half a wave of thread blocks. When
//! it has fewer (0.11 waves: a few blocks each streaming the whole K, e.g. out_proj at 9–16 and 32
//! rows, down at 16–96), it is ~10× slower; those shapes keep cublasGemmEx.
//!
//! The choice is made once per shape, from the heuristic alone (no timing), so it is the same in
//! every run on the same GPU and library and a shape always gets the same rounding. Plans are made
//! on the first GEMM of a shape (the first decode step at a batch size, before its CUDA graph is
//! replayed) and kept. `ZAMBA_GEMM_LT=0` turns the route off.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use super::device::Gpu;
use super::gemm::Gemm;
use super::gemm_lt::{Lt, LtPlan};
use crate::error::Result;

/// The rows this route takes (measured from 9 to 96).
const ROWS: std::ops::RangeInclusive<usize> = 9..=96;
/// The fewest waves of thread blocks a split-K-free pick needs to be taken.
const MIN_WAVES: f32 = 0.5;

/// Everything that defines a plan's descriptors (alpha and beta are passed per call).
type ShapeKey = (
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    bool,
    bool,
    usize,
    usize,
    usize,
    usize,
);

fn key(g: &Gemm) -> ShapeKey {
    (
        g.m,
        g.n,
        g.k,
        g.ldx,
        g.ldw,
        g.ldy,
        g.w_rows_are_outputs,
        g.y_f32,
        g.batch,
        g.stride_x,
        g.stride_w,
        g.stride_y,
    )
}

pub struct NoSplitK {
    /// Per shape: the plan whose first algorithm runs it, or None (cublasGemmEx runs it). Declared
    /// first, so that the plans are destroyed before the handle.
    plans: RefCell<HashMap<ShapeKey, Option<LtPlan>>>,
    lt: Lt,
}

impl NoSplitK {
    /// None when `ZAMBA_GEMM_LT=0`.
    pub fn new(gpu: &Gpu) -> Result<Option<Self>> {
        if std::env::var("ZAMBA_GEMM_LT").is_ok_and(|v| v == "0") {
            return Ok(None);
        }
        // The split-K-free algorithms it takes use no workspace.
        Ok(Some(NoSplitK {
            plans: RefCell::new(HashMap::new()),
            lt: Lt::with_workspace(gpu, 0)?,
        }))
    }

    /// Enqueues `g` and returns true if the route takes its shape; false: the caller runs it.
    pub fn run(&self, gpu: &Gpu, g: &Gemm) -> Result<bool> {
        if !ROWS.contains(&g.m) || g.n == 0 || g.k == 0 {
            return Ok(false);
        }
        let mut plans = self.plans.borrow_mut();
        let plan = match plans.entry(key(g)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // A shape cuBLASLt cannot plan (an error, or no algorithm) is left to
                // cublasGemmEx, which reports its own errors.
                let plan = self.lt.plan_with(g, 1, Some(0)).ok();
                let take = plan
                    .as_ref()
                    .and_then(|p| p.algos.first())
                    .is_some_and(|h| h.wavesCount >= MIN_WAVES);
                e.insert(plan.filter(|_| take))
            }
        };
        match plan {
            Some(plan) => self.lt.run(gpu, plan, 0, g).map(|()| true),
            None => Ok(false),
        }
    }
}
