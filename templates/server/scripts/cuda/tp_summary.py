"""Summarise tp_check.sh's results as one JSON with the ratios, and print a table.

Usage: python tp_summary.py RESULTS_DIR TP   (prints the JSON, then the table on stderr)
"""
import json
import os
import re
import sys


# llama.cpp's multi-GPU modes: by layer, by tensor (its tensor parallelism, b11277 on) and
# by row (the older row split; this build's CUDA back end refuses it).
SPLIT_MODES = ("layer", "tensor", "row")


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def decode_by_batch(bench):
    return {b["batch"]: b["decode_tok_s"] for b in bench["batches"]} if bench else {}


def llama_tg(res, sm):
    """llama-bench's tg tok/s (batch 1) for split mode `sm`."""
    try:
        for line in open(os.path.join(res, f"llama_bench_{sm}.md")):
            if re.search(r"\btg\d+", line):
                return float(re.findall(r"([\d.]+) ±", line)[-1])
    except (OSError, IndexError):
        pass
    return None


def llama_batched(res, sm):
    """llama-batched-bench S_TG (generated tok/s over all sequences) by batch."""
    out = {}
    try:
        for line in open(os.path.join(res, f"batched_{sm}.log")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 8 and cells[2].isdigit():
                out[int(cells[2])] = float(cells[7])
    except OSError:
        pass
    return out


def ratio(a, b):
    return a / b if a and b else None


def main():
    res, tp = sys.argv[1], sys.argv[2]
    read = lambda name: open(os.path.join(res, name)).read().strip() if os.path.exists(os.path.join(res, name)) else None
    names = sorted(f[len("bench_"):-len(".json")] for f in os.listdir(res) if f.startswith("bench_") and f.endswith(".json"))
    ours = {name: load(os.path.join(res, f"bench_{name}.json")) for name in names}
    speed = {name: decode_by_batch(b) for name, b in ours.items()}
    peers = {}
    for sm in SPLIT_MODES:
        batched = llama_batched(res, sm)
        # Batch 1 from llama-bench's tg (its best figure: above batched-bench's B=1 row).
        tg = llama_tg(res, sm)
        if tg:
            batched[1] = tg
        peers[f"llamacpp_sm_{sm}"] = batched
    batches = sorted({b for s in list(speed.values()) + list(peers.values()) for b in s})
    table = {}
    for b in batches:
        row = {k: v.get(b) for k, v in {**speed, **peers}.items()}
        for name in names:
            if name == "tp1":
                continue
            top = speed[name].get(b)
            row[f"{name}_vs_tp1"] = ratio(top, speed.get("tp1", {}).get(b))
            for sm in SPLIT_MODES:
                row[f"{name}_vs_llamacpp_sm_{sm}"] = ratio(top, peers[f"llamacpp_sm_{sm}"].get(b))
        table[b] = row
    fault = [json.loads(line) for line in (read("fault.jsonl") or "").splitlines() if line.strip()]
    summary = {
        "device": read("device.txt"),
        "p2p": read("p2p.txt"),
        "tensor_parallel": int(tp),
        "agreement": load(os.path.join(res, "agreement.json")),
        "dead_rank": fault,
        "decode_tok_s_by_batch": table,
        "ours": ours,
    }
    print(json.dumps(summary, indent=1))
    out = sys.stderr
    cols = list(next(iter(table.values())).keys()) if table else []

    def fmt(col, v):
        return "-" if v is None else (f"{v:.2f}x" if "_vs_" in col else f"{v:.0f}")

    print("\ndecode tok/s (all sequences) by batch; X_vs_Y = X's tok/s over Y's", file=out)
    for b, row in table.items():
        print(f"batch {b}: " + ", ".join(f"{c} {fmt(c, row[c])}" for c in cols), file=out)
    for k, v in (summary["agreement"] or {}).items():
        if isinstance(v, dict):
            decided = ", ".join(f"{100 * m['top1_agreement']:.1f}% of {m['positions']} leading by {m['min_lead_nats']}"
                                for m in v.get("top1_by_reference_lead", []) if m["top1_agreement"] is not None)
            print(f"{k}: rel err {v['logits_rel_err']:.4f}, top-1 {100 * v['top1_agreement']:.1f}%"
                  + (f" ({decided})" if decided else ""), file=out)
    for f in fault:
        print(f"dead rank ({f['all_reduce']}): exit {f['exit_code']} after {f['seconds']} s, hung: {f['hung']}: {f['message'].strip().splitlines()[-1] if f['message'].strip() else ''}", file=out)


if __name__ == "__main__":
    main()
