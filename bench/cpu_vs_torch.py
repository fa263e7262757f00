#!/usr/bin/env python3
"""`make bench`: the CPU speed targets of issue 14, the engine and PyTorch back to back in one run.

Three measures, each run as engine, PyTorch, engine, PyTorch, ... (--rounds times), so a change
in the machine's load hits both sides alike; the table gives each side's median and the ratio of
the medians (how many times faster the engine is):

  train-step  ResNet-18, CIFAR stem, width 64, 3x32x32, batch 64: `build/bench train-step`
              against bench/torch_train_step.py (ms per step)
  byol        the BYOL demo recipe (configs/byol-fashion-mnist-cpu.conf, 128 pairs a step):
              `build/byol --stop-after`, pairs/s from its metrics after the first logged
              interval, against bench/torch_byol_step.py
  fixmatch    the FixMatch recipe (configs/fixmatch-fashion-mnist-cpu.conf, 32 + 2 x 96 images
              a step): `build/fixmatch --stop-after`, steps/s, against bench/torch_fixmatch_step.py

Both sides get the same thread count (--threads, default 2) and the same environment; the engine
programs read Fashion-MNIST from /usr/share/datasets/fashion-mnist as `make demo` does, the
PyTorch scripts draw from a pool of random images (their data never waits; the engine's loader
runs beside its step). Prints a Markdown table and the load average before and after; --json
writes every sample.

    /usr/bin/python3 bench/cpu_vs_torch.py [--build build-cpu] [--threads 2] [--rounds 3]
                                          [--only byol,fixmatch] [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PY = "/usr/bin/python3"  # Debian's python3-torch lives there (the default python3 may lack it)


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in the output:\n" + text[-2000:])


def run(cmd, env):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout + r.stderr


def program_rate(build, program, config, steps, images_per_step, env):
    """Steps/s of a training program over its logged intervals after the first one."""
    out = tempfile.mkdtemp(prefix=f"bench-{program}-")
    try:
        run([os.path.join(build, program), "--config", config, "--device", "cpu", "--stop-after", str(steps),
             "--log-every", "10", "--out", out], env)
        rates = []
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                e = json.loads(line)
                if e.get("event") == "train" and e.get("images_per_s"):
                    rates.append(e["images_per_s"] / images_per_step)
        if len(rates) < 2:
            raise RuntimeError(f"{program}: fewer than 2 logged intervals in {steps} steps")
        return statistics.median(rates[1:])  # the first interval holds the plan creation
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default="build-cpu" if os.path.exists(os.path.join(ROOT, "build-cpu/byol")) else "build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="train-step,byol,fixmatch")
    p.add_argument("--json", default="")
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    t = str(a.threads)
    build = os.path.join(ROOT, a.build)

    # name: (unit, higher is better, engine sampler, PyTorch sampler)
    measures = {
        "train-step": ("ms/step", False,
                       lambda: last_json(run([os.path.join(build, "bench"), "train-step", "--steps", "5",
                                              "--warmup", "1"], env))["ms_per_step"],
                       lambda: last_json(run([TORCH_PY, "bench/torch_train_step.py", "--threads", t, "--steps",
                                              "5", "--warmup", "1"], env))["ms_per_step"]),
        "byol": ("pairs/s", True,
                 lambda: 128 * program_rate(build, "byol", "configs/byol-fashion-mnist-cpu.conf", 70, 128, env),
                 lambda: last_json(run([TORCH_PY, "bench/torch_byol_step.py", "--threads", t, "--steps", "20",
                                        "--warmup", "3"], env))["pairs_per_s"]),
        "fixmatch": ("steps/s", True,
                     lambda: program_rate(build, "fixmatch", "configs/fixmatch-fashion-mnist-cpu.conf", 40,
                                          32 + 2 * 96, env),
                     lambda: last_json(run([TORCH_PY, "bench/torch_fixmatch_step.py", "--threads", t, "--steps",
                                            "10", "--warmup", "3"], env))["steps_per_s"]),
    }
    wanted = [m for m in a.only.split(",") if m]
    for m in wanted:
        if m not in measures:
            sys.exit(f"cpu_vs_torch: --only expects names from {','.join(measures)}, found '{m}'")

    load_before = os.getloadavg()
    samples = {}
    for m in wanted:
        unit, higher, engine, torch = measures[m]
        e, q = [], []
        for r in range(a.rounds):
            e.append(engine())
            q.append(torch())
            print(f"{m} round {r + 1}: engine {e[-1]:.4g}, PyTorch {q[-1]:.4g} {unit}", file=sys.stderr, flush=True)
        samples[m] = {"unit": unit, "engine": e, "torch": q}
    load_after = os.getloadavg()

    print(f"threads {a.threads}, {a.rounds} rounds interleaved, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after\n")
    print("| measure | engine (median) | PyTorch (median) | engine speed / PyTorch's |")
    print("|---|---|---|---|")
    for m in wanted:
        s = samples[m]
        e, q = statistics.median(s["engine"]), statistics.median(s["torch"])
        ratio = e / q if measures[m][1] else q / e
        s["ratio"] = ratio
        print(f"| {m} | {e:.4g} {s['unit']} | {q:.4g} {s['unit']} | **{ratio:.2f}x** |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "rounds": a.rounds, "load_before": load_before,
                       "load_after": load_after, "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
