#!/bin/bash
# The CUDA targets' GPU check, in one device call: for each model (1B, 8B) write dummy
# weights, compare our teacher-forced logits with Hugging Face transformers', time our
# prefill and decode at batch 1/32/128 (with the bandwidth floor), run llama.cpp's
# `run.sh bench` for the same shapes, and compare serving through `cargo vibeserve bench`
# (the target's token-id workload at its concurrency, 32) against `llama-server -ngl 99
# -fa on --parallel 32`; summarise everything as JSON with the ratios.
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/gpu_check.sh DIR
# DIR holds: server.xz and materialize.xz (the stripped CUDA server and its dummy-model
# generator, xz-compressed; server-1b.xz / server-8b.xz, when present, serve that model
# instead: a target's server sizes its KV cache for its own model, so the 1B target's
# cannot hold the 8B's), cargo-vibeserve.xz (this tool, for the serving benchmark),
# config-1b.json and config-8b.json (the targets' config.json), targets/ (copies of
# targets/llama-3.2-1b-h100 and targets/llama-3.1-8b-h100), these scripts, and peer/ (a
# copy of ../shared/peers/llamacpp-cuda).
# Env: MODELS ("1b 8b"), PEER (1: llama.cpp's benchmarks), SERVE (1: the serving
# comparison), CHECK_GPU (0: accuracy, our speed, llama.cpp's speed), SERVE_GPU (the
# serving comparison's GPU; when it differs from CHECK_GPU both run side by side, each on
# its own GPU, and nothing else shares either), SERVE_REPS (1), SERVE_REQS (all the
# workload's requests), CHECK (1; 0: the serving comparison alone).
# Results: $OUT/summary.json, $OUT/check.log, and llama.cpp's own files in $OUT.
set -u
G=$(cd "${1:?usage: gpu_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}
W=${VS_WORK:-/tmp/vs}
CG=${CHECK_GPU:-0}
SG=${SERVE_GPU:-$CG}
mkdir -p "$OUT" "$W/results"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 NO_COLOR=1
exec > >(tee -a "$OUT/check.log") 2>&1

# cuBLAS 13 for cudarc's run-time loading: the CUDA install's or the Python wheels'.
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
for b in server server-1b server-8b materialize cargo-vibeserve; do
  [ -f "$G/$b.xz" ] || continue
  xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 | tee "$W/results/device.txt"
server_for() { # model: its own server if DIR has one, else the shared one
  if [ -x "$W/server-$1" ]; then echo "$W/server-$1"; else echo "$W/server"; fi
}
date -u +%FT%TZ > "$W/results/date.txt"

check() {
  python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(128000)) for _ in range(${CHECK_TOKENS:-384})))" > "$W/tokens.txt"
  for m in ${MODELS:-1b 8b}; do
    local server; server=$(server_for "$m")
    echo "== $m: dummy weights (GPU $CG)"
    CUDA_VISIBLE_DEVICES=$CG python3 "$G/make_dummy.py" "$G/config-$m.json" 0 "$W/$m" || continue
    echo "== $m: our logits"
    # Also one token a step (the decode graphs, the GEMV at one token) and 4 a step (the
    # GEMV at 4 tokens, no graph): the default's prompt chunks go through cuBLAS.
    for c in 1 4; do
      CUDA_VISIBLE_DEVICES=$CG "$server" cuda-logits --model "$W/$m" --tokens "$W/tokens.txt" --chunk $c --out "$W/logits-$m-chunk$c.f32"
    done
    CUDA_VISIBLE_DEVICES=$CG "$server" cuda-logits --model "$W/$m" --tokens "$W/tokens.txt" --out "$W/logits-$m.f32" \
      && CUDA_VISIBLE_DEVICES=$CG python3 "$G/hf_compare.py" "$W/$m" "$W/tokens.txt" "$W/logits-$m.f32" "$W/results/hf_$m.json" \
        "decode_vs_hf_f32=$W/logits-$m-chunk1.f32" "chunk4_vs_hf_f32=$W/logits-$m-chunk4.f32"
    echo "== $m: our speed"
    CUDA_VISIBLE_DEVICES=$CG timeout 240 "$server" cuda-bench --model "$W/$m" --batch ${BATCHES:-1,32,128} | tee "$W/results/bench_$m.json"
    rm -rf "$W/$m" "$W/logits-$m"*.f32
  done
  if [ "${PEER:-1}" = 1 ]; then
    echo "== llama.cpp (GPU $CG)"
    CUDA_VISIBLE_DEVICES=$CG OUT=$OUT PEER_WORK=$W/peer-bench bash "$G/peer/run.sh" bench
  fi
}

