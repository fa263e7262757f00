"""A run's metrics.jsonl as the programs read it back (apps/run/run_directory.cpp, MetricsLog):
one JSON object per line; a line that is not one (cut short, damaged on disk, edited) is
skipped with a warning, and the lines after it are still the run's history. Shared by sweep.py
and plot.py, which sit beside this file (a script's own folder is on Python's import path)."""
import json


def read_events(path, warn):
    """The events of the metrics file `path`, in order. `warn(text)` is called once per line
    that is not a JSON object. OSError (no file, unreadable) is the caller's to report."""
    events = []
    with open(path, "rb") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line.decode("utf-8"))
            except ValueError:  # not JSON, or not UTF-8
                e = None
            if isinstance(e, dict):
                events.append(e)
            else:
                warn(f"{path} line {line_number} is not a JSON object; it is skipped, the other lines are kept")
    return events
