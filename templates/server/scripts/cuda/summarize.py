"""Summarise gpu_check.sh's results (ours and llama.cpp's) as one JSON with the ratios.

Usage: python summarize.py RESULTS_DIR OUT_DIR  (prints the JSON)
"""
import json
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# Batch-1 decode floors from the issue's anchors (weight bytes over the H100's 3.35 TB/s
# datasheet bandwidth), beside the one each run measures (over its copy bandwidth).
ANCHOR_FLOOR = {"1b": 1218.0, "8b": 187.0}


def serving(res, m):
    """`cargo vibeserve bench` results of ours and llama-server, with the ratios."""
    keys = ["output_throughput", "median_ttft_ms", "p99_ttft_ms", "completed", "failed"]
    out = {}
    for who in ("ours", "peer"):
        r = load(os.path.join(res, f"serve_{who}_{m}.json"))
        out[who] = {k: r.get(k) for k in keys} if isinstance(r, dict) else None
    o, p = out["ours"], out["peer"]
    if o and p and p.get("output_throughput"):
        out["output_tok_s_ratio"] = o["output_throughput"] / p["output_throughput"]
        if p.get("p99_ttft_ms"):
            out["p99_ttft_ratio"] = o["p99_ttft_ms"] / p["p99_ttft_ms"]
    return out


def llama_tg(out_dir):
    """llama-bench tg128 tok/s by model size (from llama_bench.md, 8b first then 1b)."""
    rows = []
    try:
        for line in open(os.path.join(out_dir, "llama_bench.md")):
            if "tg128" in line:
                rows.append(float(re.findall(r"([\d.]+) ±", line)[-1]))
    except OSError:
        return {}
    return dict(zip(["8b", "1b"], rows))


def llama_batched(out_dir, m):
    """llama-batched-bench S_TG (generated tok/s over all sequences) by batch."""
    out = {}
    try:
        for line in open(os.path.join(out_dir, f"batched_{m}.log")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 8 and cells[2].isdigit():
                out[int(cells[2])] = float(cells[7])
    except OSError:
        pass
    return out


def main():
    res, out_dir = sys.argv[1], sys.argv[2]
    date = os.path.join(res, "date.txt")
    summary = {"date": open(date).read().strip() if os.path.exists(date) else None, "device": open(os.path.join(res, "device.txt")).read().strip() if os.path.exists(os.path.join(res, "device.txt")) else None}
    tg = llama_tg(out_dir)
    for m in ["1b", "8b"]:
        ours = load(os.path.join(res, f"bench_{m}.json"))
        entry = {"hf_agreement": load(os.path.join(res, f"hf_{m}.json")), "ours": ours}
        peer = llama_batched(out_dir, m)
        entry["llamacpp_tg128_batch1"] = tg.get(m)
        entry["llamacpp_batched_tg"] = peer
        entry["serving"] = serving(res, m)
        if ours:
            by_batch = {b["batch"]: b["decode_tok_s"] for b in ours["batches"]}
            ratios = {"batch1_floor_measured": ours.get("batch1_floor_ratio")}
            if 1 in by_batch:
                ratios["batch1_floor_anchor"] = by_batch[1] / ANCHOR_FLOOR[m]
            if tg.get(m) and 1 in by_batch:
                ratios["batch1_vs_llamacpp"] = by_batch[1] / tg[m]
            for b in (32, 128):
                if b in by_batch and peer.get(b):
                    ratios[f"batch{b}_vs_llamacpp"] = by_batch[b] / peer[b]
            entry["ratios"] = ratios
        summary[m] = entry
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
