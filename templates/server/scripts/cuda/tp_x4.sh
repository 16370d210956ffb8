#!/bin/bash
# Tensor parallelism on a 4-GPU machine, in one device call: the dummy 70B shape's
# weights written by the generated crate's `materialize` (timed), its decode tok/s at
# TP = 4 against the aggregate bandwidth floor (each rank reads its quarter of the
# weights at the measured copy bandwidth of one GPU); and, on the same host, the 8B
# shape at TP = 1, 2 (CUDA_VISIBLE_DEVICES=0,1) and 4, NCCL and one-shot all-reduce;
# and the 70B target's accuracy check against Hugging Face transformers (bf16 over the
# four GPUs), its reference computed before our server takes the GPUs.
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/tp_x4.sh DIR
# DIR holds: server.xz and materialize.xz (stripped, xz-compressed, from the generated
# crate of targets/llama-3.1-70b-h100x4), config-8b.json and config-70b.json (the
# targets' config.json); for the accuracy stage the 70B target's accuracy script and
# prompts (targets/llama-3.2-1b-h100/accuracy/hf_compare.py as hf_accuracy.py and
# targets/llama-3.1-70b-h100x4/accuracy/prompts.jsonl as prompts-70b.jsonl); for the
# proxy70 stage (the 70B's layer shapes in PROXY_LAYERS (4) layers: our logits at
# PROXY_RUNS against transformers float32 on GPU PROXY_HF_GPU) scripts/cuda/hf_compare.py.
# Env: STAGES ("eight seventy accuracy70"; "proxy70" adds the stage above, "noise70"
# transformers' bf16 against its float32 on the 70B, with "seventy"); ACC70 (the accuracy
# stage's reference setting, "--shard-gib 38" as the target's command); LOGIT_RUNS
# and BENCH_RUNS (the 8B runs, each name:tp:all-reduce:GPUs; the defaults compare
# one-shot pull and push with TP = 1, and the two one-shot kernels' logits, which must
# be equal); AR70 (the 70B's all-reduces,
# "one-shot-push"); BATCHES (1,32,128) and BATCHES70 (the same); GEN (64), GEN70 (32);
# MAT_THREADS (48: the rest of the 64 cores keep the 8B timings clean); MAT_DEADLINE
# (420 s); END (575 s: every run stops by then).
# Results: $OUT/tp_x4.json (every cuda-bench line, the logits agreement and the
# materialize times) and a printed table.
set -u
G=$(cd "${1:?usage: tp_x4.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs}; R=$W/results
mkdir -p "$OUT" "$R" "$W/lib"
export PYTHONUNBUFFERED=1
# NVLink multicast off for every program here: it can take a shared host's GPUs out of
# service. The server sets NCCL's for itself too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec > >(tee -a "$OUT/tp_x4.log") 2>&1
STAGES=${STAGES:-eight seventy accuracy70}; GEN=${GEN:-64}; GEN70=${GEN70:-32}; BATCHES=${BATCHES:-1,32,128}
has() { [[ " $STAGES " == *" $1 "* ]]; }
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "== [$(now) s] $*"; }

CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
[ -f "$NCCL" ] || NCCL=$(find / -name 'libnccl.so.2*' -not -path '/proc/*' 2>/dev/null | head -1)
echo "cublas: $CUBLAS"; echo "nccl: $NCCL"
# cudarc asks for libnccl.so; the wheel ships libnccl.so.2 only.
ln -sf "$NCCL" "$W/lib/libnccl.so"
export LD_LIBRARY_PATH=$W/lib:$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
for b in server materialize; do xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$R/device.txt"
nvidia-smi topo -m | head -6
nproc; df -h /dev/shm "$W" | tail -2

