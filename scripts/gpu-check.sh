#!/usr/bin/env bash
# The GPU check, as one script anyone lent a CUDA machine runs as it is:
#
#   scripts/gpu-check.sh OUT_DIR [BIN_DIR]
#
# BIN_DIR holds fleet-sim built with `--features cuda` (docs/gpu.md); without it the script builds
# one (`cargo build --release --features cuda -p irec-fleet-sim`, needs nvcc). Then, within 10
# minutes of device time:
#   1. nvidia-smi (the script stops here without a GPU);
#   2. bench-train on cuda and on cpu, both shapes: the losses after the same 21 seeded steps must
#      agree within a relative 5e-2 (float order differs between the devices; a wrong kernel is off
#      by far more), and the timed step of each;
#   3. a quick `compare` on cuda, timed;
#   4. one paper-preset round of the federated loop on cuda, timed.
# Everything lands in OUT_DIR as JSON (summary.json gathers it) with each command's log.
set -uo pipefail
out="${1:?usage: scripts/gpu-check.sh OUT_DIR [BIN_DIR]}"
bin_dir="${2:-}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
started=$(date +%s)
left() { echo $(( 600 - ($(date +%s) - started) )); }
say() { echo "[gpu-check $(( $(date +%s) - started ))s] $*" | tee -a "$out/log.txt"; }

if ! nvidia-smi > "$out/nvidia-smi.txt" 2>&1; then
    say "no GPU here (nvidia-smi failed; see nvidia-smi.txt): nothing checked"
    echo '{"gpu": false}' > "$out/summary.json"
    exit 2
fi
say "$(head -12 "$out/nvidia-smi.txt" | grep -m1 -i 'driver version' || echo 'nvidia-smi ok')"

if [ -z "$bin_dir" ]; then
    say "building fleet-sim with --features cuda"
    if ! cargo build --release --features cuda -p irec-fleet-sim > "$out/build.log" 2>&1; then
        say "build failed (build.log)"; echo '{"gpu": true, "built": false}' > "$out/summary.json"; exit 1
    fi
    bin_dir=target/release
fi
fs="$bin_dir/fleet-sim"
# The CUDA libraries a pip-installed toolkit keeps in site-packages (docs/gpu.md).
extra=$(find / -path '*site-packages/nvidia/*' \( -name 'libcublas.so.13' -o -name 'libcurand.so.10' \
    -o -name 'libcudart.so.13' -o -name 'libnvrtc.so.13' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

run_json() { # name timeout_s command...: runs it, keeps its log, its last line (the JSON) and its wall time
    local name="$1" limit="$2"; shift 2
    local t0=$(date +%s%N)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    tail -1 "$out/$name.log" > "$out/$name.json"
    echo "{\"name\": \"$name\", \"rc\": $rc, \"wall_ms\": $ms}" > "$out/$name.status.json"
    say "$name: rc $rc in $ms ms"
    return $rc
}

for mode in gru flat; do
    for dev in cuda:0 cpu; do
        tag="${dev%%:*}"
        run_json "bench-$mode-$tag-agree" 120 "$fs" bench-train --mode "$mode" --steps 1 --device "$dev" --json
        run_json "bench-$mode-$tag" 120 "$fs" bench-train --mode "$mode" --steps 200 --device "$dev" --json
    done
done
run_json compare-quick-cuda "$(( $(left) > 60 ? $(left) - 60 : 1 ))" "$fs" compare --preset quick --device cuda:0 --out "$out/compare" --no-cache --json
run_json run-paper-round-cuda "$(( $(left) > 5 ? $(left) - 5 : 1 ))" "$fs" run --preset paper --rounds 1 --device cuda:0 --in-process --out "$out/run" --no-cache --json

python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".json")))
    except Exception:
        return None
summary = {"gpu": True, "tolerance_relative": 5e-2, "bench": {}, "agree": {}}
for mode in ("gru", "flat"):
    a, b = load(f"bench-{mode}-cuda-agree"), load(f"bench-{mode}-cpu-agree")
    if a and b:
        rel = [abs(x - y) / max(1e-6, abs(y)) for x, y in zip(a["last"], b["last"])]
        summary["agree"][mode] = {"cuda_losses": a["last"], "cpu_losses": b["last"], "max_relative_difference": max(rel), "ok": max(rel) <= 5e-2}
    for dev in ("cuda", "cpu"):
        r = load(f"bench-{mode}-{dev}")
        if r:
            summary["bench"][f"{mode}_{dev}_ms_per_step"] = r["ms_per_step"]
for name in ("compare-quick-cuda", "run-paper-round-cuda"):
    try:
        summary[name] = json.load(open(os.path.join(out, name + ".status.json")))
    except Exception:
        summary[name] = None
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
say "done; summary.json in $out"
