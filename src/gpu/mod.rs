//! The CUDA engine (filled in by the next issue).
