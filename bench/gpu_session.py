#!/usr/bin/env python3
"""gpu-session: the one prepared GPU run (issue 13, section 4; docs/gpu-log.md).

    python3 bench/gpu_session.py --out DIR [--budget 540] [--phases ...] [--no-build]
    python3 bench/gpu_session.py --self-test        (the ncu CSV parser on made-up output)
    make gpu-session OUT=DIR [GPU_SESSION_ARGS='--phases check,bench']   (where make exists)

Phases, in this order (the most decisive first, so a run cut short has learned the most):

  build     tests/gpu_check.py --phases probe,build: versions, `make CUDA=1 all` (always run:
            incremental where build/ is there already; --no-build leaves it out)
  check     tests/gpu_check.py --phases suite,twins: the suite and, beside it, the CPU-vs-GPU twins
  bench     build/bench on the GPU: train-step ResNet-18 CIFAR batch 256 and ResNet-50 224 px
            batch 64 (each with the per-kernel table of two warm-up steps in its log),
            teacher-update ResNet-50 + BYOL projector for tma/sts x tensor/channel/element (with
            the device-to-device copy ratio), augment (byol, fixmatch-strong); on a GPU also
            both train steps with the other batch-norm kernels (BN_VARIANTS: cuDNN's backward,
            tessera's forwards), each beside the default step as a ratio
  ncu       only when --phases names it: Nsight Compute over the ResNet-18 train step (one
            warm-up step, one step), profiling only that step's batch-norm kernels (cuDNN's and
            kernels/cuda/batch_norm.cu's) with the sections SpeedOfLight, MemoryWorkloadAnalysis,
            LaunchStats and Occupancy, --clock-control none; summary.md gets a table per kernel
            and launch shape. No ncu: NOT POSSIBLE, with the places searched; ncu refused by the
            runtime (gVisor: LibraryNotLoaded): UNAVAILABLE with its message. Neither fails the run.
  torch     bench/torch_gpu_train_step.py, the same two train steps in PyTorch: eager fp32,
            tf32, channels_last + bf16 autocast for both, then torch.compile with what is left
  programs  byol and fixmatch, 300 steps each with --device cuda, on Fashion-MNIST where it is
            installed, else on generated 28 x 28 images written as IDX files (the bundle leaves
            Fashion-MNIST out: 31 MB)
  memcheck  tests/gpu_check.py --phases memcheck: CUDA tests under compute-sanitizer

Each phase has a time box (its share of --budget among the phases run, the build's at least
60% of the budget up to its nominal 180 s; time a phase leaves unused goes to the next). A
command stopped at its box makes its phase INCOMPLETE, not FAIL; memcheck's box ending it does
not count against the exit code (compute-sanitizer slows kernels 10-100x: it covers what fits).
Everything goes under --out as it happens, in at most four files (the device tool brings back
eight at most): console.log (all that is printed), summary.md (the table and the gpu-log row),
summary.json, logs.tar.gz (every phase's logs, re-packed after each phase). Work files live in
build/gpu-session.

Without a GPU (nvidia-smi lists none) the session rehearses: every phase that can run here runs
on the CPU at rehearsal sizes (stated in the table), phases that cannot (ncu) are listed with
why, and the summary says REHEARSAL; no gpu-log row is offered; the budget is 1800 s unless given.
Exit code: 1 when a phase failed, else 4 when one ran out of time, else 3 without a GPU, else 0.
"""
import argparse
import csv
import glob
import io
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ["build", "check", "bench", "ncu", "torch", "programs", "memcheck"]
# Phases that --phases must name: ncu adds an estimated 30-80 s (docs/gpu-log.md), more than
# the default run should grow by for a diagnosis it needs once.
NOT_DEFAULT = {"ncu"}
# Phases that only mean something on a GPU: without one they are listed with why, not run.
GPU_ONLY = {"ncu": "no GPU here (nvidia-smi lists none): ncu reads a GPU's hardware counters"}
# Shares of the budget in seconds of the default 540 s run (the GPU estimates are in
# docs/gpu-log.md). Session.box scales the shares of the phases a run has to its budget, so a
# phase left out gives its share to the others. The build decides everything after it, so it
# has the largest box.
NOMINAL = {"build": 180, "check": 160, "bench": 55, "ncu": 90, "torch": 60, "programs": 50, "memcheck": 35}


