//! Bad inputs must come back as a clear `Err` (or a clean non-zero exit of `zamba-run`) that names
//! the file or tensor and what is wrong: never a panic, never a vague message.
//!
//! Every case damages a copy of the tiny-a fixture inside its own temp folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use zamba::cpu::CpuModel;
use zamba::model::{Logits, Model, SeqInput};
use zamba::safetensors_file::{DType, SafetensorsFile};
use zamba::weights::Checkpoint;
use zamba::ZambaError;

const D0: &str = "model.layers.0.mamba.D";
const IN_PROJ0: &str = "model.layers.0.mamba.in_proj.weight";
const IN_PROJ1: &str = "model.layers.1.mamba.in_proj.weight";
const FINAL_NORM: &str = "model.final_layernorm.weight";

/// One tensor to write: name, dtype, shape and its raw little-endian bytes.
struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// A temp folder that is removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        Scratch(common::temp_dir(&format!("errors-{name}")))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A temp folder holding copies of tiny-a's config.json and model.safetensors.
fn copy_fixture(name: &str) -> Scratch {
    let dir = Scratch::new(name);
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(common::tiny_a().join(file), dir.join(file)).expect(file);
    }
    dir
}

/// Writes `tensors` as a safetensors file with the `safetensors` crate.
fn write_safetensors(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect(&t.name);
            (t.name.as_str(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("serialize");
}

/// Every tensor of tiny-a's model.safetensors, in name order.
fn fixture_tensors() -> Vec<Tensor> {
    let f = SafetensorsFile::open(&common::tiny_a().join("model.safetensors")).expect("fixture");
    f.tensors()
        .keys()
        .map(|name| {
            let t = f.get(name).expect(name);
            let dtype = match t.dtype {
                DType::BF16 => Dtype::BF16,
                DType::F16 => Dtype::F16,
                DType::F32 => Dtype::F32,
                DType::I32 => Dtype::I32,
                DType::I64 => Dtype::I64,
                DType::Other(s) => panic!("fixture tensor {name} has dtype {s}"),
            };
            Tensor {
                name: name.clone(),
                dtype,
                shape: t.shape.to_vec(),
                bytes: t.bytes.to_vec(),
            }
        })
        .collect()
}

fn take(tensors: &mut Vec<Tensor>, name: &str) -> Tensor {
    let i = tensors.iter().position(|t| t.name == name).expect(name);
    tensors.remove(i)
}

fn find<'a>(tensors: &'a mut [Tensor], name: &str) -> &'a mut Tensor {
    tensors.iter_mut().find(|t| t.name == name).expect(name)
}

/// Re-stores a BF16 tensor as F32 (exact: the same values, twice the bytes).
fn bf16_to_f32(t: &mut Tensor) {
    assert_eq!(t.dtype, Dtype::BF16, "{}", t.name);
    t.bytes = t
        .bytes
        .chunks_exact(2)
        .flat_map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes())
        .collect();
    t.dtype = Dtype::F32;
}

/// Drops the last row of a 2-D tensor, keeping its bytes consistent with the new shape.
fn drop_last_row(t: &mut Tensor) {
    assert_eq!(t.shape.len(), 2, "{}", t.name);
    let row_bytes = t.bytes.len() / t.shape[0];
    t.shape[0] -= 1;
    t.bytes.truncate(t.shape[0] * row_bytes);
}

/// A checkpoint folder with tiny-a's config and `tensors` as its model.safetensors.
fn checkpoint_with(name: &str, tensors: &[Tensor]) -> Scratch {
    let dir = Scratch::new(name);
    std::fs::copy(common::tiny_a().join("config.json"), dir.join("config.json")).expect("config.json");
    write_safetensors(&dir.join("model.safetensors"), tensors);
    dir
}

/// tiny-a's config.json with `edit` applied, written into a copy of the fixture.
fn fixture_with_config(name: &str, edit: impl FnOnce(&mut Value)) -> Scratch {
    let dir = copy_fixture(name);
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let mut cfg: Value = serde_json::from_str(&text).expect("fixture config is JSON");
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).expect("write config.json");
    dir
}

/// The error of `Checkpoint::open(dir)`; fails the test if the folder opens.
fn open_err(dir: &Path) -> ZambaError {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("Checkpoint::open({}) succeeded on a bad input", dir.display()),
        Err(e) => e,
    }
}

/// Asserts that `msg` contains every one of `parts`.
fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in the message:\n{msg}");
    }
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// ---- 1, 2: folders and config.json ----------------------------------------------------------

