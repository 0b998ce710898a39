//! A HF Zamba checkpoint folder: config.json plus one `model.safetensors`, or
//! `model.safetensors.index.json` and its shards, every file mmapped.
//!
//! [`Checkpoint::open`] checks every tensor that the config implies (name, dtype, shape, byte range)
//! before any data is read, and reports all the problems in one error. After that, [`Checkpoint::get`]
//! hands out the raw bytes of a tensor straight from the mmap, so a loader copies each byte once
//! (into a pinned staging buffer for the GPU, or into the CPU reference's own storage).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{LayerKind, ZambaConfig};
use crate::error::{Result, ZambaError};
use crate::safetensors_file::{DType, SafetensorsFile, TensorRef};

/// Which dtypes a tensor may have in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeRule {
    /// A GEMM weight: must be BF16 (the engine streams it as is).
    Bf16,
    /// A small tensor (norm, conv, A_log, D, bias): BF16, F16 or F32, converted on load.
    AnyFloat,
}

/// One tensor the config requires.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub rule: DTypeRule,
}

/// Tensor names of one Mamba mixer (with its input norm).
#[derive(Clone, Debug)]
pub struct MambaNames {
    pub input_layernorm: String,
    pub in_proj: String,
    pub conv_weight: String,
    pub conv_bias: String,
    pub x_proj: String,
    pub dt_proj: String,
    pub dt_bias: String,
    pub a_log: String,
    pub d: String,
    pub out_proj: String,
}

/// Tensor names of the shared transformer block.
#[derive(Clone, Debug)]
pub struct SharedNames {
    pub input_layernorm: String,
    pub q_proj: String,
    pub k_proj: String,
    pub v_proj: String,
    pub o_proj: String,
    pub pre_ff_layernorm: String,
    pub gate_proj: String,
    pub up_proj: String,
    pub down_proj: String,
}

/// Global names: the embedding, the final norm, and lm_head (which may be the embedding).
pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.final_layernorm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Names of layer `i`'s mixer: hybrid layers nest it under `mamba_decoder.` (ZAMBA.md 2.2).
pub fn mamba_names(cfg: &ZambaConfig, i: usize) -> MambaNames {
    let p = match cfg.layer_kinds[i] {
        LayerKind::Mamba => format!("model.layers.{i}."),
        LayerKind::Hybrid => format!("model.layers.{i}.mamba_decoder."),
    };
    MambaNames {
        input_layernorm: format!("{p}input_layernorm.weight"),
        in_proj: format!("{p}mamba.in_proj.weight"),
        conv_weight: format!("{p}mamba.conv1d.weight"),
        conv_bias: format!("{p}mamba.conv1d.bias"),
        x_proj: format!("{p}mamba.x_proj_weight"),
        dt_proj: format!("{p}mamba.dt_proj_weight"),
        dt_bias: format!("{p}mamba.dt_proj_bias"),
        a_log: format!("{p}mamba.A_log"),
        d: format!("{p}mamba.D"),
        out_proj: format!("{p}mamba.out_proj.weight"),
    }
}

/// Name of hybrid layer `i`'s own 3712×3712 `linear`.
pub fn linear_name(i: usize) -> String {
    format!("model.layers.{i}.linear.weight")
}

/// Names of the shared block stored under hybrid layer `k`.
pub fn shared_names(k: usize) -> SharedNames {
    let s = format!("model.layers.{k}.shared_transf.");
    SharedNames {
        input_layernorm: format!("{s}input_layernorm.weight"),
        q_proj: format!("{s}self_attn.q_proj.weight"),
        k_proj: format!("{s}self_attn.k_proj.weight"),
        v_proj: format!("{s}self_attn.v_proj.weight"),
        o_proj: format!("{s}self_attn.o_proj.weight"),
        pre_ff_layernorm: format!("{s}pre_ff_layernorm.weight"),
        gate_proj: format!("{s}feed_forward.gate_proj.weight"),
        up_proj: format!("{s}feed_forward.up_proj.weight"),
        down_proj: format!("{s}feed_forward.down_proj.weight"),
    }
}

