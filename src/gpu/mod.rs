//! The CUDA engine: our kernels (csrc/, embedded by build.rs) plus cuBLAS GEMMs.
//!
//! - [`device`]: context, stream, kernel loading and launching;
//! - [`mem`]: device and pinned buffers;
//! - [`kernels`]: one typed launcher per kernel;
//! - [`gemm`]: row-major GEMMs through cuBLAS;
//! - [`loader`]: weights into one device allocation;
//! - [`cache`]: per-sequence conv/SSM state and KV caches;
//! - [`batch`] and [`workspace`]: the per-forward description and activation buffers;
//! - [`engine`]: [`GpuModel`], the layer graph.

pub mod attention;
pub mod batch;
pub mod cache;
pub mod device;
pub mod engine;
pub mod gemm;
pub mod gemm_lt;
pub mod gemm_nosplit;
pub mod kernels;
pub mod loader;
pub mod mem;
pub mod workspace;

pub use device::{unavailable_reason, GemvMode, Gpu};
pub use engine::{GpuModel, GpuOptions};
