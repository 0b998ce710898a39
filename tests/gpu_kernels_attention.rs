//! Attention with the KV cache against the CPU reference at Zamba-7B's sizes: 16 query heads of
//! 464 over 16 kv heads or 4 (GQA), a 4096-position cache. kv_append, then flash prefill (lengths
//! 1 to 2049, fresh and continuing after up to 1349 cached positions, lengths and pasts that are
//! multiples of neither the query block nor the key tile) or split-key decode (up to 2049 keys);
//! the prefill cases but the 2049-token prompt again with each flash kernel forced (wgmma, and
//! mma.sync with 64- and 32-key tiles). Inputs are random bf16 values, the same on both sides.
//! Skips (and says so) on a machine without a GPU.

mod common;

use common::gpu::{batch_buffers, down_bf16, entries, poisoned, up_bf16, BF16_RTOL, HD, NA};
use common::{assert_close, gpu_or_skip, Rng};
use zamba::cpu::attention::causal_attention;
use zamba::gpu::attention::{self, Dims, Scratch};
use zamba::gpu::device::FlashKernel;
use zamba::gpu::mem::DeviceBuf;
use zamba::gpu::Gpu;

/// Writes random keys/values for the `past` positions of each entry's slot and NaN at every later
/// position (so that a kernel reading a cache row it should not, or multiplying it by a zero
/// weight, fails), appends the new rows through kv_append, then checks prefill or decode
/// attention against the CPU.
fn attention_case(g: &Gpu, nkv: usize, spec: &[(usize, usize, usize)], seed: u64) {
    let mut rng = Rng(seed);
    let ctx = 4096;
    let slots = 4;
    let (q, kvw) = (NA * HD, nkv * HD);
    let ld = q + 2 * kvw;
    let es = entries(spec);
    let m: usize = es.iter().map(|e| e.len).sum();
    let decode = es.iter().all(|e| e.len == 1);
    let qkv = rng.bf16_vec(m * ld, -1.0, 1.0);
    let mut kc = rng.bf16_vec(slots * kvw * ctx, -1.0, 1.0);
    let mut vc = rng.bf16_vec(slots * kvw * ctx, -1.0, 1.0);
    for e in &es {
        for gi in 0..nkv {
            let head = ((e.slot * nkv + gi) * ctx) * HD;
            kc[head + e.past * HD..head + ctx * HD].fill(f32::NAN);
            vc[head + e.past * HD..head + ctx * HD].fill(f32::NAN);
        }
    }
    let (dqkv, dk, dv) = (up_bf16(g, &qkv), up_bf16(g, &kc), up_bf16(g, &vc));
    let bb = batch_buffers(g, &es);
    g.kv_append(dqkv.ptr(), ld, q, &bb.meta, dk.ptr(), dv.ptr(), m, nkv, HD, ctx)
        .unwrap();
    let dims = Dims {
        na: NA,
        nkv,
        hd: HD,
        ldqkv: ld,
        ctx,
        scale: (HD as f32 / 2.0).powf(-0.5),
    };
    let splits = ctx / 128;
    let (pa, pm) = (
        poisoned(g, 4 * NA * splits * HD * 4),
        poisoned(g, 4 * NA * splits * 2 * 4),
    );
    let count = DeviceBuf::zeroed(slots * NA * 4, "split counts").unwrap();
    let scratch = Scratch {
        part_acc: pa.ptr(),
        part_ml: pm.ptr(),
        split_len: 128,
        count: count.ptr(),
    };
    let out = poisoned(g, m * q * 2);
    // Decode runs twice: with just enough key splits, and with every split of the context (what
    // a captured CUDA graph uses), whose extra splits see no keys; both must agree exactly.
    let mut got_all_splits = None;
    if decode {
        let max_keys = es.iter().map(|e| e.past + 1).max().unwrap();
        for n_splits in [splits, max_keys.div_ceil(128)] {
            attention::decode(
                g,
                &dims,
                dqkv.ptr(),
                dk.ptr(),
                dv.ptr(),
                &bb.meta,
                &scratch,
                n_splits,
                m,
                out.ptr(),
            )
            .unwrap();
            if n_splits == splits {
                got_all_splits = Some(down_bf16(g, out.ptr(), m * q));
            }
        }
    } else {
        for e in &es {
            attention::prefill(g, &dims, dqkv.ptr(), e, dk.ptr(), dv.ptr(), out.ptr()).unwrap();
        }
    }
    let got = down_bf16(g, out.ptr(), m * q);
    if let Some(all) = got_all_splits {
        assert_eq!(all, got, "decode with empty key splits");
        // The last block of each (sequence, head) left its split count at zero for the next call.
        let mut counts = vec![1u32; slots * NA];
        g.dtoh(count.ptr(), &mut counts).unwrap();
        assert!(counts.iter().all(|&c| c == 0), "split counts reset: {counts:?}");
    }
    let got_k = down_bf16(g, dk.ptr(), slots * kvw * ctx);
    for e in &es {
        // The cache as the CPU wants it: [positions, NKV·HD], old positions then the new rows.
        let n_pos = e.past + e.len;
        let (mut kk, mut vv) = (vec![0f32; n_pos * kvw], vec![0f32; n_pos * kvw]);
        for p in 0..n_pos {
            for gi in 0..nkv {
                for dd in 0..HD {
                    let (kv_k, kv_v) = if p < e.past {
                        let i = ((e.slot * nkv + gi) * ctx + p) * HD + dd;
                        (kc[i], vc[i])
                    } else {
                        let row = e.start + p - e.past;
                        (
                            qkv[row * ld + q + gi * HD + dd],
                            qkv[row * ld + q + kvw + gi * HD + dd],
                        )
                    };
                    kk[p * kvw + gi * HD + dd] = kv_k;
                    vv[p * kvw + gi * HD + dd] = kv_v;
                    if p >= e.past {
                        assert_eq!(
                            got_k[((e.slot * nkv + gi) * ctx + p) * HD + dd],
                            kv_k,
                            "kv_append wrote the key"
                        );
                    }
                }
            }
        }
        let qe: Vec<f32> = (0..e.len)
            .flat_map(|t| qkv[(e.start + t) * ld..(e.start + t) * ld + q].to_vec())
            .collect();
        let want = causal_attention(&qe, e.len, &kk, &vv, n_pos, NA, nkv, HD, dims.scale);
        let what = format!(
            "attention {} nkv {nkv} len {} past {}",
            if decode { "decode" } else { "prefill" },
            e.len,
            e.past
        );
        // Prefill rounds P to bf16 (as HF's eager path does): allow a little more than one ulp.
        assert_close(
            &what,
            &got[e.start * q..(e.start + e.len) * q],
            &want,
            2e-3,
            2.0 * BF16_RTOL,
        );
    }
}

