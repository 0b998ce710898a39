//! Raw device and pinned host buffers. The engine works with plain device addresses (`u64`): every
//! buffer is allocated once, up front, and freed on drop.

use cudarc::driver::{result, sys};

use crate::error::{Result, ZambaError};

/// Turns a CUDA driver error into the crate's error, naming what was being done.
pub fn cu<T>(context: &str, r: std::result::Result<T, result::DriverError>) -> Result<T> {
    r.map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => ZambaError::OutOfMemory(format!("{context}: {e:?}")),
        _ => ZambaError::Cuda {
            context: context.to_string(),
            message: format!("{e:?}"),
        },
    })
}

/// A device allocation of `bytes` bytes.
pub struct DeviceBuf {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DeviceBuf {
    /// Allocates `bytes` (at least 1) on the current context's device. The contents are undefined.
    pub fn new(bytes: usize, what: &str) -> Result<Self> {
        // SAFETY: cuMemAlloc has no preconditions beyond a current context, which the engine binds
        // before allocating; the returned pointer is owned by this struct and freed once in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) };
        let ptr = cu(&format!("allocating {bytes} bytes for {what}"), ptr)?;
        Ok(DeviceBuf { ptr, bytes })
    }

    /// Allocates and zeroes.
    pub fn zeroed(bytes: usize, what: &str) -> Result<Self> {
        let b = Self::new(bytes, what)?;
        // SAFETY: the range [ptr, ptr + bytes) was just allocated above.
        cu("memset", unsafe { result::memset_d8_sync(b.ptr, 0, b.bytes) })?;
        Ok(b)
    }

    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Address of the element `index` of a buffer of `T`s (no bounds check: callers size buffers
    /// for their largest use).
    pub fn at<T>(&self, index: usize) -> u64 {
        self.ptr + (index * std::mem::size_of::<T>()) as u64
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from malloc_sync and is freed exactly once, here. Errors at teardown
        // (e.g. a context already destroyed) are ignored: there is nothing left to recover.
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}

/// Page-locked host memory, the staging area for fast host-to-device copies.
pub struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: the buffer is plain host memory owned by this struct; access goes through &/&mut self.
unsafe impl Send for PinnedBuf {}

impl PinnedBuf {
    pub fn new(bytes: usize) -> Result<Self> {
        // SAFETY: cuMemHostAlloc returns a fresh allocation that this struct owns.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) };
        let ptr = cu(&format!("allocating {bytes} bytes of pinned host memory"), ptr)? as *mut u8;
        Ok(PinnedBuf { ptr, bytes })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of `bytes` bytes owned by self, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above, borrowed immutably.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host, freed exactly once.
        unsafe {
            let _ = result::free_host(self.ptr as *mut std::ffi::c_void);
        }
    }
}
