#!/usr/bin/env python3
"""gpu-check: the test suite on a real GPU, built so that it cannot report a false PASS.

    python3 tests/gpu_check.py [--out DIR] [--phases probe,build,suite,twins,memcheck]
                               [--no-build] [--tests-bin PATH] [--rehearse] [--budget S]
    make gpu-check [GPU_CHECK_ARGS='...']

Phases, each time-boxed; every finding is written to --out (default build/gpu-check) as it
comes: one log per phase, summary.json and summary.md rewritten after each phase, so a run
killed at its limit still leaves what it had learned.

  probe     nvidia-smi (GPU, driver) and the CUDA libraries themselves (runtime, driver API,
            cuDNN, cuBLAS versions; whether a CUDA context can be created, and if not why),
            loaded in a child process with ctypes: the libraries the test binary links when
            it exists (ldd), else those found where the Makefile looks for them.
  build     `make CUDA=1 cuda-config`, then `make CUDA=1 WERROR=0 all` (DEPS_PREFIX: .gpu-bundle/*.deb
            unpacked into build/gpu-bundle-root; CUDA_ARCHS for the listed GPU only; compiler
            warnings counted, not fatal); then the libraries the built binary loads.
  suite     the GoogleTest suite without the twins (4 parallel shards with 12 or more cores).
  twins     Twins.* (tests/twins_test.cpp): whole training steps, CPU against GPU; with 12 or
            more cores they run beside the suite's shards.
  memcheck  CUDA tests under compute-sanitizer memcheck; a sanitizer the runtime refuses
            (gVisor: "Device not supported") is UNAVAILABLE with its message, not a failure.

Where `nvidia-smi -L` lists a GPU, a skipped GPU test is a FAIL, and so is a suite in which no
GPU test passed. Exit codes: 0 PASS, 1 FAIL, 3 no GPU here, 4 incomplete (a phase ran out of
time, nothing failed). --rehearse runs every phase on a machine without a GPU, GPU skips
expected (status CPU-ONLY); its exit code is still 3 unless something failed (1) or ran out of
time (4): a rehearsal is never a GPU pass. Standard library only.
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE_ROOT = os.path.join(ROOT, "build", "gpu-bundle-root")  # where .gpu-bundle/*.deb are unpacked
ALL_PHASES = ["probe", "build", "suite", "twins", "memcheck"]
# Time boxes in seconds, sized for the lent GPU machine (16 cores; docs/gpu-log.md).
DEFAULT_BOX = {"probe": 40, "build": 300, "suite": 180, "twins": 120, "memcheck": 120}
# The CUDA tests memcheck runs: every test named Cuda but whole programs (memcheck slows kernels
# 10-100x), the deliberate out-of-range trap (AugmentBoundsCuda: its child would be reported) and
# the profiler's timing test (timings under the sanitizer mean nothing).
DEFAULT_MEMCHECK_FILTER = "*Cuda*-Twins.*:CudaRuns.*:AugmentBoundsCuda.*:Profile.*:GpuCheck.*"

EXIT_PASS, EXIT_FAIL, EXIT_NO_GPU, EXIT_INCOMPLETE = 0, 1, 3, 4

# Statuses of a phase.
PASS, FAIL, INCOMPLETE, UNAVAILABLE, NOT_RUN, CPU_ONLY, NO_GPU = (
    "PASS", "FAIL", "INCOMPLETE", "UNAVAILABLE", "NOT RUN", "CPU-ONLY", "NO GPU")

# A test is a GPU test when its name or its skip message says so. Names say "Cuda" (BackendOpsCuda,
# TeacherCuda, Twins.ByolCudaRun...); "Gpu" is not one of them: GpuCheck.* tests this checker.
GPU_NAME = re.compile(r"cuda", re.I)
GPU_MESSAGE = re.compile(r"cuda|cudnn|cublas|curand|\bgpu\b|nvidia", re.I)

# What compute-sanitizer prints when the runtime refuses it (seen on gVisor: "Device not
# supported", then error 999 at the first allocation).
SANITIZER_REFUSED = re.compile(
    r"^=+ ?(?:Error: )?(.*(?:Device not supported|not supported on this|Unable to|Failed to (?:initiali[sz]e|connect|launch|create)|"
    r"No supported devices|could not be started|Target application terminated before first instrumented API call).*)$",
    re.I | re.M)


def log(msg=""):
    print(msg, flush=True)


# ---- running things within a time box ---------------------------------------------------------

class Boxed:
    """One child process in its own session, its output in a file, killed with its whole
    process group when its deadline passes, or when this checker is itself stopped (SIGTERM
    from gpu-session's time box: see on_sigterm)."""

    running = []  # every Boxed started and not yet waited for

    def __init__(self, cmd, log_path, env=None, cwd=ROOT):
        self.log_path = log_path
        self.start = time.monotonic()
        self.out = open(log_path, "wb")
        self.out.write(("$ " + " ".join(cmd) + "\n").encode())
        self.out.flush()
        try:
            self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                         start_new_session=True)
            self.error = None
            Boxed.running.append(self)
        except OSError as e:
            self.proc, self.error = None, str(e)
        self.rc, self.timed_out, self.seconds = None, False, 0.0

    def wait(self, deadline):
        if self.proc is None:
            self.rc = 127
        else:
            try:
                self.rc = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.timed_out = True
                self.kill()
        self.seconds = time.monotonic() - self.start
        self.out.close()
        if self in Boxed.running:
            Boxed.running.remove(self)
        return self

    def kill(self):
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.rc = self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue


def on_sigterm(signum, frame):
    """Stopped from outside: the children run in sessions of their own, so they would outlive
    this process (and keep the GPU busy during the next phase): end them first."""
    for b in list(Boxed.running):
        if b.proc is not None and b.proc.poll() is None:
            try:
                os.killpg(b.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log("gpu-check: stopped from outside (SIGTERM); its children were ended")
    sys.exit(EXIT_INCOMPLETE)


def run_boxed(cmd, log_path, seconds, env=None):
    return Boxed(cmd, log_path, env).wait(time.monotonic() + seconds)


def capture(cmd, seconds=20, env=None):
    """(rc, stdout+stderr) of a short command; rc None when it could not run or timed out."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, env=env, errors="replace")
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---- the results folder ------------------------------------------------------------------------

class Results:
    def __init__(self, out):
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.data = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": {},
                     "gpu_listed": False, "rehearsal": False, "phases": {}, "tests": {}}
        self.save()

    def phase(self, name, status, seconds, detail, **extra):
        self.data["phases"][name] = dict(status=status, seconds=round(seconds, 1), detail=detail, **extra)
        self.save()
        log(f"gpu-check: {name}: {status} ({seconds:.0f} s) {detail}")

    def path(self, name):
        return os.path.join(self.out, name)

    def save(self):
        self._write("summary.json", json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        self._write("summary.md", self.markdown())

    def _write(self, name, text):
        tmp = self.path(name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path(name))

    def markdown(self):
        d = self.data
        lines = ["# gpu-check", ""]
        lines += [f"- {line}" for line in d.get("version_lines", [])]
        lines += ["", "| phase | status | seconds | detail |", "|---|---|---|---|"]
        for name, p in d["phases"].items():
            lines.append(f"| {name} | {p['status']} | {p['seconds']} | {p['detail']} |")
        if "census_line" in d:
            lines += ["", d["census_line"]]
        for phase, suites in d["tests"].items():
            lines += ["", f"## {phase}: tests by suite", "", "| suite | passed | failed | skipped | GPU skips |",
                      "|---|---|---|---|---|"]
            for s, c in sorted(suites.items()):
                lines.append(f"| {s} | {c['passed']} | {c['failed']} | {c['skipped']} | {c['gpu_skipped']} |")
        if "verdict" in d:
            lines += ["", f"**{d['verdict']}** (exit code {d['exit_code']})"]
        return "\n".join(lines) + "\n"


# ---- probe: nvidia-smi and the CUDA libraries ------------------------------------------------

def nvidia_smi_info():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"listed": False, "why": "nvidia-smi not found on PATH"}
    rc, text = capture([smi, "-L"])
    gpus = [line for line in text.splitlines() if line.startswith("GPU ")]
    info = {"path": smi, "list": gpus, "listed": bool(gpus)}
    if not gpus:
        info["why"] = f"`nvidia-smi -L` lists no GPU (exit code {rc}: {text.splitlines()[0] if text else 'no output'})"
        return info
    rc, text = capture([smi, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    if rc == 0 and text:
        fields = [f.strip() for f in text.splitlines()[0].split(",")]
        for key, value in zip(["name", "driver", "memory", "compute_cap"], fields):
            info[key] = value
    rc, text = capture([smi])
    m = re.search(r"CUDA Version:\s*([\d.]+)", text or "")
    if m:
        info["driver_cuda"] = m.group(1)
    return info


def ldd_libraries(binary):
    """{stem: path or None (not found)} for the CUDA libraries `binary` links, and "missing": every
    library the loader cannot find (the binary would not start)."""
    ldd = shutil.which("ldd")
    if not ldd or not os.path.exists(binary):
        return None
    rc, text = capture([ldd, binary])
    if rc != 0:
        return None
    found = {"missing": re.findall(r"^\s*(\S+)\s*=>\s*not found", text, re.M)}
    for line in text.splitlines():
        m = re.match(r"\s*(lib(cudart|cudnn|cublas|curand|nccl)\.so[.\d]*)\s*=>\s*(\S+)", line)
        if m:
            found[m.group(2)] = None if m.group(3) == "not" else m.group(3)
            found[m.group(2) + "_soname"] = m.group(1)
    return found


def wheel_lib_dirs():
    """Library folders of the NVIDIA pip wheels (CUDA 13: nvidia/cu13/lib; cuDNN: nvidia/cudnn/lib;
    CUDA 12 style: nvidia/<name>/lib), in the Python environments the Makefile also searches."""
    roots = glob.glob("/opt/torch/.venv/lib/python3*/site-packages/nvidia")
    roots += [os.path.join(p, "nvidia") for p in sys.path if p]
    dirs = []
    for r in roots:
        for sub in ("cu13", "cudnn", "cublas", "curand", "cuda_runtime", "nccl"):
            d = os.path.join(r, sub, "lib")
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def search_libraries():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    dirs = [os.path.join(cuda_home, "lib64"), "/usr/local/cuda/lib64"] + wheel_lib_dirs() + ["/usr/lib/x86_64-linux-gnu"]
    found = {}
    for stem in ("cudart", "cudnn", "cublas", "curand"):
        for d in dirs:
            hits = sorted(glob.glob(os.path.join(d, f"lib{stem}.so.[0-9]*")), key=len)
            if hits:
                found[stem] = hits[0]
                break
    found["searched"] = dirs
    return found


# Runs in a child process (a hung driver must not hang the checker): loads the libraries with
# ctypes and prints one JSON object.
PROBE_CHILD = r"""
import ctypes, json, sys
paths = json.loads(sys.argv[1])
out = {}
def load(stem):
    p = paths.get(stem)
    if not p:
        out[stem + "_error"] = "not found"
        return None
    try:
        return ctypes.CDLL(p)
    except OSError as e:
        out[stem + "_error"] = str(e)
        return None
def ver(v, scale):  # 13000 -> 13.0 (runtime, driver); 91900 -> 9.19.0 (cuDNN 9)
    if scale == 1000:
        return "%d.%d" % (v // 1000, (v % 1000) // 10)
    return "%d.%d.%d" % (v // 10000, (v % 10000) // 100, v % 100)
rt = load("cudart")
if rt:
    v = ctypes.c_int(0)
    rt.cudaGetErrorName.restype = ctypes.c_char_p
    rt.cudaGetErrorString.restype = ctypes.c_char_p
    def err(e):
        return "%s (%d): %s" % (rt.cudaGetErrorName(e).decode(), e, rt.cudaGetErrorString(e).decode())
    if rt.cudaRuntimeGetVersion(ctypes.byref(v)) == 0:
        out["runtime"] = ver(v.value, 1000)
    if rt.cudaDriverGetVersion(ctypes.byref(v)) == 0:
        out["driver_api"] = ver(v.value, 1000) if v.value else "none (no driver loaded)"
    n = ctypes.c_int(0)
    e = rt.cudaGetDeviceCount(ctypes.byref(n))
    if e != 0:
        out["init_error"] = err(e)
    elif n.value == 0:
        out["init_error"] = "cudaGetDeviceCount found 0 devices"
    else:
        out["devices"] = n.value
        e = rt.cudaSetDevice(0)
        if e == 0:
            e = rt.cudaFree(None)  # creates the context: what the first real call would do
        if e != 0:
            out["init_error"] = "creating a context on device 0: " + err(e)
dnn = load("cudnn")
if dnn:
    dnn.cudnnGetVersion.restype = ctypes.c_size_t
    out["cudnn"] = ver(dnn.cudnnGetVersion(), 10000)
blas = load("cublas")
if blas:
    parts = []
    for prop in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        v = ctypes.c_int(0)
        blas.cublasGetProperty(prop, ctypes.byref(v))
        parts.append(str(v.value))
    out["cublas"] = ".".join(parts)
print(json.dumps(out))
"""


def probe_libraries(paths, seconds):
    rc, text = capture([sys.executable, "-c", PROBE_CHILD, json.dumps(paths)], seconds)
    if rc is None:
        return {"init_error": f"the library probe did not finish in {seconds} s: {text}"}
    try:
        return json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        return {"init_error": f"the library probe failed (exit code {rc}): {text[-400:]}"}


def library_lines(paths, got, origin):
    def one(label, stem, key):
        where = paths.get(stem)
        if key in got:
            return f"{label} {got[key]} ({where})"
        return f"{label} unknown ({got.get(stem + '_error', 'not found')})"
    return [f"gpu-check: libraries ({origin}): " + ", ".join([
        one("CUDA runtime", "cudart", "runtime"), one("cuDNN", "cudnn", "cudnn"), one("cuBLAS", "cublas", "cublas")])]


def probe(args, res, seconds):
    """Versions first; returns whether nvidia-smi lists a GPU."""
    t0 = time.monotonic()
    smi = nvidia_smi_info()
    res.data["nvidia_smi"] = smi
    lines = []
    if smi["listed"]:
        lines.append(f"gpu-check: GPU {smi.get('name', '?')} ({smi.get('memory', '?')}, compute "
                     f"{smi.get('compute_cap', '?')}); driver {smi.get('driver', '?')} (supports CUDA "
                     f"{smi.get('driver_cuda', '?')}); {len(smi['list'])} listed by nvidia-smi -L")
    else:
        lines.append(f"gpu-check: no GPU here: {smi['why']}")
    libs = ldd_libraries(args.tests_bin)
    if libs and libs.get("cudart"):
        paths, origin = libs, f"linked by {os.path.relpath(args.tests_bin, ROOT)}"
    else:
        paths = search_libraries()
        origin = ("found by search; the test binary links no CUDA runtime" if libs is not None
                  else "found by search; no test binary yet")
    got = probe_libraries(paths, max(5.0, seconds - (time.monotonic() - t0)))
    lines += library_lines(paths, got, origin)
    if libs and libs["missing"]:
        lines.append(f"gpu-check: {os.path.relpath(args.tests_bin, ROOT)} cannot start as it is: "
                     f"{', '.join(libs['missing'])} not found by the loader")
    driver_api = got.get("driver_api")
    if "init_error" in got:
        lines.append(f"gpu-check: CUDA did not initialise: {got['init_error']}"
                     + (f" (driver API {driver_api})" if driver_api else ""))
    else:
        lines.append(f"gpu-check: CUDA initialised: {got['devices']} device(s), driver API {driver_api}")
    for line in lines:
        log(line)
    res.data["versions"] = dict(got, library_paths={k: v for k, v in paths.items() if k not in ("searched", "missing")},
                                library_origin=origin)
    res.data["version_lines"] = [line.replace("gpu-check: ", "") for line in lines]
    res.data["gpu_listed"] = smi["listed"]
    cuda_ok = "init_error" not in got
    reason = got.get("init_error", "")
    secs = time.monotonic() - t0
    if smi["listed"] and not cuda_ok:
        res.phase("probe", FAIL, secs, f"nvidia-smi lists a GPU but CUDA did not initialise: {reason}")
    elif smi["listed"]:
        res.phase("probe", PASS, secs, f"{smi.get('name', 'GPU')}: CUDA initialised")
    else:
        res.phase("probe", NO_GPU, secs, smi["why"])
    return smi["listed"]


# ---- build -----------------------------------------------------------------------------------

def find_make():
    make = shutil.which("make")
    if make:
        return make
    bundled = os.path.join(BUNDLE_ROOT, "usr/bin/make")
    return bundled if os.path.exists(bundled) else None


def unpack_bundle():
    """.gpu-bundle/*.deb unpacked with dpkg -x into build/gpu-bundle-root (not into .gpu-bundle,
    which a device call carries: unpacked it would not fit); returns (DEPS_PREFIX or None, note)."""
    debs = sorted(glob.glob(os.path.join(ROOT, ".gpu-bundle", "*.deb")))
    if not debs:
        return None, "no .gpu-bundle/*.deb: the build uses the system's packages"
    root = BUNDLE_ROOT
    stamp = os.path.join(root, ".unpacked")
    names = "\n".join(os.path.basename(d) for d in debs)
    if os.path.exists(stamp) and open(stamp).read() == names:
        return root, f"{len(debs)} packages (already unpacked)"
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return None, "dpkg not found: cannot unpack .gpu-bundle/"
    os.makedirs(root, exist_ok=True)
    for d in debs:
        rc, text = capture([dpkg, "-x", d, root], 60)
        if rc != 0:
            return None, f"dpkg -x {os.path.basename(d)} failed: {text}"
    with open(stamp, "w") as f:
        f.write(names)
    return root, f"{len(debs)} packages unpacked into {os.path.relpath(root, ROOT)}"


def build(args, res, seconds, gpu_listed):
    t0 = time.monotonic()
    deadline = t0 + seconds
    prefix, note = unpack_bundle()  # first: it may hold the make this machine lacks
    log(f"gpu-check: bundle: {note}")
    make = find_make()
    if not make:
        res.phase("build", FAIL, 0, f"make not found (neither on PATH nor in {os.path.relpath(BUNDLE_ROOT, ROOT)}/usr/bin)")
        return False
    # Warnings stay warnings there: that machine's compiler may be newer than the one this
    # project is -Werror clean with, and a new warning must not cost the visit (they are listed).
    make_args = ["CUDA=1", "WERROR=0"]
    if prefix:
        # MPI=0: the bundle's libmpi.so.40 carries a RUNPATH of Debian's own folder, so the loader
        # would look for its libopen-rte / libopen-pal / libhwloc there and not in the bundle
        # (the programs' rpath does not reach a library's own dependencies once it has a
        # RUNPATH); and one GPU runs no multi-rank test. The MPI and NCCL code is built here.
        make_args += [f"DEPS_PREFIX={prefix}", "MPI=0"]
    cc = res.data.get("nvidia_smi", {}).get("compute_cap", "")
    if gpu_listed and re.fullmatch(r"\d+\.\d+", cc) and not any(a.startswith("CUDA_ARCHS=") for a in args.make_arg):
        sm = cc.replace(".", "")
        make_args.append(f"CUDA_ARCHS=-gencode arch=compute_{sm},code=sm_{sm}")  # this GPU only: half the nvcc time
    make_args += args.make_arg
    # A make of its own, not a sub-make of `make gpu-check` (whose job server it would inherit)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    config = run_boxed([make, "--no-print-directory", *make_args, "cuda-config"], res.path("cuda-config.log"), 30, env)
    config_text = tail(res.path("cuda-config.log"), 20)
    for line in config_text.splitlines()[1:]:
        log(f"gpu-check: {line}")
    if config.rc != 0:
        first = [l for l in config_text.splitlines()[1:] if l.strip()]
        res.phase("build", FAIL, time.monotonic() - t0, f"make cuda-config failed: {first[-1] if first else '?'}")
        return False
    jobs = args.jobs or os.cpu_count() or 2
    # The loader check and the library probe after make (up to 25 s) stay inside the box.
    b = Boxed([make, f"-j{jobs}", "--no-print-directory", *make_args, "all"], res.path("build.log"), env).wait(
        max(time.monotonic() + 1, deadline - 25))
    secs = time.monotonic() - t0
    if b.timed_out:
        res.phase("build", INCOMPLETE, secs, f"make did not finish within {seconds:.0f} s (build.log)")
        return False
    if b.rc != 0:
        errors = [l for l in tail(res.path("build.log"), 400).splitlines() if re.search(r" error|\*\*\*", l)]
        log(tail(res.path("build.log"), 30))
        res.phase("build", FAIL, secs, f"make exit code {b.rc}: {errors[0] if errors else 'see build.log'}")
        return False
    libs = ldd_libraries(args.tests_bin) or {}
    missing = libs.get("missing")
    if missing:
        res.phase("build", FAIL, secs, f"the test binary cannot start: {', '.join(missing)} not found by the loader")
        return False
    if libs.get("cudart"):
        got = probe_libraries(libs, 20)
        for line in library_lines(libs, got, "linked by the built test binary"):
            log(line)
        res.data["versions_built"] = dict(got, library_paths={k: v for k, v in libs.items() if k != "missing"})
    warnings = [l for l in open(res.path("build.log"), errors="replace") if re.search(r":\d+:(\d+:)? warning:", l)]
    note = f"; {len(warnings)} compiler warnings (first: {warnings[0].strip()[:200]})" if warnings else ""
    res.phase("build", PASS, secs, f"make {' '.join(make_args)} all{note}", warnings=len(warnings))
    return True


# ---- suite, twins: GoogleTest runs and what they mean ------------------------------------------

def parse_xml(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    tests = []
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname')}.{tc.get('name')}"
        fail, skip = tc.find("failure"), tc.find("skipped")
        if fail is not None:
            status, message = "failed", fail.get("message", "") or (fail.text or "")
        elif skip is not None or tc.get("result") == "skipped":
            status, message = "skipped", (skip.get("message", "") if skip is not None else "") or (
                skip.text if skip is not None and skip.text else "")
        elif tc.get("status") == "notrun" or tc.get("result") == "suppressed":
            continue  # DISABLED_ or filtered out: not part of this run
        else:
            status, message = "passed", ""
        tests.append({"name": name, "status": status, "message": message.strip()})
    return tests


def parse_log(path):
    """The same from GoogleTest's console output, for a run killed before it wrote its XML:
    (finished tests, the test that was running when it stopped)."""
    tests, running, body = [], None, []
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return [], None
    for line in lines:
        m = re.match(r"\[ RUN      \] (\S+)", line)
        if m:
            running, body = m.group(1), []
            continue
        m = re.match(r"\[ +(OK|FAILED|SKIPPED) +\] (\S+) \(", line)
        if m and m.group(2) == running:
            status = {"OK": "passed", "FAILED": "failed", "SKIPPED": "skipped"}[m.group(1)]
            tests.append({"name": running, "status": status, "message": "\n".join(body[-6:]).strip()})
            running = None
            continue
        if running:
            body.append(line)
    return tests, running


def is_gpu_test(t):
    if t["name"].startswith("GpuCheck."):  # this checker's own tests, CPU-only by design
        return False
    return bool(GPU_NAME.search(t["name"]) or GPU_MESSAGE.search(t["message"]))


def mpi_env(env):
    """The bundle's OpenMPI (unpacked with dpkg -x) for the multi-process tests
    (tests/distributed_test.cpp run mpirun) on a machine without one of its own: mpirun on the
    PATH, OPAL_PREFIX (OpenMPI finds its helpers and plugins there) and its libraries."""
    mpirun = os.path.join(BUNDLE_ROOT, "usr/bin/mpirun")
    if shutil.which("mpirun", path=env.get("PATH")) or not os.path.exists(mpirun):
        return {}
    lib = os.path.join(BUNDLE_ROOT, "usr/lib/x86_64-linux-gnu")
    return {"PATH": os.path.dirname(mpirun) + os.pathsep + env.get("PATH", ""),
            "OPAL_PREFIX": os.path.join(BUNDLE_ROOT, "usr"),
            "LD_LIBRARY_PATH": os.pathsep.join(p for p in (lib, os.path.join(lib, "openmpi/lib"),
                                                             env.get("LD_LIBRARY_PATH", "")) if p)}


def start_gtest(args, res, phase, gtest_filter, shards=1, env_extra=None, wrapper=None, threads=0):
    """Starts the test binary in `shards` parallel processes; returns their (Boxed, xml path)."""
    cpus = os.cpu_count() or 2
    runs = []
    for k in range(shards):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(threads or max(1, cpus // shards)))
        # Ours only, not inherited: the shards, and the twins' stand-in (the CPU in the GPU's
        # place), which only --twins-stand-in on a machine without a GPU may set (env_extra).
        for v in ("GTEST_TOTAL_SHARDS", "GTEST_SHARD_INDEX", "TESSERA_TWINS_STAND_IN"):
            env.pop(v, None)
        if shards > 1:
            env.update(GTEST_TOTAL_SHARDS=str(shards), GTEST_SHARD_INDEX=str(k))
        env.update(mpi_env(env))
        # Every kernel call counted by device, written at exit (engine/profile.h): census()
        env["TESSERA_KERNEL_CENSUS"] = res.path("census")
        os.makedirs(env["TESSERA_KERNEL_CENSUS"], exist_ok=True)
        env.update(env_extra or {})
        suffix = f"-{k}" if shards > 1 else ""
        xml = res.path(f"{phase}{suffix}.xml")
        if os.path.exists(xml):
            os.remove(xml)
        cmd = (wrapper or []) + [args.tests_bin, f"--gtest_filter={gtest_filter}", f"--gtest_output=xml:{xml}"]
        runs.append((Boxed(cmd, res.path(f"{phase}{suffix}.log"), env), xml))
    return runs


def finish_gtest(runs, deadline):
    """Waits for the runs (killed at `deadline`); returns (tests, problems, timed_out, running)
    where problems are exit codes / missing XML that no test result explains."""
    tests, problems, timed_out, running = [], [], False, []
    for b, xml in runs:
        b.wait(deadline)
        parsed = None if b.timed_out else parse_xml(xml)
        if parsed is None:
            parsed, was_running = parse_log(b.log_path)
            if b.timed_out:
                timed_out = True
                if was_running:
                    running.append(was_running)
            elif b.error:
                problems.append(f"{os.path.basename(b.log_path)}: could not start: {b.error}")
            else:
                why = f"killed by signal {-b.rc}" if b.rc < 0 else f"exit code {b.rc}"
                problems.append(f"{os.path.basename(b.log_path)}: no XML written ({why}"
                                + (f", while running {was_running})" if was_running else ")"))
        elif b.rc != 0 and not any(t["status"] == "failed" for t in parsed):
            problems.append(f"{os.path.basename(b.log_path)}: exit code {b.rc} with no failed test")
        tests += parsed
    return tests, problems, timed_out, running


def run_gtest(args, res, phase, gtest_filter, seconds, shards=1, env_extra=None, wrapper=None):
    deadline = time.monotonic() + seconds
    return finish_gtest(start_gtest(args, res, phase, gtest_filter, shards, env_extra, wrapper), deadline)


def judge_tests(res, phase, tests, problems, timed_out, running, gpu_listed, seconds, rehearse_note=""):
    counts = {s: sum(t["status"] == s for t in tests) for s in ("passed", "failed", "skipped")}
    gpu_skips = [t for t in tests if t["status"] == "skipped" and is_gpu_test(t)]
    other_skips = [t for t in tests if t["status"] == "skipped" and not is_gpu_test(t)]
    gpu_passed = [t for t in tests if t["status"] == "passed" and is_gpu_test(t)]
    failed = [t for t in tests if t["status"] == "failed"]
    suites = {}
    for t in tests:
        s = suites.setdefault(t["name"].split(".")[0], {"passed": 0, "failed": 0, "skipped": 0, "gpu_skipped": 0})
        s[t["status"]] += 1
        s["gpu_skipped"] += t in gpu_skips
    res.data["tests"][phase] = suites
    with open(res.path(f"{phase}-results.json"), "w") as f:
        json.dump(tests, f, indent=0)
    detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    reasons = []
    if failed:
        reasons.append("failed: " + ", ".join(t["name"] for t in failed[:8]) + (" ..." if len(failed) > 8 else ""))
    reasons += problems
    if not tests and not timed_out:
        reasons.append("no test ran")
    if gpu_listed:
        if gpu_skips:
            reasons.append(f"{len(gpu_skips)} GPU tests SKIPPED on a machine with a GPU, e.g. {gpu_skips[0]['name']}: "
                           + gpu_skips[0]["message"].splitlines()[-1][:200])
        if tests and not gpu_passed and not timed_out:
            reasons.append("no GPU test passed")
    if other_skips:
        detail += f" ({len(other_skips)} skips not about the GPU, e.g. {other_skips[0]['name']}: " \
                  f"{(other_skips[0]['message'].splitlines() or [''])[-1][:120]})"
    if reasons:
        status = FAIL
        detail += "; " + "; ".join(reasons)
    elif timed_out:
        status = INCOMPLETE
        detail += f"; stopped at the time box ({seconds:.0f} s) while running {', '.join(running) or '?'}"
    elif gpu_listed:
        status = PASS
        detail += f"; {len(gpu_passed)} GPU tests passed"
    else:
        status = CPU_ONLY
        detail += f"; {len(gpu_skips)} GPU tests skipped as expected (no GPU){rehearse_note}"
    return status, detail


def gtest_phase(args, res, phase, gtest_filter, seconds, gpu_listed, shards=1, env_extra=None, note="", started=None):
    """One GoogleTest phase; `started` = (runs, start time, deadline) of one start_gtest'ed earlier."""
    t0 = time.monotonic()
    if not os.path.exists(args.tests_bin):
        res.phase(phase, NOT_RUN, 0, f"no test binary at {args.tests_bin}")
        return
    if started:
        runs, t0, deadline = started
        seconds = deadline - t0
        tests, problems, timed_out, running = finish_gtest(runs, deadline)
    else:
        tests, problems, timed_out, running = run_gtest(args, res, phase, gtest_filter, seconds, shards, env_extra)
    status, detail = judge_tests(res, phase, tests, problems, timed_out, running, gpu_listed, seconds, note)
    res.phase(phase, status, time.monotonic() - t0, detail, filter=gtest_filter, shards=shards)


def census(res):
    """Which kernels the suite and the twins (and the programs they started) ran on CUDA and on
    the CPU, from the files TESSERA_KERNEL_CENSUS made them write at exit. A kernel the CPU ran
    and CUDA never did had no CUDA-vs-CPU comparison in this run."""
    d = res.path("census")
    calls = {}
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, name), errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3 and parts[2].isdigit():
                    calls[(parts[0], parts[1])] = calls.get((parts[0], parts[1]), 0) + int(parts[2])
    if not calls:
        return
    on = {dev: sorted(k for dv, k in calls if dv == dev) for dev in ("cuda", "cpu")}
    # The CPU's fast tier (*_onednn) has no CUDA twin by design: its reference is the CPU's own;
    # test_* are the profiler tests' stand-ins (a sleep timed as a CPU kernel), not kernels.
    never = sorted(k for k in set(on["cpu"]) - set(on["cuda"])
                   if not k.endswith("_onednn") and not k.startswith("test_"))
    res.data["census"] = {"cuda": on["cuda"], "cpu": on["cpu"], "never_on_cuda": never,
                          "calls": {f"{dv} {k}": n for (dv, k), n in sorted(calls.items())}}
    res.data["census_line"] = (f"kernel census: {len(on['cuda'])} kernels ran on CUDA, {len(on['cpu'])} on the CPU; "
                               f"never on CUDA (the CPU's *_onednn tier aside): {', '.join(never) or 'none'}")
    res.save()
    log("gpu-check: " + res.data["census_line"])


# ---- memcheck --------------------------------------------------------------------------------

def find_sanitizer():
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for c in [shutil.which("compute-sanitizer"), os.path.join(cuda_home, "bin/compute-sanitizer"),
              "/usr/local/cuda/bin/compute-sanitizer"] + sorted(glob.glob("/opt/nvidia/*/compute-sanitizer")):
        if c and os.path.exists(c):
            return c
    return None


def memcheck(args, res, seconds, gpu_listed):
    t0 = time.monotonic()
    if not os.path.exists(args.tests_bin):
        res.phase("memcheck", NOT_RUN, 0, f"no test binary at {args.tests_bin}")
        return
    san = find_sanitizer()
    if not san:
        res.phase("memcheck", UNAVAILABLE, 0,
                  "unavailable here: compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return
    wrapper = [san, "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "99", "--print-limit", "20"]
    tests, problems, timed_out, running = run_gtest(args, res, "memcheck", args.memcheck_filter, seconds,
                                                    wrapper=wrapper)
    text = open(res.path("memcheck.log"), errors="replace").read()
    refused = SANITIZER_REFUSED.search(text)
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    # The reports themselves: a run stopped at its time box has them but no ERROR SUMMARY yet.
    reports = re.findall(r"^=+ (?:Invalid|Program hit|Uninitialized|Race|Misaligned|Out-of-range|Malloc/Free|"
                         r"Hardware Exception|Barrier error|.*is out of bounds).*$", text, re.M)
    n_errors = int(m.group(1)) if m else len(reports)
    secs = time.monotonic() - t0
    if n_errors:
        res.phase("memcheck", FAIL, secs, f"compute-sanitizer memcheck: {n_errors} errors"
                  f"{'' if m else ' before it was stopped'}; first: {reports[0] if reports else 'see memcheck.log'}")
        return
    gpu_skips = [t for t in tests if t["status"] == "skipped" and is_gpu_test(t)]
    if refused and (not gpu_listed or gpu_skips or not tests or problems):
        res.phase("memcheck", UNAVAILABLE, secs,
                  f"unavailable here: compute-sanitizer refused by this machine: {refused.group(1).strip()}")
        return
    status, detail = judge_tests(res, "memcheck", tests, problems, timed_out, running, gpu_listed, seconds)
    if m and status in (PASS, CPU_ONLY):
        detail = f"ERROR SUMMARY: 0 errors; {detail}"
    elif not m and status in (PASS, CPU_ONLY) and not timed_out:
        status, detail = FAIL, f"no ERROR SUMMARY line from compute-sanitizer; {detail}"
    res.phase("memcheck", status, secs, detail, filter=args.memcheck_filter)


# ---- main ------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=os.path.join(ROOT, "build/gpu-check"), help="results folder (build/gpu-check)")
    p.add_argument("--phases", default=",".join(ALL_PHASES), help="comma-separated subset of " + ",".join(ALL_PHASES))
    p.add_argument("--no-build", action="store_true", help="leave out the build phase (use --tests-bin as it is)")
    p.add_argument("--tests-bin", default=os.path.join(ROOT, "build/tessera_tests"))
    p.add_argument("--rehearse", action="store_true",
                   help="without a GPU, run every phase anyway; GPU skips are expected (never a PASS)")
    p.add_argument("--budget", type=float, default=0,
                   help="seconds for all phases together (0: the sum of the time boxes); boxes shrink to fit")
    p.add_argument("--box", action="append", default=[], metavar="PHASE=SECONDS", help="one phase's time box")
    p.add_argument("--jobs", type=int, default=0, help="make -j (default: every core)")
    p.add_argument("--shards", type=int, default=0,
                   help="parallel suite processes (default 4 with 12 or more cores, else 1)")
    p.add_argument("--suite-filter", default="-Twins.*", help="GoogleTest filter of the suite phase")
    p.add_argument("--memcheck-filter", default=DEFAULT_MEMCHECK_FILTER)
    p.add_argument("--parallel-twins", action=argparse.BooleanOptionalAction, default=None,
                   help="run the twins beside the suite's shards (default: with 12 or more cores)")
    p.add_argument("--twins-stand-in", action="store_true",
                   help="without a GPU, run the twins' GPU halves with the CPU in its place (TESSERA_TWINS_STAND_IN=cpu)")
    p.add_argument("--make-arg", action="append", default=[], metavar="VAR=VALUE", help="passed to make")
    args = p.parse_args(argv)
    phases = [x for x in args.phases.split(",") if x]
    bad = [x for x in phases if x not in ALL_PHASES]
    if bad:
        p.error(f"--phases: expected a subset of {','.join(ALL_PHASES)}, found {','.join(bad)}")
    args.phases = [x for x in ALL_PHASES if x in phases and not (x == "build" and args.no_build)]
    args.boxes = dict(DEFAULT_BOX)
    for b in args.box:
        m = re.fullmatch(r"(\w+)=(\d+(?:\.\d+)?)", b)
        if not m or m.group(1) not in ALL_PHASES:
            p.error(f"--box: expected PHASE=SECONDS with PHASE one of {','.join(ALL_PHASES)}, found '{b}'")
        args.boxes[m.group(1)] = float(m.group(2))
    args.tests_bin = os.path.abspath(args.tests_bin)
    return args


def main(argv):
    signal.signal(signal.SIGTERM, on_sigterm)
    args = parse_args(argv)
    start = time.monotonic()
    res = Results(os.path.abspath(args.out))
    res.data["rehearsal"] = args.rehearse
    total = args.boxes["probe"] + sum(args.boxes[p] for p in args.phases if p != "probe")  # the probe always runs
    scale = args.budget / total if args.budget > 0 else 1.0  # > 1: every box grows in proportion
    end = start + (args.budget if args.budget > 0 else total)

    def box(phase):
        # What is left, less the scaled shares of the phases after this one (so time an earlier
        # phase did not use goes to this one), and never more than this phase's own box.
        later = args.phases[args.phases.index(phase) + 1:]
        reserve = sum(args.boxes[p] * scale for p in later)
        return max(1.0, min(args.boxes[phase] * max(1.0, scale), end - time.monotonic() - reserve))

    gpu_listed = probe(args, res, args.boxes["probe"])
    if not gpu_listed and not args.rehearse:
        res.data.update(verdict="NO GPU: nothing was tested (run it on a GPU machine, or --rehearse)",
                        exit_code=EXIT_NO_GPU)
        res.save()
        log("gpu-check: no GPU here: nothing was tested (run it on a machine with one, or with --rehearse)")
        return EXIT_NO_GPU
    built = True
    cpus = os.cpu_count() or 2
    twins_env, twins_note, twins_started = {}, "", None
    if args.twins_stand_in and not gpu_listed:
        twins_env, twins_note = {"TESSERA_TWINS_STAND_IN": "cpu"}, "; GPU halves ran with the CPU standing in"
    for phase in args.phases:
        if phase == "probe":
            continue
        if time.monotonic() >= end - 1 and not (phase == "twins" and twins_started):
            res.phase(phase, INCOMPLETE, 0, "not started: the budget was spent")
            continue
        if phase == "build":
            built = build(args, res, box("build"), gpu_listed)
        elif not built:
            res.phase(phase, NOT_RUN, 0, "the build did not succeed")
        elif phase == "suite":
            shards = args.shards or (4 if cpus >= 12 else 1)
            if "twins" in args.phases and (args.parallel_twins or (args.parallel_twins is None and cpus >= 12)):
                # On a many-core machine the twins run beside the suite's shards: the GPU halves
                # wait mostly on program start-up and CUDA initialisation, not on cores.
                # Both may use all the time left but what the phases after the twins reserve.
                after = args.phases[args.phases.index("twins") + 1:]
                until = end - sum(args.boxes[p] * scale for p in after)
                twins_started = (start_gtest(args, res, "twins", "Twins.*", env_extra=twins_env,
                                             threads=max(1, cpus // (shards + 1))), time.monotonic(), until)
                log(f"gpu-check: twins started beside the suite ({until - time.monotonic():.0f} s box)")
                suite_box = max(1.0, min(args.boxes["suite"] * max(1.0, scale), until - time.monotonic()))
            else:
                suite_box = box("suite")
            gtest_phase(args, res, "suite", args.suite_filter, suite_box, gpu_listed, shards)
        elif phase == "twins":
            gtest_phase(args, res, "twins", "Twins.*", box("twins"), gpu_listed, env_extra=twins_env,
                        note=twins_note, started=twins_started)
        elif phase == "memcheck":
            memcheck(args, res, box("memcheck"), gpu_listed)

    census(res)
    statuses = [p["status"] for p in res.data["phases"].values()]
    failed = [n for n, p in res.data["phases"].items() if p["status"] == FAIL]
    if failed:
        verdict, code = "FAIL: " + ", ".join(failed), EXIT_FAIL
    elif INCOMPLETE in statuses:
        verdict, code = "INCOMPLETE: " + ", ".join(n for n, p in res.data["phases"].items()
                                                    if p["status"] == INCOMPLETE), EXIT_INCOMPLETE
    elif not gpu_listed:
        verdict, code = "NO GPU: rehearsal only, every phase that can run here ran (not a GPU pass)", EXIT_NO_GPU
    else:
        verdict, code = "PASS", EXIT_PASS
    res.data.update(verdict=verdict, exit_code=code, seconds=round(time.monotonic() - start, 1))
    res.save()
    log("")
    log(res.markdown())
    log(f"gpu-check: {verdict} (results in {res.out})")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
