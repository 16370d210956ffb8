//! The skills library: `skills/<layer>/<skill>/SKILL.md`, embedded in the tool.
//!
//! A skill is knowledge for a human or an LLM reader (the Markdown body: when it applies,
//! what it changes, how to verify it, pitfalls) plus TOML front matter that the tool
//! parses: when the skill applies to a target ([`AppliesTo`]) and its moves, typed
//! changes to [`Plan`] fields with the values worth trying. The built-in Implementer and
//! the search policies only use the front matter.

/// Changes to a plan by dotted field path, and the choices a move offers.
pub mod change;
/// `cargo vibeserve skills [TARGET]`.
pub mod command;
/// The target facts that `applies_to` conditions are checked against.
pub mod facts;
/// The SKILL.md front matter schema.
pub mod front;

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

pub use change::{Change, ChangeError, Choice};
pub use facts::{Facts, Unmet};
pub use front::{AppliesTo, FrontMatter, Layer, MoveSpec, Stage};

use crate::plan::{DeviceKind, Plan};

/// The skills library, as of this build of the tool.
static SKILLS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../skills");

/// The file name of a skill.
pub const SKILL_FILE: &str = "SKILL.md";

/// The line that opens and closes a skill's front matter.
const FENCE: &str = "+++";

/// A move, validated: a field with values or factors, or a part to enable.
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// Set `field` to each of `values`.
    Set {
        /// The field's dotted path.
        field: String,
        /// The values worth trying.
        values: Vec<toml::Value>,
        /// An integer field whose product with `field` is kept constant.
        conserve: Option<String>,
    },
    /// Multiply the integer `field` by each of `factors`.
    Scale {
        /// The field's dotted path.
        field: String,
        /// The factors worth trying.
        factors: Vec<f64>,
    },
    /// Enable a template part.
    EnablePart {
        /// The part's name.
        part: String,
    },
}

impl Move {
    /// One [`Choice`] per value worth trying, in the order written.
    pub fn choices(&self) -> Vec<Choice> {
        match self {
            Move::Set {
                field,
                values,
                conserve,
            } => values
                .iter()
                .map(|value| Choice::Set {
                    field: field.clone(),
                    value: value.clone(),
                    conserve: conserve.clone(),
                })
                .collect(),
            Move::Scale { field, factors } => factors
                .iter()
                .map(|&factor| Choice::Scale {
                    field: field.clone(),
                    factor,
                })
                .collect(),
            Move::EnablePart { part } => vec![Choice::EnablePart { part: part.clone() }],
        }
    }

    fn from_spec(spec: MoveSpec) -> Result<Move, String> {
        let MoveSpec {
            field,
            values,
            factors,
            conserve,
            part,
        } = spec;
        match (field, values, factors, part) {
            (Some(field), Some(values), None, None) if !values.is_empty() => Ok(Move::Set {
                field,
                values,
                conserve,
            }),
            (Some(field), None, Some(factors), None) if conserve.is_none() => {
                if factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
                    return Err(format!("`{field}`: factors must be positive"));
                }
                Ok(Move::Scale { field, factors })
            }
            (None, None, None, Some(part)) if conserve.is_none() => Ok(Move::EnablePart { part }),
            _ => Err(
                "a move is `{ field, values [, conserve] }`, `{ field, factors }` or `{ part }`, \
                 with a non-empty list"
                    .to_string(),
            ),
        }
    }
}

/// One skill: its id, front matter, moves and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Skill {
    /// `<layer>/<name>`, e.g. `serving/prefill-chunk`.
    pub id: String,
    /// The parsed front matter.
    pub front: FrontMatter,
    /// The moves, validated in form (not yet against a plan: see [`Library::validate`]).
    pub moves: Vec<Move>,
    /// The Markdown body after the front matter.
    pub body: String,
}

impl Skill {
    /// Parses the SKILL.md at `path` (relative to `skills/`, e.g.
    /// `serving/prefill-chunk/SKILL.md`); its folders must match `layer` and `name`.
    pub fn parse(path: &str, text: &str) -> Result<Skill, SkillError> {
        let invalid = |message: String| SkillError::Invalid {
            path: path.to_string(),
            message,
        };
        let rest = text
            .strip_prefix(FENCE)
            .and_then(|r| r.strip_prefix('\n'))
            .ok_or_else(|| invalid(format!("must start with a `{FENCE}` line")))?;
        let end = rest
            .find(&format!("\n{FENCE}\n"))
            .ok_or_else(|| invalid(format!("front matter has no closing `{FENCE}` line")))?;
        let front: FrontMatter =
            toml::from_str(&rest[..=end]).map_err(|e| invalid(e.to_string()))?;
        let id = format!("{}/{}", front.layer.as_str(), front.name);
        if path != format!("{id}/{SKILL_FILE}") {
            return Err(invalid(format!(
                "layer and name say it belongs at {id}/{SKILL_FILE}"
            )));
        }
        let moves = front
            .moves
            .iter()
            .cloned()
            .map(Move::from_spec)
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let body = rest[end + FENCE.len() + 2..].trim_start().to_string();
        if body.is_empty() {
            return Err(invalid("has no body".to_string()));
        }
        Ok(Skill {
            id,
            front,
            moves,
            body,
        })
    }

