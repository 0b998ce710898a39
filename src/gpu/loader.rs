//! The model's weights in one device allocation, in the layouts the kernels want, filled either
//! from a checkpoint (mmap → pinned staging buffer → device: one host copy per byte) or with
//! random values generated on the device (for benchmarks without a checkpoint).
//!
//! Layout changes at load (ZAMBA.md 4.1 and section 7):
//! - in_proj rows are permuted to [x rows (even) ; z rows (odd)], so one GEMM yields contiguous x, z;
//! - q/k/v are stacked into one [Q + 2·KV, 2H] matrix, gate/up into one [2F, H];
//! - conv weights, conv bias, dt bias and D become fp32; A = -exp(A_log) is precomputed in fp32;
//! - norm weights stay bf16 (HF multiplies in bf16).

use half::bf16;

use super::device::Gpu;
use super::mem::{cu, DeviceBuf, PinnedBuf};
use crate::config::{LayerKind, ZambaConfig};
use crate::error::{Result, ZambaError};
use crate::safetensors_file::TensorRef;
use crate::weights::{linear_name, mamba_names, shared_names, Checkpoint, EMBED, FINAL_NORM};
use cudarc::driver::{result, sys};

/// Device addresses of one Mamba layer's weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct MambaW {
    pub ln: u64,
    pub in_proj: u64,
    pub conv_w: u64,
    pub conv_b: u64,
    pub x_proj: u64,
    pub dt_proj: u64,
    pub dt_bias: u64,
    pub a: u64,
    pub d: u64,
    pub out_proj: u64,
    /// The hybrid layer's `linear` (0 for Mamba-only layers).
    pub linear: u64,
}

/// Device addresses of the shared block.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedW {
    pub ln_in: u64,
    pub qkv: u64,
    pub o: u64,
    pub ln_ff: u64,
    pub gate_up: u64,
    pub down: u64,
}

/// All weights, in one allocation.
pub struct GpuWeights {
    _arena: DeviceBuf,
    pub embed: u64,
    pub lm_head: u64,
    pub final_norm: u64,
    pub layers: Vec<MambaW>,
    pub shared: SharedW,
    pub bytes: usize,
}

/// Element type of a device tensor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ty {
    Bf16,
    F32,
}

/// How a device tensor is filled.
#[derive(Clone, Debug)]
enum Src {
    /// Copy (or convert) the named checkpoint tensor.
    Tensor(String),
    /// in_proj with rows permuted to [even ; odd].
    Deinterleave(String),
    /// -exp(A_log), in fp32.
    NegExp(String),
    /// The named tensors one after the other (q/k/v, gate/up).
    Stack(Vec<String>),
}

/// One planned device tensor.
struct Slot {
    offset: usize,
    elems: usize,
    ty: Ty,
    src: Src,
    /// Random init: value = offset + scale·U(-1, 1).
    init: (f32, f32),
}

/// Assigns every tensor an offset in the arena (256-byte aligned).
struct Plan {
    slots: Vec<Slot>,
    size: usize,
}

impl Plan {
    fn add(&mut self, elems: usize, ty: Ty, src: Src, init: (f32, f32)) -> usize {
        let offset = self.size;
        let bytes = elems * if ty == Ty::Bf16 { 2 } else { 4 };
        self.size = (offset + bytes).div_ceil(256) * 256;
        self.slots.push(Slot {
            offset,
            elems,
            ty,
            src,
            init,
        });
        offset
    }
}

/// Offsets of everything, relative to the arena.
struct Offsets {
    embed: usize,
    lm_head: Option<usize>,
    final_norm: usize,
    layers: Vec<MambaW>,
    shared: SharedW,
}

