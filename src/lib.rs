//! zamba: a raw-CUDA inference engine for Zyphra's Zamba-7B-v1, with an fp32 CPU reference.
//!
//! The pieces, one module per idea:
//! - [`config`]: HF `config.json` → [`config::ZambaConfig`] with derived sizes and the layer plan;
//! - [`safetensors_file`] and [`weights`]: a checked, mmapped view of a HF checkpoint folder;
//! - [`tokenizer`]: Zamba's tokenizer, with streaming decode;
//! - [`cpu`]: the plain fp32 reference model, the oracle for every GPU kernel;
//! - [`gpu`]: the CUDA engine (kernels from `csrc/`, cuBLAS GEMMs, caches, the static graph);
//! - [`model`]: the backend-independent interface both implement;
//! - [`sampler`] and [`generate`]: token selection and the generation loop;
//! - [`cli`] and [`bench`]: the `zamba-run` command line and its benchmark.

pub mod bench;
pub mod bench_gemm;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod model;
pub mod safetensors_file;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

pub use config::ZambaConfig;
pub use error::{Result, ZambaError};
pub use model::Model;
