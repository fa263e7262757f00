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

A directory holds one sweep. Each start keeps its sweep file as OUT/<sweep>/sweep.toml; a later
start (with the same file, an extended one, or that copy) must run the runs already there as
they were started: a file whose program, config or flags of a cell already there differ from
the copy's, or a --set that differs from the flags a run was started with (its config.json), is
refused naming the first difference, and nothing there changes. Seeds and cells may be added.
--data is the exception: a data set moved (another machine, another disk) may be named anew, and
a resumed run is given it; the program refuses it unless it holds the images the run started
on (their fingerprint is in the checkpoint).
A line of a metrics.jsonl that is not a JSON object (damaged on disk, edited) is skipped with a
warning, as the programs do: the lines after it still count, so a run whose "final" event is
there is finished.

Ctrl-C or SIGTERM: each running program gets one SIGINT, saves its checkpoint and exits; the
runner waits for them and exits 130. A second Ctrl-C makes the programs abort at once. A lock
on each run directory (held by the program too, so it outlives a killed runner) keeps two
runners from training the same run.

The table (OUT/<sweep>/summary.md, also printed): per cell the mean +- sample std and n of
every score of the final event (teacher, student, the random-init baseline), then every run.

Exit status: 0 when every run has finished, 1 when a run failed or another runner held one or
a file could not be read or written, 2 on bad usage (one line saying what was expected and what
was found), 130 when interrupted, 77 without Python 3.11's tomllib.
"""
import argparse
import fcntl
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import metrics_events

try:
    import tomllib  # Python >= 3.11 (Debian 12)
except ImportError:
    print("sweep: needs Python 3.11 or newer (tomllib), found " + sys.version.split()[0], file=sys.stderr)
    sys.exit(77)  # what the tests take for "cannot run here"

PROGRAMS = ("byol", "fixmatch", "moco")
TOP_KEYS = {"name", "program", "config", "seeds", "threads", "parallel", "flags", "grid", "cells"}
# Flags the runner sets itself for every run.
RESERVED = {"seed", "out", "resume", "threads", "config", "stop-after"}
# What a flag's name may look like (the programs' flags: batch-size, eval-baseline, ...).
FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Files of the sweep's own directory, so no cell may take their names.
SWEEP_FILES = {"sweep.toml", "summary.md", "plots"}
# The one flag a run may be resumed with another value of: where the data set is now (the
# program checks the images are the ones the run started on).
MOVABLE = "data"
# Flags whose value in a run's config.json need not be what the runner started it with: the
# ones a resume does not restore (apps/run/run_directory.cpp, per_invocation()) and --threads,
# which --threads here may change from one start to the next.
NOT_IN_CONFIG = {"config", "out", "resume", "stop-after", "eval-only", "profile-steps", "debug",
                 "nonfinite-check", "threads"}

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
    """Bad usage or a bad sweep file: exit 2."""


class RunError(Exception):
    """A file the runner needs could not be read or written: exit 1."""


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


def dir_name_problem(name):
    """Why `name` cannot be one directory inside the sweep's ("" when it can)."""
    if not isinstance(name, str):
        return "expected a string"
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return "expected a plain directory name (not empty, '.' or '..', no '/')"
    if len(name.encode()) > 255:
        return "expected a directory name of at most 255 bytes"
    return ""


