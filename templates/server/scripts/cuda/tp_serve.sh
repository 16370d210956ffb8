#!/bin/bash
# Serving comparison of the tensor-parallel 8B, in one device call: our HTTP server at
# TP = 2 (GPUs 0 and 1) and TP = 1 (GPU 0), and llama.cpp's llama-server split over GPUs 0
# and 1 (-sm tensor, then -sm layer), each sent the 8B target's workload (token-id
# completions, 128-1024 in, 64-512 out, ignore_eos) at 32 and then 128 concurrent requests
# by `cargo vibeserve bench --url` (streaming: output tok/s and TTFT percentiles).
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/tp_serve.sh DIR
# DIR holds, xz-compressed and stripped: server-tp2.xz and server-tp1.xz (the generated
# servers of targets/llama-3.1-8b-h200x2 and llama-3.1-8b-h100), materialize.xz,
# cargo-vibeserve.xz; config-8b.json, workload.jsonl (targets/llama-3.1-8b-h200x2's) and
# peer/ (a copy of ../shared/peers/llamacpp-cuda). Env: CONC (32,128), BENCH_LIMIT (90 s
# per server), END (420 s: no server is started after it), WORKLOAD (DIR/workload.jsonl;
# the target's own file in the checkout also serves, to keep the carry under its limit),
# OURS (1; 0 runs llama.cpp alone), PEERS (llama.cpp's split modes, "tensor layer").
# Results: $OUT/serve_*.json (the bench's JSON), the servers' and benches' logs (their
# last 200 kB) and a printed table.
set -u
G=$(cd "${1:?usage: tp_serve.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs}; R=$W/serve
mkdir -p "$OUT" "$R" "$W/lib"
export PYTHONUNBUFFERED=1
# NVLink multicast off for every program here: it can take a shared host's GPUs out of
# service. The server sets NCCL's for itself too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec > >(tee -a "$OUT/tp_serve.log") 2>&1
CONC=${CONC:-32,128}; T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "== [$(now) s] $*"; }

CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
[ -f "$NCCL" ] || NCCL=$(find / -name 'libnccl.so.2*' -not -path '/proc/*' 2>/dev/null | head -1)
ln -sf "$NCCL" "$W/lib/libnccl.so"
export LD_LIBRARY_PATH=$W/lib:$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
BINARIES="cargo-vibeserve"
[ "${OURS:-1}" = 1 ] && BINARIES="server-tp2 server-tp1 materialize $BINARIES"
for b in $BINARIES; do
  xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1
done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1

# llama.cpp's GGUF of the 8B shape is written on the CPU while our servers run.
P=${PEER_WORK:-/tmp/llamacpp-peer}; B=$P/llamacpp-cuda-b11434
(bash "$G/peer/run.sh" gguf 8b "$P/8b.gguf" > "$W/gguf.log" 2>&1) &
GGUF=$!
M=/dev/shm/vs-models; mkdir -p "$M"
if [ "${OURS:-1}" = 1 ]; then
  stamp "materialize 8B"
  "$W/materialize" --config "$G/config-8b.json" --seed 0 --out "$M/8b" > /dev/null || exit 1
fi
# Every server gets the same bodies; `model` is left to the bench (each server's own).
python3 -c "import json,sys; [print(json.dumps({k: v for k, v in json.loads(l).items() if k != 'model'})) for l in open(sys.argv[1])]" \
  "${WORKLOAD:-$G/workload.jsonl}" > "$W/workload.jsonl"

up() { # port pid
  for _ in $(seq 180); do
    curl -sf "localhost:$1/health" > /dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}
measure() { # name port pid
  if up "$2" "$3"; then
    stamp "bench $1 (concurrency $CONC)"
    timeout "${BENCH_LIMIT:-90}" "$W/cargo-vibeserve" vibeserve bench --url "http://127.0.0.1:$2" \
      --workload "$W/workload.jsonl" --concurrency "$CONC" --repetitions 1 --warmup 4 \
      --no-progress --json "$OUT/serve_$1.json" > "$R/$1.log" 2>&1
    echo "rc=$?"; tail -12 "$R/$1.log"
  else
    echo "$1 did not come up"
  fi
  kill "$3"; wait "$3" 2>/dev/null
}
ours() { # name binary gpus port
  [ "$(now)" -lt "${END:-420}" ] || { echo "skipping $1: past ${END:-420} s"; return; }
  stamp "our server $1 on GPUs $3"
  CUDA_VISIBLE_DEVICES=$3 "$W/$2" serve --model "$M/8b" --port "$4" > "$R/$1.server.log" 2>&1 &
  measure "$1" "$4" $!
  tail -3 "$R/$1.server.log"
}
if [ "${OURS:-1}" = 1 ]; then
  ours tp2 server-tp2 0,1 8101
  ours tp1 server-tp1 0 8102
fi
rm -rf "$M/8b"
stamp "llama.cpp: waiting for the 8B GGUF"
wait "$GGUF"; tail -2 "$W/gguf.log"
peer() { # split-mode port
  [ "$(now)" -lt "${END:-420}" ] || { echo "skipping llama.cpp -sm $1: past ${END:-420} s"; return; }
  stamp "llama-server -sm $1 on GPUs 0,1"
  # run.sh serve's flags (-ngl 99 -fa on), split over two GPUs with peer access on
  # (GGML_CUDA_P2P), and 2048 tokens a slot: the workload's longest request is 1536.
  local n=${CONC##*,}
  CUDA_VISIBLE_DEVICES=0,1 GGML_CUDA_P2P=1 "$B/llama-server" -m "$P/8b.gguf" -ngl 99 -fa on \
    -sm "$1" --parallel "$n" -c $((n * 2048)) --port "$2" > "$R/llama_$1.server.log" 2>&1 &
  measure "llamacpp_sm_$1" "$2" $!
  tail -3 "$R/llama_$1.server.log"
}
# By tensor: this build's tensor parallelism (its -sm row is refused: no split buffers).
port=8103
for sm in ${PEERS:-tensor layer}; do
  peer "$sm" $port
  port=$((port + 1))
done
stamp "summary"
for f in "$R"/*.log; do tail -c 200000 "$f" > "$OUT/$(basename "$f")"; done
python3 - "$OUT" <<'PY'
import glob, json, os, sys
def runs(d, conc=None):
    """The bench JSON's per-run results with the concurrency of the nearest level."""
    if isinstance(d, dict):
        conc = d.get("max_concurrency", d.get("concurrency", conc))
        if "output_throughput" in d:
            yield conc, d
        for v in d.values():
            yield from runs(v, conc)
    elif isinstance(d, list):
        for v in d:
            yield from runs(v, conc)
for f in sorted(glob.glob(os.path.join(sys.argv[1], "serve_*.json"))):
    name = os.path.basename(f)[6:-5]
    # Each run's own record (it has a base_url), not the per-level medians beside it.
    for conc, r in (x for x in runs(json.load(open(f))) if "base_url" in x[1]):
        print(f"{name:<20} concurrency {conc}: output {r['output_throughput']:.0f} tok/s, "
              f"p99 TTFT {r.get('p99_ttft_ms') or float('nan'):.0f} ms, "
              f"completed {r.get('completed')}")
PY
