"""SimDETR's self-training rounds: the detector's own confident detections become the next
round's pseudo-labels. Detector-agnostic: detections come from Detectron2's inference interface
(``model([{"image", "height", "width"}]) -> [{"instances"}]``), which every Detectron2
meta-architecture (R-CNN, RetinaNet, DETR ports) implements, and features from the model's
``feature_extractor()`` (a ResNet map, :mod:`.pseudo_labels`).

After round r - 1, before the first iteration of round r (iteration r x the round's length):

1. **Detections.** Every image of the previous round's pseudo-labels at the test size
   (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST), the model in eval mode (restored afterwards), its
   ``instances``: boxes in original pixels, scores, classes.
2. **Selection.** Detections with score >= ``score_thresh``, then class-agnostic NMS at IoU
   ``nms_thresh`` (highest score first), then the ``max_boxes`` best. An image left with none
   keeps its boxes, classes and scores of the previous round (counted as ``fallback``).
3. **Classes.** ``classes`` "keep": the detector's predicted class (the K classes it was trained
   on). "recluster": a new spherical k-means of the new boxes' features (seeded by
   ``(data seed, r)``), its cluster ids matched to the previous round's classes through the boxes
   they share (each new box paired with its best-overlapping previous box, IoU >= 0.5; greedy
   :func:`~soco_d2.modeling.kmeans.match_clusters`), so that a class keeps its classifier row.
4. **Change** (:func:`label_changes`, logged and in metrics.json as ``simdetr/*``):
   ``boxes_per_image``; ``mean_best_iou``, the mean over new boxes of their best IoU with a
   previous box of the same image; ``previous_recall``, the share of previous boxes that a new
   box overlaps at IoU >= 0.5; ``class_changed``, among new boxes so paired with a previous box,
   the share whose class differs; ``fallback_images``.

Every round's file is kept: ``OUTPUT_DIR/pseudo_labels/round_{r}.json``, with the history of
these figures in ``rounds.json``. :class:`SelfTrainingHook` carries the round, its file (relative
to OUTPUT_DIR, so a moved run folder still resumes) and the file's SHA-256 in the trainer's
checkpoint, so ``--resume`` mid-round trains on the same file
(and refuses one that changed or went missing), and a resume at a round boundary makes the
next round's labels from the same weights as the uninterrupted run would.
"""
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.engine import HookBase
from detectron2.layers import nms
from detectron2.utils import comm

from ...data.proposals.selective_search import pairwise_iou
from ...modeling.kmeans import match_clusters
from ...utils.atomic_io import atomic_write_bytes
from .pseudo_labels import (
    PseudoLabels, _gather_share, cluster_boxes, embed_share, initial_pseudo_labels, read_pseudo_labels,
    read_share, write_pseudo_labels,
)

__all__ = [
    "SelfTrainingSettings", "detect_share", "select_detections", "next_round_labels", "match_to_previous",
    "label_changes", "SelfTrainingHook", "round_file",
]

logger = logging.getLogger(__name__)

#: IoU at which a new box is "the same box" as a previous one (class_changed, previous_recall).
SAME_BOX_IOU = 0.5


@dataclass(frozen=True)
class SelfTrainingSettings:
    """MODEL.SIMDETR's and INPUT's values the rounds use (``config.py``)."""

    num_classes: int
    max_boxes: int
    score_thresh: float
    nms_thresh: float
    classes: str                  # "keep" / "recluster"
    kmeans_iters: int
    fit_samples: int
    batch_size: int
    min_size_test: int
    max_size_test: int
    image_format: str


def round_file(output_dir: str, r: int) -> str:
    return os.path.join(output_dir, "pseudo_labels", f"round_{r}.json")


