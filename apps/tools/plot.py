#!/usr/bin/python3
"""Figures of byol and fixmatch runs: training curves, accuracy, fragment ages, the mosaic.

    apps/tools/plot.py runs/demo                          # one run
    apps/tools/plot.py runs/sweep-a/sts runs/sweep-a/se   # cells of a sweep (seed-*/ inside)
    apps/tools/plot.py runs/byol-fashion-mnist-smoothing  # a whole sweep
    make plot RUN="runs/a runs/b"

Each argument is a run directory (it holds metrics.jsonl) or a folder searched for them. Runs
in the same cell (directories seed-<s>/ under one folder, as the sweep runner lays them out)
are one curve: the mean over seeds with a band of one standard deviation (n >= 2); other runs
are a curve each. Written into --out (default: RUN/plots for one argument, else plots/):

  training.png   loss, learning rate, teacher momentum, fraction of parameters updated;
                 FixMatch: also the mask rate and the pseudo-label accuracy
  accuracy.png   teacher (solid) and student (dashed) accuracy over steps: BYOL's kNN monitor,
                 FixMatch's test top-1; the final scores as points at the last step
  ages.png       the fragment-age histogram over training, one panel per curve (the "teacher"
                 events: bin 0 is age 0, bin b >= 1 ages 2^(b-1) .. 2^b - 1), and the mean age
  mosaic-<step>.png  the teacher at a step (runs with --mosaic-steps): one row per parameter
                 tensor, one tile per fragment (a tensor, or an output channel), coloured by
                 its age; one panel per curve (its first run)

Damaged input is drawn around, as the programs read it: a line of metrics.jsonl that is not a
JSON object, or a mosaic-<step>.json that is not a mosaic, is skipped with a warning naming it;
an event without the fields a figure needs is left out of it. Files named mosaic-*.json
otherwise (mosaic-old.json) are not the programs' and are not read.

Needs matplotlib (Debian: python3-matplotlib) to draw; without it, says so and exits 77 (--help
works without it). Bad usage: one line saying what was expected and what was found, exit 2; a
file that cannot be read or written: one line, exit 1. A PNG is replaced only once its new
version is whole.
"""
import argparse
import glob
import json
import math
import os
import re
import sys

import metrics_events

# matplotlib's, imported by main() once the arguments are good, so --help and bad usage need
# no matplotlib.
plt = colors = None

DPI = 90  # --dpi
DPI_RANGE = (10, 600)  # below: unreadable; above: images of hundreds of megapixels
MOSAIC_FILE = re.compile(r"mosaic-(\d+)\.json")  # as the programs name them (--mosaic-steps)


class RunError(Exception):
    """A file that cannot be read: exit 1."""


def import_matplotlib():
    global plt, colors
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
        from matplotlib import colors as mcolors
    except ImportError:
        return False
    plt, colors = pyplot, mcolors
    return True


def warn(text):
    print(f"plot: warning: {text}", file=sys.stderr, flush=True)


def numeric(value):
    """Whether `value` is a number: true and false are not; NaN is (a gap in a curve)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value):
    """`value` when it is a finite number, else None."""
    return value if numeric(value) and math.isfinite(value) else None


# ---- runs and groups --------------------------------------------------------------------------

def read_events(run_dir):
    """The run's metrics events (metrics_events.read_events: damaged lines skipped with a warning)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        return metrics_events.read_events(path, warn)
    except OSError as e:
        raise RunError(f"{path}: cannot read it ({e.strerror})")


def find_runs(paths):
    """Run directories under `paths`, in a stable order."""
    runs = []
    for p in paths:
        if not os.path.isdir(p):
            raise ValueError(f"{p}: expected a run directory or a folder of runs, found no directory")
        if os.path.isfile(os.path.join(p, "metrics.jsonl")):
            runs.append(p)
            continue
        found = sorted(os.path.dirname(m) for m in glob.glob(os.path.join(p, "**", "metrics.jsonl"), recursive=True))
        if not found:
            raise ValueError(f"{p}: expected metrics.jsonl in it or below it, found none")
        runs += found
    return list(dict.fromkeys(os.path.normpath(r) for r in runs))


class Group:
    """The runs of one curve: a sweep cell's seeds, or a single run."""

    def __init__(self, label):
        self.label, self.runs = label, []  # runs: (dir, events)

    def series(self, event, key):
        """Per run: (steps, values) of `key` in events named `event`."""
        out = []
        for _, events in self.runs:
            pts = [(e["step"], e[key]) for e in events
                   if e.get("event") == event and number(e.get("step")) is not None and numeric(e.get(key))]
            if pts:
                out.append(([s for s, _ in pts], [v for _, v in pts]))
        return out


