#!/usr/bin/env python
"""Transfer benchmark: Mask R-CNN fine-tuned from random init vs from SoCo-pretrained init.

    python benchmarks/transfer.py --out output/transfer_bench/transfer.json
    python benchmarks/transfer.py --quick --datasets synthetic --seeds 0 --out /tmp/quick.json

For every dataset, the two arms differ ONLY in MODEL.WEIGHTS: ``""`` (random init) or the
trunk (backbone + FPN + 4conv1fc box head) that SoCo pretraining exported as
``model_final_trunk.pth``. Schedule, inputs, test settings and fine-tuning seeds are the
same, and a given seed also gives both arms the same initial RPN / box predictor / mask head
and the same data order (Detectron2 seeds everything from SEED before the model is built).
Pretraining uses NO labels and only the images of the fine-tuning train split:

- ``synthetic``: the embedded scenes. Pretraining = ``configs/soco/soco_demo_synthetic.yaml`` (the
  ``make demo`` recipe: R18-FPN, 12 epochs of the 200 train images) on
  ``soco_synthetic_train``; fine-tuning = ``configs/transfer/mask_rcnn_R18_FPN_synthetic.yaml``
  on ``soco_synthetic_det_train``, evaluated on the 50 ``soco_synthetic_det_val`` images.
- ``coco_sample``: ../shared/data/coco_sample split 80/20 by image id (ids sorted ascending,
  every 5th one to val; the fixed rule of soco_d2/data/coco_sample.py). Pretraining = the demo
  recipe on ``coco_sample_soco`` (the 80 train images, selective-search proposals), fine-tuning
  = ``configs/transfer/mask_rcnn_R18_FPN_coco_sample.yaml``, evaluated on the 20 val images.

One pretraining per dataset (pretraining seed 0) is shared by all fine-tuning seeds.

Default schedule (fits about an hour on 2 CPU cores, all runs CPU, bf16 autocast in training):
pretraining 150 iterations at batch 16 for both datasets (synthetic: the demo's 12 epochs of 200
images; coco_sample: 30 epochs of 80 images); fine-tuning at batch 4 for 100 iterations
(synthetic, 2 epochs) or 50 iterations (coco_sample, 2.5 epochs), the configs' 300-iteration
step schedule scaled down. That is the very start of detector training (classification scores
still near uniform), so expect small APs and differences within seed noise; use
``--pretrain-iters`` / ``--finetune-iters`` (or a GPU) for a real measurement.

Every step is ``train_net.py`` run as a subprocess, i.e. exactly what a user runs; the JSON
holds each command. The benchmark is resumable: a run whose output folder holds its result
(``bench_result.json``, or Detectron2's final evaluation in ``metrics.json``) is reused, an
interrupted one continues from its last checkpoint (``--resume``), and missing data
(synthetic scenes, split jsons, proposals) and pretrainings are prepared first. Reusing a folder
made with different settings is refused. Fine-tuning checkpoints are deleted once the result is
recorded and so are the intermediate pretraining checkpoints (``--keep-checkpoints`` keeps them all);
``model_final.pth`` and ``model_final_trunk.pth`` of each pretraining are kept.

Reported: COCO box AP and mask AP (percent, pycocotools on the val split) per run, and per
dataset and arm mean +- sample std over seeds, plus the paired (same seed) SoCo - random
difference. A run with no detection at all, which Detectron2 reports as NaN AP, counts as 0 AP
in the summary (it is flagged in the JSON and the table).
"""
import argparse
import datetime
import glob
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

TRAIN_NET = "train_net.py"
RESULT_FILE = "bench_result.json"
PRETRAIN_RESULT_FILE = "bench_pretrain.json"
TRUNK_FILE = "model_final_trunk.pth"
ARMS = ("random", "soco")
ARM_LABELS = {"random": "random init", "soco": "SoCo init"}