# ----------------------------------------------------------------------------- detections
@torch.no_grad()
def detect_share(model, files: Sequence[str], settings: SelfTrainingSettings) -> List[Optional[tuple]]:
    """Step 1 on this process's share of ``files`` (i % world == rank): per file ``(boxes (N, 4)
    float32, scores (N,), classes (N,) int64)`` or None when it cannot be read."""
    resize = ResizeShortestEdge(settings.min_size_test, settings.max_size_test)
    out, inputs, slots = [], [], []

    def flush():
        for slot, result in zip(slots, model(inputs) if inputs else []):
            inst = result["instances"].to("cpu")
            out[slot] = (inst.pred_boxes.tensor.numpy().astype(np.float32), inst.scores.numpy().astype(np.float32),
                         inst.pred_classes.numpy().astype(np.int64))
        inputs.clear()
        slots.clear()

    for _, img in read_share(files, "it keeps its boxes", task="SimDETR: detections for the next round"):
        out.append(None)
        if img is None:
            continue
        height, width = img.shape[:2]
        if settings.image_format == "RGB":
            img = img[:, :, ::-1]
        img = resize.get_transform(img).apply_image(img)
        inputs.append({"image": torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1))),
                       "height": height, "width": width})
        slots.append(len(out) - 1)
        if len(inputs) == settings.batch_size:
            flush()
    flush()
    return out


def select_detections(boxes: np.ndarray, scores: np.ndarray, score_thresh: float, nms_thresh: float,
                      max_boxes: int) -> np.ndarray:
    """Step 2: indices (best score first) of the detections kept."""
    idx = np.flatnonzero(np.asarray(scores) >= score_thresh)
    if not len(idx):
        return idx
    keep = nms(torch.as_tensor(boxes[idx], dtype=torch.float32), torch.as_tensor(scores[idx], dtype=torch.float32),
               nms_thresh).numpy()  # sorted by decreasing score
    return idx[keep[:max_boxes]]


def next_round_labels(previous: PseudoLabels, detections: Sequence[Optional[tuple]],
                      settings: SelfTrainingSettings) -> Tuple[PseudoLabels, np.ndarray]:
    """Steps 2 and 3 ("keep"): the next round's labels from the detections of each image of
    ``previous`` (None: unreadable), and the images that kept their previous boxes (bool)."""
    boxes, classes, scores, fallback = [], [], [], []
    for i, det in enumerate(detections):
        keep = np.zeros(0, np.int64) if det is None else select_detections(
            det[0], det[1], settings.score_thresh, settings.nms_thresh, settings.max_boxes)
        if len(keep):
            boxes.append(det[0][keep])
            scores.append(det[1][keep])
            classes.append(det[2][keep])
        else:
            boxes.append(previous.boxes[i])
            scores.append(previous.scores[i])
            classes.append(previous.classes[i])
        fallback.append(not len(keep))
    info = {"how": f"detections of round {previous.round} (score >= {settings.score_thresh}, class-agnostic "
                   f"NMS {settings.nms_thresh}, at most {settings.max_boxes}), classes {settings.classes}"}
    labels = PseudoLabels(previous.num_classes, previous.round + 1, list(previous.images), boxes, classes,
                          scores, info)
    return labels, np.array(fallback, dtype=bool)


def _pairs(previous: PseudoLabels, new: PseudoLabels):
    """Per image: (best IoU of each new box with a previous box, its index; best IoU of each
    previous box with a new box)."""
    for old_b, new_b in zip(previous.boxes, new.boxes):
        if not len(old_b) or not len(new_b):
            yield np.zeros(len(new_b)), np.zeros(len(new_b), np.int64), np.zeros(len(old_b))
            continue
        iou = pairwise_iou(np.asarray(new_b, np.float64), np.asarray(old_b, np.float64))
        yield iou.max(axis=1), iou.argmax(axis=1), iou.max(axis=0)


def match_to_previous(previous: PseudoLabels, new: PseudoLabels) -> np.ndarray:
    """Step 3 ("recluster"): a permutation (K,) of ``new``'s cluster ids onto ``previous``'s
    classes, through the pairs of a new box and its best-overlapping previous box (IoU >= 0.5)."""
    new_ids, old_ids = [], []
    for (best, arg, _), old_c, new_c in zip(_pairs(previous, new), previous.classes, new.classes):
        same = best >= SAME_BOX_IOU
        new_ids.append(new_c[same])
        old_ids.append(old_c[arg[same]])
    perm = match_clusters(torch.as_tensor(np.concatenate(new_ids), dtype=torch.int64),
                          torch.as_tensor(np.concatenate(old_ids), dtype=torch.int64), new.num_classes)
    return perm.numpy()


