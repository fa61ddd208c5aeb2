from .build import build_soco_optimizer, effective_lr, resolve_epochs, split_decay_params
from .lars import LARS
