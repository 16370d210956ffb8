#!/bin/bash
# Tensor parallelism on a 2-GPU machine, in one device call: on the same dummy 8B weights,
# our teacher-forced logits at TP = 2 (NCCL's all-reduce and the one-shot one) and TP = 1
# against each other and Hugging Face transformers (float32); our decode tok/s at batch
# 1, 32 and 128 for the same three; a rank killed mid-run (the others must fail with a
# clear error, not hang); llama.cpp's own multi-GPU splits (-sm layer, tensor and row) on
# the same shape; one JSON with the ratios ($OUT/tp_summary.json) and a printed table.
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/tp_check.sh DIR
# DIR holds: server.xz (the stripped CUDA server of an 8B target, xz-compressed),
# config-8b.json, these scripts, and peer/ (a copy of ../shared/peers/llamacpp-cuda).
# Env: STAGES (default "logits bench fault peer"), TP (2), BATCHES (1,32,128), GEN (64),
# CHECK_TOKENS (256). Needs libnccl.so.2 (the nvidia-nccl-cu13 wheel) and cuBLAS 13.
set -u
G=$(cd "${1:?usage: tp_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs}; R=$W/results
mkdir -p "$OUT" "$R" "$W/lib"
export PYTHONUNBUFFERED=1
# NVLink multicast off for every program here (NCCL, PyTorch, NVSHMEM): it can take a
# shared host's GPUs out of service. The server sets NCCL's for itself too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec > >(tee -a "$OUT/tp_check.log") 2>&1
STAGES=${STAGES:-logits bench fault peer}; TP=${TP:-2}; GEN=${GEN:-64}; BATCHES=${BATCHES:-1,32,128}
has() { [[ " $STAGES " == *" $1 "* ]]; }
stamp() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
T0=$(date +%s)

# cuBLAS 13 and NCCL for the server's run-time loading. The NCCL wheel ships
# libnccl.so.2 only; cudarc asks for libnccl.so: link it.
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
[ -f "$NCCL" ] || NCCL=$(find / -name 'libnccl.so.2*' -not -path '*/proc/*' 2>/dev/null | head -1)
echo "cublas: $CUBLAS"; echo "nccl: $NCCL"
ln -sf "$NCCL" "$W/lib/libnccl.so"
export LD_LIBRARY_PATH=$W/lib:$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
xz -dc "$G/server.xz" > "$W/server" && chmod +x "$W/server" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$R/device.txt"
nvidia-smi topo -m | head -4
python3 -c "import torch; print('p2p 0<->1:', torch.cuda.can_device_access_peer(0, 1), torch.cuda.can_device_access_peer(1, 0))" | tee "$R/p2p.txt"

P=${PEER_WORK:-/tmp/llamacpp-peer}; B=$P/llamacpp-cuda-b11434
if has peer; then
  # llama.cpp's GGUF is written on the CPU while our part runs on the GPUs.
  (OUT=$OUT bash "$G/peer/run.sh" gguf 8b "$P/8b.gguf" > "$W/gguf.log" 2>&1) &
  GGUF=$!
fi
stamp "dummy 8B weights"
python3 "$G/make_dummy.py" "$G/config-8b.json" 0 "$W/8b" || exit 1
if has logits; then
  python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(128000)) for _ in range(${CHECK_TOKENS:-256})))" > "$W/tokens.txt"
  # name:TP:all-reduce:tokens per step; the first is the baseline. One token a step runs
  # the decode graphs and decode's small all-reduces (the one-shot kernel's messages).
  RUNS="tp1:1:nccl:512 tp$TP:$TP:nccl:512 tp${TP}_decode:$TP:nccl:1 tp${TP}_push_decode:$TP:one-shot-push:1"
  for run in $RUNS; do
    IFS=: read -r name tp ar chunk <<< "$run"
    stamp "logits, $name"
    timeout 120 "$W/server" cuda-logits --model "$W/8b" --tokens "$W/tokens.txt" \
      --out "$W/logits-$name.f32" --tensor-parallel "$tp" --all-reduce "$ar" --chunk "$chunk"
  done
  stamp "Hugging Face reference"
  timeout 180 python3 "$G/tp_compare.py" "$W/8b" "$W/tokens.txt" "$R/agreement.json" \
    $(for run in $RUNS; do echo "${run%%:*}=$W/logits-${run%%:*}.f32"; done)
