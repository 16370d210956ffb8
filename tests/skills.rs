//! The skills library, the search policies, the git state and Serve.lock, driven through
//! the library's public interface.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use vibeserve::generate::{FileSet, Template};
use vibeserve::manifest::Direction;
use vibeserve::plan::{DeviceKind, DevicePlan, KernelVariant, ModelPlan, Plan};
use vibeserve::search::{
    self, Attempt, Backlog, Evolutionary, Hints, History, Policy, Task, Verdict,
};
use vibeserve::skills::change::{self, Change, ChangeError, Choice};
use vibeserve::skills::{Facts, Library, Stage};

#[path = "skills/lock.rs"]
mod lock;
#[path = "skills/state.rs"]
mod state;

/// SmolLM2-135M's shape, as its GGUF header gives it.
fn smollm2() -> ModelPlan {
    ModelPlan {
        arch: "llama".into(),
        n_layers: 30,
        n_embd: 576,
        n_ff: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        context_length: 8192,
        rope_theta: 100000.0,
        rms_norm_eps: 1e-5,
        tied_embeddings: true,
    }
}

/// Round 0 of a 2-thread CPU target.
pub fn round0() -> Plan {
    let device = DevicePlan {
        kind: DeviceKind::Cpu,
        threads: 2,
        kernel_variant: KernelVariant::Auto,
    };
    Plan::round0("smollm2-cpu", smollm2(), device)
}

/// The facts of a 2-thread AVX2 CPU target with a closed loop of `concurrency` clients.
fn cpu_facts(concurrency: u32) -> Facts {
    Facts {
        device: "cpu".into(),
        arch: Some("llama".into()),
        isa: Some("avx2".into()),
        quant: Some("Q4_1".into()),
        arrival: "concurrency".into(),
        concurrency: Some(concurrency),
        threads: Some(2),
    }
}

fn template_parts() -> Vec<String> {
    Template::embedded()
        .unwrap()
        .manifest
        .parts
        .keys()
        .cloned()
        .collect()
}

fn validate(library: &Library) -> Result<(), String> {
    let parts = template_parts();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    library
        .validate(&round0(), &parts)
        .map_err(|e| e.to_string())
}

/// A one-skill library from SKILL.md text.
fn one_skill(front: &str) -> Result<Library, String> {
    let text = format!("+++\n{front}+++\n\n# Body\n\nText.\n");
    Library::from_files(vec![("serving/x/SKILL.md".into(), text)]).map_err(|e| e.to_string())
}

const FRONT: &str = "name = \"x\"\nlayer = \"serving\"\nsummary = \"s\"\n";

#[test]
fn embedded_library_parses_and_every_move_fits_the_plan() {
    let library = Library::embedded().unwrap();
    assert!(
        library.skills.len() >= 10,
        "{} skills",
        library.skills.len()
    );
    validate(&library).unwrap();
    let layers: BTreeSet<&str> = library
        .skills
        .iter()
        .map(|s| s.front.layer.as_str())
        .collect();
    assert_eq!(
        layers,
        BTreeSet::from(["hardware", "model", "serving", "workload"])
    );
}

#[test]
fn embedded_library_matches_the_skills_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../skills");
    assert_eq!(
        Library::from_dir(&dir).unwrap(),
        Library::embedded().unwrap()
    );
}

/// Every tunable plan field (all but the model's shape, the target and the device kind) is
/// moved by some skill: a new plan constant needs a skill.
#[test]
fn every_tunable_plan_field_has_a_skill() {
    let library = Library::embedded().unwrap();
    let moved: BTreeSet<String> = library
        .skills
        .iter()
        .flat_map(|s| s.choices())
        .flat_map(|c| match c {
            Choice::Set {
                field, conserve, ..
            } => vec![Some(field), conserve],
            Choice::Scale { field, .. } => vec![Some(field)],
            Choice::EnablePart { .. } => vec![],
        })
        .flatten()
        .collect();
    let fixed = ["version", "target", "parts", "device.kind"];
    let mut other = round0();
    other.device.threads = 3;
    other.device.kernel_variant = KernelVariant::Portable;
    other.serving.max_batch_seqs += 1;
    other.serving.max_batch_tokens += 1;
    other.serving.prefill_chunk += 1;
    other.serving.max_queue += 1;
    other.kv_cache.block_size += 1;
    other.kv_cache.blocks += 1;
    // Every leaf outside `model` that a plan can differ in, whatever fields exist by now.
    let all = plan_leaves(&round0());
    for field in all
        .iter()
        .filter(|f| !f.starts_with("model.") && !fixed.contains(&f.as_str()))
    {
        assert!(moved.contains(field), "no skill moves `{field}`");
    }
    assert!(
        change::diff(&round0(), &other)
            .iter()
            .all(|c| moved.contains(&c.field))
    );
}

