from .detection import DetectionTrainer, build_detection_evaluator
from .export_hook import ExportTrunkHook
from .hooks import MomentumUpdateHook
from .trainer import SoCoTrainer, build_soco_train_loader
