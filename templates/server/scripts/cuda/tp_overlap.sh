#!/bin/bash
# Communication overlapped with compute (`cuda.overlap_comm`) on a 4-GPU machine, in one
# device call, on the dummy 8B shape: teacher-forced logits of one 128-token prefill step
# (split in two halves when overlap is on) at TP = 2 and 4, overlap on and off, against
# TP = 1 and against each other; then cuda-bench (batch 1, 32, 128: prefill and decode
# tok/s) for the same runs, whose greedy decode tokens are compared too (the decode
# graphs of a split step hold both streams).
#
# Usage (on the GPU machine, from the repository root):
#   bash DIR/tp_overlap.sh DIR
# DIR holds server.xz and materialize.xz (stripped, xz-compressed, from a CUDA target's
# generated crate) and config-8b.json. Env: BATCHES (1,32,128), PROMPT (128), GEN (64),
# RUNS (the bench runs, NAME:TP:ALL_REDUCE:OVERLAP), LOGITS (1: the logits stage; 0 skips
# it), END (540 s: no run starts after it).
# Results: $OUT/tp_overlap.json and a printed table.
set -u
G=$(cd "${1:?usage: tp_overlap.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs}; R=$W/results
mkdir -p "$OUT" "$R" "$W/lib"
export PYTHONUNBUFFERED=1
# NVLink multicast off for every program here: it can take a shared host's GPUs out of
# service. The server sets NCCL's for itself too.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec > >(tee -a "$OUT/tp_overlap.log") 2>&1
GEN=${GEN:-64}; BATCHES=${BATCHES:-1,32,128}; PROMPT=${PROMPT:-128}; END=${END:-540}
RUNS=${RUNS:-tp1:1:nccl:off tp2_off:2:nccl:off tp2_on:2:nccl:on tp2_oneshot_off:2:one-shot:off tp2_oneshot_on:2:one-shot:on tp4_off:4:nccl:off tp4_on:4:nccl:on}
T0=$(date +%s)
now() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "== [$(now) s] $*"; }
gpus() { seq -s, 0 $(( $1 - 1 )); }

CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
NCCL=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
[ -f "$NCCL" ] || NCCL=$(find / -name 'libnccl.so.2*' -not -path '/proc/*' 2>/dev/null | head -1)
echo "cublas: $CUBLAS"; echo "nccl: $NCCL"
# cudarc asks for libnccl.so; the wheel ships libnccl.so.2 only.
ln -sf "$NCCL" "$W/lib/libnccl.so"
export LD_LIBRARY_PATH=$W/lib:$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
for b in server materialize; do xz -dc "$G/$b.xz" > "$W/$b" && chmod +x "$W/$b" || exit 1; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$R/device.txt"

M=$W/models
[ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt 40 ] && M=/dev/shm/vs-models
mkdir -p "$M"
stamp "materialize 8B in $M"
"$W/materialize" --config "$G/config-8b.json" --seed 0 --out "$M/8b" --threads "$(nproc)" > /dev/null || exit 1

python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(128000)) for _ in range(${CHECK_TOKENS:-128})))" > "$W/tokens.txt"
[ "${LOGITS:-1}" = 1 ] && for run in tp1:1:nccl:off tp2_off:2:nccl:off tp2_on:2:nccl:on tp2_oneshot_on:2:one-shot:on tp4_off:4:nccl:off tp4_on:4:nccl:on; do
  IFS=: read -r name tp ar ov <<< "$run"
  stamp "logits $name"
  CUDA_VISIBLE_DEVICES=$(gpus "$tp") timeout 90 "$W/server" cuda-logits --model "$M/8b" --tokens "$W/tokens.txt" \
    --out "$W/logits-$name.f32" --tensor-parallel "$tp" --all-reduce "$ar" --overlap-comm "$ov" --chunk 128 2>&1 | tail -1
done
[ "${LOGITS:-1}" = 1 ] && python3 - "$W" <<'PY' | tee "$R/logits.json"
import json, os, sys
import numpy as np
w = sys.argv[1]
load = lambda n: np.fromfile(os.path.join(w, f"logits-{n}.f32"), dtype=np.float32).reshape(-1, 128256)
out = {}
for a, b in (("tp2_off", "tp1"), ("tp2_on", "tp1"), ("tp2_on", "tp2_off"), ("tp2_oneshot_on", "tp2_off"),
             ("tp4_off", "tp1"), ("tp4_on", "tp1"), ("tp4_on", "tp4_off")):
    try:
        x, y = load(a), load(b)
    except (OSError, ValueError) as e:
        out[f"{a}_vs_{b}"] = str(e); continue
    out[f"{a}_vs_{b}"] = {"rel": float(np.linalg.norm(x - y) / np.linalg.norm(y)), "max_abs": float(np.abs(x - y).max()),
                         "top1": float((x.argmax(1) == y.argmax(1)).mean()), "finite": bool(np.isfinite(x).all())}
