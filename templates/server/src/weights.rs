//! GGUF weights: the file is memory-mapped and every tensor is a typed view
//! into the map (never copied to the heap).
//!
//! Parsing uses `ggus`'s bounds-checked `GGufReader` primitives. The higher
//! level `ggus::GGuf::new` is not used because it panics on a truncated file
//! and reads enum tags without validating them; here every tag, offset and
//! size is checked, and a bad file is a [`WeightsError`] naming the tensor.

use crate::kernels::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::kernels::{MatRef, WeightData};
use ggus::{GGufReadError, GGufReader};
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failure to load weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header or tensor table is malformed or cut short.
    #[error("{path} is not a valid GGUF v3 file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A tensor the model needs is absent.
    #[error("tensor `{name}` is missing from the GGUF file")]
    Missing {
        /// Tensor name.
        name: String,
    },
    /// A tensor's type or shape differs from what the plan expects.
    #[error("tensor `{name}`: expected {expected}, found {found}")]
    Mismatch {
        /// Tensor name.
        name: String,
        /// What the plan expects.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// A tensor's data runs past the end of the file or is misaligned.
    #[error(
        "tensor `{name}`: data {range:?} does not fit the {file_len}-byte file (or is misaligned)"
    )]
    Truncated {
        /// Tensor name.
        name: String,
        /// Byte range the tensor claims.
        range: Range<usize>,
        /// File length.
        file_len: usize,
    },
    /// A metadata value differs from the plan.
    #[error("metadata `{key}`: expected {expected}, found {found}")]
    Metadata {
        /// The key.
        key: String,
        /// What the plan expects.
        expected: String,
        /// What the file holds (or "missing").
        found: String,
    },
}

/// Element types this engine reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// ggml `Q4_0`.
    Q4_0,
    /// ggml `Q4_1`.
    Q4_1,
    /// ggml `Q8_0`.
    Q8_0,
    /// Any other ggml type id (loadable only if no required tensor uses it).
    Other(u32),
}

impl DType {
    /// From ggml's type id.
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// Bytes for `n` elements (`None` for unknown types or partial blocks).
    fn bytes(self, n: usize) -> Option<usize> {
        let (per_block, block_bytes) = match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, size_of::<BlockQ4_0>()),
            Self::Q4_1 => (QK, size_of::<BlockQ4_1>()),
            Self::Q8_0 => (QK, size_of::<BlockQ8_0>()),
            Self::Other(_) => return None,
        };
        n.is_multiple_of(per_block)
            .then(|| n / per_block * block_bytes)
    }
}

/// One tensor's entry in the file's table.
#[derive(Clone, Debug)]
struct Entry {
    dtype: DType,
    /// GGUF dims order: innermost first.
    dims: Vec<usize>,
    /// Absolute byte range in the file.
    range: Range<usize>,
}

/// A memory-mapped GGUF file and its tensor table.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: Tensors,
    meta: MetaOffsets,
}

/// A validated tensor: a typed view into the map, kept alive by an `Arc`.
#[derive(Clone)]
pub struct Weight {
    map: Arc<Mmap>,
    dtype: DType,
    range: Range<usize>,
    rows: usize,
    cols: usize,
}

impl GgufFile {
    /// Maps `path` and reads its tensor table.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap user we assume the
        // file is not truncated by another process while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (tensors, meta) = parse(&map).map_err(|why| WeightsError::Format {
            path: path.to_owned(),
            why,
        })?;
        let file_len = map.len();
        for (name, e) in &tensors {
            if e.range.end > file_len || e.range.start % 32 != 0 {
                return Err(WeightsError::Truncated {
                    name: name.clone(),
                    range: e.range.clone(),
                    file_len,
                });
            }
        }
        Ok(Self {
            path: path.to_owned(),
            map: Arc::new(map),
            tensors,
            meta,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole mapped file (for readers of other metadata, e.g. the tokenizer).
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The metadata value of `key` as an unsigned integer, if present and integral.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        let (ty, mut r) = self.meta_value(key)?;
        match ty {
            4 => r.read::<u32>().ok().map(u64::from),
            10 => r.read::<u64>().ok(),
            _ => None,
        }
    }

    /// The metadata value of `key` as an f32, if present and a float.
    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        let (ty, mut r) = self.meta_value(key)?;
        (ty == 6).then(|| r.read::<f32>().ok()).flatten()
    }

    /// The metadata value of `key` as a string, if present and a string.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        let (ty, mut r) = self.meta_value(key)?;
        (ty == 8).then(|| r.read_str().ok()).flatten()
    }

    /// Type tag and a reader at the value of `key`.
    fn meta_value(&self, key: &str) -> Option<(u32, GGufReader<'_>)> {
        let mut r = GGufReader::new(&self.map[*self.meta.get(key)?..]);
        r.read_str().ok()?;
        let ty = r.read::<u32>().ok()?;
        Some((ty, r))
    }

    /// Names of all tensors in the file.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `name` as a `rows × cols` matrix (GGUF dims `[cols, rows]`,
    /// or `[cols]` with `rows == 1`) of one of `dtypes`.
    pub fn matrix(
        &self,
        name: &str,
        dtypes: &[DType],
        rows: usize,
        cols: usize,
    ) -> Result<Weight, WeightsError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::Missing {
                name: name.to_owned(),
            })?;
        let want_dims: Vec<usize> = if rows == 1 {
            vec![cols]
        } else {
            vec![cols, rows]
        };
        if e.dims != want_dims || !dtypes.contains(&e.dtype) {
            return Err(WeightsError::Mismatch {
                name: name.to_owned(),
                expected: format!("{dtypes:?} with dims {want_dims:?}"),
                found: format!("{:?} with dims {:?}", e.dtype, e.dims),
            });
        }
        let w = Weight {
            map: Arc::clone(&self.map),
            dtype: e.dtype,
            range: e.range.clone(),
            rows,
            cols,
        };
        w.try_mat().map_err(|err| WeightsError::Mismatch {
            name: name.to_owned(),
            expected: format!("a readable {dtypes:?} matrix"),
            found: err.to_string(),
        })?;
        Ok(w)
    }

    /// Checks that metadata `key` equals the plan's value.
    pub fn expect_meta(&self, key: &str, expected: f64) -> Result<(), WeightsError> {
        let found = self
            .meta_u64(key)
            .map(|v| v as f64)
            .or_else(|| self.meta_f32(key).map(f64::from));
        match found {
            Some(v) if (v - expected).abs() <= expected.abs() * 1e-6 => Ok(()),
            other => Err(WeightsError::Metadata {
                key: key.to_owned(),
                expected: expected.to_string(),
                found: other.map_or("missing".to_owned(), |v| v.to_string()),
            }),
        }
    }
}

