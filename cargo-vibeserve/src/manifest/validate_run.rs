//! Validation of what a run does: `[workload]`, `[benchmark]` and `[accuracy]`.

use std::path::Path;
use std::sync::Arc;

use miette::NamedSource;
use toml::Spanned;

use super::error::{Problem, ProblemKind};
use super::metric::{ExprError, parse_constraint, parse_objective};
use super::schema::{RawAccuracy, RawArrival, RawBenchmark, RawWorkload};
use super::types::{
    Accuracy, Arrival, Benchmark, DEFAULT_HELDOUT, MODEL_PLACEHOLDER, URL_PLACEHOLDER, Workload,
    defaults,
};
use super::validate::Ctx;

/// The two forms of `workload.arrival`, for help lines.
const ARRIVAL_FORMS: &str = "write { concurrency = 4 } (a closed loop of 4 clients) or { rate = 2.5, seed = 0 } (Poisson arrivals per second)";

/// `[workload]`.
pub(crate) fn workload(raw: &RawWorkload, cx: &mut Ctx) -> Option<Workload> {
    let requests = cx.existing(&raw.requests, "workload.requests", true);
    let requests = requests.filter(|path| requests_file(path, &raw.requests, cx));
    let arrival = arrival(&raw.arrival, cx)?;
    Some(Workload {
        requests: requests?,
        arrival,
    })
}

/// Check that every line of the workload file is an OpenAI request body; true when it is.
/// Problems point into the workload file itself.
fn requests_file(path: &Path, rel: &Spanned<String>, cx: &mut Ctx) -> bool {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            let p = cx
                .problem(
                    ProblemKind::MissingFile,
                    rel.span(),
                    format!("cannot read `workload.requests`: {e}"),
                    "unreadable",
                )
                .with_help("the workload is a UTF-8 JSON Lines file");
            cx.report(p);
            return false;
        }
    };
    let source =
        Arc::new(NamedSource::new(cx.shown(rel.get_ref()), text.clone()).with_language("json"));
    let mut offset = 0;
    let mut count = 0;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end();
        let span = offset..offset + body.len();
        offset += line.len();
        if body.trim().is_empty() {
            continue;
        }
        count += 1;
        if let Some(problem) = request_problem(body) {
            let p = Problem::new(ProblemKind::BadWorkload, &source, span, format!("`workload.requests` line {count} is not a request body: {problem}"), problem)
                .with_help("each line is one JSON object: {\"model\": …, \"messages\": [{\"role\": \"user\", \"content\": \"…\"}], \"max_tokens\": 64}, or one with \"prompt\"");
            cx.report(p);
            return false;
        }
    }
    if count == 0 {
        let p = cx
            .problem(
                ProblemKind::BadWorkload,
                rel.span(),
                "`workload.requests` has no requests",
                "empty file",
            )
            .with_help("write one OpenAI request body per line");
        cx.report(p);
    }
    count > 0
}

/// What is wrong with one request line, if anything.
fn request_problem(line: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(line) {
        Err(e) => Some(format!("invalid JSON ({e})")),
        Ok(serde_json::Value::Object(body)) => {
            let messages = body
                .get("messages")
                .is_some_and(serde_json::Value::is_array);
            let prompt = body
                .get("prompt")
                .is_some_and(|p| p.is_string() || p.is_array());
            (!messages && !prompt).then(|| "no \"messages\" array or \"prompt\"".to_string())
        }
        Ok(_) => Some("not a JSON object".into()),
    }
}

/// `workload.arrival`: exactly one of its two forms.
fn arrival(raw: &Spanned<RawArrival>, cx: &mut Ctx) -> Option<Arrival> {
    let a = raw.get_ref();
    match (&a.concurrency, &a.rate) {
        (Some(c), None) => {
            if let Some(seed) = &a.seed {
                let p = cx
                    .problem(
                        ProblemKind::Conflict,
                        seed.span(),
                        "`seed` applies to `rate` arrivals only",
                        "not used",
                    )
                    .with_label(c.span(), "a closed loop has no random arrivals")
                    .with_help(ARRIVAL_FORMS);
                cx.report(p);
                return None;
            }
            // `at_least_one` reports a zero and returns 1 in its place.
            let n = cx.at_least_one(&a.concurrency, "workload.arrival.concurrency", 1);
            (n == *c.get_ref()).then_some(Arrival::Concurrency(n))
        }
        (None, Some(rate)) => {
            let r = *rate.get_ref();
            if !(r.is_finite() && r > 0.0) {
                let p = cx
                    .problem(
                        ProblemKind::BadValue,
                        rate.span(),
                        "`workload.arrival.rate` must be a positive, finite number",
                        "requests per second",
                    )
                    .with_help("for as fast as possible, use { concurrency = N } instead");
                cx.report(p);
                return None;
            }
            Some(Arrival::Poisson {
                rate: r,
                seed: a.seed.as_ref().map_or(defaults::SEED, |s| *s.get_ref()),
            })
        }
        (Some(c), Some(rate)) => {
            let p = cx
                .problem(
                    ProblemKind::Conflict,
                    c.span(),
                    "`workload.arrival` sets both `concurrency` and `rate`",
                    "a closed loop",
                )
                .with_label(rate.span(), "and an open one")
                .with_help(ARRIVAL_FORMS);
            cx.report(p);
            None
        }
        (None, None) => {
            let p = cx
                .problem(
                    ProblemKind::MissingKey,
                    raw.span(),
                    "`workload.arrival` sets neither `concurrency` nor `rate`",
                    "how do requests arrive?",
                )
                .with_help(ARRIVAL_FORMS);
            cx.report(p);
            None
        }
    }
}

