#!/usr/bin/env python
"""SoCo's transfer benchmark: a detector fine-tuned from random init vs from the SoCo trunk.

    python benchmarks/transfer.py                                   # synthetic, the issue's bar
    python benchmarks/transfer.py --datasets synthetic coco_sample  # + the coco_sample table
    python benchmarks/transfer.py --quick --seeds 0                 # smoke test, minutes
    python benchmarks/transfer.py --arms random soco supervised     # + the supervised reference

For every dataset, the two arms differ ONLY in MODEL.WEIGHTS: ``""`` (random init) or the trunk
(backbone + FPN + 4conv1fc box head) that SoCo pretraining exported as ``model_final_trunk.pth``.
Schedule, inputs, test settings and fine-tuning seeds are the same, and a given seed also gives
both arms the same initial RPN / box predictor and the same data order (Detectron2 seeds
everything from SEED before the model is built). Pretraining uses NO labels:

- ``synthetic`` (the low-label setting of the evidence issue): SoCo pretraining with the CPU
  recipe ``configs/soco/soco_demo_synthetic.yaml`` (the ``make demo`` run) on the 2000 train
  scenes without labels; fine-tuning ``configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml``
  (Faster R-CNN R18-FPN) on the first 100 of them WITH labels (``soco_synthetic_det_train_100``),
  evaluated on the 200 val scenes. Bar: SoCo - random >= 3 box AP, paired over the seeds,
  and greater than 2 standard deviations of the paired difference.
- ``coco_sample``: ../shared/data/coco_sample split 80/20 by image id (ids sorted ascending,
  every 5th one to val; the fixed rule of soco_d2/data/coco_sample.py). The same SoCo recipe on
  the 80 train images (``coco_sample_soco``), fine-tuning
  ``configs/transfer/faster_rcnn_R18_FPN_coco_sample.yaml``, evaluated on the 20 val images.
  Reported, no bar: 80 images and minutes of CPU are far from the regime the paper measures.

``supervised`` (synthetic only, with ``--arms``): a reference, not a method. The same Faster
R-CNN trained WITH labels on all 2000 train scenes (``soco_synthetic_det_train``, 300 iterations,
seed 0), its backbone, FPN and box head (the parts the SoCo arm takes) then fine-tuned like the
other arms. It answers the question the SoCo arm cannot answer alone: can a pretrained trunk beat
random init at this fine-tuning budget at all, and by how much, when it has learnt the shapes?

One pretraining per dataset (seed 0) is shared by all fine-tuning seeds (default 0, 1, 2). Each
config's own schedule is used unless ``--pretrain-iters`` / ``--finetune-iters`` scale it.
``--quick`` (3 pretraining and 4 fine-tuning iterations, the synthetic run evaluated on the first
20 val scenes) is a smoke test of the pipeline; its numbers mean nothing.

This file defines the study (datasets, configs, arms, the bar); ``benchmarks/harness.py`` runs
it. Every step is ``train_net.py`` run as a subprocess, i.e. exactly what a user runs; the JSON
holds each command. The benchmark is resumable: a run whose output folder holds its result is
reused, an interrupted one continues from its last checkpoint (``--resume``), and missing data
(synthetic scenes, split jsons, proposals) and pretrainings are prepared first. Reusing a folder
made with different settings is refused. Fine-tuning checkpoints are deleted once the result is
recorded and so are the intermediate pretraining checkpoints (``--keep-checkpoints`` keeps them
all); ``model_final.pth`` and ``model_final_trunk.pth`` of each pretraining are kept.

Reported: COCO box AP (percent, pycocotools on the val split) per run, and per dataset and arm
mean +- sample std over seeds, the paired (same seed) SoCo - random difference, and the probe of
each pretraining (its ``probe.json``: first and last kNN accuracy) beside them. A run with no
detection at all, which Detectron2 reports as NaN AP, counts as 0 AP in the summary (it is
flagged in the JSON and the table).
"""
import argparse
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

import harness  # noqa: E402
from harness import (  # noqa: E402  (final_evaluation, check_same: part of this study's API)
    REPO_ROOT, check_same, config_max_iter, drop_checkpoints, final_evaluation, keep_prefixes, log, new_result,
    paired_gain_bar, rel,
    resolve_output_paths, run_finetuning, run_logged, run_pretraining, scaled_schedule, write_json,
)

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# Arm -> its name in tables; the first arm is the baseline the others are paired with.
ARMS = {"random": "random", "soco": "SoCo", "supervised": "supervised reference"}
DEFAULT_ARMS = ["random", "soco"]
WEIGHTS_DESCRIPTION = {"random": 'MODEL.WEIGHTS ""', "soco": "MODEL.WEIGHTS <pretraining>/model_final_trunk.pth",
                       "supervised": "MODEL.WEIGHTS <dataset>/supervised_trunk.pth (trained with labels)"}