impl Weight {
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor as a matrix view for the kernels.
    pub fn mat(&self) -> MatRef<'_> {
        self.try_mat()
            .expect("type and shape were checked by `GgufFile::matrix`")
    }

    /// The matrix view, or why this tensor cannot be one.
    fn try_mat(&self) -> Result<MatRef<'_>, crate::kernels::KernelError> {
        let bytes = &self.map[self.range.clone()];
        let data = match self.dtype {
            DType::F32 => WeightData::F32(cast(bytes)),
            DType::F16 => WeightData::F16(cast::<f16>(bytes)),
            DType::BF16 => WeightData::BF16(cast::<bf16>(bytes)),
            DType::Q4_0 => WeightData::Q4_0(cast(bytes)),
            DType::Q4_1 => WeightData::Q4_1(cast(bytes)),
            DType::Q8_0 => WeightData::Q8_0(cast(bytes)),
            DType::Other(id) => return Err(crate::kernels::KernelError::UnsupportedType(id)),
        };
        MatRef::new(data, self.rows, self.cols)
    }

    /// The tensor as f32 values (only for F32 tensors such as norms; else empty).
    pub fn f32s(&self) -> &[f32] {
        match self.dtype {
            DType::F32 => cast(&self.map[self.range.clone()]),
            _ => &[],
        }
    }
}

/// Reinterprets validated tensor bytes (32-byte aligned, whole elements).
fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> &[T] {
    bytemuck::cast_slice(bytes)
}

/// Tensor table by name.
type Tensors = HashMap<String, Entry>;
/// Byte offset of each metadata key-value pair, by key.
type MetaOffsets = HashMap<String, usize>;

/// Reads the header, metadata offsets and tensor table.
fn parse(map: &[u8]) -> Result<(Tensors, MetaOffsets), String> {
    let eos = |e: GGufReadError| format!("{e:?} (file cut short?)");
    let mut r = GGufReader::new(map);
    let header = r.read_header().map_err(eos)?;
    if !header.is_magic_correct() || header.version != 3 {
        return Err(format!(
            "bad magic or version {} (want GGUF v3)",
            header.version
        ));
    }
    let mut meta = HashMap::new();
    let mut alignment = 32usize;
    for _ in 0..header.metadata_kv_count {
        let at = map.len() - r.remaining().len();
        let key = r.read_str().map_err(eos)?.to_owned();
        let ty = r.read::<u32>().map_err(eos)?;
        if key == "general.alignment" && ty == 4 {
            alignment = GGufReader::new(r.remaining()).read::<u32>().map_err(eos)? as usize;
        }
        skip_value(&mut r, ty, 1)?;
        meta.insert(key, at);
    }
    let mut infos = Vec::new();
    for _ in 0..header.tensor_count {
        let name = r.read_str().map_err(eos)?.to_owned();
        let ndim = r.read::<u32>().map_err(eos)?;
        let dims = (0..ndim)
            .map(|_| r.read::<u64>().map(|d| d as usize))
            .collect::<Result<Vec<_>, _>>()
            .map_err(eos)?;
        let dtype = DType::from_id(r.read::<u32>().map_err(eos)?);
        let offset = r.read::<u64>().map_err(eos)? as usize;
        infos.push((name, dims, dtype, offset));
    }
    let cursor = map.len() - r.remaining().len();
    let data_start = cursor.div_ceil(alignment.max(1)) * alignment.max(1);
    let mut tensors = HashMap::new();
    for (name, dims, dtype, offset) in infos {
        let n: usize = dims.iter().product();
        let len = dtype.bytes(n).unwrap_or(0);
        let start = data_start + offset;
        tensors.insert(
            name,
            Entry {
                dtype,
                dims,
                range: start..start + len,
            },
        );
    }
    Ok((tensors, meta))
}

/// Skips `n` metadata values of type tag `ty`.
fn skip_value(r: &mut GGufReader<'_>, ty: u32, n: usize) -> Result<(), String> {
    let eos = |e: GGufReadError| format!("{e:?} (file cut short?)");
    let fixed = match ty {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        10..=12 => 8,   // u64, i64, f64
        8 => {
            for _ in 0..n {
                r.read_str().map_err(eos)?;
            }
            return Ok(());
        }
        9 => {
            for _ in 0..n {
                let inner = r.read::<u32>().map_err(eos)?;
                let len = r.read::<u64>().map_err(eos)? as usize;
                skip_value(r, inner, len)?;
            }
            return Ok(());
        }
        other => return Err(format!("unknown metadata type tag {other}")),
    };
    for _ in 0..n * fixed {
        r.read::<u8>().map_err(eos)?;
    }
    Ok(())
}