def group_runs(runs):
    groups = {}
    for r in runs:
        name = os.path.basename(r)
        if name.startswith("seed-"):  # a sweep cell: the seeds make one curve
            label = os.path.basename(os.path.dirname(r))
        else:
            label = name
        groups.setdefault(label, Group(label)).runs.append((r, read_events(r)))
    return list(groups.values())


def mean_band(series):
    """Mean and standard deviation over runs at the steps they all share."""
    common = set(series[0][0])
    for steps, _ in series[1:]:
        common &= set(steps)
    steps = sorted(common)
    rows = [dict(zip(s, v)) for s, v in series]
    mean, std = [], []
    for k in steps:
        vals = [r[k] for r in rows]
        m = sum(vals) / len(vals)
        mean.append(m)
        std.append(math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)
    return steps, mean, std


def draw(ax, group, event, key, color, style="-", label=None):
    series = group.series(event, key)
    if not series:
        return False
    steps, mean, std = mean_band(series)
    n = len(series)
    ax.plot(steps, mean, style, color=color, lw=1.3, marker="." if len(steps) < 30 else None, ms=4,
            label=label or f"{group.label} (n={n})")
    if n > 1:
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=color, alpha=0.2, lw=0)
    return True


def palette(n):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# ---- figures ------------------------------------------------------------------------------------

def save(fig, path):
    """Writes the figure to `path` through a temporary file: a failed write (a full disk) leaves
    the PNG that was there whole."""
    tmp = path + ".tmp"
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def training_figure(groups, out):
    fixmatch = any(g.series("train", "sup_loss") for g in groups)
    panels = [("sup_loss", "supervised loss"), ("unsup_loss", "unsupervised loss")] if fixmatch else [("loss", "loss")]
    panels += [("lr", "learning rate"), ("momentum", "teacher momentum m_k"),
               ("updated_fraction", "parameters updated at the step")]
    if fixmatch:
        panels += [("mask_rate", "mask rate (confident pseudo-labels)"), ("pseudo_label_acc", "pseudo-label accuracy")]
    cols = 3 if len(panels) > 4 else 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    cs = palette(len(groups))
    for ax, (key, title) in zip(axes.flat, panels):
        drawn = [draw(ax, g, "train", key, c) for g, c in zip(groups, cs)]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not any(drawn):
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save(fig, out)


