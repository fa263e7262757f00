#!/usr/bin/env python3
"""Stops a training program with SIGINT at random moments, many times, and counts the stops that
did not end cleanly (docs/RELIABILITY.md, "Ctrl-C at any moment of a step"). Not in the suite:
one run takes seconds and a rare fault needs a hundred.

    python3 tests/ctrl_c_stress.py --runs 100 --after 0 --within 0.3 -- \
        build/byol --config configs/byol-fashion-mnist-cpu.conf --steps 200 --device cpu

Each run goes into its own --out under --work; SIGINT comes a random 'after' to 'within'
seconds after the program prints its "run directory" line (its training is about to start).
A clean stop exits 0 (a checkpoint saved) or 130 (stopped before the run began); anything else,
or glibc's heap messages, or an AddressSanitizer report, is printed with the output's end.
Exit status: 0 when every stop was clean, 1 otherwise.
"""
import argparse
import random
import shutil
import signal
import subprocess
import sys
import time

BAD_TEXT = ("corrupted", "double free", "free(): ", "Segmentation fault", "ERROR: AddressSanitizer")


def one_run(cmd, out, delay):
    p = subprocess.Popen(cmd + ["--out", out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    start = time.monotonic()
    while b"run directory" not in seen and time.monotonic() - start < 120:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        seen += chunk
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=600)
    text = (seen + rest).decode(errors="replace")
    clean = p.returncode in (0, 130) and not any(b in text for b in BAD_TEXT)
    return clean, p.returncode, text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--after", type=float, default=0.0, help="earliest SIGINT, seconds after the run directory line")
    ap.add_argument("--within", type=float, default=0.3, help="latest SIGINT, seconds after that line")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/tessera_ctrl_c_stress", help="where the runs' directories go")
    ap.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM FLAGS... (no --out)")
    args = ap.parse_args()
    cmd = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not cmd:
        ap.error("expected the program and its flags after --")
    rng = random.Random(args.seed)
    bad = 0
    for i in range(args.runs):
        out = f"{args.work}/run-{i}"
        shutil.rmtree(out, ignore_errors=True)
        delay = rng.uniform(args.after, args.within)
        clean, rc, text = one_run(cmd, out, delay)
        if not clean:
            bad += 1
            print(f"run {i}: exit {rc}, SIGINT {delay:.3f} s after the run directory line\n{text[-3000:]}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"ctrl_c_stress: {args.runs} runs, {bad} not clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
