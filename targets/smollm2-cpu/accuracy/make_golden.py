#!/usr/bin/env python3
"""Make the llama.cpp reference data that `check.py` compares a server against.

The reference is llama.cpp itself, through `llama-cpp-python` (pinned below), on the
target's own GGUF, so the goldens come from an implementation independent of ours.

For every prompt of `prompts.jsonl` (split `golden` -> golden.jsonl, split `heldout`
-> heldout.jsonl) it records:

* the prompt: chat prompts are rendered with the GGUF's own `tokenizer.chat_template`
  through llama-cpp-python's Jinja2 formatter (generation prompt on), exactly the text a
  chat request produces; both the messages and the rendered text are kept;
* `prompt_ids`: the prompt as llama.cpp tokenizes it (special tokens parsed; a BOS only
  where the GGUF asks for one);
* the greedy continuation of up to 48 tokens, made one token at a time as a server
  decodes (argmax of the raw logits); it stops early only at EOS or `<|im_end|>`, and
  that stop token is kept as the last continuation token;
* under teacher forcing (prompt + continuation evaluated in one pass), at every
  continuation position: the reference token's logprob and the top-5 (id, logprob,
  text), from a float64 log-softmax over the full vocabulary of the raw logits.

Deterministic: greedy decoding, fixed thread count, no sampling. Rerun with
`python3 make_golden.py --model PATH/SmolLM2-135M-Instruct.Q4_1.gguf`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

HERE = Path(__file__).resolve().parent
# The version whose output the committed goldens are; another version is refused unless
# --allow-version-change is given, so a regenerated file never silently changes source.
PINNED_VERSION = "0.3.36"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_CONTINUATION = 48  # greedy tokens per prompt (issue 3)
TOP_K = 5  # top logprobs kept per position
GREEDY_PREFIX = 16  # check.py compares this many free-running greedy tokens, as text
N_CTX = 2048  # ample for prompt + 48 tokens
N_THREADS = 2  # the target's thread count; llama.cpp's sums depend on the split
SPLIT_FILES = {"golden": "golden.jsonl", "heldout": "heldout.jsonl"}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_prompts(path: Path) -> list[dict]:
    """The prompt list, one JSON object a line."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chat_formatter(llm: llama_cpp.Llama) -> Jinja2ChatFormatter:
    """The GGUF's chat template, set up as llama-cpp-python sets it up for chat requests."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        sys.exit("error: the GGUF has no tokenizer.chat_template")
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos())
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


def prompt_ids_of(llm: llama_cpp.Llama, text: str) -> list[int]:
    """Tokenize as a llama.cpp server does: special tokens parsed, BOS if the GGUF says so."""
    add_bos = llm._model.add_bos_token()
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def stop_ids_of(llm: llama_cpp.Llama) -> set[int]:
    """EOS and `<|im_end|>` (the chat turn end), the only tokens that end a continuation."""
    stops = {llm.token_eos()}
    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    if len(im_end) == 1:
        stops.add(im_end[0])
    return stops


def piece(llm: llama_cpp.Llama, token: int) -> str:
    """One token's text (special tokens spelled out; a partial UTF-8 byte shows as U+FFFD)."""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def greedy(llm: llama_cpp.Llama, prompt_ids: list[int], stops: set[int]) -> tuple[list[int], str]:
    """Greedy continuation, one token per step; returns the ids and the finish reason."""
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    while len(out) < N_CONTINUATION:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stops:
            return out, "stop"
        llm.eval([token])
    return out, "length"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 over the full vocabulary."""
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def teacher_forced(llm: llama_cpp.Llama, prompt_ids: list[int], cont: list[int]) -> list[dict]:
    """Per continuation position: reference logprob and top-5, from one pass over all tokens."""
    llm.reset()
    llm.eval(prompt_ids + cont)
    first = len(prompt_ids) - 1  # logits at row i predict token i + 1
    lps = log_softmax(np.asarray(llm.scores[first : first + len(cont)]))
    positions = []
    for row, token in zip(lps, cont):
        top = np.argsort(-row, kind="stable")[:TOP_K]  # ties: lower id first
        positions.append(
            {
                "token_id": token,
                "logprob": float(row[token]),
                "top5": [[int(i), float(row[i]), piece(llm, int(i))] for i in top],
            }
        )
    return positions


def make_record(llm, fmt, stops, prompt: dict, reference: dict) -> dict:
    """One golden line for one prompt."""
    record = {"id": prompt["id"], "kind": prompt["kind"]}
    if prompt["kind"] == "chat":
        record["messages"] = prompt["messages"]
        text = fmt(messages=prompt["messages"]).prompt
    else:
        text = prompt["prompt"]
    record["prompt"] = text
    ids = prompt_ids_of(llm, text)
    cont, finish = greedy(llm, ids, stops)
    body = cont[:-1] if finish == "stop" else cont
    positions = teacher_forced(llm, ids, cont)
    record.update(
        {
            "prompt_ids": ids,
            "continuation_ids": cont,
            "continuation_text": llm.detokenize(body).decode("utf-8", errors="replace"),
            "first16_text": llm.detokenize(body[:GREEDY_PREFIX]).decode("utf-8", errors="replace"),
            "finish_reason": finish,
            "positions": positions,
            "reference": reference,
        }
    )
    return record


def strings_in(value) -> list[str]:
    """Every string inside a parsed JSON value (request bodies: prompts, message contents)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def workload_overlap(heldout: list[dict], workload: Path) -> list[str]:
    """Ids of held-out prompts whose text appears in any request of the workload file."""
    if not workload.exists():
        return []
    with workload.open(encoding="utf-8") as f:
        texts = [s for line in f if line.strip() for s in strings_in(json.loads(line))]
    hits = []
    for p in heldout:
        parts = [m["content"] for m in p.get("messages", [])] or [p["prompt"]]
        if any(part in t for part in parts for t in texts):
            hits.append(p["id"])
    return hits


