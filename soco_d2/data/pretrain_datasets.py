"""Pretraining datasets: any image set plus its proposal file, under a name in DatasetCatalog.

A pretraining record is a Detectron2 dataset dict without annotations::

    {"file_name": str, "image_id": int | str, ["height", "width"],
     "proposal_boxes": float32 (P, 4), "proposal_objectness_logits": float32 (P,),
     "proposal_bbox_mode": BoxMode.XYXY_ABS}

Images missing from the proposal file get an empty ``proposal_boxes`` (the mapper then uses the
whole image as the only proposal); how many is logged. Boxes with a NaN or infinite coordinate
are dropped when the file is loaded, and counted in the log; boxes (partly) outside the image
are clipped by the mapper, which knows the image size. A proposal file that lists an image id
twice is refused (the error names the id).
"""
import functools
import logging
import os
import pickle
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .image_list import list_coco_images, list_image_folder

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _cached_image_list(image_root: str, json_file: Optional[str]):
    # Listing 1.28M files takes a while; setup() (epoch -> iteration) and the data loader
    # both need it, so do it once per process.
    if json_file:
        return tuple(list_coco_images(json_file, image_root))
    return tuple(list_image_folder(image_root))


def _read_coco_sizes(json_file: str) -> Dict[int, tuple]:
    import json

    with open(json_file) as f:
        images = json.load(f)["images"]
    return {img["id"]: (img.get("height"), img.get("width")) for img in images}


def load_proposal_file(proposal_file: str) -> dict:
    """Read a Detectron2 proposal file, checking the keys it must have.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a proposal file (names the missing key), or an image id appears
            twice (names the id).
    """
    if not os.path.isfile(proposal_file):
        raise FileNotFoundError(
            f"Proposal file does not exist: {proposal_file}. "
            "Generate it with tools/generate_proposals.py."
        )
    with open(proposal_file, "rb") as f:
        proposals = pickle.load(f, encoding="latin1")
    if not isinstance(proposals, dict):
        raise ValueError(f"{proposal_file} is not a proposal file (expected a dict)")
    for key in ("ids", "boxes"):
        if key not in proposals:
            raise ValueError(f"{proposal_file} has no '{key}' entry; is it a proposal file?")
    if len(proposals["ids"]) != len(proposals["boxes"]):
        raise ValueError(
            f"{proposal_file}: {len(proposals['ids'])} ids but {len(proposals['boxes'])} box lists"
        )
    seen = set()
    for image_id in proposals["ids"]:
        key = str(image_id)  # records are matched by str(id), so 7 and "7" are the same image
        if key in seen:
            raise ValueError(f"{proposal_file}: image id {image_id!r} appears more than once")
        seen.add(key)
    return proposals


