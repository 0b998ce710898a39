//! The description of one forward's batch (which tokens belong to which sequence, where each
//! sequence's state lives), built on the host and uploaded in one copy.
//!
//! Every array is `i32`, in one pinned host buffer mirrored by one device buffer, so that a
//! forward costs one host-to-device copy and allocates nothing.

use super::device::Gpu;
use super::kernels::BatchMeta;
use super::mem::{DeviceBuf, PinnedBuf};
use crate::error::Result;

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
}

/// Host and device copies of the batch description.
pub struct BatchBuffers {
    caps: Caps,
    host: PinnedBuf,
    dev: DeviceBuf,
    pub meta: BatchMeta,
}

/// Offsets (in i32 elements) of each section, in the order of the fields of `BatchMeta`.
fn sections(c: Caps) -> [usize; 8] {
    let sizes = [
        c.tokens, c.tokens, c.entries, c.entries, c.entries, c.entries, c.entries,
    ];
    let mut off = [0; 8];
    for i in 0..7 {
        off[i + 1] = off[i] + sizes[i];
    }
    off
}

impl BatchBuffers {
    pub fn new(max_tokens: usize, max_entries: usize) -> Result<Self> {
        let caps = Caps {
            tokens: max_tokens,
            entries: max_entries,
        };
        let total = sections(caps)[7] * 4;
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
        };
        Ok(BatchBuffers {
            caps,
            host: PinnedBuf::new(total)?,
            dev,
            meta,
        })
    }

    /// Writes and uploads the description of `entries` with their `tokens` (concatenated).
    /// The caller guarantees the sizes fit (tokens ≤ max_tokens, entries ≤ max_entries) and that
    /// the previous upload has completed (the engine syncs at the end of every forward).
    pub fn upload(&mut self, gpu: &Gpu, entries: &[Entry], tokens: &[u32]) -> Result<()> {
        assert!(tokens.len() <= self.caps.tokens && entries.len() <= self.caps.entries);
        let off = sections(self.caps);
        let used = off[7];
        let host: &mut [i32] = bytemuck::cast_slice_mut(&mut self.host.as_mut_slice()[..used * 4]);
        for (e, en) in entries.iter().enumerate() {
            for j in 0..en.len {
                host[off[0] + en.start + j] = tokens[en.start + j] as i32;
                host[off[1] + en.start + j] = e as i32;
            }
            let vals = [en.start, en.len, en.past, en.slot, en.past + en.len];
            for (s, v) in vals.iter().enumerate() {
                host[off[2 + s] + e] = *v as i32;
            }
        }
        gpu.htod(&self.host.as_slice()[..used * 4], self.dev.ptr())
    }
}