class Session:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.out)
        self.work = os.path.abspath(args.work)
        os.makedirs(self.out, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.console = open(os.path.join(self.out, "console.log"), "a", buffering=1)
        self.start = time.monotonic()
        self.end = self.start + args.budget
        self.saved = 0.0  # seconds earlier phases left unused
        self.rows = []  # [what, tessera, pytorch, ratio, check]
        self.row_index = {}
        self.phases = {}
        self.facts = {}
        self.gpu = False
        self.order = [p for p in PHASES if p not in NOT_DEFAULT]  # main() sets the run's own

    def log(self, msg=""):
        print(msg, flush=True)
        self.console.write(msg + "\n")

    def left(self):
        return self.end - time.monotonic()

    def box(self, phase):
        scale = self.args.budget / sum(NOMINAL[p] for p in self.order)
        share = NOMINAL[phase] * scale
        if phase == "build":
            # Every other phase needs the build, so a small budget does not shrink it below what
            # a fresh H200 build takes (43-54 s of make, plus the unpack and the probes): at
            # --budget 190 its share (60 s) left make 29 s and the run nothing (2026-12-04).
            share = max(share, min(NOMINAL["build"], 0.6 * self.args.budget))
        return max(0.0, min(share + self.saved, self.left()))

    def run(self, cmd, log_name, seconds, env=None):
        """Runs cmd within `seconds` (its process group killed after); returns (rc, output, timed_out)."""
        path = os.path.join(self.work, log_name)
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with open(path, "wb") as f:
            f.write(("$ " + " ".join(cmd) + "\n").encode())
            f.flush()
            t0 = time.monotonic()
            try:
                p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env,
                                     start_new_session=True)
            except OSError as e:
                return 127, str(e), False
            timed_out = False
            try:
                rc = p.wait(timeout=max(1.0, seconds))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(p.pid, 15)
                try:
                    rc = p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    rc = p.wait()
        with open(path, errors="replace") as f:
            text = f.read()
        self.log(f"  [{time.monotonic() - t0:5.1f} s] {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}"
                 f" -> {'stopped at its time box' if timed_out else f'exit code {rc}'}")
        return rc, text, timed_out

    def row(self, what, tessera, pytorch="", ratio="", check=""):
        self.row_index[what] = len(self.rows)
        self.rows.append([what, tessera, pytorch, ratio, check])
        self.save()

    def phase_done(self, name, status, seconds, detail):
        self.phases[name] = {"status": status, "seconds": round(seconds, 1), "detail": detail}
        self.log(f"gpu-session: {name}: {status} ({seconds:.0f} s) {detail}")
        self.save()

    def save(self):
        summary = {"phases": self.phases, "rows": self.rows, "facts": self.facts, "gpu": self.gpu,
                   "budget_s": self.args.budget, "elapsed_s": round(time.monotonic() - self.start, 1)}
        with open(os.path.join(self.out, "summary.json.tmp"), "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(os.path.join(self.out, "summary.json.tmp"), os.path.join(self.out, "summary.json"))
        with open(os.path.join(self.out, "summary.md.tmp"), "w") as f:
            f.write(self.markdown())
        os.replace(os.path.join(self.out, "summary.md.tmp"), os.path.join(self.out, "summary.md"))
        with tarfile.open(os.path.join(self.out, "logs.tar.gz.tmp"), "w:gz") as t:
            t.add(self.work, arcname="gpu-session", filter=tar_filter)
        os.replace(os.path.join(self.out, "logs.tar.gz.tmp"), os.path.join(self.out, "logs.tar.gz"))

    def markdown(self):
        lines = ["# gpu-session" + ("" if self.gpu else " (REHEARSAL: no GPU here, not a GPU result)"), ""]
        lines += [f"- {v}" for v in self.facts.get("version_lines", [])]
        lines += ["", "| phase | status | seconds | detail |", "|---|---|---|---|"]
        lines += [f"| {n} | {p['status']} | {p['seconds']} | {p['detail']} |" for n, p in self.phases.items()]
        lines += ["", "| figure | tessera | PyTorch | tessera / PyTorch | check |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in self.rows]
        if self.facts.get("ncu_table"):
            lines += [""] + self.facts["ncu_table"]
        row = self.gpu_log_row()
        if row:
            lines += ["", "docs/gpu-log.md row:", "", row]
        return "\n".join(lines) + "\n"

    def gpu_log_row(self):
        if not self.gpu:
            return None
        v = self.facts
        device = f"{v.get('gpu_name', '?')}, driver {v.get('driver', '?')}, CUDA {v.get('runtime', '?')}, " \
                 f"cuDNN {v.get('cudnn', '?')}, cuBLAS {v.get('cublas', '?')}"
        result = "; ".join(f"{n} {p['status']}" for n, p in self.phases.items())
        # The measured figures only (the table in summary.md has the rest): tessera's, PyTorch's beside it.
        notes = "; ".join(f"{r[0]}: {r[1]}" + (f" vs torch {r[2]}, ratio {r[3]}" if r[3] else "")
                          for r in self.rows if r[4].startswith(("ran", "PASS")) and r[1])
        return f"| {time.strftime('%Y-%m-%d', time.gmtime())} | {v.get('commit', '?')} | {device} | {result} | {notes} |"


# A report ncu exported travels in the tarball only while it is small: each file the device
# tool brings back is 16 MiB at most, and the CSV in the tarball holds the same figures.
NCU_REPORT_MAX_BYTES = 8 << 20


def tar_filter(ti):
    if ti.name.endswith((".bin", "-ubyte", ".safetensors")):
        return None
    if ti.name.endswith(".ncu-rep") and ti.size > NCU_REPORT_MAX_BYTES:
        return None
    return ti


# ---- phases ------------------------------------------------------------------------------------

def gpu_check(s, phases, seconds, out_name, extra=()):
    cmd = [sys.executable, "tests/gpu_check.py", "--out", os.path.join(s.work, out_name), "--phases", phases,
           "--budget", f"{max(1.0, seconds - 5):.0f}"]
    if not s.gpu:
        cmd.append("--rehearse")
    rc, text, timed_out = s.run(cmd + list(extra), out_name + ".log", seconds)
    try:
        summary = json.load(open(os.path.join(s.work, out_name, "summary.json")))
    except (OSError, ValueError):
        summary = {}
    for line in text.splitlines():
        if line.startswith("gpu-check: ") and not line.startswith("gpu-check: |"):
            s.log("  " + line)
    return rc, summary, timed_out


def phase_build(s):
    t0 = time.monotonic()
    phases = "probe" if s.args.no_build else "probe,build"
    _, summary, timed_out = gpu_check(s, phases, s.box("build"), "check-build")
    v = summary.get("versions_built") or summary.get("versions", {})
    smi = summary.get("nvidia_smi", {})
    s.facts.update(version_lines=summary.get("version_lines", []), runtime=v.get("runtime"), cudnn=v.get("cudnn"),
                   cublas=v.get("cublas"), gpu_name=smi.get("name"), driver=smi.get("driver"))
    p = summary.get("phases", {})
    for name in ("probe", "build"):
        if name in p:
            s.row(f"gpu-check {name}", p[name]["status"], "", "", p[name]["detail"][:200])
    binaries = all(os.path.exists(os.path.join(ROOT, "build", b)) for b in ("bench", "byol", "fixmatch", "tessera_tests"))
    if s.args.no_build:
        status, detail = ("PASS" if binaries else "FAIL"), "--no-build: build/ as it is"
    else:
        status = p.get("build", {}).get("status", "INCOMPLETE" if timed_out else "FAIL")
        detail = p.get("build", {}).get("detail", "gpu-check wrote no build result")
    built = status == "PASS" and binaries
    if p.get("probe", {}).get("status") == "FAIL":
        # CUDA does not initialise: nothing on the GPU can pass, but the phases still run and tell
        # what else holds (the CPU tests, whether PyTorch sees the GPU)
        status, detail = "FAIL", p["probe"]["detail"] + "; " + detail
    s.phase_done("build", status, time.monotonic() - t0, detail)
    return built

def phase_check(s):
    t0 = time.monotonic()
    extra = [] if s.gpu or s.args.no_twins_stand_in else ["--twins-stand-in"]
    _, summary, timed_out = gpu_check(s, "suite,twins", s.box("check"), "check-tests", ["--no-build", *extra])
    p = summary.get("phases", {})
    for name in ("suite", "twins"):
        if name in p:
            s.row(f"gpu-check {name}", p[name]["status"], "", "", p[name]["detail"][:200])
    if "census_line" in summary:  # which kernels the tests ran on CUDA (tests/gpu_check.py, census)
        s.facts["census"] = summary.get("census", {})
        s.row("kernel census", f"{len(s.facts['census'].get('cuda', []))} on CUDA", "", "", summary["census_line"][:400])
    statuses = [p[n]["status"] for n in ("suite", "twins") if n in p]
    status = ("FAIL" if "FAIL" in statuses else "INCOMPLETE" if timed_out or "INCOMPLETE" in statuses or not statuses
              else "PASS" if all(x == "PASS" for x in statuses) else "CPU-ONLY")
    s.phase_done("check", status, time.monotonic() - t0, "; ".join(f"{n} {q['status']}" for n, q in p.items()
                                                                   if n in ("suite", "twins")))


def last_json(text):
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


# The engine's bench commands: (label, args at GPU sizes, args at rehearsal sizes).
TRAIN_STEPS = [
    ("train-step resnet18 cifar b256", "resnet18", "cifar", 32, 256, 10),
    ("train-step resnet50 224px b64", "resnet50", "imagenet", 224, 64, 1000),
]


def train_step_args(arch, stem, size, batch, classes, gpu):
    if gpu:
        steps, warmup = (20, 3) if arch == "resnet18" else (10, 3)
    else:  # rehearsal: the same command at sizes two shared cores finish in seconds
        size, batch, steps, warmup = (32, 16, 2, 1) if arch == "resnet18" else (64, 2, 1, 0)
    return dict(arch=arch, stem=stem, size=size, batch=batch, classes=classes, steps=steps, warmup=warmup)


def train_step_cmd(arch, stem, classes, a, device):
    """The engine's train-step command (phase_bench's, and the one ncu profiles)."""
    return ["build/bench", "train-step", "--arch", arch, "--stem", stem, "--size", str(a["size"]), "--batch",
            str(a["batch"]), "--num-classes", str(classes), "--steps", str(a["steps"]), "--warmup",
            str(a["warmup"]), "--device", device]


# The batch-norm kernels kernels/cuda/batch_norm.cu can switch (kernels/cuda/runtime.h), each
# run as a whole train step on the GPU beside the default one: the kernels' own A/B, minutes
# apart on one machine (the 2026-12-04 runs did it by hand; docs/gpu-log.md).
BN_VARIANTS = [("cuDNN's BN backward", "bn-backward-cudnn", {"TESSERA_BN_BACKWARD": "cudnn"}),
               ("tessera's BN forwards", "bn-forward-tessera", {"TESSERA_BN_FORWARD": "tessera"})]


def bench_bn_variants(s, deadline):
    """Rows 'LABEL, VARIANT' with the variant's step time and its ratio to the default step's.
    Returns (ok, boxed) as phase_bench counts them."""
    ok, boxed = True, False
    for label, arch, stem, size, batch, classes in TRAIN_STEPS:
        default_ms, _ = fmt_engine(s, label)
        a = train_step_args(arch, stem, size, batch, classes, True)
        for what, tag, env in BN_VARIANTS:
            cmd = train_step_cmd(arch, stem, classes, a, "cuda") + ["--profile-steps", f"1:{a['warmup']}"]
            rc, text, to = s.run(cmd, f"bench-{arch}-{tag}.log", deadline - time.monotonic(), env=env)
            j = last_json(text)
            row = f"{label}, {what} ({' '.join(f'{k}={v}' for k, v in env.items())})"
            if j and rc == 0:
                ms = j["ms_per_step"]
                ratio = f"{ms / default_ms:.3f} x the default step" if default_ms else "-"
                s.row(row, f"{ms:.2f} ms ({j['images_per_s']:.0f} img/s)", "-", ratio, "ran")
            else:
                ok, boxed = ok and to, boxed or to
                s.row(row, "not measured", "", "", f"exit code {rc}" + (" (time box)" if to else ""))
    return ok, boxed


def phase_bench(s):
    t0 = time.monotonic()
    deadline = t0 + s.box("bench")
    device = "cuda" if s.gpu else "cpu"
    ok, boxed = True, False  # boxed: a command was stopped at the time box
    s.facts["bench"] = {}
    for label, arch, stem, size, batch, classes in TRAIN_STEPS:
        a = train_step_args(arch, stem, size, batch, classes, s.gpu)
        cmd = train_step_cmd(arch, stem, classes, a, device)
        if a["warmup"] >= 2:  # the engine's per-kernel table of warm-up steps (not the timed ones) into the log
            cmd += ["--profile-steps", f"1:{a['warmup']}"]
        rc, text, to = s.run(cmd, f"bench-{arch}.log", deadline - time.monotonic())
        j = last_json(text)
        s.facts["bench"][label] = {"args": a, "result": j, "rc": rc}
        if j and rc == 0:
            sizes = "" if s.gpu else f" (rehearsal: {a['size']} px, batch {a['batch']})"
            s.row(label, fmt_engine(s, label)[1], "", "", "ran" + sizes)
        else:
            ok, boxed = ok and to, boxed or to
            s.row(label, "not measured", "", "", f"exit code {rc}" + (" (time box)" if to else ""))
    if s.gpu:  # the variants choose CUDA kernels: nothing to compare on the CPU
        v_ok, v_boxed = bench_bn_variants(s, deadline)
        ok, boxed = ok and v_ok, boxed or v_boxed
    for mode, gran in [("tma", "tensor"), ("sts", "tensor"), ("sts", "channel"), ("sts", "element"),
                       ("tma", "channel"), ("tma", "element")]:
        cmd = ["build/bench", "teacher-update", "--arch", "resnet50", "--stem", "imagenet", "--mode", mode,
               "--granularity", gran, "--device", device] + ([] if s.gpu else ["--iters", "2"])
        rc, text, to = s.run(cmd, f"teacher-{mode}-{gran}.log", deadline - time.monotonic())
        j = last_json(text)
        label = f"teacher-update resnet50+proj {mode} {gran}"
        if j and rc == 0:
            figure = (f"{j['update_ms']:.3f} ms, {j['update_gbps']:.0f} GB/s at 12 B/param "
                      f"({100 * j['params_updated']:.0f}% updated)")
            ratio = f"{j['ratio_to_copy']:.2f} x copy ({j['copy_gbps']:.0f} GB/s)" if "ratio_to_copy" in j else "-"
            s.row(label, figure, "-", ratio, "ran")
        else:
            ok, boxed = ok and to, boxed or to
            s.row(label, "not measured", "", "", f"exit code {rc}" + (" (time box)" if to else ""))
    for recipe in ("byol", "fixmatch-strong"):
        cmd = ["build/bench", "augment", "--recipe", recipe, "--device", device, "--batch", "256", "--seconds",
               "2" if s.gpu else "1"]
        rc, text, to = s.run(cmd, f"augment-{recipe}.log", deadline - time.monotonic())
        j = last_json(text)
        label = f"augment {recipe} b256 32px"
        if j and rc == 0:
            key = next((k for k in ("images_per_s", "pairs_per_s") if k in j), None)
            figure = f"{j[key]:.0f} {key[:-6]}/s" if key else json.dumps(j)[:80]
            s.row(label, figure, "-", "-", "ran")
        else:
            ok, boxed = ok and to, boxed or to
            s.row(label, "not measured", "", "", f"exit code {rc}" + (" (time box)" if to else ""))
    s.phase_done("bench", "FAIL" if not ok else "INCOMPLETE" if boxed else "PASS", time.monotonic() - t0,
                 f"on {device}" + ("" if s.gpu else " at rehearsal sizes (see the rows)"))
    return ok


# ---- ncu: the batch-norm kernels of one training step under Nsight Compute ----------------------
#
# The first GPU run found cuDNN's batch-norm backward at 860-890 GB/s and 15-16% of a ResNet-18
# step, cause unmeasured (docs/gpu-log.md). This phase profiles the batch-norm kernels of one
# warm ResNet-18 CIFAR b256 step: the bench command of phase_bench with one warm-up step and one
# step, every other kernel left to run unprofiled.

# cuDNN's spatial batch norm (bn_fw_tr_1C11_kernel_NCHW, bn_fw_inf_..., bn_bw_1C11_kernel_new,
# bn_bw_1C11_singleread...; "batchnorm" for other engines) and our own kernels in
# kernels/cuda/batch_norm.cu (count_batches_kernel, backward_train_partials/dx_kernel,
# backward_eval_partials/sum_kernel, and with TESSERA_BN_FORWARD=tessera
# forward_train_partials/apply_kernel and forward_eval_kernel). ncu matches the regex anywhere
# in the function name (its default --kernel-name-base function).
NCU_KERNEL_REGEX = "bn_|[Bb]atch_?[Nn]orm|count_batches|backward_train_|backward_eval_|forward_train_|forward_eval_kernel"
NCU_SECTIONS = ["SpeedOfLight", "MemoryWorkloadAnalysis", "LaunchStats", "Occupancy"]
# Where ncu may be besides PATH; newest version first within each pattern.
NCU_PLACES = ["$CUDA_HOME/bin/ncu", "/usr/local/cuda/bin/ncu", "/usr/local/cuda-*/bin/ncu",
              "/opt/nvidia/nsight-compute/*/ncu", "/usr/local/cuda*/nsight-compute-*/ncu"]
# What ncu says where the runtime keeps the counters from it (gVisor: LibraryNotLoaded) or the
# user may not read them: unavailable here, not a failure of the code.
NCU_UNAVAILABLE = ("LibraryNotLoaded", "Failed to initialize the profiler", "ERR_NVGPUCTRPERM",
                   "permission to access NVIDIA GPU Performance Counters", "not supported on this device",
                   "Device not supported")


# (BatchNorm layers, those whose output the backward makes again), from models/resnet.cpp:
# ResNet-18 has the stem's bn1, 8 basic blocks of 2 and 3 downsample BNs (layers 2-4) = 20, and
# each block's bn1 feeds only conv2 (ops::batch_norm_relu_conv2d) = 8; ResNet-50 has 1 + 16 x 3
# + 4 = 53, and bn1 and bn2 of each bottleneck = 32.
BN_LAYERS = {"resnet18": (20, 8), "resnet50": (53, 32)}


def bn_launches_per_step(arch):
    """Batch-norm kernel launches the regex matches in a train step after the first: a forward
    (cuDNN's training call) and a backward (tessera's two kernels) per layer; two cuDNN
    inference calls per layer made again (ops::detail::batch_norm_forward_again); one
    count_batches_kernel for every layer's num_batches_tracked, which Graph::clear launches at
    the start of the next step (so the first step has none). This assumes one kernel per cuDNN
    call; one_step checks it."""
    layers, again = BN_LAYERS[arch]
    return 3 * layers + 2 * again + 1


def version_key(path):
    return [int(x) for x in re.findall(r"\d+", path)]


def find_ncu():
    """(path or None, the places searched, in words)."""
    found = shutil.which("ncu")
    if found:
        return found, "PATH"
    for pattern in NCU_PLACES:
        pattern = os.path.expandvars(pattern)
        if "$" in pattern:  # CUDA_HOME not set
            continue
        for path in sorted(glob.glob(pattern), key=version_key, reverse=True):
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path, pattern
    return None, "PATH, " + ", ".join(NCU_PLACES)


def ncu_number(text):
    """A metric value as ncu prints it: thousands separators ("1,234.5"), a decimal comma
    ("9,25" under some locales; the phase runs ncu with LC_ALL=C), "n/a" (None)."""
    t = (text or "").strip().replace("\u202f", "").replace(" ", "")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?([eE][-+]?\d+)?", t):
        t = t.replace(",", "")
    elif re.fullmatch(r"[-+]?\d+,\d+", t):
        t = t.replace(",", ".")
    try:
        return float(t)
    except ValueError:
        return None


def parse_ncu_csv(text):
    """ncu's `--csv --page details` output: one row per metric of each profiled launch, after
    any lines of its own (==PROF==, ==WARNING==) and of the program. The columns are found by
    name in the header ("ID", "Kernel Name", "Block Size", "Grid Size", "Section Name", "Metric
    Name", "Metric Unit", "Metric Value", and the rule columns of newer versions, which are
    ignored). Returns the launches in order: {"id", "name", "block", "grid", "metrics":
    [(section, name, unit, value text)]}."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if line.startswith('"') and '"Kernel Name"' in line and '"Metric Name"' in line and '"Metric Value"' in line:
            start = i
            break
    if start is None:
        return []
    # The whole rest through the csv module: a rule's advice may hold a line break in its quotes.
    rows = csv.reader(io.StringIO("\n".join(lines[start:])))
    header = next(rows)
    col = {name: i for i, name in enumerate(header)}
    need = max(col["Kernel Name"], col["Metric Name"])

    def field(r, name):
        i = col.get(name)
        return r[i] if i is not None and i < len(r) else ""

    launches, by_id = [], {}
    for r in rows:
        # ncu's own lines after the table (==PROF==, ==WARNING==) are one field; a second header
        # comes with a second table (another process, or a second report)
        if len(r) <= need or r == header or ("ID" in col and not field(r, "ID").strip().isdigit()):
            continue
        metric = field(r, "Metric Name")
        key = (field(r, "Process ID"), field(r, "ID"))
        launch = by_id.get(key)
        if launch is None:
            launch = {"id": field(r, "ID"), "name": field(r, "Kernel Name"), "block": field(r, "Block Size"),
                      "grid": field(r, "Grid Size"), "metrics": []}
            by_id[key] = launch
            launches.append(launch)
        if metric:  # rule rows (advice text) have no metric
            launch["metrics"].append((field(r, "Section Name"), metric, field(r, "Metric Unit"),
                                      field(r, "Metric Value")))
    return launches


DURATION_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6,
               "second": 1e6}
PREFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def metric(launch, names, section=None, unit_kind=None):
    """The first of `names` the launch has (in `section` when given, else in any), as a number
    in the unit kind asked: "us" for durations, "GB/s" for byte rates, "%" for percentages;
    None when absent, unreadable or in another unit."""
    for want in names:
        for sec, name, unit, value in launch["metrics"]:
            if name != want or (section and sec != section):
                continue
            x = ncu_number(value)
            if x is None:
                continue
            if unit_kind == "us":
                if unit not in DURATION_US:
                    continue
                x *= DURATION_US[unit]
            elif unit_kind == "GB/s":
                m = re.fullmatch(r"([KMGTP]?)byte/(s|second)", unit)
                if not m:
                    continue
                x *= PREFIX[m.group(1)] / 1e9
            elif unit_kind == "%" and unit not in ("%", "pct"):
                continue
            return x
    return None


def short_kernel_name(name):
    """'void cudnn::bn_bw_1C11_kernel_new<float, 512, true>(float, ...)' -> 'bn_bw_1C11_kernel_new';
    '(anonymous namespace)::count_batches_kernel(...)' -> 'count_batches_kernel'."""
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    words = "".join(out).split()
    return (words[-1] if words else name).split("::")[-1] or name


def launch_figures(launch):
    sol, mwa = "GPU Speed Of Light Throughput", "Memory Workload Analysis"
    return {
        "us": metric(launch, ["Duration"], sol, "us") or metric(launch, ["Duration", "gpu__time_duration.sum"],
                                                                 None, "us"),
        "dram_pct": metric(launch, ["DRAM Throughput", "dram__throughput.avg.pct_of_peak_sustained_elapsed"],
                           None, "%"),
        "gbps": metric(launch, ["Memory Throughput"], mwa, "GB/s")
                or metric(launch, ["Memory Throughput", "dram__bytes.sum.per_second"], None, "GB/s"),
        "occupancy": metric(launch, ["Achieved Occupancy", "sm__warps_active.avg.pct_of_peak_sustained_active"],
                            None, "%"),
        "registers": metric(launch, ["Registers Per Thread", "launch__registers_per_thread"]),
        "waves": metric(launch, ["Waves Per SM", "launch__waves_per_multiprocessor"]),
        "grid": launch["grid"] or fmt_num(metric(launch, ["Grid Size", "launch__grid_size"])),
        "block": launch["block"] or fmt_num(metric(launch, ["Block Size", "launch__block_size"])),
    }


def fmt_num(x, digits=0):
    return "-" if x is None else f"{x:.{digits}f}"


def one_step(launches):
    """The launches of the profiled step: count_batches_kernel opens every step after the first
    (bn_launches_per_step), so launches before the first one are the warm-up step's tail (the
    skip was short: cuDNN launched more kernels per call than counted). Returns (launches, note)."""
    marks = [i for i, l in enumerate(launches) if short_kernel_name(l["name"]) == "count_batches_kernel"]
    if not marks:
        return launches, "no count_batches_kernel among them: the step boundary is unchecked"
    if marks[0] == 0:
        return launches, "the first is count_batches_kernel, as expected: the skip ended at the step boundary"
    return launches[marks[0]:], (f"{marks[0]} launches before the first count_batches_kernel (the warm-up "
                                 "step's tail: more than one kernel per cuDNN call) left out")


def ncu_table(launches):
    """Markdown lines: one row per kernel and launch shape, the largest total duration first."""
    groups = {}
    for l in launches:
        f = launch_figures(l)
        groups.setdefault((short_kernel_name(l["name"]), f["grid"], f["block"]), []).append(f)

    def med(fs, k):
        xs = [f[k] for f in fs if f[k] is not None]
        return statistics.median(xs) if xs else None

    rows = []
    for (name, grid, block), fs in groups.items():
        total = sum(f["us"] for f in fs if f["us"] is not None)
        rows.append((total, name, grid, block, fs))
    rows.sort(key=lambda r: -r[0])
    lines = ["| kernel | grid | block | launches | median us | total us | DRAM % of peak | memory GB/s | "
             "achieved occupancy % | registers/thread | waves/SM |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for total, name, grid, block, fs in rows:
        lines.append(f"| {name} | {grid} | {block} | {len(fs)} | {fmt_num(med(fs, 'us'), 1)} | {fmt_num(total, 1)} | "
                     f"{fmt_num(med(fs, 'dram_pct'), 1)} | {fmt_num(med(fs, 'gbps'))} | "
                     f"{fmt_num(med(fs, 'occupancy'), 1)} | {fmt_num(med(fs, 'registers'))} | "
                     f"{fmt_num(med(fs, 'waves'), 2)} |")
    return lines, rows


def ncu_unavailable(text):
    for line in text.splitlines():
        if any(p in line for p in NCU_UNAVAILABLE):
            return line.strip()
    return None


def phase_ncu(s):
    t0 = time.monotonic()
    deadline = t0 + s.box("ncu")
    if not s.gpu:  # main() says so before the build check; kept here for a direct call
        s.phase_done("ncu", "NOT POSSIBLE", 0, GPU_ONLY["ncu"])
        return True
    ncu, places = find_ncu()
    if not ncu:
        s.phase_done("ncu", "NOT POSSIBLE", time.monotonic() - t0, f"ncu not found (searched {places})")
        return True
    _, version, _ = s.run([ncu, "--version"], "ncu-version.log", min(30.0, deadline - time.monotonic()))
    version = ([l for l in version.splitlines() if l.strip()] or ["?"])[-1].strip()
    label, arch, stem, size, batch, classes = TRAIN_STEPS[0]
    # One warm-up step and one step: the launch count can then only run out at the end of the
    # program, so a generous count costs nothing when the skip is right.
    a = dict(train_step_args(arch, stem, size, batch, classes, True), steps=1, warmup=1)
    per_step = bn_launches_per_step(arch)
    skip, count = per_step - 1, 2 * per_step  # the first step has no count_batches_kernel
    csv_path = os.path.join(s.work, "ncu-bn.csv")
    report = os.path.join(s.work, "ncu-bn.ncu-rep")
    cmd = [ncu, "--clock-control", "none", "-k", "regex:" + NCU_KERNEL_REGEX, "--launch-skip", str(skip),
           "--launch-count", str(count)]
    for section in NCU_SECTIONS:
        cmd += ["--section", section]
    cmd += ["--csv", "--page", "details", "--print-units", "base", "--log-file", csv_path, "--export", report,
            "--force-overwrite"] + train_step_cmd(arch, stem, classes, a, "cuda")
    # TESSERA_KEEP_BLAS_CORE: no OpenBLAS restart (execv) under the profiler; LC_ALL=C: a decimal point.
    rc, text, timed_out = s.run(cmd, "ncu-bn.log", deadline - time.monotonic() - 15,
                                env={"TESSERA_KEEP_BLAS_CORE": "1", "LC_ALL": "C"})
    try:
        csv_text = open(csv_path, errors="replace").read()
    except OSError:
        csv_text = ""
    launches = parse_ncu_csv(csv_text)
    if not launches and os.path.exists(report) and deadline - time.monotonic() > 5:
        # Some versions print nothing while exporting: the same page from the report.
        _, imported, _ = s.run([ncu, "--import", report, "--csv", "--page", "details", "--print-units", "base"],
                               "ncu-bn-import.csv", deadline - time.monotonic(), env={"LC_ALL": "C"})
        launches = parse_ncu_csv(imported)
    what = f"ncu {version}, {' '.join(train_step_cmd(arch, stem, classes, a, 'cuda'))}"
    if not launches:
        refused = ncu_unavailable(csv_text + "\n" + text)
        if refused:
            s.phase_done("ncu", "UNAVAILABLE", time.monotonic() - t0, f"unavailable here: {refused[:200]}")
            return True
        if timed_out:
            s.phase_done("ncu", "INCOMPLETE", time.monotonic() - t0,
                         f"stopped at its time box before ncu wrote results ({what})")
            return True
        errors = [l.strip() for l in (csv_text + "\n" + text).splitlines() if "==ERROR==" in l or "==WARNING==" in l]
        s.phase_done("ncu", "FAIL", time.monotonic() - t0, f"exit code {rc}, no kernel results: "
                     f"{(errors or ['see ncu-bn.log'])[0][:200]}")
        return False
    captured = len(launches)
    launches, note = one_step(launches)
    lines, groups = ncu_table(launches)
    kept = os.path.exists(report) and os.path.getsize(report) <= NCU_REPORT_MAX_BYTES
    head = (f"ncu: batch-norm kernels of one {label} step ({what}; -k regex:{NCU_KERNEL_REGEX}, --launch-skip "
            f"{skip}, --launch-count {count}, sections {','.join(NCU_SECTIONS)}, --clock-control none). "
            f"{captured} launches profiled{' (the count ran out: the step may be cut)' if captured >= count else ''}; "
            f"{note}. Durations are under ncu's replay (caches flushed before each pass). CSV: ncu-bn.csv"
            + ("; report: ncu-bn.ncu-rep" if kept else "") + " in logs.tar.gz.")
    s.facts["ncu"] = {"version": version, "skip": skip, "count": count, "captured": captured,
                      "in_table": len(launches), "note": note}
    s.facts["ncu_table"] = [head, ""] + lines
    for line in [head] + lines:
        s.log("  " + line)
    total, name, grid, block, fs = groups[0]  # the largest group's medians for the row

    def med(k):
        return statistics.median([f[k] for f in fs if f[k] is not None] or [float("nan")])

    s.row(f"ncu {label}: BN kernels of one step", f"{len(launches)} launches, {sum(g[0] for g in groups):.0f} us "
          f"in all; largest: {name} grid {grid} x {len(fs)}, {total:.0f} us, median {med('us'):.1f} us, "
          f"{med('gbps'):.0f} GB/s, DRAM {med('dram_pct'):.0f}% of peak", "", "", "ran (summary.md: ncu table)")
    # Results with the box run out: the table stands, the phase says it was cut.
    s.phase_done("ncu", "INCOMPLETE" if timed_out else "PASS", time.monotonic() - t0,
                 f"{len(launches)} launches in {len(groups)} groups" + (f"; ncu exit code {rc}" if rc else "")
                 + ("" if captured == len(launches) else f"; {note}"))
    return True


def torch_python():
    """A python3 that imports torch: this one, /opt/torch/.venv's, or the system's."""
    for py in [sys.executable, "/opt/torch/.venv/bin/python3", shutil.which("python3"), "/usr/bin/python3"]:
        if py and os.path.exists(py):
            try:
                if subprocess.run([py, "-c", "import torch, torchvision"], capture_output=True, timeout=60).returncode == 0:
                    return py
            except subprocess.TimeoutExpired:
                continue
    return None


def phase_torch(s):
    t0 = time.monotonic()
    deadline = t0 + s.box("torch")
    py = torch_python()
    if not py:
        for label, *_ in TRAIN_STEPS:
            if label in s.row_index:
                r = s.rows[s.row_index[label]]
                r[2], r[4] = "not possible here", r[4] + "; no python3 here imports torch + torchvision"
        s.phase_done("torch", "NOT POSSIBLE", time.monotonic() - t0,
                     "no python3 here imports torch and torchvision (tried this one, /opt/torch/.venv, /usr/bin)")
        return True
    # The eager modes of both train steps first, then torch.compile with whatever time is left
    # (compiling a training step takes 40-90 s: it is the first thing to give up).
    ok, boxed = True, False
    passes = [(("fp32", "tf32", "bf16-cl"), step) for step in TRAIN_STEPS] + [(("compile",), step) for step in TRAIN_STEPS]
    for i, (modes_wanted, (label, arch, stem, size, batch, classes)) in enumerate(passes):
        a = train_step_args(arch, stem, size, batch, classes, s.gpu)
        left = deadline - time.monotonic()
        compiling = modes_wanted == ("compile",)
        eager_left = sum(1 for m, _ in passes[i:] if m != ("compile",))
        share = left / eager_left if eager_left else left
        if compiling and left < 20:
            s.row(f"{label}: torch compile", "", "not run", "", f"{left:.0f} s left of the torch box: no time to compile")
            continue
        cmd = [py, "bench/torch_gpu_train_step.py", "--arch", arch, "--stem", stem, "--size", str(a["size"]),
               "--batch", str(a["batch"]), "--num-classes", str(classes), "--steps", str(a["steps"]), "--warmup",
               str(a["warmup"]), "--device", "cuda" if s.gpu else "cpu", "--modes", ",".join(modes_wanted),
               "--compile-timeout", f"{max(10.0, share - 15):.0f}"]
        rc, text, to = s.run(cmd, f"torch-{arch}-{'compile' if compiling else 'eager'}.log", share)
        j = last_json(text) or {}
        s.facts.setdefault("torch", {}).setdefault(label, {}).update(j.get("modes", {}))
        modes = j.get("modes", {})
        engine_ms, _ = fmt_engine(s, label)
        for mode in ("tf32", "fp32", "bf16-cl", "compile"):
            if mode not in modes_wanted:
                continue
            m = modes.get(mode)
            if m is None:
                torch_text, ratio, note = "not run", "", "time box" if to else (j.get("error") or f"exit code {rc}")
            elif "error" in m:
                torch_text, ratio, note = "not measured", "", m["error"][:120]
            else:
                torch_text = f"{m['ms_per_step']:.2f} ms ({mode})"
                ratio = f"{engine_ms / m['ms_per_step']:.2f}" if engine_ms else ""
                note = "ran" + (f" (first step {m['first_step_s']} s)" if "first_step_s" in m else "")
            if mode == "tf32" and label in s.row_index:  # the engine's default math beside PyTorch's tf32
                r = s.rows[s.row_index[label]]
                r[2], r[3] = torch_text, ratio
                r[4] += f"; torch {note}"
            else:
                s.row(f"{label}: torch {mode}", "", torch_text, ratio, note)
        if not compiling:
            # An eager mode that cannot run is a failure; one stopped by the box is not; a
            # compile that does not fit is neither.
            if to:
                boxed = True
            elif rc != 0 or any(m not in modes or "error" in modes[m] for m in modes_wanted):
                ok = False
    s.phase_done("torch", "FAIL" if not ok else "INCOMPLETE" if boxed else "PASS", time.monotonic() - t0, f"{py}")
    return ok


def fmt_engine(s, label):
    r = (s.facts.get("bench", {}).get(label) or {}).get("result")
    if not r:
        return None, "not measured"
    return r["ms_per_step"], f"{r['ms_per_step']:.2f} ms ({r['images_per_s']:.0f} img/s, ws {r['workspace_high_water_bytes'] / 2**20:.0f} MiB)"


def write_idx_data(folder, train, test, seed=0):
    """28 x 28 grey images in IDX files (the Fashion-MNIST file names): class k is a stripe
    pattern of its own (frequency and direction), shifted at random, with noise."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    templates = []
    for k in range(10):
        period, vertical = 3 + k // 2, k % 2
        img = bytearray(56 * 56)
        for y in range(56):
            for x in range(56):
                t = (x if vertical else y) + (y if k >= 6 else 0)
                img[y * 56 + x] = 200 if (t // period) % 2 else 30
        templates.append(bytes(img))
    for prefix, n in (("train", train), ("t10k", test)):
        labels = bytes(i % 10 for i in range(n))
        pixels = bytearray()
        for i in range(n):
            t = templates[labels[i]]
            dx, dy = rng.randrange(28), rng.randrange(28)
            for y in range(28):
                pixels += t[(y + dy) * 56 + dx:(y + dy) * 56 + dx + 28]
        noise = rng.randbytes(len(pixels))
        pixels = bytes((p + (q & 31)) & 255 if p < 200 else p - (q & 31) for p, q in zip(pixels, noise))
        with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + pixels)
        with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels)


