"""The official `openai` Python client against a running `server serve`.

Run by `tests/http.rs` (which starts the server): `python3 openai_client.py BASE_URL`.
Every check asserts behaviour a client relies on; the first failure exits non-zero
with its message. No pytest: the Rust test drives this script and reports its output.
"""

import codecs
import sys

import openai

MAX_TOKENS = 12


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def completions(client, model):
    r = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=MAX_TOKENS,
        temperature=0, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    check(choice.text, "completion text is empty")
    check(choice.finish_reason == "length", f"finish_reason {choice.finish_reason}")
    check(r.usage.completion_tokens == MAX_TOKENS, f"usage {r.usage}")
    streamed = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=MAX_TOKENS,
        temperature=0, stream=True, extra_body={"ignore_eos": True})
    text = "".join(c.choices[0].text for c in streamed if c.choices)
    check(text == choice.text, f"streamed {text!r} != whole {choice.text!r}")


def chat(client, model):
    messages = [{"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    msg = r.choices[0].message
    check(msg.role == "assistant" and msg.content, f"message {msg}")
    check(r.usage.prompt_tokens > 0, f"usage {r.usage}")
    chunks = list(client.chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    check(chunks[0].choices[0].delta.role == "assistant", "first chunk has no role")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == msg.content, f"streamed {text!r} != whole {msg.content!r}")
    check(chunks[-1].choices == [] and chunks[-1].usage is not None, "no usage chunk")
    check(chunks[-1].usage.completion_tokens == r.usage.completion_tokens,
          f"stream usage {chunks[-1].usage} != {r.usage}")


def chat_logprobs(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens,
          f"{len(content)} logprobs for {r.usage.completion_tokens} tokens")
    for entry in content:
        check(entry.logprob <= 0, f"logprob {entry.logprob} > 0")
        check(len(entry.top_logprobs) == 3, f"{len(entry.top_logprobs)} alternatives")
        best = entry.top_logprobs[0]
        # Greedy: the chosen token is the most likely one.
        check(abs(best.logprob - entry.logprob) < 1e-5 and best.token == entry.token,
              f"greedy picked {entry.token!r} but the top was {best.token!r}")


def chat_logprob_bytes(client, model):
    """Each token's `bytes` are its raw bytes, so they join into the reply even where a
    token holds only part of a character (Japanese text splits characters across tokens)."""
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello in Japanese."}],
        max_tokens=24, temperature=0, logprobs=True)
    text = r.choices[0].message.content
    joined = b"".join(bytes(entry.bytes) for entry in r.choices[0].logprobs.content)
    # Complete characters only: a reply cut by max_tokens may end inside one.
    whole = codecs.getincrementaldecoder("utf-8")().decode(joined)
    # A reply that ended on its end-of-turn token lists that token too.
    check(whole in (text, text + "<|im_end|>"),
          f"bytes join to {joined!r}, the reply is {text!r}")
    check(any(ord(c) > 127 for c in text), f"the reply {text!r} tests no multi-byte text")


def echo_scoring(client, model):
    """The Judge's teacher-forced check: the prompt comes back scored, nothing generated."""
    prompt = "The quick brown fox jumps over the lazy dog"
    ids = client.completions.create(
        model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=1).choices[0]
    n = len(ids.logprobs.tokens)
    check(n > 5, f"only {n} prompt tokens echoed")
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=0, echo=True, logprobs=5)
    choice = r.choices[0]
    lp = choice.logprobs
    check(choice.text == prompt, f"echoed text {choice.text!r}")
    check(r.usage.completion_tokens == 0, f"usage {r.usage}")
    check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
          == len(lp.text_offset) == r.usage.prompt_tokens, "ragged logprobs lists")
    check(lp.token_logprobs[0] is None and lp.top_logprobs[0] is None,
          "the first prompt token must have no score")
    check(all(x is not None and x <= 0 for x in lp.token_logprobs[1:]), "bad scores")
    check(all(0 < len(t) <= 5 for t in lp.top_logprobs[1:]), "bad top_logprobs")
    check(lp.text_offset == sorted(lp.text_offset), "text_offset not increasing")
    check("".join(lp.tokens) == prompt, f"tokens {lp.tokens} do not spell the prompt")
    # A likely continuation scores higher than an unlikely one.
    check(lp.token_logprobs[-1] > -10, f"' dog' scored {lp.token_logprobs[-1]}")


def refusals(client, model):
    try:
        client.completions.create(model=model, prompt="x", max_tokens=1, n=2)
    except openai.BadRequestError as e:
        check("only 1" in str(e), f"unhelpful n=2 message: {e}")
    else:
        raise AssertionError("n=2 was accepted")
    try:
        client.completions.create(model="not-this-model", prompt="x", max_tokens=1)
    except openai.BadRequestError:
        pass
    else:
        raise AssertionError("an unknown model was accepted")


def main():
    client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    for check_fn in [completions, chat, chat_logprobs, chat_logprob_bytes, echo_scoring,
                     refusals]:
        check_fn(client, model)
        print(f"ok {check_fn.__name__}", flush=True)


if __name__ == "__main__":
    main()