    /// Every choice of every move, in the order written.
    pub fn choices(&self) -> Vec<Choice> {
        self.moves.iter().flat_map(Move::choices).collect()
    }

    /// The `applies_to` conditions `facts` do not meet (empty: the skill applies).
    pub fn unmet(&self, facts: &Facts) -> Vec<Unmet> {
        self.front.applies_to.unmet(facts)
    }
}

/// Every skill, sorted by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Library {
    /// The skills, sorted by id.
    pub skills: Vec<Skill>,
}

impl Library {
    /// The library embedded in this build of the tool.
    pub fn embedded() -> Result<Library, SkillError> {
        let mut found = Vec::new();
        collect_embedded(&SKILLS_DIR, &mut found);
        Library::from_files(found)
    }

    /// The library in a `skills/` folder on disk.
    pub fn from_dir(dir: &Path) -> Result<Library, SkillError> {
        let mut found = Vec::new();
        for layer in read_dir(dir)? {
            for skill in read_dir(&layer)? {
                let path = skill.join(SKILL_FILE);
                let text = std::fs::read_to_string(&path).map_err(|source| SkillError::Io {
                    path: path.clone(),
                    source,
                })?;
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                found.push((rel.to_string_lossy().replace('\\', "/"), text));
            }
        }
        Library::from_files(found)
    }

    /// Parses `(path relative to skills/, text)` pairs.
    pub fn from_files(files: Vec<(String, String)>) -> Result<Library, SkillError> {
        let mut skills: Vec<Skill> = files
            .iter()
            .map(|(path, text)| Skill::parse(path, text))
            .collect::<Result<_, _>>()?;
        skills.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Library { skills })
    }

    /// The skill with this id.
    pub fn get(&self, id: &str) -> Option<&Skill> {
        self.skills.iter().find(|s| s.id == id)
    }

    /// The skills whose conditions `facts` meet.
    pub fn applicable<'a>(&'a self, facts: &'a Facts) -> impl Iterator<Item = &'a Skill> + 'a {
        self.skills.iter().filter(|s| s.unmet(facts).is_empty())
    }

    /// Checks every move against a real plan and the template's parts: each field exists,
    /// each value fits its type, each part exists.
    /// Skills for another device than the plan's are skipped (a CPU plan has no `cuda`
    /// fields); validate against one plan per device.
    pub fn validate(&self, plan: &Plan, parts: &[&str]) -> Result<(), SkillError> {
        let device = match plan.device.kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        };
        for skill in &self.skills {
            let devices = skill.front.applies_to.device.as_ref();
            if devices.is_some_and(|d| !d.iter().any(|x| x == device)) {
                continue;
            }
            for choice in skill.choices() {
                validate_choice(&choice, plan, parts).map_err(|message| SkillError::Invalid {
                    path: format!("{}/{SKILL_FILE}", skill.id),
                    message: format!("move `{choice}`: {message}"),
                })?;
            }
        }
        Ok(())
    }
}

/// Whether one choice can be made on `plan`.
fn validate_choice(choice: &Choice, plan: &Plan, parts: &[&str]) -> Result<(), String> {
    if let Choice::EnablePart { part } = choice
        && !parts.contains(&part.as_str())
    {
        return Err(format!(
            "the template has no part `{part}` (it has: {})",
            parts.join(", ")
        ));
    }
    let changes = choice.resolve(plan).map_err(|e| e.to_string())?;
    change::apply_all(plan, &changes).map_err(|e| e.to_string())?;
    Ok(())
}

/// The sub-folders of `dir`, sorted.
fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SkillError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SkillError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dirs = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| SkillError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn collect_embedded(dir: &'static Dir<'static>, out: &mut Vec<(String, String)>) {
    for sub in dir.dirs() {
        collect_embedded(sub, out);
    }
    for file in dir.files() {
        let path = file.path().to_string_lossy().replace('\\', "/");
        if path.ends_with(SKILL_FILE) {
            let text = String::from_utf8_lossy(file.contents()).into_owned();
            out.push((path, text));
        }
    }
}

/// What went wrong reading the skills library.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SkillError {
    /// A SKILL.md is malformed or its moves do not fit the plan.
    #[error("skills/{path}: {message}")]
    Invalid {
        /// The SKILL.md, relative to `skills/`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
