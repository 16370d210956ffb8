//! Where benchmark requests come from: a workload file of OpenAI request bodies, or a
//! synthetic generator (random prompt and output lengths, optionally sharing prefixes).
//!
//! Every workload carries the SHA-256 of its JSONL form, so a result names exactly what
//! was sent. Synthetic workloads are a pure function of their spec and seed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Which OpenAI endpoint a request body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/completions` (the body has a `prompt`).
    Completions,
    /// `POST /v1/chat/completions` (the body has `messages`).
    ChatCompletions,
}

impl Endpoint {
    /// The request path on the server.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

/// One request of a workload: its endpoint and its body as written in the workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The endpoint the body is sent to.
    pub endpoint: Endpoint,
    /// The OpenAI request body (`stream` options are set by the client when sending).
    pub body: Map<String, Value>,
}

impl Request {
    /// Classify a JSON value as a completions or chat request.
    fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(body) = value else {
            return Err("expected a JSON object (an OpenAI request body)".into());
        };
        let endpoint = match (body.contains_key("messages"), body.contains_key("prompt")) {
            (true, false) => Endpoint::ChatCompletions,
            (false, true) => Endpoint::Completions,
            (true, true) => return Err("has both `messages` and `prompt`".into()),
            (false, false) => return Err("has neither `messages` (chat) nor `prompt`".into()),
        };
        Ok(Request { endpoint, body })
    }
}

/// A list of requests plus what identifies it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The requests, in order.
    pub requests: Vec<Request>,
    /// A short human description: the file path or the synthetic spec.
    pub source: String,
    /// Hex SHA-256 of the workload's JSONL text (for a file: of the file's bytes).
    pub sha256: String,
}

/// Why a workload could not be loaded.
#[derive(Debug, Error, miette::Diagnostic)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("cannot read workload {path}")]
    Read {
        /// The workload file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a usable request body.
    #[error("{path}:{line}: {reason}")]
    #[diagnostic(help(
        "each line must be one OpenAI request body: {{\"prompt\": …}} or {{\"messages\": […]}}"
    ))]
    Line {
        /// The workload file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file has no requests.
    #[error("workload {path} has no requests")]
    Empty {
        /// The workload file.
        path: PathBuf,
    },
}

