"""Label-free Montage (ours, beyond the paper): pseudo-classes of selective-search proposals.

How it works, exactly:

1. **Samples.** Each training record offers its first P proposals (INPUT.MONTAGE.PROPOSALS_PER_IMAGE,
   highest objectness; the whole image when it has none), see ``samples.py``. Box b of record i
   has the row ``offsets[i] + b`` in the pseudo-label table.
2. **Features.** Every such box is embedded by a box-feature trunk
   (:class:`soco_d2.evaluation.probe.BoxFeatureTrunk`, in eval mode, images at their stored size):
   with PSEUDO.FEATURES "model", the Montage backbone being trained (RoIAlign 7 x 7 on res5,
   averaged: :meth:`Montage.probe_trunk`), which starts from MODEL.WEIGHTS (e.g. a SoCo
   trunk, read by name); with "trunk", a frozen trunk built from PSEUDO.TRUNK_CONFIG and loaded
   from PSEUDO.TRUNK_WEIGHTS (for a SoCo config: its backbone, FPN, RoIAlign with Detectron2's
   level rule and 4conv1fc box head, the ``head`` output, as the probe uses). Features are
   L2-normalised.
3. **k-means.** Spherical k-means (cosine similarity, Lloyd iterations, PSEUDO.KMEANS_ITERS or
   until no box changes cluster) with k = MODEL.MONTAGE.NUM_CLASSES, k-means++ initialisation
   (:func:`soco_d2.modeling.kmeans.kmeans`, shared with SimDETR's pseudo-classes).
   It is fitted on at most PSEUDO.FIT_SAMPLES boxes (a random subset), then every box is
   assigned to its nearest centroid. An emptied cluster is restarted at the fitted box least
   similar to its centroid.
4. **Refresh.** The table is computed before the first iteration and again before iteration
   t whenever t is a multiple of PSEUDO.REFRESH_PERIOD (> 0; FEATURES "model" only, since a
   frozen trunk gives the same features every time). After a refresh the new cluster ids are
   matched to the old ones (greedy: the pair of old and new clusters sharing the most boxes
   first), so a class keeps its classifier output; ``pseudo/changed`` logs the share of boxes
   whose class changed.
5. **Determinism.** Subset and initialisation come from ``(data seed, refresh iteration)``
   only; the table (with the centroids and the iteration it was made at) is part of the
   trainer's checkpoint, so ``--resume`` continues with the same classes. With several
   processes each embeds its share of the records, the main process fits k-means and every
   process receives the centroids and the whole table.

The model reads a box's class from the table by the ``refs`` the mapper outputs
(:meth:`Montage.set_pseudo_labels`); background crops keep the background class.
"""
import logging
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.engine import HookBase
from detectron2.utils import comm

from ...data.decode import ImageReadError, decode_image
from ...evaluation.probe import BoxFeatureTrunk
from ...modeling.kmeans import distributed_kmeans, kmeans, match_clusters
from .samples import piece_boxes

__all__ = [
    "kmeans", "match_clusters", "table_offsets", "embed_boxes", "compute_pseudo_labels",
    "PseudoLabelHook", "build_frozen_trunk",
]

logger = logging.getLogger(__name__)

# Domain tag of the k-means seeds, so they are independent of the sample stream's.
_KMEANS = 0x5EED0011


def table_offsets(records: Sequence[dict]) -> torch.Tensor:
    """(len(records) + 1,) int64: where each record's boxes start in the pseudo-label table."""
    counts = torch.tensor([len(r["boxes"]) for r in records], dtype=torch.int64)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])


# ----------------------------------------------------------------------------- features
def _load_image(path: str, image_format: str) -> Optional[np.ndarray]:
    try:
        with open(path, "rb") as f:
            img = decode_image(f.read())
    except (OSError, ImageReadError) as e:
        logger.warning(f"Pseudo-labels: cannot read {path} ({e}); its boxes get class 0")
        return None
    return img[:, :, ::-1] if image_format == "RGB" else img