/// Every tensor the config implies, given the hybrid layer that stores the shared block.
pub fn expected_tensors(cfg: &ZambaConfig, shared_layer: usize, has_lm_head: bool) -> Vec<TensorSpec> {
    let (h, di, nh, dh) = (
        cfg.hidden_size,
        cfg.d_inner(),
        cfg.n_mamba_heads,
        cfg.mamba_head_dim(),
    );
    let (n, r, k) = (cfg.mamba_d_state, cfg.mamba_dt_rank, cfg.mamba_d_conv);
    let mut v = Vec::new();
    let mut push = |name: &str, shape: &[usize], rule| {
        v.push(TensorSpec {
            name: name.to_string(),
            shape: shape.to_vec(),
            rule,
        })
    };
    use DTypeRule::{AnyFloat, Bf16};
    push(EMBED, &[cfg.vocab_size, h], Bf16);
    push(FINAL_NORM, &[h], AnyFloat);
    if has_lm_head || !cfg.tie_word_embeddings {
        push(LM_HEAD, &[cfg.vocab_size, h], Bf16);
    }
    for i in 0..cfg.num_hidden_layers {
        let m = mamba_names(cfg, i);
        push(&m.input_layernorm, &[h], AnyFloat);
        push(&m.in_proj, &[2 * di, h], Bf16);
        push(&m.conv_weight, &[di, 1, k], AnyFloat);
        push(&m.conv_bias, &[di], AnyFloat);
        push(&m.x_proj, &[nh, r + 2 * n, dh], Bf16);
        push(&m.dt_proj, &[nh, dh, r], Bf16);
        push(&m.dt_bias, &[nh, dh], AnyFloat);
        push(&m.a_log, &[nh, dh, n], AnyFloat);
        push(&m.d, &[nh, dh], AnyFloat);
        push(&m.out_proj, &[h, di], Bf16);
        if cfg.layer_kinds[i] == LayerKind::Hybrid {
            push(&linear_name(i), &[h, h], Bf16);
        }
    }
    let s = shared_names(shared_layer);
    let (ah, q, kv, f) = (
        cfg.attention_hidden_size,
        cfg.q_width(),
        cfg.kv_width(),
        cfg.intermediate_size,
    );
    push(&s.input_layernorm, &[ah], AnyFloat);
    push(&s.q_proj, &[q, ah], Bf16);
    push(&s.k_proj, &[kv, ah], Bf16);
    push(&s.v_proj, &[kv, ah], Bf16);
    push(&s.o_proj, &[h, q], Bf16);
    push(&s.pre_ff_layernorm, &[h], AnyFloat);
    push(&s.gate_proj, &[f, h], Bf16);
    push(&s.up_proj, &[f, h], Bf16);
    push(&s.down_proj, &[h, f], Bf16);
    v
}

/// An open, fully validated checkpoint folder.
pub struct Checkpoint {
    dir: PathBuf,
    config: ZambaConfig,
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    location: HashMap<String, usize>,
    shared_layer: usize,
    has_lm_head: bool,
}

