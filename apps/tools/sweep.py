#!/usr/bin/python3
"""Run a sweep of byol, fixmatch or moco runs over a grid of flags and seeds, and tabulate it.

    apps/tools/sweep.py configs/sweeps/byol-fashion-mnist-smoothing.toml
    apps/tools/sweep.py SWEEP --summary          # only the table, from what has finished
    apps/tools/sweep.py SWEEP --plot             # the table, then apps/tools/plot.py's figures

A sweep file (TOML, configs/sweeps/) names the program, its base config file, the seeds, the
threads per run and the runs at once, flags for every run ([flags]), a grid whose every
combination is a cell ([grid]) and cells named by hand ([cells.NAME]). Every (cell, seed) runs
into OUT/<sweep>/<cell>/seed-<s>/ with its output in run.log there. Started again, the runner
skips runs whose metrics.jsonl holds their "final" event, resumes those with a checkpoint
(--resume, bit-identical on the CPU) and starts the rest afresh, so a sweep can be stopped
(Ctrl-C, kill) and continued, on this machine or another holding a copy of OUT/<sweep>.

Ctrl-C or SIGTERM: each running program gets one SIGINT, saves its checkpoint and exits; the
runner waits for them and exits 130. A second Ctrl-C makes the programs abort at once. A lock
on each run directory (held by the program too, so it outlives a killed runner) keeps two
runners from training the same run.

The table (OUT/<sweep>/summary.md, also printed): per cell the mean +- sample std and n of
every score of the final event (teacher, student, the random-init baseline), then every run.

Exit status: 0 when every run has finished, 1 when a run failed or another runner held one, 2
on bad usage (one line saying what was expected and what was found), 130 when interrupted, 77
without Python 3.11's tomllib.
"""
import argparse
import fcntl
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

try:
    import tomllib  # Python >= 3.11 (Debian 12)
except ImportError:
    print("sweep: needs Python 3.11 or newer (tomllib), found " + sys.version.split()[0], file=sys.stderr)
    sys.exit(77)  # what the tests take for "cannot run here"

PROGRAMS = ("byol", "fixmatch", "moco")
TOP_KEYS = {"name", "program", "config", "seeds", "threads", "parallel", "flags", "grid", "cells"}
# Flags the runner sets itself for every run.
RESERVED = {"seed", "out", "resume", "threads", "config", "stop-after"}

# Scores of the final event, in table order, with their column titles; other numeric fields
# of the event follow under their own names.
COLUMNS = {
    "byol": [("linear_top1_teacher", "teacher probe"), ("knn_top1_teacher", "teacher kNN"),
             ("linear_top1_student", "student probe"), ("knn_top1_student", "student kNN"),
             ("linear_top1_baseline", "random-init probe"), ("knn_top1_baseline", "random-init kNN")],
    "fixmatch": [("test_top1_teacher", "teacher top-1"), ("test_top1_student", "student top-1")],
    # MoCo's teacher is its key encoder, its student the query encoder.
    "moco": [("linear_top1_teacher", "key encoder probe"), ("knn_top1_teacher", "key encoder kNN"),
             ("linear_top1_student", "query encoder probe"), ("knn_top1_student", "query encoder kNN"),
             ("linear_top1_baseline", "random-init probe"), ("knn_top1_baseline", "random-init kNN")],
}
NOT_SCORES = {"step", "epoch", "wall_s"}


class UsageError(Exception):
    pass


# ---- the sweep file ---------------------------------------------------------------------------

def flag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UsageError(f"expected a number, string or boolean flag value, found {value!r}")


def flag_args(flags):
    """{'smoothing': 'sts', 'eval-baseline': True} -> ['--smoothing=sts', '--eval-baseline']."""
    args = []
    for key, value in flags.items():
        if value is True:
            args.append(f"--{key}")
        else:
            args.append(f"--{key}={flag_text(value)}")
    return args