# The weights go to /dev/shm when it can hold the 70B (141 GB), else next to $W.
M=$W/models
[ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt 160 ] && M=/dev/shm/vs-models
mkdir -p "$M"; echo "models in $M"
materialize() { # name config threads
  local t; t=$(date +%s.%N)
  "$W/materialize" --config "$2" --seed 0 --out "$M/$1" --threads "$3" > /dev/null || return 1
  python3 -c "import json,sys,time,os; d=sys.argv[2]; print(json.dumps({'materialize': sys.argv[1], 'seconds': round(time.time() - float(sys.argv[3]), 1), 'bytes': sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))}))" \
    "$1" "$M/$1" "$t" | tee -a "$R/materialize.jsonl"
}
bench() { # name model timeout args...
  local name=$1 model=$2 limit=$3; shift 3
  stamp "cuda-bench $name"
  timeout "$limit" "$W/server" cuda-bench --model "$M/$model" --prompt 128 "$@" > "$R/bench_$name.json" 2> "$R/bench_$name.err"
  echo "rc=$? $(tail -c 600 "$R/bench_$name.json") $(tail -2 "$R/bench_$name.err")"
}

# The 70B target's [accuracy] command on this host: transformers in bf16 over the four
# GPUs and our server do not fit them together (35 GB of weights and the KV cache per GPU
# beside 38 GiB of the reference), so the reference is computed first and kept in the
# model folder, then the server starts and the check reads it from there.
# ACC70: the reference's setting, the target's ("--shard-gib 38", bf16) unless set.
ACC70=${ACC70:---shard-gib 38}
accuracy70() {
  local left=$(( ${END:-575} - $(now) )) port=8170 pid
  [ "$left" -gt 200 ] || { echo "accuracy 70B: skipped, $left s left" | tee "$R/accuracy70.txt"; return; }
  stamp "accuracy 70B: transformers reference ($left s left)"
  timeout $(( left - 90 )) python3 "$G/hf_accuracy.py" --reference-only --model "$M/70b" \
    --prompts "$G/prompts-70b.jsonl" $ACC70 > "$R/reference70.log" 2>&1
  local rc=$?
  tail -3 "$R/reference70.log"
  [ $rc = 0 ] || { echo "accuracy 70B: no reference (exit $rc)" | tee "$R/accuracy70.txt"; return; }
  stamp "accuracy 70B: our server"
  "$W/server" serve --model "$M/70b" --port $port > "$R/serve70.log" 2>&1 &
  pid=$!
  while ! curl -sf localhost:$port/health > /dev/null; do
    kill -0 $pid 2>/dev/null && [ "$(now)" -lt "${END:-575}" ] || { tail -3 "$R/serve70.log"; kill $pid 2>/dev/null; return; }
    sleep 1
  done
  timeout $(( ${END:-575} - $(now) )) python3 "$G/hf_accuracy.py" --url "http://127.0.0.1:$port" --model "$M/70b" \
    --prompts "$G/prompts-70b.jsonl" --min-top1 0.6 --max-logprob-err 0.29 $ACC70 | tee "$R/accuracy70.txt"
  echo "accuracy 70B exit ${PIPESTATUS[0]}" | tee -a "$R/accuracy70.txt"
  kill $pid; wait $pid 2>/dev/null
}