def label_changes(previous: PseudoLabels, new: PseudoLabels) -> Dict[str, float]:
    """Step 4: how much the labels changed from ``previous`` to ``new`` (module docstring)."""
    best_all, recall_all, changed, paired = [], [], 0, 0
    for (best, arg, back), old_c, new_c in zip(_pairs(previous, new), previous.classes, new.classes):
        best_all.append(best)
        recall_all.append(back >= SAME_BOX_IOU)
        same = best >= SAME_BOX_IOU
        paired += int(same.sum())
        changed += int((new_c[same] != old_c[arg[same]]).sum())
    best_all, recall_all = np.concatenate(best_all), np.concatenate(recall_all)
    return {"boxes": float(new.num_boxes), "boxes_per_image": new.num_boxes / max(len(new.images), 1),
            "mean_best_iou": float(best_all.mean()) if len(best_all) else 0.0,
            "previous_recall": float(recall_all.mean()) if len(recall_all) else 0.0,
            "class_changed": changed / paired if paired else 0.0}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------- the hook
class SelfTrainingHook(HookBase):
    """Makes each round's pseudo-labels and hands them to the trainer (module docstring).

    The trainer provides ``use_pseudo_labels(path)`` (train on that json from the current
    iteration on) and ``data_stream`` (its seed seeds the k-means); the model (unwrapped)
    provides ``feature_extractor()``.

    Args:
        records: the pretraining records of DATASETS.TRAIN (round 0's images and proposals).
        settings: :class:`SelfTrainingSettings`.
        rounds, round_iters: R and the iterations of one round.
        output_dir: where ``pseudo_labels/`` goes.
        initial_file: a round-0 json to use instead of computing it ("").
    """

    def __init__(self, records: Sequence[dict], settings: SelfTrainingSettings, *, rounds: int,
                 round_iters: int, output_dir: str, initial_file: str = ""):
        self.records = records
        self.settings = settings
        self.rounds, self.round_iters = int(rounds), int(round_iters)
        self.output_dir = output_dir
        self.initial_file = initial_file
        self.state: Optional[dict] = None  # {"round", "file", "sha256", "history"}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        return getattr(self.trainer.model, "module", self.trainer.model)

    def _labelling(self, fn: Callable):
        """Run ``fn(model)`` with the model in eval mode, its modes restored afterwards."""
        model = self._model()
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            return fn(model)
        finally:
            for m, mode in modes:
                m.train(mode)

    def _publish(self, r: int, labels: PseudoLabels, stats: Dict[str, float], seconds: float,
                 source: str = "") -> None:
        """Write round ``r``'s file (``source``'s bytes when given), record it, train on it."""
        path = round_file(self.output_dir, r)
        if comm.is_main_process():
            if source:
                with open(source, "rb") as f:
                    atomic_write_bytes(path, f.read())
            else:
                write_pseudo_labels(labels, path)
        comm.synchronize()
        # The file relative to OUTPUT_DIR: a run folder that moves keeps resuming.
        name = os.path.relpath(path, self.output_dir)
        history = (self.state or {}).get("history", []) + [dict(stats, round=r, file=name)]
        self.state = {"round": r, "file": name, "sha256": _sha256(path), "history": history}
        if comm.is_main_process():
            atomic_write_bytes(os.path.join(self.output_dir, "pseudo_labels", "rounds.json"),
                               (json.dumps(history, indent=1) + "\n").encode())
        self.trainer.storage.put_scalars(**{f"simdetr/{k}": float(v) for k, v in stats.items()},
                                         **{"simdetr/round": float(r)}, smoothing_hint=False)
        shown = ", ".join(f"{k} {v:.3g}" for k, v in stats.items())
        logger.info(f"SimDETR round {r}: {labels.num_boxes} pseudo-boxes on {len(labels.images)} images in "
                    f"{labels.num_classes} classes ({shown}); {seconds:.0f} s; {path}")
        self._use(r, path)

    def _use(self, r: int, path: str) -> None:
        model = self._model()
        if hasattr(model, "simdetr_round"):  # the round the model trains, in its checkpoints
            model.simdetr_round.fill_(r)
        self.trainer.use_pseudo_labels(path)

    # ------------------------------------------------------------------ rounds
    def _round0(self) -> None:
        start = time.perf_counter()
        s = self.settings
        if self.initial_file:
            labels = read_pseudo_labels(self.initial_file)
            if labels.num_classes != s.num_classes:
                raise ValueError(f"MODEL.SIMDETR.PSEUDO_LABELS {self.initial_file} has {labels.num_classes} "
                                 f"pseudo-classes, MODEL.ROI_HEADS.NUM_CLASSES is {s.num_classes}")
            if labels.round != 0:
                raise ValueError(f"MODEL.SIMDETR.PSEUDO_LABELS {self.initial_file} holds the labels of round "
                                 f"{labels.round}, not round 0")
        else:
            labels = self._labelling(lambda model: initial_pseudo_labels(
                model.feature_extractor(), self.records, k=s.num_classes, max_boxes=s.max_boxes,
                iters=s.kmeans_iters, fit_samples=s.fit_samples, seed=self.trainer.data_stream.seed))
            for path in labels.info["skipped"][:20]:
                logger.warning(f"SimDETR round 0: left out {path} (unreadable)")
        stats = {"boxes": float(labels.num_boxes), "boxes_per_image": labels.num_boxes / max(len(labels.images), 1)}
        self._publish(0, labels, stats, time.perf_counter() - start, source=self.initial_file)
        self.records = ()  # only round 0 reads the proposal records

    def _next_round(self, r: int) -> None:
        start = time.perf_counter()
        s = self.settings
        previous = read_pseudo_labels(os.path.join(self.output_dir, self.state["file"]))
        files = [im["file_name"] for im in previous.images]
        detections = _gather_share(self._labelling(lambda model: detect_share(model, files, s)), len(files))
        labels, fallback = next_round_labels(previous, detections, s)
        if s.classes == "recluster":
            boxes = labels.boxes
            mine = self._labelling(lambda model: embed_share(model.feature_extractor(), files,
                                                             lambda i, w, h: boxes[i]))
            clusters = cluster_boxes(mine, _gather_share(mine, len(files)), k=s.num_classes, iters=s.kmeans_iters,
                                     fit_samples=s.fit_samples, seed=self.trainer.data_stream.seed, round_index=r)
            labels.classes = [c if len(c) == len(b) else np.zeros(len(b), np.int64) for c, b in zip(clusters, boxes)]
            perm = match_to_previous(previous, labels)
            labels.classes = [perm[c] for c in labels.classes]
        stats = dict(label_changes(previous, labels), fallback_images=float(fallback.sum()))
        self._publish(r, labels, stats, time.perf_counter() - start)

    # ------------------------------------------------------------------ hook
    def before_train(self):
        if self.state is None:  # a fresh run
            self._round0()
            return
        path, r = os.path.join(self.output_dir, self.state["file"]), self.state["round"]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Cannot resume SimDETR round {r}: its pseudo-label file {path} is missing")
        if _sha256(path) != self.state["sha256"]:
            raise ValueError(f"Cannot resume SimDETR round {r}: {path} is not the file the checkpoint trained on "
                             "(its SHA-256 differs); restore it, or start a new run")
        logger.info(f"SimDETR: resuming round {r} at iteration {self.trainer.iter} on {path}")
        self._use(r, path)

    def before_step(self):
        r = self.trainer.iter // self.round_iters
        if self.state["round"] < r < self.rounds:
            self._next_round(r)

    def state_dict(self):
        return dict(self.state) if self.state else {}

    def load_state_dict(self, state_dict):
        if state_dict:
            self.state = dict(state_dict)