def load_sweep(path, overrides):
    """The sweep file as a dict with its cells expanded: name -> flags."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})")
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: expected TOML, found an error: {e}")
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise UsageError(f"{path}: expected keys {', '.join(sorted(TOP_KEYS))}, found {', '.join(sorted(unknown))}")
    program = spec.get("program")
    if program not in PROGRAMS:
        raise UsageError(f"{path}: program: expected one of {', '.join(PROGRAMS)}, found {program!r}")
    config = spec.get("config", "")
    if config and not os.path.isfile(config):
        raise UsageError(f"{path}: config: expected a file, found no '{config}'")
    seeds = spec.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)):
        raise UsageError(f"{path}: seeds: expected a list of integers >= 0, found {seeds!r}")
    for key in ("threads", "parallel"):
        v = spec.get(key, 1)
        if not (isinstance(v, int) and v >= 1):
            raise UsageError(f"{path}: {key}: expected an integer >= 1, found {v!r}")
    flags = dict(spec.get("flags", {}))
    flags.update(overrides)
    grid = spec.get("grid", {})
    hand = spec.get("cells", {})
    for table, name in ((flags, "flags"), (grid, "grid"), (hand, "cells")):
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [{name}]: expected a table, found {table!r}")
    cells = {}
    if grid:
        for key, values in grid.items():
            if not (isinstance(values, list) and values):
                raise UsageError(f"{path}: grid.{key}: expected a non-empty list of values, found {values!r}")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            name = ",".join(f"{k}={flag_text(v)}" for k, v in zip(keys, combo))
            cells[name] = dict(zip(keys, combo))
    for name, cell_flags in hand.items():
        if not isinstance(cell_flags, dict):
            raise UsageError(f"{path}: cells.{name}: expected a table of flags, found {cell_flags!r}")
        if name in cells:
            raise UsageError(f"{path}: cells.{name}: the grid already has a cell of that name")
        cells[name] = dict(cell_flags)
    if not cells:
        cells["base"] = {}
    for name, cell_flags in cells.items():
        if "/" in name or name in (".", "..") or not name:
            raise UsageError(f"{path}: cell name: expected a directory name, found {name!r}")
        clash = RESERVED & (set(cell_flags) | set(flags))
        if clash:
            raise UsageError(f"{path}: cell {name}: the runner sets --{', --'.join(sorted(clash))} itself")
        for key, v in list(cell_flags.items()) + list(flags.items()):
            if isinstance(v, dict):
                raise UsageError(f"{path}: cell {name}: flag {key}: expected a value, found a table "
                                 "(a cell name with a dot needs quotes: [cells.\"sts-p0.5\"])")
            try:
                flag_text(v)
            except UsageError as e:
                raise UsageError(f"{path}: cell {name}: flag {key}: {e}")
    return {
        "name": spec.get("name") or os.path.splitext(os.path.basename(path))[0],
        "program": program,
        "config": config,
        "seeds": seeds,
        "threads": spec.get("threads", 1),
        "parallel": spec.get("parallel", 1),
        "flags": flags,
        "cells": cells,
    }


# ---- one run --------------------------------------------------------------------------------

def read_events(run_dir):
    """The run's metrics events; a line cut short by a kill ends the list."""
    events = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return events


def final_event(run_dir):
    for e in read_events(run_dir):
        if e.get("event") == "final":
            return e
    return None


def last_step(run_dir):
    steps = [e["step"] for e in read_events(run_dir) if e.get("event") == "train" and "step" in e]
    return steps[-1] if steps else 0


