//! Test helpers: a minimal GGUF writer and a wheel builder, written independently of the
//! code under test (from the GGUF spec and PEP 427), so they can catch its mistakes.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// GGUF tensor data alignment (the spec's default).
const ALIGNMENT: usize = 32;

/// A metadata value for the writer.
#[derive(Clone)]
pub enum Val {
    U32(u32),
    F32(f32),
    Str(&'static str),
    StrArray(Vec<&'static str>),
}

/// Builds a GGUF v3 file in memory.
pub struct GgufBuilder {
    kvs: Vec<(String, Val)>,
    tensors: Vec<(String, Vec<u64>, u32)>,
}

impl GgufBuilder {
    /// A llama header with 2 layers, the given hidden size and head count.
    pub fn llama(embedding: u32, heads: u32) -> Self {
        let kvs = [
            ("general.architecture", Val::Str("llama")),
            ("llama.block_count", Val::U32(2)),
            ("llama.context_length", Val::U32(128)),
            ("llama.embedding_length", Val::U32(embedding)),
            ("llama.feed_forward_length", Val::U32(embedding * 2)),
            ("llama.attention.head_count", Val::U32(heads)),
            ("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5)),
            ("tokenizer.ggml.model", Val::Str("gpt2")),
            ("llama.vocab_size", Val::U32(10)),
        ];
        Self {
            kvs: kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            tensors: Vec::new(),
        }
    }

    /// Set `key` (replacing an earlier value). Setting the token list drops `llama.vocab_size`
    /// so the reader has to count tokens.
    pub fn kv(mut self, key: &str, value: Val) -> Self {
        if key == "tokenizer.ggml.tokens" {
            self = self.without("llama.vocab_size");
        }
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.to_owned(), value)),
        }
        self
    }

    /// Remove `key`.
    pub fn without(mut self, key: &str) -> Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    /// Add a tensor of ggml type id `ty` (0 = F32, 3 = Q4_1; others get no data).
    pub fn tensor(mut self, name: &str, shape: &[u64], ty: u32) -> Self {
        self.tensors.push((name.to_owned(), shape.to_vec(), ty));
        self
    }

    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            put_str(&mut out, key);
            put_value(&mut out, value);
        }
        let mut offset = 0;
        let mut sizes = Vec::new();
        for (name, shape, ty) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            shape
                .iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            let elements: u64 = shape.iter().product();
            let size = match ty {
                0 => elements * 4,
                3 => elements / 32 * 20,
                _ => 0,
            } as usize;
            sizes.push(size);
            offset = (offset + size).next_multiple_of(ALIGNMENT);
        }
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        for (i, size) in sizes.iter().enumerate() {
            out.extend((0..*size).map(|b| (b + i) as u8));
            if i + 1 < sizes.len() {
                out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
            }
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Val) {
    match value {
        Val::U32(v) => {
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Val::F32(v) => {
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Val::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        Val::StrArray(items) => {
            out.extend_from_slice(&9u32.to_le_bytes());
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|s| put_str(out, s));
        }
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write `<dir>/<name>-<version>-py3-none-any.whl` holding `files` and a valid `.dist-info`
/// (PEP 427), so the real pip accepts it from `--find-links <dir>`.
pub fn build_wheel(dir: &Path, name: &str, version: &str, files: &[(&str, &[u8])]) {
    fs::create_dir_all(dir).expect("create wheel dir");
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(File::create(&path).expect("create wheel"));
    let options = zip::write::SimpleFileOptions::default();
    let info = format!("{name}-{version}.dist-info");
    let metadata = format!(
        "Metadata-Version: 2.1\nName: {}\nVersion: {version}\n",
        name.replace('_', "-")
    );
    let wheel = "Wheel-Version: 1.0\nGenerator: vibeserve-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut record = String::new();
    let mut entries: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.to_vec()))
        .collect();
    entries.push((format!("{info}/METADATA"), metadata.into_bytes()));
    entries.push((format!("{info}/WHEEL"), wheel.as_bytes().to_vec()));
    for (entry, bytes) in &entries {
        zip.start_file(entry.as_str(), options)
            .expect("start entry");
        zip.write_all(bytes).expect("write entry");
        record.push_str(&format!("{entry},,\n"));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    zip.start_file(format!("{info}/RECORD"), options)
        .expect("start RECORD");
    zip.write_all(record.as_bytes()).expect("write RECORD");
    zip.finish().expect("finish wheel");
}
