//! Text ⇄ token ids for the served model, built from the GGUF's `tokenizer.*` metadata.
//!
//! The tokenizer is an HF `tokenizers` byte-level BPE assembled from the GGUF vocabulary
//! and merges, with the pre-tokenizer llama.cpp uses for the model's `tokenizer.ggml.pre`,
//! so the same text gives the same ids as llama.cpp (checked against recorded llama.cpp
//! output in `tests/tokenizer_llamacpp.rs`). `StreamDecoder` turns generated ids into
//! text one token at a time without ever splitting a UTF-8 character.

use std::collections::HashMap;
use std::path::Path;

use ggus::{GGuf, GGufMetaError, GGufMetaMap, GGufMetaMapExt};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// GGUF `tokenizer.ggml.token_type` of a control token (`<|im_start|>`, `<|endoftext|>`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `tokenizer.ggml.token_type` of a user-defined token: always matched in the text.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Token texts llama.cpp treats as end of generation whatever the metadata says: its
/// end-of-turn list and the fill-in-the-middle pad/repo/separator tokens it auto-detects
/// (`llama_vocab::impl::load`, the `special_eog_ids` and `special_fim_*_id` loops).
const EOG_TEXTS: [&str; 22] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Metadata keys whose token id, when present, ends generation (as in llama.cpp).
const EOG_ID_KEYS: [&str; 6] = [
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id",
];

/// What can go wrong building or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The model file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a GGUF file ggus can parse.
    #[error("not a readable GGUF file: {0}")]
    Gguf(String),
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata `{key}`: {reason}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The GGUF describes a tokenizer this server does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The `tokenizers` crate rejected the vocabulary or failed on an input.
    #[error("tokenizer: {0}")]
    Backend(String),
}

fn meta_err(key: &'static str) -> impl FnOnce(GGufMetaError) -> TokenizerError {
    move |e| TokenizerError::Metadata {
        key,
        reason: format!("{e:?}"),
    }
}

fn backend(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Backend(e.to_string())
}