def summarize(name: str, records: list[dict]) -> None:
    """Print one line per prompt and totals."""
    n_pos = sum(len(r["positions"]) for r in records)
    mismatch = sum(
        p["top5"][0][0] != p["token_id"] for r in records for p in r["positions"]
    )
    print(f"{name}: {len(records)} prompts, {n_pos} teacher-forced positions")
    for r in records:
        lp = np.mean([p["logprob"] for p in r["positions"]])
        print(
            f"  {r['id']:<24} {len(r['prompt_ids']):>3} prompt + {len(r['continuation_ids']):>2} "
            f"({r['finish_reason']:<6}) mean ref logprob {lp:7.3f}  {r['continuation_text'][:40]!r}"
        )
    print(f"  teacher-forced argmax differs from the greedy token at {mismatch} of {n_pos} positions")


def parse_args() -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--prompts", type=Path, default=HERE / "prompts.jsonl")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--workload", type=Path, default=HERE.parent / "workload.jsonl",
                    help="held-out prompts must not appear in it")
    ap.add_argument("--allow-version-change", action="store_true")
    return ap.parse_args()


def main() -> int:
    """Write golden.jsonl and heldout.jsonl."""
    args = parse_args()
    if llama_cpp.__version__ != PINNED_VERSION and not args.allow_version_change:
        sys.exit(f"error: llama-cpp-python {llama_cpp.__version__}, goldens pin {PINNED_VERSION}")
    digest = sha256_of(args.model)
    if digest != MODEL_SHA256:
        sys.exit(f"error: {args.model} has sha256 {digest}, expected {MODEL_SHA256}")
    prompts = load_prompts(args.prompts)
    overlap = workload_overlap([p for p in prompts if p["split"] == "heldout"], args.workload)
    if overlap:
        sys.exit(f"error: held-out prompts appear in {args.workload}: {', '.join(overlap)}")
    llm = llama_cpp.Llama(model_path=str(args.model), n_ctx=N_CTX, n_threads=N_THREADS,
                          logits_all=True, seed=0, verbose=False)
    reference = {
        "engine": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "model_sha256": digest,
        "n_threads": N_THREADS,
        "machine": platform.machine(),
    }
    fmt, stops = chat_formatter(llm), stop_ids_of(llm)
    for split, filename in SPLIT_FILES.items():
        records = [make_record(llm, fmt, stops, p, reference) for p in prompts if p["split"] == split]
        with (args.out_dir / filename).open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summarize(filename, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
