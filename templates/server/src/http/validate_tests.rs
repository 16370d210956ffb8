//! Tests of request validation, one per rule.

use super::*;
use serde_json::json;

const MODEL: &str = "served-model";

fn completion_json(body: serde_json::Value) -> Result<ValidCompletion, ApiError> {
    let req: CompletionRequest = parse_body(body.to_string().as_bytes())?;
    completion(req, MODEL)
}

fn chat_json(body: serde_json::Value) -> Result<ValidChat, ApiError> {
    let req: ChatCompletionRequest = parse_body(body.to_string().as_bytes())?;
    chat(req, MODEL)
}

fn param_of(err: ApiError) -> Option<&'static str> {
    err.classify().2
}

#[test]
fn defaults_follow_openai() {
    let v = completion_json(json!({"prompt": "hi"})).expect("valid");
    assert_eq!(v.prompt, ValidPrompt::Text("hi".into()));
    assert_eq!(v.params.max_tokens, Some(16));
    assert_eq!(v.params.sampling.params().temperature, 1.0);
    assert_eq!(v.params.sampling.params().top_p, 1.0);
    assert_eq!(v.params.logprobs, None);
    assert!(!v.params.echo && !v.params.stream && !v.params.include_usage);
    let c = chat_json(json!({"messages": [{"role": "user", "content": "hi"}]})).expect("valid");
    assert_eq!(
        c.params.max_tokens, None,
        "chat defaults to the rest of the context"
    );
}

#[test]
fn malformed_json_and_wrong_types_are_invalid_body() {
    let err = parse_body::<CompletionRequest>(b"{\"prompt\": ").expect_err("truncated");
    assert!(matches!(err, ApiError::InvalidBody(_)));
    let err = completion_json(json!({"prompt": "x", "max_tokens": "ten"})).expect_err("type");
    match err {
        ApiError::InvalidBody(msg) => assert!(msg.contains("max_tokens"), "{msg}"),
        other => panic!("expected InvalidBody, got {other:?}"),
    }
    // A shared option (flattened into both requests) is named too.
    let err = chat_json(json!({"messages": [], "temperature": "hot"})).expect_err("type");
    assert!(
        matches!(&err, ApiError::InvalidBody(msg) if msg.contains("temperature")),
        "{err:?}"
    );
    let err = completion_json(json!({"max_tokens": 3})).expect_err("no prompt");
    assert!(matches!(err, ApiError::InvalidBody(msg) if msg.contains("prompt")));
}

#[test]
fn unknown_model_is_refused_and_missing_model_is_the_served_one() {
    let err = completion_json(json!({"model": "gpt-4", "prompt": "x"})).expect_err("unknown");
    assert!(matches!(err, ApiError::UnknownModel { .. }));
    assert!(completion_json(json!({"model": MODEL, "prompt": "x"})).is_ok());
}

#[test]
fn n_above_one_is_refused_with_a_reason() {
    let err = completion_json(json!({"prompt": "x", "n": 2})).expect_err("n=2");
    assert_eq!(param_of(err.clone()), Some("n"));
    assert!(err.to_string().contains("only 1"));
    assert!(completion_json(json!({"prompt": "x", "n": 1})).is_ok());
}

#[test]
fn sampling_ranges_are_enforced() {
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0.0)),
        ("top_p", json!(1.5)),
        ("min_p", json!(2.0)),
        ("presence_penalty", json!(3.0)),
        ("frequency_penalty", json!(-2.5)),
        ("top_k", json!(-2)),
        ("repetition_penalty", json!(0.0)),
    ] {
        let body = json!({"prompt": "x", field: value});
        let err = completion_json(body).expect_err(field);
        assert_eq!(param_of(err), Some(field), "{field}={value}");
    }
    let ok = completion_json(json!({"prompt": "x", "top_k": -1, "temperature": 0}));
    assert_eq!(ok.expect("valid").params.sampling.params().top_k, 0);
}

#[test]
fn stop_accepts_string_or_list_and_refuses_empty_or_too_many() {
    let one = completion_json(json!({"prompt": "x", "stop": "\n"})).expect("one");
    assert_eq!(one.params.sampling.params().stop, vec!["\n".to_string()]);
    let many = completion_json(json!({"prompt": "x", "stop": ["a", "b"]})).expect("list");
    assert_eq!(many.params.sampling.params().stop.len(), 2);
    assert!(completion_json(json!({"prompt": "x", "stop": [""]})).is_err());
    let five = json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]});
    assert!(completion_json(five).is_err());
}

