#!/bin/bash
# The CUDA targets' accuracy command, exactly as each target's Serve.toml gives it, run
# against our server on the GPU machine: what the Judge runs in `cargo vibeserve
# evaluate`, without the loop. For each target: materialise its dummy weights (seed 0),
# compute and keep the transformers reference first (the command with --reference-only:
# an 8B in float32 does not fit one 80 GB card beside our server), start `server serve`,
# then run the command; its exit code is the verdict.
#
# Usage (on the GPU machine, from the repository root, which holds targets/):
#   bash DIR/judge_check.sh DIR
# DIR holds materialize.xz (the dummy-model generator) and, for each target T, the
# server T's round gives (server-T.xz), or one server.xz for every target without one
# (the plan's tensor parallelism decides how many GPUs it takes); all stripped and
# xz-compressed. Env: TARGETS ("llama-3.2-1b-h100 llama-3.1-8b-h100"), END (no target is
# started after this many seconds, 300). Needs libnccl.so.2 (nvidia-nccl-cu13) for a
# tensor-parallel target.
# Results: $OUT/judge.log.
set -u
G=$(cd "${1:?usage: judge_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs-judge}; mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/judge.log") 2>&1
T0=$(date +%s); now() { echo $(( $(date +%s) - T0 )); }
# NVLink multicast off (a tensor-parallel server sets NCCL's for itself too).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
# The NCCL wheel ships libnccl.so.2 only; cudarc asks for libnccl.so: link it.
NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
if [ -f "$NCCL" ]; then
  mkdir -p "$W/lib" && ln -sf "$NCCL" "$W/lib/libnccl.so" && export LD_LIBRARY_PATH=$W/lib:$LD_LIBRARY_PATH
fi
for b in "$G"/*.xz; do n=$(basename "$b" .xz); xz -dc "$b" > "$W/$n" && chmod +x "$W/$n" || exit 1; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u

# Runs target $1's accuracy command with {url} and {model} filled in, plus any extra args.
accuracy() {
  (cd "targets/$1" && python3 - "$2" "${@:3}" <<'PY'
import subprocess, sys, tomllib
cmd = tomllib.load(open("Serve.toml", "rb"))["accuracy"]["command"]
cmd = [c.replace("{url}", "http://127.0.0.1:8200").replace("{model}", sys.argv[1]) for c in cmd]
cmd += sys.argv[2:]
print(" ".join(cmd), flush=True)
sys.exit(subprocess.call(cmd))
PY
  )
}

for t in ${TARGETS:-llama-3.2-1b-h100 llama-3.1-8b-h100}; do
  [ "$(now)" -lt "${END:-300}" ] || { echo "skipping $t: past ${END:-300} s"; break; }
  # Targets of the same config share their weights (materialised once, seed 0).
  M=/dev/shm/vs-judge-$(md5sum < "targets/$t/config.json" | cut -c1-12)
  echo "== $t: weights, then the reference ($(now) s)"
  [ -f "$M/config.json" ] || "$W/materialize" --config "targets/$t/config.json" --seed 0 --out "$M" > /dev/null || exit 1
  accuracy "$t" "$M" --reference-only || { echo "$t: no reference"; continue; }
  server=$W/server-$t; [ -x "$server" ] || server=$W/server
  "$server" serve --model "$M" --port 8200 > "$W/$t.log" 2>&1 &
  SP=$!
  up=0
  for _ in $(seq 180); do
    curl -sf localhost:8200/health > /dev/null && { up=1; break; }
    kill -0 "$SP" 2>/dev/null || break
    sleep 1
  done
  if [ "$up" = 1 ]; then
    echo "== $t: the accuracy command ($(now) s)"
    accuracy "$t" "$M"
    echo "$t: exit $? ($(now) s)"
  else
    echo "$t: our server did not come up"; tail -5 "$W/$t.log"
  fi
  kill "$SP"; wait "$SP" 2>/dev/null
done
rm -rf /dev/shm/vs-judge-*
