//! The server template, embedded in the tool at compile time.
//!
//! `templates/server/` is a real crate in the workspace; the tool carries a copy of it
//! (and of the workspace's `Cargo.lock`, which pins the versions the template is built
//! and tested with), so an installed `cargo vibeserve` generates servers anywhere.

use std::collections::BTreeMap;

use globset::{Glob, GlobSet, GlobSetBuilder};
use include_dir::{Dir, DirEntry, include_dir};
use serde::Deserialize;

use super::GenerateError;

/// The template crate's files.
static TEMPLATE_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../templates/server");

/// The workspace's lockfile: the versions the template is built and tested with.
pub(crate) const WORKSPACE_LOCK: &str = include_str!("../../../Cargo.lock");

/// Where the template lives in this repository, for generated-file headers.
pub const TEMPLATE_PATH: &str = "templates/server";

/// The name of the template's part map.
const TEMPLATE_TOML: &str = "template.toml";

/// `templates/server/template.toml`: which files and dependencies each part brings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateManifest {
    /// The parts, by name.
    pub parts: BTreeMap<String, Part>,
}

/// One part of the template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// What the part is, for `--help`-like listings.
    pub description: String,
    /// The part is in every generated crate, whatever the plan says.
    #[serde(default)]
    pub always: bool,
    /// Globs of the files the part brings, relative to the template folder.
    pub files: Vec<String>,
    /// Globs excluded from `files`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `[dependencies]` entries, as in a Cargo.toml.
    #[serde(default)]
    pub dependencies: toml::Table,
    /// `[build-dependencies]` entries, as in a Cargo.toml.
    #[serde(default, rename = "build-dependencies")]
    pub build_dependencies: toml::Table,
}

/// The embedded template: its part map and every file by relative path.
pub struct Template {
    /// The part map.
    pub manifest: TemplateManifest,
    /// Every file of the template folder, by path relative to it (with `/`).
    pub files: BTreeMap<String, &'static [u8]>,
}

impl Template {
    /// The template embedded in this build of the tool.
    pub fn embedded() -> Result<Template, GenerateError> {
        let mut files = BTreeMap::new();
        collect(&TEMPLATE_DIR, &mut files);
        let text = files
            .get(TEMPLATE_TOML)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(|| GenerateError::Template(format!("{TEMPLATE_TOML} is missing")))?;
        let manifest = toml::from_str(text)
            .map_err(|e| GenerateError::Template(format!("{TEMPLATE_TOML}: {e}")))?;
        Ok(Template { manifest, files })
    }

    /// The text of a template file.
    pub fn text(&self, path: &str) -> Result<&'static str, GenerateError> {
        self.files
            .get(path)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(|| GenerateError::Template(format!("{path} is missing or not UTF-8")))
    }

    /// The files a set of parts brings, by relative path, in sorted order.
    pub fn part_files<'a>(
        &self,
        parts: impl IntoIterator<Item = &'a Part>,
    ) -> Result<Vec<&str>, GenerateError> {
        let mut selected = Vec::new();
        for part in parts {
            let include = glob_set(&part.files)?;
            let exclude = glob_set(&part.exclude)?;
            selected.extend(
                self.files
                    .keys()
                    .filter(|path| include.is_match(path) && !exclude.is_match(path))
                    .map(String::as_str),
            );
        }
        selected.sort_unstable();
        selected.dedup();
        Ok(selected)
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, GenerateError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern)
            .map_err(|e| GenerateError::Template(format!("bad glob {pattern:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| GenerateError::Template(format!("bad globs: {e}")))
}

fn collect(dir: &'static Dir<'static>, out: &mut BTreeMap<String, &'static [u8]>) {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => collect(sub, out),
            DirEntry::File(file) => {
                let path = file.path().to_string_lossy().replace('\\', "/");
                out.insert(path, file.contents());
            }
        }
    }
}