impl Checkpoint {
    /// Opens `dir`, reads config.json, mmaps the weights and checks every expected tensor.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ZambaError::NotFound {
                what: "model folder",
                path: dir.to_path_buf(),
            });
        }
        let config = ZambaConfig::from_file(&dir.join("config.json"))?;
        let (files, location) = open_files(dir)?;
        let shared_layer =
            find_shared_layer(&config, &location).map_err(|problem| ZambaError::Checkpoint {
                path: dir.to_path_buf(),
                problems: vec![problem],
            })?;
        let has_lm_head = location.contains_key(LM_HEAD);
        let ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            config,
            files,
            location,
            shared_layer,
            has_lm_head,
        };
        ckpt.validate()?;
        Ok(ckpt)
    }

    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        for spec in expected_tensors(&self.config, self.shared_layer, self.has_lm_head) {
            let Some(t) = self.lookup(&spec.name) else {
                problems.push(format!(
                    "missing tensor {} (expected shape {:?})",
                    spec.name, spec.shape
                ));
                continue;
            };
            if t.shape != spec.shape.as_slice() {
                problems.push(format!(
                    "tensor {}: shape {:?}, expected {:?}",
                    spec.name, t.shape, spec.shape
                ));
            }
            let dtype_ok = match spec.rule {
                DTypeRule::Bf16 => *t.dtype == DType::BF16,
                DTypeRule::AnyFloat => t.dtype.is_float(),
            };
            if !dtype_ok {
                let want = match spec.rule {
                    DTypeRule::Bf16 => "BF16",
                    DTypeRule::AnyFloat => "BF16, F16 or F32",
                };
                problems.push(format!(
                    "tensor {}: dtype {}, expected {want}",
                    spec.name, t.dtype
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ZambaError::Checkpoint {
                path: self.dir.clone(),
                problems,
            })
        }
    }

    fn lookup(&self, name: &str) -> Option<TensorRef<'_>> {
        self.files[*self.location.get(name)?].get(name)
    }

    /// A tensor that [`Checkpoint::open`] validated. Asking for any other name is an error.
    pub fn get(&self, name: &str) -> Result<TensorRef<'_>> {
        self.lookup(name).ok_or_else(|| ZambaError::Checkpoint {
            path: self.dir.clone(),
            problems: vec![format!("missing tensor {name}")],
        })
    }

    /// The parsed config.
    pub fn config(&self) -> &ZambaConfig {
        &self.config
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hybrid layer whose `shared_transf.*` holds the shared block.
    pub fn shared_layer(&self) -> usize {
        self.shared_layer
    }

    /// The name of the lm_head matrix: `lm_head.weight` when present, else the tied embedding.
    pub fn lm_head_name(&self) -> &'static str {
        if self.has_lm_head {
            LM_HEAD
        } else {
            EMBED
        }
    }

    /// Total bytes of all tensors in the checkpoint's files.
    pub fn total_bytes(&self) -> usize {
        self.files
            .iter()
            .flat_map(|f| f.tensors().values())
            .map(|t| t.range.len())
            .sum()
    }
}

/// Opens `model.safetensors`, or the shards that `model.safetensors.index.json` names.
fn open_files(dir: &Path) -> Result<(Vec<SafetensorsFile>, HashMap<String, usize>)> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let mut files = Vec::new();
    let mut location = HashMap::new();
    if index_path.is_file() {
        let text =
            std::fs::read_to_string(&index_path).map_err(|e| ZambaError::io("index", &index_path, e))?;
        let bad = |reason: String| ZambaError::Safetensors {
            path: index_path.clone(),
            reason,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no weight_map object".into()))?;
        let mut shard_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{name}] is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(bad(format!(
                    "weight_map[{name}] = {file:?} is not a plain file name"
                )));
            }
            shard_of.entry(file).or_default().push(name);
        }
        let mut problems = Vec::new();
        for (file, names) in shard_of {
            let st = SafetensorsFile::open(&dir.join(file))?;
            for name in names {
                if st.get(name).is_some() {
                    location.insert(name.to_string(), files.len());
                } else {
                    problems.push(format!("the index puts {name} in {file}, which does not hold it"));
                }
            }
            files.push(st);
        }
        if !problems.is_empty() {
            return Err(ZambaError::Checkpoint {
                path: dir.to_path_buf(),
                problems,
            });
        }
    } else if single.is_file() {
        let st = SafetensorsFile::open(&single)?;
        for name in st.tensors().keys() {
            location.insert(name.clone(), 0);
        }
        files.push(st);
    } else {
        return Err(ZambaError::NotFound {
            what: "model.safetensors or model.safetensors.index.json",
            path: dir.to_path_buf(),
        });
    }
    Ok((files, location))
}

/// Finds the one hybrid layer index `k` with `model.layers.<k>.shared_transf.*` tensors.
fn find_shared_layer(
    cfg: &ZambaConfig,
    location: &HashMap<String, usize>,
) -> std::result::Result<usize, String> {
    let mut found: Vec<usize> = location
        .keys()
        .filter_map(|name| {
            let rest = name.strip_prefix("model.layers.")?;
            let (idx, tail) = rest.split_once('.')?;
            tail.starts_with("shared_transf.").then(|| idx.parse().ok())?
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    let hybrid = cfg.hybrid_layers();
    match found.as_slice() {
        [] => Err(format!(
            "missing the shared transformer block: no model.layers.<k>.shared_transf.* tensor (expected k = {})",
            hybrid[0]
        )),
        [k] if hybrid.contains(k) => Ok(*k),
        [k] => Err(format!("the shared block is stored under layer {k}, which is not a hybrid layer ({hybrid:?})")),
        many => Err(format!("the shared block is stored under several layers {many:?}; expected exactly one")),
    }
}
