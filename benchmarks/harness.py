"""The harness and the one driver of every transfer study (``benchmarks/transfer.py`` is SoCo's,
``benchmarks/aligndet.py`` AlignDet's, ``benchmarks/montage.py`` Montage's).

A study compares arms: detectors fine-tuned with the same config, schedule and seeds, that differ
only in MODEL.WEIGHTS (random init, or the trunk some pretraining exported). Its file declares
what differs; :class:`Study` runs it: the command line, the data, the pretraining runs, the
fine-tuning runs (every seed in every arm, arms interleaved so that partial results stay
paired), the JSON (written after every run) and the table.

How a study is declared (a subclass of :class:`Study`, its instance run by ``main``)::

    class RealStudy(harness.Study):
        name = "real"                    # benchmarks/real.py, output/real_bench/real.json
        description = __doc__            # --help
        datasets = ("aquarium",)         # the fine-tuning set; several add a --datasets flag
        arms = {"random": "random", "soco": "SoCo", "aligndet": "SoCo -> AlignDet"}  # first: baseline
        default_arms = list(arms)
        finetune_config = "configs/transfer/faster_rcnn_R18_FPN_aquarium.yaml"
        pretrainings = {                 # run when an arm needs them, recorded in the JSON
            "soco": harness.Pretraining("configs/soco/soco_R18_FPN_imagenette_cpu.yaml"),
            "aligndet": harness.Pretraining("configs/aligndet/...", start_from="soco"),
        }
        arm_weights = {"soco": "soco", "aligndet": "aligndet"}  # arm -> pretraining (or a file)
        trunk_prefixes = {"soco": ("backbone.",), "aligndet": ("backbone.", "proposal_generator.")}
        box_only = True                  # Faster R-CNN: a box-AP table

        def prepare_data(self, dataset):  # proposals etc. (default: harness.prepare_data)
            ...

        def result_fields(self, result):  # a bar, beside the default fields (arm_pretraining)
            bar = harness.paired_gain_bar(result["summary"], "aquarium", "delta_soco_minus_random")
            return dict(super().result_fields(result), bar=bar)

    STUDY = RealStudy()
    parse_args, main = STUDY.parse_args, STUDY.main

Declared as attributes (see :class:`Study` for all): ``name``, ``description``, ``datasets``,
``arms`` / ``default_arms`` / ``baseline_always``, ``seeds`` / ``quick_seeds``,
``finetune_config``, ``common_finetune_opts`` / ``quick_opts``, ``pretrainings`` /
``arm_weights`` (beside the table: each such arm's probe, first -> last kNN accuracy, and its
pretraining wall time, the runs it starts from included), ``trunk_prefixes``, ``paired`` (more
paired differences than each arm minus the baseline), ``box_only``, ``help``. A study whose
runs do not fit the declarations overrides a method: :meth:`Study.weights` (its pretraining;
the three existing studies keep their folders and JSON this way), :meth:`Study.finetune_dir`,
:meth:`Study.settings` (the JSON's ``settings``), :meth:`Study.result_fields` (bars, probes),
:meth:`Study.report` (the lines after the table), ``add_arguments`` / ``check_args`` (its own
flags). The flags every study has: ``--arms --seeds --finetune-iters --output-root --out
--quick --keep-checkpoints --finetune-opts``.

What the driver is made of:

- Every step is ``train_net.py`` run as a subprocess, exactly what a user runs
  (:func:`train_net_cmd`, :func:`run_logged`); records keep each command.
- Resumable results: :func:`run_pretraining` and :func:`run_finetuning` reuse a run whose
  output folder holds its result (a result file, or Detectron2's final evaluation in
  ``metrics.json``), continue an interrupted one from its last checkpoint (``--resume``), and
  refuse a folder made with other settings (:func:`check_same`: another command;
  :func:`check_config`: the config file has said something else since). Checkpoints that are
  no longer needed are deleted unless asked to keep them.
- Reading runs back: ``metrics.json`` (:func:`final_evaluation`, :func:`final_metric`,
  :func:`iterations_run`), ``config.yaml``, the trunk keys the detector did not load
  (:func:`missing_trunk_keys`) and the probe of a pretraining (:func:`probe_summary`).
- Statistics over seeds: :func:`summarize` (mean and sample std per dataset and arm, paired
  differences against the first arm), :func:`paired_gain_bar`, :func:`format_table` and
  :func:`format_box_table`; :func:`environment` records the machine.

Arms are ``{key: name}``, e.g. ``{"random": "random", "soco": "SoCo"}``; the first is the
baseline that the others are paired with by seed. A run with no detection at all, which
Detectron2 reports as NaN AP, counts as 0 AP in the summary (flagged in the record and table).
"""
import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # soco_d2 from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)
TRAIN_NET = "train_net.py"
RESULT_FILE = "bench_result.json"
PRETRAIN_RESULT_FILE = "bench_pretrain.json"
TRUNK_FILE = "model_final_trunk.pth"
CONTINUED_FILE = "bench_continued.json"  # a continued run: what it continues, from which iteration


# ----------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    """Print ``msg`` with the running script's name and the time."""
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "bench"
    print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it (commands stay short)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


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


def config_max_iter(config_file: str) -> int:
    """SOLVER.MAX_ITER of a config file (relative to the repo root), bases resolved."""
    from detectron2.config import get_cfg
    from soco_d2 import add_config
    from soco_d2.config import load_config

    return load_config(add_config(get_cfg()), os.path.join(REPO_ROOT, config_file)).SOLVER.MAX_ITER


