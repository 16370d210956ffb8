//! Manifest errors. Every problem in a Serve.toml carries the file's text, the span of the
//! offending value, a label and, where there is an obvious fix, a help line.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};
use thiserror::Error;

use crate::cli::exit_code;
use crate::workspace::WorkspaceError;

/// The text of a file that problems point into, named as the user wrote its path.
pub(crate) type Source = Arc<NamedSource<String>>;

/// What kind of mistake a [`Problem`] is; also its diagnostic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The text is not TOML.
    Syntax,
    /// `[target] version` names a schema this build does not know.
    Version,
    /// A key that the schema does not have.
    UnknownKey,
    /// A required key or table is missing.
    MissingKey,
    /// A value of the wrong TOML type.
    WrongType,
    /// A value of the right type that is not allowed (unknown enum value, out of range, …).
    BadValue,
    /// A path that names no file or folder.
    MissingFile,
    /// A `sha256` that is not 64 hexadecimal digits.
    BadSha256,
    /// An objective that does not parse or names an unknown metric.
    BadObjective,
    /// A constraint that does not parse or names an unknown metric.
    BadConstraint,
    /// Keys that are each fine but do not go together (`arch` on a CPU, two model sources, …).
    Conflict,
    /// A workload file whose lines are not OpenAI request bodies.
    BadWorkload,
}

impl ProblemKind {
    /// The last part of the diagnostic code, `vibeserve::manifest::<this>`.
    fn code(self) -> &'static str {
        match self {
            ProblemKind::Syntax => "syntax",
            ProblemKind::Version => "version",
            ProblemKind::UnknownKey => "unknown_key",
            ProblemKind::MissingKey => "missing_key",
            ProblemKind::WrongType => "wrong_type",
            ProblemKind::BadValue => "bad_value",
            ProblemKind::MissingFile => "missing_file",
            ProblemKind::BadSha256 => "bad_sha256",
            ProblemKind::BadObjective => "bad_objective",
            ProblemKind::BadConstraint => "bad_constraint",
            ProblemKind::Conflict => "conflict",
            ProblemKind::BadWorkload => "bad_workload",
        }
    }
}

/// One located mistake in a Serve.toml (or in a file it names).
#[derive(Debug)]
pub struct Problem {
    /// What kind of mistake this is.
    pub kind: ProblemKind,
    /// The one-line message.
    pub message: String,
    source: Source,
    /// The primary label first, then any secondary ones.
    labels: Vec<LabeledSpan>,
    help: Option<String>,
}

impl Problem {
    /// A problem at `span` of `source`, with the primary label `label`.
    pub(crate) fn new(
        kind: ProblemKind,
        source: &Source,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem {
            kind,
            message: message.into(),
            source: Arc::clone(source),
            labels: vec![LabeledSpan::new_primary_with_span(Some(label.into()), span)],
            help: None,
        }
    }

    /// Add a secondary label, e.g. at the key that makes this one wrong.
    pub(crate) fn with_label(mut self, span: Range<usize>, label: impl Into<String>) -> Problem {
        self.labels
            .push(LabeledSpan::new_with_span(Some(label.into()), span));
        self
    }

    /// Say what would be valid.
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// The byte range of the primary label in the file.
    pub fn span(&self) -> Range<usize> {
        self.labels
            .first()
            .map_or(0..0, |l| l.offset()..l.offset() + l.len())
    }

    /// The help line, if any.
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!(
            "vibeserve::manifest::{}",
            self.kind.code()
        )))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// A Serve.toml with one or more problems; the first is the main diagnostic, the rest are
/// shown after it.
#[derive(Debug)]
pub struct Invalid {
    problems: Vec<Problem>,
}

impl Invalid {
    /// Wrap the problems found; `None` when there are none.
    pub(crate) fn from_problems(problems: Vec<Problem>) -> Option<Invalid> {
        (!problems.is_empty()).then_some(Invalid { problems })
    }

    /// Every problem found, in file order of discovery (at least one).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The main problem.
    fn first(&self) -> &Problem {
        // `from_problems` never builds an empty `Invalid`.
        &self.problems[0]
    }
}

impl From<Problem> for Invalid {
    fn from(problem: Problem) -> Invalid {
        Invalid {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.first().message)?;
        match self.problems.len() {
            1 => Ok(()),
            2 => f.write_str(" (and 1 more problem)"),
            n => write!(f, " (and {} more problems)", n - 1),
        }
    }
}

