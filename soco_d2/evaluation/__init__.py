"""Measuring what pretraining taught, without training the trunk: the probe."""
from .probe import BoxFeatureTrunk, load_probe_images, probe_trunk, trunk_from_detector
