//! A 2-layer toy config through the whole generator: shapes, determinism, seeds,
//! the cache, and the tokenizer's size and round trip.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::*;

/// A Llama config.json small enough to materialise in a test.
const TOY: &str = r#"{
  "model_type": "llama",
  "hidden_size": 64,
  "intermediate_size": 160,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "vocab_size": 600,
  "max_position_embeddings": 256,
  "tie_word_embeddings": false,
  "initializer_range": 0.02,
  "bos_token_id": 590,
  "eos_token_id": [591, 592]
}"#;

fn toy(dir: &Path, seed: u64, threads: usize) -> PathBuf {
    let config = dir.join("config.json");
    std::fs::write(&config, TOY).unwrap();
    let out = dir.join(format!("model-{seed}-{threads}"));
    materialize(&config, seed, &out, threads).unwrap();
    out
}

#[test]
fn writes_every_llama_tensor_in_bf16_with_its_shape() {
    let tmp = tempfile_dir();
    let out = toy(tmp.path(), 0, 2);
    let bytes = std::fs::read(out.join(weights::FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // 1 embedding + 9 per layer + final norm + untied head.
    assert_eq!(st.len(), 1 + 2 * 9 + 1 + 1);
    let shape = |name: &str| st.tensor(name).unwrap().shape().to_vec();
    assert_eq!(shape("model.embed_tokens.weight"), [600, 64]);
    assert_eq!(shape("model.layers.1.self_attn.q_proj.weight"), [64, 64]);
    assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), [32, 64]);
    assert_eq!(shape("model.layers.0.self_attn.o_proj.weight"), [64, 64]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [64, 160]);
    assert_eq!(shape("lm_head.weight"), [600, 64]);
    assert!(st.iter().all(|(_, t)| t.dtype() == Dtype::BF16));
    let norm = st.tensor("model.norm.weight").unwrap();
    assert!(
        norm.data()
            .chunks(2)
            .all(|b| half::bf16::from_le_bytes([b[0], b[1]]) == half::bf16::ONE)
    );

    // The matrices are N(0, 0.02²): check the sample deviation of the embedding.
    let emb = st.tensor("model.embed_tokens.weight").unwrap();
    let xs: Vec<f64> = emb
        .data()
        .chunks(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
        .collect();
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64).sqrt();
    assert!(
        mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
        "mean {mean}, std {std}"
    );
}

#[test]
fn same_seed_same_bytes_whatever_the_threads_and_another_seed_differs() {
    let tmp = tempfile_dir();
    let read = |dir: PathBuf| std::fs::read(dir.join(weights::FILE)).unwrap();
    let a = read(toy(tmp.path(), 7, 1));
    let b = read(toy(tmp.path(), 7, 3));
    let c = read(toy(tmp.path(), 8, 1));
    assert_eq!(a, b, "the thread count changed the weights");
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c, "another seed gave the same weights");
}

#[test]
fn a_materialised_folder_is_reused_and_a_changed_seed_rewrites_it() {
    let tmp = tempfile_dir();
    let config = tmp.path().join("config.json");
    std::fs::write(&config, TOY).unwrap();
    let out = tmp.path().join("m");
    materialize(&config, 1, &out, 1).unwrap();
    let stamp = out.join(STAMP);
    let before = std::fs::metadata(out.join(weights::FILE))
        .unwrap()
        .modified()
        .unwrap();
    materialize(&config, 1, &out, 1).unwrap();
    let after = std::fs::metadata(out.join(weights::FILE))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "an up-to-date folder was rewritten");
    materialize(&config, 2, &out, 1).unwrap();
    let seed: Stamp = serde_json::from_slice(&std::fs::read(&stamp).unwrap()).unwrap();
    assert_eq!(seed.seed, 2);
    // No temporary folder is left beside it.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn tokenizer_has_exactly_the_vocabulary_and_round_trips_text() {
    let config = Config::parse(TOY.as_bytes()).unwrap();
    let tk = tokenizer::build(&config).unwrap();
    assert_eq!(tk.get_vocab_size(true), 600);
    assert_eq!(tk.token_to_id("<|begin_of_text|>"), Some(590));
    assert_eq!(tk.token_to_id("<|end_of_text|>"), Some(591));
    let text = "Hello, wörld! 12345 \u{1f980}";
    let ids = tk.encode(text, false).unwrap().get_ids().to_vec();
    assert!(ids.iter().all(|&id| id < 590));
    assert_eq!(tk.decode(&ids, true).unwrap(), text);
    // The file form loads back into the same vocabulary.
    let tmp = tempfile_dir();
    let path = tmp.path().join(tokenizer::FILE);
    tokenizer::write(&config, &path).unwrap();
    let loaded = tokenizers::Tokenizer::from_file(&path).unwrap();
    assert_eq!(loaded.get_vocab_size(true), 600);
    assert_eq!(
        loaded.encode(text, false).unwrap().get_ids(),
        ids.as_slice()
    );
}

#[test]
fn a_config_that_is_not_llama_is_refused() {
    let err = Config::parse(TOY.replace("\"llama\"", "\"gpt2\"").as_bytes()).unwrap_err();
    assert!(err.to_string().contains("gpt2"), "{err}");
}

/// A fresh temporary folder, removed on drop (the template has no dev-dependencies).
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> TempDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("materialize-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