class Run:
    def __init__(self, sweep, cell, seed, root, binary):
        self.cell, self.seed = cell, seed
        self.dir = os.path.join(root, cell, f"seed-{seed}")
        self.label = f"{cell}/seed-{seed}"
        self.sweep, self.binary = sweep, binary
        self.proc = self.lock = self.log = None
        self.started = 0.0

    def state(self):
        if final_event(self.dir) is not None:
            return "done"
        if os.path.exists(os.path.join(self.dir, "last.safetensors")):
            return "resume"
        return "new"

    def command(self, resume):
        threads = ["--threads", str(self.sweep["threads"])]
        if resume:
            return [self.binary, "--resume", self.dir] + threads
        cmd = [self.binary]
        if self.sweep["config"]:
            cmd += ["--config", self.sweep["config"]]
        cmd += flag_args(self.sweep["flags"]) + flag_args(self.sweep["cells"][self.cell])
        return cmd + ["--seed", str(self.seed), "--out", self.dir] + threads

    def start(self):
        """Starts the program: "started", or "busy" when another runner holds the run, or
        "done" when it finished meanwhile."""
        os.makedirs(self.dir, exist_ok=True)
        self.lock = open(os.path.join(self.dir, ".sweep-lock"), "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            self.lock = None
            return "busy"
        state = self.state()  # under the lock: nobody else is writing it now
        if state == "done":
            self.lock.close()
            self.lock = None
            return "done"
        resume = state == "resume"
        if not resume:
            # Killed before its first checkpoint: nothing to keep but the log.
            for f in os.listdir(self.dir):
                if f not in ("run.log", ".sweep-lock"):
                    p = os.path.join(self.dir, f)
                    shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        self.resumed_from = last_step(self.dir) if resume else None
        cmd = self.command(resume)
        self.log = open(os.path.join(self.dir, "run.log"), "a")
        self.log.write(f"\n# sweep: {' '.join(cmd)}\n")
        self.log.flush()
        env = dict(os.environ, OMP_NUM_THREADS=str(self.sweep["threads"]))
        # A session of its own: a Ctrl-C at the terminal reaches the runner only, which passes
        # exactly one SIGINT on (two would abort the program without its checkpoint). The
        # lock goes to the program too, so it stays held if the runner itself is killed.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, pass_fds=(self.lock.fileno(),))
        self.started = time.monotonic()
        return "started"

    def finish(self):
        self.log.close()
        self.lock.close()
        self.lock = self.log = None
        return self.proc.returncode

    def last_line(self):
        try:
            with open(os.path.join(self.dir, "run.log")) as f:
                lines = [l.strip() for l in f if l.strip() and not l.startswith("# sweep:")]
            return lines[-1] if lines else ""
        except OSError:
            return ""


def minutes(seconds):
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def run_sweep(sweep, root, binary, parallel):
    """Runs what is not done; returns the exit status."""
    runs = [Run(sweep, cell, seed, root, binary) for seed in sweep["seeds"] for cell in sweep["cells"]]
    # Seed-major order: every cell has a first seed before any has a second.
    todo = [r for r in runs if r.state() != "done"]
    print(f"sweep {sweep['name']}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run, "
          f"{parallel} at once with {sweep['threads']} threads each; in {root}", flush=True)
    stop = {"signals": 0}
    running, failed, busy = [], [], []

    def on_signal(signum, frame):
        stop["signals"] += 1
        for r in running:
            try:
                r.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        if stop["signals"] == 1:
            print(f"sweep: stopping: {len(running)} runs save a checkpoint and exit (again: abort them)", flush=True)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    done_count = len(runs) - len(todo)
    try:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < parallel and not stop["signals"]:
                r = queue.pop(0)
                started = r.start()
                if started == "busy":
                    busy.append(r)
                    print(f"sweep: {r.label}: skipped, another runner holds it", flush=True)
                    continue
                if started == "done":
                    done_count += 1
                    print(f"sweep: {r.label}: finished meanwhile by another runner", flush=True)
                    continue
                how = f"resumed at step {r.resumed_from}" if r.resumed_from is not None else "started"
                print(f"sweep: {r.label}: {how}", flush=True)
                running.append(r)
            if stop["signals"] and not running:
                break
            time.sleep(0.1)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                rc = r.finish()
                took = minutes(time.monotonic() - r.started)
                if rc == 0 and final_event(r.dir) is not None:
                    done_count += 1
                    print(f"sweep: [{done_count}/{len(runs)}] {r.label}: done in {took}: {r.last_line()}", flush=True)
                elif rc == 0 or rc == 130 or stop["signals"]:
                    print(f"sweep: {r.label}: stopped after {took}, checkpoint at step {last_step(r.dir)}", flush=True)
                else:
                    failed.append(r)
                    print(f"sweep: {r.label}: FAILED (exit {rc}) after {took}: {r.last_line()} "
                          f"(log {os.path.join(r.dir, 'run.log')})", flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop["signals"]:
        print(f"sweep: interrupted; start it again to continue ({done_count}/{len(runs)} finished)", flush=True)
        return 130
    if busy:
        print(f"sweep: {len(busy)} runs were held by another runner; start it again once that one is done",
              flush=True)
    return 1 if failed or busy else 0


# ---- the table ------------------------------------------------------------------------------

def mean_std(values):
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def cell_text(values, digits=2):
    mean, std = mean_std(values)
    if mean is None:
        return "-"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary(sweep, root, sweep_path):
    """The Markdown summary of everything that has finished."""
    finals = {}  # cell -> [(seed, final event)]
    for cell in sweep["cells"]:
        finals[cell] = []
        for seed in sweep["seeds"]:
            e = final_event(os.path.join(root, cell, f"seed-{seed}"))
            if e is not None:
                finals[cell].append((seed, e))
    known = COLUMNS[sweep["program"]]
    present = {k for runs in finals.values() for _, e in runs for k, v in e.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    columns = [(k, title) for k, title in known if k in present]
    columns += [(k, k) for k in sorted(present - NOT_SCORES - {k for k, _ in known})]
    total = len(sweep["cells"]) * len(sweep["seeds"])
    finished = sum(len(v) for v in finals.values())
    lines = [f"# Sweep {sweep['name']}", "",
             f"`{sweep_path}`: {sweep['program']} with `{sweep['config'] or 'its defaults'}`, seeds "
             f"{', '.join(map(str, sweep['seeds']))}; {finished} of {total} runs finished. "
             "Scores in percent, mean ± sample standard deviation over the finished seeds (n); "
             "wall time per run in minutes.", ""]
    head = ["cell", "n"] + [title for _, title in columns] + ["wall (min)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
    for cell, runs in finals.items():
        row = [cell, str(len(runs))]
        row += [cell_text([e[k] for _, e in runs if k in e]) for k, _ in columns]
        row.append(cell_text([e["wall_s"] / 60 for _, e in runs if "wall_s" in e], 1))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Every run:", ""]
    head = ["cell", "seed"] + [title for _, title in columns] + ["wall (min)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|")
    for cell, runs in finals.items():
        for seed, e in runs:
            row = [cell, str(seed)] + [f"{e[k]:.2f}" if k in e else "-" for k, _ in columns]
            row.append(f"{e['wall_s'] / 60:.1f}" if "wall_s" in e else "-")
            lines.append("| " + " | ".join(row) + " |")
    missing = [f"{cell}/seed-{s}" for cell in sweep["cells"] for s in sweep["seeds"]
               if s not in [seed for seed, _ in finals[cell]]]
    if missing:
        lines += ["", f"Not finished ({len(missing)}): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


# ---- main -------------------------------------------------------------------------------------

def parse_set(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set: expected FLAG=VALUE, found {item!r}")
        out[key] = value
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", help="the sweep file (configs/sweeps/*.toml)")
    ap.add_argument("--out", default="runs", help="where the sweep's directory goes (default runs)")
    ap.add_argument("--build", default="build", help="folder holding the programs (default build)")
    ap.add_argument("--threads", type=int, help="CPU threads per run (default: the sweep file's)")
    ap.add_argument("--parallel", type=int, help="runs at once (default: the sweep file's)")
    ap.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                    help="a flag for every run on top of the file's (tests: a small data set)")
    ap.add_argument("--summary", action="store_true", help="only write and print the table")
    ap.add_argument("--plot", action="store_true", help="also draw the figures into OUT/<sweep>/plots")
    ap.add_argument("--dry-run", action="store_true", help="print each run's command, run nothing")
    args = ap.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep, parse_set(args.set))
        for key in ("threads", "parallel"):
            v = getattr(args, key)
            if v is not None:
                if v < 1:
                    raise UsageError(f"--{key}: expected an integer >= 1, found {v}")
                sweep[key] = v
        binary = os.path.join(args.build, sweep["program"])
        if not args.summary and not os.access(binary, os.X_OK):
            raise UsageError(f"--build: expected the program {binary}, found none (make {binary})")
    except UsageError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    root = os.path.join(args.out, sweep["name"])
    if args.dry_run:
        for seed in sweep["seeds"]:
            for cell in sweep["cells"]:
                r = Run(sweep, cell, seed, root, binary)
                state = r.state()
                print(f"{r.label} [{state}]: {' '.join(r.command(state == 'resume'))}")
        return 0
    status = 0
    if not args.summary:
        os.makedirs(root, exist_ok=True)
        shutil.copyfile(args.sweep, os.path.join(root, "sweep.toml"))  # what the runs were asked for
        status = run_sweep(sweep, root, binary, sweep["parallel"])
    table = summary(sweep, root, args.sweep)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "summary.md"), "w") as f:
        f.write(table)
    print(table, end="")
    if args.plot and status != 130:
        plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.py")
        rc = subprocess.call([sys.executable, plot, root, "--out", os.path.join(root, "plots")])
        status = status or (0 if rc == 0 else 1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