def accuracy_figure(groups, out):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cs = palette(len(groups))
    any_drawn = False
    for g, c in zip(groups, cs):
        for event, prefix in (("knn", "knn_top1_"), ("eval", "test_top1_")):
            for who, style in (("teacher", "-"), ("student", "--")):
                any_drawn |= draw(ax, g, event, prefix + who, c, style, label=f"{g.label} {who}")
        # The final scores: the linear probe (BYOL) or the test top-1 (FixMatch).
        for who, marker in (("teacher", "o"), ("student", "s")):
            for key in (f"linear_top1_{who}", f"test_top1_{who}"):
                pts = g.series("final", key)
                if pts:
                    steps = [s[0][0] for s in pts]
                    vals = [s[1][0] for s in pts]
                    ax.scatter(steps, vals, color=c, marker=marker, s=18, zorder=3,
                               label=f"{g.label} {who} final ({'probe' if 'linear' in key else 'test'})")
                    any_drawn = True
        base = g.series("final", "linear_top1_baseline")
        if base:
            ax.scatter([s[0][0] for s in base], [s[1][0] for s in base], color=c, marker="x", s=22, zorder=3,
                       label=f"{g.label} random-init probe")
    if not any_drawn:
        ax.text(0.5, 0.5, "no accuracy logged yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("accuracy: teacher solid / o, student dashed / s", fontsize=10)
    ax.grid(alpha=0.3)
    if any_drawn:
        ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.tight_layout()
    save(fig, out)


def bin_label(b):
    return "0" if b == 0 else (str(2 ** (b - 1)) if b == 1 else f"{2 ** (b - 1)}-{2 ** b - 1}")


def age_fractions(group):
    """Per logged step, the fraction of fragments in each age bin, one list per run: from the
    teacher events that have a step, a fragment count > 0 and a histogram of counts."""
    per_step = {}
    for _, events in group.runs:
        for e in events:
            if e.get("event") != "teacher" or number(e.get("step")) is None:
                continue
            total, hist = number(e.get("fragments")), e.get("age_hist")
            if not (total and total > 0 and isinstance(hist, list) and hist
                    and all(number(c) is not None for c in hist)):
                continue
            per_step.setdefault(e["step"], []).append([c / total for c in hist])
    return per_step


def ages_figure(groups, out):
    with_ages = [(g, age_fractions(g)) for g in groups if g.series("teacher", "age_mean")]
    with_ages = [(g, per_step) for g, per_step in with_ages if per_step]
    if not with_ages:
        return False
    n = len(with_ages)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.6 * (n + 1), 3.6), squeeze=False, layout="constrained")
    cs = palette(len(groups))
    for ax, (g, per_step) in zip(axes[0], with_ages):
        # Fraction of fragments per age bin at each logged step, averaged over the group's runs.
        steps = sorted(per_step)
        bins = max(len(h) for hs in per_step.values() for h in hs)
        grid = [[0.0] * len(steps) for _ in range(bins)]
        for j, k in enumerate(steps):
            for h in per_step[k]:
                for b, f in enumerate(h):
                    grid[b][j] += f / len(per_step[k])
        mesh = ax.pcolormesh(steps + [steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)],
                             list(range(bins + 1)), grid, cmap="magma", vmin=0, vmax=1, shading="flat")
        ax.set_yticks([b + 0.5 for b in range(bins)])
        ax.set_yticklabels([bin_label(b) for b in range(bins)], fontsize=7)
        ax.set_title(f"{g.label}: age histogram", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("age (steps since last update)")
    fig.colorbar(mesh, ax=list(axes[0][:n]), fraction=0.03, label="fraction of fragments")
    ax = axes[0][n]
    for g, c in zip(groups, cs):
        draw(ax, g, "teacher", "age_mean", c)
    ax.set_title("mean fragment age (settles at p / (1 - p))", fontsize=9)
    ax.set_ylabel("steps")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    save(fig, out)
    return True


def mosaic_panel(ax, mosaic, norm, cmap, names=True):
    slots = mosaic["slots"]
    for row, slot in enumerate(slots):
        ages = slot["age"]
        edges = [i / len(ages) for i in range(len(ages) + 1)]
        ax.pcolormesh(edges, [row, row + 0.9], [[a + 1 for a in ages]], norm=norm, cmap=cmap, shading="flat",
                      edgecolors="white" if len(ages) <= 64 else "none", linewidth=0.2)
    ax.set_ylim(len(slots), 0)
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    every = max(1, len(slots) // 80)  # at most about 80 names
    ax.set_yticks([i + 0.45 for i in range(0, len(slots), every)])
    ax.set_yticklabels([slots[i]["name"] for i in range(0, len(slots), every)] if names else [], fontsize=5)
    unit = "output channel" if mosaic["granularity"] != "tensor" else "tensor"
    return f"{mosaic['mode']} p={mosaic['preserve_prob']:g}, {mosaic['granularity']}: a tile per {unit}"


def mosaic_problem(m):
    """Why the parsed JSON `m` is not a mosaic the panels can draw ("" when it is)."""
    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}"
    for key in ("mode", "granularity"):
        if not isinstance(m.get(key), str):
            return f"{key} {m.get(key)!r}"
    if number(m.get("preserve_prob")) is None:
        return f"preserve_prob {m.get('preserve_prob')!r}"
    slots = m.get("slots")
    if not (isinstance(slots, list) and slots):
        return f"slots {slots!r}" if not isinstance(slots, list) else "no slots"
    for i, slot in enumerate(slots):
        if not (isinstance(slot, dict) and isinstance(slot.get("name"), str)):
            return f"slot {i} without a name"
        ages = slot.get("age")
        if not (isinstance(ages, list) and ages and all(number(a) is not None and a >= 0 for a in ages)):
            return f"slot {slot['name']}: age {ages!r}"
    return ""


def read_mosaic(path):
    """The mosaic in `path`, or None (with a warning) when it is not one."""
    try:
        with open(path, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise RunError(f"{path}: cannot read it ({e.strerror})")
    except ValueError as e:  # cut short, or not UTF-8
        warn(f"{path}: expected a mosaic in JSON, found an error ({e}); it is skipped")
        return None
    problem = mosaic_problem(m)
    if problem:
        warn(f"{path}: expected a mosaic (mode, granularity, preserve_prob and slots, each with a name "
             f"and ages >= 0), found {problem}; it is skipped")
        return None
    return m


def mosaic_figures(groups, out_dir, only_step):
    """One figure per step found: a panel per group (its first run holding a good mosaic of
    that step)."""
    by_step = {}
    for g in groups:
        for run, _ in g.runs:
            for path in sorted(glob.glob(os.path.join(run, "mosaic-*.json"))):
                found = MOSAIC_FILE.fullmatch(os.path.basename(path))
                if not found:
                    continue  # mosaic-old.json and the like: not a program's
                step = int(found.group(1))
                if (only_step is None or step == only_step) and g.label not in by_step.get(step, {}):
                    m = read_mosaic(path)
                    if m is not None:
                        by_step.setdefault(step, {})[g.label] = m
    written = []
    for step, mosaics in sorted(by_step.items()):
        top = max(max(a for s in m["slots"] for a in s["age"]) for m in mosaics.values())
        norm = colors.LogNorm(vmin=1, vmax=max(2, top + 1))
        cmap = plt.get_cmap("viridis")
        rows = max(len(m["slots"]) for m in mosaics.values())
        fig, axes = plt.subplots(1, len(mosaics), figsize=(2.6 * len(mosaics) + 2.5, max(3.5, 0.09 * rows + 1)),
                                 squeeze=False, layout="constrained")
        first = None
        for ax, (label, m) in zip(axes[0], mosaics.items()):
            layout = [slot["name"] for slot in m["slots"]]
            what = mosaic_panel(ax, m, norm, cmap, names=layout != first)  # names once for panels alike
            first = first or layout
            ax.set_title(f"{label}\n{what}", fontsize=7)
        # Colour is log(1 + age), labelled with the age itself.
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[0]), fraction=0.04,
                           label="age (steps since last update)")
        ages = [0] + [2 ** i for i in range(int(math.log2(max(1, top))) + 1)]
        bar.set_ticks([a + 1 for a in ages], labels=[str(a) for a in ages])
        bar.ax.minorticks_off()
        fig.suptitle(f"the teacher's mosaic after step {step}", fontsize=10)
        path = os.path.join(out_dir, f"mosaic-{step}.png")
        save(fig, path)
        written.append(path)
    return written