#[test]
fn missing_model_folder() {
    let dir = Scratch::new("missing-folder");
    let gone = dir.join("no-such-model");
    let e = open_err(&gone);
    assert!(matches!(e, ZambaError::NotFound { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["model folder not found", &path_str(&gone)]);
}

#[test]
fn folder_without_config_json() {
    let dir = copy_fixture("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::NotFound { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["config.json not found", &path_str(&dir.join("config.json"))],
    );
}

#[test]
fn folder_without_weights() {
    let dir = copy_fixture("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::NotFound { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["model.safetensors", "not found", &path_str(dir.path())],
    );
}

// ---- 3: bad configs -------------------------------------------------------------------------

#[test]
fn config_not_json() {
    let dir = copy_fixture("config-not-json");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"zamba\", oops").unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::ConfigParse { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["not valid JSON", &path_str(&dir.join("config.json"))],
    );
}

#[test]
fn config_wrong_model_type() {
    let dir = fixture_with_config("config-llama", |c| c["model_type"] = json!("llama"));
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::UnsupportedConfig(_)), "{e:?}");
    assert_mentions(&e.to_string(), &["model_type", "\"llama\"", "\"zamba\""]);
}

#[test]
fn config_unsupported_activation() {
    let dir = fixture_with_config("config-relu", |c| c["hidden_act"] = json!("relu"));
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::UnsupportedConfig(_)), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["unsupported config", "hidden_act", "relu", "\"gelu\""],
    );
}

#[test]
fn config_mamba_heads_do_not_divide_d_inner() {
    // tiny-a: hidden 64, expand 2 → d_inner 128, which 3 heads do not divide.
    let dir = fixture_with_config("config-heads", |c| c["n_mamba_heads"] = json!(3));
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::UnsupportedConfig(_)), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &["n_mamba_heads 3", "does not divide", "d_inner 128"],
    );
}

#[test]
fn config_field_of_wrong_type() {
    let dir = fixture_with_config("config-type", |c| c["hidden_size"] = json!("big"));
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::ConfigParse { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            &path_str(&dir.join("config.json")),
            "hidden_size",
            "not a non-negative integer",
        ],
    );
}

// ---- 4, 5: broken safetensors files --------------------------------------------------------

#[test]
fn truncated_safetensors_half() {
    let dir = copy_fixture("truncated-half");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Safetensors { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &[&path_str(&path), "past the end", "truncated"]);
}

#[test]
fn truncated_safetensors_five_bytes() {
    let dir = copy_fixture("truncated-5");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..5]).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Safetensors { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &[&path_str(&path), "truncated", "5 bytes"]);
}

#[test]
fn truncated_safetensors_inside_header() {
    let dir = copy_fixture("truncated-header");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..100]).unwrap();
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Safetensors { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[&path_str(&path), "truncated", "the header declares"],
    );
}

#[test]
fn data_offsets_past_the_end() {
    let dir = copy_fixture("offsets-past-end");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = &bytes[8 + header_len..];
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    // The tensor keeps its begin offset; its end now lies 4 bytes past the data region.
    header[D0]["data_offsets"][1] = json!(data.len() + 4);
    let new_header = serde_json::to_vec(&header).unwrap();
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&new_header);
    out.extend_from_slice(data);
    std::fs::write(&path, out).unwrap();

    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Safetensors { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            &path_str(&path),
            &format!("tensor {D0}"),
            "past the end",
            &format!("({} bytes)", data.len()),
        ],
    );
}

// ---- 6, 7: tensors that do not match the config ---------------------------------------------

#[test]
fn missing_tensor() {
    let mut tensors = fixture_tensors();
    take(&mut tensors, D0);
    let dir = checkpoint_with("missing-tensor", &tensors);
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Checkpoint { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            &path_str(dir.path()),
            "1 problem(s)",
            &format!("missing tensor {D0}"),
            "expected shape [2, 64]",
        ],
    );
}

#[test]
fn missing_tensor_and_wrong_shape_listed_together() {
    let mut tensors = fixture_tensors();
    take(&mut tensors, D0);
    drop_last_row(find(&mut tensors, IN_PROJ1));
    let dir = checkpoint_with("two-problems", &tensors);
    let e = open_err(dir.path());
    let msg = e.to_string();
    assert_mentions(
        &msg,
        &[
            "2 problem(s)",
            &format!("missing tensor {D0}"),
            &format!("tensor {IN_PROJ1}: shape [255, 64], expected [256, 64]"),
        ],
    );
    // One problem per line.
    assert_eq!(msg.lines().count(), 3, "{msg}");
}

