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
# DIR holds server.xz and materialize.xz (a CUDA target's server and its dummy-model
# generator, stripped and xz-compressed). Env: TARGETS ("llama-3.2-1b-h100
# llama-3.1-8b-h100"), END (no target is started after this many seconds, 300).
# Results: $OUT/judge.log.
set -u
G=$(cd "${1:?usage: judge_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs-judge}; mkdir -p "$W" "$OUT"
exec > >(tee -a "$OUT/judge.log") 2>&1
T0=$(date +%s); now() { echo $(( $(date +%s) - T0 )); }
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
for b in server materialize; do xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1; done
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
  M=/dev/shm/vs-judge-$t
  echo "== $t: weights, then the reference ($(now) s)"
  "$W/materialize" --config "targets/$t/config.json" --seed 0 --out "$M" > /dev/null || exit 1
  accuracy "$t" "$M" --reference-only || { echo "$t: no reference"; rm -rf "$M"; continue; }
  "$W/server" serve --model "$M" --port 8200 > "$W/$t.log" 2>&1 &
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
  kill "$SP"; wait "$SP" 2>/dev/null; rm -rf "$M"
done
