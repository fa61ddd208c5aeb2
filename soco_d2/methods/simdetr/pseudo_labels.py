"""SimDETR's pseudo-labels: boxes with K pseudo-classes, their COCO json, and how they are made
for round 0. Detector-agnostic: what is clustered is a ResNet feature map
(:class:`~soco_d2.data.proposals.semantic.FeatureMapExtractor`), which any detector with a ResNet
provides, and the file is a plain COCO instances json.

Round 0, exactly:

1. **Boxes.** Each training image's first ``max_boxes`` proposals (the records of DATASETS.TRAIN,
   highest objectness first: semantic proposals or selective search), clipped to the image,
   empty ones dropped; an image without any gets the whole image as its one box. Images that
   cannot be read are left out (named in the log).
2. **Features.** The image through the ResNet at the detector's test size (INPUT.MIN_SIZE_TEST /
   MAX_SIZE_TEST), every box RoIAligned (7 x 7, aligned) from the ``feature`` map and averaged,
   then L2-normalised. At round 0 the detector's ResNet is the one it starts from (MODEL.WEIGHTS,
   e.g. a SoCo trunk), so these are the self-supervised backbone's features.
3. **k-means.** Spherical k-means (:func:`soco_d2.modeling.kmeans.distributed_kmeans`, the
   project's one implementation: label-free Montage clusters with it too), k = K, fitted on at
   most ``fit_samples`` boxes, then every box gets its nearest centroid's id. Seeded by
   ``(data seed, round)``.

The json (:func:`write_pseudo_labels`): ``images`` (ids 1..N, absolute ``file_name``, ``width``,
``height``, and the source set's id as ``source_id``), ``annotations`` (``bbox`` XYWH,
``category_id`` = pseudo-class + 1, ``score``: 1 for a proposal, the detection score for a
self-training box) and ``categories`` ``pseudo_0`` ... ``pseudo_{K-1}``; ``info`` says the round and
how the labels were made. :func:`register_pseudo_labels` registers it with Detectron2's own
``register_coco_instances``, so ``DatasetCatalog.get`` and ``DatasetMapper`` read it as any
labelled COCO set.

Shape shorthand: B_i boxes of image i, M boxes of all images, C channels of the feature.
"""
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.layers import ROIAlign
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds

from ...data.decode import ImageReadError, decode_image
from ...data.mapper_base import read_file_bytes, record_proposals
from ...data.proposals.semantic import FeatureMapExtractor
from ...modeling.kmeans import distributed_kmeans
from ...utils.atomic_io import atomic_write_bytes

__all__ = [
    "PseudoLabels", "read_bgr", "read_share", "initial_boxes", "box_features", "embed_share", "cluster_boxes",
    "initial_pseudo_labels", "write_pseudo_labels", "read_pseudo_labels", "register_pseudo_labels",
]

logger = logging.getLogger(__name__)

# Domain tag of the k-means seeds (distinct from the sample stream's and Montage's).
_KMEANS = 0x5EED0031
POOLER_RESOLUTION = 7
#: Seconds between two progress lines of a labelling pass (:func:`read_share`).
PROGRESS_EVERY_S = 30


@dataclass
class PseudoLabels:
    """The pseudo-labels of one round.

    Attributes:
        num_classes: K.
        round: the round they train.
        images: per image ``{"file_name", "image_id", "width", "height"}`` (``image_id``: the
            source set's).
        boxes: per image float32 (B_i, 4) XYXY in its pixels.
        classes: per image int64 (B_i,) in [0, K).
        scores: per image float32 (B_i,): 1 for proposals, the detection score later.
        info: how they were made (written to the json's ``info``).
    """

    num_classes: int
    round: int
    images: List[dict]
    boxes: List[np.ndarray]
    classes: List[np.ndarray]
    scores: List[np.ndarray]
    info: dict = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


# ----------------------------------------------------------------------------- pieces
def read_bgr(path: str) -> np.ndarray:
    """uint8 (H, W, 3) BGR of an image file (EXIF applied). Raises :class:`ImageReadError`."""
    return decode_image(read_file_bytes(path))


