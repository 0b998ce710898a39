//! Row-major GEMMs through cuBLAS (bf16 inputs, fp32 accumulation, bf16 or fp32 output).
//!
//! Everything in the engine is row-major; cuBLAS is column-major. A row-major `Y[M, N]` is the
//! column-major `Yᵀ[N, M]`, so `Y = X · Wᵀ` (the nn.Linear convention, W stored `[N, K]`) becomes
//! `Yᵀ = W · Xᵀ` with transa = T, transb = N, m = N, n = M; and `Y = X · W` (W stored `[K, N]`)
//! becomes transa = N.

use std::ffi::c_void;

use cudarc::cublas::{result as cublas, sys as cb};

use super::device::Gpu;
use super::gemm_nosplit::NoSplitK;
use super::mem::DeviceBuf;
use crate::error::{Result, ZambaError};

/// One (optionally batched) row-major product `Y = alpha · X · op(W) + beta · Y`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// Rows of X and Y.
    pub m: usize,
    /// Columns of Y.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    pub x: u64,
    pub ldx: usize,
    pub w: u64,
    pub ldw: usize,
    /// true: W is `[N, K]` and Y = X·Wᵀ (a Linear weight); false: W is `[K, N]` and Y = X·W.
    pub w_rows_are_outputs: bool,
    pub y: u64,
    pub ldy: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Y in fp32 (else bf16).
    pub y_f32: bool,
    pub batch: usize,
    /// Element strides between batch members.
    pub stride_x: usize,
    pub stride_w: usize,
    pub stride_y: usize,
}

impl Gemm {
    /// `Y[m, n] = X[m, k] · W[n, k]ᵀ` with dense rows: the common Linear case.
    pub fn linear(x: u64, w: u64, y: u64, m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            x,
            ldx: k,
            w,
            ldw: k,
            w_rows_are_outputs: true,
            y,
            ldy: n,
            alpha: 1.0,
            beta: 0.0,
            y_f32: false,
            batch: 1,
            stride_x: 0,
            stride_w: 0,
            stride_y: 0,
        }
    }
}

/// A cuBLAS handle bound to the engine's stream, with its own workspace (so that GEMMs can be
/// captured in a CUDA graph without cuBLAS allocating).
pub struct Blas {
    handle: cb::cublasHandle_t,
    _workspace: DeviceBuf,
    /// cuBLASLt without split-K for the decode shapes where it measured faster (gemm_nosplit.rs).
    no_split_k: Option<NoSplitK>,
}

/// cuBLAS workspace bytes.
pub const WORKSPACE: usize = 32 << 20;

/// A cuBLAS or cuBLASLt status as the engine's error, with what was being done.
pub(super) fn check<T, E: std::fmt::Debug>(what: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| ZambaError::Cuda {
        context: what.to_string(),
        message: format!("{e:?}"),
    })
}

impl Blas {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        cu_bind(gpu)?;
        let handle = cublas::create_handle().map_err(|e| ZambaError::Cuda {
            context: "creating the cuBLAS handle".into(),
            message: format!("{e:?}"),
        })?;
        let workspace = DeviceBuf::new(WORKSPACE, "the cuBLAS workspace")?;
        // SAFETY: handle is live; the stream belongs to the same context; the workspace outlives
        // the handle (both are dropped together, handle first — see Drop).
        unsafe {
            check(
                "cublasSetStream",
                cublas::set_stream(handle, gpu.cu_stream() as _),
            )?;
            check(
                "cublasSetWorkspace",
                cb::cublasSetWorkspace_v2(handle, workspace.ptr() as *mut c_void, WORKSPACE).result(),
            )?;
        }
        Ok(Blas {
            handle,
            _workspace: workspace,
            no_split_k: NoSplitK::new(gpu)?,
        })
    }

    /// Runs one (batched) GEMM on the engine's stream.
    pub fn gemm(&self, g: &Gemm) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let to_i = |v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| ZambaError::InvalidInput(format!("GEMM dimension {v} exceeds i32")))
        };
        let transa = if g.w_rows_are_outputs {
            cb::cublasOperation_t::CUBLAS_OP_T
        } else {
            cb::cublasOperation_t::CUBLAS_OP_N
        };
        let bf = cb::cudaDataType_t::CUDA_R_16BF;
        let ct = if g.y_f32 {
            cb::cudaDataType_t::CUDA_R_32F
        } else {
            bf
        };
        let (m, n, k) = (to_i(g.n)?, to_i(g.m)?, to_i(g.k)?);
        let (lda, ldb, ldc) = (to_i(g.ldw)?, to_i(g.ldx)?, to_i(g.ldy)?);
        let alpha = &g.alpha as *const f32 as *const c_void;
        let beta = &g.beta as *const f32 as *const c_void;
        let compute = cb::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        // SAFETY: the addresses come from the engine's own allocations, sized by the caller for
        // the shapes passed here; alpha and beta outlive the (host-pointer-mode) call.
        let r = unsafe {
            if g.batch <= 1 {
                cublas::gemm_ex(
                    self.handle,
                    transa,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    alpha,
                    g.w as *const c_void,
                    bf,
                    lda,
                    g.x as *const c_void,
                    bf,
                    ldb,
                    beta,
                    g.y as *mut c_void,
                    ct,
                    ldc,
                    compute,
                    algo,
                )
            } else {
                cublas::gemm_strided_batched_ex(
                    self.handle,
                    transa,
                    cb::cublasOperation_t::CUBLAS_OP_N,
                    m,
                    n,
                    k,
                    alpha,
                    g.w as *const c_void,
                    bf,
                    lda,
                    g.stride_w as i64,
                    g.x as *const c_void,
                    bf,
                    ldb,
                    g.stride_x as i64,
                    beta,
                    g.y as *mut c_void,
                    ct,
                    ldc,
                    g.stride_y as i64,
                    to_i(g.batch)?,
                    compute,
                    algo,
                )
            }
        };
        match r {
            Ok(()) => Ok(()),
            // The message is built only on failure: the decode step allocates nothing.
            Err(_) => check(
                &format!("cuBLAS GEMM {}x{}x{} (batch {})", g.m, g.n, g.k, g.batch),
                r,
            ),
        }
    }
}

pub(super) fn cu_bind(gpu: &Gpu) -> Result<()> {
    super::mem::cu("binding the context", gpu.ctx.bind_to_thread())
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created in new() and is destroyed exactly once.
        unsafe {
            let _ = cublas::destroy_handle(self.handle);
        }
    }
}

/// Runs `g` with the skinny-GEMM kernel (csrc/gemv.cu) when it applies (decode: at most 8 rows,
/// as [`crate::gpu::GemvMode`] picks), else through cuBLASLt without split-K where that route
/// takes the shape (9–96 rows, gemm_nosplit.rs), else cublasGemmEx.
pub fn run(gpu: &Gpu, blas: &Blas, g: &Gemm) -> Result<()> {
    if gpu.gemv(g)? {
        return Ok(());
    }
    if let Some(route) = &blas.no_split_k {
        if route.run(gpu, g)? {
            return Ok(());
        }
    }
    blas.gemm(g)
}
