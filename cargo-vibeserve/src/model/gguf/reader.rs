//! A small reader of the GGUF container (versions 2 and 3): header, metadata key/values and
//! tensor infos. It reads through a buffer, never trusts a length before checking it against
//! the file size, and reports truncation and bad type tags as errors rather than panicking.
//!
//! Layout (all little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64;
//! then each key/value as (string key, u32 type, value); then each tensor as (string name,
//! u32 n_dims, n_dims × u64 dims, u32 ggml type, u64 offset); then padding to
//! `general.alignment` and the tensor data. A string is a u64 length and UTF-8 bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::ggml_type::{self, GgmlType};
use crate::model::ModelError;

/// The alignment of the tensor data when `general.alignment` is absent (GGUF spec).
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; a deeper nesting than this is a corrupt file, not a model.
const MAX_ARRAY_DEPTH: usize = 4;

/// One metadata value as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Describes the value's type for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::U8(_) | Self::U16(_) | Self::U32(_) | Self::U64(_) => "an unsigned integer",
            Self::I8(_) | Self::I16(_) | Self::I32(_) | Self::I64(_) => "a signed integer",
            Self::F32(_) | Self::F64(_) => "a float",
            Self::Bool(_) => "a bool",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
        }
    }
}

/// One tensor info record, its type resolved.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub name: String,
    pub ty: GgmlType,
    /// Dimensions, innermost first, as GGUF stores them.
    pub shape: Vec<u64>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

/// The parsed header of a GGUF file.
#[derive(Debug)]
pub(crate) struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    pub kvs: BTreeMap<String, Value>,
    pub tensors: Vec<RawTensor>,
}

