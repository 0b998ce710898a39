//! One safetensors file, mmapped, with its header parsed and every offset checked up front.
//!
//! Layout: 8 bytes little-endian header length `n`, `n` bytes of JSON, then the data region. Each
//! tensor's `data_offsets` are relative to the data region. [`SafetensorsFile::open`] checks that the
//! header fits in the file, that every tensor's byte range lies inside the data region, and that the
//! range's length equals shape × dtype size, so that [`SafetensorsFile::bytes`] can never read out of
//! bounds. Tensor data is not aligned inside the file: callers copy bytes, they never cast in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::Value;

use crate::error::{Result, ZambaError};

/// Element types this crate reads. Others are kept by name so that errors can report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DType {
    BF16,
    F16,
    F32,
    I32,
    I64,
    /// Any dtype string this crate has no use for ("F64", "U8", ...).
    Other(String),
}

impl DType {
    fn parse(s: &str) -> Self {
        match s {
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "F32" => DType::F32,
            "I32" => DType::I32,
            "I64" => DType::I64,
            other => DType::Other(other.to_string()),
        }
    }

    /// Bytes per element, when known.
    pub fn size(&self) -> Option<usize> {
        match self {
            DType::BF16 | DType::F16 => Some(2),
            DType::F32 | DType::I32 => Some(4),
            DType::I64 => Some(8),
            DType::Other(s) => match s.as_str() {
                "F64" | "U64" => Some(8),
                "U32" => Some(4),
                "I16" | "U16" => Some(2),
                "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => Some(1),
                _ => None,
            },
        }
    }

    /// True for the float types that convert to f32 exactly.
    pub fn is_float(&self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DType::BF16 => f.write_str("BF16"),
            DType::F16 => f.write_str("F16"),
            DType::F32 => f.write_str("F32"),
            DType::I32 => f.write_str("I32"),
            DType::I64 => f.write_str("I64"),
            DType::Other(s) => f.write_str(s),
        }
    }
}

/// Where one tensor lives in its file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file, checked to lie inside it.
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements (product of the shape).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A borrowed tensor: metadata plus its raw little-endian bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: &'a DType,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts a float tensor to f32 (exact for BF16/F16/F32).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        self.convert_into(&mut out, |x| x)?;
        Ok(out)
    }

    /// Converts a float tensor to bf16 (a plain copy for BF16; F32 and F16 are rounded to nearest).
    pub fn to_bf16(&self) -> Result<Vec<bf16>> {
        let mut out = vec![bf16::ZERO; self.numel()];
        self.write_bf16(&mut out)?;
        Ok(out)
    }

    /// Writes the tensor as bf16 into `dst` (`dst.len()` must equal numel): the one copy from the
    /// mmap into a staging buffer.
    pub fn write_bf16(&self, dst: &mut [bf16]) -> Result<()> {
        if *self.dtype == DType::BF16 && dst.len() == self.numel() {
            bytemuck::cast_slice_mut::<bf16, u8>(dst).copy_from_slice(self.bytes);
            return Ok(());
        }
        self.convert_into(dst, bf16::from_f32)
    }

    fn convert_into<T>(&self, dst: &mut [T], from_f32: impl Fn(f32) -> T) -> Result<()> {
        if dst.len() != self.numel() {
            return Err(ZambaError::InvalidInput(format!(
                "tensor {}: destination holds {} elements, tensor has {}",
                self.name,
                dst.len(),
                self.numel()
            )));
        }
        match self.dtype {
            DType::BF16 => {
                for (d, c) in dst.iter_mut().zip(self.bytes.chunks_exact(2)) {
                    *d = from_f32(bf16::from_le_bytes([c[0], c[1]]).to_f32());
                }
            }
            DType::F16 => {
                for (d, c) in dst.iter_mut().zip(self.bytes.chunks_exact(2)) {
                    *d = from_f32(f16::from_le_bytes([c[0], c[1]]).to_f32());
                }
            }
            DType::F32 => {
                for (d, c) in dst.iter_mut().zip(self.bytes.chunks_exact(4)) {
                    *d = from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                }
            }
            other => {
                return Err(ZambaError::InvalidInput(format!(
                    "tensor {} has dtype {other}, expected a float type",
                    self.name
                )))
            }
        }
        Ok(())
    }

    /// Reads an integer tensor (I64 or I32) as i64.
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match self.dtype {
            DType::I64 => Ok(self
                .bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect()),
            DType::I32 => Ok(self
                .bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("chunk of 4")) as i64)
                .collect()),
            other => Err(ZambaError::InvalidInput(format!(
                "tensor {} has dtype {other}, expected I64 or I32 token ids",
                self.name
            ))),
        }
    }
}

