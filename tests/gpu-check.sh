#!/usr/bin/env bash
# make gpu-check: the whole suite on a real GPU, then again under compute-sanitizer
# (memcheck), and one summary table. Fails at once on a machine without a GPU.
#
# On a GPU machine with no package registry, `make gpu-bundle` (run beforehand on a machine
# that has one) leaves the Debian packages the build needs in .gpu-bundle/; they are unpacked
# here with dpkg -x and the build points at them with DEPS_PREFIX.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none); run it on a machine with one" >&2
  exit 1
fi

out=build/gpu-check
mkdir -p "$out"
make_args=(CUDA=1)
if ls .gpu-bundle/*.deb >/dev/null 2>&1; then
  mkdir -p .gpu-bundle/root
  for deb in .gpu-bundle/*.deb; do dpkg -x "$deb" .gpu-bundle/root; done
  make_args+=(DEPS_PREFIX="$PWD/.gpu-bundle/root")
  export TESSERA_DATA_ROOT="$PWD/.gpu-bundle/root/usr/share/datasets"
fi

echo "== build: make ${make_args[*]}"
if ! make -j"$(nproc)" "${make_args[@]}" all >"$out/build.log" 2>&1; then
  tail -n 40 "$out/build.log"
  echo "gpu-check: build failed (full log: $out/build.log)"
  exit 1
fi

echo "== suite"
build/tessera_tests --gtest_output=xml:"$out/tests.xml" >"$out/tests.log" 2>&1
suite_rc=$?
tail -n 3 "$out/tests.log"

echo "== suite under compute-sanitizer memcheck"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
"$sanitizer" --tool memcheck --leak-check no --error-exitcode 99 \
  build/tessera_tests --gtest_output=xml:"$out/sanitizer.xml" >"$out/sanitizer.log" 2>&1
san_rc=$?
tail -n 3 "$out/sanitizer.log"

python3 - "$out" "$suite_rc" "$san_rc" <<'PY'
import re, subprocess, sys, xml.etree.ElementTree as ET
out, suite_rc, san_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def table(path):
    rows = {}
    try:
        root = ET.parse(path).getroot()
    except Exception as e:
        return None
    for ts in root.iter("testsuite"):
        p = f = s = 0
        for tc in ts.iter("testcase"):
            if tc.find("failure") is not None: f += 1
            elif tc.find("skipped") is not None or tc.get("result") == "skipped": s += 1
            else: p += 1
        rows[ts.get("name")] = (p, f, s)
    return rows
rows = table(f"{out}/tests.xml") or {}
log = open(f"{out}/sanitizer.log", errors="replace").read()
m = re.search(r"ERROR SUMMARY: (\d+) error", log)
san_errors = m.group(1) if m else "unknown (see sanitizer.log)"
dev = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("\n| suite | passed | failed | skipped |\n|---|---|---|---|")
tot = [0, 0, 0]
for name, (p, f, s) in sorted(rows.items()):
    print(f"| {name} | {p} | {f} | {s} |")
    tot = [tot[0] + p, tot[1] + f, tot[2] + s]
print(f"| total | {tot[0]} | {tot[1]} | {tot[2]} |")
print(f"\ndevice: {dev}\ncommit: {commit}\nsuite exit code: {suite_rc}\n"
      f"compute-sanitizer memcheck errors: {san_errors} (exit code {san_rc})")
ok = suite_rc == 0 and san_rc == 0 and tot[1] == 0
print("gpu-check:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
