//! Reading a Serve.toml: TOML syntax, the schema version, then the schema itself. Each step
//! turns its failure into a [`Problem`] located in the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::NamedSource;
use serde::Deserialize;
use toml::Spanned;

use super::error::{Invalid, ManifestError, Problem, ProblemKind, Source, closest, first_line};
use super::schema::RawManifest;
use super::types::Manifest;
use super::validate;

/// The Serve.toml schema versions this build reads.
pub const SUPPORTED_VERSIONS: &[u32] = &[SCHEMA_VERSION];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;

impl Manifest {
    /// Read, parse and validate the Serve.toml at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(path, text)
    }

    /// Parse and validate `text` as the Serve.toml at `path` (which names the file in errors
    /// and anchors relative paths; the file itself is not read).
    pub fn parse(path: &Path, text: String) -> Result<Manifest, ManifestError> {
        let source: Source = Arc::new(
            NamedSource::new(path.display().to_string(), text.clone()).with_language("toml"),
        );
        check_version(&text, &source)?;
        let raw = deserialize(&text, &source)?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = abs.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let shown_dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let resolved = validate::resolve(raw, validate::Ctx::new(source, dir.clone(), shown_dir))?;
        Ok(Manifest {
            path: abs,
            dir,
            text,
            target: resolved.target,
            model: resolved.model,
            hardware: resolved.hardware,
            workload: resolved.workload,
            benchmark: resolved.benchmark,
            accuracy: resolved.accuracy,
            search: resolved.search,
            agent: resolved.agent,
        })
    }
}

/// Just enough of the file to read its version before anything else, so that a file written
/// for another schema fails with "unsupported version", not with a list of unknown keys.
#[derive(Deserialize)]
struct VersionProbe {
    target: Option<VersionProbeTarget>,
}

/// `[target]` of [`VersionProbe`].
#[derive(Deserialize)]
struct VersionProbeTarget {
    version: Option<Spanned<i64>>,
}

/// Fail on a TOML syntax error or an unsupported `[target] version`.
fn check_version(text: &str, source: &Source) -> Result<(), Invalid> {
    let probe = toml::from_str::<VersionProbe>(text);
    let version = match probe {
        Err(e) if toml::Deserializer::parse(text).is_err() => return Err(syntax(&e, source).into()),
        // Wrong types are reported by the full schema, with the key path.
        Err(_) => return Ok(()),
        Ok(probe) => probe.target.and_then(|t| t.version),
    };
    match version {
        Some(v)
            if !SUPPORTED_VERSIONS
                .iter()
                .any(|s| i64::from(*s) == *v.get_ref()) =>
        {
            let supported: Vec<String> = SUPPORTED_VERSIONS.iter().map(u32::to_string).collect();
            Err(Problem::new(
                ProblemKind::Version,
                source,
                v.span(),
                format!("unsupported Serve.toml version {}", v.get_ref()),
                "unknown schema version",
            )
            .with_help(format!(
                "this cargo-vibeserve reads version {}; write `version = {SCHEMA_VERSION}` or upgrade cargo-vibeserve",
                supported.join(", ")
            ))
            .into())
        }
        _ => Ok(()),
    }
}

/// A TOML syntax error as a problem.
fn syntax(e: &toml::de::Error, source: &Source) -> Problem {
    let message = e.message().trim().replace('\n', "; ");
    Problem::new(
        ProblemKind::Syntax,
        source,
        e.span().unwrap_or(0..0),
        format!("TOML syntax error: {message}"),
        "here",
    )
    .with_help("see https://toml.io for the syntax; strings need quotes, tables are [name]")
}

/// Deserialize the schema, turning serde's error into a located problem with the key path.
fn deserialize(text: &str, source: &Source) -> Result<RawManifest, Invalid> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax(&e, source))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = key_path(e.path());
        schema_problem(&path, e.inner(), text, source).into()
    })
}

/// `hardware.threads`, `benchmark.constraints[0]`: the key path without serde's private
/// segments (`Spanned` shows up as a struct with `$__serde_spanned_private_*` fields).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Unknown => {}
        }
    }
    out
}

/// serde's `one of `a`, `b``, `a` or `b``: the backquoted names after "expected".
fn expected_names(message: &str) -> Vec<&str> {
    let Some((_, expected)) = message.split_once("expected") else {
        return Vec::new();
    };
    expected.split('`').skip(1).step_by(2).collect()
}