fn plan(cfg: &ZambaConfig, shared_layer: usize, lm_head: Option<&str>) -> (Plan, Offsets) {
    let (h, di, nh, dh) = (
        cfg.hidden_size,
        cfg.d_inner(),
        cfg.n_mamba_heads,
        cfg.mamba_head_dim(),
    );
    let (n, r, k, xr) = (
        cfg.mamba_d_state,
        cfg.mamba_dt_rank,
        cfg.mamba_d_conv,
        cfg.x_proj_rows(),
    );
    let mut p = Plan {
        slots: Vec::new(),
        size: 0,
    };
    let t = |s: &str| Src::Tensor(s.to_string());
    // Random init (benchmarks and 7B-shape tests): uniform with std 1/sqrt(fan_in) for matrices,
    // the branches that feed the residual stream (out_proj, linear) scaled by 0.3, embeddings with
    // std 0.5 (the golden fixture's statistics; HF's std-0.02 init makes a deep random model
    // chaotic); norms 1 ± 0.2; A in [-16, -1]; D in [0.5, 1.5]; dt bias ≈ softplus⁻¹(0.001..0.03).
    let mat = |fan_in: usize| (0.0, (3.0 / fan_in as f32).sqrt());
    let branch = |fan_in: usize| (0.0, 0.3 * (3.0 / fan_in as f32).sqrt());
    let norm = (1.0, 0.2);
    let emb = (0.0, 0.5 * 3f32.sqrt());
    let embed = p.add(cfg.vocab_size * h, Ty::Bf16, t(EMBED), emb);
    let lm = lm_head.map(|name| p.add(cfg.vocab_size * h, Ty::Bf16, t(name), emb));
    let final_norm = p.add(h, Ty::Bf16, t(FINAL_NORM), norm);
    let mut layers = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        let nm = mamba_names(cfg, i);
        let mut w = MambaW {
            ln: p.add(h, Ty::Bf16, t(&nm.input_layernorm), norm) as u64,
            in_proj: p.add(
                2 * di * h,
                Ty::Bf16,
                Src::Deinterleave(nm.in_proj.clone()),
                mat(h),
            ) as u64,
            conv_w: p.add(di * k, Ty::F32, t(&nm.conv_weight), (0.0, 0.5)) as u64,
            conv_b: p.add(di, Ty::F32, t(&nm.conv_bias), (0.0, 0.25)) as u64,
            x_proj: p.add(nh * xr * dh, Ty::Bf16, t(&nm.x_proj), mat(dh)) as u64,
            dt_proj: p.add(nh * dh * r, Ty::Bf16, t(&nm.dt_proj), mat(r)) as u64,
            dt_bias: p.add(di, Ty::F32, t(&nm.dt_bias), (-5.3, 1.8)) as u64,
            a: p.add(di * n, Ty::F32, Src::NegExp(nm.a_log.clone()), (-8.5, 7.5)) as u64,
            d: p.add(di, Ty::F32, t(&nm.d), (1.0, 0.5)) as u64,
            out_proj: p.add(h * di, Ty::Bf16, t(&nm.out_proj), branch(di)) as u64,
            linear: 0,
        };
        if cfg.layer_kinds[i] == LayerKind::Hybrid {
            w.linear = p.add(h * h, Ty::Bf16, t(&linear_name(i)), branch(h)) as u64;
        }
        layers.push(w);
    }
    let s = shared_names(shared_layer);
    let (ah, q, kv, f) = (
        cfg.attention_hidden_size,
        cfg.q_width(),
        cfg.kv_width(),
        cfg.intermediate_size,
    );
    let shared = SharedW {
        ln_in: p.add(ah, Ty::Bf16, t(&s.input_layernorm), norm) as u64,
        qkv: p.add(
            (q + 2 * kv) * ah,
            Ty::Bf16,
            Src::Stack(vec![s.q_proj, s.k_proj, s.v_proj]),
            mat(ah),
        ) as u64,
        o: p.add(h * q, Ty::Bf16, t(&s.o_proj), mat(q)) as u64,
        ln_ff: p.add(h, Ty::Bf16, t(&s.pre_ff_layernorm), norm) as u64,
        gate_up: p.add(
            2 * f * h,
            Ty::Bf16,
            Src::Stack(vec![s.gate_proj, s.up_proj]),
            mat(h),
        ) as u64,
        down: p.add(h * f, Ty::Bf16, t(&s.down_proj), mat(f)) as u64,
    };
    let off = Offsets {
        embed,
        lm_head: lm,
        final_norm,
        layers,
        shared,
    };
    (p, off)
}

