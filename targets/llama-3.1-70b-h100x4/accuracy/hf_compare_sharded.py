#!/usr/bin/env python3
"""Accuracy check of a model too large for one GPU against Hugging Face transformers.

Usage (the target's [accuracy] command; the Judge fills in {url} and {model}):
  hf_compare_sharded.py --url URL --model MODEL_DIR --prompts accuracy/prompts.jsonl

As ../../llama-3.2-1b-h100/accuracy/hf_compare.py (whose server scoring and gates it
reuses), but the reference runs in bf16 with its layers spread over every GPU of the host
(`device_map="auto"`), each GPU capped at --gpu-gib so that the server beside it keeps
its own weights and KV cache: float32 would need 282 GB for the 70B shape.
"""

import argparse
import importlib.util
import json
import pathlib
import sys

import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

HERE = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location(
    "hf_compare", HERE / "../../llama-3.2-1b-h100/accuracy/hf_compare.py")
hf_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hf_compare)


@torch.no_grad()
def reference(model, tokenizer, ids):
    first = next(model.parameters()).device
    logits = model(input_ids=torch.tensor([ids], device=first)).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)[:-1]
    top1 = [tokenizer.decode([int(i)], skip_special_tokens=False) for i in logprobs.argmax(-1)]
    actual = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0]
    return top1, actual.tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--min-top1", type=float, default=0.99)
    p.add_argument("--max-logprob-err", type=float, default=0.05)
    p.add_argument("--gpu-gib", type=int, default=38)
    args = p.parse_args()
    memory = {i: f"{args.gpu_gib}GiB" for i in range(torch.cuda.device_count())}
    model = LlamaForCausalLM.from_pretrained(
        args.model, dtype=torch.bfloat16, device_map="auto", max_memory=memory).eval()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    agree, total, err = 0, 0, 0.0
    with open(args.prompts, encoding="utf-8") as f:
        for line in f:
            ids = json.loads(line)["prompt"][: args.max_len]
            ours_top, ours_lp = hf_compare.server_scores(args.url, ids)
            ref_top, ref_lp = reference(model, tokenizer, ids)
            agree += sum(a == b for a, b in zip(ours_top, ref_top))
            err += sum(abs(a - b) for a, b in zip(ours_lp, ref_lp))
            total += len(ref_top)
    top1, mean_err = agree / total, err / total
    print(f"teacher-forced top-1 agreement {top1:.4f} over {total} positions; "
          f"mean |logprob error| {mean_err:.4f}")
    sys.exit(0 if top1 >= args.min_top1 and mean_err <= args.max_logprob_err else 1)


if __name__ == "__main__":
    main()
