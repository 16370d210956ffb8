//! `cargo vibeserve generate [TARGET]`: write (or `--check`) the round-0 server crate.

use std::path::PathBuf;

use crate::manifest::{Hardware, ModelSource, TargetArg};
use crate::model::ModelMetadata;
use crate::plan::{DUMMY_PART, DevicePlan, ModelPlan, Plan, PlanError};
use crate::prepare::{PrepareError, Prepared, prepare};

use super::{FileDiff, GenerateError, generate};

/// Arguments of `cargo vibeserve generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Which target to generate.
    #[command(flatten)]
    pub target: TargetArg,
    /// Write the crate here instead of `<cargo target dir>/vibeserve/<target>/server`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write nothing: compare with the crate on disk and fail if any file differs.
    #[arg(long)]
    pub check: bool,
}

/// The round-0 plan of a prepared target.
pub fn round0_plan(prepared: &Prepared) -> Result<Plan, PlanError> {
    let manifest = &prepared.manifest;
    let model = match &prepared.metadata {
        ModelMetadata::Gguf(meta) => ModelPlan::from_gguf(meta)?,
        ModelMetadata::HfConfig(config) => ModelPlan::from_hf_config(config)?,
    };
    let device = DevicePlan::from_hardware(&manifest.hardware);
    let mut plan = Plan::round0(&manifest.target.name, model, device);
    if let Hardware::Cuda { arch, gpus } = &manifest.hardware {
        plan = plan.for_cuda(arch, *gpus as usize)?;
    }
    if let ModelSource::Dummy { .. } = manifest.model.source {
        // The server's machine makes the weights with the crate's `materialize` binary.
        plan.parts.insert(DUMMY_PART.to_string());
    }
    Ok(plan)
}

/// Runs `cargo vibeserve generate`.
pub fn run(args: &GenerateArgs) -> Result<(), GenerateCommandError> {
    let prepared = prepare(&args.target)?;
    let plan = round0_plan(&prepared)?;
    let files = generate(&plan)?;
    let dir = args.out.clone().unwrap_or_else(|| prepared.server_dir());
    if args.check {
        let diffs = files.diff(&dir)?;
        if !diffs.is_empty() {
            return Err(GenerateCommandError::Drift { dir, diffs });
        }
        println!("{} is up to date (plan {})", dir.display(), plan.digest());
    } else {
        files.write(&dir)?;
        println!(
            "generated {} ({} files, plan {}, tree {})",
            dir.display(),
            files.iter().count(),
            plan.digest(),
            &files.tree_digest()[..16],
        );
    }
    Ok(())
}

/// What went wrong in `cargo vibeserve generate`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GenerateCommandError {
    /// Loading the target or its model failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Prepare(#[from] PrepareError),
    /// The plan could not be made.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// Rendering or writing failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Generate(#[from] GenerateError),
    /// `--check` found differences.
    #[error("{} differs from what cargo-vibeserve generates:\n  {}", dir.display(), diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    #[diagnostic(help("run `cargo vibeserve generate` to rewrite it"))]
    Drift {
        /// The crate folder.
        dir: PathBuf,
        /// The differing files.
        diffs: Vec<FileDiff>,
    },
}
