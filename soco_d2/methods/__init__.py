"""Pretraining methods: one folder each, registered here by their MODEL.META_ARCHITECTURE.

A method's folder (``soco_d2/methods/soco/`` ...) registers it on import with
:func:`register_method`, declaring what the rest of the package needs to know about it.
``train_net.py`` and ``tools/convert_to_d2.py`` look methods up here (an architecture that is not
registered is a Detectron2 detector to fine-tune or evaluate) and hand the trainer and the
exporter what they need: this registry is a leaf, it imports neither the engine nor the export
(only the shared config keys), and nothing of the shared pieces imports it.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..config.common import add_common_config

__all__ = ["PretrainMethod", "register_method", "get_method", "registered_methods", "registered_exports",
           "add_config"]


@dataclass(frozen=True)
class PretrainMethod:
    """What the package needs to know about one pretraining method.

    Attributes:
        name: its MODEL.META_ARCHITECTURE (the class registered in META_ARCH_REGISTRY).
        add_config: ``cfg -> cfg``, adds its keys (and the shared ones) to a config.
        validate_config: ``cfg -> None``, raises ``ConfigError`` naming every wrong value.
        trainer: its trainer, a ``soco_d2.engine.PretrainTrainer`` subclass.
        export: its ``soco_d2.export.ExportSpec``: what it hands to a detector (for a checkpoint
            found to be this method's; a run exports what its trainer declares).
    """

    name: str
    add_config: Callable
    validate_config: Callable
    trainer: type
    export: object


_METHODS: Dict[str, PretrainMethod] = {}


def register_method(method: PretrainMethod) -> PretrainMethod:
    """Register ``method`` under ``method.name``; registering the same object again is a no-op.

    Raises:
        ValueError: another method is registered under that name.
    """
    old = _METHODS.get(method.name)
    if old is not None and old != method:
        raise ValueError(f"A pretraining method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(meta_architecture: str) -> Optional[PretrainMethod]:
    """The method registered for ``meta_architecture``, or None (not a pretraining method)."""
    return _METHODS.get(meta_architecture)


def registered_methods() -> List[PretrainMethod]:
    """Every registered method, in registration order."""
    return list(_METHODS.values())


def registered_exports() -> list:
    """Every registered method's export declaration, in registration order: what the exporter
    (``soco_d2.export.export_trunk``) matches a checkpoint of unknown method against."""
    return [method.export for method in _METHODS.values()]


def add_config(cfg):
    """Add the shared keys and the keys of every registered pretraining method (in place).

    Returns:
        ``cfg``.
    """
    add_common_config(cfg)
    for method in registered_methods():
        method.add_config(cfg)
    return cfg
