//! `cargo vibeserve build`: round 0, then one planned change per round, each compiled,
//! judged, measured, recorded in the state repository and, when accepted, in Serve.lock.
//! `--locked` rebuilds the locked server with no search; `--relock` replays the locked
//! rounds on today's templates and rewrites Serve.lock. `--stage DIR` builds the next
//! rounds' candidates for another machine to judge and measure (`cargo vibeserve
//! evaluate DIR` there); `--resume DIR` records what came back.

pub mod compile;
pub mod locked;
pub mod resume;
pub mod rounds;
pub mod stage;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::generate::GenerateError;
use crate::judge::JudgeError;
use crate::lock::LockError;
use crate::manifest::TargetArg;
use crate::model::GgufMetadata;
use crate::plan::PlanError;
use crate::prepare::{PrepareError, Prepared, prepare};
use crate::state::StateError;
pub use compile::{CompileError, compile};

/// Environment variable for tests: exit with [`ABORT_EXIT_CODE`] right after the
/// attempt of this round is recorded, as a kill at that point would.
pub const ABORT_AFTER_ROUND_ENV: &str = "VIBESERVE_ABORT_AFTER_ROUND";
/// The exit code of that simulated kill.
pub const ABORT_EXIT_CODE: i32 = 75;

/// `cargo vibeserve build [TARGET]`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The target.
    #[command(flatten)]
    pub target: TargetArg,
    /// Rounds after round 0 (default: `[search] rounds`). A rerun continues up to this.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// No search: rebuild the server Serve.lock records, verify its tree, compile, judge.
    #[arg(long, conflicts_with = "relock")]
    pub locked: bool,
    /// Replay Serve.lock's rounds on today's templates, re-judge, and rewrite Serve.lock.
    #[arg(long)]
    pub relock: bool,
    /// Build the next rounds' candidates into a bundle in DIR, for `cargo vibeserve
    /// evaluate DIR` on the machine that runs them.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["locked", "relock", "resume"])]
    pub stage: Option<PathBuf>,
    /// Record the verdicts and figures `evaluate` wrote into DIR/results.json.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["locked", "relock"])]
    pub resume: Option<PathBuf>,
    /// Where the state repository and per-round binaries go (default:
    /// `<target dir>/vibeserve/<target>/`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Who implements each round (default: `[search] agent`). `openai` reads the
    /// endpoint from `[agent]`'s environment variables.
    #[arg(long, value_enum)]
    pub agent: Option<crate::manifest::AgentKind>,
    /// The model name for `--agent openai` when Serve.toml has no `[agent]` table.
    #[arg(long)]
    pub agent_model: Option<String>,
}

/// Runs `cargo vibeserve build`.
pub fn run(args: &BuildArgs) -> Result<(), BuildError> {
    let started = Instant::now();
    let prepared = step("prepare", || prepare(&args.target))?;
    let work = args
        .state_dir
        .clone()
        .unwrap_or_else(|| prepared.vibeserve_dir.join(&prepared.manifest.target.name));
    let outcome = if let Some(dir) = &args.stage {
        let rounds = args.rounds.unwrap_or(prepared.manifest.search.rounds);
        stage::run(&prepared, &work, rounds, dir)
    } else if let Some(dir) = &args.resume {
        resume::run(&prepared, &work, dir)
    } else if args.locked || args.relock {
        locked::run(&prepared, &work, args.relock)
    } else {
        let rounds = args.rounds.unwrap_or(prepared.manifest.search.rounds);
        let agent = agent_config(&prepared.manifest, args)?;
        rounds::run(&prepared, &work, rounds, agent.as_ref())
    };
    eprintln!("build finished in {:.0?}", started.elapsed());
    outcome
}

/// The `[agent]` settings when the LLM back end implements the rounds: Serve.toml's,
/// or its defaults with `--agent-model` when `--agent openai` overrides a builtin target.
fn agent_config(
    manifest: &crate::manifest::Manifest,
    args: &BuildArgs,
) -> Result<Option<crate::manifest::Agent>, BuildError> {
    use crate::manifest::{AgentKind, defaults};
    if args.agent.unwrap_or(manifest.search.agent) == AgentKind::Builtin {
        return Ok(None);
    }
    let mut agent = manifest.agent.clone().unwrap_or(crate::manifest::Agent {
        model: String::new(),
        base_url_env: defaults::BASE_URL_ENV.into(),
        api_key_env: defaults::API_KEY_ENV.into(),
        max_tool_calls: defaults::MAX_TOOL_CALLS,
        max_tokens: defaults::MAX_TOKENS,
        max_minutes: defaults::MAX_MINUTES,
    });
    if let Some(model) = &args.agent_model {
        agent.model = model.clone();
    }
    if agent.model.is_empty() {
        return Err(BuildError::NoAgentModel);
    }
    Ok(Some(agent))
}

