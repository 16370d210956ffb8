#!/bin/bash
# The CUDA targets' GPU check, in one device call: for each model (1B, 8B) write dummy
# weights, compare our teacher-forced logits with Hugging Face transformers', time our
# prefill and decode at batch 1/32/128 (with the bandwidth floor), then run llama.cpp's
# `run.sh bench` for the same shapes, and summarise everything as JSON with the ratios.
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/gpu_check.sh DIR
# DIR holds: server.xz (the stripped CUDA server, xz-compressed), config-1b.json and
# config-8b.json (the targets' config.json), these scripts, and peer/ (a copy of
# ../shared/peers/llamacpp-cuda). Env: MODELS (default "1b 8b"), PEER (1: run llama.cpp).
# Results: $OUT/summary.json, $OUT/check.log, and llama.cpp's own files in $OUT.
set -u
G=$(cd "${1:?usage: gpu_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}
W=${VS_WORK:-/tmp/vs}
mkdir -p "$OUT" "$W/results"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/check.log") 2>&1

# cuBLAS 13 for cudarc's run-time loading: the CUDA install's or the Python wheels'.
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
xz -dc "$G/server.xz" > "$W/server" && chmod +x "$W/server" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$W/results/device.txt"

python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(128000)) for _ in range(${CHECK_TOKENS:-384})))" > "$W/tokens.txt"
for m in ${MODELS:-1b 8b}; do
  echo "== $m: dummy weights"
  t0=$(date +%s)
  python3 "$G/make_dummy.py" "$G/config-$m.json" 0 "$W/$m" || continue
  echo "== $m: our logits ($(( $(date +%s) - t0 )) s so far)"
  "$W/server" cuda-logits --model "$W/$m" --tokens "$W/tokens.txt" --out "$W/logits-$m.f32" \
    && python3 "$G/hf_compare.py" "$W/$m" "$W/tokens.txt" "$W/logits-$m.f32" "$W/results/hf_$m.json"
  echo "== $m: our speed"
  timeout 240 "$W/server" cuda-bench --model "$W/$m" --batch ${BATCHES:-1,32,128} | tee "$W/results/bench_$m.json"
  rm -rf "$W/$m" "$W/logits-$m.f32"
done
if [ "${PEER:-1}" = 1 ]; then
  echo "== llama.cpp"
  OUT=$OUT bash "$G/peer/run.sh" bench
fi
python3 "$G/summarize.py" "$W/results" "$OUT" | tee "$OUT/summary.json"
