"""The probe: how well a trunk's features of ground-truth boxes separate object categories.

Nothing is trained in the trunk. For every labelled (non-crowd) box of a COCO-format detection
set, the image goes through the trunk's backbone, the box is RoIAligned from the feature map
that a Detectron2 detector would use for it (the detector's own ``ROIPooler`` and level rule),
and two vectors are kept:

- ``pooled``: the RoIAligned features averaged over the R x R grid (what the backbone and FPN
  provide);
- ``head``: the output of the box head (FastRCNNConvFCHead, or res5 + spatial mean for C4),
  i.e. what the detector's classifier sees.

Two accuracies per vector, both free of any training of the trunk:

- ``knn``: weighted k-nearest-neighbour classification (cosine similarity, k = 20, weights
  exp(sim / 0.07) as in the instance-discrimination / DINO probes), each box classified from
  the boxes of the OTHER images (leave-one-image-out), so two objects of one image never vote
  for each other;
- ``linear``: multinomial logistic regression (L-BFGS, features standardised on the training
  fold) trained on the boxes of half of the images and tested on the other half, and the
  reverse (2 folds by image, images dealt to the folds in a fixed pseudo-random order); the
  mean of the two test accuracies.

Each accuracy also comes class-balanced (``*_bal``: the mean over categories of the share of
their boxes classified right), which a trunk cannot raise by favouring the commonest category:
on Aquarium boxes, 60% fish, a random trunk's plain kNN accuracy is already about 0.64.

Two measures of dimensional collapse, which accuracy alone hides (a trunk can keep a few
category-bearing directions and lose all others, and then fine-tunes worse than random init):

- ``erank``: the effective rank of the centred features (exp of the entropy of the normalised
  singular values, Roy & Vetterli 2007): about the number of directions the boxes actually
  spread along, at most min(M, C);
- ``dead_head``: the share of box-head output units (after its ReLU) that are 0 for every box:
  dead ReLUs get no gradient in fine-tuning either, so that capacity is lost for good.

BatchNorm: a trunk fresh from random initialisation has running statistics (0, 1) that have
nothing to do with its activations, while fine-tuning uses batch statistics from the first
step. Before extracting, the BN statistics of a *copy* of the trunk are therefore re-estimated
on the probe images (the exact mean over them, as PreciseBN does), for every trunk alike;
``reestimate_bn=False`` probes the stored statistics instead.

Shape shorthand: M boxes (all images together), C channels, R pooler resolution.
"""
import copy
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import detection_utils
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, BoxMode, ImageList
from torch import nn

__all__ = [
    "ProbeImage",
    "BoxFeatureTrunk",
    "trunk_from_detector",
    "load_probe_images",
    "reestimate_bn",
    "extract_box_features",
    "knn_predict",
    "knn_accuracy",
    "balanced_accuracy",
    "linear_probe_predict",
    "linear_probe_accuracy",
    "probe_trunk",
    "KNN_K",
    "KNN_TEMPERATURE",
]

logger = logging.getLogger(__name__)

KNN_K = 20
KNN_TEMPERATURE = 0.07


