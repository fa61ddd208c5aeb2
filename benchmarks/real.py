#!/usr/bin/env python
"""The paper's table in miniature, on real photographs: pretrain, fine-tune Faster R-CNN R18-FPN
on the Aquarium train photos, evaluate on Aquarium valid, paired by fine-tuning seed.

    python benchmarks/real.py                       # every arm, seeds 0 1 2, the bar
    python benchmarks/real.py --arms random soco    # SoCo against random init only
    python benchmarks/real.py --quick --seeds 0     # smoke test of the pipeline, minutes

Arms (they differ ONLY in MODEL.WEIGHTS of configs/transfer/faster_rcnn_R18_FPN_aquarium.yaml):

- ``random``: random init (the baseline every other arm is paired with).
- ``supervised``: a reference, not a method. The same detector trained WITH the Imagenette
  labels (configs/supervised/faster_rcnn_R18_FPN_imagenette_cpu.yaml: every train photo one
  central box of its class), its ResNet kept, as the paper's "ImageNet supervised" row keeps
  the ImageNet classifier's. Same pretraining images and about the SoCo arm's wall time.
- ``soco``: SoCo without labels on the 9,469 Imagenette train photos and their selective-search
  proposals, the CPU recipe configs/soco/soco_R18_FPN_imagenette_cpu.yaml; its whole trunk
  (ResNet, FPN, box head).
- ``aligndet``: the label-free chain SoCo -> AlignDet: the SoCo ResNet, then FPN, RPN and box
  head pretrained by AlignDet (configs/aligndet/aligndet_R18_FPN_aquarium_cpu.yaml) on the
  Aquarium TRAIN photos WITHOUT their labels (their selective-search proposals are the
  pseudo-boxes), as the paper pretrains this stage on the detection set's own images.
- ``montage``: Montage on the Aquarium train set WITH its labels (the method pretrains on the
  labelled detection set itself; configs/montage/montage_R18_aquarium_cpu.yaml); its ResNet.

Pretraining runs once (seed 0) and is shared by the fine-tuning seeds. Beside the table, every
arm's trunk is probed with tools/probe.py (class-balanced kNN of box-head features, BatchNorm
re-estimated) on the Imagenette ``report`` half of val (never used to choose the recipe) and on
the Aquarium valid boxes, and each arm's pretraining time is given (training only: Detectron2's
own s / it times the iterations, the probe and evaluation hooks left out; the JSON keeps the wall
time too). The probe curves of the pretraining runs are plotted to OUTPUT_ROOT/probe_curve.png
(tools/plot_probe.py), the Aquarium evaluations of every fine-tuning run (TEST.EVAL_PERIOD) to
OUTPUT_ROOT/finetune_curve.png (tools/plot_finetune.py).

Bar (the real-photo evidence issue): SoCo - random >= 2 box AP, paired over the seeds, and greater
than 2 standard deviations of the paired difference.

Resumable like every study (benchmarks/harness.py): a finished run is reused, an interrupted one
continues from its last checkpoint, a folder made with other settings is refused. Missing
proposals (Imagenette and Aquarium train) are generated first; ../shared/data/imagenette_160 and
../shared/data/aquarium (or $SOCO_SHARED_DATA) must be present.
"""
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import Pretraining, fmt, log, paired_gain_bar, read_json, rel, run_logged  # noqa: E402

SOCO_CONFIG = "configs/soco/soco_R18_FPN_imagenette_cpu.yaml"
ALIGNDET_CONFIG = "configs/aligndet/aligndet_R18_FPN_aquarium_cpu.yaml"
MONTAGE_CONFIG = "configs/montage/montage_R18_aquarium_cpu.yaml"
SUPERVISED_CONFIG = "configs/supervised/faster_rcnn_R18_FPN_imagenette_cpu.yaml"
FINETUNE_CONFIG = "configs/transfer/faster_rcnn_R18_FPN_aquarium.yaml"
BACKBONE = ("backbone.bottom_up.",)
MIN_GAIN = 2.0
# The probe sets beside the table: {name in tables: (dataset, probe.py flags)}.
PROBE_SETS = {"Imagenette": ("imagenette_160_val_report", []),
              "Aquarium": ("aquarium_valid", ["--min-size", "384", "--max-size", "512"])}
PROBE_FIGURE = "knn_head_bal"
QUICK_PROBE_IMAGES = 20