def program_events(run_dir):
    events = []
    try:
        for line in open(os.path.join(run_dir, "metrics.jsonl")):
            events.append(json.loads(line))
    except (OSError, ValueError):
        pass
    return events


def phase_programs(s):
    t0 = time.monotonic()
    deadline = t0 + s.box("programs")
    # Fashion-MNIST where it is installed (Debian's dataset-fashion-mnist, here or unpacked from a
    # bundle that has it), else generated images in its file format.
    installed = [d for d in ("/usr/share/datasets/fashion-mnist",
                             os.path.join(ROOT, "build/gpu-bundle-root/usr/share/datasets/fashion-mnist"))
                 if os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz"))]
    data = installed[0] if installed else os.path.join(s.work, "data")
    if not installed:
        write_idx_data(data, 6000, 1000)
    data_name = "Fashion-MNIST" if installed else "generated 28 px data"
    # The recipe's warm-up (0.2 epochs) must be shorter than the run: a tenth of it, whatever the data's size.
    train_images = 60000 if installed else 6000
    steps = s.args.program_steps or (300 if s.gpu else 20)
    warmup_epochs = 0.1 * steps * 128 / train_images
    device = "cuda" if s.gpu else "cpu"
    runs = {
        "byol": ["build/byol", "--config", "configs/byol-fashion-mnist-cpu.conf", "--eval-baseline=false",
                 "--warmup-epochs", f"{warmup_epochs:.5f}",
                 "--eval-train-limit", "2000", "--probe-epochs", "5", "--save-every", str(steps), "--log-every", "10"],
        "fixmatch": ["build/fixmatch", "--config", "configs/fixmatch-fashion-mnist-cpu.conf", "--eval-every", "0",
                     "--save-every", str(steps), "--log-every", "10"],
    }
    ok, boxed = True, False
    for i, (name, cmd) in enumerate(runs.items()):
        run_dir = os.path.join(s.work, name)
        cmd = cmd + ["--data", f"fashion-mnist:{data}", "--steps", str(steps), "--device", device, "--out", run_dir]
        share = (deadline - time.monotonic()) / (len(runs) - i)
        t = time.monotonic()
        rc, text, to = s.run(cmd, f"{name}.log", share)
        wall = time.monotonic() - t
        events = program_events(run_dir)
        # byol logs "loss", fixmatch "sup_loss" and "unsup_loss"; a non-finite one is written as null
        train = [e for e in events if e.get("event") == "train"]
        loss_keys = sorted({k for e in train for k in e if k == "loss" or k.endswith("_loss")})
        losses = [e.get(k) for e in train for k in loss_keys]
        finite = bool(losses) and all(isinstance(x, (int, float)) for x in losses)
        last_losses = ", ".join(f"{k} {train[-1].get(k)}" for k in loss_keys) if train else "?"
        last_step = max((e.get("step", 0) for e in events), default=0)
        rates = [e["images_per_s"] for e in events if isinstance(e.get("images_per_s"), (int, float))]
        tail = [l for l in text.strip().splitlines() if l.strip()][-1:] or [""]
        passed = rc == 0 and finite and last_step >= steps
        ok &= passed or to
        boxed |= to
        check = "PASS" if passed else ("time box" if to else f"FAIL: exit code {rc}, last step {last_step}, "
                                                            f"losses {'finite' if finite else 'not all finite'}")
        figure = (f"{steps} steps in {wall:.0f} s" + (f", {sorted(rates)[len(rates) // 2]:.0f} img/s" if rates else "")
                  if passed else f"stopped at step {last_step} of {steps}")
        s.row(f"{name} {steps} steps on {device} ({data_name})", figure, "-", "-",
                       f"{check}; last {last_losses}; {tail[0][:120]}")
    s.phase_done("programs", "FAIL" if not ok else "INCOMPLETE" if boxed else "PASS", time.monotonic() - t0,
                 f"{steps} steps each on {device}" + ("" if s.gpu else " (rehearsal: 300 on the GPU)"))
    return ok


def phase_memcheck(s):
    t0 = time.monotonic()
    _, summary, timed_out = gpu_check(s, "memcheck", s.box("memcheck"), "check-memcheck", ["--no-build"])
    p = summary.get("phases", {}).get("memcheck", {})
    s.row("gpu-check memcheck", p.get("status", "INCOMPLETE" if timed_out else "FAIL"), "", "",
                   p.get("detail", "")[:200])
    s.phase_done("memcheck", p.get("status", "INCOMPLETE" if timed_out else "FAIL"), time.monotonic() - t0,
                 p.get("detail", "")[:160])


def self_test():
    """--self-test: the ncu parser and table on made-up output in ncu's --csv --page details
    format (2025.x columns, with the rule columns), and on a shorter header of raw metric names."""
    head = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
            '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value","Rule Name","Rule Type",'
            '"Rule Description","Estimated Speedup Type","Estimated Speedup"')
    bw = "void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>(float, float, float, const float *)"
    fw = "void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, 512, true, 1>(cudnnTensorStruct, const float *)"
    count = "kernels::cuda::(anonymous namespace)::count_batches_kernel(kernels::BatchCounters)"

    def row(i, kernel, grid, block, section, name, unit, value):
        return (f'"{i}","4242","bench","127.0.0.1","{kernel}","1","7","{block}","{grid}","0","9.0","{section}",'
                f'"{name}","{unit}","{value}",')

    sol, mwa, ls, occ = "GPU Speed Of Light Throughput", "Memory Workload Analysis", "Launch Statistics", "Occupancy"
    g64, g128, g1, b512, b64 = "(64, 1, 1)", "(128, 1, 1)", "(1, 1, 1)", "(512, 1, 1)", "(64, 1, 1)"
    lines = ["==PROF== Connected to process 4242 (/work/main/build/bench)",
             '==PROF== Profiling "bn_bw_1C11_kernel_new" - 0: 0%....50%....100% - 9 passes', head,
             row(0, bw, g64, b512, sol, "Duration", "ns", "300,000"),  # the warm-up step's tail
             row(1, count, g1, b64, sol, "Duration", "ns", "2,048"),
             row(1, count, g1, b64, ls, "Registers Per Thread", "register/thread", "16")]
    two = [(2, "98,304", "ns", "20.10", "889,123,456,789", "byte/s", "48.5"),
           (3, "101.5", "us", "22.30", "871.2", "Gbyte/s", "49.5")]
    for i, us, unit, dram, rate, rate_unit, occupancy in two:
        lines += [row(i, bw, g64, b512, sol, "DRAM Frequency", "hz", "3,201,000,000"),
                  row(i, bw, g64, b512, sol, "Memory Throughput", "%", "35.00"),  # a percentage: not GB/s
                  row(i, bw, g64, b512, sol, "DRAM Throughput", "%", dram),
                  row(i, bw, g64, b512, sol, "Duration", unit, us),
                  row(i, bw, g64, b512, "SpeedOfLight", "", "", "") + '"SOLBottleneck","OPT","Low throughput:\nsee '
                  'the memory sections.","",""',
                  row(i, bw, g64, b512, mwa, "Memory Throughput", rate_unit, rate),
                  row(i, bw, g64, b512, mwa, "L2 Hit Rate", "%", "n/a"),
                  row(i, bw, g64, b512, ls, "Registers Per Thread", "register/thread", "40"),
                  row(i, bw, g64, b512, ls, "Waves Per SM", "", "0.12"),
                  row(i, bw, g64, b512, occ, "Achieved Occupancy", "%", occupancy)]
    lines += [row(4, fw, g64, b512, sol, "Duration", "usecond", "50.0"),  # no memory section at all
              row(4, fw, g64, b512, occ, "Achieved Occupancy", "%", "60"),
              row(5, fw, g128, b512, sol, "Duration", "usecond", "26.0"),
              "==PROF== Disconnected from process 4242"]
    failures, checks = [], 0

    def check(ok, what):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    launches = parse_ncu_csv("\n".join(lines))
    check([l["id"] for l in launches] == ["0", "1", "2", "3", "4", "5"], f"launch ids {[l['id'] for l in launches]}")
    check(all(m[1] for l in launches for m in l["metrics"]), "a rule row was read as a metric")
    step, note = one_step(launches)
    check(len(step) == 5 and "1 launches before" in note, f"one_step: {len(step)} kept, {note}")
    lines_md, groups = ncu_table(step)
    by = {(g[1], g[2]): g for g in groups}
    check(groups[0][1] == "bn_bw_1C11_kernel_new", f"largest group {groups[0][1]}")
    f = {k: statistics.median([x[k] for x in by[("bn_bw_1C11_kernel_new", g64)][4] if x[k] is not None])
         for k in ("us", "dram_pct", "gbps", "occupancy", "registers", "waves")}
    check(abs(f["us"] - 99.902) < 1e-6, f"median duration {f['us']}")
    check(abs(f["gbps"] - 880.1617) < 1e-3, f"median GB/s {f['gbps']} (the % of the SOL section must not count)")
    check(abs(f["dram_pct"] - 21.2) < 1e-9 and f["occupancy"] == 49.0 and f["registers"] == 40 and f["waves"] == 0.12,
          f"figures {f}")
    fw_row = next(l for l in lines_md if l.startswith(f"| bn_fw_tr_1C11_kernel_NCHW | {g64} "))
    check(fw_row.split(" | ")[7] == "-", f"a missing metric is '-': {fw_row}")
    check(("bn_fw_tr_1C11_kernel_NCHW", g128) in by and ("count_batches_kernel", g1) in by, f"groups {list(by)}")
    # A shorter header (older versions, or --metrics): columns found by name, raw metric names.
    short = ['"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"',
             f'"0","{bw}","gpu__time_duration.sum","nsecond","1,205"',
             f'"0","{bw}","launch__grid_size","","64"', f'"0","{bw}","launch__block_size","","512"',
             f'"0","{bw}","dram__bytes.sum.per_second","Tbyte/s","0.88"']
    fig = launch_figures(parse_ncu_csv("\n".join(short))[0])
    check(abs(fig["us"] - 1.205) < 1e-9 and abs(fig["gbps"] - 880) < 1e-6 and fig["grid"] == "64"
          and fig["block"] == "512", f"short header: {fig}")
    check(parse_ncu_csv("==PROF== nothing profiled\n") == [], "no header: no launches")
    for text, want in [("1,234.5", 1234.5), ("9,25", 9.25), ("n/a", None), ("12", 12.0), ("1,205,000", 1205000.0),
                       ("", None)]:
        check(ncu_number(text) == want, f"ncu_number({text!r}) = {ncu_number(text)}, expected {want}")
    for name, want in [(bw, "bn_bw_1C11_kernel_new"), (count, "count_batches_kernel"), ("bn_bw_1C11_singleread",
                                                                                        "bn_bw_1C11_singleread")]:
        check(short_kernel_name(name) == want, f"short_kernel_name({name!r}) = {short_kernel_name(name)}")
    check(bn_launches_per_step("resnet18") == 77, f"resnet18 launches per step {bn_launches_per_step('resnet18')}")
    # The build's box: its share, but never under 60% of a small budget (at most its nominal 180 s).
    fake = types.SimpleNamespace(args=types.SimpleNamespace(budget=190.0), saved=0.0, left=lambda: 190.0,
                                 order=["build", "check", "bench", "ncu", "programs", "memcheck"])
    check(abs(Session.box(fake, "build") - 114.0) < 1e-6, f"build box at --budget 190: {Session.box(fake, 'build')}")
    fake.args.budget, fake.left = 540.0, lambda: 540.0
    check(abs(Session.box(fake, "build") - 180.0) < 1e-6,  # its nominal, over its 170 s share
          f"build box at 540: {Session.box(fake, 'build')}")
    # The batch-norm variants: one row per train step and variant, the ratio to the default step.
    rows, envs = [], []
    default = {"ms_per_step": 16.0, "images_per_s": 1.0, "workspace_high_water_bytes": 2**20}
    bench = types.SimpleNamespace(
        facts={"bench": {label: {"result": default} for label, *_ in TRAIN_STEPS}},
        row=lambda *r: rows.append(r),
        run=lambda cmd, log, secs, env=None: envs.append(env) or (0, '{"ms_per_step": 12.0, "images_per_s": 2}', False))
    check(bench_bn_variants(bench, time.monotonic() + 60) == (True, False), "variants not all measured")
    check(len(rows) == len(TRAIN_STEPS) * len(BN_VARIANTS) and all(r[3] == "0.750 x the default step" for r in rows),
          f"variant rows {rows}")
    check(envs[:2] == [{"TESSERA_BN_BACKWARD": "cudnn"}, {"TESSERA_BN_FORWARD": "tessera"}], f"variant env {envs}")
    check(ncu_unavailable("==PROF== x\n==ERROR== Failed to initialize the profiler: LibraryNotLoaded\n")
          == "==ERROR== Failed to initialize the profiler: LibraryNotLoaded", "gVisor's refusal not recognised")
    check(ncu_unavailable("==ERROR== The application returned an error code (1).") is None,
          "the program's error read as a refusal")
    versions = ["/opt/nvidia/nsight-compute/2024.3.2/ncu", "/opt/nvidia/nsight-compute/2025.3.1/ncu",
                "/opt/nvidia/nsight-compute/2025.10.0/ncu"]
    check(sorted(versions, key=version_key, reverse=True)[0].endswith("2025.10.0/ncu"), "newest ncu not first")
    big = tarfile.TarInfo("gpu-session/ncu-bn.ncu-rep")
    big.size = NCU_REPORT_MAX_BYTES + 1
    check(tar_filter(big) is None, "a large report went into the tarball")
    print("\n".join(lines_md))
    for what in failures:
        print(f"self-test FAILED: {what}")
    print(f"gpu-session self-test: {checks - len(failures)} of {checks} checks passed")
    return 1 if failures else 0


