#!/usr/bin/env bash
# The GPU check now lives in tests/gpu_check.py (make gpu-check); this name stays for callers of
# the old script. Exit codes: 0 PASS, 1 FAIL, 3 no GPU here, 4 incomplete.
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
