//! The CUDA device: context, the one stream everything runs on, the embedded kernel module, and
//! the launch and copy primitives that the rest of the engine uses.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaGraph, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::kernels::{flash_smem_bytes, FLASH_MAX_HD, FLASH_PREFILL_KERNELS, FLASH_WG_KERNEL, FLASH_WG_SMEM};
use super::mem::cu;
use crate::error::{Result, ZambaError};

/// The kernels of `csrc/`, compiled by build.rs (empty when the crate was built without nvcc).
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zamba.fatbin"));

/// Why the GPU cannot be used on this machine, or None when it can. Never panics: it checks for
/// the driver library before calling into it (cudarc panics when libcuda is missing).
pub fn unavailable_reason() -> Option<String> {
    if FATBIN.is_empty() {
        return Some(
            "this build has no CUDA kernels (nvcc was not found when it was compiled; see README.md)".into(),
        );
    }
    // SAFETY: is_culib_present only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return Some("no NVIDIA driver (libcuda.so) on this machine".into());
    }
    // SAFETY: as above, for cuBLAS.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some("no cuBLAS library (libcublas.so) on this machine".into());
    }
    if let Err(e) = result::init() {
        return Some(format!("the CUDA driver failed to initialise: {e:?}"));
    }
    match result::device::get_count() {
        Ok(0) => Some("no CUDA device".into()),
        Ok(_) => None,
        Err(e) => Some(format!("cannot count CUDA devices: {e:?}")),
    }
}

/// Kernel arguments, packed the way cuLaunchKernel wants them: each value is copied into an
/// 8-byte-aligned slot of a fixed buffer, and the launch passes a pointer to every slot.
pub struct Args {
    store: [u64; 48],
    offsets: [usize; 24],
    n: usize,
    used: usize,
}

impl Args {
    pub fn new() -> Self {
        Args {
            store: [0; 48],
            offsets: [0; 24],
            n: 0,
            used: 0,
        }
    }

    /// Appends one argument (a device address, an int, a float, or a `#[repr(C)]` struct).
    pub fn push<T: Copy>(&mut self, v: T) -> &mut Self {
        let words = std::mem::size_of::<T>().div_ceil(8);
        assert!(
            self.n < self.offsets.len() && self.used + words <= self.store.len(),
            "too many kernel arguments"
        );
        // SAFETY: the destination slots [used, used + words) lie inside `store` (checked above),
        // are 8-byte aligned (≥ T's alignment for every argument type the engine passes), and T is
        // Copy, so a bitwise copy is a valid value.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &v as *const T as *const u8,
                self.store.as_mut_ptr().add(self.used) as *mut u8,
                std::mem::size_of::<T>(),
            );
        }
        self.offsets[self.n] = self.used;
        self.n += 1;
        self.used += words;
        self
    }
}

impl Default for Args {
    fn default() -> Self {
        Self::new()
    }
}

/// Context, stream and loaded kernels.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    /// Each kernel, the dynamic shared memory it may launch with (bytes), and whether it is
    /// launched with programmatic dependent launch (see [`PDL_KERNELS`]).
    functions: HashMap<&'static str, (sys::CUfunction, u32, bool)>,
    /// Kernels of `PDL_KERNELS` launch with programmatic stream serialisation (sm_90 and later;
    /// `ZAMBA_PDL=0` turns it off).
    pub pdl: bool,
    /// Which skinny GEMMs go to csrc/gemv.cu instead of cuBLAS (see [`GemvMode`]).
    pub gemv_mode: GemvMode,
    /// Which flash prefill kernel runs (`ZAMBA_FLASH=wgmma|k64|k32`; default: the fastest this GPU
    /// and head size allow), so that tests can cover every kernel on one GPU.
    pub flash: FlashKernel,
    /// Compute capability 9.0 exactly (H100/H200): the fatbin's sm_90a code, with its wgmma
    /// kernel, is what runs.
    pub sm90a: bool,
    /// Runs flash-decoding with 4 warps per block at every batch size (what batches above
    /// `DECODE_W8_MAX_BATCH` run), so that tests can cover both kernels. `ZAMBA_DECODE_W4=1` sets it.
    pub decode_4_warps: bool,
    /// Streaming multiprocessors: the grid of the persistent kernels (`gemv_pipe`, `mamba_step`).
    pub sm_count: usize,
    /// The GPU has TMA bulk copies and mbarrier transaction counts (sm_90 and later), which
    /// `mamba_step` needs.
    pub tma: bool,
}

