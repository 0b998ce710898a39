//! Zamba's HF `config.json`: the fields that change the computation, their derived sizes, and the
//! layer plan (which of the layers run the shared transformer block).
//!
//! The defaults are `ZambaConfig`'s class defaults in transformers (ZAMBA.md section 1): a field that
//! config.json omits takes that value.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Result, ZambaError};

/// What runs at one layer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A Mamba mixer only (HF "mamba", or "linear_attention" in transformers v5).
    Mamba,
    /// The shared transformer block, then the layer's own `linear`, then the Mamba mixer.
    Hybrid,
}

/// The model's hyper-parameters, checked and with every dependent size derived.
#[derive(Clone, Debug, PartialEq)]
pub struct ZambaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the shared block's input, concat(h, e): 2 × hidden_size for Zamba.
    pub attention_hidden_size: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub n_mamba_heads: usize,
    pub mamba_d_state: usize,
    pub mamba_d_conv: usize,
    pub mamba_expand: usize,
    pub mamba_dt_rank: usize,
    pub mamba_conv_bias: bool,
    pub mamba_proj_bias: bool,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// One entry per layer.
    pub layer_kinds: Vec<LayerKind>,
}

impl ZambaConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ZambaError::io("config.json", path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            ZambaError::ConfigParse { reason, .. } => ZambaError::ConfigParse {
                path: path.to_path_buf(),
                reason,
            },
            ZambaError::UnsupportedConfig(msg) => {
                ZambaError::UnsupportedConfig(format!("{}: {msg}", path.display()))
            }
            other => other,
        })
    }

    /// Parses and checks the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| ZambaError::ConfigParse {
            path: "config.json".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let obj = value.as_object().ok_or_else(|| ZambaError::ConfigParse {
            path: "config.json".into(),
            reason: "the top level is not a JSON object".into(),
        })?;
        Self::from_json(obj)
    }

    fn from_json(obj: &Map<String, Value>) -> Result<Self> {
        let f = Fields(obj);
        match obj.get("model_type").and_then(Value::as_str) {
            Some("zamba") => {}
            Some(other) => {
                return Err(ZambaError::UnsupportedConfig(format!(
                    "model_type is \"{other}\"; this engine runs \"zamba\" (Zamba-7B-v1) only"
                )))
            }
            None => {
                return Err(ZambaError::UnsupportedConfig(
                    "config.json has no model_type; expected \"zamba\"".into(),
                ))
            }
        }
        let hidden_size = f.usize("hidden_size", 3712)?;
        let num_attention_heads = f.usize("num_attention_heads", 16)?;
        let attention_hidden_size = f.opt_usize("attention_hidden_size")?.unwrap_or(2 * hidden_size);
        let head_dim_default = (2 * hidden_size).checked_div(num_attention_heads).unwrap_or(0);
        let attention_head_dim = match f.opt_usize("attention_head_dim")? {
            Some(v) => v,
            None => f.opt_usize("head_dim")?.unwrap_or(head_dim_default),
        };
        let mamba_dt_rank = match obj.get("mamba_dt_rank") {
            None | Some(Value::Null) => hidden_size.div_ceil(16),
            Some(Value::String(s)) if s == "auto" => hidden_size.div_ceil(16),
            Some(_) => f.usize("mamba_dt_rank", 0)?,
        };
        let num_hidden_layers = f.usize("num_hidden_layers", 76)?;
        let cfg = ZambaConfig {
            vocab_size: f.usize("vocab_size", 32000)?,
            hidden_size,
            attention_hidden_size,
            attention_head_dim,
            num_attention_heads,
            num_key_value_heads: f.usize("num_key_value_heads", num_attention_heads)?,
            intermediate_size: f.usize("intermediate_size", 14848)?,
            num_hidden_layers,
            n_mamba_heads: f.usize("n_mamba_heads", 2)?,
            mamba_d_state: f.usize("mamba_d_state", 16)?,
            mamba_d_conv: f.usize("mamba_d_conv", 4)?,
            mamba_expand: f.usize("mamba_expand", 2)?,
            mamba_dt_rank,
            mamba_conv_bias: f.bool("mamba_conv_bias", true)?,
            mamba_proj_bias: f.bool("mamba_proj_bias", false)?,
            rms_norm_eps: f.f64("rms_norm_eps", 1e-5)? as f32,
            max_position_embeddings: f.usize("max_position_embeddings", 4096)?,
            tie_word_embeddings: f.bool("tie_word_embeddings", true)?,
            bos_token_id: f.opt_usize("bos_token_id")?.map(|v| v as u32),
            eos_token_id: f.opt_usize("eos_token_id")?.map(|v| v as u32),
            pad_token_id: f.opt_usize("pad_token_id")?.map(|v| v as u32),
            layer_kinds: layer_plan(obj, num_hidden_layers, &f)?,
        };
        for (key, want) in [("hidden_act", "gelu"), ("hidden_mamba_act", "silu")] {
            if let Some(v) = obj.get(key) {
                if v.as_str() != Some(want) {
                    return Err(ZambaError::UnsupportedConfig(format!(
                        "{key} is {v}; only \"{want}\" is implemented"
                    )));
                }
            }
        }
        cfg.check()?;
        Ok(cfg)
    }

    /// Rejects sizes the kernels cannot run (zero sizes, heads that do not divide, ...).
    fn check(&self) -> Result<()> {
        let bad = |msg: String| Err(ZambaError::UnsupportedConfig(msg));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("n_mamba_heads", self.n_mamba_heads),
            ("mamba_d_state", self.mamba_d_state),
            ("mamba_d_conv", self.mamba_d_conv),
            ("mamba_expand", self.mamba_expand),
            ("mamba_dt_rank", self.mamba_dt_rank),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.attention_hidden_size != 2 * self.hidden_size {
            return bad(format!(
                "attention_hidden_size {} must be 2 × hidden_size ({}): the shared block's input is concat(h, e)",
                self.attention_hidden_size,
                2 * self.hidden_size
            ));
        }
        if self.d_inner() % self.n_mamba_heads != 0 {
            return bad(format!(
                "n_mamba_heads {} does not divide d_inner {}",
                self.n_mamba_heads,
                self.d_inner()
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_key_value_heads {} does not divide num_attention_heads {}",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        if self.mamba_d_state > 64 {
            return bad(format!(
                "mamba_d_state {} > 64 is not supported",
                self.mamba_d_state
            ));
        }
        if self.mamba_d_conv > 8 {
            return bad(format!("mamba_d_conv {} > 8 is not supported", self.mamba_d_conv));
        }
        if self.mamba_proj_bias {
            return bad("mamba_proj_bias = true is not supported (Zamba has no in/out_proj bias)".into());
        }
        if !self.mamba_conv_bias {
            return bad("mamba_conv_bias = false is not supported (Zamba's conv has a bias)".into());
        }
        if !self.rms_norm_eps.is_finite() || self.rms_norm_eps <= 0.0 {
            return bad(format!("rms_norm_eps {} must be positive", self.rms_norm_eps));
        }
        if self.vocab_size > i32::MAX as usize || self.hidden_size > 1 << 20 {
            return bad("sizes too large".into());
        }
        if self.hybrid_layers().is_empty() {
            return bad("the layer plan has no hybrid layer; Zamba has at least one".into());
        }
        Ok(())
    }

    /// Channels of the Mamba mixer: mamba_expand × hidden_size (7424).
    pub fn d_inner(&self) -> usize {
        self.mamba_expand * self.hidden_size
    }

    /// Channels per Mamba head: d_inner / n_mamba_heads (3712).
    pub fn mamba_head_dim(&self) -> usize {
        self.d_inner() / self.n_mamba_heads
    }

    /// Rows of each head's x_proj: dt_rank + 2 × d_state (264).
    pub fn x_proj_rows(&self) -> usize {
        self.mamba_dt_rank + 2 * self.mamba_d_state
    }

    /// Width of the query projection: heads × head_dim (7424).
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Width of the key (and value) projection: kv heads × head_dim.
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.attention_head_dim
    }

    /// The attention scale 1/sqrt(head_dim / 2) (ZAMBA.md 3.1: not 1/sqrt(head_dim)).
    pub fn attention_scale(&self) -> f32 {
        (self.attention_head_dim as f64 / 2.0).powf(-0.5) as f32
    }

    /// Global indices of the hybrid layers, in order.
    pub fn hybrid_layers(&self) -> Vec<usize> {
        (0..self.layer_kinds.len())
            .filter(|&i| self.layer_kinds[i] == LayerKind::Hybrid)
            .collect()
    }

    /// For each layer, the index of its hybrid use (0..13) if it is a hybrid layer.
    pub fn hybrid_slot(&self, layer: usize) -> Option<usize> {
        if self.layer_kinds.get(layer) != Some(&LayerKind::Hybrid) {
            return None;
        }
        Some(
            self.layer_kinds[..layer]
                .iter()
                .filter(|&&k| k == LayerKind::Hybrid)
                .count(),
        )
    }
}

