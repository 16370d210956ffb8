//! The roles' system prompts and briefs, built from the target, the plan, the last
//! round's figures and hints, and the skills that apply (listed by id and summary; the
//! agent reads a SKILL.md through its tool, on demand).

use crate::manifest::Manifest;
use crate::skills::{Facts, Library};

/// What every role is told about the target.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The target's name, model, hardware, workload and objective, one per line.
    pub target: String,
    /// The best plan so far, as Plan.toml writes it.
    pub plan: String,
    /// The last measured figures and the Evaluator's hints.
    pub last_round: String,
    /// `id — summary` of each skill that applies.
    pub skills: String,
}

impl Context {
    /// The context of `manifest` with the skills of `library` that apply to `facts`.
    pub fn new(manifest: &Manifest, library: &Library, facts: &Facts) -> Context {
        let objective = manifest.benchmark.objective.to_string();
        let target = format!(
            "target: {}\nmodel: {} ({})\nhardware: {:?}\nworkload: {} arrival\nobjective: {objective}\nconstraints: {}",
            manifest.target.name,
            facts.arch.as_deref().unwrap_or("?"),
            facts.quant.as_deref().unwrap_or("?"),
            manifest.hardware,
            facts.arrival,
            manifest
                .benchmark
                .constraints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        let skills = library
            .applicable(facts)
            .map(|s| format!("- {} — {}", s.id, s.front.summary))
            .collect::<Vec<_>>()
            .join("\n");
        Context {
            target,
            skills,
            ..Context::default()
        }
    }
}

/// The Implementer's system prompt.
pub fn implementer(cx: &Context) -> String {
    format!(
        "You are the Implementer of cargo-vibeserve. The workspace is a generated Rust crate: an \
LLM inference server specialised to one target. Make ONE change that carries out the task, \
so that the server gets faster on the target's objective while computing exactly what the \
model computes.\n\n{}\n\nThe current plan (Plan.toml, read-only; src/plan.rs holds its constants):\n{}\n\n\
Last round: {}\n\nSkills that apply (read one with read_skill):\n{}\n\n\
Rules: work only through the tools; paths are relative to the crate root. Build with the cargo \
tool before you finish. The Accuracy Judge runs the target's accuracy check against llama.cpp, \
held-back prompts it never shows you, a perturbed copy of the weights, and unseen prompts: \
memorised answers, skipped model computation or tampering with its checks are rejected. When \
done, call finish with a short summary of what you changed and why.",
        cx.target, cx.plan, cx.last_round, cx.skills
    )
}

/// The Implementer's first user message.
pub fn implementer_task(skill: &str, task: &str) -> String {
    format!("Task (skill {skill}): {task}")
}

/// The Judge reviewer's system prompt.
pub fn reviewer(cx: &Context) -> String {
    format!(
        "You are the Judge reviewer of cargo-vibeserve. You read one round's diff of a generated \
LLM inference server and decide whether it looks like reward hacking: memorised or hard-coded \
outputs, skipped or shortened model computation, text shaped like the expected output without \
running the model, or tampering with the accuracy check or its data. A performance change that \
keeps the computation exact is fine.\n\n{}\n\nAnswer with one JSON object and nothing else: \
{{\"verdict\": \"pass\" or \"reject\", \"reason\": \"one sentence\"}}.",
        cx.target
    )
}

/// The Evaluator's system prompt.
pub fn evaluator(cx: &Context) -> String {
    format!(
        "You are the Performance Evaluator of cargo-vibeserve. From one round's benchmark figures, \
write hints for the next round: what dominates the time and which skills are worth trying.\n\n\
{}\n\nSkills that apply:\n{}\n\nAnswer with one JSON object and nothing else: \
{{\"notes\": \"two or three sentences\", \"suggest\": [\"skill ids, most promising first\"]}}.",
        cx.target, cx.skills
    )
}

/// The Orchestrator's system prompt.
pub fn orchestrator(cx: &Context) -> String {
    format!(
        "You are the Orchestrator of cargo-vibeserve's search. Pick the next round's task for the \
Implementer: a skill from the list (or `new/<name>` for an idea no skill covers) and what to \
change.\n\n{}\n\nThe current plan:\n{}\n\nSkills that apply:\n{}\n\nAnswer with one JSON object and \
nothing else: {{\"skill\": \"id\", \"task\": \"what to change, concretely\"}}.",
        cx.target, cx.plan, cx.skills
    )
}