/// Bytes the weights of `cfg` take on the device.
pub fn weight_bytes(cfg: &ZambaConfig, tied: bool) -> usize {
    let (p, _) = plan(cfg, cfg.hybrid_layers()[0], (!tied).then_some("lm_head.weight"));
    p.size
}

impl GpuWeights {
    fn from_plan(arena: DeviceBuf, size: usize, o: Offsets) -> Self {
        let base = arena.ptr();
        let at = |off: u64| base + off;
        let layers = o
            .layers
            .iter()
            .map(|w| MambaW {
                ln: at(w.ln),
                in_proj: at(w.in_proj),
                conv_w: at(w.conv_w),
                conv_b: at(w.conv_b),
                x_proj: at(w.x_proj),
                dt_proj: at(w.dt_proj),
                dt_bias: at(w.dt_bias),
                a: at(w.a),
                d: at(w.d),
                out_proj: at(w.out_proj),
                linear: if w.linear == 0 { 0 } else { at(w.linear) },
            })
            .collect();
        let s = o.shared;
        GpuWeights {
            embed: at(o.embed as u64),
            lm_head: at(o.lm_head.unwrap_or(o.embed) as u64),
            final_norm: at(o.final_norm as u64),
            layers,
            shared: SharedW {
                ln_in: at(s.ln_in),
                qkv: at(s.qkv),
                o: at(s.o),
                ln_ff: at(s.ln_ff),
                gate_up: at(s.gate_up),
                down: at(s.down),
            },
            bytes: size,
            _arena: arena,
        }
    }

    /// Uploads a validated checkpoint. `progress(done, total)` is called as bytes arrive.
    pub fn load(gpu: &Gpu, ck: &Checkpoint, progress: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let lm = (ck.lm_head_name() != EMBED).then(|| ck.lm_head_name());
        let (plan, offsets) = plan(ck.config(), ck.shared_layer(), lm);
        check_free(gpu, plan.size, "the weights")?;
        let arena = DeviceBuf::new(plan.size, "the weights")?;
        let mut stager = Stager::new(gpu, 64 << 20)?;
        let mut done = 0;
        for slot in &plan.slots {
            let dst = arena.ptr() + slot.offset as u64;
            upload(&mut stager, ck, slot, dst)?;
            done += slot.elems * if slot.ty == Ty::Bf16 { 2 } else { 4 };
            progress(done, plan.size);
        }
        stager.finish()?;
        Ok(Self::from_plan(arena, plan.size, offsets))
    }

    /// Random weights with the real shapes, generated on the device (no checkpoint needed).
    pub fn random(gpu: &Gpu, cfg: &ZambaConfig, seed: u64) -> Result<Self> {
        let (plan, offsets) = plan(cfg, cfg.hybrid_layers()[0], None);
        check_free(gpu, plan.size, "the weights")?;
        let arena = DeviceBuf::new(plan.size, "the weights")?;
        for (i, slot) in plan.slots.iter().enumerate() {
            let dst = arena.ptr() + slot.offset as u64;
            let (off, scale) = slot.init;
            let s = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            match slot.ty {
                Ty::Bf16 => gpu.fill_uniform_bf16(dst, slot.elems, s, off, scale)?,
                Ty::F32 => gpu.fill_uniform_f32(dst, slot.elems, s, off, scale)?,
            }
        }
        gpu.sync()?;
        Ok(Self::from_plan(arena, plan.size, offsets))
    }
}

/// Fails with a clear message when `bytes` more than the free device memory are asked for.
pub fn check_free(gpu: &Gpu, bytes: usize, what: &str) -> Result<()> {
    let (free, total) = gpu.mem_info()?;
    if bytes > free {
        return Err(ZambaError::OutOfMemory(format!(
            "{what} need {:.2} GB but the GPU has {:.2} GB free (of {:.2} GB)",
            bytes as f64 / 1e9,
            free as f64 / 1e9,
            total as f64 / 1e9
        )));
    }
    Ok(())
}

