"""Learning monitors: what tells, in the first hour of a multi-day run, that it is learning.

Written to Detectron2's EventStorage, hence to ``metrics.json``, TensorBoard and the console
line, at the period of Detectron2's writers (20 iterations):

- ``<method>/*`` from the model's ``monitors()`` (e.g. SoCo: mean cosine per view pair and the
  per-dimension std of the L2-normalised target projections, ~1/sqrt(D) when healthy, towards 0
  on collapse), by :class:`ModelMonitorHook`;
- ``update_ratio/<part>``: ||w_after - w_before|| / ||w_before|| of one optimizer step, per
  part of the network and per optimizer parameter group, by :class:`UpdateRatioHook`. It is
  what the optimizer (e.g. LARS with its trust ratio) actually applies: a trunk whose ratio
  stays near 1e-5 is not being trained, whatever its loss does;
- ``probe/*``: kNN and linear probe accuracy, effective rank and dead box-head units of the
  trunk's features of ground-truth boxes of a labelled dataset
  (:mod:`soco_d2.evaluation.probe`), before training, every
  ``TEST.PROBE.PERIOD`` iterations and at the end, by :class:`ProbeHook`.

The model side of the contract (both optional): ``model.monitors()`` returns the values of its
last training forward, ``model.probe_trunk()`` its detector trunk as a
:class:`soco_d2.evaluation.probe.BoxFeatureTrunk`.
"""
import json
import logging
import os
import time
from collections import defaultdict
from typing import Dict, List, Optional

import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..evaluation.probe import load_probe_images, probe_trunk
from ..utils.atomic_io import atomic_write_json

__all__ = ["ModelMonitorHook", "UpdateRatioHook", "ProbeHook", "param_part", "LOG_PERIOD"]

logger = logging.getLogger(__name__)

#: Period of Detectron2's default writers (DefaultTrainer.build_writers via PeriodicWriter).
LOG_PERIOD = 20


def _unwrap(model):
    return getattr(model, "module", model)


def _writes_now(trainer, period: int) -> bool:
    """Whether Detectron2's PeriodicWriter writes after this iteration (its rule)."""
    done = trainer.iter + 1
    return done % period == 0 or done == trainer.max_iter


class ModelMonitorHook(HookBase):
    """Every ``period`` iterations, put the model's ``monitors()`` (name -> scalar tensor or
    float, computed in its last training forward) into the event storage."""

    def __init__(self, period: int = LOG_PERIOD):
        self.period = max(1, int(period))

    def after_step(self):
        if not _writes_now(self.trainer, self.period):
            return
        model = _unwrap(self.trainer.model)
        monitors = getattr(model, "monitors", None)
        if monitors is None:
            return
        values = {k: float(v) for k, v in monitors().items()}
        if values:
            self.trainer.storage.put_scalars(**values, smoothing_hint=False)


def param_part(name: str) -> str:
    """The part of a detector-shaped model a parameter belongs to, for per-part monitors:
    ``backbone.bottom_up.*`` -> "bottom_up", other ``backbone.*`` -> "fpn" (Detectron2's FPN
    keeps its own convs there) when the backbone has a ``bottom_up``, ``roi_heads.*`` ->
    "box_head", otherwise the first name component. Momentum-target copies (``target.*``)
    have no gradient and never reach here."""
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 1:
        if parts[1] == "bottom_up":
            return "bottom_up"
        return "fpn" if parts[1].startswith("fpn_") else "backbone"
    if parts[0] == "roi_heads":
        return "box_head"
    return parts[0]


class UpdateRatioHook(HookBase):
    """||delta w|| / ||w|| of one optimizer step, per part and per optimizer group, every
    ``period`` iterations (a copy of the trainable weights is taken before that step only)."""

    def __init__(self, period: int = LOG_PERIOD):
        self.period = max(1, int(period))
        self._before: Optional[List[torch.Tensor]] = None


    def _params(self):
        model = _unwrap(self.trainer.model)
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def before_step(self):
        if _writes_now(self.trainer, self.period):
            self._before = [p.detach().clone() for _, p in self._params()]

    @torch.no_grad()
    def after_step(self):
        if self._before is None:
            return
        before, self._before = self._before, None
        params = self._params()
        group_of = {}
        for g, group in enumerate(self.trainer.optimizer.param_groups):
            label = group.get("name") or _group_label(group, g)
            for p in group["params"]:
                group_of[id(p)] = label
        num = defaultdict(float)
        den = defaultdict(float)
        for (name, p), old in zip(params, before):
            d2 = float((p.detach() - old).float().pow(2).sum())
            w2 = float(old.float().pow(2).sum())
            for key in (param_part(name), f"group_{group_of.get(id(p), 'none')}"):
                num[key] += d2
                den[key] += w2
        values: Dict[str, float] = {
            f"update_ratio/{k}": (num[k] / den[k]) ** 0.5 for k in num if den[k] > 0
        }
        self.trainer.storage.put_scalars(**values, smoothing_hint=False)