/// Routing of skinny (decode) GEMMs. `ZAMBA_GEMV=0` forces cuBLAS and `ZAMBA_GEMV=1` our kernel
/// (`gemv_m1` / `gemv_m8`) for every GEMM of at most 8 rows, and `ZAMBA_GEMV=pipe` the persistent
/// pipelined kernel (`gemv_pipe`) for every single-row GEMM (cuBLAS for the rest), so that one
/// binary can A/B them (BENCHMARKS.md); the default takes `gemv_m1` for small single-row products
/// only (see `kernels::SMALL_GEMV_BYTES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvMode {
    Cublas,
    SingleRow,
    UpTo8,
    Pipe,
}

impl GemvMode {
    fn from_env() -> Self {
        match std::env::var("ZAMBA_GEMV").as_deref() {
            Ok("0") => GemvMode::Cublas,
            Ok("1") => GemvMode::UpTo8,
            Ok("pipe") => GemvMode::Pipe,
            _ => GemvMode::SingleRow,
        }
    }
}

/// The flash prefill kernels (src/gpu/kernels/attention.rs picks one per launch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// wgmma where it runs (compute capability 9.0, head_dim 464), else 64-key mma.sync tiles
    /// where their shared memory fits, else 32-key tiles.
    Auto,
    /// csrc/flash_wgmma.cu; an error where it cannot run.
    Wgmma,
    /// csrc/flash_attn.cu with 64-key tiles; an error where their shared memory does not fit.
    Mma64,
    /// csrc/flash_attn.cu with 32-key tiles (runs everywhere).
    Mma32,
}

impl FlashKernel {
    fn from_env() -> Result<Self> {
        Self::parse(std::env::var("ZAMBA_FLASH").ok().as_deref())
    }

    /// The value of `ZAMBA_FLASH` (None: unset).
    fn parse(v: Option<&str>) -> Result<Self> {
        match v {
            None | Some("") | Some("auto") => Ok(FlashKernel::Auto),
            Some("wgmma") => Ok(FlashKernel::Wgmma),
            Some("k64") => Ok(FlashKernel::Mma64),
            Some("k32") => Ok(FlashKernel::Mma32),
            Some(other) => Err(ZambaError::InvalidInput(format!(
                "ZAMBA_FLASH={other}: expected auto, wgmma, k64 or k32"
            ))),
        }
    }
}

/// Every kernel in csrc/, looked up once at start-up.
const KERNELS: &[&str] = &[
    "embed_gather",
    "rmsnorm",
    "rmsnorm_h16",
    "rmsnorm_v4",
    "rmsnorm_h16_v4",
    "gelu_mul",
    "conv1d_prefill",
    "conv1d_prefill_k8",
    "conv_state_update",
    "conv1d_update",
    "conv1d_update_k8",
    "scan_seq",
    "ssm_decode",
    "ssm_decode_dt",
    "mamba_step",
    "kv_append",
    "flash_attn_prefill",
    "flash_attn_prefill_k32",
    FLASH_WG_KERNEL,
    "attn_decode",
    "attn_decode_w8",
    "argmax_rows",
    "gemv_m1",
    "gemv_m8",
    "gemv_pipe",
    "fill_uniform_bf16",
    "fill_uniform_f32",
];