@dataclass
class ProbeImage:
    """One probe image: ``image`` uint8 (3, H, W) in the trunk's channel order, ``boxes``
    float32 (B, 4) XYXY in its pixels, ``labels`` int64 (B,) category ids."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


class BoxFeatureTrunk(nn.Module):
    """A detector's path from image to box features: backbone -> ROIPooler -> box head.

    Args:
        backbone: a Detectron2 Backbone.
        in_features: the backbone outputs the pooler reads (e.g. ["p2", "p3", "p4", "p5"]).
        pooler: a Detectron2 ROIPooler over ``in_features`` (its own level rule is used).
        head: None (no box head: only ``pooled``), a FastRCNNConvFCHead-like module
            ((M, C, R, R) -> (M, D)), or with ``head_pool=True`` a res5 stage whose output is
            averaged spatially (C4).
        pixel_mean, pixel_std: per-channel normalisation.
        head_pool: average the head's output over its spatial grid (res5 head).
    """

    def __init__(self, backbone: nn.Module, in_features: Sequence[str], pooler: ROIPooler,
                 head: Optional[nn.Module], pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], head_pool: bool = False):
        super().__init__()
        self.backbone = backbone
        self.in_features = list(in_features)
        self.pooler = pooler
        self.head = head
        self.head_pool = head_pool
        self.register_buffer("pixel_mean", torch.tensor(list(pixel_mean)).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(list(pixel_std)).view(-1, 1, 1), False)

    def forward(self, images: List[torch.Tensor], boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """(uint8 images, XYXY boxes per image) -> {"pooled": (M, C), "head": (M, D)}."""
        device = self.pixel_mean.device
        x = [(im.to(device).float() - self.pixel_mean) / self.pixel_std for im in images]
        x = ImageList.from_tensors(
            x, self.backbone.size_divisibility,
            padding_constraints=getattr(self.backbone, "padding_constraints", None),
        ).tensor
        # Images in the memory format of the convolution weights (SoCo keeps them NHWC): a
        # mismatch makes every convolution convert, 2-5x slower on a CPU.
        if _channels_last(self.backbone):
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        pooled = self.pooler([features[f] for f in self.in_features], [Boxes(b.to(device)) for b in boxes])
        out = {"pooled": pooled.mean(dim=(2, 3))}
        if self.head is not None:
            h = self.head(pooled)
            out["head"] = h.mean(dim=(2, 3)) if self.head_pool else h.flatten(1)
        return out


def _channels_last(module: nn.Module) -> bool:
    conv = next((p for p in module.parameters() if p.dim() == 4), None)
    return (conv is not None and conv.shape[1] > 1
            and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous())


def _pixel_stats(model):
    return model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()


def trunk_from_detector(model: nn.Module) -> BoxFeatureTrunk:
    """The box-feature path of a built Detectron2 detector (not copied).

    GeneralizedRCNN with StandardROIHeads (box head) or Res5ROIHeads (res5 head) uses its own
    pooler; a detector without ROI heads (RetinaNet) gets a pooler like StandardROIHeads'
    (7 x 7 ROIAlignV2 over its head's input features, Detectron2's canonical level rule) and
    only the ``pooled`` vector.
    """
    mean, std = _pixel_stats(model)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "box_head"):
        return BoxFeatureTrunk(model.backbone, roi_heads.box_in_features, roi_heads.box_pooler,
                               roi_heads.box_head, mean, std)
    if roi_heads is not None and hasattr(roi_heads, "res5"):
        return BoxFeatureTrunk(model.backbone, roi_heads.in_features, roi_heads.pooler,
                               roi_heads.res5, mean, std, head_pool=True)
    in_features = list(getattr(model, "head_in_features", model.backbone.output_shape().keys()))
    return BoxFeatureTrunk(model.backbone, in_features, fpn_box_pooler(model.backbone, in_features),
                           None, mean, std)


def fpn_box_pooler(backbone: nn.Module, in_features: Sequence[str], resolution: int = 7) -> ROIPooler:
    """StandardROIHeads' pooler (Detectron2 defaults) over ``in_features`` of ``backbone``."""
    shapes = backbone.output_shape()
    return ROIPooler(
        output_size=resolution,
        scales=tuple(1.0 / shapes[f].stride for f in in_features),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    )


