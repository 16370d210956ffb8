"""Compare the teacher-forced logits of our server at several tensor-parallel degrees
with each other and with Hugging Face transformers (float32) on the same weights.

Usage: python tp_compare.py MODEL_DIR TOKENS_FILE OUT_JSON NAME=LOGITS_F32 ...

The first NAME is the baseline (TP = 1): every other run is also compared with it.
Reported per run: ‖ours − ref‖ / ‖ref‖ and the share of positions whose top-1 token
matches (hf_compare.figures), and whether any logit is NaN.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_compare import figures, hf_logits  # noqa: E402


def main():
    model_dir, tokens_file, out_file = sys.argv[1:4]
    runs = [a.split("=", 1) for a in sys.argv[4:]]
    tokens = [int(t) for t in open(tokens_file).read().replace(",", " ").split()]
    ids = torch.tensor([tokens], device="cuda")
    ours = {}
    for name, path in runs:
        if os.path.exists(path):
            ours[name] = torch.from_numpy(np.fromfile(path, dtype="<f4")).to("cuda").view(len(tokens), -1)
    ref = hf_logits(model_dir, ids, torch.float32)
    report = {"tokens": len(tokens)}
    for name, logits in ours.items():
        report[f"{name}_vs_hf_f32"] = figures(logits, ref)
        report[f"{name}_nan"] = bool(torch.isnan(logits).any())
    base = runs[0][0]
    for name, logits in ours.items():
        if name != base and base in ours:
            report[f"{name}_vs_{base}"] = figures(logits, ours[base])
    with open(out_file, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