/// Dotted paths of every leaf field of a plan.
fn plan_leaves(plan: &Plan) -> Vec<String> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", &toml::Value::try_from(plan).unwrap(), &mut out);
    out
}

#[test]
fn a_move_on_a_missing_field_fails_validation() {
    let library = one_skill(&format!(
        "{FRONT}[[moves]]\nfield = \"serving.prefil_chunk\"\nvalues = [64]\n"
    ))
    .unwrap();
    let err = validate(&library).unwrap_err();
    assert!(
        err.contains("serving.prefil_chunk") && err.contains("no field"),
        "{err}"
    );
}

#[test]
fn a_move_value_of_the_wrong_type_fails_validation() {
    let library = one_skill(&format!(
        "{FRONT}[[moves]]\nfield = \"serving.prefill_chunk\"\nvalues = [\"big\"]\n"
    ))
    .unwrap();
    assert!(validate(&library).unwrap_err().contains("does not fit"));
    let library = one_skill(&format!(
        "{FRONT}[[moves]]\nfield = \"device.kernel_variant\"\nvalues = [\"avx3\"]\n"
    ))
    .unwrap();
    assert!(validate(&library).unwrap_err().contains("avx3"));
    let library = one_skill(&format!(
        "{FRONT}[[moves]]\nfield = \"device\"\nvalues = [1]\n"
    ))
    .unwrap();
    assert!(validate(&library).unwrap_err().contains("no field"));
}

#[test]
fn a_part_move_needs_a_template_part() {
    let library = one_skill(&format!("{FRONT}[[moves]]\npart = \"prefix-cache\"\n")).unwrap();
    assert!(
        validate(&library)
            .unwrap_err()
            .contains("no part `prefix-cache`")
    );
    let library = one_skill(&format!("{FRONT}[[moves]]\npart = \"core\"\n")).unwrap();
    validate(&library).unwrap();
}

#[test]
fn malformed_skills_are_rejected() {
    assert!(
        one_skill(&format!("{FRONT}colour = \"red\"\n"))
            .unwrap_err()
            .contains("colour")
    );
    assert!(
        one_skill(&format!("{FRONT}[[moves]]\nfield = \"a.b\"\n"))
            .unwrap_err()
            .contains("a move is")
    );
    assert!(
        one_skill(&format!(
            "{FRONT}[[moves]]\nfield = \"a.b\"\nfactors = [-1.0]\n"
        ))
        .is_err()
    );
    let wrong_folder =
        one_skill("name = \"y\"\nlayer = \"serving\"\nsummary = \"s\"\n").unwrap_err();
    assert!(
        wrong_folder.contains("serving/y/SKILL.md"),
        "{wrong_folder}"
    );
    let no_fence = Library::from_files(vec![("serving/x/SKILL.md".into(), "# x\n".into())]);
    assert!(no_fence.is_err());
}

#[test]
fn applicability_names_the_unmet_condition() {
    let library = Library::embedded().unwrap();
    let facts = cpu_facts(4);
    let avx512 = library.get("hardware/kernel-avx512vnni").unwrap();
    let unmet = avx512.unmet(&facts);
    assert_eq!(unmet.len(), 1);
    assert_eq!(unmet[0].condition, "isa");
    assert_eq!(unmet[0].found, "avx2");
    assert!(
        library
            .get("hardware/kernel-avx2")
            .unwrap()
            .unmet(&facts)
            .is_empty()
    );
    let seqs = library.get("serving/batch-seqs").unwrap();
    assert_eq!(seqs.unmet(&facts)[0].condition, "min_concurrency");
    assert!(seqs.unmet(&cpu_facts(32)).is_empty());
    let mut unknown = facts.clone();
    unknown.quant = None;
    assert_eq!(
        library.get("hardware/kernel-avx2").unwrap().unmet(&unknown)[0].found,
        "unknown"
    );
    let listing = vibeserve::skills::command::listing(&library, Some(&facts));
    assert!(
        listing.contains("doesn't apply: isa one of [avx512vnni] (target: avx2)"),
        "{listing}"
    );
}