class RealStudy(harness.Study):
    name = "real"
    description = __doc__
    datasets = ("aquarium",)
    default_datasets = ("aquarium",)
    arms = {"random": "random", "supervised": "supervised Imagenette (labels)", "soco": "SoCo",
            "aligndet": "SoCo -> AlignDet", "montage": "Montage (Aquarium labels)"}
    default_arms = list(arms)
    finetune_config = FINETUNE_CONFIG
    # The probe during a quick run: a few images, first and last only.
    _quick_probe = ("TEST.PROBE.PERIOD", "0", "TEST.PROBE.MAX_IMAGES", str(QUICK_PROBE_IMAGES))
    pretrainings = {
        "soco": Pretraining(SOCO_CONFIG, quick_opts=_quick_probe),
        "aligndet": Pretraining(ALIGNDET_CONFIG, start_from="soco", quick_opts=_quick_probe),
        "montage": Pretraining(MONTAGE_CONFIG),
    }
    arm_weights = {"soco": "soco", "aligndet": "aligndet", "montage": "montage"}
    trunk_prefixes = {"supervised": BACKBONE, "soco": ("backbone.", "roi_heads.box_head."),
                      "aligndet": ("backbone.", "proposal_generator.", "roi_heads.box_head."),
                      "montage": BACKBONE}
    paired = (("aligndet", "soco"), ("soco", "supervised"))
    box_only = True

    # -------------------------------------------------------------------- command line
    def add_arguments(self, parser):
        parser.add_argument(
            "--pretrain-root", default=None,
            help="folder of the pretrainings and the supervised reference (default: OUTPUT_ROOT). "
                 "Point it at an earlier invocation's OUTPUT_ROOT to fine-tune its trunks with another "
                 "fine-tuning setting without pretraining again; a pretraining missing there is run there")

    def check_args(self, parser, args):
        if args.pretrain_root is not None:
            args.pretrain_root = os.path.abspath(os.path.join(harness.REPO_ROOT, args.pretrain_root))
            if not os.path.isdir(args.pretrain_root):
                parser.error(f"--pretrain-root: {args.pretrain_root} is not a folder")

    def pretrain_root(self, args):
        return args.pretrain_root or args.output_root

    def settings(self, args):
        return dict(super().settings(args), pretrain_root=rel(self.pretrain_root(args)))

    # ------------------------------------------------------------------------- data
    def prepare_data(self, dataset):
        from soco_d2.data.builtin import datasets_root
        from soco_d2.data.real_photos import (AQUARIUM, AQUARIUM_PROPOSALS, IMAGENETTE, IMAGENETTE_PROPOSALS,
                                              shared_data_available, shared_data_dir)

        for name in (IMAGENETTE, AQUARIUM):
            if not shared_data_available(name):
                raise SystemExit(f"{shared_data_dir(name)} is missing: the real-photo study needs it "
                                 "(set $SOCO_SHARED_DATA to the folder that holds it)")
        root = datasets_root()
        jobs = [(os.path.join(root, IMAGENETTE_PROPOSALS), ["--image-dir", os.path.join(shared_data_dir(IMAGENETTE), "train")]),
                (os.path.join(root, AQUARIUM_PROPOSALS),
                 ["--coco-json", os.path.join(shared_data_dir(AQUARIUM), "instances_train.json"),
                  "--image-root", shared_data_dir(AQUARIUM)])]
        for output, source in jobs:
            if os.path.isfile(output):
                continue
            log(f"generating selective-search proposals: {rel(output)}")
            rc, _ = run_logged([sys.executable, "tools/generate_proposals.py", *source, "--output", output,
                                "--no-progress"], output + ".log")
            if rc:
                raise SystemExit(f"tools/generate_proposals.py failed (exit {rc}); see {rel(output)}.log")

    # ------------------------------------------------------------------ pretraining
    def weights(self, run, dataset):
        weights = super().weights(run, dataset)
        if "supervised" in run.args.arms:
            weights["supervised"] = self.supervised_trunk(run)
        run.result["probes"] = self.probe_trunks(run, weights)
        run.save()
        return weights

    def supervised_trunk(self, run) -> str:
        """The supervised reference (module docstring): trained once, its ResNet kept."""
        args = run.args
        output_dir = self.pretrain_dir(args, "supervised")
        trunk = os.path.join(self.pretrain_root(args), "supervised_trunk.pth")
        iters = harness.config_max_iter(SUPERVISED_CONFIG)
        opts = ["MODEL.WEIGHTS", ""] + list(self.common_finetune_opts)
        if args.quick:
            iters = self.quick_pretrain_iters
            opts += harness.scaled_schedule(iters, 0.1, (0.75,)) + list(self.quick_opts)
        opts += ["SEED", "0", "OUTPUT_DIR", rel(output_dir)]
        record = harness.supervised_reference("[supervised reference]", {"method": self.arms["supervised"]},
                                              SUPERVISED_CONFIG, opts, output_dir, trunk, BACKBONE, iters,
                                              args.keep_checkpoints)
        run.result["pretraining"]["supervised"] = record
        run.save()
        return trunk

    def probe_trunks(self, run, weights: dict) -> dict:
        """tools/probe.py on every arm's weights (random init included) and each probe set:
        ``{probe set: {arm: figures}}``. A trunk already in the set's JSON, probed with the same
        flags from the same file (size and modification time), is reused: adding an arm probes
        that arm only (each trunk is probed independently, from the same seed)."""
        args, out = run.args, {}
        arms = [a for a in args.arms if a == "random" or a in weights]
        files = {arm: "random" if arm == "random" else rel(weights[arm]) for arm in arms}
        for label, (dataset, flags) in PROBE_SETS.items():
            path = os.path.join(args.output_root, f"probe_{dataset}.json")
            flags = flags + (["--max-images", str(QUICK_PROBE_IMAGES)] if args.quick else [])
            done = read_json(path) or {}
            stamps = {f: _file_stamp(f) for f in files.values()}
            # a JSON written before stamps were recorded is trusted by path
            recorded = done.get("stamps", stamps)
            kept = {r["trunk"]: r for r in done.get("results", [])
                    if done.get("flags") == flags and recorded.get(r["trunk"]) == stamps.get(r["trunk"])}
            missing = [f for f in files.values() if f not in kept]
            if missing:
                part = path[:-5] + ".new.json"
                cmd = [sys.executable, "tools/probe.py", "--config-file", FINETUNE_CONFIG, "--dataset", dataset,
                       *flags, "--weights", *missing, "--out", part, "MODEL.WEIGHTS", ""]
                log(f"probing {len(missing)} trunk(s) on {dataset}: {' '.join(missing)}")
                rc, _ = run_logged(cmd, os.path.join(args.output_root, f"probe_{dataset}.log"))
                new = read_json(part)
                if rc or new is None:
                    raise SystemExit(f"tools/probe.py failed (exit {rc}); see {rel(path)[:-5]}.log")
                kept.update({r["trunk"]: r for r in new["results"]})
                done = dict(new, results=list(kept.values()), flags=flags,
                            stamps={f: stamps.get(f, _file_stamp(f)) for f in kept})
                harness.write_json(path, done)
                os.remove(part)
            out[label] = {arm: kept[f] for arm, f in files.items()}
        return out

    # ------------------------------------------------------------------------ results
    def result_fields(self, result):
        fields = super().result_fields(result)
        supervised = result["pretraining"].get("supervised")
        if supervised:
            fields["arm_pretraining"]["supervised"] = {
                "pretrainings": ["supervised"], "wall_s": supervised.get("wall_s"),
                "train_s": supervised.get("train_s"), "probe": None}
        if "delta_soco_minus_random" in result["summary"].get("aquarium", {}):
            fields["bar"] = paired_gain_bar(result["summary"], "aquarium", "delta_soco_minus_random", MIN_GAIN)
        return fields

    def columns(self, result):
        columns = {f"kNN bal {label}": {arm: f"{row[PROBE_FIGURE]:.3f}" for arm, row in rows.items()}
                   for label, rows in (result.get("probes") or {}).items()}
        wall = super().columns(result).get("pretrain min", {})
        return dict(columns, **{"pretrain min": wall})

    def report(self, result, args, minutes):
        lines = []
        bar = result.get("bar")
        if bar and bar.get("paired_gain_mean") is not None:
            lines.append(f"SoCo - random box AP (paired) {bar['paired_gain_mean']:+.2f} +- "
                         f"{fmt(bar['paired_gain_std'])}; >= {MIN_GAIN} and > 2 std: {bar['met']}")
        runs = [f"{self.arms.get(k, k)}={rel(os.path.join(harness.REPO_ROOT, p['output_dir']))}"
                for k, p in result["pretraining"].items() if p.get("probe")]
        if runs:
            plot = os.path.join(args.output_root, "probe_curve.png")
            rc, _ = run_logged([sys.executable, "tools/plot_probe.py", *runs, "--out", plot],
                               os.path.join(args.output_root, "probe_curve.log"))
            lines.append(f"probe curves: {rel(plot)}" if rc == 0 else f"plotting failed, see {rel(plot)[:-4]}.log")
        finished = [r for r in result["runs"] if not r.get("failed")]
        if finished:
            plot = os.path.join(args.output_root, "finetune_curve.png")
            specs = [f"{r['arm']}_seed{r['seed']}={r['output_dir']}" for r in finished]
            rc, _ = run_logged([sys.executable, "tools/plot_finetune.py", *specs, "--out", plot,
                                "--title", "Aquarium valid during fine-tuning"],
                               os.path.join(args.output_root, "finetune_curve.log"))
            lines.append(f"fine-tuning curves: {rel(plot)}" if rc == 0 else
                         f"plotting failed, see {rel(plot)[:-4]}.log")
        return lines + ["", self.invocation_line(args, minutes)]


def _file_stamp(trunk: str):
    """What identifies a trunk file's contents cheaply: [size, mtime] (None for random init)."""
    if trunk == "random":
        return None
    st = os.stat(os.path.join(harness.REPO_ROOT, trunk))
    return [st.st_size, int(st.st_mtime)]


STUDY = RealStudy()
parse_args, main = STUDY.parse_args, STUDY.main

if __name__ == "__main__":
    sys.exit(main())