/// The layer plan: `layers_block_type` (alias `layer_types`) when given, else HF's formula from
/// attn_layer_period and attn_layer_offset (ZAMBA.md section 1).
fn layer_plan(obj: &Map<String, Value>, n_layers: usize, f: &Fields) -> Result<Vec<LayerKind>> {
    let list = obj.get("layers_block_type").or_else(|| obj.get("layer_types"));
    if let Some(list) = list.filter(|v| !v.is_null()) {
        let arr = list.as_array().ok_or_else(|| ZambaError::ConfigParse {
            path: "config.json".into(),
            reason: "layers_block_type is not a list".into(),
        })?;
        if arr.len() != n_layers {
            return Err(ZambaError::UnsupportedConfig(format!(
                "layers_block_type has {} entries but num_hidden_layers is {n_layers}",
                arr.len()
            )));
        }
        return arr
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_str() {
                Some("mamba") | Some("linear_attention") => Ok(LayerKind::Mamba),
                Some("hybrid") => Ok(LayerKind::Hybrid),
                _ => Err(ZambaError::UnsupportedConfig(format!(
                    "layers_block_type[{i}] is {v}; expected \"mamba\", \"linear_attention\" or \"hybrid\""
                ))),
            })
            .collect();
    }
    let period = f.usize("attn_layer_period", 6)?;
    let offset = f.usize("attn_layer_offset", 4)?;
    if period == 0 {
        return Err(ZambaError::UnsupportedConfig(
            "attn_layer_period must be positive".into(),
        ));
    }
    if n_layers < 3 {
        return Err(ZambaError::UnsupportedConfig(format!(
            "num_hidden_layers {n_layers} < 3: HF's derived layer plan needs at least 3 layers"
        )));
    }
    let mut kinds = vec![LayerKind::Mamba, LayerKind::Mamba, LayerKind::Hybrid];
    kinds.extend((0..n_layers - 3).map(|i| {
        if i % period == offset {
            LayerKind::Hybrid
        } else {
            LayerKind::Mamba
        }
    }));
    Ok(kinds)
}