#[test]
fn changes_are_type_checked_and_round_trip_as_text() {
    let plan = round0();
    let set = Change::new("serving.prefill_chunk", 128);
    assert_eq!(set.apply(&plan).unwrap().serving.prefill_chunk, 128);
    let variant = Change::new("device.kernel_variant", "avx2");
    assert_eq!(
        variant.apply(&plan).unwrap().device.kernel_variant,
        KernelVariant::Avx2
    );
    assert!(matches!(
        Change::new("serving.nope", 1).apply(&plan),
        Err(ChangeError::NoField(_))
    ));
    assert!(matches!(
        Change::new("serving.max_queue", -1).apply(&plan),
        Err(ChangeError::BadValue { .. })
    ));
    let parts = Change::new("parts", vec!["core".to_string(), "extra".to_string()]);
    for c in [set, variant, parts] {
        assert_eq!(c.to_string().parse::<Change>().unwrap(), c);
    }
    assert!("serving.prefill_chunk 128".parse::<Change>().is_err());
}

#[test]
fn conserving_and_scaling_moves_keep_the_budget() {
    let plan = round0();
    let blocks = plan.kv_cache.blocks as i64;
    let choice = Choice::Set {
        field: "kv_cache.block_size".into(),
        value: 32.into(),
        conserve: Some("kv_cache.blocks".into()),
    };
    let after = change::apply_all(&plan, &choice.resolve(&plan).unwrap()).unwrap();
    assert_eq!(after.kv_cache.block_size, 32);
    assert_eq!(after.kv_cache.blocks as i64, blocks * 16 / 32);
    let double = Choice::Scale {
        field: "kv_cache.blocks".into(),
        factor: 2.0,
    };
    let after = change::apply_all(&plan, &double.resolve(&plan).unwrap()).unwrap();
    assert_eq!(after.kv_cache.blocks as i64, blocks * 2);
    let half = Choice::Scale {
        field: "device.threads".into(),
        factor: 0.5,
    };
    assert_eq!(
        change::apply_all(&plan, &half.resolve(&plan).unwrap())
            .unwrap()
            .device
            .threads,
        1
    );
}

#[test]
fn diff_then_apply_reproduces_the_other_plan() {
    let a = round0();
    let mut b = a.clone();
    b.serving.prefill_chunk = 64;
    b.kv_cache.block_size = 32;
    b.parts.insert("cuda".into());
    let changes = change::diff(&a, &b);
    assert_eq!(changes.len(), 3);
    assert_eq!(change::apply_all(&a, &changes).unwrap(), b);
    assert!(change::diff(&a, &a).is_empty());
}

/// A made-up but deterministic objective (higher is better) with a known optimum:
/// prefill chunk 128, block size 32, 1 thread.
fn synthetic_objective(plan: &Plan) -> f64 {
    let mut score = 100.0;
    score -= (plan.serving.prefill_chunk as f64 / 128.0).log2().abs() * 5.0;
    score -= (plan.kv_cache.block_size as f64 / 32.0).log2().abs() * 3.0;
    score -= (plan.device.threads as f64 - 1.0).abs() * 4.0;
    score
}

/// Runs `rounds` rounds of `policy` against the synthetic objective; returns the history.
fn run_loop(policy: &mut dyn Policy, rounds: u32, hints: &Hints) -> History {
    let mut history = History::new(
        Direction::Max,
        round0(),
        Some(synthetic_objective(&round0())),
    );
    for _ in 0..rounds {
        let Some(task) = policy.next(&history, hints) else {
            break;
        };
        let best = history.best().unwrap();
        let plan = search::apply(&best.plan, &task).unwrap();
        assert!(
            !history.has_plan(&plan),
            "{} proposed a plan already tried: {}",
            policy.name(),
            task.label
        );
        let value = synthetic_objective(&plan);
        let verdict = if value > best.objective.unwrap() {
            Verdict::Accepted
        } else {
            Verdict::RejectedRegression
        };
        let round = history.next_round();
        history.push(Attempt {
            round,
            task: Some(task),
            plan,
            verdict,
            objective: Some(value),
        });
    }
    history
}

#[test]
fn backlog_follows_priorities_and_never_repeats() {
    let library = Library::embedded().unwrap();
    let facts = cpu_facts(4);
    let mut backlog = Backlog::new(search::candidates(&library, &facts));
    let history = run_loop(&mut backlog, 40, &Hints::default());
    let tasks: Vec<&Task> = history
        .attempts
        .iter()
        .filter_map(|a| a.task.as_ref())
        .collect();
    // The highest-priority applicable skill goes first.
    assert_eq!(tasks[0].skill, "serving/prefill-chunk");
    // Nothing is tried twice, and the backlog runs dry rather than looping.
    let labels: BTreeSet<(&str, &str)> = tasks
        .iter()
        .map(|t| (t.skill.as_str(), t.label.as_str()))
        .collect();
    assert_eq!(labels.len(), tasks.len());
    assert!(tasks.len() < 40);
    let best = history.best().unwrap();
    assert_eq!(
        (
            best.plan.serving.prefill_chunk,
            best.plan.kv_cache.block_size,
            best.plan.device.threads
        ),
        (128, 32, 1)
    );
    // Skills whose conditions fail never appear.
    assert!(
        tasks
            .iter()
            .all(|t| t.skill != "hardware/kernel-avx512vnni" && t.skill != "serving/batch-seqs")
    );
}

