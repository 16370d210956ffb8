#!/usr/bin/env python3
"""Write workload.jsonl: the token-id completions the Llama CUDA targets' benchmark sends.

Each line is an OpenAI /v1/completions body whose `prompt` is a list of token ids (part
of the OpenAI API): the dummy models' random vocabularies differ between our server and
llama-server, so both are sent the same ids rather than the same text. Lengths are drawn
like a chat workload: prompts of 128-1024 tokens and outputs of 64-512, both
log-uniform (short turns are common, long ones rare but costly). Every request asks for
exactly `max_tokens` with `ignore_eos` (llama-server's extension), greedy, so both
servers do the same work whatever the weights say.

Run from anywhere:
  python3 make_workload.py --model llama-3.2-1b-h100 --seed 1 --out workload.jsonl
(writes next to this script unless --out is absolute). Used by both Llama CUDA targets.
"""

import argparse
import json
import math
import pathlib
import random

# Llama 3's ordinary tokens are ids 0..127999; 128000.. are special (bos, eos, reserved).
FIRST_SPECIAL_ID = 128000
BOS_ID = 128000
PROMPT_TOKENS = (128, 1024)
OUTPUT_TOKENS = (64, 512)
REQUESTS = 128


def log_uniform(rng, lo, hi):
    """An integer in [lo, hi] whose logarithm is uniform."""
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def request(rng, model):
    n_prompt = log_uniform(rng, *PROMPT_TOKENS)
    prompt = [BOS_ID] + [rng.randrange(FIRST_SPECIAL_ID) for _ in range(n_prompt - 1)]
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": log_uniform(rng, *OUTPUT_TOKENS),
        "temperature": 0.0,
        "ignore_eos": True,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the target's name, sent as `model`")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", default="workload.jsonl")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = pathlib.Path(__file__).parent / args.out
    with open(out, "w", encoding="utf-8") as f:
        for _ in range(args.requests):
            f.write(json.dumps(request(rng, args.model), separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
