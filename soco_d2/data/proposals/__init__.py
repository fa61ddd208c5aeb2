"""Unsupervised object proposals (SoCo paper section 1): one import for the public API.

- :mod:`.selective_search`: SoCo's box filter (:func:`filter_boxes`, with its fallback stages)
  and fast, deterministic selective search on a downscaled image (:func:`propose_image`,
  settings in :class:`ProposalSettings`).
- :mod:`.job`: parallel, resumable generation of a Detectron2 proposal file
  (:func:`generate_proposals`); CLI: ``tools/generate_proposals.py``.
- :mod:`.ground_truth`: a labelled json's boxes as a proposal file, categories dropped (an
  oracle for ablations; ``tools/generate_proposals.py --ground-truth``).
- :mod:`.semantic`: SimDETR's semantic proposals, connected regions of the clustered feature map
  of a backbone checkpoint (:class:`SemanticProposer`, a proposer for the same job;
  ``tools/generate_proposals.py --from-features CHECKPOINT``).

Images are decoded by :mod:`soco_d2.data.decode` (:func:`load_image_bgr` reads them at the size
selective search needs); :class:`ImageReadError` says why one cannot be used.
"""
from ..decode import ImageReadError
from .ground_truth import ground_truth_proposals, write_ground_truth_proposals
from .job import JobSummary, SelectiveSearchProposer, failures_path, generate_proposals, is_up_to_date, partial_dir
from .selective_search import (
    ASPECT,
    FILTER_STAGES,
    FULL,
    SIZE,
    WHOLE_IMAGE,
    BoxFilter,
    FilterResult,
    ProposalSettings,
    Proposals,
    add_settings_arguments,
    filter_boxes,
    load_image_bgr,
    propose,
    propose_image,
    settings_from_args,
)
from .semantic import SemanticProposer, SemanticSettings, backbone_state_dict

__all__ = [
    "ASPECT", "FILTER_STAGES", "FULL", "SIZE", "WHOLE_IMAGE", "BoxFilter", "FilterResult",
    "ImageReadError", "ProposalSettings", "Proposals", "add_settings_arguments", "filter_boxes",
    "load_image_bgr", "propose", "propose_image", "settings_from_args", "JobSummary",
    "failures_path", "generate_proposals", "is_up_to_date", "partial_dir",
    "ground_truth_proposals", "write_ground_truth_proposals", "SelectiveSearchProposer",
    "SemanticProposer", "SemanticSettings", "backbone_state_dict",
]
