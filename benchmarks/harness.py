"""The benchmark harness every method's transfer study shares (``benchmarks/transfer.py`` is
SoCo's).

- Every step is ``train_net.py`` run as a subprocess, exactly what a user runs
  (:func:`train_net_cmd`, :func:`run_logged`); records keep each command.
- Resumable results: :func:`run_pretraining` and :func:`run_finetuning` reuse a run whose
  output folder holds its result (a result file, or Detectron2's final evaluation in
  ``metrics.json``), continue an interrupted one from its last checkpoint (``--resume``), and
  refuse a folder made with other settings (:func:`check_same`). Checkpoints that are no longer
  needed are deleted unless asked to keep them.
- Reading runs back: ``metrics.json`` (:func:`final_evaluation`, :func:`final_metric`,
  :func:`iterations_run`), ``config.yaml`` and the trunk keys the detector did not load
  (:func:`missing_trunk_keys`).
- Statistics over seeds: :func:`summarize` (mean and sample std per dataset and arm, paired
  differences against the first arm) and :func:`format_table`; :func:`environment` records the
  machine.

Arms are ``{key: name}``, e.g. ``{"random": "random", "soco": "SoCo"}``; the first is the
baseline that the others are paired with by seed. A run with no detection at all, which
Detectron2 reports as NaN AP, counts as 0 AP in the summary (flagged in the record and table).
"""
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
TRAIN_NET = "train_net.py"
RESULT_FILE = "bench_result.json"
PRETRAIN_RESULT_FILE = "bench_pretrain.json"
TRUNK_FILE = "model_final_trunk.pth"


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


def run_pretraining(tag: str, labels: dict, config_file: str, opts, output_dir: str,
                    keep_checkpoints: bool) -> dict:
    """Pretraining with train_net.py, reused or resumed; returns its record (trunk path etc.).

    Args:
        tag: names the run in the log, e.g. ``"[synthetic]"``.
        labels: first fields of the record, e.g. ``{"dataset": name}``.
    """
    planned = train_net_cmd(config_file, opts)[1:]  # without the interpreter
    done = read_json(os.path.join(output_dir, PRETRAIN_RESULT_FILE))
    trunk = os.path.join(output_dir, TRUNK_FILE)
    if done is not None and os.path.isfile(trunk):
        check_same(done["command"][1:], planned, output_dir)
        log(f"{tag} pretraining reused: {rel(trunk)}")
        drop_intermediate_checkpoints(output_dir, keep_checkpoints)
        return dict(done, max_iter=iterations_run(output_dir), reused=True)

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
        "wall_s": round(wall, 1),
        "resumed": resume,
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


def format_table(summary, arms: dict) -> str:
    """The :func:`summarize` result as a text table: one row per dataset and arm (``<name>
    init``), then one per paired difference (``<name> - <baseline name> (paired)``)."""
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
    head = f"{'dataset':<12} {'init':<{w}} {'n':>2}  {'box AP':>15}  {'mask AP':>15}  {'box AP50':>15}  {'min/run':>7}"
    lines = [head, "-" * len(head)]
    for name, entry in summary.items():
        for arm, label in arms.items():
            it = entry[arm]
            wall = "-" if it["wall_s_mean"] is None else f"{it['wall_s_mean'] / 60:.1f}"
            flag = f" ({it['no_detection_runs']} no-det)" if it["no_detection_runs"] else ""
            lines.append(
                f"{name:<12} {label + ' init' + flag:<{w}} {it['n']:>2}  {ms(it['bbox_AP']):>15}  "
                f"{ms(it['segm_AP']):>15}  {ms(it['bbox_AP50']):>15}  {wall:>7}"
            )
        for arm, label in list(arms.items())[1:]:
            d = entry[f"delta_{arm}_minus_{baseline}"]
            lines.append(
                f"{name:<12} {f'{label} - {arms[baseline]} (paired)':<{w}} {d['n']:>2}  "
                f"{delta(d['bbox_AP']):>15}  {delta(d['segm_AP']):>15}"
            )
    lines.append("COCO AP in percent on the val split; mean ± sample std over fine-tuning seeds.")
    return "\n".join(lines)


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