#[test]
fn attention_prefill_and_decode_with_kv_cache() {
    let Some(g) = gpu_or_skip("attention") else {
        return;
    };
    // Prefill: fresh sequences, a continuation (chunked prefill) and a long one.
    attention_case(&g, NA, &[(2, 1, 0), (0, 7, 5), (3, 333, 100), (1, 700, 1349)], 5);
    // A long prompt (33 query blocks of the flash kernel, the last one with a single query), and
    // continuations whose length and past are multiples of neither the query block (64) nor the
    // key tile (len 64·k + 1, past 32·k + 31).
    attention_case(
        &g,
        NA,
        &[(0, 2049, 0), (3, 65, 31), (2, 129, 95), (1, 193, 127)],
        9,
    );
    // Decode: one query each, up to 2049 keys.
    attention_case(&g, NA, &[(1, 1, 2048), (3, 1, 332), (0, 1, 0)], 6);
    // GQA: 16 query heads over 4 kv heads.
    attention_case(&g, 4, &[(0, 9, 3), (2, 200, 57), (1, 130, 95)], 7);
    attention_case(&g, 4, &[(0, 1, 129), (2, 1, 1000)], 8);
}

/// The 4-warp flash-decoding kernel (what batches of more than a few sequences run) on the
/// decode cases above, which run the 8-warp one.
#[test]
fn attention_decode_4_warps() {
    let Some(mut g) = gpu_or_skip("flash-decoding with 4 warps") else {
        return;
    };
    g.decode_4_warps = true;
    attention_case(&g, NA, &[(1, 1, 2048), (3, 1, 332), (0, 1, 0)], 6);
    attention_case(&g, 4, &[(0, 1, 129), (2, 1, 1000)], 8);
}

/// The prefill cases above, with the flash kernel forced: `k64` and `k32` are the mma.sync kernels
/// (what GPUs other than the H100/H200 run; the test above runs the wgmma one there), `wgmma` runs
/// where it can (compute capability 9.0).
fn prefill_with(kernel: FlashKernel, what: &str) {
    let Some(mut g) = gpu_or_skip(what) else {
        return;
    };
    g.flash = kernel;
    if kernel == FlashKernel::Wgmma && !g.sm90a {
        eprintln!("{what}: skipped, the GPU is not of compute capability 9.0");
        return;
    }
    attention_case(&g, NA, &[(2, 1, 0), (0, 7, 5), (3, 333, 100), (1, 700, 1349)], 5);
    attention_case(&g, NA, &[(3, 65, 31), (2, 129, 95), (1, 193, 127)], 9);
    attention_case(&g, 4, &[(0, 9, 3), (2, 200, 57), (1, 130, 95)], 7);
}

#[test]
fn attention_prefill_32_key_tiles() {
    prefill_with(FlashKernel::Mma32, "attention with 32-key tiles");
}

#[test]
fn attention_prefill_64_key_tiles() {
    prefill_with(FlashKernel::Mma64, "attention with 64-key mma.sync tiles");
}

#[test]
fn attention_prefill_wgmma() {
    prefill_with(FlashKernel::Wgmma, "attention with the wgmma kernel");
}