fi
if has bench; then
  for run in "tp${TP}_push:$TP:one-shot-push" "tp$TP:$TP:nccl" "tp1:1:nccl"; do
    IFS=: read -r name tp ar <<< "$run"
    stamp "decode speed, $name"
    timeout 150 "$W/server" cuda-bench --model "$W/8b" --batch "$BATCHES" --prompt 128 \
      --gen-tokens "$GEN" --tensor-parallel "$tp" --all-reduce "$ar" | tee "$R/bench_$name.json"
  done
fi
if has fault; then
  # Rank 1's thread stops at its 10th step; rank 0 must report it within the deadline.
  for ar in nccl one-shot-push; do
    stamp "a dead rank ($ar)"
    t=$(date +%s)
    VIBESERVE_TP_FAULT=1:10 VIBESERVE_NCCL_TIMEOUT_S=5 timeout 120 "$W/server" cuda-bench \
      --model "$W/8b" --batch 1 --prompt 16 --gen-tokens 32 --tensor-parallel "$TP" \
      --all-reduce "$ar" > "$W/fault.out" 2>&1
    rc=$?
    python3 -c "import json,sys; print(json.dumps({'all_reduce': sys.argv[1], 'exit_code': int(sys.argv[2]), 'seconds': int(sys.argv[3]), 'hung': sys.argv[2] == '124', 'message': open(sys.argv[4]).read()[-400:]}))" \
      "$ar" "$rc" "$(( $(date +%s) - t ))" "$W/fault.out" | tee -a "$R/fault.jsonl"
  done
fi
rm -rf "$W/8b"
# A device call ends at 600 s: leave the peer out rather than lose the summary.
if has peer && [ $(( $(date +%s) - T0 )) -gt "${PEER_DEADLINE:-380}" ]; then
  echo "skipping llama.cpp: past ${PEER_DEADLINE:-380} s"; kill "$GGUF" 2>/dev/null
elif has peer; then
  stamp "llama.cpp: waiting for the 8B GGUF"
  wait "$GGUF"; tail -2 "$W/gguf.log"
  FA=(off on)  # llama-batched-bench spells -fa on|off, llama-bench 1|0
  # -sm tensor is this build's tensor parallelism (flash attention required; peer access
  # on, as GGML_CUDA_P2P asks); -sm row is tried too, and its refusal kept in the log.
  for sm in layer tensor row; do
    stamp "llama.cpp -sm $sm"
    for fa in 1 0; do  # -sm row may refuse flash attention: then without
      GGML_CUDA_P2P=1 timeout 60 "$B/llama-bench" -m "$P/8b.gguf" -ngl 99 -fa $fa -sm "$sm" -p 0 -n "$GEN" -r 1 -o md \
        > "$R/llama_bench_$sm.md" 2>&1
      GGML_CUDA_P2P=1 timeout 90 "$B/llama-batched-bench" -m "$P/8b.gguf" -ngl 99 -fa "${FA[$fa]}" -sm "$sm" -c 33024 \
        -b 2048 -ub 512 -npp 128 -ntg "$GEN" -npl "$BATCHES" > "$R/batched_$sm.log" 2>&1
      grep -h "^|" "$R/llama_bench_$sm.md" "$R/batched_$sm.log"
      (echo "== -sm $sm -fa $fa"; cat "$R/llama_bench_$sm.md" "$R/batched_$sm.log") >> "$OUT/llamacpp.log"
      grep -q "tg$GEN" "$R/llama_bench_$sm.md" && break
    done
  done
fi
stamp "summary"
python3 "$G/tp_summary.py" "$R" "$TP" | tee "$OUT/tp_summary.json"
cp "$R"/*.json "$OUT/" 2>/dev/null