def main(argv):
    global DPI
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories or folders of them")
    ap.add_argument("--out", help="folder for the PNGs (default: RUN/plots for one argument, else plots)")
    ap.add_argument("--mosaic-step", type=int, help="draw only this step's mosaic (default: every one found)")
    ap.add_argument("--dpi", type=int, default=DPI,
                    help=f"resolution of the PNGs, {DPI_RANGE[0]} to {DPI_RANGE[1]} (default {DPI})")
    args = ap.parse_args(argv)
    out = args.out or (os.path.join(args.runs[0], "plots") if len(args.runs) == 1 else "plots")
    try:
        if not DPI_RANGE[0] <= args.dpi <= DPI_RANGE[1]:
            raise ValueError(f"--dpi: expected an integer in [{DPI_RANGE[0]}, {DPI_RANGE[1]}], found {args.dpi}")
        if args.mosaic_step is not None and args.mosaic_step < 0:
            raise ValueError(f"--mosaic-step: expected a step >= 0, found {args.mosaic_step}")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out: expected a folder for the PNGs, found the file {out}")
        run_dirs = find_runs(args.runs)
    except ValueError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    DPI = args.dpi
    if not import_matplotlib():
        print("plot: needs matplotlib (Debian: apt-get install python3-matplotlib), found none", file=sys.stderr)
        return 77  # what the tests take for "cannot run here"
    try:
        groups = group_runs(run_dirs)
        os.makedirs(out, exist_ok=True)
        written = [os.path.join(out, "training.png"), os.path.join(out, "accuracy.png")]
        training_figure(groups, written[0])
        accuracy_figure(groups, written[1])
        if ages_figure(groups, os.path.join(out, "ages.png")):
            written.append(os.path.join(out, "ages.png"))
        written += mosaic_figures(groups, out, args.mosaic_step)
    except RunError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the folder or a PNG cannot be written
        print(f"plot: {e.filename}: {e.strerror}" if e.filename else f"plot: {e.strerror}", file=sys.stderr)
        return 1
    runs = sum(len(g.runs) for g in groups)
    print(f"plot: {runs} runs in {len(groups)} curves -> {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
