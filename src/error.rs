//! The one error type of the crate. Every fallible public function returns [`Result`].
//!
//! Messages are written for the person at the terminal: they name the file, the tensor or
//! the value that is wrong, and what was expected instead.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, from a bad checkpoint to a GPU failure.
#[derive(Debug, thiserror::Error)]
pub enum ZambaError {
    /// A file or folder that the caller named does not exist.
    #[error("{what} not found: {path}")]
    NotFound { what: &'static str, path: PathBuf },

    /// Reading a file failed for another reason (permissions, I/O error).
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// config.json is not valid JSON, or a field has the wrong type.
    #[error("invalid config {path}: {reason}")]
    ConfigParse { path: PathBuf, reason: String },

    /// config.json parsed, but describes a model this engine does not run.
    #[error("unsupported config: {0}")]
    UnsupportedConfig(String),

    /// A safetensors file whose header or layout is broken (truncated, lying offsets).
    #[error("invalid safetensors file {path}: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    /// The checkpoint does not hold the tensors that the config implies. Every problem found is
    /// listed, one per line.
    #[error("checkpoint {path} does not match its config ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "))]
    Checkpoint { path: PathBuf, problems: Vec<String> },

    /// The tokenizer file could not be loaded, or encoding/decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Input that the model cannot take: token ids out of range, an empty prompt, a prompt past
    /// the context limit, a missing key in an input file.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The GPU path was asked for but is not available (no driver, no GPU, no kernels).
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),

    /// A CUDA driver, kernel or cuBLAS call failed.
    #[error("CUDA error in {context}: {message}")]
    Cuda { context: String, message: String },

    /// The request needs more device memory than is free.
    #[error("out of GPU memory: {0}")]
    OutOfMemory(String),
}

/// The crate's result type.
pub type Result<T, E = ZambaError> = std::result::Result<T, E>;

impl ZambaError {
    /// Wraps an I/O error with the path it concerns; a missing file becomes [`ZambaError::NotFound`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ZambaError::NotFound { what, path }
        } else {
            ZambaError::Io { path, source }
        }
    }
}