# Per dataset: the configs, what the benchmark overrides, and the default schedule. Iteration
# counts were chosen so that both datasets, 2 arms x 3 seeds and both pretrainings fit in about an
# hour on 2 CPU cores.
DATASETS = {
    "synthetic": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        "pretrain_opts": ["DATASETS.TRAIN", '("soco_synthetic_train",)'],
        "pretrain_epochs": 12,
        "finetune_config": "configs/transfer/mask_rcnn_R18_FPN_synthetic.yaml",
        "finetune_iters": 100,
        "test_opts": [
            # <= 6 objects per image: fewer proposals and detections keep CPU inference short.
            "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
            "TEST.DETECTIONS_PER_IMAGE", "20",
        ],
    },
    "coco_sample": {
        "pretrain_config": "configs/soco/soco_demo_synthetic.yaml",
        "pretrain_opts": ["DATASETS.TRAIN", '("coco_sample_soco",)'],
        "pretrain_epochs": 30,
        "finetune_config": "configs/transfer/mask_rcnn_R18_FPN_coco_sample.yaml",
        "finetune_iters": 50,
        "test_opts": [
            # up to 42 objects per image
            "MODEL.RPN.POST_NMS_TOPK_TEST", "300",
            "TEST.DETECTIONS_PER_IMAGE", "50",
        ],
    },
}

# Both arms, both datasets. bf16 CPU autocast as in the pretraining recipe (the detection trainer
# honours SOLVER.AMP.PRECISION; evaluation runs in fp32). A low score threshold so that short
# schedules still produce detections (Detectron2 reports NaN AP for none at all).
COMMON_FINETUNE_OPTS = [
    "MODEL.DEVICE", "cpu",
    "DATALOADER.NUM_WORKERS", "1",
    "SOLVER.AMP.ENABLED", "True",
    "SOLVER.AMP.PRECISION", "bfloat16",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.01",
]
QUICK = {"pretrain_iters": 3, "finetune_iters": 4, "precise_bn_iters": 2}


# ----------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[transfer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it (commands stay short)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


def datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
    os.replace(tmp, path)