/// Fills one planned tensor from the checkpoint through the staging buffers.
fn upload(st: &mut Stager, ck: &Checkpoint, slot: &Slot, dst: u64) -> Result<()> {
    match &slot.src {
        Src::Tensor(name) => {
            let t = ck.get(name)?;
            put_tensor(st, &t, slot.ty, dst)
        }
        Src::Stack(names) => {
            let mut at = dst;
            for name in names {
                let t = ck.get(name)?;
                put_tensor(st, &t, slot.ty, at)?;
                at += (t.numel() * 2) as u64;
            }
            Ok(())
        }
        Src::NegExp(name) => {
            let v: Vec<f32> = ck.get(name)?.to_f32()?.iter().map(|x| -x.exp()).collect();
            st.put_bytes(dst, bytemuck::cast_slice(&v))
        }
        Src::Deinterleave(name) => {
            // Destination row r comes from source row 2r (x half) or 2(r - rows/2) + 1 (z half).
            let t = ck.get(name)?;
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let row_bytes = cols * 2;
            let per = (st.capacity() / row_bytes).max(1);
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + per).min(rows);
                st.put_with(dst + (r0 * row_bytes) as u64, (r1 - r0) * row_bytes, |buf| {
                    par_fill(buf, row_bytes, |first, rows_out| {
                        for (k, out) in rows_out.chunks_mut(row_bytes).enumerate() {
                            let r = r0 + first + k;
                            let src = if r < rows / 2 {
                                2 * r
                            } else {
                                2 * (r - rows / 2) + 1
                            };
                            out.copy_from_slice(&t.bytes[src * row_bytes..(src + 1) * row_bytes]);
                        }
                    })
                })?;
                r0 = r1;
            }
            Ok(())
        }
    }
}

/// Copies (converting when needed) one checkpoint tensor to `dst` as `ty`.
fn put_tensor(st: &mut Stager, t: &TensorRef, ty: Ty, dst: u64) -> Result<()> {
    match (ty, t.dtype) {
        (Ty::Bf16, crate::safetensors_file::DType::BF16) => st.put_bytes(dst, t.bytes),
        (Ty::Bf16, _) => {
            let v: Vec<bf16> = t.to_bf16()?;
            st.put_bytes(dst, bytemuck::cast_slice(&v))
        }
        (Ty::F32, _) => {
            let v = t.to_f32()?;
            st.put_bytes(dst, bytemuck::cast_slice(&v))
        }
    }
}

/// Fills `buf` from several threads: `fill(first, part)` writes the part of `buf` that starts at
/// unit `first` (a unit is `unit` bytes; parts are whole units). One thread copying from the page
/// cache (faulting the mmap in as it goes) is what limited loading; the GPU machine has cores to
/// spare.
fn par_fill(buf: &mut [u8], unit: usize, fill: impl Fn(usize, &mut [u8]) + Sync) {
    let units = buf.len() / unit;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(buf.len().div_ceil(4 << 20))
        .max(1);
    if threads == 1 {
        fill(0, buf);
        return;
    }
    let per = units.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, part) in buf.chunks_mut(per * unit).enumerate() {
            let fill = &fill;
            s.spawn(move || fill(i * per, part));
        }
    });
}

/// Two pinned buffers used in turn: the host fills one while the other's copy runs.
struct Stager<'g> {
    gpu: &'g Gpu,
    bufs: [PinnedBuf; 2],
    events: [sys::CUevent; 2],
    next: usize,
}