# The reference's own noise on the 70B: transformers bf16 (the accuracy command's
# setting) against transformers float32 (282 GB over the four GPUs, nothing else on
# them), the same figures as the accuracy check prints.
noise70() {
  local setting name f
  for setting in "bf16:--shard-gib 38" "f32:--shard-gib 76 --shard-dtype float32"; do
    name=${setting%%:*}
    stamp "noise 70B: transformers $name reference"
    rm -f "$M/70b"/.hf_reference-*.json
    timeout $(( ${END:-575} - $(now) )) python3 "$G/hf_accuracy.py" --reference-only --model "$M/70b" \
      --prompts "$G/prompts-70b.jsonl" ${setting#*:} > "$R/noise70-$name.log" 2>&1 || return
    f=$(ls "$M/70b"/.hf_reference-*.json | head -1); mv "$f" "$W/ref70-$name.json"
  done
  python3 - "$W/ref70-bf16.json" "$W/ref70-f32.json" <<'PY' | tee "$R/noise70.json"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
agree = total = 0; err = 0.0
for x, y in zip(a, b):
    agree += sum(p == q for p, q in zip(x["top1"], y["top1"]))
    err += sum(abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"]))
    total += len(y["top1"])
print(json.dumps({"positions": total, "top1": agree / total, "mean_abs_logprob_err": err / total}))
PY
}

stamp "materialize 8B"
has eight && { materialize 8b "$G/config-8b.json" "$(nproc)" || exit 1; }
if has seventy; then
  stamp "materialize 70B (background)"
  (materialize 70b "$G/config-70b.json" "${MAT_THREADS:-48}" > "$W/mat70.log" 2>&1) &
  MAT=$!
fi
python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(128000)) for _ in range(${CHECK_TOKENS:-128})))" > "$W/tokens.txt"
if has proxy70; then
  # The 70B's shapes (d 8192, 64 heads / 8 KV heads: groups of 8, FFN 28672) in a few
  # layers, small enough for transformers in float32 on one GPU: what the 70B's layers
  # compute, checked against the reference without 80 layers of bf16 rounding on top.
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['num_hidden_layers']=int(sys.argv[3]); json.dump(c, open(sys.argv[2], 'w'), indent=1)" \
    "$G/config-70b.json" "$W/config-70b-proxy.json" "${PROXY_LAYERS:-4}"
  stamp "materialize the 70B's shape in ${PROXY_LAYERS:-4} layers"
  materialize 70b_proxy "$W/config-70b-proxy.json" "${PROXY_THREADS:-16}"
  extra=()
  for run in ${PROXY_RUNS:-tp1:1:nccl:0 tp4:4:one-shot-push:0,1,2,3}; do
    IFS=: read -r name tp ar gpus <<< "$run"
    stamp "logits 70B shape $name"
    CUDA_VISIBLE_DEVICES=$gpus timeout 120 "$W/server" cuda-logits --model "$M/70b_proxy" --tokens "$W/tokens.txt" \
      --out "$W/proxy-$name.f32" --tensor-parallel "$tp" --all-reduce "$ar" --chunk 1 2>&1 | tail -1
    [ "$name" = tp1 ] || extra+=("$name=$W/proxy-$name.f32")
  done
  stamp "transformers on the 70B shape"
  CUDA_VISIBLE_DEVICES=${PROXY_HF_GPU:-0} python3 "$G/hf_compare.py" "$M/70b_proxy" "$W/tokens.txt" "$W/proxy-tp1.f32" \
    "$R/hf_proxy70.json" "${extra[@]}" 2>&1 | grep -v Warning | tail -3
  rm -rf "$M/70b_proxy" "$W"/proxy-*.f32
fi
if has eight; then
  # Teacher-forced logits one token a step (the decode graphs and their small
  # all-reduces): NCCL's and the one-shot sums must agree with each other and with TP=1.
  for run in ${LOGIT_RUNS:-tp1:1:nccl:0 tp2_push:2:one-shot-push:0,1 tp4_push:4:one-shot-push:0,1,2,3 tp4_oneshot:4:one-shot:0,1,2,3}; do
    IFS=: read -r name tp ar gpus <<< "$run"
    stamp "logits 8B $name"
    CUDA_VISIBLE_DEVICES=$gpus timeout 120 "$W/server" cuda-logits --model "$M/8b" --tokens "$W/tokens.txt" \
      --out "$W/logits-$name.f32" --tensor-parallel "$tp" --all-reduce "$ar" --chunk 1 2>&1 | tail -2
  done
  python3 - "$W" <<'PY' | tee "$R/logits.json"
import json, os, sys
import numpy as np
w = sys.argv[1]
load = lambda n: np.fromfile(os.path.join(w, f"logits-{n}.f32"), dtype=np.float32).reshape(-1, 128256)
ref = load("tp1")
out = {}
# Both one-shot kernels add the ranks' values in rank order: their logits must be equal.
for a, b in (("tp2_push", "tp1"), ("tp4_push", "tp1"), ("tp4_oneshot", "tp1"), ("tp4_push", "tp4_oneshot")):
    try:
        x, y = load(a), load(b)
    except (OSError, ValueError) as e:
        out[f"{a}_vs_{b}"] = str(e); continue
    out[f"{a}_vs_{b}"] = {"rel": float(np.linalg.norm(x - y) / np.linalg.norm(y)),
                         "top1": float((x.argmax(1) == y.argmax(1)).mean()), "finite": bool(np.isfinite(x).all())}
