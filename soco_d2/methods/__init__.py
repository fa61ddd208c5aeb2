"""Pretraining methods: one folder each, registered here by their MODEL.META_ARCHITECTURE.

A method's folder (``soco_d2/methods/soco/`` ...) registers it on import with
:func:`register_method`, declaring what the rest of the package needs to know about it.
``train_net.py`` looks the config's META_ARCHITECTURE up here; an architecture that is not
registered is a Detectron2 detector to fine-tune or evaluate.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Type

if TYPE_CHECKING:  # both import this module
    from ..engine.trainer import PretrainTrainer
    from ..export import ExportSpec

__all__ = ["PretrainMethod", "register_method", "get_method", "registered_methods"]


@dataclass(frozen=True)
class PretrainMethod:
    """What the package needs to know about one pretraining method.

    Attributes:
        name: its MODEL.META_ARCHITECTURE (the class registered in META_ARCH_REGISTRY).
        add_config: ``cfg -> cfg``, adds its keys (and the shared ones) to a config.
        validate_config: ``cfg -> None``, raises ``ConfigError`` naming every wrong value.
        trainer: its trainer, a ``soco_d2.engine.PretrainTrainer`` subclass.
        export: its ``soco_d2.export.ExportSpec``: what it hands to a detector.
    """

    name: str
    add_config: Callable
    validate_config: Callable
    trainer: Type["PretrainTrainer"]
    export: "ExportSpec"


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