impl Workload {
    /// Load a JSONL file: one OpenAI request body per line; blank lines are skipped.
    pub fn from_jsonl(path: &Path) -> Result<Self, WorkloadError> {
        let bytes = std::fs::read(path).map_err(|source| WorkloadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let line_error = |line: usize, reason: String| WorkloadError::Line {
            path: path.to_owned(),
            line,
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| line_error(0, e.to_string()))?;
        let mut requests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| line_error(i + 1, e.to_string()))?;
            requests.push(Request::from_value(value).map_err(|r| line_error(i + 1, r))?);
        }
        if requests.is_empty() {
            return Err(WorkloadError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Workload {
            requests,
            source: path.display().to_string(),
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }

    /// Random prompts and output lengths (see [`SyntheticSpec`]).
    pub fn synthetic(spec: &SyntheticSpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let prefixes: Vec<String> = (0..spec.shared_prefixes)
            .map(|_| random_words(&mut rng, spec.prefix_len))
            .collect();
        let requests = (0..spec.count)
            .map(|i| {
                let words = spec.input_len.sample(&mut rng);
                let prompt = random_words(&mut rng, words);
                let max_tokens = spec.output_len.sample(&mut rng);
                let prefix = (!prefixes.is_empty()).then(|| prefixes[i % prefixes.len()].as_str());
                synthetic_request(spec.endpoint, prefix, &prompt, max_tokens)
            })
            .collect();
        Self::from_generated(requests, spec.to_string())
    }

    fn from_generated(requests: Vec<Request>, source: String) -> Self {
        let mut hasher = Sha256::new();
        for request in &requests {
            hasher.update(Value::Object(request.body.clone()).to_string());
            hasher.update(b"\n");
        }
        Workload {
            requests,
            source,
            sha256: hex::encode(hasher.finalize()),
        }
    }
}

/// Words that are one token each in common BPE vocabularies (with their leading space), so
/// a prompt of N words is close to N tokens. The exact count comes from the server's usage.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "water", "river",
    "city", "house", "light", "music", "paper", "table", "garden", "letter", "story", "window",
    "market", "summer", "winter",
];

fn random_words(rng: &mut ChaCha8Rng, count: u32) -> String {
    let mut text = String::new();
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text
}

fn synthetic_request(
    endpoint: Endpoint,
    prefix: Option<&str>,
    prompt: &str,
    max_tokens: u32,
) -> Request {
    // Greedy and `ignore_eos`, as vLLM's random dataset: every request produces exactly
    // `max_tokens` tokens on servers that honour it, so runs are comparable.
    let mut body = json!({ "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": true });
    let fields = body
        .as_object_mut()
        .expect("a json! object literal is an object");
    match endpoint {
        Endpoint::Completions => {
            let text = match prefix {
                Some(prefix) => format!("{prefix}\n{prompt}"),
                None => prompt.to_owned(),
            };
            fields.insert("prompt".into(), text.into());
        }
        Endpoint::ChatCompletions => {
            let mut messages = Vec::new();
            if let Some(prefix) = prefix {
                messages.push(json!({ "role": "system", "content": prefix }));
            }
            messages.push(json!({ "role": "user", "content": prompt }));
            fields.insert("messages".into(), messages.into());
        }
    }
    Request {
        endpoint,
        body: fields.clone(),
    }
}

/// A distribution of lengths (in words for prompts, tokens for outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LenDist {
    /// Always this many.
    Fixed(u32),
    /// Uniform over `min..=max`.
    Uniform {
        /// Smallest length.
        min: u32,
        /// Largest length.
        max: u32,
    },
}

impl LenDist {
    fn sample(self, rng: &mut ChaCha8Rng) -> u32 {
        match self {
            LenDist::Fixed(n) => n,
            LenDist::Uniform { min, max } => rng.random_range(min..=max),
        }
    }
}

impl FromStr for LenDist {
    type Err = String;

    /// `N` for a fixed length, `MIN-MAX` for uniform over the inclusive range.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("expected N or MIN-MAX, got {s:?}"))
        };
        match s.split_once('-') {
            None => Ok(LenDist::Fixed(parse(s)?)),
            Some((a, b)) => {
                let (min, max) = (parse(a)?, parse(b)?);
                if min > max {
                    return Err(format!("empty range {s:?}"));
                }
                Ok(LenDist::Uniform { min, max })
            }
        }
    }
}

impl fmt::Display for LenDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LenDist::Fixed(n) => write!(f, "{n}"),
            LenDist::Uniform { min, max } => write!(f, "{min}-{max}"),
        }
    }
}

/// A synthetic workload: random word prompts, random output lengths, and optionally
/// `shared_prefixes` distinct system prompts (or prompt prefixes) of `prefix_len` words,
/// assigned round-robin, to exercise prefix caching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// How many distinct requests to generate.
    pub count: usize,
    /// Prompt length in words (the part after any shared prefix).
    pub input_len: LenDist,
    /// `max_tokens` of each request.
    pub output_len: LenDist,
    /// Number of distinct shared prefixes; 0 for none.
    pub shared_prefixes: usize,
    /// Length of each shared prefix in words.
    pub prefix_len: u32,
    /// Chat or plain completions.
    pub endpoint: Endpoint,
    /// Seed of the generator: same spec and seed, same workload.
    pub seed: u64,
}