/// The GGUF header the Judge's probes read and perturb; a dummy safetensors model has none.
pub fn gguf(prepared: &Prepared) -> Result<&GgufMetadata, BuildError> {
    prepared
        .metadata
        .gguf()
        .ok_or_else(|| BuildError::NoGgufJudge(prepared.manifest.target.name.clone()))
}

/// The final server's place: `<target dir>/vibeserve/<target>/best/server`.
pub fn best_bin(prepared: &Prepared) -> PathBuf {
    prepared
        .vibeserve_dir
        .join(&prepared.manifest.target.name)
        .join("best")
        .join(compile::SERVER_BIN)
}

/// Runs `f` under a spinner named `what`, then prints how long it took.
pub fn step<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let start = Instant::now();
    let out = f();
    bar.finish_and_clear();
    eprintln!("  {what}: {:.1}s", start.elapsed().as_secs_f64());
    out
}

/// Copies `from` to `to` through a temporary name in `to`'s folder.
pub fn copy_bin(from: &Path, to: &Path) -> Result<(), BuildError> {
    let io = |source| BuildError::Io {
        path: to.to_path_buf(),
        source,
    };
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(".copy.tmp");
    std::fs::copy(from, &tmp).map_err(io)?;
    std::fs::rename(&tmp, to).map_err(io)
}

/// What went wrong in `cargo vibeserve build`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    /// Loading the target or its model failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Prepare(#[from] PrepareError),
    /// A plan could not be made.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// Generating a crate failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Generate(#[from] GenerateError),
    /// A crate that must build (round 0, the locked server) did not.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Compile(#[from] CompileError),
    /// The Judge could not run.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Judge(#[from] JudgeError),
    /// A server that must pass the Judge (round 0, the locked server) did not.
    #[error("the {what} server fails the Accuracy Judge: {reasons}")]
    #[diagnostic(help(
        "round 0 and the locked server are built from the template: this is a bug in the template or its engine"
    ))]
    Rejected {
        /// Which server.
        what: String,
        /// The failed probes.
        reasons: String,
    },
    /// The Evaluator could not measure.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Evaluate(#[from] crate::evaluate::EvaluateError),
    /// The Judge of a `dummy` model could not work.
    #[error(transparent)]
    #[diagnostic(transparent)]
    DummyJudge(#[from] crate::evaluate::dummy::DummyError),
    /// A staged bundle could not be written, read or resumed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bundle(#[from] crate::evaluate::bundle::BundleError),
    /// The state repository failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
    /// Serve.lock could not be read, replayed or written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] LockError),
    /// The search policy could not be made.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Search(#[from] crate::search::SearchError),
    /// The skills library is broken.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Skills(#[from] crate::skills::SkillError),
    /// A recorded or planned change does not apply.
    #[error(transparent)]
    Change(#[from] crate::skills::ChangeError),
    /// `--locked` regenerated a different crate than Serve.lock records.
    #[error(
        "{target}: the regenerated server differs from Serve.lock (tree {found}, locked {locked}); {detail}"
    )]
    #[diagnostic(help(
        "if the template change is intended, run `cargo vibeserve build {target} --relock` and commit Serve.lock"
    ))]
    Drift {
        /// The target.
        target: String,
        /// The locked tree digest.
        locked: String,
        /// Today's tree digest.
        found: String,
        /// What differs: the first differing file, or the digests that moved.
        detail: String,
    },
    /// The model's digest differs from the locked one.
    #[error("the model's sha256 {found} differs from Serve.lock's {locked}")]
    #[diagnostic(help("the model changed: run `cargo vibeserve build --relock`"))]
    ModelDrift {
        /// In Serve.lock.
        locked: String,
        /// Today.
        found: String,
    },
    /// `--agent openai` with no model named.
    #[error("`--agent openai` needs a model name")]
    #[diagnostic(help(
        "add [agent] with `model = \"…\"` to Serve.toml, or pass --agent-model NAME"
    ))]
    NoAgentModel,
    /// The LLM back end could not start.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// A recorded patch is missing, altered, or no longer applies.
    #[error("patch {path}: {message}")]
    #[diagnostic(help("the crate it was made on changed; rerun the round, or `--relock`"))]
    Patch {
        /// The patch file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The Judge's probes need a GGUF model and this target has none.
    #[error(
        "{0}: the Accuracy Judge's probes read GGUF models; this target's model is a dummy safetensors folder"
    )]
    #[diagnostic(help(
        "search with `--stage DIR` here, `cargo vibeserve evaluate DIR` where the GPU is, then `--resume DIR`; `--locked` compiles it anywhere and judges it where a GPU is"
    ))]
    NoGgufJudge(String),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
