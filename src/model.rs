//! The interface that both backends (the CPU reference and the CUDA engine) implement.
//!
//! A model owns a fixed number of sequence slots. Each slot holds one sequence's recurrent state
//! (conv and SSM state of every Mamba layer) and its KV caches (one per hybrid layer). A forward
//! call feeds new tokens to some slots, continuing from where each one stopped: a first call is a
//! prefill, a call with one token per slot is a decode step, and several calls in a row are a
//! chunked prefill.

use crate::config::ZambaConfig;
use crate::error::{Result, ZambaError};

/// Which positions' logits a forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last new position of each sequence (what generation needs).
    Last,
    /// Every new position.
    All,
}

/// One entry of a batch: a slot and the new tokens to feed it.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
}

/// A Zamba model with per-sequence state.
pub trait Model {
    /// The model's config.
    fn config(&self) -> &ZambaConfig;

    /// Number of sequence slots.
    fn num_slots(&self) -> usize;

    /// The most tokens a sequence may hold (prompt plus generated).
    fn max_context(&self) -> usize;

    /// Tokens fed to `slot` since its last reset.
    fn seq_len(&self, slot: usize) -> usize;

    /// Empties `slot`, so that its next forward starts a new sequence.
    fn reset(&mut self, slot: usize) -> Result<()>;

    /// Feeds each entry's tokens to its slot and returns, per entry, the f32 logits of its last
    /// position (`[vocab]`) or of all its new positions (`[n_tokens, vocab]`, row-major).
    fn forward(&mut self, batch: &[SeqInput], logits: Logits) -> Result<Vec<Vec<f32>>>;

    /// Like `forward` with [`Logits::Last`], but returns only the greedy token of each entry.
    /// Backends override this to take the argmax on the device.
    fn forward_greedy(&mut self, batch: &[SeqInput]) -> Result<Vec<u32>> {
        Ok(self
            .forward(batch, Logits::Last)?
            .iter()
            .map(|l| argmax(l))
            .collect())
    }

    /// Like `forward_greedy`, writing entry i's token into `next[i]` (`next.len() == batch.len()`).
    /// On the CUDA engine a decode step (one token per entry) through this call allocates nothing.
    fn forward_greedy_into(&mut self, batch: &[SeqInput], next: &mut [u32]) -> Result<()> {
        check_out_len("next", next.len(), batch.len())?;
        next.copy_from_slice(&self.forward_greedy(batch)?);
        Ok(())
    }

    /// Like `forward` with [`Logits::Last`], writing entry i's logits into
    /// `out[i·vocab..(i+1)·vocab]` (`out.len() == batch.len() · vocab`). On the CUDA engine a
    /// decode step through this call allocates nothing.
    fn forward_last_into(&mut self, batch: &[SeqInput], out: &mut [f32]) -> Result<()> {
        let v = self.config().vocab_size;
        check_out_len("out", out.len(), batch.len() * v)?;
        for (o, l) in out.chunks_mut(v).zip(self.forward(batch, Logits::Last)?) {
            o.copy_from_slice(&l);
        }
        Ok(())
    }
}

/// The error for an output buffer of the wrong length.
pub fn check_out_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(ZambaError::InvalidInput(format!(
        "the output buffer `{what}` holds {got} values; this batch needs {want}"
    )))
}

/// Index of the largest value (the first one on ties, like torch.argmax); NaN never wins.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Checks a batch against the model's limits before any work is done: slots exist and appear once,
/// every entry has tokens, every id is inside the vocabulary, and no sequence passes the context
/// limit. `seq_len(slot)` gives each slot's current length.
pub fn check_batch(
    cfg: &ZambaConfig,
    batch: &[SeqInput],
    num_slots: usize,
    max_context: usize,
    seq_len: impl Fn(usize) -> usize,
) -> Result<()> {
    if batch.is_empty() {
        return Err(ZambaError::InvalidInput("empty batch".into()));
    }
    for (i, s) in batch.iter().enumerate() {
        if let Some(msg) = no_such_slot(s.slot, num_slots) {
            return Err(ZambaError::InvalidInput(format!("batch entry {i}: {msg}")));
        }
        // Pairwise (no allocation: this runs on every decode step; batches are at most `slots`).
        if batch[..i].iter().any(|p| p.slot == s.slot) {
            return Err(ZambaError::InvalidInput(format!(
                "batch entry {i}: slot {} appears twice",
                s.slot
            )));
        }
        if s.tokens.is_empty() {
            return Err(ZambaError::InvalidInput(format!("batch entry {i}: no tokens")));
        }
        if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ZambaError::InvalidInput(format!(
                "token id {bad} is out of range: the vocabulary has {} ids (0..{})",
                cfg.vocab_size,
                cfg.vocab_size - 1
            )));
        }
        let total = seq_len(s.slot) + s.tokens.len();
        if total > max_context {
            return Err(ZambaError::InvalidInput(format!(
                "sequence in slot {} would hold {total} tokens, past the context limit of {max_context}",
                s.slot
            )));
        }
    }
    Ok(())
}

/// Checks that `slot` is one of the model's `num_slots` slots.
pub fn check_slot(slot: usize, num_slots: usize) -> Result<()> {
    no_such_slot(slot, num_slots).map_or(Ok(()), |msg| Err(ZambaError::InvalidInput(msg)))
}

/// The complaint about a slot outside 0..num_slots, if it is.
fn no_such_slot(slot: usize, num_slots: usize) -> Option<String> {
    (slot >= num_slots).then(|| format!("slot {slot} does not exist (the model has {num_slots} slots)"))
}