#[test]
fn completion_prompt_shapes() {
    let ids = completion_json(json!({"prompt": [1, 2, 3]})).expect("ids");
    assert_eq!(ids.prompt, ValidPrompt::Tokens(vec![1, 2, 3]));
    let nested = completion_json(json!({"prompt": [[4, 5]]})).expect("one nested");
    assert_eq!(nested.prompt, ValidPrompt::Tokens(vec![4, 5]));
    let batch = completion_json(json!({"prompt": ["a", "b"]})).expect_err("batch");
    assert_eq!(param_of(batch), Some("prompt"));
    assert!(completion_json(json!({"prompt": ""})).is_err());
    assert!(completion_json(json!({"prompt": []})).is_err());
    let too_big = plan::VOCAB_SIZE as u32;
    assert!(completion_json(json!({"prompt": [1, too_big]})).is_err());
}

#[test]
fn logprobs_in_both_formats() {
    let c = completion_json(json!({"prompt": "x", "logprobs": 5, "echo": true, "max_tokens": 0}))
        .expect("valid");
    assert_eq!(c.params.logprobs, Some(5));
    assert!(c.params.echo);
    assert_eq!(c.params.max_tokens, Some(0));
    assert!(completion_json(json!({"prompt": "x", "logprobs": 21})).is_err());
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let chat_lp = chat_json(json!({"messages": msgs, "logprobs": true, "top_logprobs": 3}));
    assert_eq!(chat_lp.expect("valid").params.logprobs, Some(3));
    let plain = chat_json(json!({"messages": msgs, "logprobs": true})).expect("valid");
    assert_eq!(plain.params.logprobs, Some(0));
    let err = chat_json(json!({"messages": msgs, "top_logprobs": 3})).expect_err("needs logprobs");
    assert_eq!(param_of(err), Some("top_logprobs"));
}

#[test]
fn chat_messages_are_checked() {
    let parts = json!([{"role": "developer", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]);
    let v = chat_json(json!({"messages": parts})).expect("text parts");
    assert_eq!(v.messages[0].role, "system");
    assert_eq!(v.messages[0].content, "ab");
    assert!(chat_json(json!({"messages": []})).is_err());
    let robot = json!([{"role": "robot", "content": "x"}]);
    assert!(chat_json(json!({"messages": robot})).is_err());
    let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]);
    assert!(chat_json(json!({"messages": image})).is_err());
}

#[test]
fn json_response_format_and_tools_are_refused_clearly() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let json_fmt = json!({"messages": msgs, "response_format": {"type": "json_object"}});
    let err = chat_json(json_fmt).expect_err("json");
    assert!(err.to_string().contains("not supported yet"), "{err}");
    let text_fmt = json!({"messages": msgs, "response_format": {"type": "text"}});
    assert!(chat_json(text_fmt).is_ok());
    let tools = json!({"messages": msgs, "tools": [{"type": "function"}]});
    assert!(chat_json(tools).is_err());
}

#[test]
fn max_completion_tokens_wins_over_max_tokens() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let both = json!({"messages": msgs, "max_tokens": 5, "max_completion_tokens": 7});
    assert_eq!(chat_json(both).expect("valid").params.max_tokens, Some(7));
}

#[test]
fn context_check_refuses_overflow_and_fills_the_default() {
    let context = plan::CONTEXT_LENGTH.min(plan::KV_BLOCKS * plan::KV_BLOCK_SIZE);
    assert_eq!(check_context(10, None), Ok(context - 10));
    assert_eq!(check_context(10, Some(5)), Ok(5));
    assert_eq!(check_context(10, Some(context - 10)), Ok(context - 10));
    assert!(matches!(
        check_context(10, Some(context - 9)),
        Err(ApiError::ContextLength { .. })
    ));
    assert!(matches!(
        check_context(context + 1, None),
        Err(ApiError::ContextLength { .. })
    ));
    assert!(check_context(0, Some(1)).is_err());
}