def attach_proposals(records: List[dict], proposal_file: str) -> int:
    """Add ``proposal_*`` fields from a Detectron2 proposal file to ``records`` (in place).

    Boxes are converted to XYXY_ABS float32 and ordered by objectness, highest first, as
    ``detectron2.data.load_proposals_into_dataset`` does. Returns the number of records the
    file has no entry for (they get zero boxes). Boxes with a non-finite coordinate are
    dropped (logged with their count and a few image ids).
    """
    proposals = load_proposal_file(proposal_file)
    mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    index = {str(i): k for k, i in enumerate(proposals["ids"])}
    logits_all = proposals.get("objectness_logits")
    missing, non_finite, non_finite_ids = [], 0, []
    for record in records:
        k = index.get(str(record["image_id"]))
        if k is None:
            missing.append(record["image_id"])
            boxes = np.zeros((0, 4), dtype=np.float32)
            logits = np.zeros((0,), dtype=np.float32)
        else:
            boxes = np.asarray(proposals["boxes"][k], dtype=np.float32).reshape(-1, 4)
            if mode != BoxMode.XYXY_ABS:
                boxes = BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS)
            if logits_all is None:
                logits = -np.arange(len(boxes), dtype=np.float32)
            else:
                logits = np.asarray(logits_all[k], dtype=np.float32).reshape(-1)
            finite = np.isfinite(boxes).all(axis=1)
            if not finite.all():
                non_finite += int((~finite).sum())
                non_finite_ids.append(record["image_id"])
                boxes, logits = boxes[finite], logits[finite]
            order = np.argsort(-logits, kind="stable")
            boxes, logits = boxes[order], logits[order]
        record["proposal_boxes"] = boxes
        record["proposal_objectness_logits"] = logits
        record["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    if non_finite:
        logger.warning(
            f"Dropped {non_finite} proposal boxes with NaN/inf coordinates from "
            f"{proposal_file}, in {len(non_finite_ids)} images (e.g. {non_finite_ids[:5]})."
        )
    if missing:
        logger.warning(
            f"{len(missing)} of {len(records)} images have no entry in {proposal_file} "
            f"(e.g. {missing[:5]}); they will use the whole image as their only proposal."
        )
    return len(missing)


def load_soco_images(
    image_root: str, proposal_file: Optional[str] = None, json_file: Optional[str] = None
) -> List[dict]:
    """Pretraining records for an image folder (recursive) or a COCO json's images.

    Args:
        image_root: folder of the images.
        proposal_file: Detectron2 proposal file for these images, or None/"" for none.
        json_file: COCO instances json whose ``images`` are used (annotations ignored), or
            None to list ``image_root`` recursively.
    """
    items = _cached_image_list(image_root, json_file or None)
    records = [{"file_name": path, "image_id": image_id} for image_id, path in items]
    if json_file:
        sizes = _read_coco_sizes(json_file)
        for r in records:
            r["height"], r["width"] = sizes[r["image_id"]]
    if proposal_file:
        attach_proposals(records, proposal_file)
    else:
        for r in records:
            r["proposal_boxes"] = np.zeros((0, 4), dtype=np.float32)
            r["proposal_objectness_logits"] = np.zeros((0,), dtype=np.float32)
            r["proposal_bbox_mode"] = BoxMode.XYXY_ABS
    return records


def register_soco_images(
    name: str,
    image_root: str,
    proposal_file: Optional[str] = None,
    json_file: Optional[str] = None,
) -> None:
    """Register an image set with its proposals as a pretraining dataset called ``name``.

    Nothing is read until ``DatasetCatalog.get(name)``. Re-registering the same name with the
    same arguments is a no-op; with different arguments it raises.
    """
    args = dict(image_root=image_root, proposal_file=proposal_file or "", json_file=json_file or "")
    if name in DatasetCatalog.list():
        old = MetadataCatalog.get(name).get("soco_source", None)
        if old == args:
            return
        raise ValueError(f"Dataset '{name}' is already registered with other settings: {old}")
    DatasetCatalog.register(
        name, lambda: load_soco_images(image_root, proposal_file or None, json_file or None)
    )
    MetadataCatalog.get(name).set(
        soco_source=args, image_root=image_root, proposal_file=proposal_file or ""
    )


def num_images(name: str) -> int:
    """Number of images in a registered dataset, cheaply for SoCo's own registrations."""
    src = MetadataCatalog.get(name).get("soco_source", None)
    if src is not None:
        return len(_cached_image_list(src["image_root"], src["json_file"] or None))
    return len(DatasetCatalog.get(name))


def register_datasets_from_cfg(cfg) -> None:
    """Register every entry of ``cfg.DATASETS.SOCO_REGISTER``.

    Raises:
        ValueError: an entry does not have 3 or 4 fields (names the entry).
    """
    for entry in cfg.DATASETS.SOCO_REGISTER:
        if len(entry) not in (3, 4):
            raise ValueError(
                "DATASETS.SOCO_REGISTER entries are (name, image_root, proposal_file"
                f"[, coco_json]); got {entry!r}"
            )
        register_soco_images(*entry)
