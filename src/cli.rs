//! `zamba-run`: generation, logits dumps, tokenization and benchmarks from the command line.
//!
//! Every failure becomes one message on stderr and a non-zero exit status.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cpu::CpuModel;
use crate::error::{Result, ZambaError};
use crate::generate::{generate, GenerateOptions};
use crate::gpu::{GpuModel, GpuOptions};
use crate::model::{Logits, Model, SeqInput};
use crate::safetensors_file::SafetensorsFile;
use crate::sampler::SamplerConfig;
use crate::tokenizer::ZambaTokenizer;
use crate::weights::Checkpoint;

/// The prompt used when none is given.
pub const DEFAULT_PROMPT: &str = "Hey how are you doing on this lovely evening?";

#[derive(Parser, Debug)]
#[command(
    name = "zamba-run",
    version,
    about = "Run Zyphra's Zamba-7B-v1 on CUDA (or the fp32 CPU reference)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a continuation of a prompt; prints it, then the time to first token and ms/token.
    Generate(GenerateArgs),
    /// Write the logits of one forward over token ids read from a safetensors file.
    Logits(LogitsArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Measure prefill and decode throughput (see BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A HF checkpoint folder (config.json, safetensors). Default: the bundled tiny test model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Context limit per sequence (default: the config's max_position_embeddings).
    #[arg(long)]
    pub max_context: Option<usize>,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// New tokens to generate.
    #[arg(short = 'n', long = "max-new-tokens", default_value_t = 32)]
    pub n: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A safetensors file holding an I64 or I32 tensor of token ids, shape [batch, seq].
    #[arg(long)]
    pub input: PathBuf,
    /// The name of that tensor.
    #[arg(long)]
    pub key: String,
    /// Where to write the F32 `logits` tensor, shape [batch, seq, vocab].
    #[arg(long)]
    pub out: PathBuf,
    /// Prefill the first N tokens of each row at once, then feed the rest one token per decode
    /// step (default: one forward over everything).
    #[arg(long)]
    pub prefill: Option<usize>,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A tokenizer.json (default: the bundled Zamba tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub text: String,
}

/// The bundled tiny checkpoint (tests/fixtures/tiny-a), found next to the crate's sources or under
/// the current directory.
pub fn bundled_model_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-a");
    if built.is_dir() {
        return built;
    }
    PathBuf::from("tests/fixtures/tiny-a")
}

/// Loads a model on the requested device with `slots` sequence slots.
pub fn load_model(args: &ModelArgs, slots: usize, max_tokens: usize) -> Result<Box<dyn Model>> {
    let dir = args.model.clone().unwrap_or_else(bundled_model_dir);
    let ck = Checkpoint::open(&dir)?;
    let use_cuda = match args.device {
        Device::Cpu => false,
        Device::Cuda => true,
        Device::Auto => crate::gpu::unavailable_reason().is_none(),
    };
    if use_cuda {
        let opts = GpuOptions {
            slots,
            max_context: args.max_context,
            max_tokens,
            device: 0,
        };
        let total = ck.total_bytes();
        let show = total > (1 << 30) && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut last = 0;
        let mut progress = |done: usize, all: usize| {
            let pct = done * 100 / all.max(1);
            if show && pct != last {
                last = pct;
                eprint!(
                    "\rloading weights: {pct:3}% ({:.1} / {:.1} GB)",
                    done as f64 / 1e9,
                    all as f64 / 1e9
                );
                if pct == 100 {
                    eprintln!();
                }
            }
        };
        Ok(Box::new(GpuModel::load(&ck, opts, &mut progress)?))
    } else {
        Ok(Box::new(CpuModel::load(&ck, slots, args.max_context)?))
    }
}

fn run_generate(a: &GenerateArgs) -> Result<()> {
    let dir = a.model.model.clone().unwrap_or_else(bundled_model_dir);
    let tok = ZambaTokenizer::for_model_dir(&dir)?;
    let mut model = load_model(&a.model, 1, 2048)?;
    if model.config().vocab_size < tok.vocab_size() {
        return Err(ZambaError::InvalidInput(format!(
            "the tokenizer has {} ids but the model only {}",
            tok.vocab_size(),
            model.config().vocab_size
        )));
    }
    let opts = GenerateOptions {
        max_new_tokens: a.n,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_at_eos: !a.ignore_eos,
        slot: 0,
    };
    let mut out = std::io::stdout();
    let _ = write!(out, "{}", a.prompt);
    let g = generate(model.as_mut(), &tok, &a.prompt, &opts, &mut |s| {
        let _ = write!(out, "{s}");
        let _ = out.flush();
    })?;
    println!();
    eprintln!(
        "prompt {} tokens, generated {} tokens; time to first token {:.1} ms; {:.2} ms/token",
        g.prompt_ids.len(),
        g.new_ids.len(),
        g.time_to_first_token.as_secs_f64() * 1e3,
        g.ms_per_token()
    );
    Ok(())
}

/// Reads `[batch, seq]` token ids named `key` from a safetensors file.
pub fn read_ids(path: &Path, key: &str) -> Result<Vec<Vec<u32>>> {
    let f = SafetensorsFile::open(path)?;
    let t = f.get(key).ok_or_else(|| {
        let names: Vec<&String> = f.tensors().keys().collect();
        ZambaError::InvalidInput(format!(
            "{} has no tensor named {key:?} (it holds {names:?})",
            path.display()
        ))
    })?;
    if t.shape.len() != 2 || t.shape[0] == 0 || t.shape[1] == 0 {
        return Err(ZambaError::InvalidInput(format!(
            "tensor {key} has shape {:?}; expected [batch, seq] with both positive",
            t.shape
        )));
    }
    let seq = t.shape[1];
    t.to_i64()?
        .chunks(seq)
        .map(|row| {
            row.iter()
                .map(|&v| {
                    u32::try_from(v)
                        .map_err(|_| ZambaError::InvalidInput(format!("token id {v} is out of range")))
                })
                .collect()
        })
        .collect()
}

fn run_logits(a: &LogitsArgs) -> Result<()> {
    let rows = read_ids(&a.input, &a.key)?;
    let (batch, seq) = (rows.len(), rows[0].len());
    let mut model = load_model(&a.model, batch, 2048)?;
    let v = model.config().vocab_size;
    let split = a.prefill.unwrap_or(seq).clamp(1, seq);
    let inputs: Vec<SeqInput> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| SeqInput {
            slot: i,
            tokens: &r[..split],
        })
        .collect();
    let mut out = model.forward(&inputs, Logits::All)?;
    for t in split..seq {
        let step: Vec<SeqInput> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| SeqInput {
                slot: i,
                tokens: &r[t..t + 1],
            })
            .collect();
        for (o, l) in out.iter_mut().zip(model.forward(&step, Logits::All)?) {
            o.extend(l);
        }
    }
    let flat: Vec<f32> = out.concat();
    debug_assert_eq!(flat.len(), batch * seq * v);
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![batch, seq, v],
        bytemuck::cast_slice(&flat),
    )
    .map_err(|e| ZambaError::InvalidInput(format!("building the output tensor: {e}")))?;
    let meta: HashMap<String, String> = [("prefill".to_string(), split.to_string())].into();
    safetensors::serialize_to_file([("logits", view)], Some(meta), &a.out)
        .map_err(|e| ZambaError::InvalidInput(format!("writing {}: {e}", a.out.display())))?;
    eprintln!("wrote logits [{batch}, {seq}, {v}] to {}", a.out.display());
    Ok(())
}

fn run_tokenize(a: &TokenizeArgs) -> Result<()> {
    let tok = match &a.tokenizer {
        Some(p) => ZambaTokenizer::from_file(p)?,
        None => ZambaTokenizer::bundled()?,
    };
    let ids = tok.encode(&a.text)?;
    println!("{}", serde_json::to_string(&ids).expect("ids serialise"));
    Ok(())
}

/// Runs the command line `args` (without the program name handling: clap does that).
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => match Cli::parse_from(["zamba-run", "generate"]).command {
            Some(Command::Generate(a)) => run_generate(&a),
            _ => unreachable!("\"generate\" parses as the generate command"),
        },
        Some(Command::Generate(a)) => run_generate(&a),
        Some(Command::Logits(a)) => run_logits(&a),
        Some(Command::Tokenize(a)) => run_tokenize(&a),
        Some(Command::Bench(a)) => crate::bench::run(&a),
    }
}

/// Parses std::env::args, runs, and turns an error into a message and exit status 1.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
