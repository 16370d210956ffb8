#!/bin/bash
# The unit tests CI cannot run, run on the GPU machine: a CUDA crate's library tests with
# the ones marked `#[ignore = "needs a CUDA device"]` included, and one JSON of results.
#
# Usage (on the GPU machine):
#   bash DIR/device_tests.sh DIR
# DIR holds unit-tests.xz: the library test binary of a CUDA target's generated crate,
# stripped and xz-compressed. Build it here (CUDA_HOME set, in the crate's folder):
#   cargo test --release --lib --no-run     # prints the binary's path (target/release/deps/…)
# Results: $OUT/device_tests.json ({"device", "passed", "failed", "ignored", "tests":
# {name: "ok" | "FAILED" | "ignored"}}) and $OUT/device_tests.log. Exit code: the tests'.
set -u
G=$(cd "${1:?usage: device_tests.sh DIR}" && pwd)
OUT=${OUT:-/tmp/out}; W=${VS_WORK:-/tmp/vs-device-tests}; mkdir -p "$W" "$OUT"
CUBLAS=$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)
[ -n "$CUBLAS" ] && export LD_LIBRARY_PATH=$(dirname "$CUBLAS"):${LD_LIBRARY_PATH:-}
xz -dc "$G/unit-tests.xz" > "$W/unit-tests" && chmod +x "$W/unit-tests" || exit 1
DEVICE=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
# Every unit test of the crate: the CUDA part's and the core's under this target's plan.
"$W/unit-tests" --include-ignored --test-threads 1 2>&1 | tee "$OUT/device_tests.log"
rc=${PIPESTATUS[0]}
python3 - "$OUT/device_tests.log" "$DEVICE" <<'PY' | tee "$OUT/device_tests.json"
import json, re, sys
tests = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"test (\S+) \.\.\. (ok|FAILED|ignored)", line)
    if m:
        tests[m.group(1)] = m.group(2)
count = lambda outcome: sum(v == outcome for v in tests.values())
print(json.dumps({"device": sys.argv[2], "passed": count("ok"), "failed": count("FAILED"),
                  "ignored": count("ignored"), "tests": tests}, indent=1))
PY
exit "$rc"