def run_logged(cmd, log_path: str) -> (int, float):
    """Run ``cmd`` in the repository root, stdout+stderr to ``log_path``; (exit code, wall s)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
    return rc, time.time() - start


def train_net_cmd(config_file: str, opts, resume: bool = False):
    cmd = [sys.executable, TRAIN_NET, "--config-file", config_file, "--num-gpus", "1"]
    if resume:
        cmd.append("--resume")
    return cmd + [str(o) for o in opts]


def has_checkpoint(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def load_config_yaml(output_dir: str):
    """The full config Detectron2 saved in OUTPUT_DIR/config.yaml, as a dict (or the text)."""
    path = os.path.join(output_dir, "config.yaml")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - keep the text when it is not plain YAML
        return text


# ------------------------------------------------------------------------------------ data
def prepare_data(name: str) -> None:
    """Create what pretraining and fine-tuning on ``name`` read, when it is missing."""
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
    spec = DATASETS[name]
    opts = list(spec["pretrain_opts"]) + [
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1", "SEED", "0", "OUTPUT_DIR", rel(output_dir),
    ]
    iters = QUICK["pretrain_iters"] if args.quick else args.pretrain_iters
    if iters:
        # An explicit iteration count replaces the recipe's epochs; warmup keeps its 1/6 share.
        opts += ["SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", str(iters),
                 "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.WARMUP_ITERS", str(max(1, iters // 6)),
                 "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 3))]
    else:
        opts += ["SOLVER.EPOCHS", str(spec["pretrain_epochs"])]
    return opts


def pretrain(name: str, args) -> dict:
    """SoCo pretraining on the train images of ``name``; returns its record (trunk path etc.)."""
    spec = DATASETS[name]
    output_dir = os.path.join(args.output_root, name, "pretrain")
    opts = pretrain_opts(name, args, output_dir)
    planned = train_net_cmd(spec["pretrain_config"], opts)[1:]  # without the interpreter
    done = read_json(os.path.join(output_dir, PRETRAIN_RESULT_FILE))
    trunk = os.path.join(output_dir, TRUNK_FILE)
    if done is not None and os.path.isfile(trunk):
        check_same(done["command"][1:], planned, output_dir)
        log(f"[{name}] pretraining reused: {rel(trunk)}")
        drop_intermediate_checkpoints(output_dir, args)
        return dict(done, max_iter=iterations_run(output_dir), reused=True)

    resume = has_checkpoint(output_dir)
    cmd = train_net_cmd(spec["pretrain_config"], opts, resume=resume)
    log(f"[{name}] pretraining{' (resumed)' if resume else ''}: {shlex.join(cmd[1:])}")
    load_before = os.getloadavg()
    rc, wall = run_logged(cmd, os.path.join(output_dir, "stdout.log"))
    if rc or not os.path.isfile(trunk):
        raise SystemExit(f"[{name}] pretraining failed (exit {rc}); see {rel(output_dir)}/stdout.log")
    cfg = load_config_yaml(output_dir)
    record = {
        "dataset": name,
        "output_dir": rel(output_dir),
        "trunk": rel(trunk),
        "command": ["python"] + planned,
        "wall_s": round(wall, 1),
        "resumed": resume,
        # Not config.yaml's SOLVER.MAX_ITER: SOLVER.EPOCHS is resolved after the config is saved.
        "max_iter": iterations_run(output_dir),
        "final_loss": final_metric(output_dir, "total_loss"),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "config": cfg,
    }
    write_json(os.path.join(output_dir, PRETRAIN_RESULT_FILE), record)
    drop_intermediate_checkpoints(output_dir, args)
    log(f"[{name}] pretraining done in {wall / 60:.1f} min: {rel(trunk)}")
    return dict(record, reused=False)


def drop_intermediate_checkpoints(output_dir: str, args) -> None:
    """Keep model_final.pth (full SoCo state) and the trunk; delete model_0*.pth."""
    if not args.keep_checkpoints:
        for path in glob.glob(os.path.join(output_dir, "model_0*.pth")):
            os.unlink(path)


def iterations_run(output_dir: str):
    """Iterations a finished training ran: the last iteration logged in metrics.json, plus one."""
    its = [rec["iteration"] for rec in read_metrics(output_dir) if "iteration" in rec]
    return max(its) + 1 if its else None


def final_metric(output_dir: str, key: str):
    value = None
    for rec in read_metrics(output_dir):
        if key in rec:
            value = rec[key]
    return value


# ------------------------------------------------------------------------------- fine-tuning
def finetune_schedule(name: str, args):
    iters = QUICK["finetune_iters"] if args.quick else (args.finetune_iters or DATASETS[name]["finetune_iters"])
    # The configs' step schedule (200, 270 of 300; 50 warmup) scaled to ``iters``.
    # (fvcore wants every step < MAX_ITER.)
    steps = sorted({min(max(1, round(iters * f)), iters - 1) for f in (2 / 3, 0.9)} - {0})
    return iters, [
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.STEPS", "(" + ",".join(str(s) for s in steps) + ",)",
        "SOLVER.WARMUP_ITERS", str(max(1, iters // 6)),
        "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 2)),
    ]


def finetune_opts(name: str, arm: str, seed: int, trunk: str, args, output_dir: str):
    iters, schedule = finetune_schedule(name, args)
    opts = ["MODEL.WEIGHTS", rel(trunk) if arm == "soco" else ""]
    opts += COMMON_FINETUNE_OPTS + DATASETS[name]["test_opts"] + schedule
    if args.quick:
        opts += ["TEST.PRECISE_BN.NUM_ITER", str(QUICK["precise_bn_iters"])]
    opts += ["SEED", str(seed), "OUTPUT_DIR", rel(output_dir)]
    return iters, opts


def read_metrics(output_dir: str):
    path = os.path.join(output_dir, "metrics.json")
    records = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return records


def final_evaluation(output_dir: str, max_iter: int):
    """Detectron2's evaluation after the last iteration, from metrics.json; None if absent."""
    found = None
    for rec in read_metrics(output_dir):
        if "bbox/AP" in rec and rec.get("iteration", -1) >= max_iter - 1:
            found = rec
    if found is None:
        return None
    out = {}
    for task in ("bbox", "segm"):
        out[task] = {k.split("/", 1)[1]: v for k, v in found.items() if k.startswith(task + "/")}
    return out