/// The first backquoted word of a serde message (`unknown field `x`` → `x`).
fn first_quoted(message: &str) -> &str {
    message.split('`').nth(1).unwrap_or("")
}

/// "did you mean `b`? valid …: a, b, c".
fn suggest(word: &str, valid: &[&str], what: &str) -> String {
    let list = valid.join(", ");
    match closest(word, valid.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? {what}: {list}"),
        None => format!("{what}: {list}"),
    }
}

/// The table a key path lives in, for messages: `[hardware]`, `model.source`, `the top level`.
fn table_name(path: &str) -> String {
    match path {
        "" => "the top level".into(),
        p if p.contains('.') || p.contains('[') => format!("`{p}`"),
        p => format!("[{p}]"),
    }
}

/// Turn a schema error at `path` into a problem.
fn schema_problem(path: &str, e: &toml::de::Error, text: &str, source: &Source) -> Problem {
    let message = e.message().trim();
    let span = e.span().unwrap_or(0..0);
    if message.starts_with("unknown field") {
        let key = first_quoted(message);
        let valid = expected_names(message);
        // The path ends with the unknown key itself.
        let table = path.rsplit_once('.').map_or("", |(table, _)| table);
        let (message, label, what) = if table.is_empty() {
            (
                format!("unknown table [{key}]"),
                "unknown table",
                "valid tables",
            )
        } else {
            (
                format!("unknown key `{key}` in {}", table_name(table)),
                "unknown key",
                "valid keys here",
            )
        };
        return Problem::new(ProblemKind::UnknownKey, source, span, message, label)
            .with_help(suggest(key, &valid, what));
    }
    if message.starts_with("unknown variant") {
        let value = first_quoted(message);
        let valid = expected_names(message);
        return Problem::new(
            ProblemKind::BadValue,
            source,
            span,
            format!("`{path}` cannot be \"{value}\""),
            "not a valid value",
        )
        .with_help(suggest(value, &valid, "valid values"));
    }
    if message.starts_with("missing field") {
        return missing_key(path, first_quoted(message), span, text, source);
    }
    let (kind, found, expected) = match message.split_once(", expected ") {
        Some((found, expected)) if found.starts_with("invalid type: ") => (
            ProblemKind::WrongType,
            found.trim_start_matches("invalid type: "),
            expected,
        ),
        Some((found, expected)) => (
            ProblemKind::BadValue,
            found.trim_start_matches("invalid value: "),
            expected,
        ),
        None => (ProblemKind::BadValue, message, ""),
    };
    let what = if kind == ProblemKind::WrongType {
        "wrong type"
    } else {
        "invalid value"
    };
    let expected = describe_expected(expected);
    Problem::new(
        kind,
        source,
        span,
        format!("{what} for `{path}`: found {found}"),
        format!("expected {expected}"),
    )
    .with_help(format!("`{path}` takes {expected}"))
}

/// A missing key or table. serde points at the whole enclosing table; narrow the label to
/// its first line (the `[table]` header) so the snippet stays short.
fn missing_key(
    path: &str,
    key: &str,
    span: std::ops::Range<usize>,
    text: &str,
    source: &Source,
) -> Problem {
    let full = if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    };
    if path.is_empty() {
        return Problem::new(
            ProblemKind::MissingKey,
            source,
            0..0,
            format!("missing table [{key}]"),
            "expected here or anywhere below",
        )
        .with_help(format!(
            "every Serve.toml has [target], [model], [hardware], [workload] and [benchmark]; add [{key}] (`cargo vibeserve init` writes a complete example)"
        ));
    }
    Problem::new(
        ProblemKind::MissingKey,
        source,
        first_line(text, span),
        format!("missing key `{full}`"),
        format!("{} has no `{key}`", table_name(path)),
    )
    .with_help(format!("add `{key} = …` to {}", table_name(path)))
}

/// serde's name of an expected type, in words.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a string" | "a borrowed string" => "a string (in quotes)".into(),
        "a sequence" => "an array, [ … ]".into(),
        "a boolean" => "true or false".into(),
        e if e.starts_with("struct ") || e == "a map" => "a table, { … } or [name]".into(),
        "" => "a different value".into(),
        e => e.into(),
    }
}
