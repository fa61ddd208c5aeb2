#!/usr/bin/env python
"""Plot the evaluations of fine-tuning runs against the iteration: one curve per run (the
``bbox/AP``-style figures Detectron2 writes to ``metrics.json`` at every TEST.EVAL_PERIOD and
after the last iteration), one panel per metric.

    # the arms of the real-photo study, seed 0
    python tools/plot_finetune.py random=output/real_bench/aquarium/random_seed0 \\
        SoCo=output/real_bench/aquarium/soco_seed0 --out finetune_curve.png

Each argument is a run folder holding ``metrics.json``, or a ``metrics.json`` itself; a label may
be given as ``LABEL=PATH`` (default: the folder's name). Runs whose label is the same up to a
trailing ``seedN`` share a colour. Writes a PNG and prints the figures it plotted.
"""
import argparse
import os
import re
import sys
from typing import Dict, List, Tuple

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.utils.metrics_json import read_records  # noqa: E402
from soco_d2.utils.plotting import run_file, save_figure  # noqa: E402

DEFAULT_METRICS = ("bbox/AP", "bbox/AP50")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or metrics.json files, optionally LABEL=PATH")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                   help="metrics.json keys to plot, one panel each (default: %(default)s)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--out", required=True, help="PNG file to write")
    return p.parse_args(argv)


def read_run(spec: str) -> Tuple[str, List[dict]]:
    """(label, the records of metrics.json) of ``LABEL=PATH`` or ``PATH``."""
    label, file = run_file(spec, "metrics.json")
    records, bad = read_records(file)
    for n in bad:  # a line cut by a crash mid-write: the rest still counts
        print(f"{file}:{n}: not JSON, skipped", file=sys.stderr)
    return label, records


def curve(records: List[dict], metric: str) -> List[Tuple[int, float]]:
    """(iterations trained, value) of every record with ``metric``. A periodic evaluation is
    logged at the 0-based ``iteration`` of the step it follows (that many plus one steps done),
    the one after training at MAX_ITER itself: a point is capped at the steps the run logged
    (its last training record's iteration plus one). A run resumed from an evaluated checkpoint
    repeats an evaluation: the last record of an iteration counts."""
    trained = [int(r["iteration"]) + 1 for r in records if "total_loss" in r and "iteration" in r]
    cap = max(trained) if trained else None
    points = {}
    for rec in records:
        if metric in rec and "iteration" in rec:
            done = int(rec["iteration"]) + 1
            points[done if cap is None else min(done, cap)] = float(rec[metric])
    return sorted(points.items())


def arm_of(label: str) -> str:
    """The colour group of a run label: the label without a trailing ``seedN``."""
    return re.sub(r"[ _-]*seed[ _-]*\d+$", "", label)


def main(argv=None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: Dict[str, List[dict]] = dict(read_run(r) for r in args.runs)
    if not any(curve(recs, m) for recs in runs.values() for m in args.metrics):
        raise SystemExit(f"none of the runs has {' or '.join(args.metrics)} in metrics.json "
                         "(no evaluation yet?)")
    groups = list(dict.fromkeys(arm_of(label) for label in runs))
    colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(6 * len(args.metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], args.metrics):
        seen: Dict[str, int] = {}
        for label, records in runs.items():
            points = curve(records, metric)
            if not points:
                continue
            group = arm_of(label)
            k = seen[group] = seen.get(group, -1) + 1
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label,
                    color=colours[groups.index(group) % len(colours)], ls=styles[k % len(styles)])
            print(f"{metric} {label}: " + ", ".join(f"{i}: {v:.2f}" for i, v in points))
        ax.set_xlabel("fine-tuning iterations")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(args.title or "fine-tuning evaluations")
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
