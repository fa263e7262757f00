#!/usr/bin/env bash
# make fuzz: runs each harness for SECONDS with the limits of issue 17 and fails if any finds
# something. Usage: tests/fuzz/run.sh FUZZ_DIR SECONDS HARNESS...
set -uo pipefail
dir=$1 seconds=$2
shift 2
python3 "$(dirname "$0")/make_seeds.py" "$dir/seeds" || exit 1
mkdir -p "$dir/findings"
failed=()
for h in "$@"; do
  name=${h%_fuzz}
  mkdir -p "$dir/corpus/$name"
  echo "== fuzz $name: ${seconds}s"
  # -timeout: a hang is an input over 1 s; -rss_limit_mb / -malloc_limit_mb: a header that
  # claims 2^40 images must not allocate them; -max_len: inputs up to 1 MB.
  "$dir/$h" "$dir/corpus/$name" "$dir/seeds/$name" -max_total_time="$seconds" -timeout=1 \
    -rss_limit_mb=512 -malloc_limit_mb=512 -max_len=1048576 -print_final_stats=1 \
    -artifact_prefix="$dir/findings/$name-" >"$dir/$name.log" 2>&1
  rc=$?
  grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "$dir/$name.log" | tail -n 1
  # A timeout on a loaded machine may be the scheduler, not the parser: run that input alone,
  # with the same limit, and count it only if it is slow again.
  if [ $rc -ne 0 ] && grep -q "ERROR: libFuzzer: timeout" "$dir/$name.log"; then
    unit=$(grep -o "Test unit written to [^ ]*" "$dir/$name.log" | tail -n 1 | cut -d' ' -f5)
    if [ -n "$unit" ] && "$dir/$h" -timeout=1 -rss_limit_mb=512 -malloc_limit_mb=512 "$unit" >"$dir/$name.rerun.log" 2>&1; then
      echo "   timeout not reproduced alone ($(grep -o 'in [0-9]* ms' "$dir/$name.rerun.log")): load, not a finding; $unit kept"
      rc=0
    fi
  fi
  if [ $rc -ne 0 ]; then
    failed+=("$name")
    grep -E "ERROR|SUMMARY|Test unit written" "$dir/$name.log" | head -n 5
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAIL (${failed[*]}); logs in $dir/<name>.log, inputs in $dir/findings"
  exit 1
fi
echo "fuzz: PASS ($# harnesses, ${seconds}s each)"