def _group_label(group: dict, index: int) -> str:
    if "lars" in group:
        return "lars" if group["lars"] else "no_lars"
    return "decay" if group.get("weight_decay", 0) else f"{index}_no_decay"


def _probe_scalars(prefix: str, result: dict) -> Dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in result.items()
            if k.startswith(("knn_", "linear_", "erank_", "dead_"))}


class ProbeHook(HookBase):
    """The probe (:mod:`soco_d2.evaluation.probe`) of the model's trunk, like Detectron2's
    EvalHook: before the first step (the initialisation), every ``period`` iterations
    (0: only before and after) and after the last one, on the main process while the others
    wait. Results go to the event storage as ``probe/<measure>_<features>`` (accuracies, effective
    rank, dead units) and to the log.

    Args:
        dataset_name: a registered labelled detection set (COCO format).
        period: iterations between probes; 0 for only the first and last.
        image_format: the model's INPUT.FORMAT.
        min_size, max_size: test-time resize of the probe images (0: as stored).
        max_images: use the first ``max_images`` images with boxes (0: all).
        output_dir: where ``probe.json`` (every probe of the run, with its iteration) goes.
        stored_bn: also probe with the trunk's stored BatchNorm statistics (no re-estimation
            on the probe images), as ``probe_stored_bn/*``: a gain must not depend on one way
            of probing.
    """

    def __init__(self, dataset_name: str, period: int, image_format: str, min_size: int = 0,
                 max_size: int = 0, max_images: int = 0, output_dir: str = "",
                 stored_bn: bool = False):
        self.dataset_name = dataset_name
        self.path = os.path.join(output_dir, "probe.json") if output_dir else ""
        self.history: List[dict] = []
        self.period = int(period)
        self.image_format, self.min_size, self.max_size = image_format, min_size, max_size
        self.max_images = int(max_images)
        self.stored_bn = bool(stored_bn)
        self._images = None

    def _probe(self, when: str) -> None:
        if comm.is_main_process():
            if self._images is None:
                records = DatasetCatalog.get(self.dataset_name)
                if self.max_images > 0:
                    records = records[: self.max_images]
                self._images = load_probe_images(records, self.image_format, self.min_size, self.max_size)
            model = getattr(self.trainer.model, "module", self.trainer.model)
            start = time.perf_counter()
            result = probe_trunk(model.probe_trunk(), self._images)
            scalars = _probe_scalars("probe", result)
            entry = {"iteration": self.trainer.iter, "when": when, **result}
            if self.stored_bn:
                entry["stored_bn"] = probe_trunk(model.probe_trunk(), self._images, reestimate=False)
                scalars.update(_probe_scalars("probe_stored_bn", entry["stored_bn"]))
            self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
            # Every probe also goes to OUTPUT_DIR/probe.json: metrics.json keeps only the
            # latest value of a key between two writes of the event writers.
            self.history.append(entry)
            if self.path:
                atomic_write_json(self.path, {"dataset": self.dataset_name, "probes": self.history}, indent=1)
            logger.info(
                f"Probe of the trunk ({when}, iteration {self.trainer.iter}) on "
                f"{self.dataset_name}: {result['num_boxes']} boxes of {result['num_images']} "
                f"images, {result['num_classes']} classes, {time.perf_counter() - start:.0f} s: "
                + ", ".join(f"{k} {v:.3f}" for k, v in scalars.items())
            )
        comm.synchronize()

    def before_train(self):
        if self.trainer.iter > 0:
            self._keep_earlier_probes()
        self._probe("initialisation" if self.trainer.iter == 0 else "resumed")

    def _keep_earlier_probes(self) -> None:
        """A resumed run keeps the probes its folder's probe.json has from before the resumed
        iteration (same probe set), so the file stays the whole run's curve."""
        if not self.path or not os.path.isfile(self.path):
            return
        try:
            with open(self.path) as f:
                earlier = json.load(f)
        except (OSError, ValueError) as e:
            logger.warning(f"Resumed run: {self.path} is unreadable ({e}); its earlier probes are not kept")
            return
        if earlier.get("dataset") != self.dataset_name:
            logger.warning(f"Resumed run: {self.path} probed {earlier.get('dataset')!r}, this run probes "
                           f"{self.dataset_name!r}; its earlier probes are not kept")
            return
        self.history = [p for p in earlier.get("probes", []) if p.get("iteration", 0) < self.trainer.iter]

    def after_step(self):
        # In after_step (like EvalHook), so the PeriodicWriter after this hook writes the
        # results of the last iteration too.
        done = self.trainer.iter + 1
        if done >= self.trainer.max_iter:
            self._probe("final")
        elif self.period > 0 and done % self.period == 0:
            self._probe("periodic")
