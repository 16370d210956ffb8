#!/usr/bin/env python3
"""Accuracy check of a Llama CUDA target against Hugging Face transformers.

Usage (the target's [accuracy] command; the Judge fills in {url} and {model}):
  hf_compare.py --url URL --model MODEL_DIR --prompts accuracy/prompts.jsonl

MODEL_DIR is the dummy model the server loads (config.json, model.safetensors,
tokenizer.json, written by the generated crate's `materialize`). For each prompt of the
prompts file (its `prompt` token-id list, first --max-len ids), the server scores the
prompt under teacher forcing (/v1/completions with echo, logprobs=1, max_tokens=0) and
transformers' LlamaForCausalLM runs the same ids in float32 on the same bf16 weights.
It passes (exit 0) when the server's most likely next token equals the reference's
(compared as token text, as the OpenAI API returns it) at least --min-top1 of the time
over all positions, and at least --min-top1-decided of the time over the positions the
reference decides (its top-1 leads its runner-up by --decided-lead nats or more), and
the log probability of each actual next token is within --max-logprob-err of the
reference's on average. Runs on the GPU machine (torch, CUDA).

Why two top-1 gates: random weights give flat logits, whose top two are often closer
than bf16 rounding moves them; there top-1 is a coin toss for any bf16 computation
(transformers' own bf16 run agrees with its float32 run on 82-93% of the positions), so
over all positions only a loose gate is fair. Where the reference leads by a quarter of
a nat, bf16 noise does not flip the order, and a correct server must agree (measured on
the 8B, 2026-11-27: 100% of such positions, prompt chunks and one token a step alike).

With --shard-gib N (a model too large for one GPU in float32: the 70B shape would need
282 GB), the reference runs in bf16 (or --shard-dtype float32) with its layers spread
over every GPU of the host (`device_map="auto"`), each GPU capped at N GiB so that the
server beside it keeps its own weights and KV cache.

The reference depends only on the weights, the prompts and how it is computed, never on
the server under test, so it is computed once and kept in MODEL_DIR (a file named
.hf_reference-KEY.json, written through a temporary file and a rename). KEY hashes the
prompts file's content, --max-len, the reference's dtype and sharding, the versions of
torch and transformers, and the model files' names, sizes and modification times: new
weights, prompts or settings compute it anew. Later candidates skip loading
transformers (an 8B model in float32 takes 32 GB and most of a minute to load).

With --reference-only (no --url), the reference is computed and kept, and nothing else
runs: for a model whose server and reference do not fit the GPUs together (the 70B
shape: 35 GB of weights and its KV cache per GPU beside 38 GiB of transformers), run it
once before the server starts; the check with --url then reads it from the cache.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from importlib.metadata import version

CACHE_PREFIX = ".hf_reference-"


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


def reference(model, tokenizer, ids):
    import torch

    with torch.no_grad():
        return _reference(torch, model, tokenizer, ids)


def _reference(torch, model, tokenizer, ids):
    first = next(model.parameters()).device  # the embedding's GPU when sharded
    logits = model(input_ids=torch.tensor([ids], device=first)).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)[:-1]
    top1 = [tokenizer.decode([int(i)], skip_special_tokens=False) for i in logprobs.argmax(-1)]
    actual = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0]
    best2 = logprobs.topk(2, dim=-1).values
    return top1, actual.tolist(), (best2[:, 0] - best2[:, 1]).tolist()


def load(model_dir, shard_gib, shard_dtype):
    import torch
    from transformers import LlamaForCausalLM

    if shard_gib is None:
        return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda").eval()
    memory = {i: f"{shard_gib}GiB" for i in range(torch.cuda.device_count())}
    return LlamaForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, shard_dtype), device_map="auto", max_memory=memory).eval()


def cache_key(args, prompts_bytes):
    """What the reference depends on: prompts, settings, library versions, the weights."""
    h = hashlib.sha256()
    h.update(prompts_bytes)
    h.update(b"\0fields=top1,logprobs,lead\0")  # what a cached reference holds
    setting = "float32" if args.shard_gib is None else f"{args.shard_dtype}-shard-{args.shard_gib}GiB"
    h.update(f"\0max-len={args.max_len}\0{setting}\0".encode())
    h.update(f"torch={version('torch')}\0transformers={version('transformers')}\0".encode())
    for name in sorted(os.listdir(args.model)):
        if name.startswith(CACHE_PREFIX) or name.startswith("."):
            continue
        st = os.stat(os.path.join(args.model, name))
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def compute_reference(args, prompts):
    from tokenizers import Tokenizer

    model = load(args.model, args.shard_gib, args.shard_dtype)
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    return [dict(zip(("top1", "logprobs", "lead"), reference(model, tokenizer, ids))) for ids in prompts]


def cached_reference(args, prompts, prompts_bytes):
    """The reference for every prompt: read from MODEL_DIR's cache, else computed and kept."""
    path = os.path.join(args.model, f"{CACHE_PREFIX}{cache_key(args, prompts_bytes)}.json")
    try:
        with open(path, encoding="utf-8") as f:
            refs = json.load(f)
        if len(refs) == len(prompts):
            print(f"reference: cached ({os.path.basename(path)})")
            return refs
    except (OSError, ValueError):
        pass
    refs = compute_reference(args, prompts)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(refs, f)
        os.replace(tmp, path)
        print(f"reference: computed, kept in {os.path.basename(path)}")
    except OSError as e:  # a read-only model folder: the check still runs, uncached
        print(f"reference: computed, not kept ({e})")
    return refs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--min-top1", type=float, default=0.9)
    p.add_argument("--min-top1-decided", type=float, default=0.99,
                   help="top-1 gate over the decided positions (0: no gate)")
    p.add_argument("--decided-lead", type=float, default=0.25,
                   help="nats by which the reference's top-1 must lead for a decided position")
    p.add_argument("--max-logprob-err", type=float, default=0.05)
    p.add_argument("--shard-gib", type=int, default=None)
    p.add_argument("--shard-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--reference-only", action="store_true")
    args = p.parse_args()
    if not args.reference_only and args.url is None:
        p.error("--url is required unless --reference-only")
    with open(args.prompts, "rb") as f:
        prompts_bytes = f.read()
    lines = prompts_bytes.decode("utf-8").splitlines()
    prompts = [json.loads(line)["prompt"][: args.max_len] for line in lines if line.strip()]
    refs = cached_reference(args, prompts, prompts_bytes)
    if args.reference_only:
        return
    agree, total, err, agree_decided, decided = 0, 0, 0.0, 0, 0
    for ids, ref in zip(prompts, refs):
        ours_top, ours_lp = server_scores(args.url, ids)
        ref_top, ref_lp = ref["top1"], ref["logprobs"]
        same = [a == b for a, b in zip(ours_top, ref_top)]
        agree += sum(same)
        err += sum(abs(a - b) for a, b in zip(ours_lp, ref_lp))
        total += len(ref_top)
        for hit, lead in zip(same, ref["lead"]):
            if lead >= args.decided_lead:
                decided += 1
                agree_decided += hit
    top1, mean_err = agree / total, err / total
    top1_decided = agree_decided / decided if decided else 1.0
    print(f"teacher-forced top-1 agreement {top1:.4f} over {total} positions, "
          f"{top1_decided:.4f} over the {decided} where the reference leads by "
          f"{args.decided_lead} nats or more; mean |logprob error| {mean_err:.4f}")
    ok = (top1 >= args.min_top1 and top1_decided >= args.min_top1_decided
          and mean_err <= args.max_logprob_err)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
