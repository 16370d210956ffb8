//! Teacher-forced scoring through the OpenAI completions API, and the prompts the probes
//! score: golden prompts as token ids, perturbed workload prompts and random tokens.

use std::path::Path;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

/// How long one scoring request may take.
const SCORE_TIMEOUT: Duration = Duration::from_secs(120);

/// A prompt as the completions API takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Token ids, scored exactly as given.
    Ids(Vec<u32>),
    /// Text, tokenized by the server.
    Text(String),
}

impl Prompt {
    fn to_json(&self) -> Value {
        match self {
            Prompt::Ids(ids) => json!(ids),
            Prompt::Text(text) => json!(text),
        }
    }
}

/// The echoed log probability of every prompt token but the first (which nothing predicts).
pub async fn score(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    prompt: &Prompt,
) -> Result<Vec<f64>, String> {
    let body = json!({
        "model": model, "prompt": prompt.to_json(), "max_tokens": 0,
        "temperature": 0, "echo": true, "logprobs": 1,
    });
    let response = http
        .post(format!("{url}/v1/completions"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .timeout(SCORE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("POST /v1/completions: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST /v1/completions: HTTP {status}: {text}"));
    }
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("the response is not JSON: {e}"))?;
    let lps = value
        .pointer("/choices/0/logprobs/token_logprobs")
        .and_then(Value::as_array)
        .ok_or("the response has no choices[0].logprobs.token_logprobs")?;
    // Entry 0 is null (nothing predicts the first token); the rest must be numbers.
    lps.iter()
        .skip(1)
        .map(|v| v.as_f64().ok_or_else(|| format!("a token logprob is {v}")))
        .collect()
}

/// Mean absolute difference of two scorings; `None` when their lengths differ (the
/// prompts were tokenized differently) or they are empty.
pub fn mean_abs_delta(a: &[f64], b: &[f64]) -> Option<f64> {
    (a.len() == b.len() && !a.is_empty())
        .then(|| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64)
}

/// One golden record: the prompt and reference continuation as token ids, where the
/// continuation starts, and the reference's teacher-forced logprob of each of its tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenRecord {
    /// `prompt_ids` followed by `continuation_ids`.
    pub prompt: Prompt,
    /// Index of the first continuation token.
    pub start: usize,
    /// The reference's logprob of each continuation token (`positions[i].logprob`).
    pub logprobs: Vec<f64>,
}

impl GoldenRecord {
    /// Mean |Δ logprob| of the continuation between a scoring of [`Self::prompt`] (as
    /// [`score`] returns it: entry `j` is token `j + 1`) and the reference.
    pub fn delta(&self, scored: &[f64]) -> Option<f64> {
        let from = self.start.checked_sub(1)?;
        let got = scored.get(from..from + self.logprobs.len())?;
        mean_abs_delta(got, &self.logprobs)
    }
}

/// The first `n` records of a golden file.
pub fn golden_records(golden: &Path, n: usize) -> Result<Vec<GoldenRecord>, String> {
    let text = std::fs::read_to_string(golden)
        .map_err(|e| format!("cannot read {}: {e}", golden.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|line| {
            let rec: Value = serde_json::from_str(line).map_err(|e| format!("{e}"))?;
            let ids = |key: &str| -> Result<Vec<u32>, String> {
                rec[key]
                    .as_array()
                    .ok_or_else(|| format!("golden line has no `{key}`"))?
                    .iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| format!("bad token id {v}"))
                    })
                    .collect()
            };
            let mut all = ids("prompt_ids")?;
            let start = all.len();
            all.extend(ids("continuation_ids")?);
            let logprobs = rec["positions"]
                .as_array()
                .ok_or("golden line has no `positions`")?
                .iter()
                .map(|p| p["logprob"].as_f64().ok_or("a position has no `logprob`"))
                .collect::<Result<_, _>>()?;
            Ok(GoldenRecord {
                prompt: Prompt::Ids(all),
                start,
                logprobs,
            })
        })
        .collect()
}

/// Prompts no table can hold: the first `n` workload requests' text with one word
/// changed and a trailing space, and one prompt of `random_len` seeded random token ids
/// below `vocab`.
pub fn unseen_prompts(
    workload: &Path,
    n: usize,
    vocab: u32,
    random_len: usize,
    seed: u64,
) -> Result<Vec<Prompt>, String> {
    let text = std::fs::read_to_string(workload)
        .map_err(|e| format!("cannot read {}: {e}", workload.display()))?;
    let mut prompts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(n) {
        let req: Value = serde_json::from_str(line).map_err(|e| format!("{e}"))?;
        let original = request_text(&req);
        if !original.is_empty() {
            prompts.push(Prompt::Text(perturb_text(&original)));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let random = (0..random_len)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    prompts.push(Prompt::Ids(random));
    Ok(prompts)
}

/// The text of a workload request: its prompt, or its messages' contents joined.
fn request_text(req: &Value) -> String {
    if let Some(prompt) = req["prompt"].as_str() {
        return prompt.to_string();
    }
    req["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The text with its last word replaced by "elephants" and a space added: a small change
/// that a memorised answer cannot anticipate.
fn perturb_text(text: &str) -> String {
    match text.trim_end().rsplit_once(' ') {
        Some((head, _)) => format!("{head} elephants? "),
        None => format!("{text} elephants? "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perturbed_prompt_differs_from_its_original() {
        assert_eq!(
            perturb_text("What is the capital of Australia?"),
            "What is the capital of elephants? "
        );
        assert_eq!(perturb_text("Hi"), "Hi elephants? ");
    }

    #[test]
    fn delta_needs_equal_lengths() {
        assert_eq!(mean_abs_delta(&[0.0, -1.0], &[0.5, -1.5]), Some(0.5));
        assert_eq!(mean_abs_delta(&[0.0], &[0.0, 1.0]), None);
        assert_eq!(mean_abs_delta(&[], &[]), None);
    }
}