def source_commit():
    """The commit of the tree. Where git's HEAD and the tree agree, HEAD. The device tool's copy
    of a working tree can carry a .git whose HEAD is an older commit with the newer files on
    top (seen on the H200 on 2026-12-04: HEAD said 2bf9db3 under 7a4b5c6's files), so a tree
    that differs from HEAD takes the commit `make gpu-bundle` wrote into .gpu-bundle/COMMIT
    (with +changes when tracked files differed from it then); the same where .git did not
    travel."""
    head, dirty = None, False
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            head = r.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=ROOT, timeout=30)
            dirty = st.returncode != 0 or bool(st.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    if head and not dirty:
        return head
    try:
        bundle = open(os.path.join(ROOT, ".gpu-bundle", "COMMIT")).read().strip()
        return bundle + (f" (from .gpu-bundle/COMMIT; git's HEAD here, {head}, differs from the tree)" if head
                         else " (from .gpu-bundle/COMMIT)")
    except OSError:
        return f"{head}+changes" if head else "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", help="results folder (what the device call brings back); required but with --self-test")
    p.add_argument("--work", default=os.path.join(ROOT, "build/gpu-session"), help="work files (build/gpu-session)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for the whole session (540 with a GPU; 1800 rehearsing: two CPU cores run the suite in ~5 min)")
    p.add_argument("--phases", default=",".join(x for x in PHASES if x != "build" and x not in NOT_DEFAULT),
                   help="comma-separated subset of check,bench,ncu,torch,programs,memcheck (build always runs; "
                        "ncu only when named)")
    p.add_argument("--no-build", action="store_true", help="use build/ as it is (versions are still probed)")
    p.add_argument("--program-steps", type=int, default=0, help="byol / fixmatch steps (300 on a GPU, 20 rehearsing)")
    p.add_argument("--no-twins-stand-in", action="store_true",
                   help="rehearsing: leave the twins' GPU halves skipped (by default the CPU stands in for the GPU)")
    p.add_argument("--self-test", action="store_true", help="check the ncu CSV parser on a made-up CSV and exit")
    args = p.parse_args()
    if args.self_test:
        return self_test()
    if not args.out:
        p.error("--out is required")
    wanted = [x for x in args.phases.split(",") if x]
    bad = [x for x in wanted if x not in PHASES]
    if bad:
        p.error(f"--phases: expected a subset of {','.join(PHASES)}, found {','.join(bad)}")
    try:
        rc_smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        rc_smi = None
    gpu = bool(rc_smi and rc_smi.returncode == 0 and "GPU " in rc_smi.stdout)
    args.budget = args.budget or (540 if gpu else 1800)
    s = Session(args)
    s.gpu = gpu
    s.facts["commit"] = source_commit()
    s.log(f"gpu-session: {'GPU: ' + rc_smi.stdout.strip() if s.gpu else 'no GPU here: REHEARSAL on the CPU'}; "
          f"budget {args.budget:.0f} s; commit {s.facts['commit']}; results in {s.out}")

    order = ["build"] + [x for x in PHASES if x in wanted and x != "build"]
    s.order = order
    runners = {"build": phase_build, "check": phase_check, "bench": phase_bench, "ncu": phase_ncu,
               "torch": phase_torch, "programs": phase_programs, "memcheck": phase_memcheck}
    built = True
    for name in order:
        if name in GPU_ONLY and not s.gpu:
            s.phase_done(name, "NOT POSSIBLE", 0, GPU_ONLY[name])
            continue
        if s.left() < 5:
            s.phase_done(name, "INCOMPLETE", 0, "not started: the budget was spent")
            continue
        if not built and name != "torch":
            s.phase_done(name, "NOT RUN", 0, "the build did not succeed")
            continue
        t0 = time.monotonic()
        planned = s.box(name)
        s.log(f"== {name} (time box {planned:.0f} s, {s.left():.0f} s left)")
        result = runners[name](s)
        if name == "build":
            built = result
        s.saved = max(0.0, planned - (time.monotonic() - t0))
    # memcheck stopped by its box covered what fitted (its row says so): not an incomplete run.
    statuses = [p["status"] for n, p in s.phases.items() if not (n == "memcheck" and p["status"] == "INCOMPLETE")]
    exit_code = (1 if "FAIL" in statuses else 4 if "INCOMPLETE" in statuses else 0 if s.gpu else 3)
    s.facts["exit_code"] = exit_code
    s.save()
    s.log("")
    s.log(s.markdown())
    s.log(f"gpu-session: exit code {exit_code} ({'REHEARSAL, no GPU' if not s.gpu else 'GPU run'}); "
          f"{time.monotonic() - s.start:.0f} s of {args.budget:.0f}; results in {s.out}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
