//! Semantic validation: from the raw schema to the resolved [`super::Manifest`] values.
//! Every check reports into one list, so a user sees all problems of a file at once.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::{Invalid, Problem, ProblemKind, Source, first_line};
use super::schema::{RawAgent, RawManifest, RawSearch, RawTarget};
use super::types::{
    Accuracy, Agent, AgentKind, Benchmark, Hardware, Model, Policy, Search, Target, Workload,
    defaults,
};

/// What a file's keys resolve against, and the problems found so far.
pub(crate) struct Ctx {
    /// The Serve.toml's text, for problems.
    pub(crate) source: Source,
    /// The Serve.toml's folder, absolute: relative paths resolve against it.
    dir: PathBuf,
    /// The same folder as the user named it, for messages (keeps them free of absolute paths).
    shown_dir: PathBuf,
    /// Problems found so far.
    problems: Vec<Problem>,
}

/// The resolved tables, before they become a [`super::Manifest`].
pub(crate) struct Resolved {
    /// `[target]`.
    pub(crate) target: Target,
    /// `[model]`.
    pub(crate) model: Model,
    /// `[hardware]`.
    pub(crate) hardware: Hardware,
    /// `[workload]`.
    pub(crate) workload: Workload,
    /// `[benchmark]`.
    pub(crate) benchmark: Benchmark,
    /// `[accuracy]`.
    pub(crate) accuracy: Option<Accuracy>,
    /// `[search]`.
    pub(crate) search: Search,
    /// `[agent]`.
    pub(crate) agent: Option<Agent>,
}

impl Ctx {
    /// A context for the file `source`, in `dir` (absolute), shown as `shown_dir`.
    pub(crate) fn new(source: Source, dir: PathBuf, shown_dir: PathBuf) -> Ctx {
        Ctx {
            source,
            dir,
            shown_dir,
            problems: Vec::new(),
        }
    }

