//! `cargo vibeserve log [TARGET]`: the recorded rounds as a table, and an SVG chart of
//! the objective over rounds written next to the state (`<state>/../rounds.svg`).
//!
//! The chart is a few lines of hand-written SVG (no font or C dependencies): one point
//! per measured round, filled when kept, hollow when rejected, and the best-so-far line.

use std::fmt::Write as _;
use std::path::PathBuf;

use std::collections::BTreeMap;

use crate::agent::{Role, Transcript, Usage};
use crate::generate::write_atomic;
use crate::manifest::TargetArg;
use crate::search::Verdict;
use crate::state::{State, StoredAttempt};

/// `cargo vibeserve log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// The target.
    #[command(flatten)]
    pub target: TargetArg,
    /// The folder holding `state.git` (default: `<target dir>/vibeserve/<target>/`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// The metric an attempt records: its objective over the best's, measured interleaved.
pub const RATIO_METRIC: &str = "ratio_vs_best";

/// The chart's file name, beside `state.git`.
pub const CHART_FILE: &str = "rounds.svg";
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 48.0;

/// Runs `cargo vibeserve log`.
pub fn run(args: &LogArgs) -> Result<(), LogError> {
    let manifest = args.target.load()?;
    let work = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => crate::prepare::vibeserve_dir(&manifest.dir)?.join(&manifest.target.name),
    };
    let state_path = work.join("state.git");
    if !state_path.join("HEAD").is_file() {
        return Err(LogError::NoState(state_path));
    }
    let attempts = State::open(&state_path)?.attempts()?;
    let objective = manifest.benchmark.objective.to_string();
    print!("{}", table(&attempts, &objective));
    let transcripts = Transcript::read_all(&work);
    if !transcripts.is_empty() {
        print!("\n{}", agent_table(&transcripts));
    }
    let chart = work.join(CHART_FILE);
    write_atomic(&chart, svg(&attempts, &objective).as_bytes())?;
    println!("chart: {}", chart.display());
    Ok(())
}

/// The rounds table: round, skill, move, verdict, objective, change vs the best before it.
pub fn table(attempts: &[StoredAttempt], objective: &str) -> String {
    let mut out = format!(
        "{:>5}  {:<24} {:<34} {:<20} {:>12}  {:>9}\n",
        "round",
        "skill",
        "move",
        "verdict",
        objective.rsplit(' ').next().unwrap_or(objective),
        "vs best"
    );
    let mut best: Option<f64> = None;
    for a in attempts {
        let r = &a.record;
        // The ratio measured against the best interleaved in the same round; a change
        // against the best's own round would compare two different moments' machine load.
        let ratio = r.metrics.get(RATIO_METRIC).copied();
        let change = match (ratio, r.objective, best) {
            (Some(x), _, _) => format!("{:+.1}%", (x - 1.0) * 100.0),
            (None, Some(o), Some(b)) if b != 0.0 => format!("{:+.1}%", (o / b - 1.0) * 100.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:>5}  {:<24} {:<34} {:<20} {:>12}  {:>9}",
            r.round,
            r.skill.as_deref().unwrap_or("(template defaults)"),
            r.label.as_deref().unwrap_or("-"),
            r.verdict.as_str(),
            r.objective.map_or("-".into(), |v| format!("{v:.2}")),
            change
        );
        if r.verdict.is_kept() {
            best = r.objective.or(best);
        }
    }
    out
}

/// The LLM back end's figures: each role's calls, retries, tool calls, tokens and time
/// per round and in total, then why each rejected LLM round was rejected.
pub fn agent_table(transcripts: &[Transcript]) -> String {
    let mut out = format!(
        "{:>5}  {:<13} {:>5} {:>7} {:>6} {:>10} {:>10} {:>8}\n",
        "round", "role", "calls", "retries", "tools", "prompt tok", "compl tok", "time s"
    );
    let line = |out: &mut String, round: &str, role: Role, u: &Usage| {
        let _ = writeln!(
            out,
            "{round:>5}  {:<13} {:>5} {:>7} {:>6} {:>10} {:>10} {:>8.1}",
            role.as_str(),
            u.calls,
            u.retries,
            u.tool_calls,
            u.prompt_tokens,
            u.completion_tokens,
            u.seconds
        );
    };
    let mut total: BTreeMap<Role, Usage> = BTreeMap::new();
    for t in transcripts {
        for (role, usage) in t.per_role() {
            line(&mut out, &t.round.to_string(), role, &usage);
            total.entry(role).or_default().add(&usage);
        }
    }
    for (role, usage) in &total {
        line(&mut out, "total", *role, usage);
    }
    for t in transcripts {
        if let (Some(verdict), Some(reason)) = (&t.verdict, &t.reason) {
            let _ = writeln!(out, "round {}: {verdict}: {reason}", t.round);
        }
    }
    out
}

