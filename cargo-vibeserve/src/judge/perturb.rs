//! A copy of the model with one tensor negated: the weights probe's input.
//!
//! Negating a whole tensor keeps the file valid (same header, same sizes, finite values)
//! and moves the logits far: every block's scale (and, for types with one, its minimum)
//! gets its sign bit flipped, so each dequantized value `d * q + m` becomes its negative.
//! A server that reads its weights must answer differently; one that ignores them cannot.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::model::{GgufMetadata, TensorInfo};

/// The tensors tried, in order: the first layer's MLP output feeds every later layer.
pub const PERTURBED_TENSORS: [&str; 3] = [
    "blk.0.ffn_down.weight",
    "blk.0.attn_output.weight",
    "output_norm.weight",
];

/// Where the sign bits of one ggml type live: the block's size in bytes and the byte
/// offsets, within a block, of the high (sign-carrying) byte of each little-endian scale.
fn sign_bytes(ggml_type: &str) -> Option<(usize, &'static [usize])> {
    Some(match ggml_type {
        "F32" => (4, &[3]),
        "F16" | "BF16" => (2, &[1]),
        // f16 d, then quants.
        "Q4_0" => (18, &[1]),
        "Q5_0" => (22, &[1]),
        "Q8_0" => (34, &[1]),
        // f16 d, f16 m, then quants: d*q + m negates when both do.
        "Q4_1" => (20, &[1, 3]),
        "Q5_1" => (24, &[1, 3]),
        _ => return None,
    })
}

/// The tensor [`write_perturbed`] negates in this model, if it has one of a known type.
pub fn perturbed_tensor(metadata: &GgufMetadata) -> Option<&TensorInfo> {
    PERTURBED_TENSORS.iter().find_map(|name| {
        metadata
            .tensors
            .iter()
            .find(|t| t.name == *name && sign_bytes(&t.ggml_type).is_some())
    })
}

/// Writes `model` with [`perturbed_tensor`] negated to `out` (through a temporary file
/// and a rename). Returns the tensor's name.
pub fn write_perturbed(
    model: &Path,
    metadata: &GgufMetadata,
    out: &Path,
) -> Result<String, PerturbError> {
    let tensor = perturbed_tensor(metadata).ok_or(PerturbError::NoTensor)?;
    let (block, offsets) = sign_bytes(&tensor.ggml_type).ok_or(PerturbError::NoTensor)?;
    let start = metadata.data_offset + tensor.offset;
    let io = |source| PerturbError::Io {
        path: out.to_path_buf(),
        source,
    };
    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::fs::copy(model, tmp.path()).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path())
        .map_err(io)?;
    let mut data = vec![0u8; usize::try_from(tensor.n_bytes).map_err(|_| PerturbError::NoTensor)?];
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    std::io::Read::read_exact(&mut file, &mut data).map_err(io)?;
    for chunk in data.chunks_exact_mut(block) {
        for &at in offsets {
            chunk[at] ^= 0x80;
        }
    }
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    file.write_all(&data).map_err(io)?;
    file.sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(tensor.name.clone())
}

/// Why the perturbed model could not be written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PerturbError {
    /// The model has none of [`PERTURBED_TENSORS`] in a type whose scales we can negate.
    #[error("the model has none of {PERTURBED_TENSORS:?} in a type the weights probe can negate")]
    NoTensor,
    /// Reading or writing failed.
    #[error("cannot write the perturbed model {}: {source}", path.display())]
    Io {
        /// The output file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