# Our server and llama-server in turn on SERVE_GPU, each measured by `cargo vibeserve
# bench --url` on the target's workload (token-id prompts of 128-1024, 64-512 outputs with
# ignore_eos, greedy, 32 clients). `--url`, not TARGET: a target needs `cargo metadata`,
# and this machine has no Rust.
serve_one() { # model target port
  local m=$1 t=$G/targets/$2 name=${2//./-} port=$3 d=$W/serve-$1 pw=$W/peer-serve
  local bench=("$W/cargo-vibeserve" vibeserve bench --url "http://127.0.0.1:$port" --workload "$t/workload.jsonl"
    --concurrency 32 --no-progress --repetitions "${SERVE_REPS:-1}")
  [ -n "${SERVE_REQS:-}" ] && bench+=(--num-requests "$SERVE_REQS")
  echo "== $m serving: ours (GPU $SG)"
  CUDA_VISIBLE_DEVICES=$SG python3 "$G/make_dummy.py" "$G/config-$m.json" 0 "$d" > /dev/null 2>&1 \
    && cp "$W/tok/tokenizer.json" "$d/" || return
  CUDA_VISIBLE_DEVICES=$SG "$(server_for "$m")" serve --model "$d" --port "$port" --served-model-name "$name" > "$W/ours-$m.log" 2>&1 &
  local sp=$!
  up "$port" && timeout 300 "${bench[@]}" --json "$W/results/serve_ours_$m.json" 2>&1 | grep -v '^\s*$' | tail -25
  kill "$sp"; wait "$sp" 2>/dev/null
  rm -rf "$d"
  echo "== $m serving: llama-server (GPU $SG)"
  PEER_WORK=$pw bash "$G/peer/run.sh" gguf "$m" "$pw/$m.gguf" || return
  # Its own copy of the peer and GGUFs: the benchmarks above may be writing theirs.
  # run.sh's `serve` gives a slot 1024 tokens; the workload needs up to 1536: 2048 a slot.
  (CUDA_VISIBLE_DEVICES=$SG setsid "$pw/llamacpp-cuda-b11434/llama-server" -m "$pw/$m.gguf" -ngl 99 -fa on \
    --parallel 32 -c $((32 * 2048)) --port "$port" > "$W/llama-server-$m.log" 2>&1 & echo $! > "$W/llama-server-$m.pid")
  up "$port" && timeout 300 "${bench[@]}" --json "$W/results/serve_peer_$m.json" 2>&1 | grep -v '^\s*$' | tail -25
  kill "$(cat "$W/llama-server-$m.pid")" 2>/dev/null
  sleep 3
}

up() { # port: waits for /health
  for _ in $(seq 180); do curl -sf "localhost:$1/health" > /dev/null && return 0; sleep 1; done
  echo "no server on port $1"; return 1
}

serve() {
  [ -x "$W/cargo-vibeserve" ] || { echo "no cargo-vibeserve.xz: no serving comparison"; return; }
  # The tool's generator writes the tokenizer (the weights come from make_dummy.py).
  "$W/materialize" --config "$G/config-1b.json" --seed 0 --out "$W/tok" --threads 16 > /dev/null || return
  for m in ${MODELS:-1b 8b}; do
    case $m in 1b) serve_one 1b llama-3.2-1b-h100 8101 ;; 8b) serve_one 8b llama-3.1-8b-h100 8102 ;; esac
  done
}

t0=$(date +%s)
if [ "${CHECK:-1}" != 1 ]; then
  serve
elif [ "${SERVE:-1}" != 1 ]; then
  check
elif [ "$SG" != "$CG" ]; then
  serve > "$W/serve.log" 2>&1 &
  SP=$!
  check
  wait "$SP"
  cat "$W/serve.log"
else
  check
  serve
fi
echo "== done in $(( $(date +%s) - t0 )) s"
python3 "$G/summarize.py" "$W/results" "$OUT" | tee "$OUT/summary.json"
