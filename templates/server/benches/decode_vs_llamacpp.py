#!/usr/bin/env python3
"""Prefill and batch-1 decode speed: our `server generate` against llama.cpp.

A benchmark, not a test. Runs both engines on the same GGUF with the same thread
count, alternating, `--reps` times, and prints the medians and their ratio:

    python3 benches/decode_vs_llamacpp.py --server target/release/server \\
        --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --reps 5

llama.cpp is driven through `llama-cpp-python` (pip), the same library that made the
accuracy goldens: prefill = one `eval` of the prompt, decode = `--gen` single-token
`eval`s of the greedy token (llama-bench's tg128 measures the same loop). Our side is
`server generate --prompt-ids ... --max-tokens GEN --ignore-eos`, whose last line
reports both rates. The prompt is `--prompt-len` fixed token ids (no tokenizer).
"""

import argparse
import re
import statistics
import subprocess
import time


def prompt_ids(n: int) -> list[int]:
    """Deterministic, varied token ids inside SmolLM2's vocabulary."""
    return [1 + (i * 7919) % 49000 for i in range(n)]


def ours(server: str, model: str, ids: list[int], gen: int) -> tuple[float, float]:
    cmd = [server, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
           "--max-tokens", str(gen + 1), "--ignore-eos"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"prefill ([\d.]+) tok/s, generated \d+, decode ([\d.]+) tok/s", out)
    if not m:
        raise SystemExit(f"unexpected output from {cmd[0]}:\n{out}")
    return float(m.group(1)), float(m.group(2))


def llama_cpp_run(llm, ids: list[int], gen: int) -> tuple[float, float]:
    import numpy as np
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill = len(ids) / (time.perf_counter() - t)
    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t = time.perf_counter()
    for _ in range(gen):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return prefill, gen / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="our server binary")
    ap.add_argument("--model", required=True, help="the GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    args = ap.parse_args()

    import llama_cpp
    # `scores` has n_batch rows and eval() writes row n_tokens - 1: n_batch = n_ctx.
    n_ctx = args.prompt_len + args.gen + 8
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    ids = prompt_ids(args.prompt_len)
    llama_cpp_run(llm, ids[:8], 8)  # warm-up
    ours(args.server, args.model, ids[:8], 8)
    rows = {"ours": [], "llama.cpp": []}
    for _ in range(args.reps):
        rows["llama.cpp"].append(llama_cpp_run(llm, ids, args.gen))
        rows["ours"].append(ours(args.server, args.model, ids, args.gen))
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in rows.items()}
    print(f"{args.threads} threads, prompt {args.prompt_len}, decode {args.gen}, {args.reps} reps (medians)")
    for k, (p, d) in med.items():
        print(f"  {k:<10} prefill {p:8.1f} tok/s   decode {d:8.1f} tok/s")
    (po, do), (pl, dl) = med["ours"], med["llama.cpp"]
    print(f"  ratio      prefill {po / pl:8.2f}x       decode {do / dl:8.2f}x")


if __name__ == "__main__":
    main()
