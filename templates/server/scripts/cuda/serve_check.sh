#!/bin/bash
# Serving comparison on the GPU machine, one device call: our `server serve` and
# llama.cpp's `llama-server` (run.sh serve: -ngl 99 -fa on --parallel N) on the 8B shape,
# each sent the same concurrent token-id completions by serve_check.py.
# Usage: bash DIR/serve_check.sh DIR   (DIR as for gpu_check.sh, plus materialize.xz)
# Env: CONC (32), REQS (96), PLEN (128), OLEN (128), MODEL (8b). Results: $OUT/serve.json
set -u
G=$(cd "${1:?usage: serve_check.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs}; mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/serve.log") 2>&1
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
for b in server materialize; do xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1; done
M=${MODEL:-8b}; C=${CONC:-32}; N=${REQS:-96}; P=${PLEN:-128}; O=${OLEN:-128}
t0=$(date +%s)
# The tool's generator writes the tokenizer; weights from HF's initialisation (faster here).
"$W/materialize" --config "$G/config-1b.json" --seed 0 --out "$W/tok" --threads 16 > /dev/null || exit 1
echo "materialize 1b: $(( $(date +%s) - t0 )) s"
python3 "$G/make_dummy.py" "$G/config-$M.json" 0 "$W/$M" > /dev/null 2>&1 && cp "$W/tok/tokenizer.json" "$W/$M/"
run() { # name port
  for _ in $(seq 120); do curl -sf "localhost:$2/health" > /dev/null && break; sleep 1; done
  python3 "$G/serve_check.py" "http://localhost:$2" "$C" "$N" "$P" "$O" | sed "s/^/{\"server\": \"$1\", \"r\": /; s/$/}/" | tee -a "$W/serve.jsonl"
}
"$W/server" serve --model "$W/$M" --port 8101 > "$W/ours.log" 2>&1 &
SP=$!
run ours 8101; tail -3 "$W/ours.log"; kill "$SP"; wait "$SP"
OUT=$OUT bash "$G/peer/run.sh" serve "$M" 8102 "$C" && run llama-server 8102
python3 -c "import json,sys; r=[json.loads(l) for l in open('$W/serve.jsonl')]; print(json.dumps(r, indent=1))" | tee "$OUT/serve.json"