print(json.dumps(out))
PY

for run in $RUNS; do
  IFS=: read -r name tp ar ov <<< "$run"
  left=$(( END - $(now) ))
  [ "$left" -lt 30 ] && { echo "skipping $name: $(now) s"; continue; }
  stamp "cuda-bench $name"
  CUDA_VISIBLE_DEVICES=$(gpus "$tp") timeout "$(( left < 120 ? left : 120 ))" "$W/server" cuda-bench --model "$M/8b" \
    --prompt "$PROMPT" --batch "$BATCHES" --gen-tokens "$GEN" --tensor-parallel "$tp" --all-reduce "$ar" --overlap-comm "$ov" \
    > "$R/bench_$name.json" 2> "$R/bench_$name.err"
  echo "rc=$? $(tail -2 "$R/bench_$name.err")"
done
rm -rf "$M/8b"

stamp "summary"
python3 - "$R" <<'PY' > "$OUT/tp_overlap.json"
import json, os, sys
res = sys.argv[1]
out = {"device": open(os.path.join(res, "device.txt")).read().strip().splitlines(), "runs": {}, "agreement": {}}
lg = os.path.join(res, "logits.json")
out["logits"] = json.load(open(lg)) if os.path.exists(lg) else None
runs = {}
for f in sorted(os.listdir(res)):
    if f.startswith("bench_") and f.endswith(".json"):
        try:
            runs[f[6:-5]] = json.loads(open(os.path.join(res, f)).read())
        except ValueError:
            runs[f[6:-5]] = None
# Greedy decode tokens: the first step's (one graph replay after the prefill) and every
# step's, overlap on against off and TP = N against 1.
for a, b in (("tp2_on", "tp2_off"), ("tp2_oneshot_on", "tp2_oneshot_off"), ("tp4_on", "tp4_off"), ("tp2_off", "tp1"), ("tp2_on", "tp1")):
    if runs.get(a) and runs.get(b):
        agree = {}
        for x, y in zip(runs[a]["batches"], runs[b]["batches"]):
            n = x["batch"]
            first = sum(p == q for p, q in zip(x["decoded"][:n], y["decoded"][:n])) / n
            every = sum(p == q for p, q in zip(x["decoded"], y["decoded"])) / max(1, len(y["decoded"]))
            agree[f"b{n}"] = {"first_step": first, "all_steps": round(every, 4)}
        out["agreement"][f"{a}_vs_{b}"] = agree
for k, v in runs.items():
    if v:
        for b in v["batches"]:
            b.pop("decoded", None)
    out["runs"][k] = v
print(json.dumps(out))
print(json.dumps(out["logits"], indent=None), file=sys.stderr)
for k, v in out["agreement"].items():
    print(f"decode tokens {k}: {v}", file=sys.stderr)
print(f"{'run':<18}" + "".join(f"{'dec b' + str(b):>11}" for b in (1, 32, 128)) + "".join(f"{'pre b' + str(b):>11}" for b in (1, 32, 128)), file=sys.stderr)
for k, v in runs.items():
    if not v:
        print(f"{k:<18} failed", file=sys.stderr); continue
    by = {b["batch"]: b for b in v["batches"]}
    print(f"{k:<18}" + "".join(f"{by[b]['decode_tok_s'] if b in by else 0:>11.1f}" for b in (1, 32, 128))
          + "".join(f"{by[b]['prefill_tok_s'] if b in by else 0:>11.1f}" for b in (1, 32, 128)), file=sys.stderr)
for on, off in (("tp2_on", "tp2_off"), ("tp2_oneshot_on", "tp2_oneshot_off"), ("tp4_on", "tp4_off"), ("tp2_off", "tp1"), ("tp2_on", "tp1"), ("tp4_on", "tp1")):
    if runs.get(on) and runs.get(off):
        x = {b["batch"]: b for b in runs[on]["batches"]}; y = {b["batch"]: b for b in runs[off]["batches"]}
        print(f"{on} / {off}: " + ", ".join(f"dec b{b} {x[b]['decode_tok_s'] / y[b]['decode_tok_s']:.2f}x pre {x[b]['prefill_tok_s'] / y[b]['prefill_tok_s']:.2f}x" for b in x if b in y), file=sys.stderr)
PY
