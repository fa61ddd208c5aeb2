"""Semantic proposals (SimDETR, Metaxas et al. 2023): regions of an image's own high-level
feature map, from a self-supervised backbone, as object proposals.

How an image's proposals are made, exactly:

1. **Features.** The image (decoded as the selective-search job decodes it, EXIF applied) is
   resized so its short side is ``min_size`` (long side at most ``max_size``; small images are
   enlarged too, so a 160 px photo still gives a map of usable size), normalised
   with the backbone's pixel mean / std, and run through the ResNet of a Detectron2 checkpoint
   up to ``feature`` (``res4``, stride 16, or ``res5``, stride 32). The ResNet is built from a
   Detectron2 config (depth, widths, norm, stride placement; BatchNorm in eval mode, i.e. the
   checkpoint's statistics) and loaded from the checkpoint's backbone keys in any of
   Detectron2's namings (:func:`backbone_state_dict`).
2. **Cells.** Each of the h x w cells is its feature vector, L2-normalised, with its centre's
   position appended, ``position_weight * (x, y)``, x and y in [0, 1] along the longer side of
   the map (so the aspect is kept). A larger weight makes regions more compact; 0 clusters by
   appearance only.
3. **Clustering.** For every k in ``ks`` (k <= h * w), Euclidean k-means of the cells
   (:func:`soco_d2.modeling.kmeans.kmeans`, the project's one k-means, k-means++ seeded by
   ``(seed, k)``, at most ``kmeans_iters`` Lloyd iterations). Why k-means at several k and not
   agglomerative clustering: each k is one granularity (whole objects at small k, parts at
   larger k), the union is the multi-scale set a hierarchy would give at the cost of a few
   Lloyd iterations over about a thousand cells, it is deterministic and it needs no other
   library or implementation.
4. **Regions.** Every cluster is split into its connected components (``connectivity`` 4 or 8
   on the cell grid: one cluster of "fish" cells in two places is two objects); each component
   is a mask and its bounding box, in cells, a raw box. Raw boxes are mapped to original image
   pixels (a cell spans ``stride`` resized pixels) and clipped to the image.
5. **Filter and rank.** SoCo's box filter with its fallback stages
   (:func:`~soco_d2.data.proposals.selective_search.filter_boxes`): the image-size rules; if no
   box passes, the aspect rule alone, then the size rule alone, then the whole image as the
   only proposal, exactly as for selective search. Kept boxes are ranked by
   :func:`~soco_d2.data.proposals.selective_search.rank_boxes`: support is the number of k
   whose clustering produced an overlapping region (IoU >= 0.7), i.e. how stable a region is
   across granularities, then rounds of NMS for diversity. Logits are ``-rank``.

:class:`SemanticProposer` is the proposer of the resumable, parallel proposal job
(``job.py``; CLI ``tools/generate_proposals.py --from-features CHECKPOINT``); its identity in
the job's manifest is these settings, the checkpoint's path and SHA-256 and the architecture
keys, so a rerun with another trunk is refused, not mixed in. Selective search stays the
default of the tool.

Shape shorthand: C channels of ``feature``, h x w its cells.
"""
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ...export import read_state_dict
from ...modeling.kmeans import kmeans
from ..decode import ImageReadError
from .selective_search import WHOLE_IMAGE, BoxFilter, Proposals, filter_boxes, load_image_bgr, rank_boxes

__all__ = [
    "FEATURES", "SemanticSettings", "backbone_state_dict", "build_resnet_features", "FeatureMapExtractor",
    "cluster_regions", "regions_to_pixels", "propose_from_features", "SemanticProposer",
    "add_semantic_arguments", "semantic_settings_from_args",
]

#: The feature maps regions can be taken from, with their stride.
FEATURES = {"res4": 16, "res5": 32}
# Domain tag of the per-image k-means seeds.
_SEMANTIC = 0x5EED0021


