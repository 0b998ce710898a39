//! Using zamba as a library: load a checkpoint, prefill several prompts of different lengths in
//! one batch, then decode them together, one token per sequence per step.
//!
//!     cargo run --release --example batch_generate -- [MODEL_DIR]
//!
//! Without an argument it runs the bundled tiny test checkpoint. It uses the GPU when one is
//! present and the fp32 CPU reference otherwise.

use std::path::PathBuf;

use zamba::cpu::CpuModel;
use zamba::gpu::{GpuModel, GpuOptions};
use zamba::model::{Model, SeqInput};
use zamba::tokenizer::ZambaTokenizer;
use zamba::weights::Checkpoint;

fn main() -> zamba::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(zamba::cli::bundled_model_dir);
    // Opening checks every tensor the config implies before anything is read.
    let ck = Checkpoint::open(&dir)?;
    let tok = ZambaTokenizer::for_model_dir(&dir)?;
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a land far",
        "1, 2, 3,",
    ];
    let slots = prompts.len();
    let mut model: Box<dyn Model> = match zamba::gpu::unavailable_reason() {
        None => {
            let opts = GpuOptions {
                slots,
                ..Default::default()
            };
            Box::new(GpuModel::load(&ck, opts, &mut |_, _| {})?)
        }
        Some(why) => {
            eprintln!("using the CPU reference: {why}");
            Box::new(CpuModel::load(&ck, slots, None)?)
        }
    };
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p))
        .collect::<zamba::Result<_>>()?;
    // One batched prefill: each prompt goes to its own slot (its own SSM, conv and KV state).
    let batch: Vec<SeqInput> = ids
        .iter()
        .enumerate()
        .map(|(slot, t)| SeqInput { slot, tokens: t })
        .collect();
    let mut next = model.forward_greedy(&batch)?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); slots];
    for _ in 0..16 {
        for (o, t) in out.iter_mut().zip(&next) {
            o.push(*t);
        }
        // One decode step for all sequences at once.
        let step: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let batch: Vec<SeqInput> = step
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqInput { slot, tokens: t })
            .collect();
        next = model.forward_greedy(&batch)?;
    }
    for (p, o) in prompts.iter().zip(&out) {
        println!("{p:?} -> {:?}", tok.decode(o, true)?);
    }
    Ok(())
}