def config_fingerprint(config_file: str) -> str:
    """What a config file says, as a short hash: its YAML merged with its ``_BASE_`` chain
    (model-zoo bases included), comments and layout left out. Part of every run's record, so a
    run is not reused once its config file says something else (:func:`check_config`)."""
    import hashlib

    from soco_d2.config.loading import ModelZooCfgNode, resolve_config_path

    merged = ModelZooCfgNode.load_yaml_with_base(resolve_config_path(os.path.join(REPO_ROOT, config_file)),
                                                 allow_unsafe=True)
    text = json.dumps(merged, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_config(done: dict, config_file: str, output_dir: str) -> None:
    """Refuse (SystemExit) to reuse a result made while ``config_file`` said something else
    (a record written before fingerprints were recorded is trusted)."""
    was = done.get("config_fingerprint")
    if was is not None and was != config_fingerprint(config_file):
        raise SystemExit(f"{rel(output_dir)} holds a result made when {config_file} said something else "
                         f"(its settings changed since).\nUse another --output-root, or delete that folder.")


def has_checkpoint(output_dir: str) -> bool:
    return os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def check_same(done_cmd, planned_cmd, output_dir: str) -> None:
    """Refuse (SystemExit) to reuse a result whose command differs from the planned one."""
    strip = [a for a in done_cmd if a != "--resume"]
    if strip != [a for a in planned_cmd if a != "--resume"]:
        raise SystemExit(
            f"{rel(output_dir)} holds a result made with other settings:\n  was: {shlex.join(strip)}\n"
            f"  now: {shlex.join(planned_cmd)}\nUse another --output-root, or delete that folder."
        )


# ------------------------------------------------------------------------------ reading runs
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


def read_metrics(output_dir: str):
    """The records of OUTPUT_DIR/metrics.json (lines that are not JSON skipped); [] without one."""
    from soco_d2.utils.metrics_json import read_records

    try:
        return read_records(os.path.join(output_dir, "metrics.json"))[0]
    except OSError:
        return []


def iterations_run(output_dir: str):
    """Iterations a finished training ran: the last iteration logged in metrics.json, plus one."""
    its = [rec["iteration"] for rec in read_metrics(output_dir) if "iteration" in rec]
    return max(its) + 1 if its else None


_TRAINING_SPEED = re.compile(r"Overall training speed: (\d+) iterations in \S+ \(([0-9.]+) s / it\)")


def training_seconds(output_dir: str, from_iter: int = 0):
    """A finished run's training time with its hooks (evaluation, probe, checkpoints) left out:
    Detectron2's own s / it of log.txt ("Overall training speed", the last one when resumed)
    times the iterations run after ``from_iter`` (a continued run's first iteration: the ones
    before are the continued run's). None when the log has no such line."""
    speed = None
    try:
        with open(os.path.join(REPO_ROOT, output_dir, "log.txt")) as f:
            for line in f:
                match = _TRAINING_SPEED.search(line)
                if match:
                    speed = float(match.group(2))
    except OSError:
        return None
    iters = iterations_run(os.path.join(REPO_ROOT, output_dir))
    return None if speed is None or iters is None else round(speed * (iters - from_iter), 1)


def final_metric(output_dir: str, key: str):
    value = None
    for rec in read_metrics(output_dir):
        if key in rec:
            value = rec[key]
    return value


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


def missing_trunk_keys(output_dir: str, trunk_prefixes):
    """Parameters the fine-tuning model did not find in MODEL.WEIGHTS, read from log.txt.

    Returns (lines Detectron2 printed, those that start with ``trunk_prefixes``: the pretrained
    trunk); the second list must be empty when fine-tuning from a pretrained trunk.
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
    trunk = [k for k in listed if k.startswith(tuple(trunk_prefixes))]
    return listed, trunk


# -------------------------------------------------------------------------------------- runs
def keep_prefixes(trunk: str, path: str, prefixes: tuple) -> str:
    """The tensors of ``trunk`` whose names start with one of ``prefixes``, as a weights file at
    ``path`` (rewritten each time, atomically): the MODEL.WEIGHTS of an arm that takes only some
    parts of a pretrained trunk. A training checkpoint's optimizer, scheduler and iteration are
    left out: the file is an initialisation, not a run to resume."""
    import torch

    from soco_d2.utils.atomic_io import atomic_write

    checkpoint = torch.load(trunk, map_location="cpu", weights_only=True)
    model = {k: v for k, v in checkpoint["model"].items() if k.startswith(prefixes)}
    if not model:
        raise SystemExit(f"{rel(trunk)} has no {'* or '.join(prefixes)}* keys: not an FPN trunk")
    kept = {k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler", "iteration")}
    atomic_write(path, lambda f: torch.save(dict(kept, model=model), f))
    return path


def drop_checkpoints(output_dir: str) -> None:
    """Delete every checkpoint of a finished run (model_*.pth and the last_checkpoint pointer)."""
    for path in glob.glob(os.path.join(output_dir, "model_*.pth")):
        os.unlink(path)
    if os.path.exists(os.path.join(output_dir, "last_checkpoint")):
        os.unlink(os.path.join(output_dir, "last_checkpoint"))


def drop_intermediate_checkpoints(output_dir: str, keep_checkpoints: bool) -> None:
    """Keep model_final.pth (full pretraining state) and the trunk; delete model_0*.pth."""
    if not keep_checkpoints:
        for path in glob.glob(os.path.join(output_dir, "model_0*.pth")):
            os.unlink(path)


#: What a continued run's folder does not take from the run it continues: that run's result,
#: trunk, logs and saved config (its own are written by its own train_net.py), its checkpoints
#: (the final one is copied under its iteration's name) and the pointer to them.
_NOT_CONTINUED = (PRETRAIN_RESULT_FILE, CONTINUED_FILE, TRUNK_FILE, "stdout.log", "log.txt", "config.yaml", "last_checkpoint",
                  "model_*.pth", "events.out.tfevents.*")


def continue_run(source_dir: str, output_dir: str) -> int:
    """Make ``output_dir`` the continuation of the finished run in ``source_dir``: its final
    checkpoint (model_final.pth, the full trainer state) copied as ``model_<iteration>.pth``
    with ``last_checkpoint`` pointing at it, so that ``train_net.py --resume`` goes on from the
    iteration after it, plus every state file the run keeps beside it (metrics.json, probe.json,
    a method's folders such as SimDETR's ``pseudo_labels/``), and CONTINUED_FILE saying so.
    ``last_checkpoint`` is written last: an interrupted copy is redone. Returns the first
    iteration the continuation trains.

    Only valid where the longer run's first iterations ARE the finished run (the study that
    declares :attr:`Pretraining.continues` says why; SimDETR's 1 round is the first round of 2,
    tested in tests/test_simdetr_train.py)."""
    import fnmatch
    import shutil

    import torch

    from soco_d2.utils.atomic_io import atomic_write, atomic_write_bytes

    final = os.path.join(source_dir, "model_final.pth")
    if not os.path.isfile(final):
        raise SystemExit(f"Cannot continue {rel(source_dir)}: it has no model_final.pth (the full training state; "
                         f"deleted?). Run it again, or delete {rel(output_dir)} and train it from the start.")
    iteration = int(torch.load(final, map_location="cpu", weights_only=False)["iteration"])
    os.makedirs(output_dir, exist_ok=True)
    for name in sorted(os.listdir(source_dir)):
        if any(fnmatch.fnmatch(name, pattern) for pattern in _NOT_CONTINUED):
            continue
        src, dst = os.path.join(source_dir, name), os.path.join(output_dir, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copyfile(src, dst)
    write_json(os.path.join(output_dir, CONTINUED_FILE), {"continues": rel(source_dir), "at": iteration + 1})
    name = f"model_{iteration:07d}.pth"
    with open(final, "rb") as src:
        atomic_write(os.path.join(output_dir, name), lambda f: shutil.copyfileobj(src, f))
    atomic_write_bytes(os.path.join(output_dir, "last_checkpoint"), name.encode())
    return iteration + 1


def run_pretraining(tag: str, labels: dict, config_file: str, opts, output_dir: str,
                    keep_checkpoints: bool, continues: Optional[str] = None) -> dict:
    """Pretraining with train_net.py, reused or resumed; returns its record (trunk path etc.).

    Args:
        tag: names the run in the log, e.g. ``"[synthetic]"``.
        labels: first fields of the record, e.g. ``{"dataset": name}``.
        continues: the folder of a finished run that this one continues (:func:`continue_run`,
            when ``output_dir`` has neither a result nor a checkpoint); the record's
            ``continued_at`` is its first iteration, and its ``train_s`` and ``wall_s`` count
            only what this run trained.
    """
    planned = train_net_cmd(config_file, opts)[1:]  # without the interpreter
    done = read_json(os.path.join(output_dir, PRETRAIN_RESULT_FILE))
    trunk = os.path.join(output_dir, TRUNK_FILE)
    if done is not None and os.path.isfile(trunk):
        check_same(done["command"][1:], planned, output_dir)
        check_config(done, config_file, output_dir)
        log(f"{tag} pretraining reused: {rel(trunk)}")
        drop_intermediate_checkpoints(output_dir, keep_checkpoints)
        return dict(done, max_iter=iterations_run(output_dir), reused=True,
                    train_s=training_seconds(output_dir, done.get("continued_at") or 0))

    if continues is not None and not has_checkpoint(output_dir):  # new, or its copy was interrupted
        log(f"{tag} continues {rel(continues)} from iteration {continue_run(continues, output_dir)}")
    continued = read_json(os.path.join(output_dir, CONTINUED_FILE))
    continued_at = continued["at"] if continued else None
    resume = has_checkpoint(output_dir)
    cmd = train_net_cmd(config_file, opts, resume=resume)
    log(f"{tag} pretraining{' (resumed)' if resume else ''}: {shlex.join(cmd[1:])}")
    load_before = os.getloadavg()
    rc, wall = run_logged(cmd, os.path.join(output_dir, "stdout.log"))
    if rc or not os.path.isfile(trunk):
        raise SystemExit(f"{tag} pretraining failed (exit {rc}); see {rel(output_dir)}/stdout.log")
    cfg = load_config_yaml(output_dir)
    record = dict(labels)
    record.update({
        "output_dir": rel(output_dir),
        "trunk": rel(trunk),
        "command": ["python"] + planned,
        "config_fingerprint": config_fingerprint(config_file),
        "wall_s": round(wall, 1),
        "train_s": training_seconds(output_dir, continued_at or 0),
        "resumed": resume,
        **({"continues": continued["continues"], "continued_at": continued_at} if continued else {}),
        # Not config.yaml's SOLVER.MAX_ITER: SOLVER.EPOCHS is resolved after the config is saved.
        "max_iter": iterations_run(output_dir),
        "final_loss": final_metric(output_dir, "total_loss"),
        "probe": read_json(os.path.join(output_dir, "probe.json")),  # None without a probe hook
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "config": cfg,
    })
    write_json(os.path.join(output_dir, PRETRAIN_RESULT_FILE), record)
    drop_intermediate_checkpoints(output_dir, keep_checkpoints)
    log(f"{tag} pretraining done in {wall / 60:.1f} min: {rel(trunk)}")
    return dict(record, reused=False)


def run_finetuning(tag: str, labels: dict, config_file: str, opts, output_dir: str,
                   max_iter: int, keep_checkpoints: bool, pretrained: bool, trunk_prefixes) -> dict:
    """Fine-tuning + final evaluation with train_net.py, reused or resumed; returns its record.

    Args:
        tag: names the run in the log, e.g. ``"[synthetic soco seed 0]"``.
        labels: first fields of the record, e.g. ``{"dataset": .., "arm": .., "seed": ..}``.
        opts: every override, MODEL.WEIGHTS, SEED and OUTPUT_DIR included.
        pretrained: MODEL.WEIGHTS is a pretrained trunk: warn if any key starting with
            ``trunk_prefixes`` was not loaded.
    """
    planned = train_net_cmd(config_file, opts)[1:]

    done = read_json(os.path.join(output_dir, RESULT_FILE))
    if done is not None:
        check_same(done["command"][1:], planned, output_dir)
        check_config(done, config_file, output_dir)
        log(f"{tag} reused: box AP {fmt(done['bbox_AP'])}, mask AP {fmt(done['segm_AP'])}")
        return dict(done, reused=True)

    metrics = final_evaluation(output_dir, max_iter)
    wall, resumed, rc = None, False, 0
    load_before = os.getloadavg()
    if metrics is None:  # not run, or interrupted: run (continuing from the last checkpoint)
        resumed = has_checkpoint(output_dir)
        cmd = train_net_cmd(config_file, opts, resume=resumed)
        log(f"{tag} fine-tuning{' (resumed)' if resumed else ''}: {shlex.join(cmd[1:])}")
        rc, wall = run_logged(cmd, os.path.join(output_dir, "stdout.log"))
        metrics = final_evaluation(output_dir, max_iter)
    else:
        log(f"{tag} found a finished evaluation in metrics.json (wall time unknown)")
    if rc or metrics is None:
        log(f"{tag} FAILED (exit {rc}); see {rel(output_dir)}/stdout.log")
        return dict(labels, output_dir=rel(output_dir), failed=True, exit_code=rc,
                    command=["python"] + planned)

    listed, trunk_missing = missing_trunk_keys(output_dir, trunk_prefixes)
    box, mask = metrics["bbox"].get("AP"), metrics["segm"].get("AP")
    record = dict(labels)
    record.update({
        "output_dir": rel(output_dir),
        "command": ["python"] + planned,
        "config_file": config_file,
        "config_fingerprint": config_fingerprint(config_file),
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
    })
    write_json(os.path.join(output_dir, RESULT_FILE), record)
    if not keep_checkpoints:
        drop_checkpoints(output_dir)
    if pretrained and trunk_missing:
        log(f"{tag} WARNING: pretrained trunk keys were not loaded: {trunk_missing}")
    log(f"{tag} box AP {fmt(box)}, mask AP {fmt(mask)}"
        + (f" in {wall / 60:.1f} min" if wall is not None else ""))
    return dict(record, reused=False)


def supervised_reference(tag: str, labels: dict, config_file: str, opts, output_dir: str, trunk: str,
                         prefixes: Tuple[str, ...], max_iter: int, keep_checkpoints: bool) -> dict:
    """A detector trained WITH labels (a reference arm, not a method), cut down to the trunk a
    pretrained arm would hand over: :func:`run_finetuning` (reused, resumed or run; it must
    evaluate, so the config needs a DATASETS.TEST), then the keys of ``prefixes`` of its
    ``model_final.pth`` written to ``trunk``. Returns its record (``trunk`` added)."""
    final = os.path.join(output_dir, "model_final.pth")
    # Checkpoints are kept until the trunk is cut out of model_final.pth, then deleted.
    record = run_finetuning(tag, labels, config_file, opts, output_dir, max_iter,
                            keep_checkpoints=True, pretrained=False, trunk_prefixes=())
    if record.get("failed"):
        raise SystemExit(f"{tag} failed; see {record['output_dir']}/stdout.log")
    if os.path.isfile(final):
        keep_prefixes(final, trunk, prefixes)
        if not keep_checkpoints:
            drop_checkpoints(output_dir)
    elif not os.path.isfile(trunk):
        raise SystemExit(f"{rel(output_dir)} has a result but neither model_final.pth nor {rel(trunk)}: "
                         "delete the folder to train the reference again")
    # its wall time includes its evaluation; train_s does not
    return dict(record, trunk=rel(trunk), train_s=training_seconds(output_dir))


# -------------------------------------------------------------------------------------- data
def prepare_data(name: str) -> None:
    """Create what pretraining and fine-tuning on ``name`` read, when it is missing: the embedded
    scenes (``synthetic``) or the COCO sample's splits (``coco_sample``), and their
    selective-search proposals."""
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


# --------------------------------------------------------------------------------- summary
def scaled_schedule(iters: int, warmup_share: float, step_shares) -> list:
    """Overrides for a run of ``iters`` iterations with a recipe's shape scaled: MAX_ITER, STEPS at
    the given shares of it, WARMUP_ITERS and a checkpoint halfway (fvcore wants every step below
    MAX_ITER; a share that rounds to 0 is dropped)."""
    steps = sorted({min(max(1, round(iters * f)), iters - 1) for f in step_shares} - {0})
    return ["SOLVER.EPOCHS", "0", "SOLVER.MAX_ITER", str(iters),
            "SOLVER.STEPS", "(" + "".join(f"{s}," for s in steps) + ")",
            "SOLVER.WARMUP_ITERS", str(max(1, round(iters * warmup_share))),
            "SOLVER.CHECKPOINT_PERIOD", str(max(1, iters // 2))]


def paired_gain_bar(summary: dict, dataset: str, delta_key: str, min_gain: float = 0.0) -> dict:
    """Whether the paired box-AP difference ``summary[dataset][delta_key]`` clears a bar: its mean
    is at least ``min_gain`` AP and greater than 2 of its sample std. ``None`` with fewer than 2
    pairs (no std)."""
    delta = summary.get(dataset, {}).get(delta_key, {})
    d = delta.get("bbox_AP", {})
    mean, std = d.get("mean"), d.get("std")
    met = None if mean is None or delta.get("n", 0) < 2 else bool(mean >= min_gain and mean > 2 * std)
    return {"dataset": dataset, "difference": delta_key, "n": delta.get("n", 0), "min_gain": min_gain,
            "paired_gain_mean": mean, "paired_gain_std": std, "met": met}


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


def summarize(runs, arms: dict):
    """Per dataset and arm: n, mean/std of box and mask AP, AP50; for every arm but the first
    (the baseline), the differences paired by seed, as ``delta_<arm>_minus_<baseline>``."""
    ok = [r for r in runs if not r.get("failed")]
    baseline = next(iter(arms))
    summary = {}
    for name in dict.fromkeys(r["dataset"] for r in runs):
        entry = {}
        for arm in arms:
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
        for arm in list(arms)[1:]:
            seeds = sorted(s for (a, s) in by_seed if a == arm and (baseline, s) in by_seed)
            delta = {"n": len(seeds), "seeds": seeds}
            for key in ("bbox_AP", "segm_AP"):
                d = [ap_or_zero(by_seed[(arm, s)][key]) - ap_or_zero(by_seed[(baseline, s)][key])
                     for s in seeds]
                m, s_ = mean_std(d)
                delta[key] = {"mean": m, "std": s_, "values": d}
            entry[f"delta_{arm}_minus_{baseline}"] = delta
        summary[name] = entry
    return summary


def _column_cells(columns) -> list:
    """``columns`` ({header: {arm: text}}) as (header, width, {arm: text}) triples."""
    return [(h, max([len(h)] + [len(v) for v in cells.values()]), cells) for h, cells in (columns or {}).items()]


def _columns_of(arm, cells) -> str:
    """The extra columns of ``arm``'s row ("-" where it has no value), or of a header row
    (``arm`` None)."""
    return "".join(f"  {(h if arm is None else c.get(arm, '-')):>{w}}" for h, w, c in cells)


def format_table(summary, arms: dict, columns: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """The :func:`summarize` result as a text table: one row per dataset and arm (``<name>
    init``), then one per paired difference (``<name> - <baseline name> (paired)``).
    ``columns`` ({header: {arm: text}}) are shown at the end of each arm's row."""
    cells = _column_cells(columns)

    def ms(d):
        if d is None or d.get("mean") is None:
            return "-"
        return f"{d['mean']:6.2f} ± {d['std']:5.2f}"

    def delta(d):
        if d is None or d.get("mean") is None:
            return "-"
        return f"{d['mean']:+6.2f} ± {d['std']:5.2f}"

    baseline = next(iter(arms))
    # the init column as wide as its longest entry, so the figures stay aligned
    w = max([22] + [len(f"{label} init (9 no-det)") for label in arms.values()]
            + [len(f"{label} - {arms[baseline]} (paired)") for label in arms.values()])
    head = (f"{'dataset':<12} {'init':<{w}} {'n':>2}  {'box AP':>15}  {'mask AP':>15}  {'box AP50':>15}  "
            f"{'min/run':>7}" + _columns_of(None, cells))
    lines = [head, "-" * len(head)]
    for name, entry in summary.items():
        for arm, label in arms.items():
            it = entry[arm]
            wall = "-" if it["wall_s_mean"] is None else f"{it['wall_s_mean'] / 60:.1f}"
            flag = f" ({it['no_detection_runs']} no-det)" if it["no_detection_runs"] else ""
            lines.append(
                f"{name:<12} {label + ' init' + flag:<{w}} {it['n']:>2}  {ms(it['bbox_AP']):>15}  "
                f"{ms(it['segm_AP']):>15}  {ms(it['bbox_AP50']):>15}  {wall:>7}" + _columns_of(arm, cells)
            )
        for arm, label in list(arms.items())[1:]:
            d = entry[f"delta_{arm}_minus_{baseline}"]
            lines.append(
                f"{name:<12} {f'{label} - {arms[baseline]} (paired)':<{w}} {d['n']:>2}  "
                f"{delta(d['bbox_AP']):>15}  {delta(d['segm_AP']):>15}"
            )
    lines.append("COCO AP in percent on the fine-tuning config's DATASETS.TEST; mean ± sample std over "
                 "fine-tuning seeds.")
    return "\n".join(lines)


