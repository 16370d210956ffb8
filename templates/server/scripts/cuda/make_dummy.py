"""Write a Hugging Face Llama model folder of deterministic random bf16 weights.

Usage: python make_dummy.py CONFIG_JSON SEED OUT_DIR

The weights are Hugging Face's own initialisation (normal, std = initializer_range; norms
at 1) drawn on the GPU from torch.manual_seed(SEED), saved with save_pretrained
(config.json + model*.safetensors, bf16). A stand-in for the tool's dummy model source,
used by gpu_check.sh on the GPU machine (which cannot download weights).
"""
import json
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    config_path, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(config_path) as f:
        config = LlamaConfig(**json.load(f))
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    # transformers 5 rewrites rope settings as `rope_parameters`; keep the Hugging Face
    # config as published (what the server and the tool's generator read).
    shutil.copyfile(config_path, f"{out}/config.json")
    print(json.dumps({"dir": out, "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()