#[test]
fn tensor_of_wrong_shape() {
    let mut tensors = fixture_tensors();
    drop_last_row(find(&mut tensors, IN_PROJ0));
    let dir = checkpoint_with("wrong-shape", &tensors);
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Checkpoint { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[
            &format!("tensor {IN_PROJ0}"),
            "shape [255, 64]",
            "expected [256, 64]",
        ],
    );
}

#[test]
fn gemm_weight_stored_as_f32() {
    let mut tensors = fixture_tensors();
    bf16_to_f32(find(&mut tensors, IN_PROJ0));
    let dir = checkpoint_with("gemm-f32", &tensors);
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Checkpoint { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[&format!("tensor {IN_PROJ0}: dtype F32, expected BF16")],
    );
}

#[test]
fn small_tensor_stored_as_f32_is_accepted() {
    let mut tensors = fixture_tensors();
    bf16_to_f32(find(&mut tensors, FINAL_NORM));
    let dir = checkpoint_with("norm-f32", &tensors);
    let ck = match Checkpoint::open(dir.path()) {
        Ok(ck) => ck,
        Err(e) => panic!("an F32 {FINAL_NORM} must be accepted: {e}"),
    };
    assert_eq!(*ck.get(FINAL_NORM).unwrap().dtype, DType::F32);
    let mut model = match CpuModel::load(&ck, 1, None) {
        Ok(m) => m,
        Err(e) => panic!("CpuModel::load with an F32 {FINAL_NORM}: {e}"),
    };
    // bf16 → f32 is exact, so the logits equal those of the original checkpoint.
    let reference = Checkpoint::open(&common::tiny_a()).expect("tiny-a");
    let mut reference = CpuModel::load(&reference, 1, None).expect("tiny-a CPU model");
    let batch = [SeqInput {
        slot: 0,
        tokens: &[1, 500, 31999],
    }];
    let got = model.forward(&batch, Logits::Last).expect("forward");
    let want = reference.forward(&batch, Logits::Last).expect("forward");
    assert_eq!(got, want);
}

// ---- 8: bad token input to the model -------------------------------------------------------

fn tiny_cpu_model() -> CpuModel {
    let ck = Checkpoint::open(&common::tiny_a()).expect("tiny-a");
    CpuModel::load(&ck, 1, None).expect("tiny-a CPU model")
}

