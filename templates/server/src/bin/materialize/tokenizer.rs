//! The tokenizer: a byte-level BPE (GPT-2's byte alphabet, as Llama 3's) of exactly the
//! config's vocabulary size, saved in the Hugging Face `tokenizer.json` format.
//!
//! Ids 0..255 are the 256 bytes; merges then add every two-byte token, then three-byte
//! tokens, in order, up to the first special id (`min(bos, eos)`); the ids from there to
//! the vocabulary size are special tokens, named as Llama 3 names them. Random weights
//! make any merge table as good as another; what matters is that every id decodes and
//! that text round-trips.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::MaterializeError;
use crate::config::Config;

/// The tokenizer's file name in a model folder.
pub const FILE: &str = "tokenizer.json";

/// Byte tokens: ids 0..255.
const BYTES: usize = 256;

/// Builds the tokenizer of config `c`.
pub fn build(c: &Config) -> Result<Tokenizer, MaterializeError> {
    let bad = |m: String| MaterializeError::Tokenizer(m);
    let first_special = c.bos.min(c.eos) as usize;
    if !(BYTES..c.vocab).contains(&first_special) || c.bos.max(c.eos) as usize >= c.vocab {
        return Err(bad(format!(
            "bos {} and eos {} must lie in {BYTES}..{} (after the byte tokens, inside the vocabulary)",
            c.bos, c.eos, c.vocab
        )));
    }
    let alphabet = byte_chars();
    let mut pieces: Vec<String> = alphabet.iter().map(char::to_string).collect();
    let mut merges = Vec::with_capacity(first_special - BYTES);
    let mut base = 0;
    while pieces.len() < first_special {
        // Each piece (in id order) extended by each byte: unique, and both halves exist.
        for c in &alphabet {
            if pieces.len() == first_special {
                break;
            }
            merges.push((pieces[base].clone(), c.to_string()));
            pieces.push(format!("{}{c}", pieces[base]));
        }
        base += 1;
    }
    let vocab: Vocab = pieces.into_iter().zip(0u32..).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let mut reserved = 0;
    let specials: Vec<AddedToken> = (first_special..c.vocab)
        .map(|id| {
            let name = if id == c.bos as usize {
                "<|begin_of_text|>".to_string()
            } else if id == c.eos as usize {
                "<|end_of_text|>".to_string()
            } else {
                reserved += 1;
                format!("<|reserved_special_token_{}|>", reserved - 1)
            };
            AddedToken::from(name, true).normalized(false)
        })
        .collect();
    tk.add_special_tokens(&specials);
    Ok(tk)
}

/// Builds and saves the tokenizer of config `c` to `path`.
pub fn write(c: &Config, path: &Path) -> Result<(), MaterializeError> {
    build(c)?
        .save(path, false)
        .map_err(|e| MaterializeError::Tokenizer(e.to_string()))
}

/// GPT-2's byte → printable-character table, in byte order: printable Latin-1 bytes
/// stand for themselves, the other 68 for U+0100.. in byte order.
fn byte_chars() -> Vec<char> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut shifted = 0x100;
    (0..=u8::MAX)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(shifted - 1).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
        })
        .collect()
}
