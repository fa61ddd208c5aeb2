from .hooks import MomentumUpdateHook
from .trainer import SoCoTrainer, build_soco_train_loader