print(json.dumps(out))
PY
  G8="--batch $BATCHES --gen-tokens $GEN"
  # name:tp:all-reduce:GPUs
  for run in ${BENCH_RUNS:-tp1:1:nccl:0 tp2_oneshot:2:one-shot:0,1 tp2_push:2:one-shot-push:0,1 tp4_push:4:one-shot-push:0,1,2,3}; do
    IFS=: read -r name tp ar gpus <<< "$run"
    CUDA_VISIBLE_DEVICES=$gpus bench "8b_$name" 8b 150 $G8 --tensor-parallel "$tp" --all-reduce "$ar"
  done
  rm -rf "$M/8b"
fi
if has seventy; then
  stamp "waiting for the 70B weights"
  # A call ends at 600 s: past MAT_DEADLINE the writer is stopped and its rate reported.
  while kill -0 "$MAT" 2>/dev/null && [ "$(now)" -lt "${MAT_DEADLINE:-420}" ]; do sleep 5; done
  if kill -0 "$MAT" 2>/dev/null; then
    echo "materialize 70B unfinished at $(now) s: $(du -sb "$M" | cut -f1) bytes written"; kill "$MAT"
  fi
  cat "$W/mat70.log"; free -g | head -2
  if [ -f "$M/70b/model.safetensors" ]; then
    # Each run stops by END s, so the summary still comes back within the call.
    for ar in ${AR70:-one-shot-push}; do
      bench "70b_tp4_$ar" 70b $(( ${END:-575} - $(now) )) --batch "${BATCHES70:-$BATCHES}" --gen-tokens "$GEN70" --tensor-parallel 4 --all-reduce "$ar"
    done
    has accuracy70 && accuracy70
    has noise70 && noise70
  fi
  rm -rf "$M/70b"
fi
stamp "summary"
python3 - "$R" <<'PY' > "$OUT/tp_x4.json"
import json, os, sys
res = sys.argv[1]
out = {"device": open(os.path.join(res, "device.txt")).read().strip().splitlines(), "runs": {}}
lg = os.path.join(res, "logits.json")
out["logits"] = json.load(open(lg)) if os.path.exists(lg) else None
mat = os.path.join(res, "materialize.jsonl")
out["materialize"] = [json.loads(l) for l in open(mat)] if os.path.exists(mat) else []
px = os.path.join(res, "hf_proxy70.json")
out["proxy70_vs_hf"] = json.load(open(px)) if os.path.exists(px) else None
nz = os.path.join(res, "noise70.json")
out["hf_bf16_vs_hf_f32_70b"] = json.load(open(nz)) if os.path.exists(nz) else None
acc = os.path.join(res, "accuracy70.txt")
out["accuracy70"] = open(acc).read().strip().splitlines() if os.path.exists(acc) else None
for f in sorted(os.listdir(res)):
    if f.startswith("bench_") and f.endswith(".json"):
        try:
            out["runs"][f[6:-5]] = json.loads(open(os.path.join(res, f)).read())
        except ValueError:
            out["runs"][f[6:-5]] = None
print(json.dumps(out))
speed = {k: {b["batch"]: b["decode_tok_s"] for b in v["batches"]} for k, v in out["runs"].items() if v}
print("decode tok/s        " + "".join(f"{'b' + str(b):>10}" for b in (1, 32, 128)), file=sys.stderr)
for k, v in speed.items():
    r = out["runs"][k]
    print(f"{k:<20}" + "".join(f"{v.get(b, 0):>10.1f}" for b in (1, 32, 128))
          + f"   floor {r['batch1_floor_tok_s']:.1f} ({(r['batch1_floor_ratio'] or 0):.0%}), copy {r['copy_bandwidth_gb_s']:.0f} GB/s", file=sys.stderr)
base = speed.get("8b_tp1", {})
for k in speed:
    if k.startswith("8b_") and k != "8b_tp1" and base:
        print(f"{k} / 8b_tp1: " + ", ".join(f"b{b} {speed[k][b] / base[b]:.2f}x" for b in speed[k] if b in base), file=sys.stderr)
PY
