//! The fp32 CPU reference against HF transformers' golden outputs on tests/fixtures/tiny-a.

mod common;

use common::{diff, golden, golden_ids, tiny_a};
use zamba::cpu::CpuModel;
use zamba::generate::greedy_batch;
use zamba::model::{Logits, Model, SeqInput};
use zamba::weights::Checkpoint;

fn model(slots: usize) -> CpuModel {
    let ck = Checkpoint::open(&tiny_a()).expect("open tiny-a");
    CpuModel::load(&ck, slots, None).expect("load tiny-a")
}

#[test]
fn logits_and_hidden_states_match_hf_fp32() {
    let g = golden();
    let ids = golden_ids(&g, "generated_ids");
    let gl = g.get("logits").unwrap().to_f32().unwrap();
    let mut m = model(1);
    let (v, h) = (m.config().vocab_size, m.config().hidden_size);
    let seq = ids[0].len();
    for (b, row) in ids.iter().enumerate() {
        m.reset(0).unwrap();
        let trace = m.forward_traced(0, row).unwrap();
        let want = &gl[b * seq * v..(b + 1) * seq * v];
        let (max, mean) = diff(&trace.logits, want);
        println!("seq {b}: logits max abs {max:.2e}, mean {mean:.2e}");
        assert!(max <= 5e-3, "seq {b}: logits max abs diff {max} > 5e-3");
        assert_eq!(trace.hidden.len(), 14);
        for (i, hs) in trace.hidden.iter().enumerate() {
            let gh = g.get(&format!("hidden_states.{i}")).unwrap().to_f32().unwrap();
            let want = &gh[b * seq * h..(b + 1) * seq * h];
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
            let (max, _) = diff(hs, want);
            assert!(
                max <= 1e-4 * scale.max(1.0),
                "seq {b}: hidden_states.{i} max abs diff {max} (scale {scale})"
            );
        }
    }
}

#[test]
fn greedy_decoding_with_caches_reproduces_generated_ids() {
    let g = golden();
    let prompts = golden_ids(&g, "input_ids");
    let want = golden_ids(&g, "generated_ids");
    let mut m = model(2);
    // Both sequences share each forward: a batched prefill, then batched one-token decode steps.
    let got = greedy_batch(&mut m, &prompts, want[0].len() - prompts[0].len()).unwrap();
    assert_eq!(got, want);
    assert_eq!(m.seq_len(0), want[0].len() - 1);
}

#[test]
fn chunked_prefill_equals_one_shot_prefill() {
    let g = golden();
    let row = &golden_ids(&g, "generated_ids")[1];
    let mut m = model(2);
    let full = m
        .forward(&[SeqInput { slot: 0, tokens: row }], Logits::All)
        .unwrap()
        .remove(0);
    let v = m.config().vocab_size;
    // Chunks of 5, 1, 9 and the rest: crosses the conv window (K-1 = 3) and the attention cache.
    let mut got = Vec::new();
    let mut start = 0;
    for len in [5, 1, 9, row.len() - 15] {
        let chunk = &row[start..start + len];
        got.extend(
            m.forward(
                &[SeqInput {
                    slot: 1,
                    tokens: chunk,
                }],
                Logits::All,
            )
            .unwrap()
            .remove(0),
        );
        start += len;
    }
    assert_eq!(got.len(), row.len() * v);
    let (max, _) = diff(&got, &full);
    assert!(max <= 1e-4, "chunked vs one-shot: max abs diff {max}");
}

#[test]
fn prompt_past_the_context_limit_is_an_error() {
    let ck = Checkpoint::open(&tiny_a()).unwrap();
    let mut m = CpuModel::load(&ck, 1, Some(8)).unwrap();
    let err = m
        .forward(
            &[SeqInput {
                slot: 0,
                tokens: &[1; 9],
            }],
            Logits::Last,
        )
        .unwrap_err();
    assert!(err.to_string().contains("past the context limit of 8"), "{err}");
    m.forward(
        &[SeqInput {
            slot: 0,
            tokens: &[1; 8],
        }],
        Logits::Last,
    )
    .unwrap();
    let err = m
        .forward(
            &[SeqInput {
                slot: 0,
                tokens: &[1],
            }],
            Logits::Last,
        )
        .unwrap_err();
    assert!(err.to_string().contains("9 tokens"), "{err}");
}

#[test]
fn token_ids_past_the_vocabulary_are_an_error() {
    let mut m = model(1);
    let err = m
        .forward(
            &[SeqInput {
                slot: 0,
                tokens: &[1, 32000],
            }],
            Logits::Last,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("token id 32000 is out of range"),
        "{err}"
    );
    assert_eq!(m.seq_len(0), 0, "a rejected batch must not change the state");
}

#[test]
fn shared_block_may_live_under_any_single_hybrid_layer() {
    // Rename model.layers.2.shared_transf.* to model.layers.7.shared_transf.* (the other hybrid
    // layer): the model must load it from there and compute the same logits.
    let src = zamba::safetensors_file::SafetensorsFile::open(&tiny_a().join("model.safetensors")).unwrap();
    let dir = common::temp_dir("shared-at-7");
    std::fs::copy(tiny_a().join("config.json"), dir.join("config.json")).unwrap();
    let owned: Vec<(String, zamba::safetensors_file::TensorRef)> = src
        .tensors()
        .keys()
        .map(|k| {
            (
                k.replace("layers.2.shared_transf.", "layers.7.shared_transf."),
                src.get(k).unwrap(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, t)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, t.shape.to_vec(), t.bytes)
                .unwrap();
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let ck = Checkpoint::open(&dir).unwrap();
    assert_eq!(ck.shared_layer(), 7);
    let mut moved = CpuModel::load(&ck, 1, None).unwrap();
    let mut orig = model(1);
    let tokens = [1u32, 500, 900, 31000];
    let a = moved
        .forward(
            &[SeqInput {
                slot: 0,
                tokens: &tokens,
            }],
            Logits::All,
        )
        .unwrap();
    let b = orig
        .forward(
            &[SeqInput {
                slot: 0,
                tokens: &tokens,
            }],
            Logits::All,
        )
        .unwrap();
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}