/// Typed access to optional JSON fields with defaults, with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn wrong(&self, key: &str, want: &str) -> ZambaError {
        ZambaError::ConfigParse {
            path: "config.json".into(),
            reason: format!("field {key} = {} is not {want}", self.0[key]),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.wrong(key, "a non-negative integer")),
        }
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(key)?.unwrap_or(default))
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(key, "a boolean")),
        }
    }

    fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(key, "a number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_zamba_7b() {
        let cfg = ZambaConfig::from_json_str(r#"{"model_type": "zamba"}"#).unwrap();
        assert_eq!(cfg.d_inner(), 7424);
        assert_eq!(cfg.mamba_head_dim(), 3712);
        assert_eq!(cfg.attention_head_dim, 464);
        assert_eq!(cfg.mamba_dt_rank, 232);
        assert_eq!(cfg.x_proj_rows(), 264);
        assert_eq!(
            cfg.hybrid_layers(),
            vec![2, 7, 13, 19, 25, 31, 37, 43, 49, 55, 61, 67, 73]
        );
        assert_eq!(cfg.hybrid_slot(13), Some(2));
        assert_eq!(cfg.hybrid_slot(14), None);
        assert!((cfg.attention_scale() - 0.065_653_22).abs() < 1e-7);
    }

    #[test]
    fn explicit_plan_in_either_spelling_and_gqa() {
        let list = |mamba: &str| {
            let kinds: Vec<String> = (0..5)
                .map(|i| format!("\"{}\"", if i == 2 { "hybrid" } else { mamba }))
                .collect();
            format!(
                r#"{{"model_type": "zamba", "num_hidden_layers": 5, "num_attention_heads": 16,
                    "num_key_value_heads": 4, "layers_block_type": [{}]}}"#,
                kinds.join(",")
            )
        };
        for spelling in ["mamba", "linear_attention"] {
            let cfg = ZambaConfig::from_json_str(&list(spelling)).unwrap();
            assert_eq!(cfg.hybrid_layers(), vec![2]);
            assert_eq!(cfg.kv_width(), 4 * 464);
        }
        let err = ZambaConfig::from_json_str(&list("attention"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("layers_block_type[0]"), "{err}");
        let err = ZambaConfig::from_json_str(r#"{"model_type": "zamba", "num_key_value_heads": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not divide num_attention_heads"), "{err}");
    }
}