def load_probe_images(records: Sequence[dict], image_format: str, min_size: int = 0,
                      max_size: int = 0) -> List[ProbeImage]:
    """Decode the images of Detectron2 dataset dicts with their labelled boxes.

    Crowd boxes and images without boxes are left out. ``min_size`` > 0 resizes each image so
    its short side is ``min_size`` (long side at most ``max_size`` when > 0), as Detectron2's
    test-time ResizeShortestEdge; 0 keeps the stored size. Category ids are the records' own
    (contiguous ids after Detectron2's COCO loader).
    """
    images = []
    for r in records:
        anns = [a for a in r.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        img = detection_utils.read_image(r["file_name"], format=image_format)
        boxes = np.array(
            [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
            dtype=np.float32,
        )
        h, w = img.shape[:2]
        if min_size > 0:
            scale = min_size / min(h, w)
            if max_size > 0:
                scale = min(scale, max_size / max(h, w))
            if abs(scale - 1.0) > 1e-6:
                size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
                img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
                boxes = boxes * np.float32(scale)
        images.append(ProbeImage(
            image=torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            boxes=torch.from_numpy(boxes),
            labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
        ))
    if not images:
        raise ValueError("The probe set has no image with a labelled box")
    return images


def _batches(images: Sequence[ProbeImage], batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


@torch.no_grad()
def reestimate_bn(trunk: BoxFeatureTrunk, images: Sequence[ProbeImage], batch_size: int = 16) -> int:
    """Replace the running statistics of every BatchNorm in ``trunk`` (in place) by their exact
    mean over ``images`` (batch statistics of each forward, averaged with equal weights).
    Returns the number of BN layers. Leaves ``trunk`` in eval mode."""
    bns = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over batches
    trunk.train()
    try:
        for batch in _batches(images, batch_size):
            trunk([b.image for b in batch], [b.boxes for b in batch])
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        trunk.eval()
    return len(bns)


@torch.no_grad()
def extract_box_features(trunk: BoxFeatureTrunk, images: Sequence[ProbeImage], batch_size: int = 16):
    """Features of every box, in eval mode.

    Returns:
        ``(features, labels, image_index)``: features maps "pooled" / "head" to (M, C) float32,
        labels (M,) category ids, image_index (M,) the position of each box's image.
    """
    trunk.eval()
    feats: Dict[str, List[torch.Tensor]] = {}
    labels, owner = [], []
    for start, batch in zip(range(0, len(images), batch_size), _batches(images, batch_size)):
        out = trunk([b.image for b in batch], [b.boxes for b in batch])
        for name, value in out.items():
            feats.setdefault(name, []).append(value.float().cpu())
        for j, b in enumerate(batch):
            labels.append(b.labels)
            owner.append(torch.full((len(b.labels),), start + j, dtype=torch.int64))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels), torch.cat(owner)


def knn_predict(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> torch.Tensor:
    """Leave-one-image-out weighted kNN predictions with cosine similarity (module docstring).

    Args:
        features: (M, C); labels: (M,); image_index: (M,) which image each box comes from.

    Returns:
        (M,) the predicted category id of every box.
    """
    f = F.normalize(features.float(), dim=1)
    sim = f @ f.t()
    # Boxes of the same image (the box itself included) never vote.
    sim.masked_fill_(image_index[:, None] == image_index[None, :], float("-inf"))
    k = max(1, min(k, len(labels) - 1))
    top_sim, top_idx = sim.topk(k, dim=1)
    classes = labels.unique()
    votes = (labels[top_idx][..., None] == classes).float()  # (M, k, num_classes)
    weights = torch.exp(top_sim / temperature)  # -inf (too few neighbours) -> weight 0
    scores = (votes * weights[..., None]).sum(dim=1)
    return classes[scores.argmax(dim=1)]


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Share of boxes :func:`knn_predict` classifies right."""
    return float((knn_predict(features, labels, image_index, k, temperature) == labels).float().mean())


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the categories present in ``labels`` of the share of their boxes predicted
    right (mean per-class recall): 1 / num_classes for a constant guess, however unbalanced
    the categories are, where plain accuracy rewards always guessing the commonest one."""
    recalls = [float((predictions[labels == c] == c).float().mean()) for c in labels.unique()]
    return float(np.mean(recalls))


def image_folds(image_index: torch.Tensor, folds: int) -> torch.Tensor:
    """(M,) the fold of every box: its image's, images dealt to the folds in a fixed
    pseudo-random order (seed 0), so that no periodic order of the images (e.g. the classes of
    a probe set taking turns, image i of class i % 10) lines up with the folds."""
    images, owner = image_index.unique(return_inverse=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return (order % folds)[owner]


def linear_probe_predict(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                         folds: int = 2, max_iter: int = 200, weight_decay: float = 1e-3):
    """Logistic regression over ``folds`` image-disjoint folds (:func:`image_folds`); features
    standardised with the training fold's mean and std.

    Returns:
        ``(accuracy, predictions)``: the mean test accuracy over the folds, and (M,) the
        prediction of every box from the fold it was tested in (-1 where no fold could test it,
        i.e. when all boxes fall in one fold).
    """
    classes, y = labels.unique(return_inverse=True)
    accuracies = []
    predictions = torch.full_like(labels, -1)
    fold_of_box = image_folds(image_index, folds)
    for fold in range(folds):
        test = fold_of_box == fold
        if test.all() or not test.any():
            continue
        x_train, x_test = features[~test].float(), features[test].float()
        mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1e-6
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        torch.manual_seed(0)
        linear = nn.Linear(x_train.shape[1], len(classes))
        optim = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad()
            loss = F.cross_entropy(linear(x_train), y[~test]) + weight_decay * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optim.step(closure)
        with torch.no_grad():
            pred = linear(x_test).argmax(dim=1)
            accuracies.append(float((pred == y[test]).float().mean()))
            predictions[test] = classes[pred]
    return (float(np.mean(accuracies)) if accuracies else float("nan")), predictions


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, image_index: torch.Tensor,
                          folds: int = 2, max_iter: int = 200, weight_decay: float = 1e-3) -> float:
    """The mean test accuracy of :func:`linear_probe_predict`."""
    return linear_probe_predict(features, labels, image_index, folds, max_iter, weight_decay)[0]


def effective_rank(features: torch.Tensor) -> float:
    """exp(H(p)) with p_i = s_i / sum(s), s the singular values of the centred (M, C) features:
    1 when all boxes lie on one line, min(M, C) when they spread evenly in every direction."""
    x = features.double()
    s = torch.linalg.svdvals(x - x.mean(dim=0))
    if s.sum() <= 0:
        return 0.0  # every box has the same feature: no direction at all
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def dead_fraction(features: torch.Tensor) -> float:
    """Share of the C units of (M, C) features that are exactly 0 for every one of the M rows."""
    return float((features.abs().amax(dim=0) == 0).float().mean())


def probe_trunk(trunk: BoxFeatureTrunk, images: Sequence[ProbeImage], reestimate: bool = True,
                batch_size: int = 16) -> Dict[str, float]:
    """kNN and linear accuracies of a trunk on ``images`` (the module docstring's protocol).

    The trunk is deep-copied first (and the copy's BN statistics re-estimated when
    ``reestimate``), so the caller's model is untouched.

    Returns:
        ``{"knn_head", "knn_head_bal", "linear_head", "linear_head_bal", "erank_head",
        "dead_head", "knn_pooled", "knn_pooled_bal", "linear_pooled", "linear_pooled_bal",
        "erank_pooled", "num_boxes", "num_images", "num_classes"}`` (``*_bal``: the
        class-balanced accuracy, :func:`balanced_accuracy`; no ``*_head`` without a box head).
    """
    trunk = copy.deepcopy(trunk)
    if reestimate:
        reestimate_bn(trunk, images, batch_size)
    feats, labels, owner = extract_box_features(trunk, images, batch_size)
    result = {}
    for name in ("head", "pooled"):
        if name in feats:
            knn = knn_predict(feats[name], labels, owner)
            result[f"knn_{name}"] = float((knn == labels).float().mean())
            result[f"knn_{name}_bal"] = balanced_accuracy(knn, labels)
            result[f"linear_{name}"], linear = linear_probe_predict(feats[name], labels, owner)
            tested = linear >= 0
            result[f"linear_{name}_bal"] = (balanced_accuracy(linear[tested], labels[tested])
                                            if tested.any() else float("nan"))
            result[f"erank_{name}"] = effective_rank(feats[name])
    if "head" in feats:
        result["dead_head"] = dead_fraction(feats["head"])
    result.update(num_boxes=int(len(labels)), num_images=len(images),
                  num_classes=int(labels.unique().numel()))
    return result