#[test]
fn backlog_reorders_by_hints() {
    let library = Library::embedded().unwrap();
    let facts = cpu_facts(4);
    let mut backlog = Backlog::new(search::candidates(&library, &facts));
    let history = History::new(Direction::Max, round0(), Some(1.0));
    let queueing = Hints {
        dominant: Some(Stage::Queueing),
        suggest: vec![],
    };
    let first = backlog.next(&history, &queueing).unwrap();
    let skill = library.get(&first.skill).unwrap();
    assert!(
        skill.front.addresses.contains(&Stage::Queueing),
        "{}",
        first.skill
    );
    let named = Hints {
        dominant: None,
        suggest: vec!["hardware/threads".into()],
    };
    assert_eq!(
        backlog.next(&history, &named).unwrap().skill,
        "hardware/threads"
    );
    // Same inputs, same answer.
    assert_eq!(
        backlog.next(&history, &named),
        backlog.next(&history, &named)
    );
}

#[test]
fn evolutionary_is_seeded_and_never_repeats_a_plan() {
    let library = Library::embedded().unwrap();
    let candidates = search::candidates(&library, &cpu_facts(4));
    let run = |seed| {
        run_loop(
            &mut Evolutionary::new(candidates.clone(), seed),
            12,
            &Hints::default(),
        )
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a, b);
    assert!(a.attempts.len() > 6);
    assert_ne!(run(8), a, "a different seed should explore differently");
    let best = a.best().unwrap().objective.unwrap();
    assert!(
        best > a.attempts[0].objective.unwrap(),
        "12 rounds found nothing better"
    );
}

#[test]
fn evolutionary_recombines_field_groups_of_two_parents() {
    let library = Library::embedded().unwrap();
    let candidates = search::candidates(&library, &cpu_facts(4));
    let mut history = History::new(Direction::Max, round0(), Some(1.0));
    let mut left = round0();
    left.serving.prefill_chunk = 64;
    let mut right = round0();
    right.kv_cache.block_size = 32;
    let task = |skill: &str| {
        Some(Task {
            skill: skill.into(),
            label: String::new(),
            changes: vec![],
        })
    };
    history.push(Attempt {
        round: 1,
        task: task("a"),
        plan: left.clone(),
        verdict: Verdict::Accepted,
        objective: Some(2.0),
    });
    history.push(Attempt {
        round: 2,
        task: task("b"),
        plan: right.clone(),
        verdict: Verdict::RejectedRegression,
        objective: Some(1.5),
    });
    let mut saw_recombination = false;
    for seed in 0..40 {
        let task = Evolutionary::new(candidates.clone(), seed)
            .next(&history, &Hints::default())
            .unwrap();
        let child = search::apply(&left, &task).unwrap();
        if task.skill == search::evolutionary::RECOMBINE_SKILL {
            saw_recombination = true;
            assert_eq!(
                child.serving.prefill_chunk, 64,
                "serving comes from the left parent (the other has the same)"
            );
            assert_eq!(
                child.kv_cache.block_size, 32,
                "the only new child takes kv_cache from the right"
            );
        }
    }
    assert!(saw_recombination);
}

#[test]
fn verdicts_round_trip_as_text() {
    for v in search::VERDICTS {
        assert_eq!(v.as_str().parse::<Verdict>().unwrap(), v);
    }
    assert!("accepted-ish".parse::<Verdict>().is_err());
}

/// Metrics of a measured attempt.
pub fn metrics(objective: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("output_tokens_per_s".to_string(), objective),
        ("p99_ttft_ms".to_string(), 812.5),
    ])
}

/// A small generated-crate-like file set that differs per plan.
pub fn files_for(plan: &Plan) -> FileSet {
    let mut files = FileSet::default();
    files.insert("Plan.toml", plan.to_toml().into_bytes());
    files.insert("src/main.rs", b"fn main() {}\n".to_vec());
    files.insert(
        "src/kernels/mod.rs",
        format!("// {}\n", plan.digest()).into_bytes(),
    );
    files
}