/// Report an objective/constraint parse error inside the string `raw`.
fn expr_problem(kind: ProblemKind, key: &str, raw: &Spanned<String>, e: ExprError, cx: &mut Ctx) {
    let span = cx.inner_span(raw, e.range.clone());
    let p = cx
        .problem(kind, span, format!("`{key}`: {}", e.message), e.label)
        .with_help(e.help);
    cx.report(p);
}

/// `[benchmark]`.
pub(crate) fn benchmark(raw: &RawBenchmark, cx: &mut Ctx) -> Option<Benchmark> {
    let objective = parse_objective(raw.objective.get_ref())
        .map_err(|e| {
            expr_problem(
                ProblemKind::BadObjective,
                "benchmark.objective",
                &raw.objective,
                e,
                cx,
            )
        })
        .ok();
    let mut constraints = Vec::new();
    let mut all = true;
    for (i, c) in raw.constraints.iter().flatten().enumerate() {
        match parse_constraint(c.get_ref()) {
            Ok(parsed) => constraints.push(parsed),
            Err(e) => {
                expr_problem(
                    ProblemKind::BadConstraint,
                    &format!("benchmark.constraints[{i}]"),
                    c,
                    e,
                    cx,
                );
                all = false;
            }
        }
    }
    let repetitions = cx.at_least_one(
        &raw.repetitions,
        "benchmark.repetitions",
        defaults::REPETITIONS,
    );
    let objective = objective.filter(|_| all)?;
    Some(Benchmark {
        objective,
        constraints,
        peer: raw.peer.as_ref().map(|p| *p.get_ref()),
        repetitions,
    })
}

/// `[accuracy]`.
pub(crate) fn accuracy(raw: &RawAccuracy, cx: &mut Ctx) -> Option<Accuracy> {
    let command = raw.command.get_ref();
    let mut ok = true;
    if command
        .first()
        .is_none_or(|program| program.get_ref().trim().is_empty())
    {
        let p = cx
            .problem(
                ProblemKind::BadValue,
                raw.command.span(),
                "`accuracy.command` names no program",
                "expected [\"program\", \"arg\", …]",
            )
            .with_help("e.g. command = [\"python3\", \"accuracy/check.py\", \"--url\", \"{url}\"]");
        cx.report(p);
        ok = false;
    }
    for arg in command {
        if let Some((start, end)) = unknown_placeholder(arg.get_ref()) {
            let span = cx.inner_span(arg, start..end);
            let p = cx
                .problem(
                    ProblemKind::BadValue,
                    span,
                    format!(
                        "unknown placeholder `{}` in `accuracy.command`",
                        &arg.get_ref()[start..end]
                    ),
                    "unknown placeholder",
                )
                .with_help(format!(
                    "the placeholders are {URL_PLACEHOLDER}, the candidate server's base URL, and {MODEL_PLACEHOLDER}, the model it serves"
                ));
            cx.report(p);
            ok = false;
        }
    }
    let golden = cx.existing(&raw.golden, "accuracy.golden", false);
    let heldout = match &raw.heldout {
        Some(rel) => cx.existing(rel, "accuracy.heldout", true),
        None => golden.as_ref().map(|g| g.with_file_name(DEFAULT_HELDOUT)),
    };
    Some(Accuracy {
        command: command.iter().map(|a| a.get_ref().clone()).collect(),
        golden: golden.filter(|_| ok)?,
        heldout: heldout?,
    })
}

/// The byte range of the first `{…}` in `arg` that is neither [`URL_PLACEHOLDER`] nor
/// [`MODEL_PLACEHOLDER`].
fn unknown_placeholder(arg: &str) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(open) = arg[from..].find('{').map(|i| i + from) {
        let close = arg[open..].find('}').map_or(arg.len(), |i| open + i + 1);
        if ![URL_PLACEHOLDER, MODEL_PLACEHOLDER].contains(&&arg[open..close]) {
            return Some((open, close));
        }
        from = close;
    }
    None
}