def missing_trunk_keys(output_dir: str):
    """Parameters the fine-tuning model did not find in MODEL.WEIGHTS, read from log.txt.

    Returns (lines Detectron2 printed, those that belong to the pretrained trunk: backbone, FPN
    or box head); the second list must be empty for the SoCo arm.
    """
    try:
        with open(os.path.join(output_dir, "log.txt")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None, None
    listed, active = [], False
    for line in lines:
        if "not found in the checkpoint" in line:
            active, listed = True, []
            continue
        if active:
            if line.startswith("[") or not line.strip():
                active = False
                continue
            listed.append(line.strip())
    trunk = [k for k in listed if k.startswith(("backbone.", "roi_heads.box_head."))]
    return listed, trunk


def check_same(done_cmd, planned_cmd, output_dir: str) -> None:
    strip = [a for a in done_cmd if a != "--resume"]
    if strip != [a for a in planned_cmd if a != "--resume"]:
        raise SystemExit(
            f"{rel(output_dir)} holds a result made with other settings:\n  was: {shlex.join(strip)}\n"
            f"  now: {shlex.join(planned_cmd)}\nUse another --output-root, or delete that folder."
        )


def finetune(name: str, arm: str, seed: int, trunk: str, args) -> dict:
    spec = DATASETS[name]
    output_dir = os.path.join(args.output_root, name, f"{arm}_seed{seed}")
    max_iter, opts = finetune_opts(name, arm, seed, trunk, args, output_dir)
    planned = train_net_cmd(spec["finetune_config"], opts)[1:]
    tag = f"[{name} {arm} seed {seed}]"

    done = read_json(os.path.join(output_dir, RESULT_FILE))
    if done is not None:
        check_same(done["command"][1:], planned, output_dir)
        log(f"{tag} reused: box AP {fmt(done['bbox_AP'])}, mask AP {fmt(done['segm_AP'])}")
        return dict(done, reused=True)

    metrics = final_evaluation(output_dir, max_iter)
    wall, resumed, rc = None, False, 0
    load_before = os.getloadavg()
    if metrics is None:  # not run, or interrupted: run (continuing from the last checkpoint)
        resumed = has_checkpoint(output_dir)
        cmd = train_net_cmd(spec["finetune_config"], opts, resume=resumed)
        log(f"{tag} fine-tuning{' (resumed)' if resumed else ''}: {shlex.join(cmd[1:])}")
        rc, wall = run_logged(cmd, os.path.join(output_dir, "stdout.log"))
        metrics = final_evaluation(output_dir, max_iter)
    else:
        log(f"{tag} found a finished evaluation in metrics.json (wall time unknown)")
    if rc or metrics is None:
        log(f"{tag} FAILED (exit {rc}); see {rel(output_dir)}/stdout.log")
        return {"dataset": name, "arm": arm, "seed": seed, "output_dir": rel(output_dir),
                "failed": True, "exit_code": rc, "command": ["python"] + planned}

    listed, trunk_missing = missing_trunk_keys(output_dir)
    box, mask = metrics["bbox"].get("AP"), metrics["segm"].get("AP")
    record = {
        "dataset": name,
        "arm": arm,
        "seed": seed,
        "output_dir": rel(output_dir),
        "command": ["python"] + planned,
        "config_file": spec["finetune_config"],
        "overrides": opts,
        "max_iter": max_iter,
        "wall_s": None if wall is None else round(wall, 1),
        "resumed": resumed,
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "bbox_AP": box,
        "segm_AP": mask,
        "no_detections": box is None or (isinstance(box, float) and math.isnan(box)),
        "metrics": metrics,
        "missing_keys_logged": listed,
        "trunk_keys_missing": trunk_missing,
        "final_train_loss": final_metric(output_dir, "total_loss"),
        "config": load_config_yaml(output_dir),
    }
    write_json(os.path.join(output_dir, RESULT_FILE), record)
    if not args.keep_checkpoints:
        for path in glob.glob(os.path.join(output_dir, "model_*.pth")):
            os.unlink(path)
        if os.path.exists(os.path.join(output_dir, "last_checkpoint")):
            os.unlink(os.path.join(output_dir, "last_checkpoint"))
    if arm == "soco" and trunk_missing:
        log(f"{tag} WARNING: pretrained trunk keys were not loaded: {trunk_missing}")
    log(f"{tag} box AP {fmt(box)}, mask AP {fmt(mask)}"
        + (f" in {wall / 60:.1f} min" if wall is not None else ""))
    return dict(record, reused=False)


# --------------------------------------------------------------------------------- summary
def fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:.{digits}f}"


