//! The decode step of the CUDA engine: replaying it as a CUDA graph gives exactly what launching
//! its kernels one by one gives, and once the graph exists a step allocates nothing on the host
//! (counted per thread by this test binary's global allocator); the replay-timing diagnostic
//! leaves its slots empty and the engine usable. Skips without a GPU.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{have_gpu, tiny_a};
use zamba::gpu::{GpuModel, GpuOptions};
use zamba::model::{Logits, Model, SeqInput};
use zamba::weights::Checkpoint;

/// Counts the allocations of each thread (the engine's included), so that tests running in
/// parallel do not see each other's.
struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn tiny(slots: usize) -> GpuModel {
    let ck = Checkpoint::open(&tiny_a()).unwrap();
    let opts = GpuOptions {
        slots,
        max_context: Some(256),
        ..Default::default()
    };
    GpuModel::load(&ck, opts, &mut |_, _| {}).unwrap()
}

/// Prefills three prompts of different lengths, then decodes `steps` greedy steps in one batch;
/// returns every step's logits and tokens.
fn run(m: &mut GpuModel, steps: usize) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|s| {
            (0..5 + 11 * s)
                .map(|i| ((i * 37 + s * 101) % 31990 + 5) as u32)
                .collect()
        })
        .collect();
    for s in 0..3 {
        m.reset(s).unwrap();
    }
    let batch: Vec<SeqInput> = prompts
        .iter()
        .enumerate()
        .map(|(slot, p)| SeqInput { slot, tokens: p })
        .collect();
    let mut next = m.forward_greedy(&batch).unwrap();
    let (mut all_logits, mut all_ids) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let batch: Vec<SeqInput> = toks
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqInput { slot, tokens: t })
            .collect();
        let logits = m.forward(&batch, Logits::Last).unwrap();
        next = logits.iter().map(|l| zamba::model::argmax(l)).collect();
        all_logits.push(logits.concat());
        all_ids.push(next.clone());
    }
    (all_logits, all_ids)
}

#[test]
fn graph_replay_equals_eager_launches() {
    if !have_gpu("decode graph") {
        return;
    }
    let mut m = tiny(3);
    m.set_use_graphs(false);
    let (eager_logits, eager_ids) = run(&mut m, 12);
    m.set_use_graphs(true);
    let (graph_logits, graph_ids) = run(&mut m, 12);
    assert_eq!(eager_ids, graph_ids, "greedy tokens");
    for (step, (e, g)) in eager_logits.iter().zip(&graph_logits).enumerate() {
        assert!(e.iter().all(|x| x.is_finite()), "finite logits at step {step}");
        assert_eq!(e, g, "decode step {step}: the graph must launch the same kernels");
    }
    // The greedy path through the graph agrees with the argmax of the logits path.
    let (_, ids_again) = run(&mut m, 12);
    assert_eq!(ids_again, graph_ids);
}

#[test]
fn decode_step_allocates_nothing() {
    if !have_gpu("decode allocations") {
        return;
    }
    let mut m = tiny(2);
    let v = m.config().vocab_size;
    let prompt: Vec<u32> = (0..17).map(|i| (i * 13 + 7) as u32).collect();
    let mut next = [0u32; 2];
    m.forward_greedy_into(
        &[
            SeqInput {
                slot: 0,
                tokens: &prompt,
            },
            SeqInput {
                slot: 1,
                tokens: &prompt[..9],
            },
        ],
        &mut next,
    )
    .unwrap();
    let mut logits = vec![0f32; 2 * v];
    // Warm up: the first step of a batch size captures its graph (that allocates).
    let step = |m: &mut GpuModel, next: &mut [u32; 2], logits: &mut [f32], greedy: bool| {
        let (a, b) = ([next[0]], [next[1]]);
        let batch = [SeqInput { slot: 0, tokens: &a }, SeqInput { slot: 1, tokens: &b }];
        if greedy {
            m.forward_greedy_into(&batch, next).unwrap();
        } else {
            m.forward_last_into(&batch, logits).unwrap();
        }
    };
    step(&mut m, &mut next, &mut logits, true);
    let before = allocs();
    for i in 0..16 {
        step(&mut m, &mut next, &mut logits, i % 2 == 0);
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "allocations in 16 decode steps");
    assert_eq!(m.seq_len(0), 17 + 17);
    assert_eq!(m.seq_len(1), 9 + 17);
    assert!(logits.iter().all(|x| x.is_finite()) && logits.iter().any(|&x| x != 0.0));
}

#[test]
fn replay_timing_needs_a_captured_step_and_leaves_its_slots_empty_and_usable() {
    if !have_gpu("decode replay timing") {
        return;
    }
    let mut m = tiny(3);
    assert_eq!(
        m.time_decode_replays(3, 4).unwrap(),
        None,
        "no decode step has run yet"
    );
    let (_, ids) = run(&mut m, 4);
    assert_eq!(
        m.time_decode_replays(2, 4).unwrap(),
        None,
        "no step of 2 entries has run"
    );
    let t = m
        .time_decode_replays(3, 8)
        .unwrap()
        .expect("the 3-entry step ran through a graph");
    assert!(t.is_finite() && t > 0.0, "seconds per replay: {t}");
    for s in 0..3 {
        assert_eq!(m.seq_len(s), 0, "slot {s} is reset after the replays");
    }
    // Nothing else the step uses (the attention's split counts, the grid-barrier counter) is left
    // out of step: the same prompts decode to the same tokens again.
    let (_, again) = run(&mut m, 4);
    assert_eq!(again, ids);
}