/// A byte-level BPE tokenizer matching llama.cpp's for the same GGUF.
pub struct Tokenizer {
    /// Splits special tokens written in the text out as single ids.
    special: tokenizers::Tokenizer,
    /// Treats special-token text as ordinary text (llama.cpp's `parse_special = false`).
    plain: tokenizers::Tokenizer,
    /// The UTF-8 bytes each id stands for (control tokens: their text), for streaming.
    token_bytes: Vec<Box<[u8]>>,
    /// Whether each id is a control token (hidden when decoding with `skip_special`).
    is_control: Vec<bool>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eog_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.token_bytes.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eog_ids", &self.eog_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Memory-maps a GGUF file and builds its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Self, TokenizerError> {
        with_gguf_file(path, |gguf| Self::from_gguf(gguf))?
    }

    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(meta: &impl GGufMetaMap) -> Result<Self, TokenizerError> {
        let model = meta
            .tokenizer_ggml_model()
            .map_err(meta_err("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model = {model:?} (only \"gpt2\", byte-level BPE, is implemented)"
            )));
        }
        let pre = meta.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let tokens: Vec<&str> = meta
            .tokenizer_ggml_tokens()
            .map_err(meta_err("tokenizer.ggml.tokens"))?
            .collect::<Result<_, _>>()
            .map_err(|e| meta_err("tokenizer.ggml.tokens")(GGufMetaError::Read(e)))?;
        let types: Vec<i32> = meta
            .tokenizer_ggml_token_type()
            .map_err(meta_err("tokenizer.ggml.token_type"))?
            .collect::<Result<_, _>>()
            .map_err(|e| meta_err("tokenizer.ggml.token_type")(GGufMetaError::Read(e)))?;
        let merges: Vec<&str> = meta
            .tokenizer_ggml_merges()
            .map_err(meta_err("tokenizer.ggml.merges"))?
            .collect::<Result<_, _>>()
            .map_err(|e| meta_err("tokenizer.ggml.merges")(GGufMetaError::Read(e)))?;
        if types.len() != tokens.len() {
            return Err(TokenizerError::Metadata {
                key: "tokenizer.ggml.token_type",
                reason: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
        let special = build_backend(&tokens, &types, &merges, pre)?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let is_control: Vec<bool> = types.iter().map(|&t| t == TOKEN_TYPE_CONTROL).collect();
        let table = char_to_byte();
        let token_bytes = tokens
            .iter()
            .zip(&is_control)
            .map(|(text, &control)| token_bytes(text, control, &table))
            .collect();
        let token_id = |key: &'static str| optional_id(meta, key, tokens.len());
        Ok(Self {
            special,
            plain,
            token_bytes,
            is_control,
            bos_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_id: token_id("tokenizer.ggml.eos_token_id")?,
            eog_ids: eog_ids(meta, &tokens)?,
            add_bos: optional_bool(meta, "tokenizer.ggml.add_bos_token")?.unwrap_or(false),
            add_eos: optional_bool(meta, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }

    /// Builds the tokenizer from a Hugging Face `tokenizer.json` (byte-level BPE) and
    /// the BOS/EOS ids of the model's `config.json`; BOS is prepended, as Llama 3 does.
    /// Added tokens marked special are control tokens.
    pub fn from_hf_file(
        path: &Path,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let special = tokenizers::Tokenizer::from_file(path).map_err(backend)?;
        let mut plain = special.clone();
        plain.set_encode_special_tokens(true);
        let control: std::collections::HashSet<u32> = special
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let table = char_to_byte();
        let n = u32::try_from(special.get_vocab_size(true)).map_err(backend)?;
        let is_control: Vec<bool> = (0..n).map(|id| control.contains(&id)).collect();
        let texts: Vec<String> = (0..n)
            .map(|id| special.id_to_token(id).unwrap_or_default())
            .collect();
        let token_bytes = texts
            .iter()
            .zip(&is_control)
            .map(|(text, &c)| token_bytes(text, c, &table))
            .collect();
        Ok(Self {
            special,
            plain,
            token_bytes,
            is_control,
            bos_id,
            eos_id,
            eog_ids: eos_id.into_iter().collect(),
            add_bos: bos_id.is_some(),
            add_eos: false,
        })
    }

    /// Token ids of `text`, with BOS/EOS added as the GGUF's `add_bos_token` /
    /// `add_eos_token` say (`add_space_prefix` only concerns SentencePiece vocabularies;
    /// llama.cpp ignores it for byte-level BPE, and so do we). With `parse_special`, special tokens written in the text
    /// (`<|im_start|>`) become their single ids; without, they are tokenized as text
    /// (llama.cpp's `parse_special`).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let pipeline = if parse_special {
            &self.special
        } else {
            &self.plain
        };
        let encoding = pipeline.encode_fast(text, false).map_err(backend)?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            ids.push(bos);
        }
        ids.extend_from_slice(body);
        if let (true, Some(eos)) = (self.add_eos, self.eos_id) {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// The text of `ids`. With `skip_special`, control tokens are left out (what a
    /// client is shown); without, they are written out (`<|im_end|>`), so `decode`
    /// round-trips `encode(.., parse_special = true)`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.special.decode(ids, skip_special).map_err(backend)
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// The beginning-of-sequence id, if the GGUF names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence id, if the GGUF names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Ids that end generation (llama.cpp's end-of-generation set: EOS, EOT, EOM, FIM
    /// pad/rep/sep and the well-known end-of-turn tokens such as `<|im_end|>`), sorted.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    /// Whether `id` is a control token (`<|im_start|>`, `<|endoftext|>`, …).
    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token by its exact text (`"<|im_end|>"`), if the vocabulary has it.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.special.token_to_id(text)
    }

    /// The raw bytes `id` stands for (a control token: its text; an unknown id: none).
    /// Unlike `decode`, a token holding part of a UTF-8 character keeps its bytes, which is
    /// what OpenAI's logprob `bytes` field reports.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes_of(id, false)
    }

    /// The raw bytes `id` stands for: empty for an unknown id, and for a control token
    /// when `skip_special`.
    fn bytes_of(&self, id: u32, skip_special: bool) -> &[u8] {
        if skip_special && self.is_control(id) {
            return &[];
        }
        self.token_bytes.get(id as usize).map_or(&[], |b| b)
    }
}

/// Memory-maps the GGUF file at `path`, parses its header and runs `f` on it (to read
/// the tokenizer and the chat template from one mapping).
pub fn with_gguf_file<T>(path: &Path, f: impl FnOnce(&GGuf<'_>) -> T) -> Result<T, TokenizerError> {
    let io = |source| TokenizerError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before this function returns; a file
    // truncated underneath us would fault, which is the usual mmap caveat for models.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let gguf = GGuf::new(&map).map_err(|e| TokenizerError::Gguf(e.to_string()))?;
    Ok(f(&gguf))
}

/// Assembles the `tokenizers` pipeline: BPE model, pre-tokenizer, byte-level decoder and
/// the control/user-defined tokens as added tokens.
fn build_backend(
    tokens: &[&str],
    types: &[i32],
    merges: &[&str],
    pre: &str,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| Ok(((*t).to_owned(), u32::try_from(id).map_err(backend)?)))
        .collect::<Result<tokenizers::models::bpe::Vocab, TokenizerError>>()?;
    let merges = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').ok_or_else(|| TokenizerError::Metadata {
                key: "tokenizer.ggml.merges",
                reason: format!("merge {m:?} is not two tokens separated by a space"),
            })?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect::<Result<Vec<_>, TokenizerError>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(backend)?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        // llama.cpp matches these byte for byte: no normalisation, no stripping.
        .map(|(text, t)| AddedToken::from(*text, *t == TOKEN_TYPE_CONTROL).normalized(false))
        .collect();
    // Control tokens are "special" (skipped by `parse_special = false`); user-defined
    // tokens are plain added tokens, which llama.cpp always splits out.
    let (special, user): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    tk.add_special_tokens(&special);
    tk.add_tokens(&user);
    Ok(tk)
}