def int_problem(value, least):
    """Why `value` is not an integer >= least ("" when it is). TOML's true is a Python int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"expected an integer >= {least}"
    return ""


def read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})")
    except UnicodeDecodeError as e:  # tomllib reads UTF-8 only
        raise UsageError(f"{path}: expected UTF-8 text, found the byte 0x{e.object[e.start]:02x} at offset {e.start}")
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: expected TOML, found an error: {e}")


def load_sweep(path, overrides, check_config=True):
    """The sweep file as a dict with its cells expanded: name -> flags. check_config: the config
    file must exist (not for the stored copy of a sweep, only compared with the file given)."""
    spec = read_toml(path)
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise UsageError(f"{path}: expected keys {', '.join(sorted(TOP_KEYS))}, found {', '.join(sorted(unknown))}")
    program = spec.get("program")
    if program not in PROGRAMS:
        raise UsageError(f"{path}: program: expected one of {', '.join(PROGRAMS)}, found {program!r}")
    named = "name" in spec
    sweep_name = spec["name"] if named else os.path.splitext(os.path.basename(path))[0]
    problem = dir_name_problem(sweep_name)
    if problem:
        where = "name" if named else "name (the file's, without .toml)"
        raise UsageError(f"{path}: {where}: {problem}, found {sweep_name!r}")
    config = spec.get("config", "")
    if not isinstance(config, str):
        raise UsageError(f"{path}: config: expected the path of a config file, found {config!r}")
    if check_config and config and not os.path.isfile(config):
        raise UsageError(f"{path}: config: expected a file, found no '{config}'")
    seeds = spec.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and not any(int_problem(s, 0) for s in seeds)):
        raise UsageError(f"{path}: seeds: expected a list of integers >= 0, found {seeds!r}")
    # A seed twice would be one run directory counted as two runs of the cell.
    twice = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if twice:
        raise UsageError(f"{path}: seeds: expected distinct integers, found {twice[0]} twice")
    for key in ("threads", "parallel"):
        v = spec.get(key, 1)
        if int_problem(v, 1):
            raise UsageError(f"{path}: {key}: {int_problem(v, 1)}, found {v!r}")
    # Each table is checked before it is read as one.
    flags = spec.get("flags", {})
    grid = spec.get("grid", {})
    hand = spec.get("cells", {})
    for table, key in ((flags, "flags"), (grid, "grid"), (hand, "cells")):
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [{key}]: expected a table, found {table!r}")
    flags = dict(flags)
    flags.update(overrides)
    cells = {}
    if grid:
        for key, values in grid.items():
            if not (isinstance(values, list) and values):
                raise UsageError(f"{path}: grid.{key}: expected a non-empty list of values, found {values!r}")
            texts = []
            for v in values:
                if isinstance(v, (list, dict)):
                    raise UsageError(f"{path}: grid.{key}: expected numbers, strings or booleans, found {v!r}")
                text = flag_text(v)
                # Two equal values would be one cell (one directory) run twice over.
                if text in texts:
                    raise UsageError(f"{path}: grid.{key}: expected distinct values, found {v!r} twice")
                texts.append(text)
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
        problem = dir_name_problem(name)
        if problem:
            raise UsageError(f"{path}: cell name: {problem}, found {name!r}")
        if name in SWEEP_FILES:
            raise UsageError(f"{path}: cell name: expected a name other than {', '.join(sorted(SWEEP_FILES))} "
                             f"(the sweep's own files), found {name!r}")
        clash = RESERVED & (set(cell_flags) | set(flags))
        if clash:
            raise UsageError(f"{path}: cell {name}: the runner sets --{', --'.join(sorted(clash))} itself")
        for key, v in list(cell_flags.items()) + list(flags.items()):
            if not FLAG_NAME.fullmatch(key):
                raise UsageError(f"{path}: cell {name}: expected a flag name (letters, digits, '-'), found {key!r}")
            if isinstance(v, dict):
                raise UsageError(f"{path}: cell {name}: flag {key}: expected a value, found a table "
                                 "(a cell name with a dot needs quotes: [cells.\"sts-p0.5\"])")
            try:
                flag_text(v)
            except UsageError as e:
                raise UsageError(f"{path}: cell {name}: flag {key}: {e}")
    return {
        "name": sweep_name,
        "named": named,  # False: the file's name; see stored_copy_name()
        "program": program,
        "config": config,
        "seeds": seeds,
        "threads": spec.get("threads", 1),
        "parallel": spec.get("parallel", 1),
        "flags": flags,
        "cells": cells,
    }


def cell_flags(sweep, cell):
    """The flags a cell's runs get, as their command-line text: the sweep's, then the cell's
    (the programs take a flag's last value)."""
    merged = dict(sweep["flags"])
    merged.update(sweep["cells"][cell])
    return {key: flag_text(v) for key, v in merged.items()}


def first_difference(old, new):
    """The first thing that makes sweep `new` run a run of sweep `old` with another command ("" when
    nothing does): the program, the config file, or the flags of a cell both have. Seeds and cells
    may be added (new runs: a sweep grows across sessions) or left out (their runs stay on disk);
    threads and runs at once change how, not what."""
    for key in ("program", "config"):
        if old[key] != new[key]:
            return f"{key}: {old[key]!r} there, {new[key]!r} here"
    for cell in new["cells"]:
        if cell not in old["cells"]:
            continue
        a, b = cell_flags(old, cell), cell_flags(new, cell)
        for key in sorted(set(a) | set(b)):
            if key != MOVABLE and a.get(key) != b.get(key):
                there = f"--{key}={a[key]}" if key in a else "no --" + key
                here = f"--{key}={b[key]}" if key in b else "no --" + key
                return f"cell {cell}: {there} there, {here} here"
    return ""


def parse_bool(text):
    """The programs' reading of a boolean flag (apps/run/options.cpp); None when it is none."""
    return {"true": True, "1": True, "yes": True, "on": True,
            "false": False, "0": False, "no": False, "off": False}.get(text)


def same_value(text, saved):
    """Whether the flag text `text` gives the value config.json saved. Only a sure difference
    counts: text that is no number or boolean where one was saved is left to the program, and a
    float flag may have gone through a float32 (0.123456789 is saved as 0.12345679)."""
    if isinstance(saved, bool):
        b = parse_bool(text)
        return b is None or b == saved
    if isinstance(saved, (int, float)):
        try:
            v = float(text)
        except ValueError:
            return True
        return math.isclose(v, saved, rel_tol=1e-6, abs_tol=1e-30) or (math.isnan(v) and math.isnan(saved))
    if isinstance(saved, str):
        return text == saved
    return True


def started_otherwise(sweep, cell, seed, run_dir):
    """The first flag this sweep passes to the run in `run_dir` whose value differs from what
    the run was started with (its config.json), as "--flag=SAVED there, --flag=NEW here"; ""
    when none does or the run has no readable config.json."""
    try:
        with open(os.path.join(run_dir, "config.json"), "rb") as f:
            saved = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return ""  # none yet, or damaged: the checkpoint holds the configuration a resume uses
    if not isinstance(saved, dict):
        return ""
    wanted = cell_flags(sweep, cell)
    wanted["seed"] = str(seed)
    for key, text in wanted.items():
        if key in saved and key not in NOT_IN_CONFIG and key != MOVABLE and not same_value(text, saved[key]):
            was = saved[key] if isinstance(saved[key], str) else json.dumps(saved[key])
            return f"--{key}={was} there, --{key}={text} here"
    return ""


# ---- one run --------------------------------------------------------------------------------

warned = set()  # each damaged line is said once, however often a run's events are read


def warn_once(text):
    if text not in warned:
        warned.add(text)
        print(f"sweep: warning: {text}", file=sys.stderr, flush=True)


def read_events(run_dir):
    """The run's metrics events (metrics_events.read_events: damaged lines skipped with a
    warning, so a run whose "final" event is there is finished); none before the run starts."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        return metrics_events.read_events(path, warn_once)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise RunError(f"{path}: cannot read it ({e.strerror})")


def final_event(run_dir):
    for e in read_events(run_dir):
        if e.get("event") == "final":
            return e
    return None


def number(event, key):
    """event[key] when it is a number (true and false are not), else None."""
    v = event.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def last_step(run_dir):
    steps = [e["step"] for e in read_events(run_dir) if e.get("event") == "train" and number(e, "step") is not None]
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
            data = cell_flags(self.sweep, self.cell).get(MOVABLE)
            return [self.binary, "--resume", self.dir] + (["--data", data] if data else []) + threads
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
    # A score is a number; a field that is something else in one run (a damaged event) is "-".
    present = {k for runs in finals.values() for _, e in runs for k in e if number(e, k) is not None}
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
        row += [cell_text([number(e, k) for _, e in runs if number(e, k) is not None]) for k, _ in columns]
        row.append(cell_text([number(e, "wall_s") / 60 for _, e in runs if number(e, "wall_s") is not None], 1))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Every run:", ""]
    head = ["cell", "seed"] + [title for _, title in columns] + ["wall (min)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["--:"] * (len(head) - 2)) + "|")
    for cell, runs in finals.items():
        for seed, e in runs:
            row = [cell, str(seed)] + [f"{e[k]:.2f}" if number(e, k) is not None else "-" for k, _ in columns]
            row.append(f"{e['wall_s'] / 60:.1f}" if number(e, "wall_s") is not None else "-")
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


def stored_copy_name(path, out):
    """NAME when `path` is OUT/NAME/sweep.toml, the copy a sweep keeps of its file, else None:
    started again from that copy, a sweep without a name = is NAME's, not a new one named
    "sweep"."""
    if os.path.basename(path) != "sweep.toml":
        return None
    folder = os.path.dirname(os.path.abspath(path))
    try:
        return os.path.basename(folder) if os.path.samefile(os.path.dirname(folder), out) else None
    except OSError:  # no OUT yet
        return None


def check_same_sweep(sweep, path, root, overrides):
    """Refuses (UsageError) a sweep whose runs would not be the ones `root` holds: its stored
    sweep.toml (read with the same --set) asks for other commands, or a run there was started
    with other flags (its config.json). Either way the runs there would be skipped, resumed or
    tabulated as if they were this sweep's."""
    stored = os.path.join(root, "sweep.toml")
    if os.path.isfile(stored) and not os.path.samefile(stored, path):
        try:
            old = load_sweep(stored, overrides, check_config=False)
        except UsageError as e:
            raise UsageError(f"{e} (the copy of the sweep that ran in {root})")
        diff = first_difference(old, sweep)
        if diff:
            raise UsageError(f"{path}: expected the sweep {root} holds ({stored}), found another: {diff}; "
                             "give this one another --out or name")
    for seed in sweep["seeds"]:
        for cell in sweep["cells"]:
            run_dir = os.path.join(root, cell, f"seed-{seed}")
            diff = started_otherwise(sweep, cell, seed, run_dir)
            if diff:
                raise UsageError(f"{path}: expected the flags {run_dir} was started with (its config.json), "
                                 f"found others: {diff}; give this sweep another --out or name")


def write_atomic(path, data):
    """Writes `data` (bytes) to `path` through a temporary file, so a failed write (a full
    disk, a kill) leaves the old file whole."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
        overrides = parse_set(args.set)
        sweep = load_sweep(args.sweep, overrides)
        for key in ("threads", "parallel"):
            v = getattr(args, key)
            if v is not None:
                if v < 1:
                    raise UsageError(f"--{key}: expected an integer >= 1, found {v}")
                sweep[key] = v
        binary = os.path.join(args.build, sweep["program"])
        if not args.summary and not os.access(binary, os.X_OK):
            raise UsageError(f"--build: expected the program {binary}, found none (make {binary})")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out: expected a folder, found the file {args.out}")
        if not sweep["named"]:
            sweep["name"] = stored_copy_name(args.sweep, args.out) or sweep["name"]
        root = os.path.join(args.out, sweep["name"])
        if os.path.exists(root) and not os.path.isdir(root):
            raise UsageError(f"--out: expected {root} to be the sweep's folder, found a file")
        check_same_sweep(sweep, args.sweep, root, overrides)
    except UsageError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    try:
        return run_and_tabulate(args, sweep, root, binary)
    except RunError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a directory or file of OUT that cannot be made or written
        print(f"sweep: {e.filename}: {e.strerror}" if e.filename else f"sweep: {e.strerror}", file=sys.stderr)
        return 1


def run_and_tabulate(args, sweep, root, binary):
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
        # What the runs were asked for (check_same_sweep found it agrees with the runs there); a
        # later start is compared with it.
        stored = os.path.join(root, "sweep.toml")
        if not os.path.exists(stored) or not os.path.samefile(stored, args.sweep):
            with open(args.sweep, "rb") as f:
                write_atomic(stored, f.read())
        status = run_sweep(sweep, root, binary, sweep["parallel"])
    table = summary(sweep, root, args.sweep)
    os.makedirs(root, exist_ok=True)
    write_atomic(os.path.join(root, "summary.md"), table.encode())
    print(table, end="")
    if args.plot and status != 130:
        plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.py")
        rc = subprocess.call([sys.executable, plot, root, "--out", os.path.join(root, "plots")])
        status = status or (0 if rc == 0 else 1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