def format_box_table(summary, arms: dict, columns: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """Box AP only (a detector without masks): one row per arm, one per paired difference (every
    ``delta_*`` of the summary); ``columns`` as in :func:`format_table`."""
    cells = _column_cells(columns)
    rows = [label + " init" for label in arms.values()] + [
        f"{arms[a]} - {arms[b]} (paired)" for entry in summary.values() for a, b in
        (key[len("delta_"):].split("_minus_") for key in entry if key.startswith("delta_"))]
    w = max([34] + [len(r) for r in rows])  # the first column fits the longest arm name
    head = f"{'init':<{w}} {'n':>2}  {'box AP':>15}  {'box AP50':>15}" + _columns_of(None, cells)
    lines = [head, "-" * (len(head) - 1)]
    for entry in summary.values():
        for arm, label in arms.items():
            it = entry[arm]
            lines.append(f"{label + ' init':<{w}} {it['n']:>2}  "
                         f"{fmt(it['bbox_AP']['mean']):>6} ± {fmt(it['bbox_AP']['std']):>5}  "
                         f"{fmt(it['bbox_AP50']['mean']):>6} ± {fmt(it['bbox_AP50']['std']):>5}"
                         + _columns_of(arm, cells))
        for key, d in entry.items():
            if key.startswith("delta_"):
                a, b = key[len("delta_"):].split("_minus_")
                mean = d["bbox_AP"]["mean"]
                lines.append(f"{arms[a] + ' - ' + arms[b] + ' (paired)':<{w}} {d['n']:>2}  "
                             f"{'-' if mean is None else f'{mean:+6.2f}':>6} ± {fmt(d['bbox_AP']['std']):>5}")
    lines.append("COCO box AP in percent on the fine-tuning config's DATASETS.TEST; mean ± sample std over seeds.")
    return "\n".join(lines)


def probe_summary(pretraining: dict) -> dict:
    """First and last probe (kNN on head features, its ``probe.json``) of each pretraining record
    that has one: did the trunk learn?"""
    out = {}
    for name, pre in pretraining.items():
        probes = (pre.get("probe") or {}).get("probes") or []
        if probes:
            out[name] = {"dataset": pre["probe"].get("dataset"), "first": probes[0], "last": probes[-1]}
    return out


def new_result(benchmark: str, argv, **fields) -> dict:
    """The head of a benchmark's JSON: its name, the command as typed, when, the machine, then
    ``fields`` (settings, empty run lists...)."""
    return {"benchmark": benchmark,
            "command": ["python", f"benchmarks/{benchmark}.py"] + (sys.argv[1:] if argv is None else list(argv)),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "environment": environment(), **fields}


def resolve_output_paths(args, name: str) -> None:
    """``args.output_root`` (default ``output/<name>_bench``, ``..._quick`` with --quick) made
    absolute under the repository, and ``args.out`` (default ``OUTPUT_ROOT/<name>.json``)."""
    if args.output_root is None:
        args.output_root = f"output/{name}_bench_quick" if args.quick else f"output/{name}_bench"
    if not os.path.isabs(args.output_root):
        args.output_root = os.path.join(REPO_ROOT, args.output_root)
    if args.out is None:
        args.out = os.path.join(args.output_root, f"{name}.json")


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


# -------------------------------------------------------------------------------- the driver
KEEP_CHECKPOINTS_HELP = ("keep all checkpoints (by default a fine-tuning run's are deleted once its result is "
                         "recorded, and a pretraining keeps only model_final.pth and the trunk)")


@dataclass(frozen=True)
class Pretraining:
    """A pretraining run declared by a study (:attr:`Study.pretrainings`), run by the default
    :meth:`Study.weights` when an arm needs its trunk.

    Its command: ``train_net.py --config-file <config>`` with :attr:`Study.common_pretrain_opts`,
    ``opts``, MODEL.WEIGHTS the trunk of ``start_from`` (another of the study's pretrainings) when
    set, SEED 0 and OUTPUT_DIR ``OUTPUT_ROOT/pretrain_<key>``; ``--quick`` adds a
    :attr:`Study.quick_pretrain_iters` schedule and ``quick_opts``. Its record is the JSON's
    ``pretraining[<key>]``.

    ``continues``: another of the study's pretrainings whose finished run IS this run's first
    iterations (SimDETR: its 1-round run is the first round of its 2-round run). This run then
    starts from a copy of that run's final state (:func:`continue_run`) instead of training those
    iterations again; that run comes before it in the arm's chain, so the arm's pretraining time
    counts both once.
    """

    config: str
    opts: Sequence[str] = ()
    start_from: Optional[str] = None
    quick_opts: Sequence[str] = ()
    continues: Optional[str] = None


class StudyRun:
    """One invocation of a study: its ``args``, the ``result`` written to ``args.out``,
    :meth:`save` and :meth:`pretrain` (what :meth:`Study.weights` calls)."""

    def __init__(self, study: "Study", args, argv):
        self.study, self.args = study, args
        self.started = time.time()
        self.result = new_result(study.name, argv, settings=study.settings(args), pretraining={}, runs=[])

    def minutes(self) -> float:
        return (time.time() - self.started) / 60

    def save(self) -> None:
        """The summary of the runs so far, the study's own fields, and the JSON rewritten."""
        result = self.result
        result["summary"] = self.study.summarize(result["runs"], self.args.arms) if result["runs"] else {}
        result.update(self.study.result_fields(result))
        result["wall_s_this_invocation"] = round(time.time() - self.started, 1)
        os.makedirs(os.path.dirname(os.path.abspath(self.args.out)), exist_ok=True)
        write_json(self.args.out, result)

    def pretrain(self, key: str, config_file: str, opts, output_dir: str, tag: Optional[str] = None,
                 labels: Optional[dict] = None, continues: Optional[str] = None) -> dict:
        """:func:`run_pretraining`, recorded as ``pretraining[key]`` and saved; its record.

        Args:
            tag: names the run in the log (default ``[<key>]``).
            labels: first fields of the record (default ``{"method": <the arm's name of key>}``).
            continues: the folder of the finished run this one continues (:func:`continue_run`).
        """
        if labels is None:
            labels = {"method": self.study.arms.get(key, key)}
        record = run_pretraining(tag or f"[{key}]", labels, config_file, opts, output_dir,
                                 self.args.keep_checkpoints, continues=continues)
        self.result["pretraining"][key] = record
        self.save()
        return record


class Study:
    """A transfer study, declared by a subclass (how: the module docstring); :meth:`main` runs it.

    Attributes (class attributes of the declaration):
        name: ``benchmarks/<name>.py``; runs in ``output/<name>_bench`` (``..._quick``), results
            in ``<name>.json`` there.
        description: the ``--help`` text (the study file's docstring).
        datasets: the fine-tuning datasets (the records' ``dataset``); with several, a
            ``--datasets`` flag picks among them (default ``default_datasets``).
        arms: ``{arm: its name in tables}`` in table order; the first is the baseline every
            other arm is paired with by seed.
        default_arms: the arms run without ``--arms``.
        baseline_always: the baseline is run whatever ``--arms`` says (else ``--arms`` must
            start with it).
        seeds, quick_seeds: fine-tuning seeds without ``--seeds`` (with ``--quick``: quick_seeds,
            when set).
        finetune_config: the fine-tuning config of every arm.
        common_finetune_opts: overrides of every fine-tuning run.
        quick_finetune_iters, quick_opts: the fine-tuning iterations and extra overrides of
            ``--quick``.
        finetune_shape: (warmup share, step shares) of the fine-tuning schedule scaled to
            ``--finetune-iters``.
        pretrainings: ``{key: Pretraining}``, run by the default :meth:`weights`.
        arm_weights: ``{arm: a key of pretrainings (its trunk), or a weights file}``; an arm not
            listed starts from random init.
        common_pretrain_opts, quick_pretrain_iters: of the declared pretrainings.
        trunk_prefixes: ``{arm: state_dict prefixes}`` that must load from its weights.
        paired: ``(arm, other)`` pairs whose paired difference is reported besides every arm
            minus the baseline (when both run).
        box_only: the table shows box AP only (:func:`format_box_table`).
        help: help texts of the shared flags, by dest (``"arms"``, ``"quick"``, ...), where the
            study has more to say.
    """

    name: str = ""
    description: str = ""
    datasets: Sequence[str] = ("synthetic",)
    default_datasets: Sequence[str] = ("synthetic",)
    arms: Dict[str, str] = {}
    default_arms: Sequence[str] = ()
    baseline_always: bool = False
    seeds: Sequence[int] = (0, 1, 2)
    quick_seeds: Optional[Sequence[int]] = None
    finetune_config: str = ""
    common_finetune_opts: Sequence[str] = ("MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1")
    quick_finetune_iters: int = 4
    quick_opts: Sequence[str] = ("TEST.PRECISE_BN.NUM_ITER", "2")
    finetune_shape: Tuple[float, Tuple[float, ...]] = (0.1, (0.75,))
    pretrainings: Dict[str, Pretraining] = {}
    arm_weights: Dict[str, str] = {}
    common_pretrain_opts: Sequence[str] = ("MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "1")
    quick_pretrain_iters: int = 3
    trunk_prefixes: Dict[str, Tuple[str, ...]] = {}
    paired: Sequence[Tuple[str, str]] = ()
    box_only: bool = False
    help: Dict[str, str] = {}

    @property
    def baseline(self) -> str:
        return next(iter(self.arms))

    # ------------------------------------------------------------------- command line
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The study's own flags (added before the shared ones)."""

    def check_args(self, parser: argparse.ArgumentParser, args) -> None:
        """Checks and defaults of the study's own flags (``parser.error`` to refuse)."""

    def parse_args(self, argv=None):
        p = argparse.ArgumentParser(description=self.description,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if len(self.datasets) > 1:
            p.add_argument("--datasets", nargs="+", default=list(self.default_datasets), choices=list(self.datasets),
                           help="datasets to run (default: %(default)s)")
        self.add_arguments(p)
        baseline = self.baseline
        arms_help = (f"arms to run; {baseline} (the baseline) is always run" if self.baseline_always else
                     f"arms to run, {baseline} first (the baseline of the paired differences)")
        p.add_argument("--arms", nargs="+", choices=list(self.arms), default=list(self.default_arms),
                       help=self.help.get("arms", arms_help + " (default: %(default)s)"))
        quick_seeds = f"; --quick: {' '.join(map(str, self.quick_seeds))}" if self.quick_seeds else ""
        p.add_argument("--seeds", nargs="+", type=int, default=None if self.quick_seeds else list(self.seeds),
                       help="fine-tuning seeds, each run in every arm (default: "
                            + (f"{' '.join(map(str, self.seeds))}{quick_seeds})" if quick_seeds else "%(default)s)"))
        p.add_argument("--finetune-iters", type=int, default=0,
                       help=self.help.get("finetune_iters", "fine-tuning iterations instead of the config's "
                                                            "(its shape scaled)"))
        p.add_argument("--output-root", default=None,
                       help=f"folder of all runs (default: output/{self.name}_bench, "
                            f"output/{self.name}_bench_quick with --quick)")
        p.add_argument("--out", default=None,
                       help=f"JSON file for the results (default: OUTPUT_ROOT/{self.name}.json)")
        p.add_argument("--quick", action="store_true",
                       help=self.help.get("quick", "smoke test of the pipeline (see the description above)"))
        p.add_argument("--keep-checkpoints", action="store_true", help=KEEP_CHECKPOINTS_HELP)
        p.add_argument("--finetune-opts", nargs="+", default=[], metavar="KEY VALUE",
                       help="config overrides of every fine-tuning run, after the study's own (an "
                            "ablation of the fine-tuning protocol, e.g. MODEL.BACKBONE.FREEZE_AT 5; use "
                            "its own --output-root: a folder made with other overrides is refused)")
        args = p.parse_args(argv)
        if len(args.finetune_opts) % 2:
            p.error(f"--finetune-opts: KEY VALUE pairs expected, got {len(args.finetune_opts)} words: "
                    f"{' '.join(args.finetune_opts)}")
        for key in args.finetune_opts[::2]:
            if key in ("MODEL.WEIGHTS", "SEED", "OUTPUT_DIR"):
                p.error(f"--finetune-opts: {key} is what the study sets per run; it cannot be overridden")
        if self.baseline_always:
            args.arms = [arm for arm in self.arms if arm in args.arms or arm == baseline]
        elif args.arms[0] != baseline:
            p.error(f"--arms: the first arm must be {baseline} (the baseline of the paired differences)")
        if args.seeds is None:
            args.seeds = list(self.quick_seeds if args.quick else self.seeds)
        self.check_args(p, args)
        resolve_output_paths(args, self.name)
        return args

    def dataset_names(self, args) -> List[str]:
        return list(args.datasets) if len(self.datasets) > 1 else [self.datasets[0]]

    # ---------------------------------------------------------------------- pretraining
    def prepare_data(self, dataset: str) -> None:
        """Create what the runs on ``dataset`` read, when missing (default :func:`prepare_data`)."""
        prepare_data(dataset)

    def weights(self, run: StudyRun, dataset: str) -> Dict[str, str]:
        """``{arm: MODEL.WEIGHTS}`` of the arms that do not start from random init, after running
        the pretrainings they need (:meth:`StudyRun.pretrain` records each in the JSON).

        Default: each arm of ``arm_weights`` that runs gets the trunk of its pretraining (run
        once, after the one it starts from), or the file named."""
        args, trunks = run.args, {}

        def trunk(key: str) -> str:
            if key not in trunks:
                spec = self.pretrainings[key]
                start = trunk(spec.start_from) if spec.start_from else None
                continues = None
                if spec.continues:
                    trunk(spec.continues)  # run (or reused) first: this one starts from its final state
                    continues = self.pretrain_dir(args, spec.continues)
                output_dir = self.pretrain_dir(args, key)
                opts = list(self.common_pretrain_opts) + list(spec.opts)
                opts += (["MODEL.WEIGHTS", rel(start)] if start else []) + ["SEED", "0", "OUTPUT_DIR", rel(output_dir)]
                if args.quick:
                    opts += (["SOLVER.WARMUP_EPOCHS", "0"] + scaled_schedule(self.quick_pretrain_iters, 0.1, ())
                             + list(spec.quick_opts))
                trunks[key] = os.path.join(REPO_ROOT, run.pretrain(key, spec.config, opts, output_dir,
                                                                   continues=continues)["trunk"])
            return trunks[key]

        return {arm: trunk(source) if source in self.pretrainings else source
                for arm, source in self.arm_weights.items() if arm in args.arms}

    def pretrain_root(self, args) -> str:
        """The folder of the study's pretrainings (default ``args.output_root``)."""
        return args.output_root

    def pretrain_dir(self, args, key: str) -> str:
        return os.path.join(self.pretrain_root(args), f"pretrain_{key}")

    def pretraining_chain(self, arm: str) -> List[str]:
        """The declared pretrainings ``arm``'s weights come from, first run first."""
        key, chain = self.arm_weights.get(arm), []
        while key in self.pretrainings:
            chain.insert(0, key)
            spec = self.pretrainings[key]
            key = spec.continues or spec.start_from  # a continued run has its own start
        return chain

    # ---------------------------------------------------------------------- fine-tuning
    def finetune_config_of(self, args, dataset: str) -> str:
        return self.finetune_config

    def finetune_schedule(self, args, dataset: str):
        """(iterations, overrides): the config's own schedule, or its shape
        (:attr:`finetune_shape`) scaled to ``--finetune-iters`` (``--quick``: its iterations)."""
        iters = self.quick_finetune_iters if args.quick else args.finetune_iters
        if not iters:
            return config_max_iter(self.finetune_config_of(args, dataset)), []
        return iters, scaled_schedule(iters, *self.finetune_shape)

    def finetune_data_opts(self, args, dataset: str) -> list:
        """Overrides of every fine-tuning run on ``dataset``, before the schedule (e.g. its
        training set)."""
        return []

    def quick_finetune_opts(self, args, dataset: str) -> list:
        return list(self.quick_opts)

    def finetune_opts(self, args, dataset: str, arm: str, seed: int, weights: dict, output_dir: str):
        """(iterations, overrides) of ``arm`` at ``seed``; arms differ only in MODEL.WEIGHTS.

        ``weights``: arm -> its MODEL.WEIGHTS (random init has none)."""
        iters, schedule = self.finetune_schedule(args, dataset)
        opts = ["MODEL.WEIGHTS", rel(weights[arm]) if weights.get(arm) else ""] + list(self.common_finetune_opts)
        opts += self.finetune_data_opts(args, dataset) + schedule
        if args.quick:
            opts += self.quick_finetune_opts(args, dataset)
        opts += list(getattr(args, "finetune_opts", ()))
        return iters, opts + ["SEED", str(seed), "OUTPUT_DIR", rel(output_dir)]

    def finetune_dir(self, args, dataset: str, arm: str, seed: int) -> str:
        return os.path.join(args.output_root, dataset, f"{arm}_seed{seed}")

    def trunk_prefixes_of(self, args, arm: str) -> tuple:
        return self.trunk_prefixes.get(arm, ())

    def finetune(self, args, dataset: str, arm: str, seed: int, weights: dict) -> dict:
        """One fine-tuning run (:func:`run_finetuning`: reused, resumed or run); its record."""
        output_dir = self.finetune_dir(args, dataset, arm, seed)
        max_iter, opts = self.finetune_opts(args, dataset, arm, seed, weights, output_dir)
        tag = f"[{dataset} {arm} seed {seed}]" if len(self.datasets) > 1 else f"[{arm} seed {seed}]"
        return run_finetuning(
            tag, {"dataset": dataset, "arm": arm, "seed": seed}, self.finetune_config_of(args, dataset), opts,
            output_dir, max_iter, args.keep_checkpoints, pretrained=bool(weights.get(arm)),
            trunk_prefixes=self.trunk_prefixes_of(args, arm),
        )

    # -------------------------------------------------------------------------- results
    def labels(self, arms=None) -> Dict[str, str]:
        return {arm: self.arms[arm] for arm in (self.default_arms if arms is None else arms)}

    def summarize(self, runs, arms=None) -> dict:
        """:func:`summarize` against the baseline, plus the differences of :attr:`paired`."""
        labels = self.labels(arms)
        summary = summarize(runs, labels)
        for arm, other in self.paired:
            if arm in labels and other in labels:
                key = f"delta_{arm}_minus_{other}"
                for name, entry in summarize(runs, {other: labels[other], arm: labels[arm]}).items():
                    summary[name][key] = entry[key]
        return summary

    def format_table(self, summary, arms=None, columns=None) -> str:
        return (format_box_table if self.box_only else format_table)(summary, self.labels(arms), columns)

    def settings(self, args) -> dict:
        """The JSON's ``settings``: what the runs were made with."""
        return {"datasets": self.dataset_names(args), "arms": self.labels(args.arms), "seeds": args.seeds,
                "quick": args.quick, "finetune_config": self.finetune_config,
                "finetune_iters": self.finetune_schedule(args, self.dataset_names(args)[0])[0],
                "pretrainings": {key: vars(spec) for key, spec in self.pretrainings.items()},
                "arm_weights": self.arm_weights, "output_root": rel(args.output_root),
                "finetune_opts": list(getattr(args, "finetune_opts", ()))}

    def result_fields(self, result: dict) -> dict:
        """Fields the JSON gets at every save besides the summary (e.g. a bar). Default: with
        declared pretrainings, ``arm_pretraining``: each arm's pretrainings, their wall time, their
        training time without hooks (their records' ``train_s``) and the probe of the last one
        (first and last)."""
        if not self.pretrainings:
            return {}
        probes, table = probe_summary(result["pretraining"]), {}
        for arm in self.arms:
            chain = [k for k in self.pretraining_chain(arm) if k in result["pretraining"]]
            if chain:
                walls = [result["pretraining"][k].get("wall_s") for k in chain]
                trains = [result["pretraining"][k].get("train_s") for k in chain]
                table[arm] = {"pretrainings": chain, "wall_s": None if None in walls else round(sum(walls), 1),
                              "train_s": None if None in trains else round(sum(trains), 1),
                              "probe": probes.get(chain[-1])}
        return {"arm_pretraining": table}

    def columns(self, result: dict) -> Dict[str, Dict[str, str]]:
        """Extra table columns ({header: {arm: text}}): the probe and the pretraining time of each
        arm of ``arm_pretraining`` (training without hooks where the log says it, else wall)."""
        arms = result.get("arm_pretraining") or {}
        if not arms:
            return {}
        probe = {arm: f"{a['probe']['first']['knn_head']:.3f} -> {a['probe']['last']['knn_head']:.3f}"
                 for arm, a in arms.items() if a.get("probe")}
        times = {arm: a["train_s"] if a.get("train_s") is not None else a.get("wall_s") for arm, a in arms.items()}
        minutes = {arm: f"{t / 60:.1f}" for arm, t in times.items() if t is not None}
        return {"probe kNN": probe, "pretrain min": minutes}

    def report(self, result: dict, args, minutes: float) -> List[str]:
        """The lines printed after the table."""
        return ["", self.invocation_line(args, minutes)]

    def invocation_line(self, args, minutes: float) -> str:
        return f"This invocation: {minutes:.1f} min. JSON: {rel(args.out)}"

    def final_fields(self, result: dict) -> dict:
        """Fields the JSON gets once every run is done."""
        return {}

    # ----------------------------------------------------------------------------- main
    def main(self, argv=None) -> int:
        """Run the study: per dataset its data, its pretrainings, then every seed in every arm."""
        args = self.parse_args(argv)
        os.chdir(REPO_ROOT)  # train_net.py, configs and datasets/ are relative to the repo root
        run = StudyRun(self, args, argv)
        result = run.result
        for dataset in self.dataset_names(args):
            self.prepare_data(dataset)
            weights = self.weights(run, dataset)
            for seed in args.seeds:  # arms interleaved: partial results stay paired
                for arm in args.arms:
                    result["runs"].append(self.finetune(args, dataset, arm, seed, weights))
                    run.save()
        run.save()
        final = self.final_fields(result)
        if final:
            result.update(final)
            write_json(args.out, result)
        print()
        print(self.format_table(result["summary"], args.arms, self.columns(result)))
        for line in self.report(result, args, run.minutes()):
            print(line)
        return 1 if any(r.get("failed") for r in result["runs"]) else 0