# State_dict prefixes of the SoCo trunk in these FPN detectors: all must load in the SoCo arm.
TRUNK_PREFIXES = ("backbone.", "roi_heads.box_head.")

# Per dataset: the configs, what the benchmark overrides, and the bar (None: reported only).
DATASETS = {
    "synthetic": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        "pretrain_opts": ["DATASETS.TRAIN", '("soco_synthetic_train",)'],
        "finetune_config": "configs/transfer/faster_rcnn_R18_FPN_synthetic.yaml",
        "quick_opts": ["DATASETS.TEST", '("soco_synthetic_det_val_20",)'],
        "min_gain": 3.0,
        # The supervised reference arm: labelled train set and iterations at batch 8.
        "supervised": {"train": '("soco_synthetic_det_train",)', "iters": 300},
    },
    "coco_sample": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        # 80 classes on 20 val images: the probe would be noise; the synthetic one stays.
        "pretrain_opts": ["DATASETS.TRAIN", '("coco_sample_soco",)', "TEST.PROBE.DATASET", ""],
        "finetune_config": "configs/transfer/faster_rcnn_R18_FPN_coco_sample.yaml",
        "quick_opts": [],
        "min_gain": None,
        "supervised": None,  # no labelled set beyond the 80 train images
    },
}

# Both arms, both datasets. Precision is the configs' (SOLVER.AMP on CPU is bf16 only where the
# CPU runs it natively, soco_d2/engine/precision.py).
COMMON_FINETUNE_OPTS = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1"]
QUICK = {"pretrain_iters": 3, "finetune_iters": 4, "precise_bn_iters": 2}


# ------------------------------------------------------------------------------------ data
def prepare_data(name: str) -> None:
    """Create what pretraining and fine-tuning on ``name`` read, when it is missing."""
    from soco_d2.data.builtin import datasets_root

    root = datasets_root()
    py = sys.executable
    if name == "synthetic":
        from soco_d2.data.builtin import SYNTHETIC_DIRNAME, synthetic_proposal_file

        syn = os.path.join(root, SYNTHETIC_DIRNAME)
        if not os.path.isfile(os.path.join(syn, "manifest.json")):
            log(f"making the synthetic dataset in {syn}")
            rc, _ = run_logged([py, "tools/make_synthetic_dataset.py", "--out", syn],
                               os.path.join(syn + "_logs", "make_synthetic_dataset.log"))
            if rc:
                raise SystemExit(f"tools/make_synthetic_dataset.py failed (exit {rc})")
        proposals = synthetic_proposal_file(root, "train")
        if not os.path.isfile(proposals):
            log(f"generating selective-search proposals: {proposals}")
            rc, _ = run_logged(
                [py, "tools/generate_proposals.py",
                 "--coco-json", os.path.join(syn, "annotations", "instances_train.json"),
                 "--image-root", os.path.join(syn, "train"), "--output", proposals,
                 "--workers", "2", "--no-progress"],
                proposals + ".log",
            )
            if rc:
                raise SystemExit(f"tools/generate_proposals.py failed (exit {rc}), see {proposals}.log")
    elif name == "coco_sample":
        from soco_d2.data.coco_sample import PROPOSAL_FILE, coco_sample_dir, write_coco_sample_splits

        source = coco_sample_dir()
        paths = write_coco_sample_splits(source, root)  # no-op when current
        proposals = os.path.join(root, PROPOSAL_FILE)
        if not os.path.isfile(proposals):
            log(f"generating selective-search proposals for the 80 train images: {proposals}")
            os.makedirs(os.path.dirname(proposals), exist_ok=True)
            rc, _ = run_logged(
                [py, "tools/generate_proposals.py", "--coco-json", paths["train"],
                 "--image-root", os.path.join(source, "images"), "--output", proposals,
                 "--workers", "2", "--no-progress"],
                proposals + ".log",
            )
            if rc:
                raise SystemExit(f"tools/generate_proposals.py failed (exit {rc}), see {proposals}.log")
    else:
        raise ValueError(name)


# ------------------------------------------------------------------------------ pretraining
def pretrain_opts(name: str, args, output_dir: str):
    opts = list(DATASETS[name]["pretrain_opts"]) + [
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1", "SEED", "0", "OUTPUT_DIR", rel(output_dir),
    ]
    iters = QUICK["pretrain_iters"] if args.quick else args.pretrain_iters
    if iters:  # the recipe's shape (10% warmup, then cosine) at another length
        opts += ["SOLVER.WARMUP_EPOCHS", "0"] + scaled_schedule(iters, 0.1, ())
    if args.quick:
        opts += ["TEST.PROBE.PERIOD", "0", "TEST.PROBE.MAX_IMAGES", "10"]
    return opts