impl fmt::Display for SyntheticSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "synthetic {:?}: {} requests, input {} words, output {} tokens",
            self.endpoint, self.count, self.input_len, self.output_len
        )?;
        if self.shared_prefixes > 0 {
            write!(
                f,
                ", {} shared prefixes of {} words",
                self.shared_prefixes, self.prefix_len
            )?;
        }
        write!(f, ", seed {}", self.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SyntheticSpec {
        SyntheticSpec {
            count: 12,
            input_len: LenDist::Uniform { min: 5, max: 9 },
            output_len: LenDist::Fixed(16),
            shared_prefixes: 3,
            prefix_len: 20,
            endpoint: Endpoint::ChatCompletions,
            seed: 7,
        }
    }

    #[test]
    fn synthetic_workloads_are_a_function_of_spec_and_seed() {
        let a = Workload::synthetic(&spec());
        assert_eq!(a.sha256, Workload::synthetic(&spec()).sha256);
        let other = Workload::synthetic(&SyntheticSpec { seed: 8, ..spec() });
        assert_ne!(a.sha256, other.sha256);
    }

    #[test]
    fn synthetic_lengths_follow_the_spec() {
        let w = Workload::synthetic(&spec());
        assert_eq!(w.requests.len(), 12);
        for r in &w.requests {
            assert_eq!(r.body["max_tokens"], 16);
            let user = r.body["messages"][1]["content"].as_str().unwrap();
            let words = user.split(' ').count();
            assert!((5..=9).contains(&words), "{words} words");
        }
    }

    #[test]
    fn shared_prefixes_repeat_round_robin_and_are_distinct() {
        let w = Workload::synthetic(&spec());
        let system = |i: usize| w.requests[i].body["messages"][0]["content"].clone();
        assert_eq!(system(0), system(3));
        assert_eq!(system(1), system(10));
        assert_ne!(system(0), system(1));
        assert_ne!(system(1), system(2));
        assert_eq!(system(0).as_str().unwrap().split(' ').count(), 20);
    }

    #[test]
    fn length_distributions_parse() {
        assert_eq!("64".parse(), Ok(LenDist::Fixed(64)));
        assert_eq!("8-32".parse(), Ok(LenDist::Uniform { min: 8, max: 32 }));
        assert!("32-8".parse::<LenDist>().is_err());
        assert!("x".parse::<LenDist>().is_err());
    }

    #[test]
    fn requests_are_classified_by_their_body() {
        let chat = Request::from_value(json!({"messages": []})).unwrap();
        assert_eq!(chat.endpoint, Endpoint::ChatCompletions);
        let text = Request::from_value(json!({"prompt": "hi"})).unwrap();
        assert_eq!(text.endpoint, Endpoint::Completions);
        assert!(Request::from_value(json!({"input": "hi"})).is_err());
        assert!(Request::from_value(json!([1])).is_err());
    }

    /// The CUDA targets' committed workloads are what both servers can be sent as they
    /// are: completions of one token-id prompt (128–1024 ids below Llama 3's first
    /// special id) asking for a fixed 64–512 tokens with `ignore_eos`, greedy.
    #[test]
    fn cuda_targets_send_token_id_completions_of_fixed_length() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../targets");
        for target in ["llama-3.2-1b-h100", "llama-3.1-8b-h100"] {
            let workload = Workload::from_jsonl(&root.join(target).join("workload.jsonl")).unwrap();
            assert_eq!(workload.requests.len(), 128, "{target}");
            for r in &workload.requests {
                assert_eq!(r.endpoint, Endpoint::Completions);
                let ids = r.body["prompt"].as_array().expect("a token-id prompt");
                assert!((128..=1024).contains(&ids.len()), "{} ids", ids.len());
                assert!(
                    ids.iter()
                        .all(|id| id.as_u64().is_some_and(|id| id <= 128_000))
                );
                let max_tokens = r.body["max_tokens"].as_u64().unwrap();
                assert!((64..=512).contains(&max_tokens), "max_tokens {max_tokens}");
                assert_eq!(r.body["ignore_eos"], json!(true));
                assert_eq!(r.body["temperature"], json!(0.0));
            }
        }
    }
}
