"""Summarise tp_check.sh's results as one JSON with the ratios, and print a table.

Usage: python tp_summary.py RESULTS_DIR TP   (prints the JSON, then the table on stderr)
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
    device = open(os.path.join(res, "device.txt")).read().strip() if os.path.exists(os.path.join(res, "device.txt")) else None
    ours = {f"tp{t}": load(os.path.join(res, f"bench_tp{t}.json")) for t in ("1", tp)}
    speed = {name: decode_by_batch(b) for name, b in ours.items()}
    peers = {}
    for sm in ("layer", "row"):
        batched = llama_batched(res, sm)
        tg = llama_tg(res, sm)
        if tg and 1 not in batched:
            batched[1] = tg
        peers[f"llamacpp_sm_{sm}"] = batched
    batches = sorted({b for s in list(speed.values()) + list(peers.values()) for b in s})
    table = {}
    for b in batches:
        row = {k: v.get(b) for k, v in {**speed, **peers}.items()}
        top = speed.get(f"tp{tp}", {}).get(b)
        row[f"tp{tp}_vs_tp1"] = ratio(top, speed["tp1"].get(b))
        for sm in ("layer", "row"):
            row[f"tp{tp}_vs_llamacpp_sm_{sm}"] = ratio(top, peers[f"llamacpp_sm_{sm}"].get(b))
        table[b] = row
    summary = {
        "device": device,
        "p2p": open(os.path.join(res, "p2p.txt")).read().strip() if os.path.exists(os.path.join(res, "p2p.txt")) else None,
        "tensor_parallel": int(tp),
        "agreement": load(os.path.join(res, "agreement.json")),
        "decode_tok_s_by_batch": table,
        "ours": ours,
    }
    print(json.dumps(summary, indent=1))
    cols = list(next(iter(table.values())).keys()) if table else []
    def fmt(col, v):
        return "-" if v is None else (f"{v:.2f}x" if "_vs_" in col else f"{v:.0f}")

    print("\ndecode tok/s (all sequences) by batch; ratios are ours at TP=%s over the column" % tp, file=sys.stderr)
    print("batch | " + " | ".join(cols), file=sys.stderr)
    for b, row in table.items():
        print(f"{b} | " + " | ".join(fmt(c, row[c]) for c in cols), file=sys.stderr)
    agree = summary["agreement"] or {}
    for k, v in agree.items():
        if isinstance(v, dict):
            print(f"{k}: rel err {v['logits_rel_err']:.4f}, top-1 {100 * v['top1_agreement']:.1f}%", file=sys.stderr)


if __name__ == "__main__":
    main()