impl std::error::Error for Invalid {}

impl Diagnostic for Invalid {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.first().code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.first().help()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.first().source_code()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.first().labels()
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.problems.len() == 1 {
            return None;
        }
        Some(Box::new(
            self.problems[1..].iter().map(|p| p as &dyn Diagnostic),
        ))
    }
}

/// Everything that can go wrong in the manifest stage: loading, finding a target, `init`.
#[derive(Debug, Error, Diagnostic)]
pub enum ManifestError {
    /// The Serve.toml could not be read.
    #[error("cannot read {}", path.display())]
    #[diagnostic(code(vibeserve::manifest::read))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// The Serve.toml has problems; each names its line and column.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(#[from] Invalid),

    /// A folder was named that holds no Serve.toml.
    #[error("no Serve.toml in {}", dir.display())]
    #[diagnostic(
        code(vibeserve::manifest::no_manifest),
        help("create one with `cargo vibeserve init {}`", dir.display())
    )]
    NoManifest {
        /// The folder.
        dir: PathBuf,
    },

    /// TARGET is neither a Serve.toml, a folder holding one, nor a target name.
    #[error("no target `{target}`: it is not a Serve.toml, a folder with one, or a target under {}", targets_dir.display())]
    #[diagnostic(
        code(vibeserve::manifest::target_not_found),
        help("{}", targets_help(found))
    )]
    TargetNotFound {
        /// What was asked for.
        target: String,
        /// The workspace's `targets/` folder that was searched.
        targets_dir: PathBuf,
        /// The target names found there.
        found: Vec<String>,
    },

    /// The workspace around the current folder could not be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(#[from] WorkspaceError),

    /// `init` would overwrite a file.
    #[error("{} already exists", path.display())]
    #[diagnostic(
        code(vibeserve::manifest::exists),
        help("pass --force to overwrite it, or pick another folder")
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },

    /// `init` could not write a file.
    #[error("cannot write {}", path.display())]
    #[diagnostic(code(vibeserve::manifest::write))]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },

    /// `init --sha256` disagrees with the digest of the `--gguf` file.
    #[error("--sha256 {given} does not match {}, whose sha256 is {computed}", path.display())]
    #[diagnostic(
        code(vibeserve::manifest::sha256_mismatch),
        help("leave out --sha256 to use the file's digest, or check that this is the right file")
    )]
    Sha256Mismatch {
        /// The model file.
        path: PathBuf,
        /// The digest given on the command line.
        given: String,
        /// The file's digest.
        computed: String,
    },

    /// `init` flags that do not go together.
    #[error("{message}")]
    #[diagnostic(code(vibeserve::manifest::init_args))]
    InitArgs {
        /// What is wrong with them.
        message: String,
    },
}

impl ManifestError {
    /// The process exit code for this error (see [`crate::cli::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ManifestError::Invalid(_) => exit_code::INVALID_MANIFEST,
            ManifestError::NoManifest { .. } | ManifestError::TargetNotFound { .. } => {
                exit_code::TARGET_NOT_FOUND
            }
            ManifestError::Exists { .. } => exit_code::ALREADY_EXISTS,
            ManifestError::InitArgs { .. } => exit_code::USAGE,
            ManifestError::Read { .. }
            | ManifestError::Workspace(_)
            | ManifestError::Write { .. }
            | ManifestError::Sha256Mismatch { .. } => exit_code::FAILURE,
        }
    }
}

/// The help line of [`ManifestError::TargetNotFound`].
fn targets_help(found: &[String]) -> String {
    if found.is_empty() {
        "no targets found; pass a path to a Serve.toml, or create one with `cargo vibeserve init`"
            .into()
    } else {
        format!("targets found: {}", found.join(", "))
    }
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    // 0.8 on the Jaro-Winkler scale catches one or two wrong letters in short names without
    // suggesting unrelated words.
    const MIN_SIMILARITY: f64 = 0.8;
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= MIN_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The part of `span` on its first line: a table's `[header]` rather than the whole table.
pub(crate) fn first_line(text: &str, span: Range<usize>) -> Range<usize> {
    let end = text
        .get(span.start..)
        .and_then(|rest| rest.find('\n'))
        .map_or(span.end, |n| (span.start + n).min(span.end));
    span.start..end
}