def ap_or_zero(x):
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def mean_std(values):
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs):
    """Per dataset and arm: n, mean/std of box and mask AP, AP50; paired deltas per dataset."""
    ok = [r for r in runs if not r.get("failed")]
    summary = {}
    for name in dict.fromkeys(r["dataset"] for r in runs):
        entry = {}
        for arm in ARMS:
            rs = sorted((r for r in ok if r["dataset"] == name and r["arm"] == arm), key=lambda r: r["seed"])
            item = {"n": len(rs), "seeds": [r["seed"] for r in rs],
                    "no_detection_runs": sum(bool(r["no_detections"]) for r in rs)}
            for key, get in (("bbox_AP", lambda r: r["bbox_AP"]), ("segm_AP", lambda r: r["segm_AP"]),
                             ("bbox_AP50", lambda r: r["metrics"]["bbox"].get("AP50")),
                             ("segm_AP50", lambda r: r["metrics"]["segm"].get("AP50"))):
                values = [ap_or_zero(get(r)) for r in rs]
                m, s = mean_std(values)
                item[key] = {"mean": m, "std": s, "values": values}
            walls = [r["wall_s"] for r in rs if r.get("wall_s") is not None]
            item["wall_s_mean"] = statistics.fmean(walls) if walls else None
            entry[arm] = item
        # Paired by seed: same data order and same initial random heads in both arms.
        by_seed = {(r["arm"], r["seed"]): r for r in ok if r["dataset"] == name}
        seeds = sorted(s for (a, s) in by_seed if a == "soco" and ("random", s) in by_seed)
        delta = {"n": len(seeds), "seeds": seeds}
        for key in ("bbox_AP", "segm_AP"):
            d = [ap_or_zero(by_seed[("soco", s)][key]) - ap_or_zero(by_seed[("random", s)][key]) for s in seeds]
            m, s_ = mean_std(d)
            delta[key] = {"mean": m, "std": s_, "values": d}
        entry["delta_soco_minus_random"] = delta
        summary[name] = entry
    return summary


def format_table(summary) -> str:
    def ms(d):
        if d is None or d.get("mean") is None:
            return "-"
        return f"{d['mean']:6.2f} ± {d['std']:5.2f}"

    def delta(d):
        if d is None or d.get("mean") is None:
            return "-"
        return f"{d['mean']:+6.2f} ± {d['std']:5.2f}"

    head = f"{'dataset':<12} {'init':<22} {'n':>2}  {'box AP':>15}  {'mask AP':>15}  {'box AP50':>15}  {'min/run':>7}"
    lines = [head, "-" * len(head)]
    for name, entry in summary.items():
        for arm in ARMS:
            it = entry[arm]
            wall = "-" if it["wall_s_mean"] is None else f"{it['wall_s_mean'] / 60:.1f}"
            flag = f" ({it['no_detection_runs']} no-det)" if it["no_detection_runs"] else ""
            lines.append(
                f"{name:<12} {ARM_LABELS[arm] + flag:<22} {it['n']:>2}  {ms(it['bbox_AP']):>15}  "
                f"{ms(it['segm_AP']):>15}  {ms(it['bbox_AP50']):>15}  {wall:>7}"
            )
        d = entry["delta_soco_minus_random"]
        lines.append(
            f"{name:<12} {'SoCo - random (paired)':<22} {d['n']:>2}  {delta(d['bbox_AP']):>15}  "
            f"{delta(d['segm_AP']):>15}"
        )
    lines.append("COCO AP in percent on the val split; mean ± sample std over fine-tuning seeds.")
    return "\n".join(lines)


