//! `cargo vibeserve skills [TARGET]`: list the skills, whether each applies to the target
//! and why not, and their moves.

use std::fmt::Write as _;

use super::{Facts, Library, Skill, SkillError};
use crate::generate::Template;
use crate::generate::command::round0_plan;
use crate::manifest::TargetArg;
use crate::prepare::{PrepareError, prepare};
use crate::workspace::MANIFEST_FILE;

/// Arguments of `cargo vibeserve skills`.
#[derive(Debug, Clone, clap::Args)]
pub struct SkillsArgs {
    /// The target to check the skills against; without one (and no ./Serve.toml), every
    /// skill is listed.
    #[command(flatten)]
    pub target: TargetArg,
    /// Print one skill's SKILL.md text (e.g. `serving/prefill-chunk`) instead of the list.
    #[arg(long, value_name = "SKILL")]
    pub show: Option<String>,
}

/// What went wrong listing the skills.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SkillsCommandError {
    /// The target could not be prepared.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Prepare(#[from] PrepareError),
    /// The library is broken.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Skills(#[from] SkillError),
    /// The round-0 plan could not be made.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// `--show` names no skill.
    #[error("there is no skill `{name}`")]
    UnknownSkill {
        /// The name given.
        name: String,
        /// The closest skill id, or how to list them.
        #[help]
        help: String,
    },
    /// The template could not be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Template(#[from] crate::generate::GenerateError),
}

/// Runs `cargo vibeserve skills`.
pub fn run(args: &SkillsArgs) -> Result<(), SkillsCommandError> {
    let library = Library::embedded()?;
    if let Some(name) = &args.show {
        let skill = library.get(name).ok_or_else(|| {
            let ids = library.skills.iter().map(|s| s.id.as_str());
            SkillsCommandError::UnknownSkill {
                name: name.clone(),
                help: match crate::manifest::error::closest(name, ids) {
                    Some(id) => format!("did you mean `{id}`?"),
                    None => "`cargo vibeserve skills` lists them".to_string(),
                },
            }
        })?;
        println!("# {} — {}\n\n{}", skill.id, skill.front.summary, skill.body);
        return Ok(());
    }
    let no_target = args.target.target.is_none() && !std::path::Path::new(MANIFEST_FILE).is_file();
    if no_target {
        print!("{}", listing(&library, None));
        return Ok(());
    }
    let prepared = prepare(&args.target)?;
    let plan = round0_plan(&prepared)?;
    let template = Template::embedded()?;
    let parts: Vec<&str> = template.manifest.parts.keys().map(String::as_str).collect();
    library.validate(&plan, &parts)?;
    let facts = Facts::from_target(&prepared.manifest, Some(&prepared.metadata));
    println!(
        "target {}: {}",
        prepared.manifest.target.name,
        describe(&facts)
    );
    print!("{}", listing(&library, Some(&facts)));
    Ok(())
}

/// The facts in one line.
fn describe(facts: &Facts) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_string());
    let num = |v: Option<u32>| v.map_or_else(|| "unknown".to_string(), |n| n.to_string());
    format!(
        "device {}, arch {}, isa {}, quant {}, arrival {}, concurrency {}, threads {}",
        facts.device,
        show(&facts.arch),
        show(&facts.isa),
        show(&facts.quant),
        facts.arrival,
        num(facts.concurrency),
        num(facts.threads)
    )
}

/// The listing: one block per skill, applicable ones first when facts are given.
pub fn listing(library: &Library, facts: Option<&Facts>) -> String {
    let mut out = String::new();
    let mut skills: Vec<&Skill> = library.skills.iter().collect();
    if let Some(facts) = facts {
        skills.sort_by_key(|s| {
            (
                !s.unmet(facts).is_empty(),
                std::cmp::Reverse(s.front.priority),
            )
        });
    }
    for skill in skills {
        let status = match facts.map(|f| skill.unmet(f)) {
            None => String::new(),
            Some(unmet) if unmet.is_empty() => "applies".to_string(),
            Some(unmet) => {
                let reasons: Vec<String> = unmet.iter().map(ToString::to_string).collect();
                format!("doesn't apply: {}", reasons.join("; "))
            }
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{:<28} {status}", skill.id);
        let _ = writeln!(out, "    {}", skill.front.summary);
        let stages: Vec<&str> = skill.front.addresses.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "    priority {}{}",
            skill.front.priority,
            if stages.is_empty() {
                String::new()
            } else {
                format!(", addresses {}", stages.join(", "))
            }
        );
        let choices = skill.choices();
        if choices.is_empty() {
            let _ = writeln!(
                out,
                "    no built-in moves (guidance for an LLM Implementer)"
            );
        }
        for choice in choices {
            let _ = writeln!(out, "    move: {choice}");
        }
    }
    out
}
