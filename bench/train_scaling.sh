#!/usr/bin/env bash
# Data-parallel scaling of a real training config: the same config trained for STEPS steps in one
# process (dp = 1) and under `mpirun -np RANKS` (dp = RANKS), one thread per rank, then
# efficiency = samples/s(RANKS ranks) / (RANKS × samples/s(1 rank)), each rate taken over steps
# 4…STEPS from metrics.jsonl (the first steps warm caches and allocators). The global batch is
# the config's in both runs (strong scaling), so each rank of the parallel run gets 1/RANKS of it.
#
#   bash bench/train_scaling.sh configs/cross_adapter.yaml [STEPS=16] [RANKS=2]
#
# Runs in a temporary folder (output_dir and export are redirected there, sample grids are off);
# set OPENBLAS_CORETYPE as you want it reported. `sura bench train` is the synthetic counterpart.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${1:?usage: bench/train_scaling.sh CONFIG [STEPS] [RANKS]}"
steps="${2:-16}"
ranks="${3:-2}"
[ -f "$config" ] || { echo "train_scaling: no config file '$config'" >&2; exit 2; }
[ "$steps" -ge 6 ] 2>/dev/null || { echo "train_scaling: STEPS must be a number ≥ 6, got '$steps'" >&2; exit 2; }
[ "$ranks" -ge 2 ] 2>/dev/null || { echo "train_scaling: RANKS must be a number ≥ 2, got '$ranks'" >&2; exit 2; }
train="$repo/.build/release/train"
[ -x "$train" ] || { echo "train_scaling: build first (swift build -c release)" >&2; exit 2; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A copy of the config with its own output_dir, export path and dp; sample grids off.
variant() {
  local dp="$1" out="$work/dp$1"
  sed -E -e "s#^output_dir:.*#output_dir: $out#" \
         -e "s#^(  export:).*#\1 $out/adapter.safetensors#" \
         -e "s#^(  dp:).*#\1 $dp#" \
         -e "/^  sample_every:/d" "$config" > "$work/dp$dp.yaml"
  grep -q "^  dp: $dp\$" "$work/dp$dp.yaml" || { echo "train_scaling: $config has no 'topology: dp:' line to set" >&2; exit 2; }
}

# samples/s over steps 4…last of a metrics.jsonl.
rate() {
  awk -F'[:,}]' '
    { for (i = 1; i < NF; i++) {
        if ($i ~ /"step"$/) step = $(i + 1)
        if ($i ~ /"samples"$/) samples = $(i + 1)
        if ($i ~ /"elapsed_s"$/) elapsed = $(i + 1)
      }
      if (step == 4) { s0 = samples; t0 = elapsed }
      s1 = samples; t1 = elapsed }
    END { if (t1 > t0) printf "%.2f", (s1 - s0) / (t1 - t0); else print "nan" }' "$1"
}

cd "$repo"
variant 1
variant "$ranks"
echo "train_scaling: $config, $steps steps, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "train_scaling: 1 rank …"
"$train" --config "$work/dp1.yaml" --max-steps "$steps" --threads 1 > "$work/dp1.log" 2>&1 \
  || { tail -20 "$work/dp1.log" >&2; exit 1; }
echo "train_scaling: $ranks ranks …"
mpirun --allow-run-as-root --oversubscribe -np "$ranks" -x OPENBLAS_CORETYPE \
  "$train" --config "$work/dp$ranks.yaml" --max-steps "$steps" --threads 1 > "$work/dp$ranks.log" 2>&1 \
  || { tail -20 "$work/dp$ranks.log" >&2; exit 1; }
one="$(rate "$work/dp1/metrics.jsonl")"
many="$(rate "$work/dp$ranks/metrics.jsonl")"
printf "ranks  samples/s (steps 4…%d)  scaling efficiency\n" "$steps"
printf "%5d  %9s  %18s\n" 1 "$one" "1.000"
printf "%5d  %9s  %18s\n" "$ranks" "$many" "$(awk -v a="$one" -v b="$many" -v n="$ranks" 'BEGIN { printf "%.3f", b / (n * a) }')"
