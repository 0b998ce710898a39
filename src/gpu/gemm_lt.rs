//! The same row-major products as `gemm.rs`, through cuBLASLt with an explicit algorithm: a plan
//! holds the operation's descriptors for one shape and the algorithms cuBLASLt's heuristic offers
//! for it, so that a caller can time them and keep the fastest (cublasGemmEx picks one by
//! heuristic alone; at decode's few rows its pick is often a split-K GEMM plus a separate reduce).
//!
//! Layout mapping as in gemm.rs: row-major `Y = X · Wᵀ` is column-major `Yᵀ = W · Xᵀ`, so A = W
//! (op T, stored k × n with leading dimension ldw), B = X (op N, k × m, ldx), C = D = Y (n × m,
//! ldy), batched by strides.

use std::ffi::c_void;

use cudarc::cublaslt::{result as lt, sys as ls};

use super::device::Gpu;
use super::gemm::{check, cu_bind, Gemm};
use super::mem::DeviceBuf;
use crate::error::{Result, ZambaError};

/// Workspace bytes each cuBLASLt algorithm may use.
pub const LT_WORKSPACE: usize = 32 << 20;

/// A cuBLASLt handle and its workspace.
pub struct Lt {
    handle: ls::cublasLtHandle_t,
    workspace: DeviceBuf,
    /// The most workspace an algorithm may use (the workspace's size).
    workspace_bytes: usize,
}

/// One GEMM shape's descriptors and the algorithms the heuristic returned for it, best first.
pub struct LtPlan {
    desc: ls::cublasLtMatmulDesc_t,
    layouts: [ls::cublasLtMatrixLayout_t; 3],
    pub algos: Vec<ls::cublasLtMatmulHeuristicResult_t>,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created in `Lt::plan` and are destroyed exactly once.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// A cuBLASLt attribute value as the (pointer, size) pair the set-attribute calls take; the size
/// is the value's own, so it always matches the type passed.
fn attr<T>(v: &T) -> (*const c_void, usize) {
    (v as *const T as *const c_void, std::mem::size_of::<T>())
}

fn layout(
    dtype: ls::cudaDataType,
    rows: usize,
    cols: usize,
    ld: usize,
    batch: usize,
    stride: usize,
) -> Result<ls::cublasLtMatrixLayout_t> {
    let l = check(
        "creating a cuBLASLt layout",
        lt::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64),
    )?;
    if batch > 1 {
        use ls::cublasLtMatrixLayoutAttribute_t as A;
        // Named, so that the values live as long as the pointers taken to them.
        let (count, offset) = (batch as i32, stride as i64);
        let ((pc, nc), (po, no)) = (attr(&count), attr(&offset));
        // SAFETY: l is live; each value is the attribute's documented type (int32, int64) and
        // outlives the call.
        let set = unsafe {
            lt::set_matrix_layout_attribute(l, A::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, pc, nc).and_then(|()| {
                lt::set_matrix_layout_attribute(l, A::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, po, no)
            })
        };
        if let Err(e) = set {
            // SAFETY: l was created above and is not used again.
            let _ = unsafe { lt::destroy_matrix_layout(l) };
            return check("setting a cuBLASLt batch count and stride", Err(e));
        }
    }
    Ok(l)
}