/// An open, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    tensors: BTreeMap<String, TensorInfo>,
}

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsFile {
    /// Opens and mmaps `path`, then checks its header and every tensor's byte range.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ZambaError::io("safetensors file", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ZambaError::io("safetensors file", path, e))?
            .len();
        let bad = |reason: String| ZambaError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        if len < 8 {
            return Err(bad(format!(
                "truncated: the file has {len} bytes, fewer than the 8-byte header length"
            )));
        }
        // SAFETY: the map is read-only and private to this process. The one way this can go wrong
        // is another process truncating or rewriting the file while it is mapped, which the
        // safetensors format (and every loader of it) assumes does not happen. All reads go through
        // ranges checked against the map's length below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ZambaError::io("safetensors file", path, e))?;
        // Tensors are read front to back, once: let the kernel read ahead (advice only; a failure
        // changes nothing but speed).
        let _ = map.advise(memmap2::Advice::Sequential);
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER {
            return Err(bad(format!(
                "header length {header_len} exceeds the 100 MB limit"
            )));
        }
        if 8 + header_len > len {
            return Err(bad(format!(
                "truncated: the header declares {header_len} bytes but the file has only {} after the length",
                len - 8
            )));
        }
        let data_start = 8 + header_len as usize;
        let data_len = map.len() - data_start;
        let header: Value = serde_json::from_slice(&map[8..data_start])
            .map_err(|e| bad(format!("the header is not valid JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| bad("the header is not a JSON object".into()))?;
        let mut tensors = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let info = parse_entry(name, v, data_start, data_len).map_err(bad)?;
            tensors.insert(name.clone(), info);
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// One tensor's info and bytes, if present.
    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let (name, info) = self.tensors.get_key_value(name)?;
        Some(TensorRef {
            name,
            dtype: &info.dtype,
            shape: &info.shape,
            // In bounds: `parse_entry` checked the range against the data region of this map.
            bytes: &self.map[info.range.clone()],
        })
    }
}

/// Parses one header entry and checks its byte range against the data region.
fn parse_entry(
    name: &str,
    v: &Value,
    data_start: usize,
    data_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let dtype = v
        .get("dtype")
        .and_then(Value::as_str)
        .map(DType::parse)
        .ok_or_else(|| format!("tensor {name}: missing or non-string dtype"))?;
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor {name}: missing shape"))?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("tensor {name}: shape entries must be non-negative integers"))?;
    let offs = v
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
        .ok_or_else(|| format!("tensor {name}: data_offsets must be two non-negative integers"))?;
    let (begin, end) = offs;
    if begin > end {
        return Err(format!(
            "tensor {name}: data_offsets [{begin}, {end}) are reversed"
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor {name}: data_offsets [{begin}, {end}) point past the end of the data ({data_len} bytes): the file is truncated or its header lies"
        ));
    }
    if let Some(size) = dtype.size() {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let want = numel.and_then(|n| n.checked_mul(size));
        if want != Some(end - begin) {
            return Err(format!(
                "tensor {name}: {dtype} {shape:?} needs {} bytes but data_offsets span {}",
                want.map_or("too many".to_string(), |w| w.to_string()),
                end - begin
            ));
        }
    }
    Ok(TensorInfo {
        dtype,
        shape,
        range: data_start + begin..data_start + end,
    })
}
