#!/usr/bin/env python3
"""llama.cpp behind a minimal OpenAI `/v1/completions`, to calibrate `check.py`.

    python3 accuracy/reference_server.py --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf --port 8091
    python3 accuracy/check.py --url http://127.0.0.1:8091

Why not `python3 -m llama_cpp.server`: in llama-cpp-python 0.3.36 its echo logprobs are
shifted by one position (entry i is scored with the logits that predict token i + 1, so
`token_logprobs` is the logprob of repeating a token and `top_logprobs` is the next
position's), and `max_tokens: 0` means "until the context is full". check.py rightly
fails it. This harness answers the same request shape correctly: entry i of the echo is
scored by the logits after tokens 0..i-1, entry 0 is null, as in OpenAI's format.

It serves what check.py sends and no more: GET /health, GET /v1/models, and
POST /v1/completions with `prompt` (a string or a list of token ids), `max_tokens`
(0 allowed), `temperature` 0 (greedy only), `echo`, `logprobs` (top-k count). One
request at a time; the model runs as in make_golden.py (same settings, same code
paths: one pass over the prompt, then one token per step), so against its own
goldens it should agree exactly. With `--incremental` the prompt is evaluated one
token per step instead, which measures how far llama.cpp's own decode path is from
its batched (prefill) path that made the teacher-forced goldens.
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

import llama_cpp

from make_golden import N_CTX, N_THREADS, log_softmax, prompt_ids_of, stop_ids_of

MODEL_NAME = "smollm2-reference"
MAX_TOP_LOGPROBS = 20  # the most OpenAI's completions API allows


class BadRequest(Exception):
    """A request this harness does not serve; answered with 400."""


def token_texts(llm: llama_cpp.Llama, ids: list[int]) -> list[str]:
    """Each token's text; a partial UTF-8 byte shows as U+FFFD."""
    return [llm.detokenize([t], special=True).decode("utf-8", errors="replace") for t in ids]


def scored(llm: llama_cpp.Llama, ids: list[int], first: int, k: int) -> dict:
    """OpenAI completions logprobs for ids[first:], from the logits held in llm.scores."""
    lps = log_softmax(np.asarray(llm.scores[: len(ids)]))
    texts = token_texts(llm, ids)
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = sum(len(t) for t in texts[:first])
    for i in range(first, len(ids)):
        out["tokens"].append(texts[i])
        out["text_offset"].append(offset)
        offset += len(texts[i])
        if i == 0:  # nothing precedes the first token
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        row = lps[i - 1]  # the logits after tokens 0..i-1 predict token i
        top: dict[str, float] = {}
        for j in [*np.argsort(-row, kind="stable")[:k], ids[i]]:
            text = token_texts(llm, [int(j)])[0]
            top[text] = max(top.get(text, -np.inf), float(row[j]))  # same text: keep the higher
        out["token_logprobs"].append(float(row[ids[i]]))
        out["top_logprobs"].append(top)
    return out


def parse(body: dict, llm: llama_cpp.Llama) -> tuple[list[int], int, bool, int | None]:
    """(prompt ids, max_tokens, echo, logprobs) of a completions request."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        ids = prompt_ids_of(llm, prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        ids = list(prompt)
    else:
        raise BadRequest("prompt must be a string or a non-empty list of token ids")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or max_tokens < 0 or len(ids) + max_tokens > N_CTX:
        raise BadRequest(f"max_tokens must be an integer >= 0 within the {N_CTX}-token context")
    if body.get("temperature", 1) != 0:
        raise BadRequest("this harness is greedy only: temperature must be 0")
    logprobs = body.get("logprobs")
    if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise BadRequest(f"logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}")
    return ids, max_tokens, bool(body.get("echo", False)), logprobs


def evaluate(llm: llama_cpp.Llama, ids: list[int], incremental: bool) -> None:
    """Fill llm.scores for `ids`: one batched pass, or one token per step as decoding does."""
    llm.reset()
    if not incremental:
        llm.eval(ids)
        return
    for token in ids:
        llm.eval([token])


def complete(llm: llama_cpp.Llama, stops: set[int], body: dict, incremental: bool) -> dict:
    """A greedy completion, as make_golden.py decodes, in OpenAI's response shape."""
    ids, max_tokens, echo, logprobs = parse(body, llm)
    evaluate(llm, ids, incremental)
    generated: list[int] = []
    finish = "length"
    while len(generated) < max_tokens:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stops:
            finish = "stop"
            break
        generated.append(token)
        llm.eval([token])
    text = llm.detokenize(generated).decode("utf-8", errors="replace")
    if echo:
        text = llm.detokenize(ids, special=True).decode("utf-8", errors="replace") + text
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    if logprobs is not None:
        choice["logprobs"] = scored(llm, ids + generated, 0 if echo else len(ids), logprobs)
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(generated),
             "total_tokens": len(ids) + len(generated)}
    return {"id": "cmpl-reference", "object": "text_completion", "model": MODEL_NAME,
            "choices": [choice], "usage": usage}


def handler_for(llm: llama_cpp.Llama, stops: set[int], incremental: bool) -> type[BaseHTTPRequestHandler]:
    """The request handler class, bound to one model."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self._send(200, complete(llm, stops, body, incremental))
            except (json.JSONDecodeError, BadRequest) as e:
                self._send(400, {"error": {"message": str(e), "type": "invalid_request_error"}})

        def log_message(self, fmt: str, *args) -> None:
            sys.stderr.write(f"reference_server: {fmt % args}\n")

    return Handler


def main() -> int:
    """Load the model and serve until interrupted."""
    ap = argparse.ArgumentParser(description="llama.cpp reference server for check.py")
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8091)
    ap.add_argument("--incremental", action="store_true",
                    help="evaluate prompts one token per step (llama.cpp's decode path) "
                         "instead of one batched pass, to measure how far the two paths differ")
    args = ap.parse_args()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=N_CTX, n_threads=N_THREADS,
                          logits_all=True, seed=0, verbose=False)
    server = HTTPServer((args.host, args.port), handler_for(llm, stop_ids_of(llm), args.incremental))
    print(f"reference_server: llama-cpp-python {llama_cpp.__version__} on "
          f"http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