def read_share(files: Sequence[str], unreadable: str, task: str = "") -> Iterator[Tuple[int, Optional[np.ndarray]]]:
    """``(i, BGR image or None)`` for this process's share of ``files`` (i % world == rank); a file
    that cannot be read gives None and a warning ending in ``unreadable``. With ``task``, the
    progress is logged every :data:`PROGRESS_EVERY_S` seconds (a labelling pass between two rounds
    takes minutes on a CPU, with no training line in the log meanwhile)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    share = range(rank, len(files), world)
    start = time.perf_counter()
    for done, i in enumerate(share, 1):
        try:
            img = read_bgr(files[i])
        except ImageReadError as e:
            logger.warning(f"Cannot read {files[i]} ({e}); {unreadable}")
            img = None
        yield i, img  # the caller has handled image i when the loop resumes here
        if task:
            elapsed = time.perf_counter() - start
            log_every_n_seconds(logging.INFO, f"{task}: {done}/{len(share)} images ({elapsed:.0f} s, "
                                f"eta {elapsed / done * (len(share) - done):.0f} s)",
                                n=PROGRESS_EVERY_S, name=logger.name)


def initial_boxes(record: dict, width: int, height: int, max_boxes: int) -> np.ndarray:
    """Round-0 boxes of a pretraining record (module docstring, step 1): float32 (B, 4), B >= 1."""
    boxes, _ = record_proposals(record, width, height)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])][:max_boxes]
    if not len(boxes):
        return np.array([[0, 0, width, height]], np.float32)
    return np.ascontiguousarray(boxes, dtype=np.float32)


@torch.no_grad()
def box_features(extractor: FeatureMapExtractor, image_bgr: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
    """(B, C) L2-normalised features of ``boxes`` (original pixels) of one image (step 2)."""
    fmap, (sx, sy) = extractor(image_bgr)
    cells = torch.as_tensor(np.asarray(boxes, np.float32) / np.array([sx, sy, sx, sy], np.float32))
    rois = torch.cat([torch.zeros(len(cells), 1), cells], dim=1)
    pooled = ROIAlign((POOLER_RESOLUTION, POOLER_RESOLUTION), 1.0, 0, aligned=True)(fmap[None], rois)
    return F.normalize(pooled.mean(dim=(2, 3)), dim=1)


def embed_share(extractor: FeatureMapExtractor, files: Sequence[str],
                boxes_fn: Callable[[int, int, int], np.ndarray]) -> List[Optional[tuple]]:
    """This process's share of ``files`` (index i with i % world == rank): per file, ``(width,
    height, boxes, features float16 (B, C))`` with ``boxes = boxes_fn(i, width, height)``, or None
    when it cannot be read (logged with the reason)."""
    out = []
    for i, img in read_share(files, "it gets no pseudo-labels", task="SimDETR: box features"):
        if img is None:
            out.append(None)
            continue
        height, width = img.shape[:2]
        boxes = boxes_fn(i, width, height)
        out.append((width, height, boxes, box_features(extractor, img, boxes).half()))
    return out


def _gather_share(mine: list, n: int) -> list:
    """The per-file results of every process's share (``embed_share``, ``detect_share``), back in
    file order, each cut to its first 3 items (features stay where they were computed)."""
    world = comm.get_world_size()
    light = [None if m is None else m[:3] for m in mine]
    out = [None] * n
    for rank, share in enumerate(comm.all_gather(light)):
        for j, item in enumerate(share):
            out[rank + j * world] = item
    return out


def cluster_boxes(mine: list, everything: list, *, k: int, iters: int, fit_samples: int, seed: int,
                  round_index: int) -> List[np.ndarray]:
    """Pseudo-classes of every box (step 3): per file of ``everything`` (``_gather_share``), int64
    (B_i,) (empty for an unreadable file). ``mine`` holds this process's features."""
    rank, world = comm.get_rank(), comm.get_world_size()
    counts = torch.tensor([0 if e is None else len(e[2]) for e in everything], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    feats, rows, dim = [], [], None
    for j, item in enumerate(mine):
        if item is not None:
            i = rank + j * world
            feats.append(item[3])
            rows.append(torch.arange(offsets[i], offsets[i + 1]))
            dim = item[3].shape[1]
    dims = [d for d in comm.all_gather(dim) if d is not None]
    if not dims:
        raise ValueError("Pseudo-labels: no training image could be read")
    feats = torch.cat(feats) if feats else torch.zeros(0, dims[0], dtype=torch.float16)
    rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    total = int(offsets[-1])
    if total < k:
        raise ValueError(f"Pseudo-labels: {total} boxes in all for K = {k} pseudo-classes "
                         "(MODEL.ROI_HEADS.NUM_CLASSES); use fewer classes or more images / boxes")
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([_KMEANS, seed, round_index]).generate_state(1)[0]))
    _, labels = distributed_kmeans(feats, rows, total, k=k, iters=iters, fit_samples=fit_samples,
                                   generator=generator)
    return [labels[offsets[i]:offsets[i + 1]].numpy() for i in range(len(everything))]


