"""Training every method shares: PretrainTrainer and its hooks, DDP on CPU processes, atomic
checkpoints, and DetectionTrainer for fine-tuning detectors on the exported weights."""
from .detection import DetectionTrainer, build_detection_evaluator
from .hooks import ExportTrunkHook, MomentumUpdateHook
from .trainer import PretrainTrainer