/// The kernels launched with programmatic dependent launch (PDL) where the GPU has it: the
/// kernels of a decode step, each of which calls `pdl_wait` (csrc/common.cuh) before it touches
/// any buffer another kernel writes or reads, and before any of its threads can exit, and reads
/// other kernels' outputs only through coherent loads (no `__restrict__`, no `__ldg`). Such a
/// launch lets the kernel's blocks start (and load constant weights) while the kernel before it
/// in the stream finishes; launches of other kernels, and cuBLAS's, wait for full completion.
/// One documented exception: `mamba_step` and `conv1d_update` read the layer's conv (and SSM)
/// states before their `pdl_wait`, which is sound because nothing in a decode step writes them
/// before they do (csrc/mamba_step.cu, csrc/conv.cu).
const PDL_KERNELS: &[&str] = &[
    "embed_gather",
    "rmsnorm",
    "rmsnorm_h16",
    "rmsnorm_v4",
    "rmsnorm_h16_v4",
    "gelu_mul",
    "conv1d_update",
    "conv1d_update_k8",
    "ssm_decode",
    "ssm_decode_dt",
    "mamba_step",
    "kv_append",
    "attn_decode",
    "attn_decode_w8",
    "argmax_rows",
    "gemv_m1",
    "gemv_m8",
];

/// Kernels with grid-wide barriers, launched cooperatively: the driver then guarantees that every
/// block is resident at once, or fails the launch with an error instead of letting it hang.
const COOPERATIVE_KERNELS: &[&str] = &["mamba_step"];

/// Dynamic shared memory any kernel may use without opting in.
const DEFAULT_SMEM: usize = 48 << 10;

/// Kernels that launch with more than `DEFAULT_SMEM` of dynamic shared memory, and the most they
/// ever ask for. Set once at load time, capped at what the GPU allows (a launch asking for more
/// than that fails with a clear error).
const DYNAMIC_SMEM: &[(&str, usize)] = &[
    // The most an H100/H200 block may have; its ring takes what the GPU allows.
    ("mamba_step", 227 << 10),
    (
        FLASH_PREFILL_KERNELS[0].0,
        flash_smem_bytes(FLASH_MAX_HD, FLASH_PREFILL_KERNELS[0].1),
    ),
    (
        FLASH_PREFILL_KERNELS[1].0,
        flash_smem_bytes(FLASH_MAX_HD, FLASH_PREFILL_KERNELS[1].1),
    ),
    (FLASH_WG_KERNEL, FLASH_WG_SMEM),
];

