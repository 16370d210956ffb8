"""Compare our server's teacher-forced logits with Hugging Face transformers'.

Usage: python hf_compare.py MODEL_DIR TOKENS_FILE OUR_LOGITS_F32 OUT_JSON [NAME=LOGITS_F32 ...]

The reference is transformers' LlamaForCausalLM on the same bf16 weights computed in
float32. Reported: ‖ours − ref‖ / ‖ref‖ over all logits, the share of positions where
our top-1 token equals the reference's (also over only the positions where the
reference's top-1 leads its runner-up by at least 0.05, 0.1 and 0.25 nats), and the same
figures for transformers in bf16 (the noise bf16 arithmetic alone gives, for scale).
Each extra NAME=FILE (our logits computed another way, e.g. one token a step through the
decode graphs and the GEMV kernel) is reported as NAME against the same reference.
"""
import json
import sys

import numpy as np
import torch
from transformers import LlamaForCausalLM


# Reference top-1 leads (in nats) past which a position counts as decided: random-weight
# logits are flat, and where the reference's top two are closer than bf16's own noise the
# top-1 is a coin toss for any bf16 computation, transformers' included.
MARGINS = (0.05, 0.1, 0.25)


def figures(ours, ref):
    rel = (torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref)).item()
    same = ours.argmax(-1) == ref.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    lead = top2[:, 0] - top2[:, 1]
    by_margin = []
    for m in MARGINS:
        decided = lead >= m
        agreement = same[decided].float().mean().item() if decided.any() else None
        by_margin.append({"min_lead_nats": m, "positions": int(decided.sum()), "top1_agreement": agreement})
    return {"logits_rel_err": rel, "top1_agreement": same.float().mean().item(),
            "top1_by_reference_lead": by_margin}


@torch.no_grad()
def hf_logits(model_dir, ids, dtype):
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cuda").eval()
    out = model(input_ids=ids).logits[0].float()
    del model
    torch.cuda.empty_cache()
    return out


def main():
    model_dir, tokens_file, ours_file, out_file = sys.argv[1:5]
    tokens = [int(t) for t in open(tokens_file).read().replace(",", " ").split()]
    ids = torch.tensor([tokens], device="cuda")

    def load(path):
        return torch.from_numpy(np.fromfile(path, dtype="<f4")).to("cuda").view(len(tokens), -1)

    ours = load(ours_file)
    ref = hf_logits(model_dir, ids, torch.float32)
    report = {"tokens": len(tokens), "ours_vs_hf_f32": figures(ours, ref), "nan": bool(torch.isnan(ours).any())}
    for extra in sys.argv[5:]:
        name, path = extra.split("=", 1)
        try:
            other = load(path)
        except (OSError, RuntimeError) as e:
            report[name] = {"error": str(e)}
            continue
        report[name] = figures(other, ref) | {"nan": bool(torch.isnan(other).any())}
    report["hf_bf16_vs_hf_f32"] = figures(hf_logits(model_dir, ids, torch.bfloat16), ref)
    with open(out_file, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