fn forward_err(model: &mut CpuModel, batch: &[SeqInput]) -> String {
    match model.forward(batch, Logits::Last) {
        Ok(_) => panic!("forward accepted a bad batch"),
        Err(e) => {
            assert!(matches!(e, ZambaError::InvalidInput(_)), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn token_id_out_of_range() {
    let mut model = tiny_cpu_model();
    let msg = forward_err(
        &mut model,
        &[SeqInput {
            slot: 0,
            tokens: &[1, 32000, 5],
        }],
    );
    assert_mentions(
        &msg,
        &["token id 32000 is out of range", "the vocabulary has 32000 ids"],
    );
    // Nothing was fed: the slot is still empty and a good batch still runs.
    assert_eq!(model.seq_len(0), 0);
    let ok = model.forward(
        &[SeqInput {
            slot: 0,
            tokens: &[1],
        }],
        Logits::Last,
    );
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn empty_token_list() {
    let mut model = tiny_cpu_model();
    let msg = forward_err(&mut model, &[SeqInput { slot: 0, tokens: &[] }]);
    assert_mentions(&msg, &["batch entry 0", "no tokens"]);
    let msg = forward_err(&mut model, &[]);
    assert_mentions(&msg, &["empty batch"]);
}

// ---- 9: the zamba-run command line ---------------------------------------------------------

/// Runs `zamba-run logits --device cpu` with `model`, `input`, `key` and `out`. The binary is the
/// one cargo built, or `ZAMBA_RUN_BIN` (the GPU machine runs copies from another folder).
fn run_logits(model: &Path, input: &Path, key: &str, out: &Path) -> Output {
    let exe = std::env::var("ZAMBA_RUN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_zamba-run").to_string());
    Command::new(exe)
        .arg("logits")
        .args(["--device", "cpu", "--key", key])
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .expect("zamba-run starts")
}

/// Asserts a clean failure: non-zero exit, no panic, and `parts` on stderr. Returns stderr.
fn assert_clean_failure(out: &Output, parts: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "zamba-run succeeded; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "zamba-run panicked:\n{stderr}");
    assert_mentions(&stderr, parts);
    stderr
}

/// An input file with I64 `ids` [1, 3] and F32 `floats` [1, 3].
fn ids_file(dir: &Scratch) -> PathBuf {
    let path = dir.join("ids.safetensors");
    let ids: Vec<u8> = [1i64, 500, 31999].iter().flat_map(|v| v.to_le_bytes()).collect();
    let floats: Vec<u8> = [1f32, 500.0, 31999.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_safetensors(
        &path,
        &[
            Tensor {
                name: "ids".into(),
                dtype: Dtype::I64,
                shape: vec![1, 3],
                bytes: ids,
            },
            Tensor {
                name: "floats".into(),
                dtype: Dtype::F32,
                shape: vec![1, 3],
                bytes: floats,
            },
        ],
    );
    path
}

#[test]
fn cli_logits_missing_key() {
    let dir = Scratch::new("cli-key");
    let input = ids_file(&dir);
    let out = dir.join("logits.safetensors");
    let res = run_logits(&common::tiny_a(), &input, "nope", &out);
    assert_clean_failure(
        &res,
        &[
            "error: invalid input",
            &path_str(&input),
            "no tensor named \"nope\"",
            "\"ids\"",
        ],
    );
    assert!(!out.exists(), "no output may be written on failure");

    // Control: the same command line with the right key works.
    let res = run_logits(&common::tiny_a(), &input, "ids", &out);
    assert!(
        res.status.success(),
        "zamba-run logits --key ids failed:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(out.is_file());
}

#[test]
fn cli_logits_key_of_wrong_dtype() {
    let dir = Scratch::new("cli-dtype");
    let input = ids_file(&dir);
    let out = dir.join("logits.safetensors");
    let res = run_logits(&common::tiny_a(), &input, "floats", &out);
    assert_clean_failure(&res, &["tensor floats has dtype F32", "I64"]);
    assert!(!out.exists());
}

#[test]
fn cli_logits_missing_model() {
    let dir = Scratch::new("cli-model");
    let input = ids_file(&dir);
    let out = dir.join("logits.safetensors");
    let res = run_logits(Path::new("/does/not/exist"), &input, "ids", &out);
    assert_clean_failure(&res, &["model folder not found", "/does/not/exist"]);
    assert!(!out.exists());
}

// ---- 10: sharded checkpoints ---------------------------------------------------------------

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

/// Writes model.safetensors.index.json mapping each (tensor, file).
fn write_index<'a>(dir: &Scratch, map: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let weight_map: serde_json::Map<String, Value> =
        map.into_iter().map(|(n, f)| (n.to_string(), json!(f))).collect();
    let index = json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// A folder with tiny-a's config and its tensors split over two shards: `model.layers.0.*` in
/// shard 2, the rest in shard 1. No index yet.
fn sharded_fixture(name: &str) -> (Scratch, Vec<String>, Vec<String>) {
    let dir = Scratch::new(name);
    std::fs::copy(common::tiny_a().join("config.json"), dir.join("config.json")).unwrap();
    let (second, first): (Vec<Tensor>, Vec<Tensor>) = fixture_tensors()
        .into_iter()
        .partition(|t| t.name.starts_with("model.layers.0."));
    write_safetensors(&dir.join(SHARD1), &first);
    write_safetensors(&dir.join(SHARD2), &second);
    let names = |ts: &[Tensor]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    (dir, names(&first), names(&second))
}

#[test]
fn shard_index_names_missing_file() {
    let (dir, first, second) = sharded_fixture("shard-missing");
    std::fs::remove_file(dir.join(SHARD2)).unwrap();
    write_index(
        &dir,
        first
            .iter()
            .map(|n| (n.as_str(), SHARD1))
            .chain(second.iter().map(|n| (n.as_str(), SHARD2))),
    );
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::NotFound { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["not found", &path_str(&dir.join(SHARD2))]);
}

#[test]
fn shard_index_points_to_wrong_file() {
    let (dir, first, second) = sharded_fixture("shard-wrong");
    // Control: the honest index opens.
    write_index(
        &dir,
        first
            .iter()
            .map(|n| (n.as_str(), SHARD1))
            .chain(second.iter().map(|n| (n.as_str(), SHARD2))),
    );
    if let Err(e) = Checkpoint::open(dir.path()) {
        panic!("the correct two-shard checkpoint must open: {e}");
    }
    // Now the index claims that shard 1 holds a tensor that lives in shard 2.
    write_index(
        &dir,
        first.iter().map(|n| (n.as_str(), SHARD1)).chain(
            second
                .iter()
                .map(|n| (n.as_str(), if n == D0 { SHARD1 } else { SHARD2 })),
        ),
    );
    let e = open_err(dir.path());
    assert!(matches!(e, ZambaError::Checkpoint { .. }), "{e:?}");
    assert_mentions(
        &e.to_string(),
        &[&format!(
            "the index puts {D0} in {SHARD1}, which does not hold it"
        )],
    );
}
