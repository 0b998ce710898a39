//! The generation loop, shared by both backends: prefill the prompt, then one decode step per
//! new token, streaming text as it is produced.

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::model::{Model, SeqInput};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::ZambaTokenizer;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop at the tokenizer's end-of-sequence token.
    pub stop_at_eos: bool,
    /// The slot to use (it is reset first).
    pub slot: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampler: SamplerConfig::default(),
            stop_at_eos: true,
            slot: 0,
        }
    }
}

/// What a generation produced and how long it took.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub text: String,
    /// From the start of the prefill to the first new token.
    pub time_to_first_token: Duration,
    /// The decode steps after the first token.
    pub decode_time: Duration,
}

impl Generation {
    /// Mean time per decode step (the tokens after the first), in milliseconds.
    pub fn ms_per_token(&self) -> f64 {
        let steps = self.new_ids.len().saturating_sub(1);
        if steps == 0 {
            return 0.0;
        }
        self.decode_time.as_secs_f64() * 1e3 / steps as f64
    }
}

/// Picks the next token after `tokens`: on the device when greedy, else from the logits.
/// `logits` is reused from step to step.
fn step(
    model: &mut dyn Model,
    sampler: &mut Sampler,
    slot: usize,
    tokens: &[u32],
    logits: &mut Vec<f32>,
) -> Result<u32> {
    let batch = [SeqInput { slot, tokens }];
    if sampler.is_greedy() {
        let mut next = [0u32];
        model.forward_greedy_into(&batch, &mut next)?;
        Ok(next[0])
    } else {
        logits.resize(model.config().vocab_size, 0.0);
        model.forward_last_into(&batch, logits)?;
        Ok(sampler.sample(logits))
    }
}

/// Generates a continuation of `prompt` (encoded with BOS). `on_text` receives the text as it
/// is produced, never splitting a character.
pub fn generate(
    model: &mut dyn Model,
    tok: &ZambaTokenizer,
    prompt: &str,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let prompt_ids = tok.encode(prompt)?;
    generate_ids(model, tok, prompt_ids, opts, on_text)
}

/// [`generate`] from token ids.
pub fn generate_ids(
    model: &mut dyn Model,
    tok: &ZambaTokenizer,
    prompt_ids: Vec<u32>,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampler.clone());
    let mut stream = tok.stream();
    let mut text = String::new();
    let mut new_ids = Vec::new();
    model.reset(opts.slot)?;
    let t0 = Instant::now();
    let mut time_to_first_token = Duration::ZERO;
    let mut next_input = prompt_ids.clone();
    let mut logits = Vec::new();
    while new_ids.len() < opts.max_new_tokens {
        let id = step(model, &mut sampler, opts.slot, &next_input, &mut logits)?;
        if new_ids.is_empty() {
            time_to_first_token = t0.elapsed();
        }
        new_ids.push(id);
        if opts.stop_at_eos && Some(id) == tok.eos_id() {
            break;
        }
        let piece = stream.push(id)?;
        on_text(&piece);
        text.push_str(&piece);
        if model.seq_len(opts.slot) + 1 > model.max_context() && new_ids.len() < opts.max_new_tokens {
            break;
        }
        next_input = vec![id];
    }
    let piece = stream.finish()?;
    on_text(&piece);
    text.push_str(&piece);
    let decode_time = t0.elapsed().saturating_sub(time_to_first_token);
    Ok(Generation {
        prompt_ids,
        new_ids,
        text,
        time_to_first_token,
        decode_time,
    })
}

/// Greedy decoding of several prompts at once: prompt i goes to slot i (reset first), one batched
/// prefill, then batched one-token decode steps. Returns each prompt followed by its `new_tokens`
/// greedy tokens. The argmax is taken on the device where the backend can.
pub fn greedy_batch(model: &mut dyn Model, prompts: &[Vec<u32>], new_tokens: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = prompts.to_vec();
    if new_tokens == 0 {
        return Ok(out);
    }
    for slot in 0..prompts.len() {
        model.reset(slot)?;
    }
    let batch: Vec<SeqInput> = prompts
        .iter()
        .enumerate()
        .map(|(slot, p)| SeqInput { slot, tokens: p })
        .collect();
    let mut next = model.forward_greedy(&batch)?;
    for step in 1..=new_tokens {
        for (o, t) in out.iter_mut().zip(&next) {
            o.push(*t);
        }
        if step == new_tokens {
            break;
        }
        let ids: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let batch: Vec<SeqInput> = ids
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqInput { slot, tokens: t })
            .collect();
        model.forward_greedy_into(&batch, &mut next)?;
    }
    Ok(out)
}