def environment():
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import detectron2

        env["detectron2"] = detectron2.__version__
    except ImportError:
        pass
    return env


# ------------------------------------------------------------------------------------ main
def per_dataset(key: str) -> str:
    return ", ".join(f"{name}: {spec[key]}" for name, spec in DATASETS.items())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                   help="datasets to run (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="fine-tuning seeds, each run in both arms (default: %(default)s)")
    p.add_argument("--output-root", default=None,
                   help="folder of all runs (default: output/transfer_bench, "
                        "output/transfer_bench_quick with --quick)")
    p.add_argument("--out", default=None, help="JSON file for the results (default: OUTPUT_ROOT/transfer.json)")
    p.add_argument("--pretrain-iters", type=int, default=0,
                   help="pretraining iterations (batch 16) instead of the per-dataset epochs "
                        f"({per_dataset('pretrain_epochs')})")
    p.add_argument("--finetune-iters", type=int, default=0,
                   help="fine-tuning iterations (batch 4) for every dataset (default per dataset: "
                        f"{per_dataset('finetune_iters')})")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK['pretrain_iters']} pretraining and "
                        f"{QUICK['finetune_iters']} fine-tuning iterations")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep all checkpoints (by default a fine-tuning run's are deleted once its "
                        "result is recorded, and a pretraining keeps only model_final.pth and the trunk)")
    args = p.parse_args(argv)
    if args.output_root is None:
        args.output_root = "output/transfer_bench_quick" if args.quick else "output/transfer_bench"
    args.output_root = os.path.join(REPO_ROOT, args.output_root) if not os.path.isabs(args.output_root) \
        else args.output_root
    if args.out is None:
        args.out = os.path.join(args.output_root, "transfer.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.chdir(REPO_ROOT)  # train_net.py, configs and datasets/ are relative to the repo root
    started = time.time()
    result = {
        "benchmark": "transfer",
        "command": ["python", "benchmarks/transfer.py"] + (sys.argv[1:] if argv is None else list(argv)),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": environment(),
        "settings": {
            "datasets": args.datasets,
            "seeds": args.seeds,
            "arms": {"random": 'MODEL.WEIGHTS ""', "soco": "MODEL.WEIGHTS <pretraining>/model_final_trunk.pth"},
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
                    "test_overrides": DATASETS[name]["test_opts"],
                }
                for name in args.datasets
            },
        },
        "pretraining": {},
        "runs": [],
    }

    def save():
        result["summary"] = summarize(result["runs"]) if result["runs"] else {}
        result["wall_s_this_invocation"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)

    for name in args.datasets:
        prepare_data(name)
        pre = pretrain(name, args)
        result["pretraining"][name] = pre
        save()
        trunk = os.path.join(REPO_ROOT, pre["trunk"])
        for seed in args.seeds:  # arms interleaved: partial results stay paired
            for arm in ARMS:
                result["runs"].append(finetune(name, arm, seed, trunk, args))
                save()

    save()
    pre_wall = sum(p.get("wall_s") or 0 for p in result["pretraining"].values())
    run_wall = sum(r.get("wall_s") or 0 for r in result["runs"])
    result["wall_s_total_recorded"] = round(pre_wall + run_wall, 1)
    write_json(args.out, result)
    print()
    print(format_table(result["summary"]))
    print(f"\nPretraining wall: {pre_wall / 60:.1f} min, fine-tuning wall: {run_wall / 60:.1f} min "
          f"(recorded, reused runs included); this invocation: {(time.time() - started) / 60:.1f} min")
    print(f"JSON: {rel(args.out)}")
    failed = [r for r in result["runs"] if r.get("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