def initial_pseudo_labels(extractor: FeatureMapExtractor, records: Sequence[dict], *, k: int,
                          max_boxes: int, iters: int, fit_samples: int, seed: int) -> PseudoLabels:
    """Round 0 (module docstring) of the pretraining ``records`` (with ``proposal_boxes``)."""
    files = [r["file_name"] for r in records]
    mine = embed_share(extractor, files, lambda i, w, h: initial_boxes(records[i], w, h, max_boxes))
    everything = _gather_share(mine, len(records))
    classes = cluster_boxes(mine, everything, k=k, iters=iters, fit_samples=fit_samples, seed=seed,
                            round_index=0)
    keep = [i for i, e in enumerate(everything) if e is not None]
    return PseudoLabels(
        num_classes=k, round=0,
        images=[{"file_name": files[i], "image_id": records[i]["image_id"], "width": everything[i][0],
                 "height": everything[i][1]} for i in keep],
        boxes=[everything[i][2] for i in keep], classes=[classes[i] for i in keep],
        scores=[np.ones(len(everything[i][2]), np.float32) for i in keep],
        info={"how": f"proposals (first {max_boxes} per image) clustered by k-means of their "
                     f"{extractor.feature} features", "skipped": [files[i] for i, e in enumerate(everything) if e is None]},
    )


# ----------------------------------------------------------------------------- the json
def write_pseudo_labels(labels: PseudoLabels, path: str) -> str:
    """Write ``labels`` as a COCO instances json (module docstring), atomically; return ``path``."""
    images, annotations = [], []
    for i, (meta, boxes, classes, scores) in enumerate(zip(labels.images, labels.boxes, labels.classes,
                                                           labels.scores)):
        images.append({"id": i + 1, "file_name": os.path.abspath(meta["file_name"]), "width": int(meta["width"]),
                       "height": int(meta["height"]), "source_id": meta["image_id"]})
        for box, cls, score in zip(boxes.tolist(), classes.tolist(), scores.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0,
                                "score": round(float(score), 6)})
    data = {"info": dict(labels.info, description=f"SimDETR pseudo-labels, round {labels.round}",
                         simdetr_round=labels.round, num_classes=labels.num_classes),
            "images": images, "annotations": annotations,
            "categories": [{"id": c + 1, "name": f"pseudo_{c}"} for c in range(labels.num_classes)]}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, json.dumps(data).encode())
    return path


def read_pseudo_labels(path: str) -> PseudoLabels:
    """The :class:`PseudoLabels` of a json written by :func:`write_pseudo_labels`.

    Raises:
        FileNotFoundError: no such file. ValueError: not such a json (names the file).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Pseudo-label file not found: {path}")
    with open(path) as f:
        data = json.load(f)
    try:
        info = data["info"]
        per_image = {im["id"]: [] for im in data["images"]}
        for a in data["annotations"]:
            per_image[a["image_id"]].append(a)
        boxes, classes, scores = [], [], []
        for im in data["images"]:
            anns = per_image[im["id"]]
            b = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
            b[:, 2:] += b[:, :2]
            boxes.append(b)
            classes.append(np.array([a["category_id"] - 1 for a in anns], np.int64))
            scores.append(np.array([a.get("score", 1.0) for a in anns], np.float32))
        images = [{"file_name": im["file_name"], "image_id": im.get("source_id", im["id"]),
                   "width": im["width"], "height": im["height"]} for im in data["images"]]
        return PseudoLabels(int(info["num_classes"]), int(info["simdetr_round"]), images, boxes, classes,
                            scores, {k: v for k, v in info.items() if k not in ("num_classes", "simdetr_round")})
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a SimDETR pseudo-label json (missing {e})") from e


def register_pseudo_labels(path: str) -> str:
    """Register the json at ``path`` as a Detectron2 COCO dataset (``register_coco_instances``;
    file names are absolute, so its image root is ""); return its name. Registering the same
    file again is a no-op (the file is read when the dataset is loaded)."""
    name = f"simdetr_pseudo_labels:{os.path.abspath(path)}"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, os.path.abspath(path), "")
    return name