@torch.no_grad()
def embed_boxes(trunk: BoxFeatureTrunk, records: Sequence[dict], image_format: str,
                batch_size: int = 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features of every box of ``records`` (sample records), in table order.

    The trunk runs in eval mode; every module's train/eval mode is restored afterwards (the
    "model" trunk shares the modules being trained).

    Returns:
        (features (M, D) float32 on the CPU, valid (M,) bool: False for unreadable images).
    """
    modes = [(m, m.training) for m in trunk.modules()]
    trunk.eval()
    per_record: List = []  # (n, D) features, or the box count n of an unreadable image
    try:
        for start in range(0, len(records), batch_size):
            images, boxes, readable = [], [], []
            for r in records[start:start + batch_size]:
                img = _load_image(r["file_name"], image_format)
                readable.append(img is not None)
                if img is not None:
                    clipped, _ = piece_boxes(r, img.shape[1], img.shape[0])
                    images.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
                    boxes.append(torch.from_numpy(clipped))
            if images:
                out = trunk(images, boxes)
                chunks = iter(F.normalize(out.get("head", out["pooled"]).float(), dim=1).cpu()
                              .split([len(b) for b in boxes]))
            for r, ok in zip(records[start:start + batch_size], readable):
                per_record.append(next(chunks) if ok else len(r["boxes"]))
    finally:
        for m, mode in modes:
            m.train(mode)
    dim = next((t.shape[1] for t in per_record if torch.is_tensor(t)), 1)
    feats = [t if torch.is_tensor(t) else torch.zeros(t, dim) for t in per_record]
    valid = [torch.full((len(t),), torch.is_tensor(p), dtype=torch.bool) for t, p in zip(feats, per_record)]
    if not feats:
        return torch.zeros(0, dim), torch.zeros(0, dtype=torch.bool)
    return torch.cat(feats), torch.cat(valid)


def compute_pseudo_labels(trunk: BoxFeatureTrunk, records: Sequence[dict], image_format: str, *,
                          k: int, iters: int, fit_samples: int, seed: int, iteration: int,
                          batch_size: int = 16, previous: Optional[torch.Tensor] = None) -> dict:
    """The pseudo-label table of ``records`` (module docstring, steps 2-5).

    Returns:
        ``{"labels": (M,) int64, "offsets": (len(records)+1,) int64, "centroids": (k, D),
        "iteration": iteration, "changed": share of boxes whose class changed (or -1),
        "cluster_sizes": (k,) int64}``.
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    offsets = table_offsets(records)
    mine = list(range(rank, len(records), world))
    feats, valid = embed_boxes(trunk, [records[i] for i in mine], image_format, batch_size)
    rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in mine]) if mine else \
        torch.zeros(0, dtype=torch.int64)
    total = int(offsets[-1])

    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([_KMEANS, seed, iteration]).generate_state(1)[0]))
    centroids, labels = distributed_kmeans(feats, rows, total, k=k, iters=iters, fit_samples=fit_samples,
                                           generator=generator, valid=valid)
    changed = -1.0
    if previous is not None and len(previous) == total:
        perm = match_clusters(labels, previous, k)
        labels, centroids = perm[labels], centroids[torch.argsort(perm)]
        changed = float((labels != previous).float().mean())
    return {"labels": labels, "offsets": offsets, "centroids": centroids, "iteration": int(iteration),
            "changed": changed, "cluster_sizes": torch.bincount(labels, minlength=k)}


# ----------------------------------------------------------------------------- the hook
def build_frozen_trunk(config_file: str, weights: str, device: str) -> BoxFeatureTrunk:
    """The box-feature trunk of a pretrained model: built from ``config_file`` (any config
    ``train_net.py`` reads: a pretraining method's, whose model has ``probe_trunk()``, or a
    detector's) and loaded from ``weights`` (e.g. a SoCo ``model_final_trunk.pth``)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from .. import add_config
    from ...config import load_config
    from ...evaluation.probe import trunk_from_detector

    cfg = get_cfg()
    add_config(cfg)
    load_config(cfg, config_file)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval().requires_grad_(False)
    return model.probe_trunk() if hasattr(model, "probe_trunk") else trunk_from_detector(model)


class PseudoLabelHook(HookBase):
    """Computes and refreshes the label-free table and hands it to the model (module docstring).

    Args:
        records: the sample records the loader maps.
        trunk_fn: ``model -> BoxFeatureTrunk`` whose features are clustered (called at each
            refresh with the unwrapped model).
        k, iters, fit_samples, batch_size: k-means and extraction settings.
        period: iterations between refreshes; 0: once, before training.
        image_format: INPUT.FORMAT.
    """

    def __init__(self, records: Sequence[dict], trunk_fn: Callable, *, k: int, iters: int,
                 fit_samples: int, batch_size: int, period: int, image_format: str):
        self.records = records
        self.trunk_fn = trunk_fn
        self.settings = dict(k=k, iters=iters, fit_samples=fit_samples, batch_size=batch_size)
        self.period = int(period)
        self.image_format = image_format
        self.table: Optional[dict] = None

    def _model(self):
        return getattr(self.trainer.model, "module", self.trainer.model)

    def _refresh(self, iteration: int) -> None:
        start = time.perf_counter()
        previous = None if self.table is None else self.table["labels"]
        self.table = compute_pseudo_labels(
            self.trunk_fn(self._model()), self.records, self.image_format,
            seed=self.trainer.data_stream.seed, iteration=iteration, previous=previous,
            **self.settings,
        )
        sizes = self.table["cluster_sizes"].float()
        scalars = {"pseudo/largest_cluster": float(sizes.max() / sizes.sum()),
                   "pseudo/empty_clusters": float((sizes == 0).sum())}
        if self.table["changed"] >= 0:
            scalars["pseudo/changed"] = self.table["changed"]
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)
        logger.info(
            f"Pseudo-labels at iteration {iteration}: {len(self.table['labels'])} boxes of "
            f"{len(self.records)} images in {self.settings['k']} clusters "
            f"(largest {scalars['pseudo/largest_cluster']:.1%}"
            + (f", {self.table['changed']:.1%} changed" if self.table["changed"] >= 0 else "")
            + f"), {time.perf_counter() - start:.0f} s"
        )
        self._push()

    def _push(self) -> None:
        self._model().set_pseudo_labels(self.table["labels"], self.table["offsets"])

    def before_train(self):
        if self.table is None:  # a fresh run, or a checkpoint without a table
            self._refresh(self.trainer.iter)
        else:
            self._push()

    def before_step(self):
        it = self.trainer.iter
        if self.period > 0 and it > 0 and it % self.period == 0 and self.table["iteration"] != it:
            self._refresh(it)

    def state_dict(self):
        if self.table is None:
            return {}
        return {k: v for k, v in self.table.items() if k in ("labels", "offsets", "centroids", "iteration")}

    def load_state_dict(self, state_dict):
        if state_dict:
            self.table = dict(state_dict, changed=-1.0,
                              cluster_sizes=torch.bincount(state_dict["labels"], minlength=self.settings["k"]))
