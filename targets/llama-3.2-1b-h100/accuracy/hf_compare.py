#!/usr/bin/env python3
"""Accuracy check of a Llama CUDA target against Hugging Face transformers.

Usage (the target's [accuracy] command; the Judge fills in {url} and {model}):
  hf_compare.py --url URL --model MODEL_DIR --prompts accuracy/prompts.jsonl

MODEL_DIR is the dummy model the server loads (config.json, model.safetensors,
tokenizer.json, written by the generated crate's `materialize`). For each prompt of the
prompts file (its `prompt` token-id list, first --max-len ids), the server scores the
prompt under teacher forcing (/v1/completions with echo, logprobs=1, max_tokens=0) and
transformers' LlamaForCausalLM runs the same ids in float32 on the same bf16 weights.
It passes (exit 0) when, over all positions, the server's most likely next token equals
the reference's (compared as token text, as the OpenAI API returns it) at least
--min-top1 of the time, and the log probability of each actual next token is within
--max-logprob-err of the reference's on average. Runs on the GPU machine (torch, CUDA).

With --shard-gib N (a model too large for one GPU in float32: the 70B shape would need
282 GB), the reference runs in bf16 with its layers spread over every GPU of the host
(`device_map="auto"`), each GPU capped at N GiB so that the server beside it keeps its
own weights and KV cache.
"""

import argparse
import json
import sys
import urllib.request

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM


def server_scores(url, ids):
    body = {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        lp = json.load(resp)["choices"][0]["logprobs"]
    # Position 0 has no prediction; position i scores ids[i] given ids[:i].
    top1 = [next(iter(t)) for t in lp["top_logprobs"][1:]]
    return top1, lp["token_logprobs"][1:]


@torch.no_grad()
def reference(model, tokenizer, ids):
    first = next(model.parameters()).device  # the embedding's GPU when sharded
    logits = model(input_ids=torch.tensor([ids], device=first)).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)[:-1]
    top1 = [tokenizer.decode([int(i)], skip_special_tokens=False) for i in logprobs.argmax(-1)]
    actual = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0]
    return top1, actual.tolist()


def load(model_dir, shard_gib):
    if shard_gib is None:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda").eval()
    memory = {i: f"{shard_gib}GiB" for i in range(torch.cuda.device_count())}
    return LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, device_map="auto", max_memory=memory).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--min-top1", type=float, default=0.99)
    p.add_argument("--max-logprob-err", type=float, default=0.05)
    p.add_argument("--shard-gib", type=int, default=None)
    args = p.parse_args()
    model = load(args.model, args.shard_gib)
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    agree, total, err = 0, 0, 0.0
    with open(args.prompts, encoding="utf-8") as f:
        for line in f:
            ids = json.loads(line)["prompt"][: args.max_len]
            ours_top, ours_lp = server_scores(args.url, ids)
            ref_top, ref_lp = reference(model, tokenizer, ids)
            agree += sum(a == b for a, b in zip(ours_top, ref_top))
            err += sum(abs(a - b) for a, b in zip(ours_lp, ref_lp))
            total += len(ref_top)
    top1, mean_err = agree / total, err / total
    print(f"teacher-forced top-1 agreement {top1:.4f} over {total} positions; "
          f"mean |logprob error| {mean_err:.4f}")
    ok = top1 >= args.min_top1 and mean_err <= args.max_logprob_err
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