impl Gpu {
    /// Opens device `ordinal`, creates a stream and loads the embedded kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        if let Some(why) = unavailable_reason() {
            return Err(ZambaError::CudaUnavailable(why));
        }
        let ctx = cu("creating the CUDA context", CudaContext::new(ordinal))?;
        // One stream, no cross-stream events: the engine orders all work itself.
        // SAFETY: called before any allocation through this context, as cudarc requires.
        unsafe { ctx.disable_event_tracking() };
        let stream = cu("creating a stream", ctx.new_stream())?;
        let module = cu(
            "loading the kernel fatbin",
            ctx.load_module(Ptx::from_binary(FATBIN.to_vec())),
        )?;
        // The most shared memory one block may opt in to (163 KB on an A100, 227 KB on an H100).
        let optin = cu(
            "querying the shared memory limit",
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        )?
        .max(DEFAULT_SMEM as i32) as usize;
        let sm_count = cu(
            "querying the number of SMs",
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        )?
        .max(1) as usize;
        let major = cu(
            "querying the compute capability",
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        )?;
        let minor = cu(
            "querying the compute capability",
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        )?;
        let pdl = major >= 9 && !std::env::var("ZAMBA_PDL").is_ok_and(|v| v == "0");
        let mut functions = HashMap::new();
        for &name in KERNELS {
            let f = cu(&format!("loading kernel {name}"), module.load_function(name))?;
            let mut smem = DEFAULT_SMEM;
            if let Some(&(_, want)) = DYNAMIC_SMEM.iter().find(|k| k.0 == name) {
                smem = want.min(optin);
                cu(
                    &format!("allowing {smem} bytes of dynamic shared memory for {name}"),
                    f.set_attribute(
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    ),
                )?;
            }
            functions.insert(name, (f.cu_function(), smem as u32, PDL_KERNELS.contains(&name)));
        }
        Ok(Gpu {
            ctx,
            stream,
            _module: module,
            functions,
            gemv_mode: GemvMode::from_env(),
            flash: FlashKernel::from_env()?,
            sm90a: (major, minor) == (9, 0),
            decode_4_warps: std::env::var("ZAMBA_DECODE_W4").is_ok_and(|v| v == "1"),
            sm_count,
            pdl,
            tma: major >= 9,
        })
    }

    /// The raw stream handle.
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Launches kernel `name` on the engine's stream.
    pub fn launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut Args,
    ) -> Result<()> {
        self.launch_smem(name, grid, block, 0, args)
    }

    /// The dynamic shared memory kernel `name` may launch with (bytes; 0 for an unknown name).
    pub fn smem_limit(&self, name: &str) -> usize {
        self.functions.get(name).map_or(0, |f| f.1 as usize)
    }

    /// Launches kernel `name` with `smem` bytes of dynamic shared memory (above 48 KB only for
    /// the kernels in `DYNAMIC_SMEM`, up to the amount allowed at load time).
    pub fn launch_smem(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &mut Args,
    ) -> Result<()> {
        let (f, smem_max, pdl) = *self.functions.get(name).ok_or_else(|| ZambaError::Cuda {
            context: format!("launching {name}"),
            message: "no such kernel in the fatbin".into(),
        })?;
        if smem > smem_max {
            return Err(ZambaError::Cuda {
                context: format!("launching {name}"),
                message: format!(
                    "it needs {smem} bytes of shared memory per block; this GPU allows {smem_max}"
                ),
            });
        }
        let mut ptrs = [std::ptr::null_mut::<c_void>(); 24];
        for (p, &off) in ptrs.iter_mut().zip(&args.offsets[..args.n]) {
            // SAFETY: off < store.len() by construction in Args::push.
            *p = unsafe { args.store.as_mut_ptr().add(off) } as *mut c_void;
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        // SAFETY: f is a live function of the loaded module; ptrs[..n] point at argument values
        // that outlive the call (cuLaunchKernel copies them before returning); the kernel's
        // signature matches the pushed arguments (each wrapper in src/gpu/kernels/ mirrors one kernel).
        let cooperative = COOPERATIVE_KERNELS.contains(&name);
        let r = if (pdl && self.pdl) || cooperative {
            // SAFETY: all zero bytes is a valid CUlaunchAttribute: its id enum has 0
            // (CU_LAUNCH_ATTRIBUTE_IGNORE), and the padding and the value union are plain integers.
            let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
            let mut n_attrs = 0;
            if pdl && self.pdl {
                attrs[n_attrs].id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                attrs[n_attrs].value.programmaticStreamSerializationAllowed = 1;
                n_attrs += 1;
            }
            if cooperative {
                // Every block resident at once, or the launch fails (no grid barrier can hang).
                attrs[n_attrs].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                attrs[n_attrs].value.cooperative = 1;
                n_attrs += 1;
            }
            let config = sys::CUlaunchConfig {
                gridDimX: grid.0,
                gridDimY: grid.1,
                gridDimZ: grid.2,
                blockDimX: block,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem,
                hStream: self.cu_stream(),
                attrs: attrs.as_mut_ptr(),
                numAttrs: n_attrs as u32,
            };
            // SAFETY: as for cuLaunchKernel below; `config` and `attrs` live across the call, and
            // the kernel calls pdl_wait before touching memory other kernels use (PDL_KERNELS).
            unsafe { sys::cuLaunchKernelEx(&config, f, ptrs.as_mut_ptr(), std::ptr::null_mut()) }.result()
        } else {
            // SAFETY: see above.
            unsafe {
                result::launch_kernel(
                    f,
                    grid,
                    (block, 1, 1),
                    smem,
                    self.cu_stream(),
                    &mut ptrs[..args.n],
                )
            }
        };
        match r {
            Ok(()) => Ok(()),
            // The message is built only on failure: the decode step allocates nothing.
            Err(_) => cu(&format!("launching {name}"), r),
        }
    }

    /// Records the work that `launch` queues on the stream as a CUDA graph instead of running it,
    /// and instantiates it (replay with `CudaGraph::launch`). `launch` must queue only kernel
    /// launches and cuBLAS calls: no copies from pageable memory and no synchronisation.
    pub fn capture(&self, what: &str, launch: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        cu(
            "starting a graph capture",
            self.stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
        )?;
        let launched = launch();
        // End the capture whatever happened, so that the stream is usable again.
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        let graph = cu(what, graph)?.ok_or_else(|| ZambaError::Cuda {
            context: what.to_string(),
            message: "the capture produced no graph".into(),
        })?;
        cu(what, graph.upload())?;
        Ok(graph)
    }

    /// Waits for all queued work and reports any asynchronous error.
    pub fn sync(&self) -> Result<()> {
        cu("synchronising the stream", self.stream.synchronize())
    }

    /// Copies `src` to device address `dst` (asynchronous: `src` must stay alive and unchanged
    /// until the stream reaches the copy; callers sync or use pinned buffers they own).
    pub fn htod<T>(&self, src: &[T], dst: u64) -> Result<()> {
        // SAFETY: the caller passes a destination sized for src; src is valid for the call.
        cu("copying to the device", unsafe {
            result::memcpy_htod_async(dst, src, self.cu_stream())
        })
    }

    /// Copies from device address `src` into `dst` and waits for it.
    pub fn dtoh<T>(&self, src: u64, dst: &mut [T]) -> Result<()> {
        // SAFETY: the caller passes a source holding at least dst.len() elements; we sync before
        // dst is used.
        cu("copying from the device", unsafe {
            result::memcpy_dtoh_async(dst, src, self.cu_stream())
        })?;
        self.sync()
    }

    /// Device-to-device copy of `bytes` bytes.
    pub fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller passes ranges inside live allocations.
        cu("copying on the device", unsafe {
            result::memcpy_dtod_async(dst, src, bytes, self.cu_stream())
        })
    }

    /// Sets `bytes` bytes at `dst` to zero.
    pub fn zero(&self, dst: u64, bytes: usize) -> Result<()> {
        // SAFETY: the caller passes a range inside a live allocation.
        cu("memset", unsafe {
            result::memset_d8_async(dst, 0, bytes, self.cu_stream())
        })
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        cu("cuMemGetInfo", self.ctx.mem_get_info())
    }
}

#[cfg(test)]
mod tests {
    use super::FlashKernel;

    #[test]
    fn zamba_flash_values() {
        assert_eq!(FlashKernel::parse(None).unwrap(), FlashKernel::Auto);
        assert_eq!(FlashKernel::parse(Some("")).unwrap(), FlashKernel::Auto);
        assert_eq!(FlashKernel::parse(Some("auto")).unwrap(), FlashKernel::Auto);
        assert_eq!(FlashKernel::parse(Some("wgmma")).unwrap(), FlashKernel::Wgmma);
        assert_eq!(FlashKernel::parse(Some("k64")).unwrap(), FlashKernel::Mma64);
        assert_eq!(FlashKernel::parse(Some("k32")).unwrap(), FlashKernel::Mma32);
        let e = FlashKernel::parse(Some("k16")).unwrap_err().to_string();
        assert!(
            e.contains("ZAMBA_FLASH=k16") && e.contains("wgmma, k64 or k32"),
            "{e}"
        );
    }
}
