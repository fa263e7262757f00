#!/usr/bin/env bash
# CPU data-parallel scaling of one training step (docs/DISTRIBUTED.md): bench train-step as one
# process and as N ranks under mpirun, OMP_NUM_THREADS threads each (default 1), with the same
# per-rank batch (weak scaling: N ranks step on N times the images). Prints both JSON lines'
# numbers, the efficiency = images/s(N) / (N x images/s(1)), and the machine's load, which the
# numbers depend on (re-measure on a quiet machine).
#
#   bench/distributed_scaling.sh [N (2)] [bench train-step flags...]
#   e.g. bench/distributed_scaling.sh 2 --arch resnet18 --width 16 --size 32 --batch 32 --steps 10
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2}
shift || true
BENCH=${BENCH:-build/bench}
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--arch resnet18 --width 16 --size 32 --batch 32 --steps 10 --warmup 2)
# --batch is per rank here: the N-rank run gets N times it as its global batch.
batch=32
for ((i = 0; i < ${#ARGS[@]}; i++)); do [ "${ARGS[$i]}" = --batch ] && batch=${ARGS[$((i + 1))]}; done
others=()
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  if [ "${ARGS[$i]}" = --batch ]; then i=$((i + 1)); else others+=("${ARGS[$i]}"); fi
done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "load before: $(uptime)"
one=$("$BENCH" train-step "${others[@]}" --batch "$batch" | tail -1)
many=$(mpirun -np "$N" --oversubscribe --bind-to none "$BENCH" train-step "${others[@]}" --batch $((batch * N)) | tail -1)
echo "load after:  $(uptime)"
python3 - "$one" "$many" "$N" <<'PY'
import json, sys
one, many, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
print(f"1 rank : {one['ms_per_step']:.1f} ms/step, {one['images_per_s']:.1f} images/s (batch {one['batch']})")
print(f"{n} ranks: {many['ms_per_step']:.1f} ms/step, {many['images_per_s']:.1f} images/s "
      f"(global batch {many['global_batch']}, all-reduce {many['all_reduce_ms_per_step']:.2f} ms/step)")
print(f"scaling efficiency {many['images_per_s'] / (n * one['images_per_s']) * 100:.0f}% "
      f"(images/s of {n} ranks / ({n} x 1 rank's), {one['device_description']} a rank)")
PY