/// The pre-tokenizer llama.cpp's `llama_vocab::impl::load` picks for `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    // GPT-2's regex, which the `ByteLevel` pre-tokenizer applies when `use_regex` is on:
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    let gpt2 = ByteLevel::new(false, false, true);
    match pre {
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" | "trillion" => Ok(gpt2.into()),
        // llama.cpp: regex_exprs = { "\\p{N}", <GPT-2 regex> } — every digit on its own.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            let digits = Split::new(
                SplitPattern::Regex(r"\p{N}".to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(backend)?;
            Ok(Sequence::new(vec![digits.into(), gpt2.into()]).into())
        }
        other => Err(TokenizerError::Unsupported(format!(
            "tokenizer.ggml.pre = {other:?} has no pre-tokenizer here yet"
        ))),
    }
}

/// GPT-2's byte ↔ printable-character table, inverted: bytes that are printable
/// Latin-1 stand for themselves, the other 68 for U+0100.. in byte order. Recovers the
/// raw bytes a vocabulary entry stands for.
fn char_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut shifted = 0x100;
    (0..=u8::MAX)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
                shifted += 1;
                (c, b)
            }
        })
        .collect()
}

/// The bytes a vocabulary entry stands for: control tokens are literal text, the rest
/// byte-level encoded.
fn token_bytes(text: &str, control: bool, table: &HashMap<char, u8>) -> Box<[u8]> {
    if control {
        return text.as_bytes().into();
    }
    text.chars()
        .map(|c| table.get(&c).copied().unwrap_or(b'?'))
        .collect()
}

