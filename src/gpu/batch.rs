//! The description of one forward's batch (which tokens belong to which sequence, where each
//! sequence's state lives, how the scan is chunked), built on the host and uploaded in one copy.
//!
//! Every array is `i32`, in one pinned host buffer mirrored by one device buffer, so that a
//! forward costs one host-to-device copy and allocates nothing.

use super::device::Gpu;
use super::kernels::BatchMeta;
use super::mem::{DeviceBuf, PinnedBuf};
use crate::error::Result;

/// Tokens per scan chunk (csrc/scan.cu): each (chunk, channel) pair is one thread.
pub const SCAN_CHUNK: usize = 32;

/// One sequence's part of a forward.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub slot: usize,
    /// First row of its tokens in the batch.
    pub start: usize,
    pub len: usize,
    /// Tokens the slot held before this forward.
    pub past: usize,
}

/// Section sizes of the metadata buffer.
#[derive(Clone, Copy, Debug)]
struct Caps {
    tokens: usize,
    entries: usize,
    chunks: usize,
}

/// Host and device copies of the batch description.
pub struct BatchBuffers {
    caps: Caps,
    host: PinnedBuf,
    dev: DeviceBuf,
    pub meta: BatchMeta,
    /// Number of scan chunks in the current batch.
    pub n_chunks: usize,
    /// True when some entry spans more than one scan chunk.
    pub multi_chunk: bool,
}

/// Offsets (in i32 elements) of each section, in the order of the fields of `BatchMeta`.
fn sections(c: Caps) -> [usize; 14] {
    let sizes = [
        c.tokens, c.tokens, c.entries, c.entries, c.entries, c.entries, c.entries, c.entries, c.entries,
        c.chunks, c.chunks, c.chunks, c.chunks,
    ];
    let mut off = [0; 14];
    for i in 0..13 {
        off[i + 1] = off[i] + sizes[i];
    }
    off
}

impl BatchBuffers {
    pub fn new(max_tokens: usize, max_entries: usize) -> Result<Self> {
        let caps = Caps {
            tokens: max_tokens,
            entries: max_entries,
            chunks: max_tokens.div_ceil(SCAN_CHUNK) + max_entries,
        };
        let total = sections(caps)[13] * 4;
        let dev = DeviceBuf::new(total, "the batch description")?;
        let off = sections(caps);
        let p = |i: usize| dev.ptr() + (off[i] * 4) as u64;
        let meta = BatchMeta {
            tok_ids: p(0),
            tok_entry: p(1),
            entry_start: p(2),
            entry_len: p(3),
            entry_past: p(4),
            entry_slot: p(5),
            entry_seq_len: p(6),
            entry_chunk0: p(7),
            entry_nchunks: p(8),
            chunk_entry: p(9),
            chunk_t0: p(10),
            chunk_len: p(11),
            chunk_flags: p(12),
        };
        Ok(BatchBuffers {
            caps,
            host: PinnedBuf::new(total)?,
            dev,
            meta,
            n_chunks: 0,
            multi_chunk: false,
        })
    }

    /// Writes and uploads the description of `entries` with their `tokens` (concatenated).
    /// The caller guarantees the sizes fit (tokens ≤ max_tokens, entries ≤ max_entries) and that
    /// the previous upload has completed (the engine syncs at the end of every forward).
    pub fn upload(&mut self, gpu: &Gpu, entries: &[Entry], tokens: &[u32]) -> Result<()> {
        assert!(tokens.len() <= self.caps.tokens && entries.len() <= self.caps.entries);
        let off = sections(self.caps);
        let used = off[13];
        let host: &mut [i32] = bytemuck::cast_slice_mut(&mut self.host.as_mut_slice()[..used * 4]);
        let mut n_chunks = 0;
        let mut multi = false;
        for (e, en) in entries.iter().enumerate() {
            for j in 0..en.len {
                host[off[0] + en.start + j] = tokens[en.start + j] as i32;
                host[off[1] + en.start + j] = e as i32;
            }
            let nch = en.len.div_ceil(SCAN_CHUNK);
            multi |= nch > 1;
            let vals = [
                en.start,
                en.len,
                en.past,
                en.slot,
                en.past + en.len,
                n_chunks,
                nch,
            ];
            for (s, v) in vals.iter().enumerate() {
                host[off[2 + s] + e] = *v as i32;
            }
            for c in 0..nch {
                let k = n_chunks + c;
                host[off[9] + k] = e as i32;
                host[off[10] + k] = (en.start + c * SCAN_CHUNK) as i32;
                host[off[11] + k] = (en.len - c * SCAN_CHUNK).min(SCAN_CHUNK) as i32;
                host[off[12] + k] = i32::from(nch == 1) | (i32::from(c + 1 == nch) << 1);
            }
            n_chunks += nch;
        }
        self.n_chunks = n_chunks;
        self.multi_chunk = multi;
        gpu.htod(&self.host.as_slice()[..used * 4], self.dev.ptr())
    }

    /// The largest number of scan chunks a batch can have.
    pub fn max_chunks(&self) -> usize {
        self.caps.chunks
    }
}
