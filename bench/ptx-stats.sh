#!/usr/bin/env bash
# Compiler statistics of the CUDA kernels, before and after a change, with no GPU needed:
# per kernel, registers and stack (ptxas --resource-usage), 64-bit divisions left in the PTX,
# and from the SASS (cuobjdump -sass) the instruction count, subroutine calls (a 64-bit
# division or remainder is a CALL to a ~70-instruction routine), IMAD.HI (multiply-high: one per
# FastDivmod, several per division sequence), I2F.U32.RP (the start of a 32-bit division
# sequence) and the
# instruction count of each loop body (a backward branch: the loop's cost per iteration).
#
#   bench/ptx-stats.sh [-b REV] [-a sm_90] [kernels/cuda/pool.cu ...]
#
#   -b REV   also compile the files as they are at git revision REV (the whole tree of REV is
#            extracted to a temporary folder, so its headers are used) and print both
#   -a ARCH  target (default sm_90, the H100/H200)
#   files    default: every kernels/cuda/*.cu
#
# cuobjdump: $CUOBJDUMP, else $CUDA_HOME/bin/cuobjdump, else on PATH; without one the SASS
# columns say "n/a". An older cuobjdump (CUDA 11.8, Debian's nvidia-cuda-toolkit) refuses
# CUDA 13's cubins only for their ELF header (ABI version 8 moved the architecture bits): the
# script then disassembles a copy with the header rewritten to the old layout, instruction
# bytes untouched, and counts the opcodes that tool cannot name as unnamed (column "?").
# Output: one markdown table per file, for docs/cuda-review-notes.md.
set -euo pipefail

REV=""
ARCH=sm_90
while getopts "b:a:" opt; do
  case $opt in
    b) REV=$OPTARG ;;
    a) ARCH=$OPTARG ;;
    *) echo "usage: $0 [-b REV] [-a sm_XX] [file.cu ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=$CUDA_HOME/bin/nvcc
[ -x "$NVCC" ] || { echo "ptx-stats: expected nvcc at $NVCC (set CUDA_HOME), found none" >&2; exit 1; }
CUOBJDUMP=${CUOBJDUMP:-}
if [ -z "$CUOBJDUMP" ]; then
  if [ -x "$CUDA_HOME/bin/cuobjdump" ]; then CUOBJDUMP=$CUDA_HOME/bin/cuobjdump
  else CUOBJDUMP=$(command -v cuobjdump || true); fi
fi
command -v python3 >/dev/null || { echo "ptx-stats: expected python3 (the parser), found none" >&2; exit 1; }

FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then FILES=(kernels/cuda/*.cu); fi
BLAS_INC=/usr/include/x86_64-linux-gnu/openblas-openmp
# The Makefile's device flags (NVCCFLAGS) for one architecture.
FLAGS=(-std=c++17 -O3 -lineinfo -arch="$ARCH" --expt-relaxed-constexpr -DTESSERA_CUDA=1 -I. -I"$BLAS_INC")

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -n "$REV" ]; then
  mkdir -p "$WORK/before"
  git archive "$REV" | tar -x -C "$WORK/before"
fi

# compile SIDE_DIR FILE OUT_PREFIX: cubin + ptxas log + ptx (+ sass when a cuobjdump exists)
compile() {
  local dir=$1 file=$2 out=$3
  if [ ! -f "$dir/$file" ]; then echo "missing" >"$out.missing"; return; fi
  local extra=()
  # The Makefile compiles augment.cu without fused multiply-adds.
  [ "$(basename "$file")" = augment.cu ] && extra=(--fmad=false)
  (cd "$dir" && "$NVCC" "${FLAGS[@]}" "${extra[@]}" -cubin --resource-usage "$file" -o "$out.cubin") \
    >"$out.ptxas" 2>&1 || { echo "ptx-stats: nvcc failed on $dir/$file:" >&2; cat "$out.ptxas" >&2; exit 1; }
  (cd "$dir" && "$NVCC" "${FLAGS[@]}" "${extra[@]}" -ptx "$file" -o "$out.ptx")
  if [ -n "$CUOBJDUMP" ]; then
    if ! "$CUOBJDUMP" -sass "$out.cubin" >"$out.sass" 2>"$out.sass.err"; then
      if grep -q "Support for 'sm_" "$out.sass.err"; then
        python3 - "$out.cubin" "$out.old.cubin" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
flags = struct.unpack_from('<I', b, 0x30)[0]
sm = (flags >> 8) & 0xff            # ABI 8: the SM number in bits 8..15
b[7], b[8] = 0x33, 7                # OS/ABI and ABI version of CUDA 11/12 cubins
struct.pack_into('<I', b, 0x30, sm | 0x500 | (sm << 16))  # SM, 64-bit address + unified texture, virtual SM
open(sys.argv[2], 'wb').write(b)
PY
        "$CUOBJDUMP" -sass "$out.old.cubin" >"$out.sass" 2>"$out.sass.err" && echo patched >"$out.patched" || rm -f "$out.sass"
      else
        rm -f "$out.sass"
      fi
    fi
  fi
}

for f in "${FILES[@]}"; do
  key=$(echo "$f" | tr '/.' '__')
  compile "$ROOT" "$f" "$WORK/after_$key"
  [ -n "$REV" ] && compile "$WORK/before" "$f" "$WORK/before_$key"
  python3 - "$f" "$WORK" "$key" "$REV" "$ARCH" <<'PY'
import os, re, subprocess, sys
f, work, key, rev, arch = sys.argv[1:]

def demangle(names):
    try:
        out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n')
    except OSError:
        return {n: n for n in names}
    short = {}
    for n, d in zip(names, out):
        d = re.sub(r'\(anonymous namespace\)::|kernels::cuda::|kernels::', '', d)
        d = d.split('(')[0]
        short[n] = d
    return short

def ptxas(path):
    k, res = None, {}
    for line in open(path):
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            k = m.group(1); res.setdefault(k, {}); continue
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            k = m.group(1); res.setdefault(k, {}); continue
        if k is None: continue
        m = re.search(r"(\d+) bytes stack frame", line)
        if m: res[k]['stack'] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m: res[k]['regs'] = int(m.group(1))
    return res

def ptx(path):
    res, k, depth = {}, None, 0
    for line in open(path):
        m = re.match(r"\s*(?:\.visible\s+)?\.entry\s+(\S+?)\(", line)
        if m:
            k = m.group(1); res[k] = {'div64': 0}; continue
        if k and re.search(r"\b(div|rem)\.[su]64\b", line): res[k]['div64'] += 1
    return res

def sass(path):
    res, k, text = {}, None, ''
    for line in open(path):
        m = re.search(r"Function : (\S+)", line)
        if m:
            k = m.group(1); res[k] = {'enc': 0, 'named': 0, 'nop': 0, 'call': 0, 'imadhi': 0, 'i2f': 0, 'loops': []}; continue
        if k is None: continue
        r = res[k]
        r['enc'] += len(re.findall(r"/\* 0x[0-9a-f]{16} \*/", line))
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if not m: continue
        addr, ins = int(m.group(1), 16), m.group(2).strip()
        r['named'] += 1
        op = re.sub(r"^@!?U?P\w+\s+", "", ins)
        if op == 'NOP': r['nop'] += 1  # the padding after EXIT
        if op.startswith('CALL'): r['call'] += 1
        if op.startswith('IMAD.HI'): r['imadhi'] += 1
        if op.startswith('I2F.U32.RP'): r['i2f'] += 1
        b = re.match(r"BRA(?:\.\S+)?\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", op)
        if b and b.group(1) and int(b.group(1), 16) < addr:
            r['loops'].append((addr - int(b.group(1), 16)) // 16 + 1)
    return res

def side(prefix):
    base = os.path.join(work, prefix + '_' + key)
    if os.path.exists(base + '.missing'): return None
    s = {'ptxas': ptxas(base + '.ptxas'), 'ptx': ptx(base + '.ptx'),
         'sass': sass(base + '.sass') if os.path.exists(base + '.sass') else None,
         'patched': os.path.exists(base + '.patched')}
    return s

after = side('after')
before = side('before') if rev else None

# Kernels are matched by their demangled name: the mangled one carries a per-file hash of the
# anonymous namespace, which changes with the file.
def by_short(s):
    if s is None: return None
    short = demangle(list(s['ptx']))
    rename = lambda d: {short.get(n, n): v for n, v in d.items()}
    return {'ptxas': rename(s['ptxas']), 'ptx': rename(s['ptx']),
            'sass': rename(s['sass']) if s['sass'] is not None else None, 'patched': s['patched']}

after, before = by_short(after), by_short(before)
names = sorted(set(after['ptx']) | (set(before['ptx']) if before else set()))
short = {n: n for n in names}

def cells(s, n):
    if s is None or n not in s['ptx']: return ['-'] * 7
    pa = s['ptxas'].get(n, {})
    c = [str(pa.get('regs', '?')), str(pa.get('stack', '?')), str(s['ptx'][n]['div64'])]
    sa = s['sass'].get(n) if s['sass'] else None
    if sa is None: return c + ['n/a'] * 4
    ins = sa['enc'] // 2 - sa['nop']
    unk = ins - (sa['named'] - sa['nop'])
    loops = ','.join(str(x) for x in sorted(sa['loops'])[:5]) or '-'
    return c + [f"{ins}" + (f" ({unk}?)" if unk else ''), str(sa['call']), f"{sa['imadhi']}/{sa['i2f']}", loops]

cols = ['regs', 'stack', 'PTX div64', 'SASS instrs', 'CALL', 'IMAD.HI/I2F.RP', 'loop bodies']
print(f"\n### {f} ({arch})\n")
if before:
    print('| kernel | side | ' + ' | '.join(cols) + ' |')
    print('|---|---|' + '---|' * len(cols))
    for n in names:
        print(f"| {short[n]} | before | " + ' | '.join(cells(before, n)) + ' |')
        print(f"| | after | " + ' | '.join(cells(after, n)) + ' |')
else:
    print('| kernel | ' + ' | '.join(cols) + ' |')
    print('|---|' + '---|' * len(cols))
    for n in names:
        print(f"| {short[n]} | " + ' | '.join(cells(after, n)) + ' |')
notes = []
if after['sass'] is None: notes.append('no cuobjdump: SASS columns n/a')
if after['patched'] or (before and before['patched']): notes.append('SASS from a header-patched cubin; "?" = opcodes that cuobjdump could not name')
if notes: print('\n' + '; '.join(notes) + '.')
PY
done