def pretrain(name: str, args) -> dict:
    """SoCo pretraining on the train images of ``name``; returns its record (trunk path etc.)."""
    output_dir = os.path.join(args.output_root, name, "pretrain")
    return run_pretraining(f"[{name}]", {"dataset": name}, DATASETS[name]["pretrain_config"],
                           pretrain_opts(name, args, output_dir), output_dir,
                           args.keep_checkpoints)


def supervised_trunk(name: str, args) -> tuple:
    """The supervised reference: the fine-tuning detector trained with labels on the whole train
    set of ``name``; returns (its run record, its trunk: the keys of TRUNK_PREFIXES)."""
    spec = DATASETS[name]["supervised"]
    output_dir = os.path.join(args.output_root, name, "supervised_pretrain")
    trunk = os.path.join(args.output_root, name, "supervised_trunk.pth")
    iters = QUICK["pretrain_iters"] if args.quick else spec["iters"]
    opts = (["MODEL.WEIGHTS", "", "DATASETS.TRAIN", spec["train"]] + COMMON_FINETUNE_OPTS
            + scaled_schedule(iters, 0.1, (0.75,)))
    if args.quick:
        opts += DATASETS[name]["quick_opts"] + ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"])]
    opts += ["SEED", "0", "OUTPUT_DIR", rel(output_dir)]
    final = os.path.join(output_dir, "model_final.pth")
    # Checkpoints are kept until the trunk is cut out of model_final.pth, then deleted.
    record = run_finetuning(f"[{name} supervised reference]", {"dataset": name, "arm": "supervised_pretrain"},
                            DATASETS[name]["finetune_config"], opts, output_dir, iters,
                            keep_checkpoints=True, pretrained=False, trunk_prefixes=())
    if record.get("failed"):
        raise SystemExit(f"the supervised reference failed; see {record['output_dir']}/stdout.log")
    if os.path.isfile(final):
        keep_prefixes(final, trunk, TRUNK_PREFIXES)
        if not args.keep_checkpoints:
            drop_checkpoints(output_dir)
    elif not os.path.isfile(trunk):
        raise SystemExit(f"{rel(output_dir)} has a result but neither model_final.pth nor {rel(trunk)}: "
                         "delete the folder to train the reference again")
    return record, trunk


# ------------------------------------------------------------------------------- fine-tuning
def finetune_schedule(name: str, args):
    """(iterations, overrides): the config's own schedule, or its shape (warmup 10%, step at
    75%) scaled to ``--finetune-iters``."""
    iters = QUICK["finetune_iters"] if args.quick else args.finetune_iters
    if not iters:
        return config_max_iter(DATASETS[name]["finetune_config"]), []
    return iters, scaled_schedule(iters, 0.1, (0.75,))


def finetune_opts(name: str, arm: str, seed: int, weights: dict, args, output_dir: str):
    """``weights``: arm -> its MODEL.WEIGHTS (random init has none)."""
    iters, schedule = finetune_schedule(name, args)
    opts = ["MODEL.WEIGHTS", rel(weights[arm]) if weights.get(arm) else ""] + COMMON_FINETUNE_OPTS + schedule
    if args.quick:
        opts += DATASETS[name]["quick_opts"] + ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"])]
    opts += ["SEED", str(seed), "OUTPUT_DIR", rel(output_dir)]
    return iters, opts


def finetune(name: str, arm: str, seed: int, weights: dict, args) -> dict:
    output_dir = os.path.join(args.output_root, name, f"{arm}_seed{seed}")
    max_iter, opts = finetune_opts(name, arm, seed, weights, args, output_dir)
    return run_finetuning(
        f"[{name} {arm} seed {seed}]", {"dataset": name, "arm": arm, "seed": seed},
        DATASETS[name]["finetune_config"], opts, output_dir, max_iter, args.keep_checkpoints,
        pretrained=arm != "random", trunk_prefixes=TRUNK_PREFIXES,
    )


# --------------------------------------------------------------------------------- summary
def summarize(runs, arms=DEFAULT_ARMS):
    """Per dataset and arm: n, mean/std of box and mask AP, AP50; paired deltas against random."""
    return harness.summarize(runs, {a: ARMS[a] for a in arms})


def format_table(summary, arms=DEFAULT_ARMS) -> str:
    return harness.format_table(summary, {a: ARMS[a] for a in arms})


def bars(summary: dict) -> dict:
    """Per dataset with a bar: is SoCo - random >= its minimum gain and > 2 std (paired)?"""
    return {name: paired_gain_bar(summary, name, "delta_soco_minus_random", spec["min_gain"])
            for name, spec in DATASETS.items() if spec["min_gain"] is not None and name in summary}