/// Read and check the header of the GGUF file at `path`, including that every tensor's
/// data lies inside the file.
pub(crate) fn read(path: &Path) -> Result<GgufFile, ModelError> {
    let file = File::open(path).map_err(ModelError::io("cannot open", path))?;
    let len = file
        .metadata()
        .map_err(ModelError::io("cannot stat", path))?
        .len();
    let mut r = Reader {
        inner: BufReader::new(file),
        pos: 0,
        len,
        path: path.to_owned(),
    };

    let magic = r.magic()?;
    if &magic != b"GGUF" {
        return Err(ModelError::NotGguf {
            path: r.path,
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let version = r.u32("the GGUF version")?;
    if !(2..=3).contains(&version) {
        return Err(ModelError::UnsupportedVersion {
            path: r.path,
            version,
        });
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;

    let mut kvs = BTreeMap::new();
    for _ in 0..kv_count {
        let at = r.pos;
        let key = r.string("a metadata key")?;
        let value = r.tagged_value(&key, 0)?;
        if kvs.insert(key.clone(), value).is_some() {
            return Err(r.malformed(at, format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match kvs.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 => u64::from(*a),
        Some(other) => return Err(r.malformed(0, format!("`general.alignment` is {other:?}"))),
    };

    let mut tensors = Vec::new();
    for _ in 0..tensor_count {
        tensors.push(r.tensor_info()?);
    }
    let data_offset = r.pos.div_ceil(alignment) * alignment;
    for tensor in &tensors {
        let end = data_offset
            .checked_add(tensor.offset)
            .and_then(|o| o.checked_add(tensor.n_bytes));
        match end {
            Some(end) if end <= len => {}
            needed => {
                let what = format!("the data of tensor `{}`", tensor.name);
                return Err(ModelError::Truncated {
                    path: r.path,
                    what,
                    needed: needed.unwrap_or(u64::MAX),
                    len,
                });
            }
        }
    }
    Ok(GgufFile {
        version,
        alignment,
        data_offset,
        kvs,
        tensors,
    })
}

/// A buffered reader that knows the file's length, so it can refuse impossible lengths
/// before allocating for them.
struct Reader {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl Reader {
    fn malformed(&self, offset: u64, reason: String) -> ModelError {
        ModelError::Malformed {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    /// Fail with `Truncated` unless `n` more bytes are in the file.
    fn need(&self, n: u64, what: &str) -> Result<(), ModelError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            end => Err(ModelError::Truncated {
                path: self.path.clone(),
                what: what.to_owned(),
                needed: end.unwrap_or(u64::MAX),
                len: self.len,
            }),
        }
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        self.need(N as u64, what)?;
        let mut buf = [0; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(ModelError::io("cannot read", &self.path))?;
        self.pos += N as u64;
        Ok(buf)
    }

    /// The first four bytes, or fewer if the file is shorter (then it is not GGUF either).
    fn magic(&mut self) -> Result<Vec<u8>, ModelError> {
        let mut magic = Vec::with_capacity(4);
        (&mut self.inner)
            .take(4)
            .read_to_end(&mut magic)
            .map_err(ModelError::io("cannot read", &self.path))?;
        self.pos = magic.len() as u64;
        Ok(magic)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let at = self.pos;
        let n = self.u64(what)?;
        self.need(n, what)?;
        let mut buf = Vec::new();
        (&mut self.inner)
            .take(n)
            .read_to_end(&mut buf)
            .map_err(ModelError::io("cannot read", &self.path))?;
        self.pos += n;
        String::from_utf8(buf).map_err(|_| self.malformed(at, format!("{what} is not valid UTF-8")))
    }

    /// A value preceded by its u32 type tag.
    fn tagged_value(&mut self, key: &str, depth: usize) -> Result<Value, ModelError> {
        let at = self.pos;
        let tag = self.u32(&format!("the type of `{key}`"))?;
        self.value(tag, at, key, depth)
    }

    fn value(&mut self, tag: u32, at: u64, key: &str, depth: usize) -> Result<Value, ModelError> {
        let what = format!("the value of `{key}`");
        Ok(match tag {
            0 => Value::U8(u8::from_le_bytes(self.bytes(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.bytes(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.bytes(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes(&what)?)),
            7 => match self.bytes::<1>(&what)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [b] => return Err(self.malformed(at, format!("`{key}` holds bool byte {b}"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => self.array(key, depth)?,
            10 => Value::U64(u64::from_le_bytes(self.bytes(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.bytes(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes(&what)?)),
            _ => return Err(self.malformed(at, format!("`{key}` has unknown value type {tag}"))),
        })
    }

    fn array(&mut self, key: &str, depth: usize) -> Result<Value, ModelError> {
        let at = self.pos;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.malformed(
                at,
                format!("`{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"),
            ));
        }
        let what = format!("the array `{key}`");
        let tag = self.u32(&what)?;
        let n = self.u64(&what)?;
        // Every element takes at least one byte, so a count beyond the bytes left is a lie.
        self.need(n, &what)?;
        let mut items = Vec::new();
        for _ in 0..n {
            items.push(self.value(tag, at, key, depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn tensor_info(&mut self) -> Result<RawTensor, ModelError> {
        let at = self.pos;
        let name = self.string("a tensor name")?;
        let what = format!("the info of tensor `{name}`");
        let n_dims = self.u32(&what)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.malformed(at, format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let shape = (0..n_dims)
            .map(|_| self.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        let type_id = self.u32(&what)?;
        let offset = self.u64(&what)?;
        let Some(ty) = ggml_type::lookup(type_id) else {
            return Err(ModelError::UnknownTensorType {
                path: self.path.clone(),
                tensor: name,
                type_id,
            });
        };
        let n_bytes = self.tensor_bytes(at, &name, ty, &shape)?;
        Ok(RawTensor {
            name,
            ty,
            shape,
            offset,
            n_bytes,
        })
    }

    /// Bytes of a tensor: rows of whole blocks along the innermost dimension.
    fn tensor_bytes(
        &self,
        at: u64,
        name: &str,
        ty: GgmlType,
        shape: &[u64],
    ) -> Result<u64, ModelError> {
        let inner = shape[0];
        if !inner.is_multiple_of(ty.block_len) {
            let reason = format!(
                "tensor `{name}` has {inner} columns, not a multiple of {}'s block of {}",
                ty.name, ty.block_len
            );
            return Err(self.malformed(at, reason));
        }
        let rows = shape[1..]
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d));
        rows.and_then(|rows| {
            (inner / ty.block_len)
                .checked_mul(ty.block_bytes)?
                .checked_mul(rows)
        })
        .ok_or_else(|| self.malformed(at, format!("tensor `{name}` is too large: {shape:?}")))
    }
}
