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
use zamba::model::Model;
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
    // One batched prefill (each prompt in its own slot, with its own SSM, conv and KV state),
    // then one batched decode step per new token.
    let out = zamba::generate::greedy_batch(model.as_mut(), &ids, 16)?;
    for ((p, prompt_ids), o) in prompts.iter().zip(&ids).zip(&out) {
        println!("{p:?} -> {:?}", tok.decode(&o[prompt_ids.len()..], true)?);
    }
    Ok(())
}