def probe_summary(pretraining: dict) -> dict:
    """First and last probe of each pretraining (kNN on head features): did the trunk learn?"""
    out = {}
    for name, pre in pretraining.items():
        probes = (pre.get("probe") or {}).get("probes") or []
        if probes:
            out[name] = {"dataset": pre["probe"].get("dataset"), "first": probes[0], "last": probes[-1]}
    return out


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["synthetic"], choices=list(DATASETS),
                   help="datasets to run (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="fine-tuning seeds, each run in every arm (default: %(default)s)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS,
                   help="arms, random first (the baseline of the paired differences); supervised is the "
                        "labelled reference, synthetic only (default: %(default)s)")
    p.add_argument("--output-root", default=None,
                   help="folder of all runs (default: output/transfer_bench, "
                        "output/transfer_bench_quick with --quick)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: OUTPUT_ROOT/transfer.json)")
    p.add_argument("--pretrain-iters", type=int, default=0,
                   help="pretraining iterations instead of the recipe's (its shape scaled)")
    p.add_argument("--finetune-iters", type=int, default=0,
                   help="fine-tuning iterations instead of each config's (its shape scaled)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['pretrain_iters']} pretraining and "
                        f"{QUICK['finetune_iters']} fine-tuning iterations")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep all checkpoints (by default a fine-tuning run's are deleted once its "
                        "result is recorded, and a pretraining keeps only model_final.pth and the trunk)")
    args = p.parse_args(argv)
    if args.arms[0] != "random":
        p.error("--arms: the first arm must be random (the baseline of the paired differences)")
    if "supervised" in args.arms and any(DATASETS[d]["supervised"] is None for d in args.datasets):
        p.error("--arms supervised: the supervised reference exists for the synthetic scenes only")
    resolve_output_paths(args, "transfer")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)  # train_net.py, configs and datasets/ are relative to the repo root
    started = time.time()
    result = new_result(
        "transfer", argv,
        settings={
            "datasets": args.datasets,
            "seeds": args.seeds,
            "arms": {arm: WEIGHTS_DESCRIPTION[arm] for arm in args.arms},
            "quick": args.quick,
            "output_root": rel(args.output_root),
            "common_finetune_overrides": COMMON_FINETUNE_OPTS,
            "per_dataset": {
                name: {
                    "pretrain_config": DATASETS[name]["pretrain_config"],
                    "pretrain_overrides": pretrain_opts(
                        name, args, os.path.join(args.output_root, name, "pretrain")),
                    "finetune_config": DATASETS[name]["finetune_config"],
                    "finetune_iters": finetune_schedule(name, args)[0],
                    "finetune_schedule_overrides": finetune_schedule(name, args)[1],
                    "min_gain": DATASETS[name]["min_gain"],
                }
                for name in args.datasets
            },
        },
        pretraining={},
        runs=[],
    )

    def save():
        result["summary"] = summarize(result["runs"], args.arms) if result["runs"] else {}
        result["bars"] = bars(result["summary"])
        result["probes"] = probe_summary(result["pretraining"])
        result["wall_s_this_invocation"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)

    for name in args.datasets:
        prepare_data(name)
        pre = pretrain(name, args)
        result["pretraining"][name] = pre
        save()
        weights = {"soco": os.path.join(REPO_ROOT, pre["trunk"])}
        if "supervised" in args.arms:
            result["supervised_reference"], weights["supervised"] = supervised_trunk(name, args)
            save()
        for seed in args.seeds:  # arms interleaved: partial results stay paired
            for arm in args.arms:
                result["runs"].append(finetune(name, arm, seed, weights, args))
                save()

    save()
    pre_wall = sum(p.get("wall_s") or 0 for p in result["pretraining"].values())
    run_wall = sum(r.get("wall_s") or 0 for r in result["runs"])
    result["wall_s_total_recorded"] = round(pre_wall + run_wall, 1)
    write_json(args.out, result)
    print()
    print(format_table(result["summary"], args.arms))
    for name, b in result["bars"].items():
        print(f"{name}: SoCo - random box AP (paired) {harness.fmt(b['paired_gain_mean'])} +- "
              f"{harness.fmt(b['paired_gain_std'])}; >= {b['min_gain']} and > 2 std: {b['met']}")
    for name, p in result["probes"].items():
        print(f"{name}: probe kNN (head) during pretraining {p['first']['knn_head']:.3f} (iteration "
              f"{p['first']['iteration']}) -> {p['last']['knn_head']:.3f} (iteration {p['last']['iteration']})")
    print(f"\nPretraining wall: {pre_wall / 60:.1f} min, fine-tuning wall: {run_wall / 60:.1f} min "
          f"(recorded, reused runs included); this invocation: {(time.time() - started) / 60:.1f} min")
    print(f"JSON: {rel(args.out)}")
    failed = [r for r in result["runs"] if r.get("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