fn optional_id(
    meta: &impl GGufMetaMap,
    key: &'static str,
    vocab: usize,
) -> Result<Option<u32>, TokenizerError> {
    match meta.get_u32(key) {
        Ok(id) if (id as usize) < vocab => Ok(Some(id)),
        Ok(id) => Err(TokenizerError::Metadata {
            key,
            reason: format!("id {id} is outside the {vocab}-token vocabulary"),
        }),
        Err(GGufMetaError::NotExist) => Ok(None),
        Err(e) => Err(meta_err(key)(e)),
    }
}

fn optional_bool(
    meta: &impl GGufMetaMap,
    key: &'static str,
) -> Result<Option<bool>, TokenizerError> {
    match meta.get_bool(key) {
        Ok(v) => Ok(Some(v)),
        Err(GGufMetaError::NotExist) => Ok(None),
        Err(e) => Err(meta_err(key)(e)),
    }
}

fn eog_ids(meta: &impl GGufMetaMap, tokens: &[&str]) -> Result<Vec<u32>, TokenizerError> {
    let mut ids = Vec::new();
    for key in EOG_ID_KEYS {
        ids.extend(optional_id(meta, key, tokens.len())?);
    }
    for (id, text) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(text) {
            ids.push(u32::try_from(id).map_err(backend)?);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Turns generated ids into text one id at a time, holding back the bytes of a UTF-8
/// character split across tokens (emoji, CJK) until it is complete, so every piece is
/// valid text and the pieces concatenate to exactly [`Tokenizer::decode`]'s output
/// (invalid byte sequences become U+FFFD, as lossy UTF-8 decoding does).
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    skip_special: bool,
}

impl StreamDecoder {
    /// A decoder; `skip_special` leaves control tokens out, as [`Tokenizer::decode`] does.
    pub fn new(skip_special: bool) -> Self {
        Self {
            pending: Vec::new(),
            skip_special,
        }
    }

    /// Feeds one id; appends to `out` whatever text is now complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32, out: &mut String) {
        self.pending
            .extend_from_slice(tokenizer.bytes_of(id, self.skip_special));
        let consumed = drain_complete(&self.pending, out);
        self.pending.drain(..consumed);
    }

    /// Ends the stream: appends held-back bytes of an unfinished character as U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
    }

    /// Whether bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Appends the valid UTF-8 in `bytes` to `out`, an invalid sequence as U+FFFD, and stops
/// before an incomplete character at the end. Returns how many bytes it consumed.
fn drain_complete(bytes: &[u8], out: &mut String) -> usize {
    let mut start = 0;
    loop {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(text) => {
                out.push_str(text);
                return bytes.len();
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&bytes[start..valid]));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid + bad;
                    }
                    None => return valid,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        // Spot values of GPT-2's bytes_to_unicode: space is 'Ġ', newline 'Ċ', tab 'ĉ'.
        let table = char_to_byte();
        assert_eq!(table.get(&'Ġ'), Some(&b' '));
        assert_eq!(table.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(table.get(&'ĉ'), Some(&b'\t'));
        assert_eq!(table.get(&'a'), Some(&b'a'));
        assert_eq!(table.get(&'\u{ad}'), None);
        let bytes: std::collections::BTreeSet<u8> = table.values().copied().collect();
        assert_eq!(bytes.len(), 256, "every byte has exactly one character");
    }

    #[test]
    fn drain_holds_back_an_incomplete_character() {
        let crab = "🦀".as_bytes();
        let mut out = String::new();
        assert_eq!(drain_complete(&crab[..2], &mut out), 0);
        assert_eq!(out, "");
        let mut joined = b"a".to_vec();
        joined.extend_from_slice(&crab[..3]);
        assert_eq!(drain_complete(&joined, &mut out), 1);
        assert_eq!(out, "a");
    }

    #[test]
    fn drain_replaces_invalid_bytes_like_lossy_decoding() {
        let bytes = b"x\xffy\xe2\x82z";
        let mut out = String::new();
        assert_eq!(drain_complete(bytes, &mut out), bytes.len());
        assert_eq!(out, String::from_utf8_lossy(bytes));
    }
}
