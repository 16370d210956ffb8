//! The skills library, the search policies, the git state and Serve.lock, driven through
//! the library's public interface.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use vibeserve::generate::{FileSet, Template};
use vibeserve::plan::{DeviceKind, DevicePlan, KernelVariant, ModelPlan, Plan};
use vibeserve::search::{self, Verdict};
use vibeserve::skills::change::{self, Change, ChangeError, Choice};
use vibeserve::skills::{Facts, Library};

#[path = "skills/lock.rs"]
mod lock;
#[path = "skills/search.rs"]
mod search_policies;
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
        rope_scaling: None,
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

/// Round 0 of an H100 target of the same model (the CUDA fields present).
pub fn round0_cuda() -> Plan {
    let device = DevicePlan {
        kind: DeviceKind::Cuda,
        threads: 1,
        kernel_variant: KernelVariant::Auto,
    };
    Plan::round0("smollm2-h100", smollm2(), device)
        .for_cuda("sm_90a", 1)
        .expect("SmolLM2 fits one GPU")
}

/// The facts of a 2-thread AVX2 CPU target with a closed loop of `concurrency` clients.
pub fn cpu_facts(concurrency: u32) -> Facts {
    Facts {
        device: "cpu".into(),
        arch: Some("llama".into()),
        isa: Some("avx2".into()),
        quant: Some("Q4_1".into()),
        arrival: "concurrency".into(),
        concurrency: Some(concurrency),
        threads: Some(2),
        gpus: None,
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
    for plan in [round0(), round0_cuda()] {
        library.validate(&plan, &parts).map_err(|e| e.to_string())?;
    }
    Ok(())
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
    // The target's identity, and protocol limits that are not performance choices.
    let fixed = [
        "version",
        "target",
        "parts",
        "device.kind",
        "cuda.arch",
        "cuda.one_shot_timeout_ms",
        "http.max_body_bytes",
        "http.retry_after_secs",
        "http.sse_keep_alive_secs",
        "http.shutdown_grace_secs",
        "http.engine_idle_tick_ms",
    ];
    // Every leaf outside `model` that a plan can differ in, whatever fields exist by now.
    let all: BTreeSet<String> = [round0(), round0_cuda()]
        .iter()
        .flat_map(plan_leaves)
        .collect();
    for field in all
        .iter()
        .filter(|f| !f.starts_with("model.") && !fixed.contains(&f.as_str()))
    {
        assert!(moved.contains(field), "no skill moves `{field}`");
    }
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

/// The committed default target's facts, before its model is read.
#[test]
fn facts_come_from_the_committed_target() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets/smollm2-cpu/Serve.toml");
    let manifest = vibeserve::manifest::Manifest::load(&path).unwrap();
    let facts = Facts::from_target(&manifest, None);
    assert_eq!(facts.device, "cpu");
    assert_eq!(facts.arrival, "concurrency");
    assert_eq!(facts.concurrency, Some(16));
    assert_eq!(facts.threads, Some(2));
    assert_eq!(facts.arch, None, "the architecture comes from the model");
    // `isa = "auto"` is resolved on this machine, never left as `auto`.
    let isa = facts.isa.unwrap();
    assert!(
        ["avx512vnni", "avx2", "portable"].contains(&isa.as_str()),
        "{isa}"
    );
}

/// `cargo vibeserve skills` with no target lists every skill with its moves.
#[test]
fn skills_command_lists_every_skill_without_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"))
        .args(["vibeserve", "skills"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for skill in &Library::embedded().unwrap().skills {
        assert!(text.contains(&skill.id), "{} missing", skill.id);
    }
    assert!(text.contains("move: serving.prefill_chunk = 128"));
    assert!(!text.contains("applies"), "no target, so no applicability");
}

/// `cargo vibeserve skills --show SKILL` prints the skill's text for a reader.
#[test]
fn skills_command_shows_one_skill() {
    let run = |name: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cargo-vibeserve"))
            .args(["vibeserve", "skills", "--show", name])
            .output()
            .unwrap()
    };
    let out = run("serving/prefill-chunk");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("## Pitfalls") && !text.contains("+++"),
        "{text}"
    );
    let out = run("serving/prefill-chunks");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did you mean `serving/prefill-chunk`?"),
        "{err}"
    );
}