    /// Record a problem.
    pub(crate) fn report(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// A new problem in this file.
    pub(crate) fn problem(
        &self,
        kind: ProblemKind,
        span: Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem::new(kind, &self.source, span, message, label)
    }

    /// The span of the text inside a string value, when it is a plain one-line string (so a
    /// byte offset in the value is the same offset in the file); else the whole value.
    pub(crate) fn inner_span(&self, value: &Spanned<String>, inner: Range<usize>) -> Range<usize> {
        let span = value.span();
        let raw = self.source.inner().get(span.clone()).unwrap_or("");
        let plain = raw.len() == value.get_ref().len() + 2
            && (raw.starts_with('"') || raw.starts_with('\''))
            && &raw[1..raw.len() - 1] == value.get_ref();
        if plain {
            span.start + 1 + inner.start..span.start + 1 + inner.end
        } else {
            span
        }
    }

    /// Resolve `rel` against the manifest's folder; report it if nothing is there, or if
    /// `want_file` and it is a folder. `what` names the key, `key.path`.
    pub(crate) fn existing(
        &mut self,
        rel: &Spanned<String>,
        what: &str,
        want_file: bool,
    ) -> Option<PathBuf> {
        let path = self.dir.join(rel.get_ref());
        let shown = self.shown(rel.get_ref());
        let problem = if rel.get_ref().is_empty() {
            Some(("is empty".to_string(), "expected a path".to_string()))
        } else if !path.exists() {
            Some((
                format!("names {shown}, which does not exist"),
                "no such file".to_string(),
            ))
        } else if want_file && !path.is_file() {
            Some((
                format!("names {shown}, which is not a file"),
                "not a file".to_string(),
            ))
        } else {
            None
        };
        match problem {
            None => Some(path),
            Some((message, label)) => {
                let p = self
                    .problem(ProblemKind::MissingFile, rel.span(), format!("`{what}` {message}"), label)
                    .with_help(format!(
                        "paths are relative to the Serve.toml's folder ({}); create the file or fix the path",
                        shown_dir_text(&self.shown_dir)
                    ));
                self.report(p);
                None
            }
        }
    }

    /// Check that a whole-number setting is at least 1.
    pub(crate) fn at_least_one<T: Into<u64> + Copy>(
        &mut self,
        value: &Option<Spanned<T>>,
        key: &str,
        default: T,
    ) -> T {
        match value {
            Some(v) if (*v.get_ref()).into() == 0 => {
                let p = self
                    .problem(
                        ProblemKind::BadValue,
                        v.span(),
                        format!("`{key}` must be at least 1"),
                        "zero",
                    )
                    .with_help(format!(
                        "leave `{key}` out for the default, {}",
                        default.into()
                    ));
                self.report(p);
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        }
    }

    /// `rel` as the user would write it from where they ran the command, with `dir/..`
    /// folded away for reading (the real path is resolved by the file system, not this).
    pub(crate) fn shown(&self, rel: &str) -> String {
        use std::path::Component;
        let joined = self.shown_dir.join(rel);
        let mut out: Vec<Component> = Vec::new();
        for c in joined.components() {
            match (c, out.last()) {
                (Component::CurDir, Some(_)) => {}
                (Component::ParentDir, Some(Component::Normal(_))) => {
                    out.pop();
                }
                _ => out.push(c),
            }
        }
        out.iter().collect::<PathBuf>().display().to_string()
    }

    /// The problems found, if any.
    fn finish(self) -> Result<(), Invalid> {
        Invalid::from_problems(self.problems).map_or(Ok(()), Err)
    }
}

/// The folder as shown in messages: `.` for the current one.
fn shown_dir_text(dir: &Path) -> String {
    if dir.as_os_str().is_empty() {
        ".".into()
    } else {
        dir.display().to_string()
    }
}

/// Validate every table; all problems or the resolved values.
pub(crate) fn resolve(raw: RawManifest, mut cx: Ctx) -> Result<Resolved, Invalid> {
    let target = target(&raw.target, &mut cx);
    let model = super::validate_model::model(&raw.model, &mut cx);
    let hardware = super::validate_model::hardware(&raw.hardware, &mut cx);
    if let (Some(model), Some(_)) = (&model, &hardware) {
        super::validate_model::tensor_parallel(&raw.hardware, &raw.model, model, &mut cx);
    }
    let workload = super::validate_run::workload(&raw.workload, &mut cx);
    let benchmark = super::validate_run::benchmark(&raw.benchmark, &mut cx);
    let accuracy = raw
        .accuracy
        .as_ref()
        .map(|a| super::validate_run::accuracy(a, &mut cx));
    let search = search(raw.search.as_ref(), &mut cx);
    let agent = agent(raw.agent.as_ref(), raw.search.as_ref(), search, &mut cx);
    let source = cx.source.clone();
    cx.finish()?;
    // Every resolver that returns `None` has reported a problem, so `finish` returned above.
    match (
        model,
        hardware,
        workload,
        benchmark,
        accuracy.map_or(Some(None), |a| a.map(Some)),
    ) {
        (Some(model), Some(hardware), Some(workload), Some(benchmark), Some(accuracy)) => {
            Ok(Resolved {
                target,
                model,
                hardware,
                workload,
                benchmark,
                accuracy,
                search,
                agent,
            })
        }
        _ => Err(Problem::new(
            ProblemKind::BadValue,
            &source,
            0..0,
            "a table failed to validate without saying why; this is a bug in cargo-vibeserve",
            "somewhere in this file",
        )
        .into()),
    }
}

/// `[target]`.
fn target(raw: &RawTarget, cx: &mut Ctx) -> Target {
    let name = raw.name.get_ref();
    let bad = name.char_indices().find(|(i, c)| {
        !(c.is_ascii_lowercase() || (*i > 0 && (c.is_ascii_digit() || *c == '-' || *c == '_')))
    });
    let problem = if name.is_empty() {
        Some((raw.name.span(), "the target name is empty".to_string()))
    } else {
        bad.map(|(i, c)| {
            (
                cx.inner_span(&raw.name, i..i + c.len_utf8()),
                format!("the target name `{name}` contains `{c}`"),
            )
        })
    };
    if let Some((span, message)) = problem {
        let p = cx
            .problem(ProblemKind::BadValue, span, message, "not allowed here")
            .with_help("a target name is lowercase letters, digits, `-` and `_`, starting with a letter, e.g. \"smollm2-cpu\"");
        cx.report(p);
    }
    Target {
        name: name.clone(),
        version: *raw.version.get_ref(),
    }
}

/// `[search]`, defaults filled in.
fn search(raw: Option<&RawSearch>, cx: &mut Ctx) -> Search {
    let policy = raw.and_then(|s| s.policy.as_ref());
    let agent = raw.and_then(|s| s.agent.as_ref());
    let resolved = Search {
        policy: policy.map_or(Policy::Backlog, |p| *p.get_ref()),
        rounds: raw.and_then(|s| s.rounds).unwrap_or(defaults::ROUNDS),
        agent: agent.map_or(AgentKind::Builtin, |a| *a.get_ref()),
        seed: raw.and_then(|s| s.seed).unwrap_or(defaults::SEED),
    };
    if let Some(policy) = policy.filter(|p| *p.get_ref() == Policy::Llm)
        && resolved.agent != AgentKind::Openai
    {
        let mut p = cx
            .problem(ProblemKind::Conflict, policy.span(), "`search.policy = \"llm\"` needs an LLM back end", "an LLM planner")
            .with_help("set `agent = \"openai\"` in [search] and configure [agent], or pick policy \"backlog\" or \"evolutionary\"");
        if let Some(agent) = agent {
            p = p.with_label(agent.span(), "but the agent is builtin");
        }
        cx.report(p);
    }
    resolved
}

/// `[agent]`: required for the openai agent, refused otherwise.
fn agent(
    raw: Option<&Spanned<RawAgent>>,
    search: Option<&RawSearch>,
    resolved: Search,
    cx: &mut Ctx,
) -> Option<Agent> {
    let kind_span = search.and_then(|s| s.agent.as_ref()).map(Spanned::span);
    match (raw, resolved.agent) {
        (None, AgentKind::Openai) => {
            let p = cx
                .problem(ProblemKind::MissingKey, kind_span.unwrap_or(0..0), "`search.agent = \"openai\"` needs an [agent] table", "needs [agent]")
                .with_help("add [agent] with at least `model = \"…\"` (the endpoint comes from $OPENAI_BASE_URL, the key from $OPENAI_API_KEY)");
            cx.report(p);
            None
        }
        (Some(raw), AgentKind::Builtin) => {
            let header = first_line(cx.source.inner(), raw.span());
            let p = cx
                .problem(
                    ProblemKind::Conflict,
                    header,
                    "[agent] is only used with `search.agent = \"openai\"`",
                    "this table is never read",
                )
                .with_help("remove [agent], or set `agent = \"openai\"` in [search]");
            cx.report(p);
            None
        }
        (Some(raw), AgentKind::Openai) => Some(agent_table(raw.get_ref(), cx)),
        (None, AgentKind::Builtin) => None,
    }
}

/// The keys of `[agent]`.
fn agent_table(raw: &RawAgent, cx: &mut Ctx) -> Agent {
    if raw.model.get_ref().trim().is_empty() {
        let p = cx
            .problem(
                ProblemKind::BadValue,
                raw.model.span(),
                "`agent.model` is empty",
                "expected a model name",
            )
            .with_help("name the model the endpoint serves, e.g. \"gpt-4.1\"");
        cx.report(p);
    }
    let base_url_env = env_name(
        raw.base_url_env.as_ref(),
        "agent.base_url_env",
        defaults::BASE_URL_ENV,
        cx,
    );
    let api_key_env = env_name(
        raw.api_key_env.as_ref(),
        "agent.api_key_env",
        defaults::API_KEY_ENV,
        cx,
    );
    Agent {
        model: raw.model.get_ref().clone(),
        base_url_env,
        api_key_env,
        max_tool_calls: cx.at_least_one(
            &raw.max_tool_calls,
            "agent.max_tool_calls",
            defaults::MAX_TOOL_CALLS,
        ),
        max_tokens: cx.at_least_one(&raw.max_tokens, "agent.max_tokens", defaults::MAX_TOKENS),
        max_minutes: cx.at_least_one(&raw.max_minutes, "agent.max_minutes", defaults::MAX_MINUTES),
    }
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn env_name(raw: Option<&Spanned<String>>, key: &str, default: &str, cx: &mut Ctx) -> String {
    let Some(raw) = raw else {
        return default.to_string();
    };
    let name = raw.get_ref();
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        let p = cx
            .problem(
                ProblemKind::BadValue,
                raw.span(),
                format!("`{key}` is not an environment variable name"),
                "not a variable name",
            )
            .with_help(format!(
                "name the variable, not its value, e.g. \"{default}\""
            ));
        cx.report(p);
    }
    name.clone()
}