/// The SVG chart of the objective over rounds.
pub fn svg(attempts: &[StoredAttempt], objective: &str) -> String {
    let points: Vec<(u32, f64, Verdict)> = attempts
        .iter()
        .filter_map(|a| Some((a.record.round, a.record.objective?, a.record.verdict)))
        .collect();
    let last_round = attempts.last().map_or(1, |a| a.record.round.max(1));
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (lo, hi) = if points.is_empty() {
        (0.0, 1.0)
    } else {
        (lo * 0.95, hi * 1.05)
    };
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x = |round: u32| MARGIN + f64::from(round) / f64::from(last_round) * (WIDTH - 2.0 * MARGIN);
    let y = |v: f64| HEIGHT - MARGIN - (v - lo) / span * (HEIGHT - 2.0 * MARGIN);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{MARGIN}\" y=\"24\">{objective} by round</text>\n\
         <line x1=\"{MARGIN}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{MARGIN}\" y1=\"{MARGIN}\" x2=\"{MARGIN}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"4\" y=\"{ty}\">{hi:.1}</text><text x=\"4\" y=\"{b}\">{lo:.1}</text>\n",
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN,
        ty = MARGIN + 4.0,
    );
    let mut best_line = Vec::new();
    for &(round, value, verdict) in &points {
        let fill = if verdict.is_kept() {
            "steelblue"
        } else {
            "white"
        };
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{fill}\" stroke=\"steelblue\"><title>round {round}: {value:.2} ({verdict})</title></circle>",
            x(round),
            y(value)
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{round}</text>",
            x(round),
            HEIGHT - MARGIN + 16.0
        );
        if verdict.is_kept() {
            best_line.push(format!("{:.1},{:.1}", x(round), y(value)));
        }
    }
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"steelblue\" stroke-dasharray=\"4 3\"/>\n</svg>",
        best_line.join(" ")
    );
    s
}

/// What went wrong in `cargo vibeserve log`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LogError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// The target directory could not be found.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Prepare(#[from] crate::prepare::PrepareError),
    /// No state yet.
    #[error("no rounds recorded yet: {} does not exist", .0.display())]
    #[diagnostic(help("run `cargo vibeserve build` first"))]
    NoState(PathBuf),
    /// The state repository failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] crate::state::StateError),
    /// The chart could not be written.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Write(#[from] crate::generate::GenerateError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AttemptRecord;

    fn attempt(round: u32, verdict: Verdict, objective: Option<f64>) -> StoredAttempt {
        StoredAttempt {
            commit: format!("{round:040}"),
            record: AttemptRecord {
                round,
                skill: (round > 0).then(|| "serving/prefill-chunk".to_string()),
                label: (round > 0).then(|| format!("serving.prefill_chunk = {}", 64 * round)),
                changes: Vec::new(),
                plan_digest: "d".into(),
                verdict,
                objective,
                metrics: Default::default(),
            },
        }
    }

    #[test]
    fn change_is_relative_to_the_best_before_the_round() {
        let rounds = [
            attempt(0, Verdict::Baseline, Some(100.0)),
            attempt(1, Verdict::Accepted, Some(110.0)),
            attempt(2, Verdict::RejectedRegression, Some(99.0)),
            attempt(3, Verdict::RejectedBuild, None),
        ];
        let text = table(&rounds, "max output_tokens_per_s");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("output_tokens_per_s"));
        assert!(lines[2].ends_with("+10.0%"), "{}", lines[2]);
        assert!(lines[3].ends_with("-10.0%"), "{}", lines[3]);
        assert!(lines[4].contains("rejected-build") && lines[4].ends_with('-'));
        // A round measured interleaved shows that ratio, not a change across time.
        let mut measured = attempt(4, Verdict::Accepted, Some(90.0));
        measured.record.metrics.insert(RATIO_METRIC.into(), 1.025);
        let text = table(&[rounds[0].clone(), measured], "max output_tokens_per_s");
        assert!(text.lines().nth(2).unwrap().ends_with("+2.5%"), "{text}");
        let chart = svg(&rounds, "max output_tokens_per_s");
        assert_eq!(
            chart.matches("<circle").count(),
            3,
            "one point per measured round"
        );
        assert!(chart.contains("round 2: 99.00 (rejected-regression)"));
    }
}
