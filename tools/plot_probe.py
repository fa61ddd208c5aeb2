#!/usr/bin/env python
"""Plot the probe of pretraining runs against the iteration: one curve per run (its
``probe.json``, written by TEST.PROBE), random initialisation as a horizontal line.

    # the recipes tried on Imagenette, class-balanced kNN of the box-head features
    python tools/plot_probe.py output/real_search/* --metrics knn_head_bal knn_pooled_bal \\
        --out probe_curve.png

Each argument is a run folder holding ``probe.json``, or a ``probe.json`` itself; a label may be
given as ``LABEL=PATH``. The random-init line is the mean of the runs' first probes (iteration 0:
each run's own random initialisation, so their spread shows how much one init varies), unless
``--random-json`` names a ``tools/probe.py --out`` file with a ``random`` row. One panel per
metric; ``--stored-bn`` plots the probes made with the stored BatchNorm statistics instead
(TEST.PROBE.STORED_BN). Writes a PNG and prints the figures it plotted.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

try:
    import soco_d2  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from soco_d2.utils.plotting import run_file, save_figure  # noqa: E402

DEFAULT_METRICS = ("knn_head_bal", "knn_pooled_bal")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders or probe.json files, optionally LABEL=PATH")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                   help="probe figures to plot, one panel each (default: %(default)s)")
    p.add_argument("--stored-bn", action="store_true",
                   help="plot the probes with the stored BatchNorm statistics (probe.json's stored_bn)")
    p.add_argument("--random-json", help="a tools/probe.py --out file whose 'random' row is the random-init line")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--out", required=True, help="PNG file to write")
    return p.parse_args(argv)


def read_run(spec: str) -> Tuple[str, dict]:
    """(label, probe.json contents) of ``LABEL=PATH`` or ``PATH`` (a folder or the file)."""
    label, file = run_file(spec, "probe.json")
    with open(file) as f:
        data = json.load(f)
    if not data.get("probes"):
        raise SystemExit(f"{file} holds no probe")
    return label, data


def curve(data: dict, metric: str, stored_bn: bool) -> List[Tuple[int, float]]:
    """(iterations trained, value) of every probe of a run that has ``metric``. ProbeHook records
    the iteration it ran in: before the first step (or at a resume) that many iterations are
    done, after a step one more."""
    points = []
    for probe in data["probes"]:
        source = probe.get("stored_bn", {}) if stored_bn else probe
        if metric in source:
            before_step = probe.get("when") in ("initialisation", "resumed")
            points.append((int(probe["iteration"]) + (0 if before_step else 1), float(source[metric])))
    # a periodic probe and the final one can fall on the same iteration: keep the last
    return sorted(dict(points).items())


def random_level(runs: Dict[str, dict], metric: str, stored_bn: bool, random_json: Optional[str]):
    """(mean, min, max) of random init for ``metric``."""
    if random_json:
        with open(random_json) as f:
            rows = [r for r in json.load(f)["results"] if r["trunk"] == "random"]
        if not rows or metric not in rows[0]:
            raise SystemExit(f"{random_json} has no 'random' row with {metric}")
        return rows[0][metric], rows[0][metric], rows[0][metric]
    firsts = [c[0][1] for c in (curve(d, metric, stored_bn) for d in runs.values()) if c and c[0][0] == 0]
    if not firsts:
        return None
    return sum(firsts) / len(firsts), min(firsts), max(firsts)


def main(argv=None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = dict(read_run(r) for r in args.runs)
    fig, axes = plt.subplots(1, len(args.metrics), figsize=(6 * len(args.metrics), 4.2), squeeze=False)
    # one colour per run: matplotlib's default cycle repeats after 10, tab20 after 20
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
    for ax, metric in zip(axes[0], args.metrics):
        for i, (label, data) in enumerate(runs.items()):
            points = curve(data, metric, args.stored_bn)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=label,
                        color=colours[i % len(colours)], ls="-" if i < len(colours) else ":")
                print(f"{metric} {label}: " + ", ".join(f"{i}: {v:.3f}" for i, v in points))
        level = random_level(runs, metric, args.stored_bn, args.random_json)
        if level is not None:
            mean, lo, hi = level
            ax.axhline(mean, color="black", ls="--", lw=1, label="random init")
            if hi > lo:
                ax.axhspan(lo, hi, color="gray", alpha=0.15, lw=0)
            print(f"{metric} random init: {mean:.3f} (range {lo:.3f}-{hi:.3f})")
        ax.set_xlabel("iterations trained")
        ax.set_ylabel(metric + (" (stored BN)" if args.stored_bn else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    datasets = sorted({d.get("dataset", "?") for d in runs.values()})
    fig.suptitle(args.title or f"probe on {', '.join(datasets)}")
    fig.tight_layout()
    save_figure(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