impl Lt {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Self::with_workspace(gpu, LT_WORKSPACE)
    }

    /// A handle whose algorithms may use at most `workspace_bytes` of workspace (0: none).
    pub fn with_workspace(gpu: &Gpu, workspace_bytes: usize) -> Result<Self> {
        cu_bind(gpu)?;
        let handle = check("creating the cuBLASLt handle", lt::create_handle())?;
        let workspace = match DeviceBuf::new(workspace_bytes, "the cuBLASLt workspace") {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: the handle was created above and is not used again.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(e);
            }
        };
        Ok(Lt {
            handle,
            workspace,
            workspace_bytes,
        })
    }

    /// The descriptors of `g`'s shape and up to `max_algos` algorithms for it.
    pub fn plan(&self, g: &Gemm, max_algos: usize) -> Result<LtPlan> {
        self.plan_with(g, max_algos, None)
    }

    /// As `plan`, with the split-K reductions the heuristic may choose limited to
    /// `reduction_mask` (cublasLtReductionScheme_t bits: 1 in place, 2 in the compute type, 4 in
    /// the output type; 0: no split-K).
    pub fn plan_with(&self, g: &Gemm, max_algos: usize, reduction_mask: Option<u32>) -> Result<LtPlan> {
        let bf = ls::cudaDataType::CUDA_R_16BF;
        let yt = if g.y_f32 { ls::cudaDataType::CUDA_R_32F } else { bf };
        let desc = check(
            "creating a cuBLASLt matmul",
            lt::create_matmul_desc(
                ls::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                ls::cudaDataType::CUDA_R_32F,
            ),
        )?;
        // The plan owns what is created from here on (Drop destroys it on an early return).
        let mut plan = LtPlan {
            desc,
            layouts: [std::ptr::null_mut(); 3],
            algos: Vec::new(),
        };
        // CUBLAS_OP_T / CUBLAS_OP_N, as the attribute's type (cublasOperation_t, int32).
        let trans_a: i32 = if g.w_rows_are_outputs { 1 } else { 0 };
        let (pt, nt) = attr(&trans_a);
        // SAFETY: desc is live; the value is the attribute's type and outlives the call.
        unsafe {
            check(
                "setting cuBLASLt transa",
                lt::set_matmul_desc_attribute(
                    desc,
                    ls::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    pt,
                    nt,
                ),
            )?;
        }
        let (a_rows, a_cols) = if g.w_rows_are_outputs {
            (g.k, g.n)
        } else {
            (g.n, g.k)
        };
        plan.layouts[0] = layout(bf, a_rows, a_cols, g.ldw, g.batch, g.stride_w)?;
        plan.layouts[1] = layout(bf, g.k, g.m, g.ldx, g.batch, g.stride_x)?;
        plan.layouts[2] = layout(yt, g.n, g.m, g.ldy, g.batch, g.stride_y)?;
        let pref = check("creating a cuBLASLt preference", lt::create_matmul_pref())?;
        let ws = self.workspace_bytes as u64;
        let (pw, nw) = attr(&ws);
        let mut results = vec![
            ls::cublasLtMatmulHeuristicResult_t {
                algo: ls::cublasLtMatmulAlgo_t { data: [0; 8] },
                workspaceSize: 0,
                state: ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS,
                wavesCount: 0.0,
                reserved: [0; 4],
            };
            max_algos.max(1)
        ];
        let mut count = 0i32;
        // SAFETY: every descriptor is live; `results` holds max_algos entries, the count passed.
        let r = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                ls::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                pw,
                nw,
            );
            let set = match reduction_mask {
                Some(mask) => set.and_then(|()| {
                    let (pm, nm) = attr(&mask);
                    lt::set_matmul_pref_attribute(
                        pref,
                        ls::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                        pm,
                        nm,
                    )
                }),
                None => set,
            };
            let got = set.and_then(|()| {
                ls::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    desc,
                    plan.layouts[0],
                    plan.layouts[1],
                    plan.layouts[2],
                    plan.layouts[2],
                    pref,
                    results.len() as i32,
                    results.as_mut_ptr(),
                    &mut count,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(pref);
            got
        };
        check("asking cuBLASLt for algorithms", r)?;
        results.truncate(count.max(0) as usize);
        results.retain(|h| {
            h.state == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS && h.workspaceSize <= self.workspace_bytes
        });
        plan.algos = results;
        Ok(plan)
    }

    /// Enqueues `g` (whose shape `plan` was made for) with the plan's algorithm `which` on the
    /// engine's stream.
    pub fn run(&self, gpu: &Gpu, plan: &LtPlan, which: usize, g: &Gemm) -> Result<()> {
        let h = plan.algos.get(which).ok_or_else(|| {
            ZambaError::InvalidInput(format!("cuBLASLt algorithm {which} of {}", plan.algos.len()))
        })?;
        // SAFETY: the plan's descriptors are live and describe g's shape (the caller's contract);
        // the addresses are the engine's allocations sized for that shape; alpha and beta outlive
        // the (host-pointer) call; the workspace is workspace_bytes long, at least h.workspaceSize.
        let r = unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &g.alpha as *const f32 as *const c_void,
                &g.beta as *const f32 as *const c_void,
                g.w as *const c_void,
                plan.layouts[0],
                g.x as *const c_void,
                plan.layouts[1],
                g.y as *const c_void,
                plan.layouts[2],
                g.y as *mut c_void,
                plan.layouts[2],
                &h.algo,
                self.workspace.ptr() as *mut c_void,
                self.workspace_bytes,
                gpu.cu_stream() as ls::cudaStream_t,
            )
        };
        match r {
            Ok(()) => Ok(()),
            Err(_) => check(
                &format!("cuBLASLt GEMM {}x{}x{} (batch {})", g.m, g.n, g.k, g.batch),
                r,
            ),
        }
    }
}

/// An algorithm's configuration in words: tile id, split-K count, reduction scheme, stages id.
pub fn describe(h: &ls::cublasLtMatmulHeuristicResult_t) -> String {
    use ls::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr: A| -> u32 {
        let (mut v, mut written) = (0u32, 0usize);
        // SAFETY: algo is an initialised algorithm from the heuristic; the buffer is 4 bytes,
        // the size of these attributes (uint32 / int32).
        let r = unsafe {
            ls::cublasLtMatmulAlgoConfigGetAttribute(
                &h.algo,
                attr,
                &mut v as *mut u32 as *mut c_void,
                4,
                &mut written,
            )
        };
        if r == ls::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            v
        } else {
            u32::MAX
        }
    };
    format!(
        "tile {} splitK {} red {} stages {} ws {} KB waves {:.2}",
        get(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
        get(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        get(A::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        get(A::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        h.workspaceSize >> 10,
        h.wavesCount
    )
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created in new() and is destroyed exactly once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