@dataclass(frozen=True)
class SemanticSettings:
    """How semantic proposals are made (module docstring; our defaults: the published values are
    not given in the paper's text we follow).

    Attributes:
        feature: "res4" or "res5".
        position_weight: weight of the (x, y) channels appended to the normalised features.
        ks: the k of each per-image k-means.
        kmeans_iters: the most Lloyd iterations of each.
        min_size, max_size: the image's short side before the backbone, and the cap on its long
            side (0: none).
        connectivity: 4 or 8, of the connected components on the cell grid.
        seed: seeds every k-means (with k), the same for every image.
        min_image_size: images with a side below this many pixels are rejected ("tiny").
        box_filter: SoCo's filter thresholds.
    """

    feature: str = "res4"
    position_weight: float = 1.0
    ks: Tuple[int, ...] = (2, 3, 4, 6, 8)
    kmeans_iters: int = 20
    min_size: int = 480
    max_size: int = 800
    connectivity: int = 4
    seed: int = 0
    min_image_size: int = 32
    box_filter: BoxFilter = field(default_factory=BoxFilter)

    def __post_init__(self):
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if isinstance(self.box_filter, dict):
            object.__setattr__(self, "box_filter", BoxFilter(**self.box_filter))
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {list(FEATURES)}, got {self.feature!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of k >= 1, got {self.ks}")
        if self.position_weight < 0:
            raise ValueError(f"position_weight must be >= 0, got {self.position_weight}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}")
        if self.min_size < 32 or (self.max_size and self.max_size < self.min_size):
            raise ValueError(f"min_size must be >= 32 and max_size 0 or >= min_size, got "
                             f"{self.min_size}, {self.max_size}")
        if self.kmeans_iters < 1:
            raise ValueError(f"kmeans_iters must be >= 1, got {self.kmeans_iters}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- the backbone
_STAGES = ("stem.", "res2.", "res3.", "res4.", "res5.")


def backbone_state_dict(checkpoint: str) -> Dict[str, torch.Tensor]:
    """The ResNet of a Detectron2 checkpoint, under a bare ResNet's names (``stem.*``,
    ``res2.*`` ...).

    Found under ``backbone.bottom_up.*`` (FPN detectors; SoCo, AlignDet and SimDETR trunks),
    else ``backbone.stem.*`` / ``backbone.resN.*`` (C4 detectors, Montage trunks), with
    ``roi_heads.res5.*`` as res5 when the backbone has none (C4). A ``module.`` prefix (DDP) is
    ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no state_dict, or no backbone (the message names the file and
            the parts it has).
    """
    state = read_state_dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out = {}
    for prefix in ("backbone.bottom_up.", "backbone."):
        out = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and k[len(prefix):].startswith(_STAGES)}
        if out:
            break
    if out and not any(k.startswith("res5.") for k in out):
        out.update({"res5." + k[len("roi_heads.res5."):]: v for k, v in state.items()
                    if k.startswith("roi_heads.res5.")})
    if not out:
        parts = sorted({k.split(".")[0] for k in state})
        raise ValueError(
            f"{checkpoint} has no backbone: expected keys backbone.bottom_up.stem.* / res2-5.* (FPN "
            "detectors, SoCo and AlignDet trunks) or backbone.stem.* / backbone.res2-5.* (C4 "
            f"detectors, Montage trunks); its top-level parts: {parts or 'none'}")
    return out


def build_resnet_features(cfg, checkpoint: str, feature: str) -> torch.nn.Module:
    """Detectron2's ResNet of ``cfg`` (MODEL.RESNETS) up to ``feature``, loaded from the
    backbone of ``checkpoint``, in eval mode without gradients. SyncBN becomes BN (the same
    weights; in eval mode both use the stored statistics).

    Raises:
        ValueError: no backbone in the checkpoint, or it lacks (or has other shapes for) a
            tensor of this ResNet: the message names the file, the keys and the config keys.
    """
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {list(FEATURES)}, got {feature!r}")
    state = backbone_state_dict(checkpoint)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.RESNETS.OUT_FEATURES = [feature]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if "SyncBN" in cfg.MODEL.RESNETS.NORM or cfg.MODEL.RESNETS.NORM == "nnSyncBN":
        cfg.MODEL.RESNETS.NORM = "BN"
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    own = resnet.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(
            f"{checkpoint}: its backbone does not fit the ResNet of the config (MODEL.RESNETS.DEPTH "
            f"{cfg.MODEL.RESNETS.DEPTH}, RES2_OUT_CHANNELS {cfg.MODEL.RESNETS.RES2_OUT_CHANNELS}): "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, other shapes {wrong[:5]}")
    resnet.load_state_dict({k: state[k] for k in own})
    return resnet.eval().requires_grad_(False)


class FeatureMapExtractor:
    """Image -> one feature map of a ResNet, at a test-time size (module docstring, step 1).

    Args:
        resnet: a Detectron2 ResNet (or any module returning ``{feature: (1, C, h, w)}``).
        feature: the output used ("res4" / "res5").
        pixel_mean, pixel_std: per-channel normalisation, in ``image_format`` order.
        image_format: "RGB" or "BGR", the channel order the backbone was trained on.
        min_size, max_size: short side, long side cap (0: none).
    """

    def __init__(self, resnet: torch.nn.Module, feature: str, pixel_mean, pixel_std,
                 image_format: str, min_size: int, max_size: int):
        self.resnet = resnet
        self.feature = feature
        self.stride = FEATURES[feature]
        self.mean = torch.tensor(list(pixel_mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(pixel_std), dtype=torch.float32).view(-1, 1, 1)
        self.image_format = image_format
        self.min_size, self.max_size = int(min_size), int(max_size)

    def resized_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(h, w) the image is resized to."""
        scale = self.min_size / min(height, width)
        if self.max_size and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Tuple[torch.Tensor, Tuple[float, float]]:
        """
        Args:
            image_bgr: uint8 (H, W, 3) BGR.

        Returns:
            (the feature map (C, h, w) float32 on the CPU, (sx, sy): original pixels per cell
            along x and y).
        """
        height, width = image_bgr.shape[:2]
        rh, rw = self.resized_shape(height, width)
        interp = cv2.INTER_AREA if rw < width else cv2.INTER_LINEAR
        img = cv2.resize(image_bgr, (rw, rh), interpolation=interp)
        if self.image_format == "RGB":
            img = img[:, :, ::-1]
        device = next(self.resnet.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        x = ((x - self.mean) / self.std).unsqueeze(0).to(device)
        fmap = self.resnet(x)[self.feature][0].float().cpu()
        return fmap, (self.stride * width / rw, self.stride * height / rh)


# ----------------------------------------------------------------------------- regions
def _cells(fmap: torch.Tensor, position_weight: float) -> torch.Tensor:
    """(h * w, C + 2): normalised features and weighted cell-centre positions (step 2)."""
    c, h, w = fmap.shape
    feats = F.normalize(fmap.float().reshape(c, h * w).t(), dim=1)
    side = float(max(h, w))
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / side, (torch.arange(w) + 0.5) / side, indexing="ij")
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1) * position_weight
    return torch.cat([feats, pos], dim=1)


def cluster_regions(fmap: torch.Tensor, settings: SemanticSettings = SemanticSettings()
                    ) -> List[np.ndarray]:
    """The regions of one feature map (steps 2-4), one array per k of ``settings.ks`` that fits.

    Args:
        fmap: (C, h, w).

    Returns:
        per k (k <= h * w), int64 (R_k, 4) unique boxes ``(x0, y0, x1, y1)`` in cells, x1 and y1
        exclusive: the bounding boxes of the connected components of every cluster.
    """
    _, h, w = fmap.shape
    cells = _cells(fmap, settings.position_weight)
    runs = []
    for k in settings.ks:
        if k > h * w:
            continue
        seed = int(np.random.SeedSequence([_SEMANTIC, settings.seed, k]).generate_state(1)[0])
        _, labels = kmeans(cells, k, settings.kmeans_iters, torch.Generator().manual_seed(seed),
                           spherical=False)
        grid = labels.reshape(h, w).numpy()
        boxes = []
        for cluster in np.unique(grid):
            n, _, stats, _ = cv2.connectedComponentsWithStats(
                (grid == cluster).astype(np.uint8), connectivity=settings.connectivity)
            x, y, bw, bh = (stats[1:, i] for i in range(4))  # component 0 is the background
            boxes.append(np.stack([x, y, x + bw, y + bh], axis=1))
        runs.append(np.unique(np.concatenate(boxes).astype(np.int64), axis=0))
    return runs


def regions_to_pixels(cell_boxes: np.ndarray, cell_size: Tuple[float, float], width: float,
                      height: float) -> np.ndarray:
    """Cell boxes (x1, y1 exclusive) -> float32 XYXY in original pixels, clipped to the image."""
    sx, sy = cell_size
    boxes = np.asarray(cell_boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
    boxes = boxes.astype(np.float32)
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return boxes


def propose_from_features(fmap: torch.Tensor, cell_size: Tuple[float, float], width: int, height: int,
                          settings: SemanticSettings = SemanticSettings()) -> Proposals:
    """The proposals of a ``width`` x ``height`` image whose feature map is ``fmap`` (steps 2-5).

    Args:
        fmap: (C, h, w).
        cell_size: (sx, sy) original pixels per cell.
    """
    runs = [regions_to_pixels(r, cell_size, width, height) for r in cluster_regions(fmap, settings)]
    raw = np.concatenate(runs) if runs else np.zeros((0, 4), np.float32)
    run_ids = np.concatenate([np.full(len(r), i) for i, r in enumerate(runs)]) if runs else np.zeros(0, int)
    boxes = np.unique(raw, axis=0)
    result = filter_boxes(boxes, width, height, settings.box_filter)
    if result.stage == WHOLE_IMAGE:
        return Proposals(result.boxes, np.zeros(1, dtype=np.float32), WHOLE_IMAGE, len(boxes))
    order = rank_boxes(result.boxes, raw, run_ids, len(runs))
    logits = -np.arange(len(order), dtype=np.float32)
    return Proposals(np.ascontiguousarray(result.boxes[order]), logits, result.stage, len(boxes))


# ----------------------------------------------------------------------------- the proposer
def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SemanticProposer:
    """The proposal job's proposer (``job.py``) for semantic proposals.

    Built in the main process, so that a bad checkpoint fails before any image is read; each
    worker process is started fresh ("spawn": a process forked after torch's OpenMP pool has
    run can hang in its first torch call), unpickles the loaded ResNet and runs it on one
    thread.

    Args:
        cfg: a Detectron2 config describing the checkpoint's ResNet (MODEL.RESNETS,
            MODEL.PIXEL_MEAN / PIXEL_STD, INPUT.FORMAT), e.g. the ``config.yaml`` of the run
            that wrote it.
        checkpoint: a Detectron2 checkpoint with a backbone (:func:`backbone_state_dict`).
        settings: :class:`SemanticSettings`.
        device: where the ResNet runs ("cpu"; "cuda" with one worker).

    Raises:
        FileNotFoundError, ValueError: as :func:`build_resnet_features`.
    """

    #: The job's workers are spawned, not forked (class docstring).
    start_method = "spawn"

    def __init__(self, cfg, checkpoint: str, settings: SemanticSettings = SemanticSettings(),
                 device: str = "cpu"):
        self.settings = settings
        resnet = build_resnet_features(cfg, checkpoint, settings.feature).to(device)
        self.extractor = FeatureMapExtractor(resnet, settings.feature, cfg.MODEL.PIXEL_MEAN,
                                             cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT,
                                             settings.min_size, settings.max_size)
        r = cfg.MODEL.RESNETS
        self._identity = {
            "kind": "semantic",
            "semantic": settings.to_dict(),
            "checkpoint": os.path.abspath(checkpoint),
            "checkpoint_sha256": _file_sha256(checkpoint),
            "architecture": {"depth": r.DEPTH, "res2_out_channels": r.RES2_OUT_CHANNELS,
                             "width_per_group": r.WIDTH_PER_GROUP, "num_groups": r.NUM_GROUPS,
                             "stride_in_1x1": r.STRIDE_IN_1X1, "norm": r.NORM,
                             "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
                             "pixel_std": list(cfg.MODEL.PIXEL_STD), "format": cfg.INPUT.FORMAT},
        }

    def to_dict(self) -> dict:
        return self._identity

    def init_worker(self) -> None:
        torch.set_num_threads(1)  # one worker = one core

    def __call__(self, path: str) -> Proposals:
        """The proposals of the image at ``path``.

        Raises:
            ImageReadError: unusable image (as the selective-search job), "tiny" included.
        """
        image, width, height = load_image_bgr(path)
        if min(width, height) < self.settings.min_image_size:
            raise ImageReadError("tiny", f"{width}x{height} < {self.settings.min_image_size} px")
        fmap, cell = self.extractor(image)
        return propose_from_features(fmap, cell, width, height, self.settings)

    def __repr__(self) -> str:
        return f"semantic proposals of {self._identity['checkpoint']} ({self.settings})"


# ----------------------------------------------------------------------------- command line
def add_semantic_arguments(parser) -> None:
    """Add ``--feature``, ``--position-weight`` ... (defaults: :class:`SemanticSettings`)."""
    d = SemanticSettings()
    g = parser.add_argument_group("semantic proposals, with --from-features (defaults are ours)")
    g.add_argument("--feature", choices=sorted(FEATURES), default=d.feature,
                   help="backbone feature map clustered (default: %(default)s)")
    g.add_argument("--position-weight", type=float, default=d.position_weight,
                   help="weight of the (x, y) channels appended to the features (default: %(default)s)")
    g.add_argument("--cluster-ks", default=",".join(str(k) for k in d.ks),
                   help="comma-separated k of the per-image k-means (default: %(default)s)")
    g.add_argument("--feature-min-size", type=int, default=d.min_size,
                   help="short side of the image before the backbone, px (default: %(default)s)")
    g.add_argument("--feature-max-size", type=int, default=d.max_size,
                   help="cap on its long side, px, 0: none (default: %(default)s)")
    g.add_argument("--connectivity", type=int, choices=(4, 8), default=d.connectivity,
                   help="connectivity of the regions on the cell grid (default: %(default)s)")


def semantic_settings_from_args(args) -> SemanticSettings:
    """:class:`SemanticSettings` of the arguments of :func:`add_semantic_arguments`.

    Raises:
        ValueError: a bad value (names it).
    """
    try:
        ks = tuple(int(k) for k in str(args.cluster_ks).split(",") if k.strip())
    except ValueError:
        raise ValueError(f"--cluster-ks must be comma-separated integers, got {args.cluster_ks!r}")
    return SemanticSettings(feature=args.feature, position_weight=args.position_weight, ks=ks,
                            min_size=args.feature_min_size, max_size=args.feature_max_size,
                            connectivity=args.connectivity)