impl<'g> Stager<'g> {
    fn new(gpu: &'g Gpu, bytes: usize) -> Result<Self> {
        let ev = || {
            cu(
                "creating an event",
                result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING),
            )
        };
        Ok(Stager {
            gpu,
            bufs: [PinnedBuf::new(bytes)?, PinnedBuf::new(bytes)?],
            events: [ev()?, ev()?],
            next: 0,
        })
    }

    fn capacity(&self) -> usize {
        self.bufs[0].as_slice().len()
    }

    /// Stages `len` bytes written by `fill`, then copies them to `dst` asynchronously.
    fn put_with(&mut self, dst: u64, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<()> {
        let i = self.next;
        self.next ^= 1;
        // SAFETY: the event was created in new() and recorded (or never recorded, which counts as
        // complete); waiting for it means the last copy out of this buffer has finished.
        cu("waiting for a staging copy", unsafe {
            result::event::synchronize(self.events[i])
        })?;
        let buf = &mut self.bufs[i].as_mut_slice()[..len];
        fill(buf);
        self.gpu.htod(buf, dst)?;
        // SAFETY: the event and stream are live.
        cu("recording an event", unsafe {
            result::event::record(self.events[i], self.gpu.cu_stream())
        })
    }

    /// Copies arbitrary bytes, in pieces of at most one buffer.
    fn put_bytes(&mut self, dst: u64, bytes: &[u8]) -> Result<()> {
        for (k, piece) in bytes.chunks(self.capacity()).enumerate() {
            self.put_with(dst + (k * self.capacity()) as u64, piece.len(), |b| {
                par_fill(b, 1, |first, out| {
                    out.copy_from_slice(&piece[first..first + out.len()])
                })
            })?;
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.gpu.sync()
    }
}

impl Drop for Stager<'_> {
    fn drop(&mut self) {
        // SAFETY: the pinned buffers must not be freed while a copy reads them: wait first. The
        // events were created in new() and are destroyed exactly once.
        let _ = self.gpu.sync();
        for e in self.events {
            unsafe {
                let _ = result::event::destroy(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{par_fill, plan, Src};
    use crate::weights::{expected_tensors, LM_HEAD};
    use crate::ZambaConfig;

    /// The device layout (`plan`) and the validation list (`weights::expected_tensors`) enumerate
    /// the same tensors in two places: every tensor the plan reads must be validated, with the
    /// element count the plan copies, and every validated tensor must be read.
    #[test]
    fn device_plan_reads_exactly_the_validated_tensors() {
        let zamba = ZambaConfig::from_json_str(r#"{"model_type": "zamba"}"#).unwrap();
        let gqa = ZambaConfig::from_json_str(
            r#"{"model_type": "zamba", "num_hidden_layers": 12, "num_key_value_heads": 4}"#,
        )
        .unwrap();
        for (cfg, shared, lm) in [(&zamba, 4, None), (&gqa, 5, Some(LM_HEAD))] {
            let (p, _) = plan(cfg, shared, lm);
            let want: std::collections::BTreeMap<String, usize> = expected_tensors(cfg, shared, lm.is_some())
                .into_iter()
                .map(|t| (t.name, t.shape.iter().product()))
                .collect();
            let mut read = std::collections::BTreeMap::new();
            for slot in &p.slots {
                let names: Vec<&String> = match &slot.src {
                    Src::Tensor(n) | Src::Deinterleave(n) | Src::NegExp(n) => vec![n],
                    Src::Stack(ns) => ns.iter().collect(),
                };
                let total: usize = names.iter().map(|n| want.get(*n).copied().unwrap_or(0)).sum();
                assert_eq!(total, slot.elems, "elements of the slot reading {names:?}");
                for n in names {
                    assert!(want.contains_key(n), "{n} is read but never validated");
                    read.insert(n.clone(), ());
                }
            }
            let unread: Vec<&String> = want.keys().filter(|n| !read.contains_key(*n)).collect();
            assert!(unread.is_empty(), "validated but never loaded: {unread:?}");
        }
    }

    #[test]
    fn par_fill_writes_every_unit_once_in_place() {
        // 20 MB of 7-byte units (so parts split at unit boundaries that are not powers of two),
        // plus a small buffer that stays on one thread.
        for (len, unit) in [(20_000_003 * 7, 7), (1000, 1)] {
            let mut buf = vec![0u8; len];
            par_fill(&mut buf, unit, |first, part| {
                assert_eq!(part.len() % unit, 0, "parts are whole units");
                for (k, b) in part.iter_mut().enumerate() {
                    let i = first * unit + k;
                    *b = (i % 251) as u8 + 1;
                }
            });
            let bad = buf
                .iter()
                .enumerate()
                .position(|(i, &b)| b != (i % 251) as u8 + 1);
            assert_eq!(bad, None, "byte {bad:?} of {len}");
        }
    }
}
